"""Nothing read from a run folder ever runs code (mnist_lit/runs/allowlist.py, mnist_lit/runs/checkpoint.py).

Run folders are crafted by copying one small trained synthetic run and editing its YAML: a code-running
`_target_` in `.hydra/config.yaml` (for evaluate, predict and export) or in `.hydra/overrides.yaml` (for
`resume=`). Each payload would create a marker file (test_payload_is_live shows it does when called); the
commands must refuse it with one paragraph naming the file, the key and the target, exit 1, and leave the
marker absent and the run folder as it was. evaluate/predict/export run in this process; `resume=` as a
real `python -m mnist_lit.train`.
"""

from __future__ import annotations

import importlib
import os
import pickle
import runpy
import shutil
import sys
import uuid
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from conftest import PROJECT, run_cli

from mnist_lit.errors import UserError
from mnist_lit.runs import allowlist
from mnist_lit.runs.checkpoint import load_run, read_recorded_overrides


class RunsCode:
    """Unpickling this creates `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def torch_file(tmp: Path, marker: Path) -> str:
    path = tmp / "payload.pt"
    torch.save(RunsCode(marker), path)
    return str(path)


def pickle_file(tmp: Path, marker: Path) -> str:
    path = tmp / "payload.pkl"
    path.write_bytes(pickle.dumps(RunsCode(marker)))
    return str(path)


def script(tmp: Path, marker: Path) -> str:
    path = tmp / "payload.py"
    path.write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n")
    return str(path)


def module(tmp: Path, marker: Path, name: str | None = None) -> str:
    name = name or f"sec_payload_{uuid.uuid4().hex[:8]}"
    (tmp / f"{name}.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n")
    return name


# (id, a function of (payload folder, marker) -> the `model.net` node that creates the marker when built)
PAYLOADS = [
    ("torch.load", lambda t, m: {"_target_": "torch.load", "f": torch_file(t, m), "weights_only": False}),
    ("numpy.load", lambda t, m: {"_target_": "numpy.load", "file": pickle_file(t, m), "allow_pickle": True}),
    ("runpy.run_path", lambda t, m: {"_target_": "runpy.run_path", "path_name": script(t, m)}),
    ("importlib.import_module", lambda t, m: {"_target_": "importlib.import_module", "name": module(t, m)}),
    ("builtins.exec", lambda t, m: {"_target_": "builtins.exec",
                                    "_args_": [f"import pathlib; pathlib.Path({str(m)!r}).touch()"]}),
    ("subprocess.run", lambda t, m: {"_target_": "subprocess.run", "args": ["touch", str(m)]}),
    ("os.system", lambda t, m: {"_target_": "os.system", "_args_": [f"touch {m}"]}),
    # any callable of an installed package: here one that writes a file
    ("numpy.savetxt", lambda t, m: {"_target_": "numpy.savetxt", "fname": str(m), "X": [1.0]}),
]
PAYLOAD_IDS = [p[0] for p in PAYLOADS]


def call(node: dict):
    """What Hydra's instantiate would do with `node`, without Hydra's own blocklist."""
    owner, _, name = node["_target_"].rpartition(".")
    target = getattr(importlib.import_module(owner), name)
    return target(*node.get("_args_", []), **{k: v for k, v in node.items() if not k.startswith("_")})


@pytest.fixture
def payload_dir(tmp_path, monkeypatch) -> Path:
    """A folder for the payloads' files, importable (for importlib.import_module) like the project itself."""
    folder = tmp_path / "payloads"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    return folder


@pytest.mark.parametrize("make", [p[1] for p in PAYLOADS], ids=PAYLOAD_IDS)
def test_payload_is_live(make, payload_dir, monkeypatch):
    """Each payload really creates its marker when called: the refusals below mean something."""
    marker = payload_dir / "pwned"
    monkeypatch.chdir(payload_dir)
    call(make(payload_dir, marker))
    assert marker.exists()


