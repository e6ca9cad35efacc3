"""metrics.json: how a run ended, its final metrics, and what it ran on (device, versions, git commit)."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import platform
import resource
import subprocess
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import lightning
import lightning.pytorch as pl
import torch

from mnist_lit import __version__
from mnist_lit.errors import UserError
from mnist_lit.runs.checkpoint import read_metrics
from mnist_lit.files import write_atomically
from mnist_lit.runs.objectives import model_metrics, parameter_count
from mnist_lit.runs.reliability import Interrupted, end_early, last_checkpoint_path
from mnist_lit.speed.threads import ThreadsFollowLoad

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def git_state() -> dict:
    """The project's commit and whether its tracked files differ from it (null outside a git checkout)."""

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=5,
                                 check=True)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip()

    commit = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"git_commit": commit or None, "git_dirty": bool(dirty) if dirty is not None else None}


def device_name(trainer: pl.Trainer) -> str:
    device = trainer.strategy.root_device
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    threads = f"{torch.get_num_threads()} threads"
    for callback in trainer.callbacks:
        if isinstance(callback, ThreadsFollowLoad) and callback.load is not None:
            threads = f"up to {callback.most} threads, following the load"
    return f"cpu ({platform.processor() or platform.machine()}, {threads})"


def write_json_atomically(path: Path, data: dict) -> None:
    """A temporary name, then a rename: an interrupted write never leaves a truncated file."""
    try:
        write_atomically(path, lambda f: f.write((json.dumps(data, indent=2) + "\n").encode()))
    except OSError as err:
        raise UserError(f"cannot write {path}: {err.strerror or err}. The file written before is intact: free "
                        "some disk space (or make the folder writable) and run the command again, or choose "
                        "another folder with hydra.run.dir=<folder>.") from err


def final_metrics(trainer: pl.Trainer, module: pl.LightningModule, prefixes=("train/", "val/")) -> dict:
    """The metrics Lightning holds now, as floats; the best validation accuracy comes from the module's own
    (checkpointed) record, so a run resumed after its last epoch still has it."""
    metrics = {k: v.item() for k, v in trainer.callback_metrics.items() if k.startswith(prefixes)}
    if "val/" in prefixes:
        with warnings.catch_warnings():  # none before the first validation (diverged at once): -inf
            warnings.filterwarnings("ignore", "The ``compute`` method of metric MaxMetric was called before")
            best = module.val_acc_best.compute().item()
        if math.isfinite(best):
            metrics["val/acc_best"] = best
    return metrics


