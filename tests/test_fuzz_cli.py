"""No traceback for anything a user can type: command lines drawn by Hypothesis over every command's keys
(wrong types, out-of-range values, Trainer keys that do not go together, unknown keys, `+` and `~`
overrides, paths of the wrong kind for resume=, ckpt_path=, run_dir= and the rest) end with exit 0, or with
exit 1 and one paragraph, never a traceback.

The commands run in this process (their real exit codes and output) on a tiny synthetic dataset, a tiny
trained run and a tiny sweep made once per module; Hypothesis draws deterministically (derandomize), so a
CI run tries the same command lines every time. FUZZ_EXAMPLES=<n> tries n command lines per command
instead of the CI's share. The counts tried are written to <pytest's temp folder>/fuzz_cli_counts.json and
printed at the end of the module.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest
from conftest import run_in_process, write_mnist
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", 0))
TRIED: Counter = Counter()
# no `explain` phase: it traces the replay, and Hydra, seeing a tracer, takes it for a debugger and lets a
# job's error through instead of reporting it
FUZZ = settings(max_examples=EXAMPLES or 30, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck), print_blob=True,
                phases=[Phase.explicit, Phase.generate, Phase.shrink])

# the values that a user may type for any key: wrong types, empty, out of range, Hydra's special values
JUNK = ["abc", "''", "null", "true", "false", "0", "-1", "1", "2", "1.5", "-0.5", "1e9", "1e-9", "nan",
        "inf", "-inf", "99999999999999999999", "[]", "[1,2]", "[a]", "{a:1}", "'1'", "???", "${oops}",
        "${oops:1}", "${seed}", "x y", "a,b", "'1,2'", "[[1]]", "1e", "--", "%", "''''"]
junk = st.one_of(st.sampled_from(JUNK), st.integers(-10**6, 10**6).map(str),
                 st.text("ab1.,-_[]{}()'\"$~+=:% /\\", max_size=6))

# where a command expects a run, a sweep, a checkpoint or a file: every kind of folder and file, as the
# fixture `places` lays them out in the example's own folder
PLACES = ["run", "run/checkpoints", "run/checkpoints/last.ckpt", "run/metrics.json", "run/.hydra",
          "sweep", "sweep/0", "sweep/0/checkpoints/last.ckpt", "empty", "text.txt", "text.ckpt", "digit.png",
          "images", "missing", "missing/deeper", "data", "evaluated", "latest", ".", "", "/dev/null"]
place = st.sampled_from(PLACES)


def assign(key: str, values) -> st.SearchStrategy[str]:
    return values.map(lambda value: f"{key}={value}")


def keys(*pairs) -> st.SearchStrategy[str]:
    """Overrides `key=value` for (key, [plausible values]) pairs: a plausible value or any junk."""
    return st.one_of(*(assign(key, st.one_of(st.sampled_from(good), junk) if good else junk)
                       for key, good in pairs))


def group(name: str, options: list[str]) -> st.SearchStrategy[str]:
    return st.sampled_from(options + ["banana", "null", ""]).map(lambda option: f"{name}={option}")


def edits(known: list[str]) -> st.SearchStrategy[str]:
    """`+key=`, `++key=`, `~key` and unknown keys over the command's own keys."""
    unknown = ["banana", "foo.bar", "trainer.bananas", "model.foo", "data.foo", "model.optimizer.foo",
               "model.net.foo", "callbacks.foo", "hydra.foo", "seed.x"]
    return st.one_of(
        st.tuples(st.sampled_from(["+", "++", ""]), st.sampled_from(known + unknown), junk)
        .map(lambda t: f"{t[0]}{t[1]}={t[2]}"),
        st.sampled_from(known + unknown).map(lambda key: f"~{key}"),
    )


