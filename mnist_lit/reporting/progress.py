"""What a run prints while it trains: a live bar on a terminal, and one kept line per epoch everywhere.

`EpochLines` writes, after each epoch's validation, a line as Keras' `model.fit` does, into the console and
train.log alike (a sweep's or a SLURM job's record too):

    epoch 3/10  1500 steps  2.9 s  train/loss 0.087  train/acc 0.974  val/loss 0.097  val/acc 0.970  (best)

Epochs are counted from 1 of max_epochs wherever a person reads them; checkpoint file names keep Lightning's
count from 0 (epoch02-... is epoch 3/10). Where the output is no terminal (a file, CI, nohup, a SLURM log)
there is no bar to redraw: a long epoch gets a plain progress line at about every tenth of it instead.
`StepProgressBar` is the live bar: Rich's, counting optimizer steps, gone once its epoch has its line.
"""

from __future__ import annotations

import logging
import math
import sys
import time

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar

from mnist_lit.lightning_compat import EpochsFromOne

log = logging.getLogger(__name__)

SHOWN = ("train/loss", "train/acc", "val/loss", "val/acc")
# a progress line is worth writing for an epoch that takes longer than this
LONG_EPOCH_SECONDS = 20.0


def steps_per_epoch(trainer: pl.Trainer) -> int:
    """Optimizer steps in a training epoch (a loader of step groups says how many it holds)."""
    loader = trainer.train_dataloader
    steps = getattr(loader, "steps_per_epoch", None)
    if steps is None:  # Lightning also steps after an epoch's last, incomplete accumulation
        steps = -(-trainer.num_training_batches // trainer.accumulate_grad_batches)
    return int(steps)


def epoch_label(trainer: pl.Trainer, epoch: int) -> str:
    """`epoch` (Lightning's, from 0) as a person counts it: "3/10" for Lightning's epoch 2 of 10."""
    total = trainer.max_epochs
    return f"{epoch + 1}/{total}" if total is not None and total > 0 else str(epoch + 1)


def kept_checkpoint(trainer: pl.Trainer) -> str | None:
    """The best checkpoint on val/acc so far, where one is kept: "(best)" marks the epoch that wrote it."""
    callback = trainer.checkpoint_callback
    if isinstance(callback, ModelCheckpoint) and callback.monitor == "val/acc":
        return callback.best_model_path
    return None


def on_terminal() -> bool:
    return sys.stdout.isatty() and sys.stderr.isatty()


class _CurrentStream:
    """Writes to whatever sys.stdout (or sys.stderr) is at the time: while Rich's live bar is drawn, its
    proxy, which prints each line above the bar: a log handler that holds the terminal would break it."""

    def __init__(self, name: str):
        self.name = name

    def write(self, text: str) -> int:
        return getattr(sys, self.name).write(text)

    def flush(self) -> None:
        getattr(sys, self.name).flush()


class EpochLines(pl.Callback):
    """One line per epoch into the console and train.log (see the module docstring)."""

    # the grouped steps of the speed layer call the per-step hooks once per group: enough for the tenths
    steps_in_groups = True

    def __init__(self):
        self.started = time.monotonic()
        self.epoch_steps = self.next_tenth = 0
        self.start_step = 0
        self.live = False
        self.epoch_start_step = 0
        self.ended: tuple[int, int, float] | None = None
        self.kept: str | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.epoch_start_step = trainer.global_step  # a resumed run's, restored by now
        self.kept = kept_checkpoint(trainer)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        bar = trainer.progress_bar_callback
        self.live = isinstance(bar, RichProgressBar) and bar.is_enabled

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.write(trainer)
        self.started, self.epoch_start_step = time.monotonic(), trainer.global_step
        self.epoch_steps = steps_per_epoch(trainer)
        self.start_step = trainer.current_epoch * self.epoch_steps
        self.next_tenth = 1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.live or not trainer.is_global_zero or not self.epoch_steps:
            return  # a live bar shows the progress, or no one reads it
        done = trainer.global_step - self.start_step
        tenth = math.floor(10 * done / self.epoch_steps)
        if tenth < self.next_tenth:
            return
        self.next_tenth = tenth + 1
        elapsed = time.monotonic() - self.started
        if elapsed * self.epoch_steps / max(done, 1) < LONG_EPOCH_SECONDS or done >= self.epoch_steps:
            return
        # steps and time only: the running scores would cost a host read, and their grouped counterparts
        # (fast=true) are not the module's until the group ends
        log.info("epoch %s  %d/%d steps  %.1f s", epoch_label(trainer, trainer.current_epoch), done,
                 self.epoch_steps, elapsed)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # the module logs the epoch's scores after the callbacks' on_train_epoch_end: the line is written
        # once they are all there, at the next epoch's start or at the end of training
        # not an epoch that ended before a resume, whose end Lightning runs again without a step
        if trainer.global_step > self.epoch_start_step:
            self.ended = (trainer.current_epoch, trainer.global_step, time.monotonic() - self.started)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.write(trainer)

    def write(self, trainer: pl.Trainer) -> None:
        """The ended epoch's line, once."""
        if self.ended is None or not trainer.is_global_zero:
            return
        (epoch, step, seconds), self.ended = self.ended, None
        kept = kept_checkpoint(trainer)  # the epoch's checkpoint is saved after its callbacks' epoch end
        new_best, self.kept = (kept != self.kept if kept is not None else None), kept
        metrics = trainer.callback_metrics
        scores = "  ".join(f"{name} {float(metrics[name]):.4f}" for name in SHOWN if name in metrics)
        if new_best is None:  # no checkpoint kept on val/acc: the best score so far, ties included
            best = metrics.get("val/acc_best")
            new_best = best is not None and "val/acc" in metrics and float(metrics["val/acc"]) >= float(best)
        marked = "  (best)" if new_best else ""
        steps = step - epoch * self.epoch_steps if self.epoch_steps else step
        line = f"epoch {epoch_label(trainer, epoch)}  {steps} steps  {seconds:.1f} s  {scores}{marked}"
        log.info(line)


class StepProgressBar(EpochsFromOne, RichProgressBar):
    """Rich's progress bar on a terminal, counting optimizer steps (1500 an epoch at batch 32), epochs from 1,
    and redrawn about once a second: a redraw costs about as much as a step of this MLP. Elsewhere (a file,
    CI, a SLURM log) it draws nothing: EpochLines writes plain lines there."""

    steps_in_groups = True

    def __init__(self, refresh_rate: int = 10, leave: bool = False, update_seconds: float = 1.0):
        super().__init__(refresh_rate=refresh_rate, leave=leave)
        self.update_seconds = update_seconds
        self._last_update = 0.0
        if not on_terminal():
            self.disable()

    @property
    def total_train_batches(self) -> int:
        return steps_per_epoch(self.trainer)

    def get_metrics(self, trainer, pl_module) -> dict:
        """During training, this epoch's running train/loss and train/acc (one host read a redraw), beside
        the last epoch's validation scores."""
        metrics = super().get_metrics(trainer, pl_module)
        if (trainer.training and hasattr(pl_module, "train_metrics")
                and trainer.global_step > trainer.current_epoch * self.total_train_batches):  # stepped
            metrics.update({name: f"{float(value):.3f}" for name, value in pl_module.train_metrics().items()})
        return metrics

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.monotonic()
        if now - self._last_update < self.update_seconds:
            return
        self._last_update = now
        total = self.total_train_batches
        done = max(0, min(trainer.global_step - trainer.current_epoch * total, total))
        # Rich's bar shows batch_idx + 1 done: here, the optimizer steps of the epoch so far
        super().on_train_batch_end(trainer, pl_module, outputs, batch, done - 1)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # the epoch's line (EpochLines) takes the bar's place: its numbers are the epoch's, the bar's a
        # running mean that no longer matters
        super().on_train_batch_end(trainer, pl_module, None, None, self.total_train_batches - 1)  # all done
        if self.progress is not None and self.train_progress_bar_id is not None:
            self.progress.update(self.train_progress_bar_id, visible=False)
        self.refresh()

    def setup(self, trainer, pl_module, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        # the console's log lines go through the bar's redirection of the terminal, above the bar
        self.redirected = {}
        for handler in logging.getLogger().handlers:
            for name in ("stdout", "stderr"):
                if type(handler) is logging.StreamHandler and handler.stream is getattr(sys, name):
                    self.redirected[handler] = handler.setStream(_CurrentStream(name))

    def teardown(self, trainer, pl_module, stage: str) -> None:
        for handler, stream in getattr(self, "redirected", {}).items():
            handler.setStream(stream)
        self.redirected = {}
        super().teardown(trainer, pl_module, stage)
