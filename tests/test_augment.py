"""The batched training augmentation (mnist_lit.augment.RandomAffine), its configs, and where it applies."""

import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from conftest import compose
from hydra.utils import instantiate

from mnist_lit.augment import RandomAffine
from mnist_lit.data import MNIST_MEAN, MNIST_STD, MNISTDataModule
from mnist_lit.errors import UserError
from mnist_lit.model import MLP
from mnist_lit.module import MNISTClassifier
from mnist_lit.speed.grouped import GroupedSteps

CONF = Path(__file__).resolve().parent.parent / "conf"
AUGMENTS = sorted(p.stem for p in (CONF / "model" / "augment").glob("*.yaml"))
FULL = {"degrees": 10.0, "translate": 2.0, "scale": 0.1, "shear": 10.0, "elastic": 1.5}



pytestmark = pytest.mark.usefixtures("one_thread")


def bars(n: int, height: int = 3, width: int = 13) -> torch.Tensor:
    """n flattened 28x28 images, 0 background, a bright horizontal bar in the middle (far from the border)."""
    images = torch.zeros(n, 28, 28)
    images[:, 14 - height // 2 : 14 - height // 2 + height, 14 - width // 2 : 14 - width // 2 + width] = 1.0
    return images.reshape(n, 784)


def moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Centre of mass (row, col) and orientation in degrees of each flattened image's mass."""
    w = x.reshape(-1, 28, 28).clamp(min=0)
    rows, cols = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    mass = w.sum((1, 2))
    r = (w * rows).sum((1, 2)) / mass
    c = (w * cols).sum((1, 2)) / mass
    dr, dc = rows - r[:, None, None], cols - c[:, None, None]
    mrr, mcc, mrc = ((w * dr * dr).sum((1, 2)), (w * dc * dc).sum((1, 2)), (w * dr * dc).sum((1, 2)))
    angle = torch.rad2deg(0.5 * torch.atan2(2 * mrc, mcc - mrr))
    return r, c, angle


def test_keeps_shape_dtype_and_value_range():
    torch.manual_seed(0)
    x = torch.rand(64, 784)
    out = RandomAffine(**FULL)(x)
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    # bilinear sampling mixes an image's own pixels and its background: nothing outside its [min, max]
    assert (out >= x.amin(1, keepdim=True) - 1e-6).all() and (out <= x.amax(1, keepdim=True) + 1e-6).all()
    assert not torch.allclose(out, x, atol=1e-3)


def test_standardised_background_stays_background():
    torch.manual_seed(0)
    x = (bars(32) - MNIST_MEAN) / MNIST_STD
    out = RandomAffine(**FULL)(x).reshape(-1, 28, 28)
    background = -MNIST_MEAN / MNIST_STD
    # what comes in from outside the image is the background, not 0
    border = torch.cat([out[:, :2].flatten(1), out[:, -2:].flatten(1), out[:, :, :2].flatten(1)], 1)
    assert torch.allclose(border, torch.full_like(border, background), atol=1e-5)


def test_zero_ranges_are_the_identity():
    x = torch.rand(8, 784)
    assert torch.allclose(RandomAffine()(x), x, atol=1e-5)


def test_deterministic_under_a_seed_and_random_per_image():
    x = bars(16)
    aug = RandomAffine(**FULL)
    torch.manual_seed(3)
    a = aug(x)
    torch.manual_seed(3)
    b = aug(x)
    torch.manual_seed(4)
    c = aug(x)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c, atol=1e-3)
    # 16 copies of one image come out as 16 different images
    assert len({tuple(img.round(decimals=4).tolist()) for img in a}) == 16


