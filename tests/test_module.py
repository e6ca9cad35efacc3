"""mnist_lit/module.py outside a fit: the steps, the metrics, the optimizer and schedule it configures."""

from functools import partial
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from mnist_lit.model import MLP
from mnist_lit.module import MNISTClassifier


def module(**kwargs) -> MNISTClassifier:
    torch.manual_seed(0)
    return MNISTClassifier(MLP(), partial(torch.optim.Adam, lr=1e-3), **kwargs)


def batch(n=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 784, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_training_step_returns_the_loss_and_sums_the_epoch():
    m = module(label_smoothing=0.1)
    x, y = batch()
    loss = m.training_step((x, y), 0)
    expected = F.cross_entropy(m.net(x), y, label_smoothing=0.1)
    assert loss.requires_grad and torch.allclose(loss, expected)
    x2, y2 = batch(seed=2)
    loss2 = m.training_step((x2, y2), 1)
    metrics = m.train_metrics()
    assert torch.allclose(metrics["train/loss"], (loss + loss2).detach() / 2)
    correct = (m.net(x).argmax(1) == y).sum() + (m.net(x2).argmax(1) == y2).sum()
    assert metrics["train/acc"] == pytest.approx(correct.item() / 16)


def test_augment_applies_in_training_steps_only():
    seen = []

    class Record(torch.nn.Module):
        def forward(self, x):
            seen.append(self.training)
            return x + 1

    m = module(augment=Record())
    x, y = batch()
    m.training_step((x, y), 0)
    assert seen == [True]
    m.validation_step((x, y), 0)  # no augmentation at evaluation
    assert seen == [True]


def test_validation_and_test_share_one_step_with_plain_cross_entropy():
    m = module(label_smoothing=0.5)
    x, y = batch(n=10)
    m.validation_step((x, y), 0)
    m.test_step((x, y), 0)
    plain = F.cross_entropy(m.net(x), y)
    assert torch.allclose(m.val_loss.compute(), plain) and torch.allclose(m.test_loss.compute(), plain)
    assert m.val_acc.compute() == m.test_acc.compute()


def test_optimizer_sees_only_the_network_and_a_whole_fit_schedule_gets_the_fit_length(monkeypatch):
    onecycle = partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=1e-2, total_steps=None)
    m = module(scheduler=onecycle)
    monkeypatch.setattr(MNISTClassifier, "trainer", property(lambda self: SimpleNamespace(
        estimated_stepping_batches=1234)))
    config = m.configure_optimizers()
    assert config["lr_scheduler"]["scheduler"].total_steps == 1234
    assert config["lr_scheduler"]["interval"] == "step"
    assert sum(p.numel() for g in config["optimizer"].param_groups for p in g["params"]) == 101_770
    assert isinstance(module().configure_optimizers(), torch.optim.Adam)  # no schedule: the optimizer


def test_checkpoints_keep_the_running_sums_and_the_best_score():
    m = module()
    m.training_step(batch(), 0)
    m.val_acc_best.update(torch.tensor(0.75))
    state = m.state_dict()
    assert {"train_loss.mean_value", "train_acc.tp", "val_acc_best.max_value"} <= set(state)
    restored = module()
    restored.load_state_dict(state)
    assert restored.val_acc_best.compute() == 0.75
    assert torch.equal(restored.train_metrics()["train/loss"], m.train_metrics()["train/loss"])
