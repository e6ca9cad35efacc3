"""scikit-learn's 8x8 handwritten digits (`data=digits`): a second dataset, of another shape than MNIST's.

1,797 digits shipped inside scikit-learn (`sklearn.datasets.load_digits`, the UCI "optdigits" test set):
32x32 black-and-white bitmaps counted in 4x4 blocks, so each pixel is 0-16. Needs the optional extra
`pip install -e ".[digits]"`.
"""

from __future__ import annotations

import functools

import torch

from mnist_lit.data import Drawing, TensorDataModule
from mnist_lit.errors import UserError

NUM_IMAGES = 1797
# a fifth of the digits, drawn with a seed of its own: every run is tested on the same ones, as on MNIST's
# official test set, whatever its split_seed
TEST_SIZE, TEST_SEED = 360, 0
NUM_TRAIN = NUM_IMAGES - TEST_SIZE


@functools.cache
def _load() -> tuple[torch.Tensor, torch.Tensor]:
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError as err:
        raise UserError(
            f"data=digits needs scikit-learn, which ships the 8x8 digits, and it cannot be imported ({err}). "
            'Install it with pip install -e ".[digits]" (or pip install scikit-learn), or train on MNIST '
            "(data=mnist)."
        ) from None
    bunch = sklearn_digits()
    images = torch.from_numpy(bunch.images).to(torch.float32).div_(16)
    return images, torch.from_numpy(bunch.target).to(torch.int64)


def load_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits: float32 pixels (N, 8, 8) in [0, 1] (the block counts / 16), int64 labels (N,)."""
    images, labels = _load()
    return images.clone(), labels.clone()  # the read is cached; callers get tensors of their own


def held_out(n: int = NUM_IMAGES) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed (test, train + validation) index tensors."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(TEST_SEED))
    return perm[:TEST_SIZE], perm[TEST_SIZE:]


class DigitsDataModule(TensorDataModule):
    """scikit-learn's 8x8 digits, held as float tensors on the training device: a fixed test set of 360
    digits, the other 1,437 split into train/val by `split_seed`; pixels scaled to [0, 1] (optionally
    standardised)."""

    name = "digits"
    image_shape = (8, 8)
    input_size = 8 * 8
    num_classes = 10
    class_names = tuple("0123456789")
    num_train = NUM_TRAIN
    # of all 1,797 digits' pixels in [0, 1]
    mean, std = 0.3053, 0.3760
    # the digit scaled to fit the 32x32 bitmap, centred, then counted in 4x4 blocks; strokes 6 bitmap pixels
    # wide give digits made of pictures the dataset's share of ink (30% of the bitmap)
    drawing = Drawing(box=8, centre="box", stroke=6.0, blocks=4)

    def __init__(
        self,
        val_size: int = 288,
        batch_size: int = 32,
        eval_batch_size: int = 1000,
        normalize: bool = False,
        split_seed: int = 42,
    ):
        super().__init__(val_size, batch_size, eval_batch_size, normalize, split_seed)

    def prepare_data(self) -> None:
        load_digits()  # a missing scikit-learn is named now, before any other work

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit", "validate") and self.train_x is None:
            images, labels = load_digits()
            rest = held_out()[1]
            self.split(self.to_features(images[rest]), labels[rest], self.val_size)
        if stage in (None, "test", "predict") and self.test_x is None:
            images, labels = self.load_test_set()
            self.test_x, self.test_y = self.to_features(images).to(self.device), labels.to(self.device)

    def provenance(self) -> dict:
        return {"data_source": "sklearn.datasets.load_digits"}

    def load_test_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The 360 test digits: float32 pixels (N, 8, 8) in [0, 1] and their labels."""
        images, labels = load_digits()
        test = held_out()[0]
        return images[test], labels[test]
