"""Every Lightning internal that mnist-lit touches, in one place (tests/test_lightning_compat.py checks each).

The grouped steps of mnist_lit/speed/grouped.py take several optimizer steps inside one Lightning batch, bypassing
LightningOptimizer.step (four hook dispatches a step). Lightning must hand them its batches in groups, and
still count each step: in `trainer.global_step` (checkpoint names, schedules, `max_steps`) and in the step its
loggers write at. pyproject bounds lightning to the releases these were tested with.
"""

from __future__ import annotations

from collections.abc import Callable

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Checkpoint


def use_training_loader(trainer: pl.Trainer, loader) -> None:
    """Make Lightning's training loop iterate `loader` in this fit (as `fit(train_dataloaders=loader)` does).

    Called from a callback's on_fit_start: a loader Lightning has loaded already (to estimate the fit's length
    for a schedule in configure_optimizers) is dropped. The next fit attaches its own loaders again.
    """
    loop = trainer.fit_loop
    loop._data_source.instance = loader
    loop._combined_loader = None


def use_training_step(trainer: pl.Trainer, step: Callable | None) -> None:
    """Make Lightning's training loop hand each training batch to `step(batch, batch_idx)` instead of the
    module's training_step (None: to the module's again). The loop calls training_step through the
    strategy."""
    if step is None:
        vars(trainer.strategy).pop("training_step", None)
    else:
        trainer.strategy.training_step = step


def count_optimizer_steps(trainer: pl.Trainer, steps: int) -> None:
    """Count `steps` optimizer steps taken in one (manually optimized) training batch.

    Counted where Lightning counts a manually optimized module's steps and where it counts an automatically
    optimized one's: `global_step` stays right when the module optimizes automatically again after the fit.
    """
    loop = trainer.fit_loop.epoch_loop
    for progress in (loop.manual_optimization.optim_step_progress,
                     loop.automatic_optimization.optim_progress.optimizer.step):
        progress.total.ready += steps
        progress.total.completed += steps
        progress.current.ready += steps
        progress.current.completed += steps
    # Lightning adds one per batch after it: the loggers' step then advances by `steps`
    loop._batches_that_stepped += steps - 1


def steps_in_both_counters(checkpoint: dict) -> None:
    """Write a checkpoint's optimizer-step count into both of Lightning's step counters.

    Lightning counts an automatically optimized module's steps (fast=false, a fallback) and a manually
    optimized one's (the grouped steps) in separate records, and `global_step` reads the one that matches
    the module: without this, a checkpoint resumed on the other path would start again at step 0.
    """
    loop = checkpoint.get("loops", {}).get("fit_loop")
    if not loop:
        return
    automatic = loop["epoch_loop.automatic_optimization.optim_progress"]["optimizer"]
    manual = loop["epoch_loop.manual_optimization.optim_step_progress"]
    counted = max(automatic["step"], manual, key=lambda progress: progress["total"]["completed"])
    for progress in (automatic["step"], automatic["zero_grad"], manual):
        for part in ("total", "current"):
            done = counted[part]["completed"]
            progress[part].update(ready=done, completed=done)
            if "started" in progress[part]:  # zero_grad's
                progress[part]["started"] = done


def batches_as_steps(checkpoint: dict, epoch_steps: int) -> None:
    """Count a grouped-steps checkpoint's training batches as Lightning's standard path does: one batch per
    optimizer step (`epoch_steps` of them in the current epoch), where Lightning counted groups.

    On the standard path Lightning runs validation when an epoch's batch count reaches the loader's length:
    a resumed run counting on from groups would never reach it.
    """
    progress = checkpoint["loops"]["fit_loop"]["epoch_loop.batch_progress"]
    for part, done in (("total", checkpoint["global_step"]), ("current", epoch_steps)):
        counts = progress[part]
        # ready, started, processed and completed differ by the batch under way, if any: kept so
        progress[part] = {key: done - (counts["ready"] - value) for key, value in counts.items()}


def saves_within_epochs(checkpoint: Checkpoint) -> bool:
    """Whether a checkpoint callback saves every n training steps or every so much time (mid-epoch, per batch:
    it would see one batch per group), rather than at epoch ends. ModelCheckpoint keeps both settings private."""
    return bool(getattr(checkpoint, "_every_n_train_steps", 0) or getattr(checkpoint, "_train_time_interval", None))


class EpochsFromOne:
    """A RichProgressBar mixin: its training bar reads "Epoch 3/10" in the third of ten epochs, where Lightning's
    own description (its private `_get_train_description`) reads "Epoch 2/9"."""

    def _get_train_description(self, current_epoch: int) -> str:
        described = super()._get_train_description(current_epoch)
        total = self.trainer.max_epochs
        ours = f"Epoch {current_epoch + 1}" + (f"/{total}" if total is not None and total > 0 else "")
        return f"{ours:{len(described)}}"  # Lightning pads it to the validation bar's description
