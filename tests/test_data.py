import pytest
import torch

from mnist_lit.data import MNISTDataModule, TensorBatches, check_mnist_files
from mnist_lit.errors import UserError


def setup_dm(root, **kwargs) -> MNISTDataModule:
    dm = MNISTDataModule(root=str(root), download=False, **{"val_size": 100, **kwargs})
    dm.prepare_data()
    dm.setup("fit")
    dm.setup("test")
    return dm


def test_split_sizes_disjoint_and_covering(synthetic_root):
    dm = setup_dm(synthetic_root)
    assert dm.train_x.shape == (500, 784) and dm.val_x.shape == (100, 784) and dm.test_x.shape == (200, 784)
    assert dm.train_y.dtype == torch.int64
    # rows are identified by content: train and val share none, and together they are the 600 originals
    train_rows = {tuple(r.tolist()) for r in dm.train_x}
    val_rows = {tuple(r.tolist()) for r in dm.val_x}
    assert not train_rows & val_rows
    assert len(train_rows | val_rows) == 600


def test_split_is_seeded(synthetic_root):
    a, b, c = setup_dm(synthetic_root, split_seed=1), setup_dm(synthetic_root, split_seed=1), setup_dm(
        synthetic_root, split_seed=2
    )
    assert torch.equal(a.val_x, b.val_x) and a.split_digest == b.split_digest
    assert not torch.equal(a.val_x, c.val_x) and a.split_digest != c.split_digest


def test_scaling_to_unit_range_and_normalize(synthetic_root):
    dm = setup_dm(synthetic_root)
    assert dm.train_x.min() >= 0 and dm.train_x.max() == 1.0
    norm = setup_dm(synthetic_root, normalize=True)
    assert torch.allclose(norm.train_x, (dm.train_x - 0.1307) / 0.3081, atol=1e-6)


def test_test_set_kept_apart(synthetic_root):
    dm = MNISTDataModule(root=str(synthetic_root), download=False, val_size=100)
    dm.setup("fit")
    assert dm.test_x is None  # fitting never loads the official test set
    dm.setup("test")
    assert len(dm.test_x) == 200


def test_train_batches_cover_epoch_and_reshuffle():
    x, y = torch.arange(100.0).unsqueeze(1), torch.arange(100)
    batches = TensorBatches(x, y, batch_size=32, shuffle=True, seed=0)
    epoch0 = torch.cat([b[1] for b in batches])
    assert len(batches) == 4 and sorted(epoch0.tolist()) == list(range(100))
    assert torch.equal(epoch0, torch.cat([b[1] for b in batches]))  # same epoch -> same order
    batches.set_epoch(1)
    assert not torch.equal(epoch0, torch.cat([b[1] for b in batches]))


def test_epoch_gather_yields_the_same_batches_as_per_batch_gathers():
    # the GPU's way (one shuffled copy per epoch, batches are views of it) against the CPU's
    x, y = torch.randn(101, 3), torch.arange(101)
    for rank, world in ((0, 1), (1, 2)):
        per_batch = list(TensorBatches(x, y, 16, True, seed=5, rank=rank, world_size=world, gather_epoch=False))
        epoch = TensorBatches(x, y, 16, True, seed=5, rank=rank, world_size=world, gather_epoch=True)
        assert len(list(epoch)) == len(per_batch) == len(epoch)
        for (xa, ya), (xb, yb) in zip(per_batch, epoch, strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_ddp_shards_are_disjoint_and_equal():
    x, y = torch.arange(101.0).unsqueeze(1), torch.arange(101)
    shards = [torch.cat([b[1] for b in TensorBatches(x, y, 8, True, seed=3, rank=r, world_size=2)]) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 50
    assert not set(shards[0].tolist()) & set(shards[1].tolist())


def test_resume_at_starts_the_next_iteration_in_that_epoch_after_the_trained_batches():
    x, y = torch.arange(100.0).unsqueeze(1), torch.arange(100)
    batches = TensorBatches(x, y, batch_size=10, shuffle=True, seed=0)
    batches.set_epoch(1)
    full = [b[1] for b in batches]
    batches.set_epoch(0)  # as Lightning may leave it when it restarts mid-epoch
    batches.resume_at(1, 4)
    iterator = iter(batches)  # an iterator not yet started takes nothing (Lightning checks loaders so)
    assert [b[1].tolist() for b in batches] == [b.tolist() for b in full[4:]]
    assert len(list(iterator)) == 10 and len(list(batches)) == 10  # later iterations are whole


def test_resume_after_an_epochs_last_batch_starts_the_next_epoch():
    # a checkpoint saved at the end of epoch 1 (`ckpt_path=.../last.ckpt trainer.max_epochs=...`)
    x, y = torch.arange(100.0).unsqueeze(1), torch.arange(100)
    batches = TensorBatches(x, y, batch_size=10, shuffle=True, seed=0)
    batches.set_epoch(2)
    epoch2 = [b[1].tolist() for b in batches]
    batches.set_epoch(1)
    batches.resume_at(1, 10)
    assert [b[1].tolist() for b in batches] == epoch2


def test_missing_files_error_names_folder_and_fix(tmp_path):
    with pytest.raises(UserError) as err:
        check_mnist_files(tmp_path)
    msg = str(err.value)
    assert str((tmp_path / "MNIST" / "raw").resolve()) in msg and "data.root" in msg and "MNIST_ROOT" in msg


def test_missing_files_without_internet_is_a_user_error(tmp_path, monkeypatch):
    import torchvision.datasets.mnist as tv

    def no_network(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(tv, "download_and_extract_archive", no_network)
    dm = MNISTDataModule(root=str(tmp_path), download=True)
    with pytest.raises(UserError, match="downloading it failed"):
        dm.prepare_data()


def test_files_are_decoded_once_per_process_until_they_change(tmp_path, monkeypatch):
    import torchvision.datasets
    from conftest import write_mnist

    from mnist_lit.data import load_mnist

    decoded = []
    real = torchvision.datasets.MNIST
    monkeypatch.setattr(torchvision.datasets, "MNIST", lambda *a, **k: decoded.append(k) or real(*a, **k))
    root = write_mnist(tmp_path / "data", n_train=60, n_test=20)
    images, labels = load_mnist(root, train=True)
    images.zero_()  # a caller's change to what it got is its own
    again, _ = load_mnist(root, train=True)
    assert len(decoded) == 1 and again.shape == (60, 28, 28) and again.any()
    assert torch.equal(labels, load_mnist(root, train=True)[1])
    write_mnist(root, n_train=70, n_test=20)  # new files in the same place: read again
    assert load_mnist(root, train=True)[0].shape == (70, 28, 28) and len(decoded) == 2


@pytest.mark.parametrize("val_size", [0, -1, 60000, 70000])
def test_bad_val_size(val_size):
    with pytest.raises(UserError, match="data.val_size"):
        MNISTDataModule(val_size=val_size)
