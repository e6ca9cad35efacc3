"""Every user mistake ends with a short message naming the key or file, the bad value and the fix: exit 1,
no traceback. The CLI runs in this process (its exit and output are the real ones) to keep the table fast;
a few cases also run as real subprocesses."""

import os
import runpy
import shutil
import sys

import pytest
import torch
from conftest import SYNTHETIC_OVERRIDES, compose, run_cli, write_idx

from mnist_lit import train as train_cli

RAW = ("MNIST", "raw")


def cli(capfd, *args: str) -> tuple[int, str]:
    """Run `python -m mnist_lit.train args...` in this process; returns (exit code, stdout + stderr)."""
    argv = sys.argv
    sys.argv = [train_cli.__file__, *args]
    try:
        with pytest.raises(SystemExit) as exit_info:
            runpy.run_module("mnist_lit.train", run_name="__main__")
    finally:
        sys.argv = argv
    out, err = capfd.readouterr()
    return exit_info.value.code, out + err


# (id, overrides, what the message must say): config mistakes, caught before any data is read
CONFIG_CASES = [
    ("type-int", ["data.batch_size=abc"], ["data.batch_size", "abc", "Integer"]),
    ("type-bool", ["data.download=maybe"], ["data.download", "maybe", "bool"]),
    ("type-list", ["model.net.hidden_sizes=[a]"], ["hidden_sizes", "'a'", "Integer"]),
    ("batch-zero", ["data.batch_size=0"], ["data.batch_size=0", "positive"]),
    ("steps-zero", ["steps_per_execution=0"], ["steps_per_execution=0", "positive"]),
    ("lr-zero", ["model.optimizer.lr=0"], ["model.optimizer.lr=0", "> 0"]),
    ("lr-text", ["model.optimizer.lr=fast"], ["model.optimizer.lr='fast'", "number"]),
    ("val-size-zero", ["data.val_size=0"], ["data.val_size=0", "between 1 and 59999"]),
    ("val-size-too-big", ["data.val_size=60000"], ["data.val_size=60000", "between 1 and 59999"]),
    ("hidden-zero", ["model.net.hidden_sizes=[0]"], ["model.net.hidden_sizes=[0]", "positive"]),
    ("dropout-range", ["model.net.dropout=1.5"], ["model.net.dropout=1.5", "[0, 1)"]),
    ("max-epochs-zero", ["trainer.max_epochs=0"], ["trainer.max_epochs=0", "positive"]),
    ("max-epochs-text", ["trainer.max_epochs=ten"], ["trainer.max_epochs='ten'", "positive integer"]),
    ("seed-negative", ["seed=-1"], ["seed=-1", "between 0 and"]),
    ("threads-zero", ["threads=0"], ["threads=0", "positive"]),
    ("label-smoothing", ["model.label_smoothing=2"], ["model.label_smoothing=2.0", "[0, 1]"]),
    ("accelerator", ["trainer.accelerator=tpux"], ["trainer", "tpux", "cpu", "cuda"]),
    ("max-epochs-null", ["trainer.max_epochs=null"], ["trainer.max_epochs=null", "(or -1: no limit)"]),
    ("data-root-empty", ["data.root="], ["data.root is empty"]),
    ("run-dir-empty", ["hydra.run.dir="], ["hydra.run.dir is empty"]),
    ("group-option", ["data=fashion"], ["data=fashion: data has no option 'fashion'", "one of: digits, mnist"]),
    ("launcher-option", ["hydra/launcher=nope"], ["hydra/launcher has no option 'nope'", "joblib"]),
    ("group-with-a-dot", ["model.net=cnn"], ["model.net='cnn'", "model/net=cnn", "options: cnn, mlp"]),
    ("group-added-again", ["+data=mnist"], ["+data=...", "data=<option>, without the +"]),
    ("group-null", ["data=null"], ["cannot be made into a config", "Got NoneType"]),
    ("group-removed", ["~model"], ["model has no value", "(model=...)"]),
    ("interpolated-key-removed", ["~seed"], ["data.split_seed", "'seed' not found"]),
    ("unparsable", ["model.optimizer.lr=[1"], ["cannot read the override 'model.optimizer.lr=[1'", "quote"]),
    # a misspelt key: the likely one, and no `+key=` advice where the schema would refuse it
    ("unknown-key", ["data.batchsize=64"],
     ["data.batchsize=64: data has no key", "did you mean data.batch_size?"]),
    ("unknown-top-key", ["epochs=3"], ["epochs=3: the config has no key 'epochs'", "seed"]),
    ("unknown-optimizer-key", ["model.optimizer.momentum=0.9"],
     ["model.optimizer has no key 'momentum'", "add it with +model.optimizer.momentum=0.9"]),
    ("unknown-key-added", ["+data.batchsize=64"],
     ["data has no key 'batchsize'", "did you mean data.batch_size?"]),
    ("unknown-top-key-added", ["+epochs=3"], ["the config has no key 'epochs'", "trainer"]),
    ("unknown-trainer-key", ["+trainer.epochs=3"], ["trainer", "epochs"]),
    ("unknown-optimizer", ["model.optimizer._target_=torch.optim.Adamm"], ["model", "torch.optim.Adamm"]),
    ("optimizer-argument", ["+model.optimizer.momentum=0.9"], ["model.optimizer", "momentum"]),
    ("scheduler-value", ["model/scheduler=onecycle", "model.scheduler.pct_start=2"],
     ["model.scheduler", "pct_start"]),
    ("scheduler-argument", ["model/scheduler=onecycle", "+model.scheduler.warmup=1"],
     ["model.scheduler", "warmup"]),
    ("accumulate-negative", ["trainer.accumulate_grad_batches=-2"],
     ["trainer.accumulate_grad_batches=-2", "positive integer"]),
    ("val-every-zero", ["trainer.check_val_every_n_epoch=0"],
     ["trainer.check_val_every_n_epoch=0", "positive"]),
    ("clip-negative", ["trainer.gradient_clip_val=-1"], ["trainer.gradient_clip_val=-1", "> 0"]),
    ("scheduler-endless", ["model/scheduler=onecycle", "trainer.max_epochs=-1"],
     ["model.scheduler", "trainer.max_epochs=-1", "total_steps"]),
]


