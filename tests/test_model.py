import pytest
import torch

from mnist_lit.errors import UserError
from mnist_lit.model import MLP


def test_default_is_the_tutorial_network():
    net = MLP()
    assert sum(p.numel() for p in net.parameters() if p.requires_grad) == 101_770
    assert net(torch.rand(5, 784)).shape == (5, 10)
    assert [type(m).__name__ for m in net] == ["Linear", "ReLU", "Linear"]


def test_hidden_sizes_and_dropout():
    net = MLP(hidden_sizes=[256, 64], dropout=0.2)
    assert [m.out_features for m in net if isinstance(m, torch.nn.Linear)] == [256, 64, 10]
    assert sum(isinstance(m, torch.nn.Dropout) for m in net) == 2
    assert net(torch.rand(3, 784)).shape == (3, 10)


@pytest.mark.parametrize("kwargs", [{"hidden_sizes": [0]}, {"hidden_sizes": [-5]}, {"dropout": 1.0}])
def test_bad_sizes_are_user_errors(kwargs):
    with pytest.raises(UserError):
        MLP(**kwargs)
