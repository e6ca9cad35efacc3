"""Image data sets as whole in-memory tensors: the data module every dataset is (TensorDataModule: what the
rest of mnist-lit asks of its data, batches, the seeded split), and MNIST's (its file checks)."""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
import torch

from mnist_lit.errors import UserError

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
NUM_TRAIN = 60_000

# name -> (magic number, number of dimensions) of the IDX files torchvision keeps in <root>/MNIST/raw
MNIST_FILES = {
    "train-images-idx3-ubyte": (2051, 3),
    "train-labels-idx1-ubyte": (2049, 1),
    "t10k-images-idx3-ubyte": (2051, 3),
    "t10k-labels-idx1-ubyte": (2049, 1),
}


def raw_dir(root: str | Path) -> Path:
    return Path(root).expanduser() / "MNIST" / "raw"


def check_idx_file(path: Path, magic: int, ndim: int) -> int:
    """Check one IDX file's header, size and (for labels) values; return its item count."""
    with path.open("rb") as f:
        header = f.read(4 + 4 * ndim)
    if len(header) < 4 + 4 * ndim:
        raise UserError(f"MNIST file {path} is truncated (only {len(header)} bytes). Delete it and download again.")
    found = int.from_bytes(header[:4], "big")
    if found != magic:
        raise UserError(
            f"MNIST file {path} has magic number {found}, expected {magic}: it is not an MNIST IDX file "
            "of this kind (or it is still gzipped). Replace it with the original file."
        )
    dims = [int.from_bytes(header[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    if ndim == 3 and dims[1:] != [28, 28]:
        raise UserError(f"MNIST file {path} holds {dims[1]}x{dims[2]} images, expected 28x28.")
    expected = len(header) + dims[0] * (dims[1] * dims[2] if ndim == 3 else 1)
    size = path.stat().st_size
    if size != expected:
        raise UserError(
            f"MNIST file {path} is {size} bytes but its header promises {dims[0]} items ({expected} bytes): "
            "it is truncated or corrupt. Delete it and download it again (data.download=true)."
        )
    if ndim == 1:
        labels = path.read_bytes()[len(header) :]
        if labels and max(labels) > 9:
            raise UserError(f"MNIST file {path} holds label {max(labels)}; MNIST labels are 0-9. Replace the file.")
    return dims[0]


def check_mnist_files(root: str | Path) -> None:
    """Raise a UserError naming the folder and the fix when the four MNIST files are absent or broken."""
    folder = raw_dir(root)
    missing = [name for name in MNIST_FILES if not (folder / name).is_file()]
    if missing:
        raise UserError(
            f"MNIST files not found in {folder.resolve()} (missing: {', '.join(missing)}). Point data.root at the "
            "folder that holds MNIST/raw (e.g. data.root=../shared/mnist, or set MNIST_ROOT), or let mnist-lit "
            "download them with data.download=true on a machine with internet access."
        )
    counts = {name: check_idx_file(folder / name, *spec) for name, spec in MNIST_FILES.items()}
    for split in ("train", "t10k"):
        n_img, n_lbl = counts[f"{split}-images-idx3-ubyte"], counts[f"{split}-labels-idx1-ubyte"]
        if n_img != n_lbl:
            raise UserError(
                f"MNIST {split} files in {folder} disagree: {n_img} images but {n_lbl} labels. Replace both files."
            )


def fetch_mnist(root: str | Path, download: bool = False) -> None:
    """Make sure the four MNIST files are in <root>/MNIST/raw and sound: downloaded by torchvision where
    absent and allowed, else a UserError naming the fix."""
    folder = raw_dir(root)
    if download and not all((folder / name).is_file() for name in MNIST_FILES):
        from torchvision.datasets import MNIST

        try:
            MNIST(str(root), train=True, download=True)  # torchvision fetches all four files
        except Exception as err:  # no internet, proxy, disk full...: all end the same way for the user
            raise UserError(
                f"MNIST is not in {folder.resolve()} and downloading it failed ({err}). Copy the four MNIST "
                "files into that folder, or point data.root (or MNIST_ROOT) at a folder that has MNIST/raw."
            ) from err
    check_mnist_files(root)


def load_mnist(root: str | Path, train: bool, download: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as uint8 (N, 28, 28) and labels as int64 (N,), read by torchvision (downloading if allowed)."""
    fetch_mnist(root, download)
    prefix = "train" if train else "t10k"
    files = [raw_dir(root) / f"{prefix}-images-idx3-ubyte", raw_dir(root) / f"{prefix}-labels-idx1-ubyte"]
    key = tuple((str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    images, labels = _decoded(str(root), train, key)
    return images.clone(), labels.clone()  # the cached ones stay as the files are, whatever callers do


@functools.lru_cache(maxsize=2)
def _decoded(root: str, train: bool, files: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    """torchvision's decoding, once per process while the files' (path, size, mtime) stay the same (`files`,
    the cache key): a sweep's jobs in one process read them once."""
    from torchvision.datasets import MNIST

    ds = MNIST(root, train=train, download=False)
    return ds.data, ds.targets


def unit_pixels(images: torch.Tensor) -> torch.Tensor:
    """Images as float32 pixels in [0, 1]: uint8 ones are bytes (divided by 255, as torchvision does), float
    ones are pixels already."""
    if images.is_floating_point():
        return images.to(torch.float32)
    return images.to(torch.float32).div_(255)


def features_of(images: torch.Tensor, normalization: tuple[float, float] | None = None) -> torch.Tensor:
    """(N, H, W) images (unit_pixels') -> float32 (N, H * W) feature vectors, standardised by (mean, std)."""
    x = unit_pixels(images.reshape(len(images), -1))
    if normalization is not None:
        x = (x - normalization[0]) / normalization[1]
    return x


def to_features(images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
    """MNIST's uint8 (N, 28, 28) -> float32 (N, 784) in [0, 1] (the tutorial's scaling), or standardised."""
    return features_of(images, (MNIST_MEAN, MNIST_STD) if normalize else None)


def split_indices(n: int, val_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random split of range(n) into (train, val) index tensors."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[val_size:], perm[:val_size]


class TensorBatches:
    """Batches sliced from whole tensors: no per-sample indexing, collate or host round trip.

    Shuffling uses a permutation drawn on the tensors' own device from (seed, epoch), so an epoch's order
    is reproducible and a resumed run sees the same batches. Under DDP each process takes every
    world_size-th example of the permutation, so the processes see disjoint, equally long shards.
    `resume_at(epoch, done)` makes the next iteration that epoch's, after its first `done` batches; loaders
    made from one datamodule share that position (`resume`), so whichever of them runs first skips them.
    """

    def __init__(self, x, y, batch_size: int, shuffle: bool, seed: int = 0, rank: int = 0, world_size: int = 1,
                 gather_epoch: bool | None = None, resume: dict | None = None):
        self.x, self.y = x, y
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.rank, self.world_size = rank, world_size
        # On a GPU an epoch's examples are gathered in shuffled order once, and each batch is a view of that
        # copy: two kernel launches fewer per step. On a CPU the copy would cost more host memory (150 MB)
        # than the per-batch gathers cost time.
        self.gather_epoch = x.is_cuda if gather_epoch is None else gather_epoch
        self.epoch = 0
        self.resume = resume if resume is not None else {}
        # Lightning calls set_epoch on a loader's `sampler` at the start of every epoch.
        self.sampler, self.batch_sampler = self, None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume_at(self, epoch: int, done: int) -> None:
        self.resume.update(epoch=epoch, done=done)

    def _num_items(self) -> int:
        n = len(self.x)
        # training shards are cut to equal length so every process takes the same number of steps
        return n // self.world_size if self.shuffle else len(range(self.rank, n, self.world_size))

    def __len__(self) -> int:
        return -(-self._num_items() // self.batch_size)

    def __iter__(self):
        skip = 0
        if self.resume:
            # a resumed run's first iteration: the epoch it stopped in (Lightning may start iterating before
            # it sets the epoch), after the batches already trained
            self.epoch, skip = self.resume["epoch"], self.resume["done"]
            self.resume.clear()
            if skip >= len(self):  # saved at that epoch's end: the run goes on with the next epoch
                self.epoch, skip = self.epoch + 1, 0
        batches = self._batches()
        for _ in range(skip):
            next(batches, None)
        yield from batches

    def _batches(self):
        n, size = len(self.x), self.batch_size
        if self.shuffle:
            gen = torch.Generator(device=self.x.device).manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=gen, device=self.x.device)
            order = order[self.rank : self._num_items() * self.world_size : self.world_size]
            if self.gather_epoch:
                x, y = self.x[order], self.y[order]
                for i in range(0, len(order), size):
                    yield x[i : i + size], y[i : i + size]
                return
            for i in range(0, len(order), size):
                idx = order[i : i + size]
                yield self.x[idx], self.y[idx]
        else:
            x, y = self.x[self.rank :: self.world_size], self.y[self.rank :: self.world_size]
            for i in range(0, len(x), size):
                yield x[i : i + size], y[i : i + size]


@dataclass(frozen=True)
class Drawing:
    """How a dataset's digits were made from pictures; mnist_lit/inference/preprocess.py makes any picture
    the same way, so that a network is given digits like those it learnt."""

    box: int  # the digit is scaled to fit a box x box square of the image, keeping its aspect ratio
    centre: str  # "mass": its centre of mass at the image's centre; "box": its bounding box centred
    stroke: float  # the strokes' typical width, in pixels of the bitmap it was drawn in (see blocks)
    # > 1: drawn as a black-and-white bitmap `blocks` times finer, each pixel the share of ink in its block
    blocks: int = 1
    levels: int = 0  # > 0: pixel values are multiples of 1 / levels (MNIST's bytes: 255)


class TensorDataModule(pl.LightningDataModule):
    """A dataset of labelled images held as float tensors on the training device: the data module interface
    of mnist-lit. Nothing else knows a dataset's shape, size or statistics; the rest asks its data module.

    Class attributes, known without reading any data (a run's config gives the networks their sizes with
    `${datamodule:input_size}` and `${datamodule:num_classes}`): `name`, `image_shape` (H, W), `input_size`
    (H * W, the length of the feature vectors the networks take), `num_classes`, `class_names`, `mean` and
    `std` (what `normalize=True` standardises pixels in [0, 1] with), `drawing` (how its digits were made).

    An instance adds `normalization` ((mean, std), or None), `to_features` and `to_pixels` (images <-> the
    networks' inputs), `load_test_set()` (the test images and labels: evaluate, predict and export) and
    `provenance()` (where the data comes from). A subclass loads the data in `setup` into
    `train_x`/`train_y`, `val_x`/`val_y` and `test_x`/`test_y` (features, as `to_features` makes them);
    batching, DDP shards and resuming mid-epoch are the same for every dataset.
    """

    name: str
    image_shape: tuple[int, int]
    input_size: int
    num_classes: int
    class_names: tuple[str, ...]
    num_train: int  # the examples split into train and val (the test set apart)
    mean: float
    std: float
    drawing: Drawing

    def __init__(self, val_size: int, batch_size: int, eval_batch_size: int, normalize: bool, split_seed: int):
        super().__init__()
        if batch_size <= 0 or eval_batch_size <= 0:
            raise UserError(
                f"data.batch_size={batch_size} and data.eval_batch_size={eval_batch_size} must both be positive integers."
            )
        if not 0 < val_size < self.num_train:  # checked before any data is read
            raise UserError(f"data.val_size={val_size} is not allowed: it must be between 1 and "
                            f"{self.num_train - 1} (of the {self.num_train:,} {self.name} examples outside the test set).")
        self.val_size, self.batch_size, self.eval_batch_size = val_size, batch_size, eval_batch_size
        self.normalize, self.split_seed = normalize, split_seed
        # of the validation indices: the same for runs validated on the same examples
        self.split_digest: str | None = None
        self.resume: dict = {}  # where a resumed run's training starts: shared with its training loaders
        self.train_x = self.train_y = self.val_x = self.val_y = self.test_x = self.test_y = None

    @property
    def normalization(self) -> tuple[float, float] | None:
        """The (mean, std) pixels in [0, 1] are standardised with (data.normalize=true), else None."""
        return (self.mean, self.std) if self.normalize else None

    def to_features(self, images: torch.Tensor) -> torch.Tensor:
        """(N, H, W) images (uint8 bytes, or float pixels in [0, 1]) -> the (N, input_size) inputs the
        networks take: this dataset's scaling."""
        return features_of(images, self.normalization)

    def to_pixels(self, features: torch.Tensor) -> torch.Tensor:
        """(N, input_size) features -> (N, H, W) pixels in [0, 1] on the CPU: to_features undone (display)."""
        x = features.float().cpu()
        if self.normalize:
            x = x * self.std + self.mean
        return x.reshape(-1, *self.image_shape).clamp(0, 1)

    def load_test_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The test images, (N, H, W) uint8 bytes or float pixels in [0, 1], and their int64 labels (N,): the
        same examples `setup("test")` loads, on the CPU."""
        raise NotImplementedError

    def provenance(self) -> dict:
        """Where the data comes from, as metrics.json and eval.json record it (MNIST: its folder)."""
        return {}

    def split(self, x: torch.Tensor, y: torch.Tensor, val_size: int) -> None:
        """The training examples `x`, `y` split into train_x/y and val_x/y by `split_seed`, on the device."""
        train_idx, val_idx = split_indices(len(x), val_size, self.split_seed)
        self.split_digest = hashlib.sha256(val_idx.numpy().tobytes()).hexdigest()[:16]
        self.train_x, self.train_y = x[train_idx].to(self.device), y[train_idx].to(self.device)
        self.val_x, self.val_y = x[val_idx].to(self.device), y[val_idx].to(self.device)

    @property
    def device(self) -> torch.device:
        return self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")

    def _batches(self, x, y, batch_size: int, shuffle: bool, resume: dict | None = None) -> TensorBatches:
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        return TensorBatches(x, y, batch_size, shuffle, seed=self.split_seed, rank=rank, world_size=world,
                             resume=resume)

    def train_dataloader(self) -> TensorBatches:
        return self._batches(self.train_x, self.train_y, self.batch_size, shuffle=True, resume=self.resume)

    def resume_at(self, epoch: int, done: int) -> None:
        """Start training in `epoch` after its first `done` batches (a run resumed mid-epoch)."""
        self.resume.update(epoch=epoch, done=done)

    def val_dataloader(self) -> TensorBatches:
        return self._batches(self.val_x, self.val_y, self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> TensorBatches:
        return self._batches(self.test_x, self.test_y, self.eval_batch_size, shuffle=False)

    def predict_dataloader(self) -> TensorBatches:
        return self.test_dataloader()

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        # batches are cut from tensors that already live on the training device
        return batch


class MNISTDataModule(TensorDataModule):
    """MNIST from torchvision's files, held as float tensors on the training device.

    The official 60k training set is split into train/val by `split_seed`; the 10k test set is loaded
    only for testing and never seen by training or model selection.
    """

    name = "MNIST"
    image_shape = (28, 28)
    input_size = 28 * 28
    num_classes = 10
    class_names = tuple("0123456789")
    num_train = NUM_TRAIN
    mean, std = MNIST_MEAN, MNIST_STD
    # centred by centre of mass in 28x28 after fitting into 20x20 (LeCun et al.'s description of MNIST);
    # its strokes' width (2 * area / perimeter of the ink): median 2.6, 5-95% 2.1-4.1
    drawing = Drawing(box=20, centre="mass", stroke=2.6, levels=255)

    def __init__(
        self,
        root: str = "data",
        download: bool = True,
        val_size: int = 12_000,
        batch_size: int = 32,
        eval_batch_size: int = 1000,
        normalize: bool = False,
        split_seed: int = 42,
    ):
        super().__init__(val_size, batch_size, eval_batch_size, normalize, split_seed)
        self.root, self.download = root, download

    def prepare_data(self) -> None:
        fetch_mnist(self.root, self.download)

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit", "validate") and self.train_x is None:
            images, labels = load_mnist(self.root, train=True)
            self.split(self.to_features(images), labels, self.val_size)
        if stage in (None, "test", "predict") and self.test_x is None:
            images, labels = load_mnist(self.root, train=False)
            self.test_x, self.test_y = self.to_features(images).to(self.device), labels.to(self.device)

    def load_test_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The official 10k test images (uint8, N x 28 x 28, as the files hold them) and labels."""
        return load_mnist(self.root, train=False, download=self.download)

    def provenance(self) -> dict:
        return {"data_root": str(Path(self.root).expanduser().resolve())}