class RunRecord:
    """Writes `<out_dir>/metrics.json` for a run (on the global-zero process only), however it ends.

    `report(metrics, status)` shows a run that ended (completed, pruned or diverged) elsewhere too: the
    recipe passes TensorBoard's HPARAMS table.
    """

    def __init__(self, out_dir: Path, cfg, trainer: pl.Trainer, datamodule, module: pl.LightningModule,
                 report: Callable[[dict, str], None] = lambda metrics, status: None):
        self.path = Path(out_dir) / "metrics.json"
        self.cfg, self.trainer, self.datamodule, self.module = cfg, trainer, datamodule, module
        self.report, self.start, self.fit_seconds = report, time.perf_counter(), 0.0
        # a resumed run (resume=, or a sweep job continuing its earlier attempt: ckpt_path) goes on from what
        # its earlier attempts recorded here: metrics (resumed after its last epoch it trains nothing new)
        # and fit time. A ckpt_path= run in a new folder finds nothing recorded.
        recorded = read_metrics(Path(out_dir)) if cfg.get("resume") or cfg.get("ckpt_path") else {}
        self.previous = dict(recorded.get("metrics") or {})
        self.previous_fit = recorded.get("fit_seconds") or 0.0
        self.metrics = dict(self.previous)

    @contextlib.contextmanager
    def ending_cleanly(self, stop):
        """Around fit and test: a run that stops early (a signal, divergence, a pruner, an error) writes how
        it ended into metrics.json, and raises what the user should see (reliability.end_early)."""
        self.start = time.perf_counter()
        try:
            yield
        except BaseException as err:
            end_early(err, stop, self, time.perf_counter() - self.start)
            raise

    def fitted(self, stop) -> None:
        """After fit: a signal during the last validation stops here, the training complete and saved."""
        if stop.signum is not None:
            path = last_checkpoint_path(self.trainer)
            if not path.is_file():  # no checkpoint callback saved it (callbacks=none): the training is kept
                self.trainer.save_checkpoint(path, weights_only=False)
            raise Interrupted(stop.signum, str(path))
        self.fit_seconds = time.perf_counter() - self.start
        self.metrics = self.previous | self.fit_metrics()

    def tested(self) -> None:
        self.metrics |= final_metrics(self.trainer, self.module, prefixes=("test/",))

    def fit_metrics(self) -> dict:
        return final_metrics(self.trainer, self.module)

    def complete(self) -> dict:
        """Write the completed run's record, and say in one line how it did."""
        # the network's cost beside its scores (what a multi-objective search trades accuracy against); not
        # in TensorBoard's HPARAMS table, whose columns read the scalars logged
        cost = model_metrics(self.module.net, self.datamodule)
        scores = {k: v for k, v in self.metrics.items() if k not in cost}
        result = self.write("completed", self.fit_seconds, scores | cost, shown=scores)
        if self.trainer.is_global_zero:
            tested = (f"test/acc {result['test_acc']:.4f}  test/loss {result['test_loss']:.4f}"
                      if result["test_acc"] is not None else "not tested (test=false)")
            log.info("%s  best val/acc %.4f  fit %.1f s  -> %s", tested, result["best_val_acc"] or float("nan"),
                     self.fit_seconds, self.path.parent)
        return result

    @property
    def best_checkpoint(self) -> str | None:
        """The best checkpoint's path: in this run's own folder where the run was moved or copied since it
        was saved (a checkpoint records the absolute path), else the recorded one while it exists."""
        callback = self.trainer.checkpoint_callback
        if callback is None or not callback.best_model_path:
            return None
        recorded = Path(callback.best_model_path)
        own = Path(callback.dirpath or "") / recorded.name
        if callback.dirpath and own.is_file():
            return str(own)
        return str(recorded) if recorded.is_file() else None

    def write(self, status: str, fit_seconds: float, metrics: dict, shown: dict | None = None, **extra) -> dict:
        """metrics.json with `status`; `shown` (else `metrics`) goes to `report` for a run that ended."""
        trainer = self.trainer
        record = {
            "status": status,
            **extra,
            "test_acc": metrics.get("test/acc"),
            "test_loss": metrics.get("test/loss"),
            "best_val_acc": metrics.get("val/acc_best"),
            "metrics": metrics,
            "epochs": trainer.current_epoch,
            "steps": trainer.global_step,
            "fit_seconds": round(self.previous_fit + fit_seconds, 3),
            "seed": self.cfg.seed,
            **self.datamodule.provenance(),  # where the data came from (MNIST: data_root)
            "split_seed": self.datamodule.split_seed,
            "split_digest": self.datamodule.split_digest,
            "trainable_params": parameter_count(self.module.net),
            "device": device_name(trainer),
            # whether the grouped steps trained (mnist_lit.speed.grouped.GroupedSteps), or Lightning's standard path
            "fast": any(getattr(cb, "grouped", False) for cb in self.trainer.callbacks),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "gpu_peak_mb": (round(torch.cuda.max_memory_allocated() / 2**20, 1)
                            if torch.cuda.is_initialized() else None),
            "best_checkpoint": self.best_checkpoint,
            "versions": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "lightning": lightning.__version__,
                "mnist_lit": __version__,
            },
            **git_state(),
        }
        if trainer.is_global_zero:
            write_json_atomically(self.path, record)
        if status in ("completed", "pruned", "diverged"):
            self.report(metrics if shown is None else shown, status)
        return record