TRAIN_KEYS = [
    ("seed", ["0", "7", "-1", str(2**32)]), ("fast", ["true", "false"]),
    ("steps_per_execution", ["1", "3", "0"]),
    ("test", ["true", "false"]), ("threads", ["1", "2", "0", "null"]), ("optimized_metric", ["val/acc", "x"]),
    ("data.batch_size", ["1", "7", "0", "100000"]), ("data.eval_batch_size", ["1", "0", "5000"]),
    ("data.val_size", ["1", "599", "600", "60000", "0"]), ("data.normalize", ["true", "false"]),
    # data.download is left out: offline, a download would only wait for the network
    ("data.split_seed", ["0", "-1"]),
    ("model.net.hidden_sizes", ["[]", "[8]", "[0]", "[8,4]", "[-1]"]),
    ("model.net.dropout", ["0", "0.5", "1", "1.5", "-0.1"]), ("model.net.init", ["default", "xavier", "x"]),
    ("model.optimizer.lr", ["1e-3", "0", "-1", "1e10", "nan"]),
    ("model.optimizer._target_", ["torch.optim.SGD", "torch.optim.Banana", "os.system", "builtins.print"]),
    ("model.label_smoothing", ["0", "0.1", "1", "2"]), ("model.num_classes", ["10", "2", "0"]),
]
TRAINER_KEYS = [
    ("trainer.accelerator", ["cpu", "auto", "gpu", "cuda", "mps", "tpu", "hpu", "ipu", "banana"]),
    # one device, or none that exists: several would start processes of their own (tests/test_ddp.py)
    ("trainer.devices", ["1", "0", "-1", "auto", "[0]", "'1'", "[]", "1.5"]),
    ("trainer.precision", ["32-true", "32", "16-mixed", "bf16-mixed", "bf16-true", "16-true",
                           "64-true", "64", "16", "bf16", "8", "transformer-engine", "banana"]),
    ("trainer.max_epochs", ["1", "2", "-1", "0", "null"]),
    ("trainer.check_val_every_n_epoch", ["1", "2", "0", "null"]),
    ("trainer.log_every_n_steps", ["1", "0", "-1"]),
    ("trainer.num_sanity_val_steps", ["0", "-1", "-5", "100"]),
    ("trainer.deterministic", ["true", "false", "warn", "banana"]),
    ("trainer.accumulate_grad_batches", ["1", "2", "0", "-1"]),
    ("trainer.gradient_clip_val", ["0", "0.5", "-1", "null"]),
    ("trainer.limit_train_batches", ["1", "0", "0.5", "-1", "2.5", "1.0", "100"]),
    ("trainer.limit_val_batches", ["0", "1", "-1", "0.5", "2.0"]),
    ("trainer.limit_test_batches", ["0", "1", "-1", "3.5"]),
    ("++trainer.gradient_clip_algorithm", ["norm", "value", "banana"]),
    ("++trainer.val_check_interval", ["1", "0", "-1", "0.5", "1.5", "100000"]),
    ("++trainer.strategy", ["auto", "banana", "deepspeed", "dp", "xla", "single_device", "fsdp_cpu_offload"]),
    ("++trainer.max_steps", ["1", "-1", "0", "-2"]), ("++trainer.min_epochs", ["2", "-1"]),
    ("++trainer.max_time", ["00:00:00:01", "abc", "{minutes:1}", "-1"]),
    ("++trainer.overfit_batches", ["1", "0.5", "-1", "2.5"]),
    ("++trainer.fast_dev_run", ["true", "1", "-1", "2"]),
    ("++trainer.num_nodes", ["1", "0", "-1"]), ("++trainer.profiler", ["banana", "null"]),
    ("++trainer.detect_anomaly", ["true"]), ("++trainer.benchmark", ["true"]),
    ("++trainer.enable_checkpointing", ["false"]), ("++trainer.inference_mode", ["false"]),
    ("++trainer.reload_dataloaders_every_n_epochs", ["1", "-1"]), ("++trainer.barebones", ["true"]),
    ("++trainer.sync_batchnorm", ["true"]), ("++trainer.use_distributed_sampler", ["false"]),
]
train_line = st.lists(st.one_of(
    keys(*TRAIN_KEYS), keys(*TRAINER_KEYS), keys(*TRAINER_KEYS),
    edits([k for k, _ in TRAIN_KEYS + TRAINER_KEYS if not k.startswith("+")]),
    group("data", ["mnist", "digits"]), group("model", ["mlp", "distill"]),
    group("model/net", ["cnn", "mlp"]),
    group("model/scheduler", ["onecycle", "warmup_cosine"]), group("model/augment", ["affine", "translate"]),
    group("callbacks", ["default", "none", "early_stopping"]), group("logger", ["csv", "tensorboard"]),
    group("trainer", ["cpu", "default", "gpu"]), group("debug", ["limit", "overfit", "fast_dev_run"]),
    group("experiment", ["keras_tutorial", "mlp128_best", "mlp128_distill", "cnn_teacher", "fast_gpu",
                         "ablation_recipe"]),
    st.sampled_from(["hparams_search=optuna", "hydra/launcher=banana", "--cfg=job", "--info", "--help",
                     "-m", "--resolve", "--bogus", "hydra.job.chdir=true"]),
    assign("resume", place), assign("ckpt_path", place), assign("hydra.run.dir", place),
    assign("model.teacher", place), assign("data.root", place),
), max_size=4)

