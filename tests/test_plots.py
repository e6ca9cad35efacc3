"""Figures and the training callbacks that draw them (mnist_lit.reporting.plots)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mnist_lit.reporting import plots


def test_learning_curves_figure_has_both_plots_labelled(tmp_path):
    history = [
        {"epoch": e, "train/loss": 1 / e, "val/loss": 1.2 / e, "train/acc": 1 - 0.1 / e, "val/acc": 0.9}
        for e in (1, 2, 3)
    ]
    history.append({"epoch": 4, "val/loss": 0.3, "val/acc": 0.91})  # an epoch without training scores
    fig = plots.learning_curves_figure(history)
    loss, acc = fig.axes
    assert (loss.get_title(), acc.get_title()) == ("Loss per epoch", "Accuracy per epoch")
    assert loss.get_xlabel() == acc.get_xlabel() == "epoch"
    assert loss.get_ylabel() == "cross-entropy loss" and acc.get_ylabel() == "accuracy"
    for ax in (loss, acc):
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["training", "validation"]
    train, val = loss.lines
    assert list(train.get_xdata()) == [1, 2, 3] and list(val.get_xdata()) == [1, 2, 3, 4]
    assert np.allclose(val.get_ydata(), [1.2, 0.6, 0.4, 0.3])
    path = plots.save(fig, tmp_path / "curves.png")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 1000


def test_confusion_matrix_and_misclassified_figures_are_labelled():
    confusion = torch.diag(torch.full((10,), 90)) + torch.ones(10, 10, dtype=torch.long)
    confusion[4, 9] = 7
    fig = plots.confusion_matrix_figure(confusion, "Confusion matrix")
    ax = fig.axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("predicted digit", "true digit")
    assert [t.get_text() for t in ax.get_xticklabels()] == [str(d) for d in range(10)]
    cells = [t.get_text() for t in ax.texts]  # one per non-zero cell
    assert cells.count("91") == 10 and "7" in cells and cells.count("1") == 89
    assert fig.axes[1].get_ylabel() == "number of test digits (log scale)"

    images = torch.randint(0, 256, (3, 28, 28), dtype=torch.uint8)
    fig = plots.misclassified_figure(
        images,
        torch.tensor([4, 7, 2]),
        torch.tensor([9, 1, 8]),
        torch.tensor([0.99, 0.5, 0.42]),
        torch.tensor([12, 345, 6789]),
    )
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == [
        "true 4, predicted 9\n99.0% sure · #12",
        "true 7, predicted 1\n50.0% sure · #345",
        "true 2, predicted 8\n42.0% sure · #6789",
    ]


def test_training_writes_curves_and_test_images(synthetic_run):
    """The default callbacks: curves.png in the run dir from the per-epoch scores (kept in the checkpoint
    too), the confusion matrix and the misclassified digits in TensorBoard."""
    with Image.open(synthetic_run / "curves.png") as image:
        assert image.format == "PNG" and image.width > 1000
    events = EventAccumulator(str(synthetic_run / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    assert {"test/confusion_matrix", "test/misclassified"} <= set(events.Tags()["images"])
    image = events.Images("test/confusion_matrix")[-1]
    assert image.width > 500 and image.height > 500

    best = json.loads((synthetic_run / "metrics.json").read_text())["best_checkpoint"]
    history = torch.load(best, weights_only=True)["callbacks"]["LearningCurves"]["history"]
    epoch = torch.load(best, weights_only=True)["epoch"]
    assert [h["epoch"] for h in history] == list(range(1, epoch + 2))
    logged = {name: [s.value for s in events.Scalars(name)] for name in ("train/loss", "val/acc")}
    assert np.allclose([h["train/loss"] for h in history], logged["train/loss"][: epoch + 1])
    assert np.allclose([h["val/acc"] for h in history], logged["val/acc"][: epoch + 1])


def test_confusion_matrix_as_an_image_shades_cells_by_count():
    # as the callbacks log it to TensorBoard: the figure rendered into an RGB array
    confusion = torch.diag(torch.full((10,), 900))
    confusion[4, 9] = 7
    fig = plots.confusion_matrix_figure(confusion, "Confusion matrix")
    image = plots.figure_image(fig)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert image.shape[:2] == (round(fig.get_figheight() * plots.DPI), round(fig.get_figwidth() * plots.DPI))
    ax = fig.axes[0]

    def corner(i, j):  # a cell's top-left pixel, away from its number (matplotlib counts rows from the bottom)
        x, y = ax.transData.transform((j - 0.4, i - 0.4))
        return image[image.shape[0] - int(y), int(x)].astype(int)

    diagonal, rare, empty = corner(2, 2), corner(4, 9), corner(0, 1)
    assert diagonal.sum() < rare.sum() < empty.sum()  # darker blue for larger counts, on a log scale
    assert (empty >= 240).all()  # a zero count is (almost) white


def test_a_figure_stopped_while_written_leaves_the_earlier_file(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from mnist_lit.reporting.plots import save

    path = save(Figure(figsize=(1, 1)), tmp_path / "figure.png")
    before = path.read_bytes()
    assert before.startswith(b"\x89PNG")

    def stopped(self, f, **kwargs):
        f.write(b"\x89PNG half")
        raise KeyboardInterrupt  # Ctrl-C in the middle of the write

    monkeypatch.setattr(Figure, "savefig", stopped)
    with pytest.raises(KeyboardInterrupt):
        save(Figure(figsize=(2, 2)), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["figure.png"]  # no temporary file left


def test_a_figure_written_to_dev_null_leaves_the_device():
    """output=/dev/null discards the figure: the atomic writer's rename would put a file in the device's
    place (as root it can)."""
    import os
    import stat
    import subprocess

    from matplotlib.figure import Figure

    from mnist_lit.files import write_atomically
    from mnist_lit.reporting.plots import save

    try:
        save(Figure(figsize=(1, 1)), "/dev/null")
        write_atomically(Path("/dev/null"), lambda f: f.write(b"{}"))
        assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    finally:
        if not stat.S_ISCHR(os.stat("/dev/null").st_mode):  # put the device back for everything else
            os.remove("/dev/null")
            subprocess.run(["mknod", "-m", "666", "/dev/null", "c", "1", "3"], check=True)
