"""The LightningModule: loss, metrics and optimizer around an nn.Module built from config."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from mnist_lit.errors import UserError
from mnist_lit.graphed_step import GraphedStep


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
        compile: bool = False,
    ):
        super().__init__()
        self.net, self.augment = net, augment
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.label_smoothing, self.compile = label_smoothing, compile
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
        scheduler = self.lr_schedulers()
        outputs = []
        for x, y in batch:
            outputs.append(self.step(x, y))
            self.count_optimizer_step()
            if scheduler is not None:
                scheduler.step()
        if not self.graphed:
            # one accumulation for the whole group of steps: 8 kernels instead of 8 per step
            self.accumulate(outputs, [y for _, y in batch])
        self.train_count += sum(len(y) for _, y in batch)

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One optimizer step on one minibatch; returns its (detached) logits. Device work only."""
        # Plain backward() and optimizer.step(): Lightning's manual_backward/LightningOptimizer.step add
        # four hook dispatches per step, a tenth of a step's time for this MLP on a CPU. In exchange:
        # no loss scaling (16-mixed is refused in setup) and no per-step backward/optimizer hooks
        # (under DDP the backward goes through Lightning, which syncs the gradients).
        if self.augment is not None:
            x = self.augment(x)
        logits, loss = self.forward_and_loss(x, y)
        self.optimizer.zero_grad(set_to_none=True)
        if self.distributed:
            # DDP all-reduces the gradients only in a backward whose reducer Lightning prepared
            self.manual_backward(loss)
        else:
            loss.backward()
        self.optimizer.step()
        return logits.detach()

    def forward_and_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.net(x)
        return logits, F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)

    def accumulate(self, logits: list[torch.Tensor], ys: list[torch.Tensor]) -> None:
        """Adds the steps' summed loss (as trained, label smoothing included) and correct count to train_sums."""
        logits, y = torch.cat(logits), torch.cat(ys)
        loss_sum = F.cross_entropy(logits, y, reduction="sum", label_smoothing=self.label_smoothing)
        self.train_sums += torch.stack([loss_sum, (logits.argmax(1) == y).sum()])

    def graphed_train_step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.accumulate([self.train_step(x, y)], [y])  # inside the graph, per-step kernels cost no launches

    def count_optimizer_step(self) -> None:
        # Lightning counts a manual-optimization step (global_step, checkpoint names) when its own
        # LightningOptimizer.step runs; the plain step in train_step is counted here the same way
        progress = self.trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress
        progress.increment_ready()
        progress.increment_completed()

    def setup(self, stage: str) -> None:
        if self.trainer is not None and str(self.trainer.precision) in ("16-mixed", "16"):
            raise UserError(
                f"trainer.precision={self.trainer.precision} needs loss scaling, which mnist-lit's training step "
                "does not do; use trainer.precision=bf16-mixed (or 32)."
            )
        if not (self.compile and stage == "fit"):
            return
        if self.trainer.strategy.root_device.type != "cuda":
            # forward + loss (and through AOTAutograd the backward) in one compiled graph
            self.forward_and_loss = torch.compile(self.forward_and_loss, dynamic=False)
        elif self.trainer.world_size > 1 or "32" not in str(self.trainer.precision):
            raise UserError(
                f"model.compile=true on a GPU replays the whole training step as a CUDA graph, which mnist-lit "
                f"does in 32-bit precision on one device; this run has trainer.precision={self.trainer.precision} "
                f"on {self.trainer.world_size} device(s). Use trainer.precision=32 and one device, "
                "or model.compile=false."
            )

    def on_train_start(self) -> None:
        # after configure_optimizers and a resumed run's optimizer state
        self.optimizer = self.optimizers().optimizer
        self.distributed = self.trainer.world_size > 1
        self.graphed = self.compile and self.device.type == "cuda"
        self.step = GraphedStep(self.graphed_train_step) if self.graphed else self.train_step
        if self.graphed:
            self._make_optimizer_capturable(self.optimizer, schedule=self.lr_schedulers() is not None)

    def _make_optimizer_capturable(self, optimizer: torch.optim.Optimizer, schedule: bool) -> None:
        for group in optimizer.param_groups:
            if "capturable" in group:  # optimizers with a step counter (Adam, AdamW) keep it on the device
                group["capturable"] = True
            if schedule:
                if "capturable" not in group:
                    raise UserError(
                        f"model.compile=true on a GPU with a learning-rate schedule needs an optimizer that takes "
                        f"its learning rate as a device tensor (Adam, AdamW); {type(optimizer).__name__} does not. "
                        "Use torch.optim.Adam(W), model.scheduler=null, or model.compile=false."
                    )
                # a graph replays the learning rate it captured: a schedule must change it in place
                group["lr"] = torch.tensor(float(group["lr"]), device=self.device)

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

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # a run resumed mid-epoch goes on summing the same epoch, so its train/loss and train/acc are exact
        checkpoint["train_sums"], checkpoint["train_count"] = self.train_sums.cpu(), self.train_count

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "train_sums" in checkpoint:
            self.train_sums.copy_(checkpoint["train_sums"])
            self.train_count = checkpoint["train_count"]

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

    def total_optimizer_steps(self) -> int:
        """Optimizer steps in the fit: minibatches per epoch (a training batch holds several) x epochs."""
        trainer = self.trainer
        if trainer.max_epochs is None or trainer.max_epochs < 0:
            raise UserError("model.scheduler needs the fit's length: set trainer.max_epochs (e.g. 30).")
        _ = trainer.estimated_stepping_batches  # sets up the training data and num_training_batches
        return trainer.train_dataloader.steps(trainer.num_training_batches) * trainer.max_epochs

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        kwargs = {}
        total = inspect.signature(self.scheduler_factory).parameters.get("total_steps")
        if total is not None and total.default is None:
            # a schedule over the whole fit (OneCycleLR) whose config leaves its length null
            kwargs["total_steps"] = self.total_optimizer_steps()
        scheduler = self.scheduler_factory(optimizer=optimizer, **kwargs)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