@pytest.mark.parametrize(("overrides", "expected"), [c[1:] for c in CONFIG_CASES],
                         ids=[c[0] for c in CONFIG_CASES])
def test_config_mistake(overrides, expected, synthetic_root, tmp_path, capfd):
    code, output = cli(capfd, f"data.root={synthetic_root}", f"hydra.run.dir={tmp_path}",
                       *SYNTHETIC_OVERRIDES, *overrides)
    assert code == 1, output
    assert "Traceback" not in output and "HYDRA_FULL_ERROR" not in output and "full_key" not in output
    if "+" not in overrides[0]:
        assert "+data" not in output and "+epochs" not in output  # the schema would refuse them
    for text in expected:
        assert text in output, f"{text!r} not in:\n{output}"
    assert not (tmp_path / "checkpoints").exists()  # refused before any work
    assert not os.path.exists(".lock")  # nothing in the current folder either (hydra.run.dir=)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_gpu_asked_for_on_a_machine_without_one(synthetic_root, tmp_path, capfd):
    code, output = cli(capfd, f"data.root={synthetic_root}", f"hydra.run.dir={tmp_path}", *SYNTHETIC_OVERRIDES,
                       "trainer.accelerator=gpu")
    assert code == 1 and "Traceback" not in output
    assert "trainer.accelerator=gpu asks for a GPU" in output and "trainer=cpu" in output


def corrupt(root, name: str, how: str) -> None:
    path = root.joinpath(*RAW, name)
    if how == "missing":
        path.unlink()
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[:-100])
    elif how == "magic":
        path.write_bytes(b"\x00\x00\x08\x04" + path.read_bytes()[4:])
    elif how == "counts":  # fewer labels than images: a consistent file of the wrong length
        write_idx(path, torch.zeros(599, dtype=torch.uint8))
    elif how == "labels":
        write_idx(path, torch.full((600,), 12, dtype=torch.uint8))


