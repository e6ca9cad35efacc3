"""A second dataset of another shape (data=digits: scikit-learn's 8x8 digits): trained, evaluated, predicted
and exported end to end on the real data, every size and statistic asked of its data module."""

from __future__ import annotations

import json
import sys

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from conftest import compose, run_cli, trained_run
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_predict import drawing

from mnist_lit.data import MNISTDataModule, TensorDataModule
from mnist_lit.digits import DigitsDataModule
from mnist_lit.errors import UserError

pytest.importorskip("sklearn")

DIGITS_RUN = ["data=digits", "trainer.max_epochs=5", "trainer=cpu", "seed=0", "threads=1"]


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory):
    """The default MLP on scikit-learn's digits, 5 epochs (a few seconds)."""
    return trained_run(tmp_path_factory, "digits", DIGITS_RUN)


def setup_dm(**kwargs) -> DigitsDataModule:
    dm = DigitsDataModule(**kwargs)
    dm.prepare_data()
    dm.setup("fit")
    dm.setup("test")
    return dm


# --- the data module -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [MNISTDataModule, DigitsDataModule])
def test_every_data_module_says_what_its_data_is(cls):
    assert issubclass(cls, TensorDataModule)
    assert cls.input_size == cls.image_shape[0] * cls.image_shape[1]
    assert len(cls.class_names) == cls.num_classes == 10
    assert 0 < cls.mean < 1 and 0 < cls.std < 1
    dm = cls(normalize=True)
    assert dm.normalization == (cls.mean, cls.std) and cls(normalize=False).normalization is None


def test_digits_split_sizes_scaling_and_a_fixed_test_set():
    dm = setup_dm(val_size=288, split_seed=1)
    assert dm.train_x.shape == (1149, 64) and dm.val_x.shape == (288, 64) and dm.test_x.shape == (360, 64)
    assert dm.train_x.min() == 0 and dm.train_x.max() == 1
    assert torch.equal(dm.train_x * 16, (dm.train_x * 16).round())  # the block counts 0-16, scaled
    rows = [{tuple(r.tolist()) for r in x} for x in (dm.train_x, dm.val_x)]
    assert not rows[0] & rows[1]
    other = setup_dm(split_seed=2)
    assert torch.equal(dm.test_x, other.test_x) and torch.equal(dm.test_y, other.test_y)  # whatever the seed
    assert not torch.equal(dm.val_x, other.val_x) and dm.split_digest != other.split_digest
    images, labels = dm.load_test_set()
    assert images.shape == (360, 8, 8) and torch.equal(dm.to_features(images), dm.test_x)
    assert torch.equal(labels, dm.test_y) and sorted(set(labels.tolist())) == list(range(10))
    assert torch.allclose(dm.to_pixels(dm.test_x), images)
    norm = setup_dm(split_seed=1, normalize=True)
    assert torch.allclose(norm.train_x, (dm.train_x - 0.3053) / 0.3760, atol=1e-6)
    assert torch.allclose(norm.to_pixels(norm.test_x), images, atol=1e-6)


def test_bad_digits_val_size():
    with pytest.raises(UserError, match=r"data.val_size=1437 is not allowed: it must be between 1 and 1436"):
        DigitsDataModule(val_size=1437)


def test_without_scikit_learn_the_fix_is_named(monkeypatch):
    from mnist_lit import digits

    digits._load.cache_clear()
    monkeypatch.setitem(sys.modules, "sklearn", None)  # import sklearn then fails
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    try:
        with pytest.raises(UserError) as err:
            DigitsDataModule().prepare_data()
    finally:
        digits._load.cache_clear()
    message = str(err.value)
    assert "data=digits needs scikit-learn" in message and 'pip install -e ".[digits]"' in message
    assert "\n" not in message


# --- the config: the networks' sizes follow the data ---------------------------------------------------------


def test_the_networks_sizes_follow_the_data():
    from mnist_lit.config.building import build

    mnist = compose("train")
    assert (mnist.model.net.input_size, mnist.model.net.num_classes, mnist.model.num_classes) == (784, 10, 10)
    cfg = compose("train", "data=digits", "model/net=cnn", "model/augment=affine")
    assert (cfg.model.net.input_size, cfg.model.net.num_classes) == (64, 10)
    assert list(cfg.model.augment.image_shape) == [8, 8]
    model = build(cfg.model, "model")
    model.train()
    assert model(model.augment(torch.rand(4, 64))).shape == (4, 10)
    with pytest.raises(Exception, match="root"):  # digits have no folder
        compose("train", "data=digits", "data.root=x")


# --- end to end: train, evaluate, predict, export ------------------------------------------------------------


