"""Runs that stop early lose nothing: signals, divergence and failed writes end a run cleanly.

- `StopOnSignal`: SIGINT (Ctrl-C) or SIGTERM asks training to stop after the current training batch (with
  fast=true a group of optimizer steps); it then saves a resumable `last.ckpt` and raises `Interrupted`.
  A second Ctrl-C stops at once (the last checkpoint is then the one of the last epoch end).
- `StopOnDivergence`: a NaN, infinite or exploding training loss raises `Diverged` before any checkpoint
  of the broken weights is written; the best checkpoint so far stays.
- `ResumeExactly`: keeps the random number generators and the loader's place in the epoch in the
  checkpoint, so that a resumed run draws what the uninterrupted one would have.
- `AtomicCheckpointIO`: writes a checkpoint under a temporary name and renames it, so a crash or a full
  disk never leaves a half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import signal
import threading
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from mnist_lit.errors import RunStopped, UserError, user_error_of
from mnist_lit.reporting.callbacks import HostCopy
from mnist_lit.files import write_atomically

log = logging.getLogger(__name__)


class Interrupted(Exception):
    """Training stopped on a signal, after saving a resumable checkpoint (None: none could be saved)."""

    def __init__(self, signum: int, checkpoint: str | None):
        super().__init__(f"{signal.Signals(signum).name}, checkpoint {checkpoint}")
        self.signum, self.checkpoint = signum, checkpoint


class Ended(Exception):
    """A run that a rule of its own stopped for good (not resumed): its `status` goes into metrics.json."""

    status = "ended"


class Diverged(Ended):
    """The training loss became NaN, infinite or huge."""

    status = "diverged"


def last_checkpoint_path(trainer: pl.Trainer) -> Path:
    cb = trainer.checkpoint_callback
    if cb is not None and cb.dirpath:
        return Path(cb.dirpath) / "last.ckpt"
    return Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"


class StopOnSignal(pl.Callback):
    """Turns SIGINT and SIGTERM into a clean stop at the next training_step boundary.

    Used as a context manager around the whole run, so that a signal before or after fitting is noted too;
    the handlers only set a flag: stopping inside an optimizer step would leave a state no checkpoint
    can describe.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)
    steps_in_groups = True

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def _handle(self, signum: int, frame) -> None:
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # Ctrl-C twice: stop now
        self.signum = signum
        # a signal handler must not log (the logging lock may be held): write straight to stderr
        os.write(2, f"\n{signal.Signals(signum).name} received: stopping after the current steps "
                    "and saving a resumable checkpoint (Ctrl-C again to stop at once).\n".encode())

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.signum is not None and stage == "fit":
            raise Interrupted(self.signum, None)  # before any training: nothing to save

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # every process stops at the same step (a collective under DDP, free on one device)
        if trainer.strategy.reduce_boolean_decision(self.signum is not None, all=False):
            path = last_checkpoint_path(trainer)
            cb = trainer.checkpoint_callback
            if cb is not None and cb.save_last:  # it is the run's last.ckpt, also in epoch 0: a resume
                cb.last_model_path = str(path)  # then overwrites it instead of adding last-v1.ckpt
            trainer.save_checkpoint(path, weights_only=False)  # the whole state (unsaid: Lightning logs it)
            raise Interrupted(self.signum or signal.SIGINT, str(path))


