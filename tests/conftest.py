"""Shared fixtures: synthetic MNIST in the real IDX format, the real MNIST files, and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

PROJECT = Path(__file__).resolve().parent.parent
REAL_ROOT = Path(os.environ.get("MNIST_ROOT", PROJECT.parent / "shared" / "mnist"))


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


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """A data root with 600 train / 200 test synthetic digits in torchvision's layout (read-only use)."""
    return write_mnist(tmp_path_factory.mktemp("synthetic_mnist"))


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


SYNTHETIC_OVERRIDES = ["data.val_size=100", "data.download=false", "data.steps_per_execution=5", "trainer=cpu"]


def run_cli(module: str, *overrides: str, timeout: float = 600, env: dict | None = None):
    """Run `python -m <module> overrides...` from the project root; returns the CompletedProcess."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", module, *overrides],
        cwd=PROJECT, capture_output=True, text=True, timeout=timeout, env=full_env,
    )