DATA_CASES = [
    ("missing-file", "train-labels-idx1-ubyte", "missing",
     ["train-labels-idx1-ubyte", "missing", "data.root"]),
    ("truncated", "t10k-images-idx3-ubyte", "truncated", ["t10k-images-idx3-ubyte", "truncated"]),
    ("magic", "train-images-idx3-ubyte", "magic", ["train-images-idx3-ubyte", "magic number 2052", "2051"]),
    ("counts", "train-labels-idx1-ubyte", "counts", ["600 images but 599 labels", "train"]),
    ("labels", "train-labels-idx1-ubyte", "labels", ["train-labels-idx1-ubyte", "label 12", "0-9"]),
]


@pytest.mark.parametrize(("name", "how", "expected"), [c[1:] for c in DATA_CASES],
                         ids=[c[0] for c in DATA_CASES])
def test_data_fault(name, how, expected, fresh_synthetic_root, tmp_path, capfd):
    corrupt(fresh_synthetic_root, name, how)
    code, output = cli(capfd, f"data.root={fresh_synthetic_root}", f"hydra.run.dir={tmp_path / 'run'}",
                       *SYNTHETIC_OVERRIDES)
    assert code == 1 and "Traceback" not in output, output
    for text in expected:
        assert text in output, f"{text!r} not in:\n{output}"
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_missing_root(tmp_path, capfd):
    code, output = cli(capfd, f"data.root={tmp_path / 'nowhere'}", f"hydra.run.dir={tmp_path / 'run'}",
                       *SYNTHETIC_OVERRIDES)
    assert code == 1 and "Traceback" not in output
    assert str(tmp_path / "nowhere") in output and "MNIST files not found" in output and "data.root" in output


def test_output_dir_not_writable(synthetic_root, tmp_path, capfd):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    code, output = cli(capfd, f"data.root={synthetic_root}", f"hydra.run.dir={blocker / 'run'}",
                       *SYNTHETIC_OVERRIDES)
    assert code == 1 and "Traceback" not in output, output
    assert str(blocker) in output


def test_resume_of_a_folder_that_is_no_run(tmp_path, capfd):
    code, output = cli(capfd, f"resume={tmp_path}")
    assert code == 1 and "Traceback" not in output
    assert f"resume={tmp_path}" in output and "not a training run folder" in output
    (tmp_path / "multirun.yaml").write_text("hydra: {}\n")  # a sweep's: continued with -m
    code, output = cli(capfd, f"resume={tmp_path}")
    assert code == 1 and "is a sweep's folder: continue the sweep with python -m mnist_lit.train -m" in output


SEARCH_RECORD = ("hydra: {sweeper: {_target_: hydra_plugins.mnist_lit_optuna.optuna_sweeper.OptunaSweeper}, "
                 "overrides: {task: 3}}")


@pytest.mark.parametrize("text", ["hydra: [unclosed", SEARCH_RECORD], ids=["yaml", "search"])
def test_resume_of_a_sweep_whose_record_is_broken(text, tmp_path, capfd):
    (tmp_path / "multirun.yaml").write_text(text)
    code, output = cli(capfd, "-m", f"resume={tmp_path}")
    assert code == 1 and "Traceback" not in output, output
    assert f"{tmp_path / 'multirun.yaml'} cannot be read" in output and "start a new sweep" in output


def test_full_error_shows_the_traceback(synthetic_root, tmp_path):
    """A mistake in real subprocesses: a plain message, and a traceback only with HYDRA_FULL_ERROR=1."""
    args = ("mnist_lit.train", f"data.root={synthetic_root}", f"hydra.run.dir={tmp_path}",
            *SYNTHETIC_OVERRIDES, "model.optimizer.lr=-1")
    plain = run_cli(*args)
    assert plain.returncode == 1 and "Traceback" not in plain.stderr
    assert "error: invalid config: model.optimizer.lr=-1: must be a number > 0" in plain.stderr
    full = run_cli(*args, env={"HYDRA_FULL_ERROR": "1"})
    assert full.returncode == 1 and "Traceback" in full.stderr and "UserError" in full.stderr