def test_translation_shifts_by_at_most_translate_pixels():
    torch.manual_seed(0)
    x = bars(256)
    r0, c0, _ = moments(x)
    out = RandomAffine(translate=2.0)(x)
    r, c, _ = moments(out)
    dr, dc = r - r0, c - c0
    assert dr.abs().max() <= 2.0 + 1e-3 and dc.abs().max() <= 2.0 + 1e-3
    # the whole range is used, on both axes, in both directions
    assert dr.max() > 1.5 and dr.min() < -1.5 and dc.max() > 1.5 and dc.min() < -1.5
    assert torch.allclose(out.sum(1), x.sum(1), rtol=1e-4)  # a pure shift moves the ink, adds none


def test_rotation_is_in_degrees_and_bounded():
    torch.manual_seed(0)
    x = bars(256, height=3, width=21)
    out = RandomAffine(degrees=10.0)(x)
    _, _, angle = moments(out)
    assert angle.abs().max() <= 11.0
    assert angle.max() > 7.0 and angle.min() < -7.0


def test_eval_mode_is_the_identity():
    x = torch.rand(4, 784)
    assert RandomAffine(**FULL).eval()(x) is x


@pytest.mark.parametrize("kwargs", [{"degrees": -1.0}, {"scale": 1.0}, {"elastic_grid": 1}])
def test_bad_ranges_are_user_errors(kwargs):
    with pytest.raises(UserError):
        RandomAffine(**kwargs)


class CountingAffine(RandomAffine):
    """RandomAffine that counts the images it is asked to transform in training mode."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.seen = 0

    def forward(self, x):
        if self.training:
            self.seen += len(x)
        return super().forward(x)


def test_applied_to_training_batches_only(synthetic_root, tmp_path):
    def adam(params):
        return torch.optim.Adam(params, 1e-3)

    def run(augment):
        pl.seed_everything(0, verbose=False)
        model = MNISTClassifier(MLP(), optimizer=adam, augment=augment)
        data = MNISTDataModule(str(synthetic_root), download=False, val_size=100, batch_size=50, split_seed=0)
        trainer = pl.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                             callbacks=[GroupedSteps(True, 5)])
        trainer.fit(model, datamodule=data)
        return model, trainer, data

    # shifts of up to 20 pixels leave almost nothing of a digit: only training may see them
    augment = CountingAffine(translate=20.0)
    model, trainer, data = run(augment)
    assert augment.seen == 500  # every training example, once
    val = trainer.validate(model, datamodule=data, verbose=False)[0]["val/acc"]
    test = trainer.test(model, datamodule=data, verbose=False)[0]["test/acc"]
    assert augment.seen == 500
    # the same weights without the augmentation score exactly the same on validation and test
    plain = MNISTClassifier(MLP(), optimizer=adam)
    plain.net.load_state_dict(model.net.state_dict())
    assert trainer.validate(plain, datamodule=data, verbose=False)[0]["val/acc"] == val
    assert trainer.test(plain, datamodule=data, verbose=False)[0]["test/acc"] == test
    # and training does see it: the augmented fit ends with other weights than a plain one
    no_aug, _, _ = run(None)
    assert not torch.allclose(no_aug.net[0].weight, model.net[0].weight)


@pytest.mark.parametrize("option", AUGMENTS)
def test_augment_options_compose_and_instantiate(option):
    cfg = compose("train", f"model/augment={option}")
    augment = instantiate(cfg.model).augment
    assert isinstance(augment, RandomAffine) and augment.translate > 0
    # `model.augment=null` still turns it off
    assert instantiate(compose("train", f"model/augment={option}", "model.augment=null").model).augment is None


def test_default_and_tutorial_do_not_augment():
    assert instantiate(compose("train").model).augment is None
    assert instantiate(compose("train", "experiment=keras_tutorial").model).augment is None


def test_mlp128_best_keeps_the_tutorial_network():
    model = instantiate(compose("train", "experiment=mlp128_best").model)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 101_770
    assert [type(m).__name__ for m in model.net] == ["Linear", "ReLU", "Linear"]
    assert model.net[0].in_features == 784 and model.net[0].out_features == 128
    assert isinstance(model.augment, RandomAffine)
    assert model.augment.degrees > 0 and model.augment.translate > 0
    assert math.isclose(model.label_smoothing, 0.1)