class StopOnDivergence(pl.Callback):
    """Stops when the epoch's running training loss is NaN, infinite or above `LIMIT`, checked every `every`
    optimizer steps (one host read each) and before each validation.

    Adam bounds each update by the learning rate, so a far too large one (lr=1e3) sends the loss to huge
    but finite values rather than to NaN; guessing scores ln(10) = 2.3, and no run comes back from 100.
    On a GPU a check judges the loss read at the check before, which has reached the host by then: reading
    the latest would make the host wait for the steps queued on the GPU.
    """

    LIMIT = 100.0
    steps_in_groups = True  # checks at the first batch end past each multiple of `every`

    def __init__(self, every: int = 50):
        self.every, self.next_check = every, every
        self.reading = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.next_check:
            self.next_check = (trainer.global_step // self.every + 1) * self.every
            loss = pl_module.train_metrics()["train/loss"]
            reading = HostCopy(loss), trainer.current_epoch, trainer.global_step
            previous, self.reading = self.reading, reading
            if reading[0].done is None:  # on a CPU the value is at hand
                self.judge(trainer, *reading)
            elif previous is not None:
                self.judge(trainer, *previous)

    def on_validation_start(self, trainer, pl_module) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:  # before the epoch's checkpoint
            self.reading = None
            self.judge(trainer, HostCopy(pl_module.train_metrics()["train/loss"]), trainer.current_epoch,
                       trainer.global_step)

    def judge(self, trainer, reading: HostCopy, epoch: int, step: int) -> None:
        loss = float(reading.read())
        if trainer.strategy.reduce_boolean_decision(not loss <= self.LIMIT, all=False):  # NaN fails <= too
            raise Diverged(
                f"training diverged: the mean training loss of epoch {epoch + 1} reached {loss:.3g} by optimizer "
                f"step {step} (NaN, infinite or above {self.LIMIT:g}; guessing scores 2.3)"
            )


class ResumeExactly(pl.Callback):
    """What a resumed run needs to end as the uninterrupted one would have.

    - the random number generators (dropout, augmentation), saved with every checkpoint;
    - the training loader's position in the epoch: a run resumed mid-epoch starts after the batches
      already trained (the datamodule's `resume_at`);
    - last.ckpt at every validation, not only at those that found a new best (Lightning's rule);
    - with ckpt_path=<another run's checkpoint>, that run's best checkpoint: it is copied into this run's
      checkpoints/ and ModelCheckpoint's record is moved with it (Lightning keeps no best score across
      folders), so the best epoch is still chosen among all epochs, those before the resume included.
    """

    steps_in_groups = True

    def __init__(self):
        self.trainer: pl.Trainer | None = None
        self.epoch_start_step, self.resumed_epoch = 0, None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.trainer = trainer

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch != self.resumed_epoch:
            self.epoch_start_step = trainer.global_step

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        cb = trainer.checkpoint_callback
        state = checkpoint.get("callbacks", {}).get(cb.state_key) if cb is not None and cb.dirpath else None
        if trainer.state.fn != "fit" or not state or state.get("dirpath") in (None, cb.dirpath):
            return
        old, new = Path(state["dirpath"]), Path(cb.dirpath)
        best_k = {}
        for path, score in state.get("best_k_models", {}).items():
            if Path(path).parent == old and Path(path).is_file():
                new.mkdir(parents=True, exist_ok=True)
                best_k[str(new / Path(path).name)] = score
                if not (new / Path(path).name).exists():
                    with open(path, "rb") as src:
                        write_atomically(new / Path(path).name, lambda f, src=src: shutil.copyfileobj(src, f))
        if not best_k:
            return
        state.update(dirpath=str(new), best_k_models=best_k, last_model_path="",
                     best_model_path=str(new / Path(state["best_model_path"]).name),
                     kth_best_model_path=str(new / Path(state["kth_best_model_path"]).name)
                     if state.get("kth_best_model_path") else "")

    def on_validation_end(self, trainer, pl_module) -> None:
        # Lightning writes last.ckpt only at a validation that saved a new best checkpoint: a run killed
        # without a signal (kill -9, a lost node) would continue from that older epoch. ModelCheckpoint runs
        # after this and rewrites it when it saves a new best (its record of the best changes then).
        cb = trainer.checkpoint_callback
        if cb is None or not cb.save_last or trainer.sanity_checking or trainer.state.fn != "fit" \
                or trainer.global_step == 0 or trainer.fast_dev_run:
            return
        path = last_checkpoint_path(trainer)
        cb.last_model_path = str(path)  # so that ModelCheckpoint overwrites it instead of adding last-v1.ckpt
        trainer.save_checkpoint(path, weights_only=False)

    def state_dict(self) -> dict[str, Any]:
        # torch's generators only: numpy and Python states are not tensors, which weights-only loading refuses
        state: dict[str, Any] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        trainer = self.trainer
        if trainer is not None and trainer.state.fn == "fit":
            state.update(epoch=trainer.current_epoch, epoch_start_step=self.epoch_start_step,
                         batches_done=(trainer.global_step - self.epoch_start_step) * trainer.accumulate_grad_batches)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        torch.set_rng_state(state_dict["torch"])
        cuda = state_dict.get("cuda")
        if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        datamodule = self.trainer.datamodule if self.trainer is not None else None
        if "epoch" in state_dict and hasattr(datamodule, "resume_at"):
            self.resumed_epoch, self.epoch_start_step = state_dict["epoch"], state_dict["epoch_start_step"]
            datamodule.resume_at(self.resumed_epoch, state_dict["batches_done"])


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save to `.<name>.tmp`, fsync, then rename: the final name only ever holds a complete file."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)  # object stores: atomic puts
        from hydra.core.hydra_config import HydraConfig

        path = Path(path)
        # serialised in memory first: torch's zip writer reports a failed write (a full disk) as a
        # RuntimeError about file positions, where a plain write raises the OSError that says what happened
        data = io.BytesIO()
        try:
            torch.save(checkpoint, data)
            write_atomically(path, lambda f: f.write(data.getbuffer()), sync=True)
        except OSError as err:
            last = path.parent / "last.ckpt"
            again = (f"continue with: python -m mnist_lit.train {continue_command()}"
                     if last.is_file() and HydraConfig.initialized() else "run the command again")
            raise UserError(
                f"could not write checkpoint {path}: {err.strerror or err}. The checkpoints written before "
                f"are intact: free some disk space, then {again} (or write the run elsewhere: "
                "hydra.run.dir=<a writable folder>)."
            ) from err


def continue_command() -> str:
    """How to continue this run: a sweep's job (or search trial) with the whole sweep, the others alone."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN:
        return f"-m resume={Path(hydra_cfg.runtime.cwd, hydra_cfg.sweep.dir)}"
    return f"resume={hydra_cfg.runtime.output_dir}"


def end_early(err: BaseException, stop: StopOnSignal, record, fit_seconds: float) -> None:
    """Write metrics.json for a run that did not complete and raise what the user should see.

    Interrupted (a signal): status "interrupted" and how to resume; diverged: status "diverged" with the best
    checkpoint kept; pruned by a search: status "pruned", exit 0; anything else: status "failed", and the
    error itself goes on.
    """
    trainer = record.trainer
    if isinstance(err, Ended) and err.status != "diverged":  # a search's pruner: an ended trial, not a failure
        record.write(err.status, fit_seconds, record.fit_metrics(), **{err.status: str(err)})
        raise RunStopped(f"{err} (metrics.json: status {err.status})", err.status, 0) from None
    if isinstance(err, Interrupted) or (isinstance(err, SystemExit) and stop.signum is not None):
        # SystemExit: Lightning's own stop after a second Ctrl-C, or its SIGTERM check at an epoch end
        checkpoint = err.checkpoint if isinstance(err, Interrupted) else str(last_checkpoint_path(trainer))
        signum = stop.signum or signal.SIGINT
        name, code = signal.Signals(signum).name, 128 + signum
        if checkpoint is None or not Path(checkpoint).is_file():
            record.write("interrupted", fit_seconds, {}, resume_checkpoint=None)
            raise RunStopped(f"interrupted by {name} before the first checkpoint; nothing to resume from: "
                             "run the command again.", "interrupted", code) from None
        record.write("interrupted", fit_seconds, {}, resume_checkpoint=checkpoint)
        raise RunStopped(
            f"interrupted by {name} in epoch {trainer.current_epoch + 1} after {trainer.global_step} optimizer "
            f"steps; saved the resumable checkpoint {checkpoint} (metrics.json: status interrupted). Continue "
            f"the run with: python -m mnist_lit.train {continue_command()}", "interrupted", code) from None
    if isinstance(err, Diverged):
        record.write("diverged", fit_seconds, {}, error=str(err), shown=record.fit_metrics())
        best = record.best_checkpoint
        kept = f"The best checkpoint so far is kept: {best}" if best else "No epoch finished: no checkpoint"
        raise RunStopped(f"{err}; stopped (metrics.json: status diverged). {kept}. Lower the learning rate "
                         f"(model.optimizer.lr={record.cfg.model.optimizer.get('lr')}; the tutorial's is 1e-3).", "diverged") from None
    if isinstance(err, Exception):
        with contextlib.suppress(Exception):  # the error itself is what the user must see
            record.write("failed", fit_seconds, {}, error=str(user_error_of(err) or repr(err)))


def run_callbacks(stop: StopOnSignal) -> list[pl.Callback]:
    """Not options: whatever the config, a run that stops early keeps its work and resumes exactly."""
    return [stop, StopOnDivergence(), ResumeExactly()]


def run_plugins() -> list:
    """Checkpoints written atomically, and under SLURM the cluster's environment without Lightning's own
    auto-requeue (submitit requeues the job, and it continues from last.ckpt)."""
    from mnist_lit.runs.folders import cluster_plugins

    return [AtomicCheckpointIO(), *cluster_plugins()]