def test_command_line_hydra_cannot_compose(tmp_path):
    """evaluate, predict and export too: one paragraph; Hydra's own report with HYDRA_FULL_ERROR=1."""
    plain = run_cli("mnist_lit.evaluate", f"run_dir={tmp_path}", "misclasified=4")
    assert plain.returncode == 1 and plain.stderr.count("\n") == 1, plain.stderr
    assert plain.stderr.startswith("error: misclasified=4: the config has no key 'misclasified' "
                                   "(did you mean misclassified?)"), plain.stderr
    assert "+misclasified" not in plain.stderr  # evaluate would ignore the key
    group = run_cli("mnist_lit.evaluate", f"run_dir={tmp_path}", "model/net=cnn")
    said = "error: model/net=...: python -m mnist_lit.evaluate has no config group model/net to choose"
    assert group.returncode == 1 and group.stderr.startswith(said), group.stderr
    full = run_cli("mnist_lit.evaluate", f"run_dir={tmp_path}", "misclasified=4",
                   env={"HYDRA_FULL_ERROR": "1"})
    assert full.returncode == 1 and "Traceback" in full.stderr and "ConfigCompositionException" in full.stderr


def test_checkpoint_faults(synthetic_root, tmp_path, capfd):
    """ckpt_path: missing, corrupt, and of another architecture (naming the layer shapes)."""
    base = [f"data.root={synthetic_root}", f"hydra.run.dir={tmp_path / 'run'}", *SYNTHETIC_OVERRIDES]
    code, output = cli(capfd, *base, f"ckpt_path={tmp_path / 'none.ckpt'}")
    assert code == 1 and "none.ckpt does not exist" in output and "Traceback" not in output

    code, output = cli(capfd, *base, f"ckpt_path={tmp_path}")  # a run's folder, say
    assert code == 1 and f"checkpoint {tmp_path} is a folder" in output
    assert f"resume={tmp_path} for train" in output

    (tmp_path / "bad.ckpt").write_bytes(b"PK\x03\x04 half a file")
    code, output = cli(capfd, *base, f"ckpt_path={tmp_path / 'bad.ckpt'}")
    assert code == 1 and "truncated or corrupt" in output and "Traceback" not in output

    (tmp_path / "text.ckpt").write_text("hello\n")  # torch would unpickle it the pre-1.6 way: KeyError
    code, output = cli(capfd, *base, f"ckpt_path={tmp_path / 'text.ckpt'}")
    assert code == 1 and "is not a PyTorch checkpoint" in output and "Traceback" not in output

    from mnist_lit.model import MLP

    wide = {f"net.{k}": v for k, v in MLP(hidden_sizes=[64]).state_dict().items()}
    torch.save({"state_dict": wide}, tmp_path / "wide.ckpt")
    code, output = cli(capfd, *base, f"ckpt_path={tmp_path / 'wide.ckpt'}")
    assert code == 1 and "Traceback" not in output
    assert "net.0.weight is 64x784 in the checkpoint but 128x784 in the model" in output


