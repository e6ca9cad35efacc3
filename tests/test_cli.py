"""The training CLI end to end, in a subprocess, on synthetic data."""

import json
from pathlib import Path

from conftest import SYNTHETIC_OVERRIDES, run_cli


def test_fast_dev_run(synthetic_root, tmp_path):
    proc = run_cli("mnist_lit.train", "debug=fast_dev_run", f"data.root={synthetic_root}",
                   f"hydra.run.dir={tmp_path}", *SYNTHETIC_OVERRIDES)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["trainable_params"] == 101_770
    assert 0.0 <= metrics["test_acc"] <= 1.0
    assert (tmp_path / ".hydra" / "config.yaml").is_file()


def test_short_run_learns_and_writes_everything(synthetic_root, tmp_path):
    proc = run_cli("mnist_lit.train", "trainer.max_epochs=3", f"data.root={synthetic_root}",
                   f"hydra.run.dir={tmp_path}", "seed=0", *SYNTHETIC_OVERRIDES)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["test_acc"] > 0.9 and m["best_val_acc"] > 0.9  # the synthetic classes are easy
    assert m["epochs"] == 3 and m["steps"] == 3 * 16 and m["seed"] == 0
    assert {"train/loss", "train/acc", "val/loss", "val/acc", "val/acc_best", "test/loss", "test/acc"} <= set(
        m["metrics"]
    )
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert m["best_checkpoint"] and [p.name for p in (tmp_path / "checkpoints").glob("epoch*.ckpt")] == [
        Path(m["best_checkpoint"]).name]
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_help_and_cfg_job():
    proc = run_cli("mnist_lit.train", "--help")
    assert proc.returncode == 0
    groups = {}  # the first "group: option, option" lines are the config groups
    for line in proc.stdout.splitlines():
        name, _, options = line.partition(": ")
        groups.setdefault(name, options)
    assert "keras_tutorial" in groups["experiment"] and "cpu" in groups["trainer"].split(", ")
    # options to choose only, not the schemas their files start with
    assert (groups["model"], groups["model/net"]) == ("distill, mlp", "cnn, mlp")
    proc = run_cli("mnist_lit.train", "--cfg", "job", "data.batch_size=64")
    assert proc.returncode == 0 and "batch_size: 64" in proc.stdout
