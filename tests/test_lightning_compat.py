"""Each Lightning internal that mnist_lit/lightning_compat.py touches does what the speed layer relies on.

A Lightning release that renames or changes one of them fails here, by name, before any training test;
pyproject bounds lightning to the releases this passed on.
"""

from importlib.metadata import requires, version

import lightning.pytorch as pl
import torch
from packaging.requirements import Requirement
from packaging.version import Version

from mnist_lit import lightning_compat as compat


class Steps(pl.LightningModule):
    """Manually optimized: each training batch counts `group` optimizer steps through compat."""

    def __init__(self, group: int):
        super().__init__()
        self.layer, self.group = torch.nn.Linear(2, 1), group
        self.automatic_optimization = False
        self.global_steps, self.estimated = [], None

    def training_step(self, batch, batch_idx):
        compat.count_optimizer_steps(self.trainer, self.group)
        self.global_steps.append(self.trainer.global_step)

    def on_train_epoch_end(self):
        self.log("seen", float(self.trainer.global_step))

    def configure_optimizers(self):
        with compat.fit_length(self.trainer, 1234):
            self.estimated = self.trainer.estimated_stepping_batches
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return iter([torch.zeros(2)] * 3)  # no length, as mnist_lit.fast.StepGroups


class Steps_logged(pl.loggers.Logger):
    name, version = "steps", 0

    def __init__(self):
        super().__init__()
        self.steps = []

    def log_metrics(self, metrics, step=None):
        self.steps.append(step)

    def log_hyperparams(self, *args, **kwargs):
        pass


def test_counted_steps_are_global_steps_and_logger_steps():
    module, logger = Steps(group=5), Steps_logged()
    trainer = pl.Trainer(max_epochs=1, logger=logger, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu")
    trainer.fit(module)
    assert module.global_steps == [5, 10, 15] and trainer.global_step == 15
    # Lightning logs epoch-end values at its batch counter, less one: 15 counted steps, not 3 batches
    assert logger.steps == [14]
    assert module.estimated == 1234 and trainer.max_steps == -1  # fit_length restores max_steps


def test_checkpoint_saving_within_epochs_is_seen():
    from datetime import timedelta

    from lightning.pytorch.callbacks import ModelCheckpoint

    assert not compat.saves_within_epochs(ModelCheckpoint(save_last=True, monitor="val/acc", mode="max"))
    assert compat.saves_within_epochs(ModelCheckpoint(every_n_train_steps=5))
    assert compat.saves_within_epochs(ModelCheckpoint(train_time_interval=timedelta(minutes=1)))


def test_pyproject_bounds_lightning_to_the_tested_release():
    spec = next(Requirement(r).specifier for r in requires("mnist-lit") if Requirement(r).name == "lightning")
    installed = Version(version("lightning"))
    assert installed in spec, f"lightning {installed} is outside mnist-lit's tested range {spec}"
    assert any(s.operator == "<" for s in spec), "pyproject must bound lightning above"
    assert not spec.contains(f"{installed.major}.{installed.minor + 1}.0")
