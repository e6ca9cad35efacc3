"""The LightningModule: an nn.Module built from config, trained with cross-entropy and an optimizer from config."""

from __future__ import annotations

from collections.abc import Callable

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy


class MNISTClassifier(pl.LightningModule):
    """Classifies digits with `net`; logs train/val/test loss and accuracy per epoch, and val/acc_best.

    `optimizer` and `scheduler` are factories (Hydra's `_partial_: true`) that the module calls in
    configure_optimizers; `augment` (an nn.Module, training only) distorts each training batch.

    With fast=true, mnist_lit/speed takes a fit's training steps in groups with these same parts (augment,
    forward, training_loss) and counts them in train_loss and train_acc through their update(); the module
    then optimizes manually (`automatic_optimization`) for that fit.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        label_smoothing: float = 0.0,
        augment: nn.Module | None = None,
        num_classes: int = 10,
    ):
        super().__init__()
        self.net, self.augment = net, augment
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.label_smoothing = label_smoothing
        # nan_strategy="disable", validate_args=False: their checks would wait for the device on every step
        self.train_loss, self.val_loss, self.test_loss = (MeanMetric(nan_strategy="disable") for _ in range(3))
        self.train_acc, self.val_acc, self.test_acc = (
            MulticlassAccuracy(num_classes, average="micro", validate_args=False) for _ in range(3)
        )
        self.val_acc_best = MaxMetric()
        # kept in checkpoints: a run resumed mid-epoch goes on from the same sums and the same best score
        for metric in (self.train_loss, self.train_acc, self.val_acc_best):
            metric.persistent(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_loss(self, logits: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The loss training minimises; `x` is the (augmented) batch, for losses that look at it (distillation)."""
        return F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        if self.augment is not None:
            x = self.augment(x)
        logits = self(x)
        loss = self.training_loss(logits, y, x)
        self.train_loss.update(loss.detach())
        self.train_acc.update(logits.detach(), y)
        return loss

    def train_metrics(self) -> dict[str, torch.Tensor]:
        """The current epoch's training loss and accuracy so far."""
        return {"train/loss": self.train_loss.compute(), "train/acc": self.train_acc.compute()}

    def on_train_epoch_end(self) -> None:
        self.log_dict(self.train_metrics(), prog_bar=True)
        self.train_loss.reset()
        self.train_acc.reset()

    def _eval_step(self, batch: tuple[torch.Tensor, torch.Tensor], loss: MeanMetric, acc: MulticlassAccuracy):
        x, y = batch
        logits = self(x)
        loss.update(F.cross_entropy(logits, y), len(y))
        acc.update(logits, y)

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, self.val_loss, self.val_acc)

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, self.test_loss, self.test_acc)

    def on_validation_epoch_end(self) -> None:
        metrics = {"val/loss": self.val_loss.compute(), "val/acc": self.val_acc.compute()}
        if not self.trainer.sanity_checking:  # the sanity check's few batches are no score
            self.val_acc_best.update(metrics["val/acc"])
            metrics["val/acc_best"] = self.val_acc_best.compute()
        self.log_dict(metrics, prog_bar=True)
        self.val_loss.reset()
        self.val_acc.reset()

    def on_test_epoch_end(self) -> None:
        self.log_dict({"test/loss": self.test_loss.compute(), "test/acc": self.test_acc.compute()})
        self.test_loss.reset()
        self.test_acc.reset()

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(params=self.net.parameters())
        if self.scheduler_factory is None:
            return optimizer
        # a schedule over the whole fit (OneCycleLR) whose config leaves its length null gets the fit's steps
        total_steps = getattr(self.scheduler_factory, "keywords", {}).get("total_steps", 0)
        kwargs = {"total_steps": self.trainer.estimated_stepping_batches} if total_steps is None else {}
        scheduler = self.scheduler_factory(optimizer=optimizer, **kwargs)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