def test_digits_run_trains_to_a_useful_accuracy(digits_run):
    metrics = json.loads((digits_run / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["epochs"] == 5
    assert metrics["test_acc"] > 0.85, metrics["test_acc"]  # 94% after 5 epochs
    assert metrics["trainable_params"] == 64 * 128 + 128 + 128 * 10 + 10
    assert metrics["data_source"] == "sklearn.datasets.load_digits" and "data_root" not in metrics
    # the recorded config asks the data module, so the run loads with its own sizes
    assert "${datamodule:input_size}" in (digits_run / ".hydra" / "config.yaml").read_text()
    from mnist_lit.runs.checkpoint import load_run

    run = load_run(digits_run)
    assert run.net[0].in_features == 64 and isinstance(run.datamodule, DigitsDataModule)

    events = EventAccumulator(str(digits_run / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    assert {"samples/train_digits", "test/confusion_matrix", "test/misclassified"} <= set(events.Tags()["images"])
    matrix = events.Images("test/confusion_matrix")[-1]
    assert matrix.width > 500 and matrix.height > 500


def test_evaluate_a_digits_run(digits_run):
    proc = run_cli("mnist_lit.evaluate", f"run_dir={digits_run}", "misclassified=6")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((digits_run / "metrics.json").read_text())
    ev = json.loads((digits_run / "eval.json").read_text())
    assert ev["data"] == "digits" and ev["num_examples"] == 360
    assert ev["test_acc"] == pytest.approx(metrics["test_acc"], abs=1e-6)
    assert np.array(ev["confusion_matrix"]).shape == (10, 10) and sum(map(sum, ev["confusion_matrix"])) == 360
    assert len(ev["misclassified"]) == 6
    for name in ("confusion_matrix.png", "misclassified.png"):
        with Image.open(digits_run / name) as image:
            assert image.format == "PNG" and min(image.size) > 200
    assert "test set    digits: 360 digits" in proc.stdout and f"test accuracy {ev['test_acc']:.2%}" in proc.stdout

    from mnist_lit.evaluate import evaluate

    with pytest.raises(UserError, match=r"data.root=elsewhere: the run's data .* has no key root"):
        evaluate(compose("evaluate", f"run_dir={digits_run}", "data.root=elsewhere"))


def test_predict_pictures_and_test_digits_with_a_digits_run(digits_run, tmp_path, capsys):
    from mnist_lit.predict import predict

    paths = []
    for d in range(10):
        paths.append(tmp_path / f"{d}.png")
        drawing(d, width=(6, 12, 25)[d % 3]).save(paths[-1])
    listed = ",".join(map(str, paths))
    results = predict(compose("predict", f"run_dir={digits_run}", f"images=[{listed}]", "index=[2,359]",
                              "output=json", f"preview={tmp_path / 'seen.png'}"))
    out = json.loads(capsys.readouterr().out)
    assert [r["input"] for r in out] == [str(p) for p in paths] + ["test[2]", "test[359]"]
    drawn = results[:10]
    for r in results:  # what the model saw: an 8x8 digit of block counts, as the dataset's
        assert r.pixels.shape == (8, 8) and torch.equal(r.pixels * 16, (r.pixels * 16).round())
    assert all(r.pixels[:, 0].sum() < r.pixels[:, 3].sum() for r in drawn)  # centred, not at the edge
    correct = sum(r.digit == d for d, r in enumerate(drawn))
    assert correct >= 7, [r.digit for r in drawn]
    _, labels = DigitsDataModule().load_test_set()
    assert [r["label"] for r in out[10:]] == [int(labels[2]), int(labels[359])]
    assert all(len(r["top"]) == 3 and r["top"][0]["digit"] == r["digit"] for r in out)
    with Image.open(tmp_path / "seen.png") as preview:
        assert preview.format == "PNG" and preview.width > 500

    proc = run_cli("mnist_lit.predict", f"run_dir={digits_run}", "index=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith(f"test[2]: {results[10].digit}   top: ")


def test_export_a_digits_run_to_onnx(digits_run, tmp_path, capsys):
    ort = pytest.importorskip("onnxruntime")
    from mnist_lit.export import export
    from mnist_lit.runs.checkpoint import load_run

    path = tmp_path / "digits.onnx"
    check = export(compose("export", f"run_dir={digits_run}", "format=onnx", f"output={path}"))
    assert check["ok"] and check["digits"] == 360 and check["same_prediction"] == 360
    assert check["input_shape"] == [360, 8, 8] and path.is_file()
    assert "input  pixels: float32 [N, 8, 8]" in capsys.readouterr().out

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[1:] == [8, 8]
    images, labels = DigitsDataModule().load_test_set()
    (probs,) = session.run(["probabilities"], {"pixels": images.numpy()})
    run = load_run(digits_run)
    with torch.inference_mode():
        expected = run.net(run.datamodule.to_features(images)).softmax(1).numpy()
    assert probs.shape == (360, 10) and np.abs(probs - expected).max() < 1e-5
    assert (probs.argmax(1) == labels.numpy()).mean() > 0.85


# --- a teacher of another dataset ----------------------------------------------------------------------------


def test_a_teacher_of_other_data_is_refused(digits_run, synthetic_root, one_thread):
    from functools import partial

    from mnist_lit.distill import DistillationClassifier
    from mnist_lit.model import MLP
    from mnist_lit.runs.checkpoint import load_run

    student = DistillationClassifier(MLP(), partial(torch.optim.Adam, lr=1e-3), teacher=str(digits_run),
                                     load_teacher=load_run)
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    dm = MNISTDataModule(str(synthetic_root), download=False, val_size=100)
    with pytest.raises(UserError, match=r"model.teacher was trained on digits \(8x8 images, 10 classes\), this "
                                        r"run's data is MNIST \(28x28 images, 10 classes\)"):
        trainer.fit(student, dm)
