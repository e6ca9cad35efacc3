"""The LightningModule: loss, metrics and optimizer around an nn.Module built from config."""

from __future__ import annotations

from collections.abc import Callable

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy


def _metrics(num_classes: int) -> tuple[MeanMetric, MulticlassAccuracy]:
    # validate_args=False and nan_strategy="disable": the checks would sync the device on every step
    return MeanMetric(nan_strategy="disable"), MulticlassAccuracy(num_classes, average="micro", validate_args=False)


class MNISTClassifier(pl.LightningModule):
    """Cross-entropy on logits; per-epoch train/val/test loss and accuracy, accumulated on the device.

    A training batch is a list of minibatches (data.steps_per_execution), each its own optimizer step,
    so the optimization is manual. Nothing in a step reads a value back to the host, so steps queue on
    a GPU without waiting; training loss and accuracy are plain on-device sums (a torchmetrics update
    costs more than the step itself here), validation and test use torchmetrics.
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
        self.automatic_optimization = False
        self.register_buffer("train_sums", torch.zeros(2), persistent=False)  # loss * n, correct
        self.train_count = 0
        self.val_loss, self.val_acc = _metrics(num_classes)
        self.test_loss, self.test_acc = _metrics(num_classes)
        self.val_acc_best = MaxMetric()
        self.val_acc_best.persistent(True)  # a resumed run keeps its best score

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        for x, y in batch:
            if self.augment is not None:
                x = self.augment(x)
            logits = self.net(x)
            loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            self.manual_backward(loss)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            self.train_sums[0].add_(loss.detach(), alpha=len(y))
            self.train_sums[1].add_((logits.argmax(1) == y).sum())
            self.train_count += len(y)

    def _eval_step(self, batch, loss_metric: MeanMetric, acc_metric: MulticlassAccuracy) -> None:
        x, y = batch
        logits = self.net(x)
        loss_metric.update(F.cross_entropy(logits, y), len(y))
        acc_metric.update(logits, y)

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, self.val_loss, self.val_acc)

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, self.test_loss, self.test_acc)

    def on_train_epoch_start(self) -> None:
        self.train_sums.zero_()
        self.train_count = 0

    def on_train_epoch_end(self) -> None:
        loss, acc = (self.train_sums / max(self.train_count, 1)).unbind()
        # every process has an equally long shard, so the mean over processes is the global mean
        self.log_dict({"train/loss": loss, "train/acc": acc}, sync_dist=True)

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
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
