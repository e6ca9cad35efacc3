"""The one loading path of evaluate, predict and export: a run folder (or a checkpoint) -> its network, its
data module (built from the run's own config) and that data's test set.

The run folder is read safely (mnist_lit/runs/checkpoint.py: weights-only checkpoints, allowlisted
configs); the data module is built from the run's own data config, so a run of any dataset is evaluated,
predicted and exported on its own kind of digits, with the command's `data.<key>=` replacing that key of it
(`data.root=<folder>` for MNIST).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from omegaconf import DictConfig

from mnist_lit.errors import UserError
from mnist_lit.runs.checkpoint import Run, load_run

if TYPE_CHECKING:
    import torch


def load(cfg: DictConfig) -> Run:
    """The run a command's config names (run_dir=, ckpt_path=): its network, in eval mode on the CPU, and
    its data module, built from the run's config with the command's data.* keys that are given."""
    # a hostile run is refused before anything is built
    run = load_run(cfg.get("run_dir"), cfg.get("ckpt_path"))
    run.datamodule = run.data_module(**(cfg.get("data") or {}))
    return run


def test_set(run: Run) -> tuple[torch.Tensor, torch.Tensor]:
    """The test images of the run's data ((N, H, W), uint8 bytes or float pixels in [0, 1], as its data
    module keeps them) and their labels; an error says how to point at other data."""
    try:
        return run.datamodule.load_test_set()
    except UserError as err:
        if "root" not in run.cfg.data:
            raise
        raise UserError(f"{err} (The run's own data.root is used unless you pass data.root=<folder>.)"
                        ) from None
