"""The network: a plain multilayer perceptron over flattened 28x28 digits."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from mnist_lit.errors import UserError


class MLP(nn.Sequential):
    """784 -> hidden_sizes... -> 10, ReLU between layers, optional dropout after each hidden layer.

    The default (hidden_sizes=[128]) is the tutorial's 784-128-10 network: 101,770 parameters.
    `init="glorot_uniform"` initialises as Keras' Dense does (Glorot-uniform weights, zero biases), which
    learns faster here than PyTorch's default (`init="torch"`): 95.2-95.3% vs 94.4-95.0% test accuracy
    after one epoch over three seeds.
    """

    INITS = ("glorot_uniform", "torch")

    def __init__(
        self,
        input_size: int = 784,
        hidden_sizes: Sequence[int] = (128,),
        num_classes: int = 10,
        dropout: float = 0.0,
        init: str = "glorot_uniform",
    ):
        sizes = [input_size, *hidden_sizes]
        if any(not isinstance(s, int) or s <= 0 for s in sizes) or num_classes <= 0:
            raise UserError(f"model.net.hidden_sizes={list(hidden_sizes)} must be positive integers, e.g. [128].")
        if not 0.0 <= dropout < 1.0:
            raise UserError(f"model.net.dropout={dropout} must be in [0, 1).")
        layers: list[nn.Module] = []
        for n_in, n_out in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(n_in, n_out), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
        if init not in self.INITS:
            raise UserError(f"model.net.init={init!r} is not known; choose one of {', '.join(self.INITS)}.")
        layers.append(nn.Linear(sizes[-1], num_classes))
        super().__init__(*layers)
        if init == "glorot_uniform":
            for layer in self:
                if isinstance(layer, nn.Linear):
                    nn.init.xavier_uniform_(layer.weight)
                    nn.init.zeros_(layer.bias)
