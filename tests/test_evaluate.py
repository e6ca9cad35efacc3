"""Evaluating a trained run (mnist_lit.evaluate); loading runs and checkpoints safely (mnist_lit.runs.checkpoint).

The trained runs are shared with test_predict.py, test_export.py and test_plots.py: each is trained once per
session (through the CLI, as a user would) into the session's base temp folder.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose, run_cli
from PIL import Image

from mnist_lit.errors import UserError


def assert_png(path: Path, min_size: int = 400) -> None:
    with Image.open(path) as image:
        assert image.format == "PNG" and min(image.size) >= min_size, (path, image.size)
        assert len(np.unique(np.asarray(image.convert("L")))) > 10  # drawn, not a blank canvas


def test_evaluate_cli_writes_report_figures_and_json(synthetic_run):
    proc = run_cli("mnist_lit.evaluate", f"run_dir={synthetic_run}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((synthetic_run / "metrics.json").read_text())
    ev = json.loads((synthetic_run / "eval.json").read_text())
    # the best checkpoint, on the same test set, gives what training reported (an architecture other
    # than the default, on standardised pixels: both come from the run's own config)
    assert ev["checkpoint"] == metrics["best_checkpoint"]
    assert ev["test_acc"] == pytest.approx(metrics["test_acc"], abs=1e-6)
    assert ev["test_loss"] == pytest.approx(metrics["test_loss"], abs=1e-5)
    assert ev["num_examples"] == 200 and sum(map(sum, ev["confusion_matrix"])) == 200
    assert sum(ev["confusion_matrix"][d][d] for d in range(10)) == round(ev["test_acc"] * 200)
    for d in range(10):
        row = ev["confusion_matrix"][d]
        assert ev["per_class"][str(d)] == {"count": sum(row), "accuracy": pytest.approx(row[d] / sum(row))}
    wrong = ev["misclassified"]
    assert all(w["label"] != w["predicted"] for w in wrong)
    assert [w["confidence"] for w in wrong] == sorted((w["confidence"] for w in wrong), reverse=True)
    assert_png(synthetic_run / "confusion_matrix.png")
    assert_png(synthetic_run / "misclassified.png", min_size=100)

    out = proc.stdout
    assert f"test accuracy {ev['test_acc']:.2%}" in out and f"test loss {ev['test_loss']:.4f}" in out
    table = out[out.index("digit  count  accuracy") :].splitlines()[1:11]
    assert [int(line.split()[0]) for line in table] == list(range(10))
    assert "confusion_matrix.png" in out and "eval.json" in out


@pytest.mark.real_data
def test_evaluate_real_run(real_run, real_root):
    from mnist_lit.evaluate import evaluate

    ev = evaluate(compose("evaluate", f"run_dir={real_run}", f"data.root={real_root}", "misclassified=12"))
    metrics = json.loads((real_run / "metrics.json").read_text())
    assert ev["num_examples"] == 10_000 and ev["test_acc"] >= 0.95
    assert ev["test_acc"] == pytest.approx(metrics["test_acc"], abs=1e-6)
    assert len(ev["misclassified"]) == 12
    assert min(c["accuracy"] for c in ev["per_class"].values()) > 0.85
    assert_png(real_run / "confusion_matrix.png")
    assert_png(real_run / "misclassified.png")


def test_evaluate_a_given_checkpoint_into_another_folder(synthetic_run, tmp_path):
    from mnist_lit.evaluate import evaluate

    last = synthetic_run / "checkpoints" / "last.ckpt"
    ev = evaluate(compose("evaluate", f"ckpt_path={last}", f"output_dir={tmp_path}"))
    assert ev["checkpoint"] == str(last) and Path(ev["run_dir"]) == synthetic_run
    assert {p.name for p in tmp_path.iterdir()} == {"confusion_matrix.png", "misclassified.png", "eval.json"}


# --- loading runs and checkpoints: safe, with clear errors -------------------------------------------------


def test_load_run_builds_the_runs_own_architecture(synthetic_run):
    from mnist_lit.runs.checkpoint import load_run

    run = load_run(synthetic_run)
    linear = [m for m in run.net if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [(784, 32), (32, 16), (16, 10)]
    assert run.normalize is True and not run.net.training
    state = torch.load(run.checkpoint, weights_only=True)["state_dict"]
    assert torch.equal(run.net[0].weight, state["net.0.weight"])


def fake_run(tmp_path: Path, synthetic_run: Path, hidden: str | None = None) -> Path:
    """A copy of the synthetic run's folder, its config optionally saying other hidden sizes."""
    run = tmp_path / "run"
    shutil.copytree(synthetic_run, run, ignore=shutil.ignore_patterns("tensorboard", "*.png"))
    (run / "metrics.json").unlink()
    if hidden:
        cfg = run / ".hydra" / "config.yaml"
        cfg.write_text(cfg.read_text().replace("- 32\n    - 16\n", hidden))
    return run


