"""CPU threads that follow the load (`threads=null`, the default).

torch runs one OpenMP thread per core, and each thread spin-waits for the others between operations. While
another process holds a core, the spinning thread waits for it: on a 2-core machine, a second training
makes both many times slower. So while other processes keep cores busy, a run uses one thread fewer per busy
core, and goes back up when they are gone.

Changing the thread count mid-run is safe for the numbers only where matrix products give the same bits
with any thread count: MKL does with MKL_CBWR=AUTO,STRICT (set by mnist_lit/__init__.py before torch loads).
That is checked once, with this machine's BLAS; where it does not hold, the count stays fixed (one log line).
"""

from __future__ import annotations

import logging
import math
import time

import psutil
import torch
from lightning.pytorch import Callback

log = logging.getLogger(__name__)

# products of the shapes a training step and an evaluation multiply (batch x 784 x 128 and back)
CHECKED_SHAPES = ((32, 784, 128), (784, 32, 128), (128, 32, 10), (1000, 784, 128), (2048, 128, 10))


def products_agree(threads: int) -> bool:
    """Whether matrix products give the same bits with 1 and with `threads` threads."""
    gen = torch.Generator().manual_seed(0)
    pairs = [(torch.rand(m, k, generator=gen), torch.rand(k, n, generator=gen)) for m, k, n in CHECKED_SHAPES]
    before = torch.get_num_threads()
    try:
        results = []
        for count in (1, threads):
            torch.set_num_threads(count)
            results.append([a @ b for a, b in pairs])
    finally:
        torch.set_num_threads(before)
    return all(torch.equal(x, y) for x, y in zip(*results, strict=True))


class CpuLoad:
    """Cores' worth of CPU time that other processes used since the last reading."""

    def __init__(self) -> None:
        self.process = psutil.Process()
        self.last = self.read()

    def read(self) -> tuple[float, float, float]:
        total, ours = psutil.cpu_times(), self.process.cpu_times()
        busy = sum(total) - total.idle - getattr(total, "iowait", 0.0)
        return time.monotonic(), busy, ours.user + ours.system

    def others(self) -> float:
        now = self.read()
        (t0, busy0, ours0), (t1, busy1, ours1) = self.last, now
        self.last = now
        return max(0.0, (busy1 - busy0) - (ours1 - ours0)) / max(t1 - t0, 1e-6)


class ThreadsFollowLoad(Callback):
    """`threads=N`: N threads, fixed. `threads=null`: up to torch's default (one per core), one thread fewer
    per core that other processes keep busy, re-read every `every_s` seconds of training or evaluation."""

    steps_in_groups = True  # once per group of grouped steps is as good: it reads a clock, at most twice a second

    def __init__(self, threads: int | None, every_s: float = 0.25) -> None:
        self.threads, self.every_s = threads, every_s
        self.most = 1
        self.load: CpuLoad | None = None
        # read from here (the run builds its data, model and Trainer): fit starts with the right count, not
        # with a first group of steps spent spinning beside another process's threads
        self.started = CpuLoad() if threads is None else None
        self.changes = 0

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.threads:
            torch.set_num_threads(self.threads)
            return
        if self.load is not None or trainer.strategy.root_device.type != "cpu":
            return
        # a joblib worker of a parallel sweep starts with cores / n_jobs threads: that count stays
        self.most = torch.get_num_threads()
        if self.most < 2:
            return
        if not products_agree(self.most):
            log.info("CPU threads stay at %d: this machine's BLAS gives other numbers with another thread "
                     "count, so the count cannot follow the load without changing results (on a busy "
                     "machine, set threads=1)", self.most)
            return
        self.load = self.started or CpuLoad()
        self.follow(at_once=True)

    def follow(self, at_once: bool = False) -> None:
        if self.load is None or time.monotonic() - self.load.last[0] < (0.05 if at_once else self.every_s):
            return
        others, now = self.load.others(), torch.get_num_threads()
        # down as soon as other processes hold half a core, up only once they leave most of it: a reading
        # near the middle does not flip the count back and forth
        down = max(1, min(self.most, psutil.cpu_count() - math.floor(others + 0.5)))
        up = max(1, min(self.most, psutil.cpu_count() - math.floor(others + 0.8)))
        wanted = down if down < now else max(up, now)
        if wanted != now:
            log.debug("CPU threads: %d (other processes use %.1f cores)", wanted, others)
            torch.set_num_threads(wanted)
            self.changes += 1

    def on_train_batch_end(self, *args) -> None:
        self.follow()

    def on_validation_batch_end(self, *args) -> None:
        self.follow()

    def on_test_batch_end(self, *args) -> None:
        self.follow()