class Exploit:
    """Unpickling this runs code: it creates the file named in `path`."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (shutil.copyfile, (__file__, self.path))


def test_malicious_checkpoint_is_refused_and_not_run(synthetic_root, tmp_path, capfd):
    pwned = tmp_path / "pwned"
    torch.save({"state_dict": {}, "payload": Exploit(str(pwned))}, tmp_path / "evil.ckpt")
    code, output = cli(capfd, f"data.root={synthetic_root}", f"hydra.run.dir={tmp_path / 'run'}",
                       *SYNTHETIC_OVERRIDES, f"ckpt_path={tmp_path / 'evil.ckpt'}")
    assert code == 1 and "Traceback" not in output
    assert "evil.ckpt" in output and "refuses to unpickle" in output
    assert "not an allowed global by default. Use a checkpoint" in output  # torch's reason, not its advice
    assert not pwned.exists()
    # the same file unpickled without protection would have run the code: the check above means something
    torch.load(tmp_path / "evil.ckpt", weights_only=False)
    assert pwned.exists()


@pytest.mark.parametrize(("command", "override", "said"), [
    ("predict", "top_k=abc", "top_k='abc' must be a whole number at least 1"),
    ("predict", "preview=seen.txt", "preview=seen.txt: the picture is written as PNG"),
    ("export", "check_digits=0", "check_digits=0 must be a whole number between 1 and 10000"),
    ("evaluate", "misclassified=-1", "misclassified=-1 must be a whole number at least 0"),
])
def test_command_option_mistakes_are_named(synthetic_run, command, override, said):
    import importlib

    from conftest import compose

    from mnist_lit.errors import UserError

    needed = ["index=0"] if command == "predict" else []
    cfg = compose(command, f"run_dir={synthetic_run}", override, *needed)
    with pytest.raises(UserError) as err:
        getattr(importlib.import_module(f"mnist_lit.{command}"), command)(cfg)
    assert said in str(err.value)


@pytest.mark.parametrize(("command", "added", "expected"), [
    ("evaluate", "+misclasified=3", "+misclasified: the config has no key 'misclasified' (did you mean "
     "misclassified?); it has run_dir, ckpt_path, data, misclassified, output_dir."),
    ("evaluate", "+data.batch_size=3", "+data.batch_size: data has no key 'batch_size'; it has root, "
     "download."),
    ("predict", "+imgs=[a.png]", "+imgs: the config has no key 'imgs' (did you mean images?)"),
    ("export", "+formt=torchscript", "+formt: the config has no key 'formt' (did you mean format?)"),
])
def test_a_key_added_to_a_command_that_ignores_it_is_refused(command, added, expected, tmp_path):
    """evaluate, predict and export read only their own keys: an added (misspelt) one would do nothing."""
    import importlib

    from mnist_lit.errors import UserError

    entry = getattr(importlib.import_module(f"mnist_lit.{command}"), command)
    with pytest.raises(UserError) as refused:
        entry(compose(command, f"run_dir={tmp_path}", added))
    assert str(refused.value).startswith(expected)


@pytest.mark.parametrize(("command", "args", "expected"), [
    ("train", ["--cfg", "job", "+foo=1"], "error: invalid config: +foo: the config has no key 'foo'"),
    ("train", ["--cfg", "all", "+data.batchsize=3"], "did you mean data.batch_size?"),
    ("train", ["--cfg", "hydra", "seed=-1"], "error: invalid config: seed=-1: must be between 0 and"),
    ("train", ["--info", "config", "model.optimizer.lr=-1"], "model.optimizer.lr=-1: must be a number > 0"),
    ("evaluate", ["--cfg", "job", "+misclasified=3"], "(did you mean misclassified?)"),
])
def test_printing_the_config_checks_it_as_a_run_would(command, args, expected):
    """`--cfg` and `--info config` print the config instead of running: what a run refuses, they refuse."""
    refused = run_cli(f"mnist_lit.{command}", *args)
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1, refused.stderr
    assert refused.stderr.startswith("error: ") and expected in refused.stderr, refused.stderr
    assert refused.stdout == ""  # no config printed
    shown = run_cli(f"mnist_lit.{command}", *args[:2])
    assert shown.returncode == 0 and shown.stderr == "", shown.stderr
    assert "seed:" in shown.stdout or "misclassified:" in shown.stdout or "run:" in shown.stdout


def test_the_flags_that_print_the_config_are_read_as_hydra_reads_them():
    """mnist_lit.config.messages.check_shown_config reads the command line with Hydra's own parser."""
    import importlib

    from hydra._internal.utils import get_args_parser

    # the parser hydra.main parses sys.argv with
    assert importlib.import_module("hydra.main").get_args_parser is get_args_parser
    args = get_args_parser().parse_args(["--cfg", "job", "-cn", "evaluate", "+foo=1", "seed=2"])
    assert (args.cfg, args.info, args.config_name) == ("job", None, "evaluate")
    assert args.overrides == ["+foo=1", "seed=2"]
    assert get_args_parser().parse_args(["--info"]).info == "all"
    assert get_args_parser().parse_args(["-i", "config"]).info == "config"
