"""Shared fixtures: synthetic MNIST in the real IDX format, the real MNIST files, and a CLI runner."""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import pytest
import torch
from filelock import FileLock

# fixtures: a local PostgreSQL server and a database of each test's own (tests/test_postgres.py)
from postgres import postgres_server, postgres_url  # noqa: F401

from mnist_lit.config import schema

PROJECT = Path(__file__).resolve().parent.parent
REAL_ROOT = Path(os.environ.get("MNIST_ROOT", PROJECT.parent / "shared" / "mnist"))
MAX_WORKERS = 4  # each worker's CLI runs hold about 1.2 GB; more workers than cores only wait for each other

if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    # the cores shared out among the workers (pyproject runs pytest-xdist): torch in a worker and in the CLI
    # runs it starts gets its share, not all the cores each, which would make every worker wait for the others
    _threads = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ["OMP_NUM_THREADS"] = str(_threads)
    torch.set_num_threads(_threads)


def pytest_xdist_auto_num_workers(config) -> int:
    """`-n auto`: one worker per core, at most MAX_WORKERS."""
    return max(1, min(os.cpu_count() or 1, MAX_WORKERS))


def pytest_collection_modifyitems(items) -> None:
    # `--dist loadgroup`: the SLURM tests run one after the other on one worker, each with the cluster's cores
    for item in items:
        if item.get_closest_marker("slurm"):
            item.add_marker(pytest.mark.xdist_group("slurm"))
    # the longest first (the SLURM group, then the other slow ones), so that no worker is left with a long
    # test at the end while the others wait
    items.sort(key=lambda item: (not item.get_closest_marker("slurm"), not item.get_closest_marker("slow")))


def write_idx(path: Path, data: torch.Tensor) -> None:
    """Write a uint8 tensor as an IDX file (magic 0x0000080N, big-endian dims, raw bytes)."""
    header = (0x800 + data.dim()).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in data.shape)
    path.write_bytes(header + data.to(torch.uint8).contiguous().numpy().tobytes())


