"""mnist_lit/speed/threads.py: the CPU thread count follows the load, and the numbers do not depend on it."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from functools import partial

import lightning.pytorch as pl
import pytest
import torch
from conftest import SYNTHETIC_OVERRIDES, run_cli

from mnist_lit.data import MNISTDataModule
from mnist_lit.model import MLP
from mnist_lit.module import MNISTClassifier
from mnist_lit.speed import threads as threads_module
from mnist_lit.speed.threads import ThreadsFollowLoad, products_agree

two_cores = pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs 2 cores to run 2 threads")


class FakeLoad:
    """Other processes' CPU use, read from a list (cycled) instead of the machine."""

    def __init__(self, others: list[float]):
        self.values, self.reads, self.last = others, 0, (float("-inf"),)

    def others(self) -> float:
        self.reads += 1
        return self.values[(self.reads - 1) % len(self.values)]


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def following(others: list[float], most: int = 2) -> ThreadsFollowLoad:
    callback = ThreadsFollowLoad(None, every_s=0.0)
    callback.most, callback.load = most, FakeLoad(others)
    return callback


@two_cores
def test_products_give_the_same_bits_with_any_thread_count(restore_threads):
    assert os.environ["MKL_CBWR"] == "AUTO,STRICT"  # set by mnist_lit before torch's first product
    assert products_agree(2)


@two_cores
def test_the_check_sees_products_that_change_with_the_thread_count():
    """Without MKL's strict mode, this machine's products differ between 1 and 2 threads: the check that
    keeps the count fixed then is not vacuous."""
    code = "from mnist_lit.speed.threads import products_agree; print(products_agree(2))"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "MKL_CBWR": "OFF"},
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.usefixtures("restore_threads")
def test_threads_step_down_while_other_processes_use_cores_and_back_up(monkeypatch):
    monkeypatch.setattr(threads_module.psutil, "cpu_count", lambda: 2)
    torch.set_num_threads(2)  # as alone on 2 cores (a pytest-xdist worker starts with its share)
    callback = following([0.1, 0.45, 0.6, 1.4, 2.0, 0.4, 0.1, 0.3])
    seen = []
    for _ in range(8):
        callback.follow()
        seen.append(torch.get_num_threads())
    # down from half a core of use, back up only below a fifth of one; in between it stays
    assert seen == [2, 2, 1, 1, 1, 1, 2, 2]
    assert callback.changes == 2


@pytest.mark.usefixtures("restore_threads")
def test_threads_are_read_at_most_every_interval(monkeypatch):
    monkeypatch.setattr(threads_module.psutil, "cpu_count", lambda: 2)
    callback = following([1.0])
    callback.every_s = 3600.0
    callback.load.last = (threads_module.time.monotonic(),)
    callback.follow()
    assert callback.load.reads == 0


def fit(root, callback: pl.Callback, epochs: int = 2) -> torch.Tensor:
    pl.seed_everything(0, verbose=False)
    dm = MNISTDataModule(str(root), download=False, val_size=100, batch_size=32)
    model = MNISTClassifier(MLP(), partial(torch.optim.Adam, lr=1e-3))
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[callback])
    trainer.fit(model, dm)
    return torch.cat([p.detach().flatten() for p in model.net.parameters()])


@two_cores
@pytest.mark.usefixtures("restore_threads")
def test_the_numbers_are_the_same_whatever_the_load(synthetic_root, monkeypatch):
    """1 thread, 2 threads, and a count that changes at every step give bit-identical weights."""
    monkeypatch.setattr(threads_module.psutil, "cpu_count", lambda: 2)
    one = fit(synthetic_root, ThreadsFollowLoad(1))
    two = fit(synthetic_root, ThreadsFollowLoad(2))
    flapping = following([0.0, 1.0])
    changing = fit(synthetic_root, flapping)
    assert flapping.changes > 20  # about one per step
    assert torch.equal(one, two)
    assert torch.equal(one, changing)


@two_cores
@pytest.mark.usefixtures("restore_threads")
def test_an_explicit_count_is_kept(synthetic_root):
    callback = ThreadsFollowLoad(2)
    fit(synthetic_root, callback, epochs=1)
    assert callback.load is None and torch.get_num_threads() == 2


@two_cores
@pytest.mark.usefixtures("restore_threads")
def test_a_blas_that_changes_numbers_keeps_the_count_fixed_saying_why(synthetic_root, monkeypatch, caplog):
    monkeypatch.setattr(threads_module, "products_agree", lambda threads: False)
    torch.set_num_threads(2)
    callback = ThreadsFollowLoad(None)
    with caplog.at_level(logging.INFO, logger=threads_module.__name__):
        fit(synthetic_root, callback, epochs=1)
    assert callback.load is None and torch.get_num_threads() == 2
    lines = [r.getMessage() for r in caplog.records if r.name == threads_module.__name__]
    assert len(lines) == 1 and "CPU threads stay at 2" in lines[0] and "threads=1" in lines[0]


def test_a_run_records_its_thread_policy(synthetic_root, tmp_path):
    proc = run_cli("mnist_lit.train", *SYNTHETIC_OVERRIDES, f"data.root={synthetic_root}", "trainer.max_epochs=1",
                   "callbacks=none", f"hydra.run.dir={tmp_path}/run")
    assert proc.returncode == 0, proc.stderr
    device = json.loads((tmp_path / "run" / "metrics.json").read_text())["device"]
    # under pytest-xdist, each worker's runs get their share of the cores (tests/conftest.py)
    threads = int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1))
    assert device.endswith("up to 2 threads, following the load)" if threads == 2 else f" {threads} threads)")


def test_the_grouped_steps_still_train_beside_it(synthetic_root):
    """It follows the load once per group: the speed layer need not fall back to Lightning's path for it."""
    from mnist_lit.speed.grouped import GroupedSteps

    pl.seed_everything(0, verbose=False)
    dm = MNISTDataModule(str(synthetic_root), download=False, val_size=100, batch_size=32)
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[GroupedSteps(True, 4), ThreadsFollowLoad(None)])
    trainer.fit(MNISTClassifier(MLP(), partial(torch.optim.Adam, lr=1e-3)), dm)
    # Lightning saw a batch per group of 4 steps
    assert trainer.fit_loop.epoch_loop.batch_progress.total.completed < trainer.global_step
