"""MNIST as whole in-memory tensors: file checks, the seeded train/val split, and batch iterators."""

from __future__ import annotations

import hashlib
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


def load_mnist(root: str | Path, train: bool, download: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as uint8 (N, 28, 28) and labels as int64 (N,), read by torchvision (downloading if allowed)."""
    from torchvision.datasets import MNIST

    folder = raw_dir(root)
    if download and not all((folder / name).is_file() for name in MNIST_FILES):
        try:
            MNIST(str(root), train=train, download=True)
        except Exception as err:  # no internet, proxy, disk full...: all end the same way for the user
            raise UserError(
                f"MNIST is not in {folder.resolve()} and downloading it failed ({err}). Copy the four MNIST "
                "files into that folder, or point data.root (or MNIST_ROOT) at a folder that has MNIST/raw."
            ) from err
    check_mnist_files(root)
    ds = MNIST(str(root), train=train, download=False)
    return ds.data, ds.targets


def to_features(images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float32 (N, 784) in [0, 1] (the tutorial's scaling), optionally standardised."""
    x = images.reshape(len(images), -1).to(torch.float32).div_(255)
    if normalize:
        x.sub_(MNIST_MEAN).div_(MNIST_STD)
    return x


def to_pixels(features: torch.Tensor, normalize: bool = False) -> torch.Tensor:
    """(N, 784) features -> (N, 28, 28) pixels in [0, 1] on the CPU: the inverse of to_features, for display."""
    x = features.float().cpu()
    if normalize:
        x = x * MNIST_STD + MNIST_MEAN
    return x.reshape(-1, 28, 28).clamp(0, 1)


def split_indices(n: int, val_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random split of range(n) into (train, val) index tensors."""
    if not 0 < val_size < n:
        raise UserError(f"data.val_size={val_size} is not allowed: it must be between 1 and {n - 1}.")
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


class MNISTDataModule(pl.LightningDataModule):
    """MNIST from torchvision's files, held as float tensors on the training device.

    The official 60k training set is split into train/val by `split_seed`; the 10k test set is loaded
    only for testing and never seen by training or model selection.
    """

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
        super().__init__()
        if batch_size <= 0 or eval_batch_size <= 0:
            raise UserError(
                f"data.batch_size={batch_size} and data.eval_batch_size={eval_batch_size} must both be positive integers."
            )
        if not 0 < val_size < NUM_TRAIN:
            raise UserError(f"data.val_size={val_size} is not allowed: it must be between 1 and {NUM_TRAIN - 1}.")
        self.root, self.download = root, download
        self.val_size, self.batch_size, self.eval_batch_size = val_size, batch_size, eval_batch_size
        self.normalize, self.split_seed = normalize, split_seed
        self.resume: dict = {}  # where a resumed run's training starts: shared with its training loaders
        self.train_x = self.train_y = self.val_x = self.val_y = self.test_x = self.test_y = None

    def prepare_data(self) -> None:
        if self.download:
            for train in (True, False):
                load_mnist(self.root, train=train, download=True)
        else:
            check_mnist_files(self.root)

    @property
    def device(self) -> torch.device:
        return self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit", "validate") and self.train_x is None:
            images, labels = load_mnist(self.root, train=True)
            x = to_features(images, self.normalize)
            train_idx, val_idx = split_indices(len(x), self.val_size, self.split_seed)
            self.split_digest = hashlib.sha256(val_idx.numpy().tobytes()).hexdigest()[:16]
            self.train_x, self.train_y = x[train_idx].to(self.device), labels[train_idx].to(self.device)
            self.val_x, self.val_y = x[val_idx].to(self.device), labels[val_idx].to(self.device)
        if stage in (None, "test", "predict") and self.test_x is None:
            images, labels = load_mnist(self.root, train=False)
            self.test_x, self.test_y = to_features(images, self.normalize).to(self.device), labels.to(self.device)

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