RUN_KEYS = [("misclassified", ["0", "5", "-1", "100000"])]
common_keys = st.one_of(assign("run_dir", place), assign("ckpt_path", place), assign("data.root", place),
                        assign("output_dir", place))


def command_line(own: list[tuple[str, list[str]]], paths: list[str]) -> st.SearchStrategy[list[str]]:
    """What evaluate, predict and export take: their own keys, paths, edits and Hydra's flags."""
    return st.lists(st.one_of(
        keys(*own), common_keys, *(assign(key, place) for key in paths),
        edits([k for k, _ in own] + ["run_dir", "ckpt_path", "data.root"]),
        group("model/net", ["cnn"]), group("data", ["mnist"]),
        st.sampled_from(["--cfg=job", "--help", "-m", "--bogus", "hydra.run.dir=elsewhere"]),
    ), max_size=4)


evaluate_line = command_line(RUN_KEYS, ["output_dir"])
predict_line = command_line(
    [("index", ["0", "199", "200", "-1", "10000", "[0,1]", "[]", "[-1]", "[0,99999]", "1.5", "[a]"]),
     ("top_k", ["1", "3", "10", "11", "0", "-1"]), ("output", ["text", "json", "banana"])],
    ["images", "preview"])
export_line = command_line(
    [("format", ["onnx", "torchscript", "ONNX", "pt", "banana", "null"]),
     ("check_digits", ["0", "1", "10", "-1", "100000"])], ["output"])
summarize_line = st.lists(st.one_of(place, st.sampled_from(["--csv", "--plot", "--bogus", "-h"]),
                                    st.tuples(st.just("--plot"), place).map("=".join), junk), max_size=4)
confirm_line = st.tuples(place, st.lists(st.one_of(
    keys(("top_k", ["1", "0", "-1"]), ("seeds", ["1", "0", "-3"])), assign("out", place), junk,
    st.sampled_from(["trainer.max_epochs=1", "-m", "--help"])), max_size=3)).map(lambda t: [t[0], *t[1]])


# ---------------------------------------------------------------------------------------- the fixtures

# the tiny runs' settings: a couple of batches of one epoch, so that a command line that trains costs ~1 s
TINY = ["data.val_size=100", "data.download=false", "trainer=cpu", "trainer.max_epochs=1",
        "++trainer.limit_train_batches=2", "++trainer.limit_val_batches=2", "++trainer.limit_test_batches=2",
        "logger=csv", "steps_per_execution=2", "model.net.hidden_sizes=[16]", "threads=1"]


def run_command(name: str, argv: list[str], data_root: Path) -> tuple[int, str]:
    """`python -m mnist_lit.<name> argv...` in this process, counted: (exit code, stdout + stderr)."""
    TRIED[name] += 1
    return run_in_process(name, argv, data_root)


def check_outcome(code: int, output: str, argv: list[str]) -> None:
    """Exit 0, or exit 1 with one paragraph at the end of the output; never a traceback."""
    shown = f"command line {argv}: exit {code}\n{output[-3000:]}"
    assert "Traceback (most recent call last)" not in output, shown
    assert "HYDRA_FULL_ERROR" not in output, shown
    assert code in (0, 1), shown
    if code == 1:
        lines = output.rstrip().splitlines()
        # predict's inputs each have their line (`digit.png: error: ...`), then one that counts the failures
        starts = [i for i, line in enumerate(lines) if re.search(r"(^|:\s+)(error|stopped): \S", line)]
        assert starts, shown
        paragraph = lines[starts[-1]:]
        assert all(line.strip() for line in paragraph) and len("\n".join(paragraph)) < 2000, shown