def test_checkpoint_of_another_architecture_names_the_layers(synthetic_run, tmp_path):
    from mnist_lit.runs.checkpoint import load_run

    run = fake_run(tmp_path, synthetic_run, hidden="- 64\n")
    with pytest.raises(UserError) as err:
        load_run(run)
    message = str(err.value)
    assert "net.0.weight is 32x784 in the checkpoint but 64x784 in the model" in message
    assert "net.3.weight is 16x32 in the checkpoint but 10x64 in the model" in message
    assert "net.6.weight is in the checkpoint but not in the model" in message
    assert "run_dir=" in message


def test_corrupt_empty_and_foreign_checkpoints(synthetic_run, tmp_path):
    from mnist_lit.runs.checkpoint import load_run

    run = fake_run(tmp_path, synthetic_run)
    ckpt = next((run / "checkpoints").glob("epoch*.ckpt"))
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="truncated or corrupt"):
        load_run(run)
    ckpt.write_bytes(b"")
    with pytest.raises(UserError, match=r"is empty \(0 bytes\)"):
        load_run(run)
    torch.save({"weights": torch.zeros(3)}, ckpt)
    with pytest.raises(UserError, match="not a Lightning checkpoint"):
        load_run(run)
    torch.save({"state_dict": {"model.weight": torch.zeros(3)}}, ckpt)
    with pytest.raises(UserError, match="holds no weights under 'net.'"):
        load_run(run)


class RunsCode:
    """Unpickling this calls Path.touch(marker): what a malicious checkpoint could do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_checkpoint_with_pickled_code_is_refused_unexecuted(synthetic_run, tmp_path):
    from mnist_lit.runs.checkpoint import load_run

    run = fake_run(tmp_path, synthetic_run)
    ckpt = next((run / "checkpoints").glob("epoch*.ckpt"))
    state = torch.load(ckpt, weights_only=True)
    marker = tmp_path / "code_ran"
    state["payload"] = RunsCode(marker)
    torch.save(state, ckpt)
    with pytest.raises(UserError, match="refuses to unpickle"):
        load_run(run)
    assert not marker.exists()


def test_run_dir_mistakes(synthetic_run, tmp_path):
    from mnist_lit.runs.checkpoint import load_run

    with pytest.raises(UserError, match="no model given"):
        load_run()
    with pytest.raises(UserError, match="no such folder"):
        load_run(tmp_path / "nope")
    with pytest.raises(UserError, match=r"is not a training run: it has no \.hydra"):
        load_run(tmp_path)
    sweep = tmp_path / "sweep"
    shutil.copytree(synthetic_run / ".hydra", sweep / "0" / ".hydra")
    with pytest.raises(UserError, match="sweep .multirun. folder; pass one of its runs"):
        load_run(sweep)
    with pytest.raises(UserError, match="has no checkpoint"):
        load_run(sweep / "0")
    lone = tmp_path / "lone.ckpt"
    shutil.copy(synthetic_run / "checkpoints" / "last.ckpt", lone)
    with pytest.raises(UserError, match="not inside a training run folder"):
        load_run(ckpt_path=lone)
    # with the run given, any checkpoint of it loads
    assert load_run(synthetic_run, ckpt_path=lone).checkpoint == lone


def test_run_dir_latest_is_the_last_started_run_with_a_checkpoint(synthetic_run, tmp_path, monkeypatch):
    from mnist_lit.runs.checkpoint import resolve_run_dir

    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="no training run found"):
        resolve_run_dir("latest")
    runs = Path("logs/train/runs")
    for started, name in ((3000, "refused"), (2000, "newer"), (1000, "older")):
        shutil.copytree(synthetic_run / ".hydra", runs / name / ".hydra")
        if name != "refused":  # a config mistake: refused before any checkpoint
            shutil.copytree(synthetic_run / "checkpoints", runs / name / "checkpoints")
        os.utime(runs / name / ".hydra" / "config.yaml", (started, started))
    (runs / "older" / "eval.json").write_text("{}")  # evaluating an old run does not make it the latest
    assert resolve_run_dir("latest") == runs / "newer"


def test_unwritable_output_dir_is_named(synthetic_run, tmp_path):
    from mnist_lit.evaluate import evaluate

    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(UserError, match=r"cannot write into .*a_file/figures .*; pass output_dir="):
        evaluate(compose("evaluate", f"run_dir={synthetic_run}", f"output_dir={blocker / 'figures'}"))


def test_the_data_a_run_trained_on_is_found_without_its_shell(synthetic_run, synthetic_root, tmp_path):
    # the recorded data.root may read the environment (${oc.env:MNIST_ROOT,data}), which differs later
    import json

    import yaml

    from mnist_lit.runs.checkpoint import load_run

    run = tmp_path / "run"
    shutil.copytree(synthetic_run, run, ignore=shutil.ignore_patterns("tensorboard", "*.png"))
    config = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
    config["data"]["root"] = "${oc.env:NO_SUCH_VARIABLE,data}"
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    assert load_run(run).data_root() == str(Path(synthetic_root).resolve())  # metrics.json's data_root
    assert load_run(run).data_root("elsewhere") == "elsewhere"  # data.root= on the command line wins
    metrics = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").write_text(json.dumps(metrics | {"data_root": str(tmp_path / "gone")}))
    assert load_run(run).data_root() == "data"  # moved away since: the config's, resolved now