def copy_run(synthetic_run: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(synthetic_run, run, ignore=shutil.ignore_patterns("tensorboard", "*.png", "eval.json"))
    return run


def edit_yaml(path: Path, edit) -> None:
    data = yaml.safe_load(path.read_text())
    edit(data)
    path.write_text(yaml.safe_dump(data))


def snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def cli(capfd, module_name: str, *args: str) -> tuple[int, str]:
    """`python -m <module_name> args...` in this process: (exit code, stdout + stderr)."""
    argv = sys.argv
    sys.argv = [module_name, *args]
    try:
        with pytest.raises(SystemExit) as exit_info, warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # runpy: the module is already imported
            runpy.run_module(module_name, run_name="__main__")
    finally:
        sys.argv = argv
    out, err = capfd.readouterr()
    return exit_info.value.code, out + err


def assert_refused(code: int, output: str, *named: str) -> None:
    assert code == 1, output
    assert "Traceback" not in output, output
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), output  # one paragraph
    for text in named:
        assert text in output, (text, output)
    assert "refused" in output and "Nothing was built or run" in output


COMMANDS = {
    "evaluate": ("mnist_lit.evaluate",),
    "predict": ("mnist_lit.predict", "index=0"),
    "export": ("mnist_lit.export", "format=torchscript"),
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("make", [p[1] for p in PAYLOADS], ids=PAYLOAD_IDS)
def test_run_config_payload_is_refused(command, make, synthetic_run, tmp_path, payload_dir, capfd):
    """model.net in the run's .hydra/config.yaml names a code-running target: the commands refuse."""
    run = copy_run(synthetic_run, tmp_path)
    marker = tmp_path / "pwned"
    node = make(payload_dir, marker)
    config = run / ".hydra" / "config.yaml"
    edit_yaml(config, lambda cfg: cfg["model"].update(net=node))
    before = snapshot(run)
    module_name, *args = COMMANDS[command]
    code, output = cli(capfd, module_name, f"run_dir={run}", *args)
    assert_refused(code, output, str(config), "model.net._target_", repr(node["_target_"]))
    assert not marker.exists()
    assert snapshot(run) == before


@pytest.mark.parametrize("make", [p[1] for p in PAYLOADS], ids=PAYLOAD_IDS)
def test_recorded_override_payload_is_refused_by_resume(make, synthetic_run, tmp_path, payload_dir):
    """The run's .hydra/overrides.yaml sets model.augment (built with the model) to a code-running target:
    `python -m mnist_lit.train resume=<run>` refuses it, before anything is trained or written."""
    run = copy_run(synthetic_run, tmp_path)
    marker = tmp_path / "pwned"
    node = make(payload_dir, marker)
    overrides = run / ".hydra" / "overrides.yaml"
    edit_yaml(overrides, lambda lines: lines.append(f"model.augment={as_override(node)}"))
    before = snapshot(run)
    env = {"PYTHONPATH": os.pathsep.join([str(payload_dir), str(PROJECT), os.environ.get("PYTHONPATH", "")])}
    proc = run_cli("mnist_lit.train", f"resume={run}", timeout=120, env=env)
    assert_refused(proc.returncode, proc.stdout + proc.stderr, str(overrides), "model.augment._target_",
                   repr(node["_target_"]))
    assert not marker.exists()
    assert snapshot(run) == before


def as_override(value) -> str:
    """A value in Hydra's override syntax (strings quoted)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {as_override(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(as_override(v) for v in value) + "]"
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return str(value).lower() if isinstance(value, bool) else str(value)


def test_checkpoint_path_of_a_hostile_run_is_refused(synthetic_run, tmp_path, capfd):
    """ckpt_path= alone finds the run folder around the checkpoint: its config is checked the same way."""
    run = copy_run(synthetic_run, tmp_path)
    edit_yaml(run / ".hydra" / "config.yaml", lambda cfg: cfg["model"]["net"].update(_target_="os.system"))
    ckpt = next((run / "checkpoints").glob("epoch*.ckpt"))
    code, output = cli(capfd, "mnist_lit.evaluate", f"ckpt_path={ckpt}")
    assert_refused(code, output, "config.yaml", "model.net._target_", "'os.system'")


PLANT = "sec_import_trap"


# config.yaml edits that hide a code-running target elsewhere than model.net._target_: (id, edit, key, named)
CONFIG_VARIANTS = [
    ("callback", lambda c: c["callbacks"].update(evil={"_target_": "runpy.run_path", "path_name": "x.py"}),
     "callbacks.evil._target_", "'runpy.run_path'"),
    ("in-a-list", lambda c: c["trainer"].update(plugins=[1, {"_target_": "subprocess.Popen", "args": "x"}]),
     "trainer.plugins[1]._target_", "'subprocess.Popen'"),
    ("args", lambda c: c["model"]["net"].update(_args_=[{"_target_": "torch.load", "f": "x.pkl"}]),
     "model.net._args_[0]._target_", "'torch.load'"),
    ("partial", lambda c: c["model"].update(optimizer={"_target_": "os.system", "_partial_": True}),
     "model.optimizer._target_", "'os.system'"),
    ("oc.decode", lambda c: c["model"]["net"].update(
        hidden_sizes="${oc.decode:'{_target_: os.system, _args_: [ls]}'}"),
     "model.net.hidden_sizes", "oc.decode"),
    ("oc.create", lambda c: c["model"].update(net="${oc.create:{_target_: os.system}}"), "model.net", "dict"),
    ("custom-resolver", lambda c: c["data"].update(root="${evil:x}"), "data.root", "resolver evil"),
    ("target-interpolation", lambda c: c["model"]["net"].update(_target_="${data.root}"),
     "model.net._target_", "'${data.root}'"),
    ("not-a-network", lambda c: c["model"]["net"].update(_target_="torch.optim.Adam"),
     "model.net._target_", "not one of mnist-lit's networks"),
    ("network-module-attribute", lambda c: c["model"]["net"].update(_target_="mnist_lit.model.nn.Linear"),
     "model.net._target_", "'mnist_lit.model.nn.Linear'"),
    ("import-trap", lambda c: c["model"]["net"].update(_target_=f"{PLANT}.Net"), "model.net._target_",
     f"'{PLANT}.Net'"),
]


@pytest.mark.parametrize(("edit", "key", "named"), [v[1:] for v in CONFIG_VARIANTS],
                         ids=[v[0] for v in CONFIG_VARIANTS])
def test_hostile_config_variants_are_refused(edit, key, named, synthetic_run, tmp_path, monkeypatch):
    """Every `_target_` and interpolation anywhere in config.yaml is checked, as a string: a module that
    would run code when imported is not imported."""
    module(tmp_path, tmp_path / "pwned", PLANT)
    monkeypatch.syspath_prepend(str(tmp_path))
    run = copy_run(synthetic_run, tmp_path)
    edit_yaml(run / ".hydra" / "config.yaml", edit)
    with pytest.raises(UserError) as refusal:
        load_run(run)
    message = str(refusal.value)
    assert str(run / ".hydra" / "config.yaml") in message and key in message and named in message, message
    assert PLANT not in sys.modules and not (tmp_path / "pwned").exists()


def test_yaml_tags_never_construct_objects(synthetic_run, tmp_path):
    run = copy_run(synthetic_run, tmp_path)
    config = run / ".hydra" / "config.yaml"
    tag = f"!!python/object/apply:os.system ['touch {tmp_path}/pwned']"
    config.write_text(config.read_text() + f"evil: {tag}\n")
    with pytest.raises(UserError, match="cannot be read"):
        load_run(run)
    (run / ".hydra" / "overrides.yaml").write_text(f"- {tag}\n")
    with pytest.raises(UserError, match="cannot be read"):
        read_recorded_overrides(run)
    assert not (tmp_path / "pwned").exists()


# recorded overrides an attacker could write: (id, line, what the message names)
HOSTILE_OVERRIDES = [
    ("target-key", "model.net._target_=torch.load", ["model.net._target_", "'torch.load'"]),
    ("added-target", "+foo._target_=runpy.run_path", ["foo._target_", "'runpy.run_path'"]),
    ("dict-value", "+callbacks.x={_target_: os.system, _args_: [ls]}",
     ["callbacks.x._target_", "'os.system'"]),
    ("nested-list", "trainer.plugins=[1, [{_target_: subprocess.run}]]",
     ["trainer.plugins[1][0]._target_", "'subprocess.run'"]),
    ("args", "model.optimizer={_target_: torch.optim.SGD, _args_: [{_target_: builtins.exec}]}",
     ["model.optimizer._args_[0]._target_", "'builtins.exec'"]),
    ("quoted-target", "model.optimizer._target_='numpy.load'", ["model.optimizer._target_", "'numpy.load'"]),
    ("hydra-callback", "+hydra.callbacks.x._target_=os.system",
     ["hydra.callbacks.x._target_", "Hydra's own"]),
    ("hydra-searchpath", "hydra.searchpath=[file:///tmp/evil]", ["hydra.searchpath", "Hydra's own"]),
    ("hydra-launcher", "hydra/launcher=joblib", ["hydra/launcher", "Hydra's own"]),
    ("hydra-job", "hydra.job.env_set.LD_PRELOAD=/tmp/evil.so",
     ["hydra.job.env_set.LD_PRELOAD", "Hydra's own"]),
    ("hydra-logging", "hydra.job_logging.handlers.x.class=os.system", ["hydra.job_logging", "Hydra's own"]),
    ("hydra-run-dir-dict", "hydra.run.dir={_target_: os.system}", ["hydra.run.dir", "Hydra's own"]),
    ("oc.create", "x='${oc.create:{_target_: os.system}}'", ["key x", "builds a dict"]),
    ("oc.decode", "x=\"${oc.decode:'{_target_: os.system}'}\"", ["key x", "resolver oc.decode"]),
    ("custom-resolver", "data.root=${my_resolver:1}", ["data.root", "resolver my_resolver"]),
    ("config-dir-flag", "--config-dir=/tmp/evil", ["'--config-dir=/tmp/evil'", "command-line flag"]),
    ("config-name-flag", "-cn=evil", ["'-cn=evil'", "command-line flag"]),
    ("multirun-flag", "-m", ["'-m'", "command-line flag"]),
    ("group-traversal", "data=../../../tmp/evil", ["data", "'../../../tmp/evil'", "not an option"]),
    ("group-unknown", "experiment=evil", ["experiment", "'evil'", "not an option"]),
    ("group-dict", "model={_target_: os.system}", ["model", "not an option"]),
    ("package", "data@hydra.job=mnist", ["config group data", "package hydra.job"]),
    ("key-traversal", "model/../../x=y", ["'model/../../x=y'", "cannot be parsed"]),
    ("key-dollar", "model.$x=1", ["model.$x", "no plain config key"]),
    ("sweep", "model.optimizer=choice({_target_: os.system},1)", ["model.optimizer", "sweep"]),
    ("not-a-string", {"_target_": "os.system"}, ["{'_target_': 'os.system'}", "not a key=value override"]),
]


@pytest.mark.parametrize(("line", "named"), [v[1:] for v in HOSTILE_OVERRIDES],
                         ids=[v[0] for v in HOSTILE_OVERRIDES])
def test_hostile_recorded_overrides_are_refused(line, named, tmp_path):
    overrides = tmp_path / ".hydra" / "overrides.yaml"
    overrides.parent.mkdir()
    overrides.write_text(yaml.safe_dump(["seed=1", line]))
    with pytest.raises(UserError) as refusal:
        read_recorded_overrides(tmp_path)
    message = str(refusal.value)
    assert str(overrides) in message and "refused" in message, message
    for text in named:
        assert text in message, (text, message)


def test_real_recorded_overrides_are_read_as_they_are(synthetic_run, tmp_path):
    """What mnist_lit.train records (a run, a resumed run, a sweep or Optuna job) passes unchanged, including
    interpolations (not resolved while reading) and the options of conf/ groups."""
    recorded = yaml.safe_load((synthetic_run / ".hydra" / "overrides.yaml").read_text())
    assert read_recorded_overrides(synthetic_run) == recorded
    lines = [
        "ckpt_path='/runs/a b/checkpoints/last.ckpt'", "resume='/runs/a b'", "model.net.hidden_sizes.0=256",
        "model.optimizer.lr=0.0031", "model/scheduler=onecycle", "model/augment=affine",
        "experiment=mlp128_best",
        "hparams_search=optuna", "trainer=cpu", "model.scheduler=null", "~callbacks.lr_monitor",
        "callbacks=[default,early_stopping]", "model.optimizer._target_=torch.optim.AdamW",
        "data.root=${oc.env:MNIST_ROOT}", "hydra.run.dir=out/${now:%H-%M}", "+model.optimizer.momentum=0.9",
    ]
    overrides = tmp_path / ".hydra" / "overrides.yaml"
    overrides.parent.mkdir()
    overrides.write_text(yaml.safe_dump(lines))
    assert read_recorded_overrides(tmp_path) == lines


def test_conf_builds_only_allowed_targets():
    """Every `_target_` in conf/ is allowed, so every run mnist_lit.train writes can be loaded and resumed;
    an option that builds a new class must add it to allowlist.SAFE_TARGETS."""
    def targets(node):
        if isinstance(node, dict):
            yield from ([node["_target_"]] if "_target_" in node else [])
            for value in node.values():
                yield from targets(value)
        elif isinstance(node, list):
            for value in node:
                yield from targets(value)

    found = {t: f for f in (PROJECT / "conf").rglob("*.yaml") for t in targets(yaml.safe_load(f.read_text()))}
    assert len(found) >= 15
    refused = {t: str(f) for t, f in found.items() if not allowlist.is_safe_target(t)}
    assert not refused, f"add these to mnist_lit/runs/allowlist.py's SAFE_TARGETS: {refused}"


def test_networks_are_the_nn_modules_of_mnist_lit_model(monkeypatch):
    from torch import nn

    import mnist_lit.model

    assert allowlist.is_network("mnist_lit.model.MLP")
    for name in ("mnist_lit.model.UserError", "mnist_lit.model.nn.Linear", "mnist_lit.model.Sequence",
                 "mnist_lit.modelx.MLP", "torch.nn.Linear", "mnist_lit.model.MLP.__init__", None):
        assert not allowlist.is_network(name), name

    class CNN(nn.Module):  # a network another engineer adds to mnist_lit/model.py is allowed as it is
        pass

    CNN.__module__ = "mnist_lit.model"
    monkeypatch.setattr(mnist_lit.model, "CNN", CNN, raising=False)
    assert allowlist.is_network("mnist_lit.model.CNN") and allowlist.is_safe_target("mnist_lit.model.CNN")


def test_resume_with_a_trusted_target_given_again(synthetic_run, tmp_path):
    """A target the user trusts (their own callback) is given again after resume=: the recorded line is then
    left out, unchecked and unused; one of another key is still refused."""
    from mnist_lit.cli.resume import expand_resume

    run = copy_run(synthetic_run, tmp_path)
    overrides = run / ".hydra" / "overrides.yaml"
    edit_yaml(overrides, lambda lines: lines.extend(["+callbacks.pause._target_=test_resume.PauseAt",
                                                     "+callbacks.pause.epoch=2"]))
    with pytest.raises(UserError, match=r"pause\._target_ names the target 'test_resume\.PauseAt'"):
        expand_resume([f"resume={run}"])
    args = expand_resume([f"resume={run}", "+callbacks.pause._target_=test_resume.PauseAt"])
    own = "+callbacks.pause._target_=test_resume.PauseAt"
    assert args.count(own) == 1 and args[-1] == own and "+callbacks.pause.epoch=2" in args  # the user's, last

    edit_yaml(overrides, lambda lines: lines.append("+callbacks.evil={_target_: os.system}"))
    with pytest.raises(UserError, match=r"callbacks\.evil\._target_ names the target 'os\.system'"):
        expand_resume([f"resume={run}", "+callbacks.pause._target_=test_resume.PauseAt",
                       "callbacks.evil._target_=mnist_lit.reporting.callbacks.LogSampleDigits"])


def test_metrics_json_names_a_checkpoint_only_inside_the_run(synthetic_run, tmp_path):
    import json

    from mnist_lit.runs.checkpoint import best_checkpoint

    run = copy_run(synthetic_run, tmp_path)
    best = best_checkpoint(run)
    assert best.parent == run / "checkpoints"  # the copy's own, not the original run's file
    outside = tmp_path / "elsewhere.ckpt"
    shutil.copy(best, outside)
    metrics = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").write_text(json.dumps(metrics | {"best_checkpoint": str(outside)}))
    assert best_checkpoint(run) == best  # a path outside the run is not followed