def make_digits(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n learnable 28x28 'digits': class k is a bright bar at a class-specific place, plus noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    labels = labels[torch.randperm(n, generator=g)]
    images = torch.randint(0, 60, (n, 28, 28), generator=g)
    for k in range(10):
        rows = slice(2 + 2 * k, 6 + 2 * k)
        images[labels == k, rows, 4:24] = 255
    return images.to(torch.uint8), labels.to(torch.uint8)


def write_mnist(root: Path, n_train: int = 600, n_test: int = 200) -> Path:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        images, labels = make_digits(n, seed)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return root


def made_once(tmp_path_factory, name: str, make: Callable[[Path], None]) -> Path:
    """The test session's `name` folder, made by `make(folder)` once, whichever test asks first; under
    pytest-xdist once for all the workers (the others wait for it), in the folder above their own."""
    base = tmp_path_factory.getbasetemp()
    folder = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / name
    folder.parent.mkdir(parents=True, exist_ok=True)
    done = folder.with_name(f"{folder.name}.made")
    with FileLock(folder.with_name(f"{folder.name}.lock")):
        if not done.exists():
            make(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """A data root with 600 train / 200 test synthetic digits in torchvision's layout (read-only use)."""
    return made_once(tmp_path_factory, "synthetic_mnist", write_mnist)


@pytest.fixture
def fresh_synthetic_root(tmp_path) -> Path:
    """A synthetic data root of the test's own, free to corrupt."""
    return write_mnist(tmp_path / "data")


@pytest.fixture(scope="session")
def real_root() -> Path:
    """The real MNIST files; CI must have them, elsewhere the test is skipped."""
    if not (REAL_ROOT / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file():
        if os.environ.get("CI"):
            pytest.fail(f"real MNIST files not found at {REAL_ROOT} (set MNIST_ROOT)")
        pytest.skip(f"real MNIST files not found at {REAL_ROOT} (set MNIST_ROOT)")
    return REAL_ROOT


SYNTHETIC_OVERRIDES = ["data.val_size=100", "data.download=false", "steps_per_execution=5", "trainer=cpu"]


# what two runs that should end alike are compared on (timings and paths aside)
COMPARED = ("status", "test_acc", "test_loss", "best_val_acc", "metrics", "epochs", "steps")


def compared(run_dir: Path) -> dict:
    """A run's outcome from its metrics.json: COMPARED, and its best checkpoint's file name."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics["metrics"].pop("model/latency_ms", None)  # a timing: never the same twice
    return {k: metrics[k] for k in COMPARED} | {"best": Path(metrics["best_checkpoint"]).name}


@contextlib.contextmanager
def process_state_kept():
    """What a command changes in its process, put back: Hydra's current config, the root logger's handlers
    (Hydra adds one on the run's train.log, gone with the example's folder) and torch's thread count. Later
    tests in this worker run Lightning in-process and would inherit them."""
    import logging

    import torch
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    root = logging.getLogger()
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        HydraConfig.instance().cfg = None
        GlobalHydra.instance().clear()
        for handler in [h for h in root.handlers if isinstance(h, logging.FileHandler)]:
            root.removeHandler(handler)  # the run's train.log, in a folder about to be deleted
            handler.close()
        torch.set_num_threads(threads)


def run_in_process(name: str, argv: list[str], data_root: Path) -> tuple[int, str]:
    """`python -m mnist_lit.<name> argv...` in this process: (exit code, stdout + stderr)."""
    module = importlib.import_module(f"mnist_lit.{name}")
    out = io.StringIO()
    saved_argv, saved_env = sys.argv, dict(os.environ)
    sys.argv = [module.__file__, *argv]
    os.environ.pop("HYDRA_FULL_ERROR", None)
    os.environ["MNIST_ROOT"] = str(data_root)  # a config that drops data.root reads no real data
    code = 0
    try:
        # a completed run exits at once, skipping the interpreter's teardown: here it returns instead
        with process_state_kept(), mock.patch("mnist_lit.cli.entry.exit_without_teardown", lambda: None), \
                contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            module.main(*([argv] if name in ("summarize", "confirm") else []))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = saved_argv
        os.environ.clear()
        os.environ.update(saved_env)
    return code, out.getvalue()


def run_cli(module: str, *overrides: str, timeout: float = 600, env: dict | None = None):
    """Run `python -m <module> overrides...` from the project root; returns the CompletedProcess."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", module, *overrides],
        cwd=PROJECT, capture_output=True, text=True, timeout=timeout, env=full_env,
    )


# not the default network (hidden sizes, dropout), on standardised pixels: only the run's config says so
SYNTHETIC_RUN = [
    "trainer.max_epochs=3",
    "seed=0",
    "model.net.hidden_sizes=[32,16]",
    "model.net.dropout=0.1",
    "data.normalize=true",
    *SYNTHETIC_OVERRIDES,
]
REAL_RUN = ["trainer.max_epochs=3", "trainer=cpu", "data.download=false"]


def trained_run(tmp_path_factory, name: str, overrides: list[str]) -> Path:
    """A run dir trained with `overrides`, once per test session (made_once)."""
    def train(run_dir: Path) -> None:
        proc = run_cli("mnist_lit.train", f"hydra.run.dir={run_dir}", *overrides)
        assert proc.returncode == 0, proc.stderr[-3000:]

    return made_once(tmp_path_factory, f"trained_runs/{name}", train)


def synthetic_run_dir(tmp_path_factory, synthetic_root: Path) -> Path:
    """A 784-32-16-10 network with dropout on standardised synthetic digits, 3 epochs."""
    return trained_run(tmp_path_factory, "synthetic", [f"data.root={synthetic_root}", *SYNTHETIC_RUN])


def real_run_dir(tmp_path_factory, real_root: Path) -> Path:
    """The default network on the real MNIST, 3 epochs."""
    return trained_run(tmp_path_factory, "real", [f"data.root={real_root}", *REAL_RUN])


@pytest.fixture(scope="session")
def synthetic_run(synthetic_root, tmp_path_factory) -> Path:
    return synthetic_run_dir(tmp_path_factory, synthetic_root)


@pytest.fixture(scope="session")
def real_run(real_root, tmp_path_factory) -> Path:
    return real_run_dir(tmp_path_factory, real_root)


def compose(config: str, *overrides: str):
    """The config an entry point would get from the command line, for calling it in-process."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    schema.register()  # conf/train.yaml's defaults list starts with it

    with initialize_config_dir(str(PROJECT / "conf"), version_base="1.3"):
        return hydra_compose(config_name=config, overrides=list(overrides))


@pytest.fixture
def one_thread():
    """Torch on one thread: small tensors gain nothing from more, and lose much to waiting on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# a small CNN (model/net=cnn) with batch norm: tests/test_cnn.py's run and tests/test_distill.py's teacher
SYNTHETIC_CNN_RUN = [
    "trainer.max_epochs=2",
    "seed=0",
    "model/net=cnn",
    "model.net.channels=[4,8]",
    "model.net.hidden_size=16",
    "threads=1",
    *SYNTHETIC_OVERRIDES,
]


@pytest.fixture(scope="session")
def synthetic_cnn_run(synthetic_root, tmp_path_factory) -> Path:
    return trained_run(tmp_path_factory, "synthetic_cnn", [f"data.root={synthetic_root}", *SYNTHETIC_CNN_RUN])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get_json(url: str, body: dict | None = None):
    """GET `url` (POST with a JSON `body`) and parse the JSON answer; TensorBoard wants its XSRF header."""
    request = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json", "X-XSRF-Protected": "1"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@contextmanager
def local_server(command: list[str], ready: Callable[[], bool], name: str, timeout: float):
    """Runs a web server's `command` while the block runs: first waits until `ready()` is true (an OSError
    means not yet), failing with the server's stderr if it exits and with `name` after `timeout` seconds."""
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if ready():
                    break
            except OSError:
                pass
            assert server.poll() is None, server.stderr.read()[-3000:]
            assert time.monotonic() < deadline, f"{name} did not answer within {timeout:.0f} s"
            time.sleep(0.5)
        yield
    finally:
        server.terminate()
        server.wait(timeout=30)
