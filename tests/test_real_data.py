"""End to end on the real MNIST files: CI runs these (MNIST_ROOT or ../shared/mnist)."""

import json

import pytest
from conftest import run_cli
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

pytestmark = pytest.mark.real_data


def test_one_epoch_on_real_mnist(real_root, tmp_path):
    proc = run_cli("mnist_lit.train", "trainer.max_epochs=1", f"data.root={real_root}", "data.download=false",
                   "trainer=cpu", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["test_acc"] >= 0.95, m
    assert m["steps"] == 1500 and m["trainable_params"] == 101_770
    assert list((tmp_path / "checkpoints").glob("epoch00-*.ckpt"))
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file() and (tmp_path / "curves.png").is_file()

    acc = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"tensors": 0, "images": 0})
    acc.Reload()
    tags = acc.Tags()
    for name in ("train/loss", "train/acc", "val/loss", "val/acc", "val/acc_best", "test/loss", "test/acc"):
        assert name in tags["scalars"], name
    hparams = acc.PluginTagToContent("hparams")
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(hparams)
    assert "samples/train_digits" in tags["images"]
    assert acc.Scalars("test/acc")[-1].value == pytest.approx(m["test_acc"], abs=1e-6)
