"""Small callbacks that mnist-lit adds to Lightning's own."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger


def labelled_grid(images: torch.Tensor, labels: list[str], nrow: int = 8, scale: int = 2) -> torch.Tensor:
    """A (3, H, W) uint8 grid of 28x28 digits with a label drawn in the corner of each."""
    import numpy as np
    from PIL import Image, ImageDraw
    from torchvision.utils import make_grid

    grid = make_grid(images.reshape(-1, 1, 28, 28).float().cpu(), nrow=nrow, padding=2, pad_value=0.5)
    pil = Image.fromarray(grid.mul(255).clamp(0, 255).byte().permute(1, 2, 0).numpy())
    pil = pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST)
    draw = ImageDraw.Draw(pil)
    for i, text in enumerate(labels):
        row, col = divmod(i, nrow)
        draw.text((scale * (2 + col * 30) + 2, scale * (2 + row * 30)), text, fill=(255, 64, 64))
    return torch.from_numpy(np.array(pil)).permute(2, 0, 1)


class LogSampleDigits(pl.Callback):
    """At the start of training, logs a grid of training digits with their labels to TensorBoard."""

    def __init__(self, count: int = 64):
        self.count = count

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loggers = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        dm = trainer.datamodule
        if not loggers or trainer.global_rank != 0 or getattr(dm, "train_x", None) is None:
            return
        x, y = dm.train_x[: self.count], dm.train_y[: self.count].tolist()
        if dm.normalize:
            from mnist_lit.data import MNIST_MEAN, MNIST_STD

            x = x * MNIST_STD + MNIST_MEAN
        grid = labelled_grid(x, [str(label) for label in y])
        for lg in loggers:
            lg.experiment.add_image("samples/train_digits", grid, global_step=0)
