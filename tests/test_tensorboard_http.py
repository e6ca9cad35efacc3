"""What a user sees in TensorBoard, read from a TensorBoard server over HTTP (what its pages call)."""

from __future__ import annotations

import sys

import pytest
from conftest import free_port, get_json, local_server

STEPS_PER_EPOCH = 1500  # the tutorial's: 48,000 training digits at batch 32


@pytest.fixture
def tensorboard(real_run):
    """conftest's 3-epoch default run on the real MNIST (steps grouped by 50, a running point every 75),
    served by `tensorboard --logdir <run dir>`; yields a getter of its HTTP endpoints."""
    port = free_port()

    def get(path: str, body: dict | None = None):
        return get_json(f"http://127.0.0.1:{port}/{path}", body)

    command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(real_run), "--host", "127.0.0.1",
               "--port", str(port), "--load_fast=false", "--reload_interval", "1"]
    # ready once the server is up and has read the run's scalars
    with local_server(command, lambda: "test/acc" in get("data/plugin/scalars/tags").get("tensorboard", {}),
                      "TensorBoard", timeout=90):
        yield get


def test_tensorboard_shows_curves_images_and_hparams_on_the_optimizer_step_axis(tensorboard):
    get = tensorboard
    assert get("data/runs") == ["tensorboard"]

    def steps(tag: str) -> list[int]:
        return [step for _, step, _ in get(f"data/plugin/scalars/scalars?run=tensorboard&tag={tag}")]

    tags = set(get("data/plugin/scalars/tags")["tensorboard"])
    assert {"train/loss", "train/acc", "val/loss", "val/acc", "val/acc_best", "test/loss", "test/acc",
            "train/loss_running", "train/acc_running", "lr"} <= tags
    # epoch scalars at the optimizer step the epoch ended on, not at group or epoch counts
    for tag in ("val/acc", "val/loss", "val/acc_best", "train/loss", "train/acc"):
        assert steps(tag) == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH, 3 * STEPS_PER_EPOCH], tag
    assert steps("test/acc") == [3 * STEPS_PER_EPOCH]
    # the epoch chart maps steps to epochs (Lightning's 0-based current epoch; the test comes after the fit)
    logged = get("data/plugin/scalars/scalars?run=tensorboard&tag=epoch")
    epochs, e = sorted({(step, value) for _, step, value in logged}), STEPS_PER_EPOCH
    assert epochs == [(e, 0), (2 * e, 1), (3 * e, 2), (3 * e, 3)]
    # the running curve: a point every 75 optimizer steps (20 an epoch), across the groups of 50
    assert steps("train/loss_running") == list(range(75, 3 * STEPS_PER_EPOCH + 1, 75))
    assert steps("lr") == steps("train/loss_running")

    # CUSTOM SCALARS: the tutorial's two plots, train and val on one chart each
    layout = get("data/plugin/custom_scalars/layout")
    charts = {chart["title"]: chart["multiline"]["tag"] for category in layout["category"]
              for chart in category["chart"]}
    assert charts == {"loss": ["^train/loss$", "^val/loss$"], "accuracy": ["^train/acc$", "^val/acc$"]}

    images = get("data/plugin/images/tags")["tensorboard"]
    assert {"samples/train_digits", "test/confusion_matrix"} <= set(images) and len(images) == 3, images
    shown = get("data/plugin/images/images?run=tensorboard&tag=test/confusion_matrix&sample=0")
    assert [image["step"] for image in shown] == [3 * STEPS_PER_EPOCH]

    # the HPARAMS tab: one row, what changes results and nothing of the plumbing, with the final metrics
    groups = get("data/plugin/hparams/session_groups", {
        "experimentName": "", "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS"], "colParams": [],
        "startIndex": 0, "sliceSize": 10})["sessionGroups"]
    assert len(groups) == 1
    hparams = groups[0]["hparams"]
    assert set(hparams) == {
        "seed", "data/batch_size", "data/normalize", "data/val_size", "trainer/max_epochs",
        "trainer/precision", "trainer/accumulate_grad_batches", "trainer/gradient_clip_val", "net/class",
        "net/hidden_sizes",
        "net/dropout", "net/init", "optimizer/class", "optimizer/lr", "optimizer/weight_decay", "scheduler",
        "augment", "model/label_smoothing"}
    assert hparams["optimizer/class"] == "Adam" and hparams["optimizer/weight_decay"] == 0.0
    assert hparams["net/hidden_sizes"] == "[128]" and hparams["trainer/max_epochs"] == 3.0
    metrics = {m["name"]["tag"]: m for m in groups[0]["metricValues"]}
    assert {"test/acc", "val/acc_best", "train/loss"} <= set(metrics)
    assert metrics["test/acc"]["trainingStep"] == 3 * STEPS_PER_EPOCH and metrics["test/acc"]["value"] > 0.95
