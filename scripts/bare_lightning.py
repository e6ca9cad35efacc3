"""The floor of Lightning's standard loop: scripts/plain_pytorch.py's experiment under a bare Trainer.

The same data, split, MLP, Adam and batches in the same order as the plain script, but each step goes
through Lightning's automatic optimization: a LightningModule whose training_step only returns the loss,
and a Trainer with everything optional switched off (no logger, checkpoints, progress bar, model summary,
metrics or callbacks). What this costs over the plain loop is the least any canonical LightningModule pays
per step, so it bounds what `fast=false` (mnist-lit's module on Lightning's standard path) can reach in
scripts/benchmark.py (`--bare` runs this script beside the others).

    python scripts/bare_lightning.py --root ../shared/mnist --epochs 10 --batch-size 32
"""

import logging
import os
import time

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from plain_pytorch import arguments, evaluate, experiment, report
from torch import nn


class Batches:
    """The plain script's minibatches: a fresh permutation per epoch, drawn from the global generator."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int):
        self.x, self.y, self.batch_size = x, y, batch_size

    def __len__(self) -> int:
        return -(-len(self.x) // self.batch_size)

    def __iter__(self):
        order = torch.randperm(len(self.x), device=self.x.device)
        for i in range(0, len(self.x), self.batch_size):
            idx = order[i : i + self.batch_size]
            yield self.x[idx], self.y[idx]


class Bare(pl.LightningModule):
    def __init__(self, model: nn.Module, lr: float):
        super().__init__()
        self.model, self.lr = model, lr

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.model(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.model.parameters(), lr=self.lr)


class ValidateEachEpoch(pl.Callback):
    """The plain script's validation after every epoch (whole-tensor passes, no Lightning loop)."""

    def __init__(self, x, y):
        self.x, self.y, self.val_acc = x, y, None

    def on_train_epoch_end(self, trainer, pl_module):
        _, self.val_acc = evaluate(pl_module.model, self.x, self.y)


def main() -> None:
    args = arguments(__doc__)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    device, train, (x_val, y_val), test, model = experiment(args)
    validate = ValidateEachEpoch(x_val, y_val)
    trainer = pl.Trainer(
        accelerator=device.type, devices=1, max_epochs=args.epochs, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[validate], num_sanity_val_steps=0,
    )
    if device.type == "cpu":
        # as mnist_lit/train.py: Lightning's NVML-based CUDA check would reload NVML inside every Adam step
        os.environ.pop("PYTORCH_NVML_BASED_CUDA_CHECK", None)
    start = time.perf_counter()
    trainer.fit(Bare(model, args.lr), train_dataloaders=Batches(*train, args.batch_size))
    fit_seconds = time.perf_counter() - start
    report(args, device, model, fit_seconds, trainer.global_step, validate.val_acc, test)


if __name__ == "__main__":
    main()
