"""Runs that stop early lose nothing: signals, divergence and failed writes end a run cleanly.

- `StopOnSignal`: SIGINT (Ctrl-C) or SIGTERM asks training to stop after the current training_step (a group
  of optimizer steps); it then saves a resumable `last.ckpt` and raises `Interrupted`. A second Ctrl-C
  stops at once (the last checkpoint is then the one of the last epoch end).
- `StopOnDivergence`: a NaN, infinite or exploding training loss raises `Diverged` before any checkpoint
  of the broken weights is written; the best checkpoint so far stays.
- `ResumeExactly`: keeps the random number generators in the checkpoint, so that a resumed run draws
  what the uninterrupted one would have.
- `AtomicCheckpointIO`: writes a checkpoint under a temporary name and renames it, so a crash or a full
  disk never leaves a half-written file under the final name.
"""

from __future__ import annotations

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

from mnist_lit.errors import UserError

log = logging.getLogger(__name__)


class Interrupted(Exception):
    """Training stopped on a signal, after saving a resumable checkpoint (None: none could be saved)."""

    def __init__(self, signum: int, checkpoint: str | None):
        super().__init__(f"{signal.Signals(signum).name}, checkpoint {checkpoint}")
        self.signum, self.checkpoint = signum, checkpoint


class Diverged(Exception):
    """The training loss became NaN, infinite or huge."""


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
            if cb is not None and cb.save_last:  # #13: it is the run's last.ckpt, also in epoch 0: a resume
                cb.last_model_path = str(path)  # then overwrites it instead of adding last-v1.ckpt
            trainer.save_checkpoint(path)
            raise Interrupted(self.signum or signal.SIGINT, str(path))


class StopOnDivergence(pl.Callback):
    """Stops when the epoch's mean training loss (summed on the device) is NaN, infinite or above `LIMIT`.

    Adam bounds each update by the learning rate, so a far too large one (lr=1e3) sends the loss to huge
    but finite values rather than to NaN; guessing scores ln(10) = 2.3, and no run comes back from 100.
    One host read per training_step, i.e. per data.steps_per_execution optimizer steps, not per step.
    """

    LIMIT = 100.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = float(pl_module.train_sums[0]) / max(pl_module.train_count, 1)
        if trainer.strategy.reduce_boolean_decision(not loss <= self.LIMIT, all=False):  # NaN fails <= too
            raise Diverged(
                f"training diverged: the mean training loss of epoch {trainer.current_epoch} reached "
                f"{loss:.3g} by optimizer step {trainer.global_step} (NaN, infinite or above {self.LIMIT:g}; "
                "guessing scores 2.3)"
            )


class ResumeExactly(pl.Callback):
    """What a resumed run needs to end as the uninterrupted one would have.

    - the random number generators (dropout, augmentation), saved with every checkpoint;
    - the training loader's position in the epoch, also when a schedule set the data up early;
    - with ckpt_path=<another run's checkpoint>, that run's best checkpoint: it is copied into this run's
      checkpoints/ and ModelCheckpoint's record is moved with it (Lightning keeps no best score across
      folders), so the best epoch is still chosen among all epochs, those before the resume included.
    """

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
                    tmp = new / f".{Path(path).name}.tmp"
                    shutil.copy2(path, tmp)
                    os.replace(tmp, new / Path(path).name)
        if not best_k:
            return
        state.update(dirpath=str(new), best_k_models=best_k, last_model_path="",
                     best_model_path=str(new / Path(state["best_model_path"]).name),
                     kth_best_model_path=str(new / Path(state["kth_best_model_path"]).name)
                     if state.get("kth_best_model_path") else "")

    def on_train_start(self, trainer, pl_module) -> None:
        # Lightning gives the training loader its saved position when it sets up the training data after
        # loading the checkpoint; `trainer.estimated_stepping_batches` in configure_optimizers (a schedule
        # over the whole fit) sets the data up before that, and the position would be lost: give it now,
        # and restart the iterator (which has already fetched a group from the wrong place)
        loop = trainer.fit_loop
        if loop._combined_loader_states_to_load and loop._data_fetcher is not None:
            loop._load_combined_loader_states()
            iter(loop._data_fetcher)

    def state_dict(self) -> dict[str, Any]:
        # torch's generators only: numpy and Python states are not tensors, which weights-only loading refuses
        state = {"torch": torch.get_rng_state()}
        if torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        torch.set_rng_state(state_dict["torch"])
        cuda = state_dict.get("cuda")
        if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save to `.<name>.tmp`, fsync, then rename: the final name only ever holds a complete file."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)  # object stores: atomic puts
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException as err:  # a second Ctrl-C mid-write too: no temporary file is left behind
            tmp.unlink(missing_ok=True)
            if not isinstance(err, OSError):
                raise
            raise UserError(
                f"could not write checkpoint {path}: {err.strerror or err}. Free some disk space or write "
                "the run elsewhere (hydra.run.dir=<a writable folder>); the previous checkpoints are intact."
            ) from err