@pytest.fixture(scope="module")
def fixtures(tmp_path_factory, request) -> Path:
    """A tiny run, a tiny two-job sweep, and the wrong kinds of file and folder, made once."""
    made = tmp_path_factory.mktemp("fuzz_fixtures")
    data = write_mnist(made / "data", n_train=300, n_test=200)
    cwd = os.getcwd()
    os.chdir(made)
    try:
        sweep = ["-m", f"hydra.sweep.dir={made / 'sweep'}", "seed=1,2"]
        for argv in ([f"hydra.run.dir={made / 'run'}"], sweep):
            code, output = run_command("train", [*argv, f"data.root={data}", *TINY], data)
            assert code == 0, output[-3000:]
    finally:
        os.chdir(cwd)
    TRIED.clear()  # the fixtures' own runs are no drawn command line
    (made / "empty").mkdir()
    (made / "text.txt").write_text("not a checkpoint\n")
    (made / "text.ckpt").write_text("not a checkpoint either\n")
    from PIL import Image

    Image.new("L", (28, 28), 0).save(made / "digit.png")
    (made / "images").mkdir()
    Image.new("RGB", (40, 30), (255, 255, 255)).save(made / "images" / "blank.png")
    (made / "images" / "notes.png").write_text("not an image\n")
    (made / "evaluated").mkdir()  # a folder another command wrote: evaluate's output_dir
    (made / "evaluated" / "eval.json").write_text("{}\n")
    (made / "logs" / "train" / "runs").mkdir(parents=True)
    shutil.copytree(made / "run", made / "logs" / "train" / "runs" / "latest_run")

    yield made

    counts = dict(sorted(TRIED.items()))
    (tmp_path_factory.getbasetemp() / "fuzz_cli_counts.json").write_text(json.dumps(counts) + "\n")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"fuzz_cli: command lines tried per command: {counts}")


@pytest.fixture
def in_example(fixtures, tmp_path_factory):
    """Runs a command line in a fresh copy of the fixtures, the current folder (relative paths land there)."""
    base = tmp_path_factory.mktemp("fuzz_examples")

    def run(name: str, argv: list[str]) -> tuple[int, str]:
        folder = base / "example"
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(fixtures, folder, symlinks=True)
        cwd = os.getcwd()
        os.chdir(folder)
        try:
            return run_command(name, argv, folder / "data")
        finally:
            os.chdir(cwd)

    return run


# ---------------------------------------------------------------------------------------- the tests

@FUZZ
@given(argv=train_line)
@example(argv=["trainer.precision=banana"])
@example(argv=["++trainer.val_check_interval=100000"])
@example(argv=["++trainer.gradient_clip_algorithm=banana", "trainer.gradient_clip_val=1"])
@example(argv=["trainer.precision=64-true"])
@example(argv=["trainer.devices=0"])
@example(argv=["resume=text.ckpt"])
@example(argv=["ckpt_path=text.ckpt"])
@example(argv=["-m", "resume=run"])
@example(argv=["resume=sweep"])
@example(argv=["++trainer.profiler=5"])
@example(argv=["seed=${oops:1}"])
def test_train(in_example, argv):
    # the tiny settings first: the drawn overrides replace them; a search runs 2 trials, not 8
    search = ["hydra.sweeper.n_trials=2"] if "hparams_search=optuna" in argv and "-m" in argv else []
    code, output = in_example("train", ["data.root=data", *TINY, "hydra.run.dir=out", *argv, *search])
    check_outcome(code, output, argv)


@FUZZ
@given(argv=evaluate_line)
@example(argv=["run_dir=sweep"])
@example(argv=["run_dir=run/checkpoints/last.ckpt"])
@example(argv=["misclassified=${seed}"])
@example(argv=["run_dir=2026"])
@example(argv=["output_dir=true"])
def test_evaluate(in_example, argv):
    code, output = in_example("evaluate", ["run_dir=run", "data.root=data", *argv])
    check_outcome(code, output, argv)


@FUZZ
@given(argv=predict_line)
@example(argv=["index=200"])
@example(argv=["images=text.txt"])
@example(argv=["index=200", "images=run"])
@example(argv=["~output"])
def test_predict(in_example, argv):
    code, output = in_example("predict", ["run_dir=run", "index=0", "data.root=data", *argv])
    check_outcome(code, output, argv)


@FUZZ
@given(argv=export_line)
@example(argv=["format=banana"])
@example(argv=["format=onnx"])
@example(argv=["+ckpt_path=true"])
@example(argv=["~format"])
def test_export(in_example, argv):
    code, output = in_example("export", ["run_dir=run", "data.root=data", "format=torchscript",
                                            "check_digits=20", *argv])
    check_outcome(code, output, argv)


@FUZZ
@given(argv=summarize_line)
@example(argv=["run"])
@example(argv=["text.txt"])
def test_summarize(in_example, argv):
    code, output = in_example("summarize", argv)
    check_outcome(code, output, argv)


@FUZZ
@given(argv=confirm_line)
@example(argv=["sweep"])
@example(argv=["run"])
def test_confirm(in_example, argv):
    code, output = in_example("confirm", argv)
    check_outcome(code, output, argv)
