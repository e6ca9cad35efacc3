"""Figures a person looks at: learning curves, confusion matrix, misclassified digits, predictions, digit grids.

Figures are built with matplotlib's object API (no pyplot): no GUI backend, no global figure state.
`figure_image` renders one into an image array for TensorBoard; the grids of many digits that the callbacks
log are drawn with Pillow.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from mnist_lit.files import write_atomically

DPI = 120


def save(fig: Figure, path: str | Path, dpi: int = DPI) -> Path:
    """The figure as an image file of its suffix's format, written whole or not at all (a Ctrl-C or a full
    disk while it is written leaves the earlier file)."""
    path = Path(path)
    fmt = path.suffix[1:] or None  # /dev/null: matplotlib's default format
    write_atomically(path, lambda f: fig.savefig(f, dpi=dpi, bbox_inches="tight", format=fmt))
    return path


def figure_image(fig: Figure, dpi: int = DPI) -> np.ndarray:
    """The figure rendered as a uint8 (H, W, 3) RGB image (TensorBoard's add_image with dataformats="HWC")."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    fig.set_dpi(dpi)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def learning_curves_figure(history: Sequence[dict]) -> Figure:
    """Train/val loss and train/val accuracy per epoch (the tutorial's two plots), side by side.

    `history` holds one dict per epoch: {"epoch": 1-based, "train/loss", "train/acc", "val/loss", "val/acc"},
    any of the metrics possibly missing (validation skipped, run interrupted).
    """
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    fig = Figure(figsize=(11, 4.2), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, metric, title in ((axes[0], "loss", "Loss"), (axes[1], "acc", "Accuracy")):
        for split, style in (("train", "o-"), ("val", "s--")):
            points = [
                (h["epoch"], h[f"{split}/{metric}"])
                for h in history
                if h.get(f"{split}/{metric}") is not None
            ]
            if points:
                x, y = zip(*points, strict=True)
                label = "training" if split == "train" else "validation"
                ax.plot(x, y, style, label=label, linewidth=2, markersize=5)
        ax.set_title(f"{title} per epoch")
        ax.set_xlabel("epoch")
        ax.set_ylabel("cross-entropy loss" if metric == "loss" else "accuracy")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if metric == "acc":
            ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    return fig


def confusion_matrix_figure(
    confusion: torch.Tensor, title: str = "Confusion matrix", class_names: Sequence[str] | None = None
) -> Figure:
    """Counts of (true, predicted) classes, labelled with `class_names` (default: their numbers); the colour
    is on a log scale so that rare confusions show."""
    from matplotlib.colors import LogNorm

    counts = confusion.cpu().numpy()
    n = counts.shape[0]
    fig = Figure(figsize=(7.5, 6.5), layout="constrained")
    ax = fig.subplots()
    shown = np.ma.masked_equal(counts, 0)
    image = ax.imshow(shown, cmap="Blues", norm=LogNorm(vmin=1, vmax=max(int(counts.max()), 2)))
    colorbar = fig.colorbar(image, ax=ax, shrink=0.85)
    colorbar.set_label("number of test digits (log scale)")
    for i in range(n):
        for j in range(n):
            if counts[i, j]:
                dark = counts[i, j] > np.sqrt(max(counts.max(), 1))
                ax.text(
                    j,
                    i,
                    str(counts[i, j]),
                    ha="center",
                    va="center",
                    fontsize=9,
                    color="white" if dark else "black",
                    fontweight="bold" if i == j else "normal",
                )
    names = list(class_names) if class_names is not None else [str(i) for i in range(n)]
    ax.set_xticks(range(n), names)
    ax.set_yticks(range(n), names)
    ax.set_xlabel("predicted digit")
    ax.set_ylabel("true digit")
    ax.set_title(title)
    return fig


def digits_figure(
    images: torch.Tensor,
    captions: Sequence[str],
    title: str,
    ncols: int = 6,
    colours: Sequence[str] | None = None,
) -> Figure:
    """A grid of (N, H, W) digits (uint8 or [0, 1]), dark ink on white as on paper, a caption over each."""
    count = len(images)
    ncols = max(1, min(ncols, count))
    nrows = max(1, -(-count // ncols))
    fig = Figure(figsize=(1.75 * ncols, 1.95 * nrows + 0.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols)).ravel()
    pixels = images.float().cpu()
    if count and pixels.max() > 1:  # an empty set (nothing misclassified) has no max
        pixels = pixels / 255
    for k, ax in enumerate(axes):
        if k >= count:
            ax.axis("off")
            continue
        ax.imshow(pixels[k].numpy(), cmap="gray_r", vmin=0, vmax=1)
        ax.set_title(captions[k], fontsize=9, color=colours[k] if colours else "black")
        # a light frame shows the field the digit sits in
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_color("0.8")
    if count == 0:
        axes[0].text(0.5, 0.5, "none", ha="center", va="center", fontsize=14, transform=axes[0].transAxes)
    fig.suptitle(title, fontsize=12)
    return fig


def misclassified_figure(
    images: torch.Tensor,
    labels: torch.Tensor,
    predicted: torch.Tensor,
    confidence: torch.Tensor,
    indices: torch.Tensor,
    title: str = "Most confidently misclassified test digits",
) -> Figure:
    """The given wrongly classified digits, each captioned with its true and predicted label."""
    captions = [
        f"true {int(t)}, predicted {int(p)}\n{float(c):.1%} sure · #{int(i)}"
        for t, p, c, i in zip(labels, predicted, confidence, indices, strict=True)
    ]
    return digits_figure(images, captions, title, colours=["firebrick"] * len(captions))


def predictions_figure(
    images: torch.Tensor, captions: Sequence[str], title: str = "What the model saw"
) -> Figure:
    """The inputs the model was given (after preprocessing), with their predictions."""
    return digits_figure(images, captions, title)


def labelled_grid(images: torch.Tensor, labels: list[str], nrow: int = 8, scale: int = 2) -> torch.Tensor:
    """A (3, H, W) uint8 grid of (N, h, w) digits in [0, 1] with a label drawn in the corner of each; each
    digit enlarged `scale` times, and more for small ones (at least 56 pixels), so that its label fits."""
    from PIL import Image, ImageDraw
    from torchvision.utils import make_grid

    height, width = images.shape[-2:]
    scale = max(scale, -(-56 // max(height, width)))
    grid = make_grid(images.reshape(-1, 1, height, width).float().cpu(), nrow=nrow, padding=2, pad_value=0.5)
    pil = Image.fromarray(grid.mul(255).clamp(0, 255).byte().permute(1, 2, 0).numpy())
    pil = pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST)
    draw = ImageDraw.Draw(pil)
    for i, text in enumerate(labels):
        row, col = divmod(i, nrow)
        corner = (scale * (2 + col * (width + 2)) + 2, scale * (2 + row * (height + 2)))
        draw.text(corner, text, fill=(255, 64, 64))
    return torch.from_numpy(np.array(pil)).permute(2, 0, 1)
