"""DDP (trainer=ddp) on the CPU: 2 processes over gloo, with gradients and metrics in sync."""

import json
import os

import lightning.pytorch as pl
import pytest
import torch
from conftest import PROJECT, run_cli


class SaveRankState(pl.Callback):
    """Each process saves its parameters, its training shard's size and its logged metrics."""

    def __init__(self, dirpath: str):
        self.dirpath, self.train_count = dirpath, 0

    def on_train_epoch_start(self, trainer, pl_module):
        self.train_count = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.train_count += len(batch[1])

    def on_train_end(self, trainer, pl_module):
        torch.save({
            "params": torch.cat([p.detach().flatten() for p in pl_module.parameters()]),
            "train_count": self.train_count,
            "metrics": {k: v.item() for k, v in trainer.callback_metrics.items()},
        }, f"{self.dirpath}/rank{trainer.global_rank}.pt")


@pytest.mark.slow
def test_ddp_two_cpu_processes(synthetic_root, tmp_path):
    # fast=true (the default) takes Lightning's standard path under DDP, saying why
    proc = run_cli(
        "mnist_lit.train", "trainer=ddp", "trainer.accelerator=cpu", "trainer.max_epochs=2", "callbacks=none",
        f"data.root={synthetic_root}", "data.val_size=100", "data.download=false",
        f"hydra.run.dir={tmp_path}",
        "+callbacks.rank_state._target_=test_ddp.SaveRankState", f"+callbacks.rank_state.dirpath={tmp_path}",
        env={"PYTHONPATH": os.pathsep.join([str(PROJECT / "tests"), os.environ.get("PYTHONPATH", "")])},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    output = proc.stdout + proc.stderr
    assert output.count("fast=true: 2 processes") == 1  # once, not once per process
    assert "It is recommended to use `self.log(" not in output  # torchmetrics reduces the scores already
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["status"] == "completed"
    assert m["best_val_acc"] > 0.9 and m["test_acc"] > 0.9  # the synthetic classes are easy
    # 500 training examples: 250 per process, 8 steps of 32 per epoch each
    assert m["steps"] == 2 * 8 and m["epochs"] == 2

    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    # gradients are all-reduced: both processes end with the same weights
    assert torch.equal(ranks[0]["params"], ranks[1]["params"])
    # disjoint, equal shards of the training set
    assert ranks[0]["train_count"] == ranks[1]["train_count"] == 250
    # metrics are synced: every process logs the same values, computed over all processes' data
    assert ranks[0]["metrics"] == ranks[1]["metrics"]
    assert {"train/loss", "train/acc", "val/acc", "val/acc_best"} <= set(ranks[0]["metrics"])
    assert (tmp_path / "train_ddp_process_1.log").is_file()
