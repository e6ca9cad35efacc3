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
        self.global_steps = []

    def training_step(self, batch, batch_idx):
        compat.count_optimizer_steps(self.trainer, self.group)
        self.global_steps.append(self.trainer.global_step)

    def on_train_epoch_end(self):
        self.log("seen", float(self.trainer.global_step))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return iter([torch.zeros(2)] * 3)  # no length, as mnist_lit.speed.grouped.StepGroups


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
    module.automatic_optimization = True  # as fast.GroupedSteps leaves the module after the fit
    assert trainer.global_step == 15
    # Lightning logs epoch-end values at its batch counter, less one: 15 counted steps, not 3 batches
    assert logger.steps == [14]


class Groups:
    """An iterable without a length, as mnist_lit.speed.grouped.StepGroups."""

    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)


class ModuleSteps(pl.LightningModule):
    """Its own loader holds 4 batches; its configure_optimizers asks the fit's length (as one-cycle does)."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.automatic_optimization = False
        self.estimated, self.trained = None, []

    def training_step(self, batch, batch_idx):
        self.trained.append(batch_idx)

    def configure_optimizers(self):
        self.estimated = self.trainer.estimated_stepping_batches
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.zeros(4, 2), batch_size=1)


class HandToGroups(pl.Callback):
    """Has Lightning's loop train on 2 groups (batches of ones), handed to `seen`, as the grouped steps do."""

    def __init__(self):
        self.seen = []

    def on_fit_start(self, trainer, pl_module):
        compat.use_training_loader(trainer, Groups([torch.ones(2), torch.ones(2)]))
        compat.use_training_step(trainer, lambda batch, idx: self.seen.append((batch.sum().item(), idx)))

    def teardown(self, trainer, pl_module, stage):
        compat.use_training_step(trainer, None)


def test_a_callback_hands_lightnings_training_batches_to_its_own_step():
    module, hand = ModuleSteps(), HandToGroups()
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", callbacks=[hand])
    trainer.fit(module)
    assert module.estimated == 4  # the fit's length from the module's own loader, loaded before on_fit_start
    assert hand.seen == [(2.0, 0), (2.0, 1)] and module.trained == []  # the handed loader, to the handed step
    assert trainer.strategy.training_step(torch.zeros(2), 7) is None and module.trained == [7]  # handed back


class Automatic(pl.LightningModule):
    """Automatically optimized, one step a batch: Lightning's standard path."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.first_step = self.first_batch = None

    def on_train_start(self):
        self.first_step = self.trainer.global_step

    def training_step(self, batch, batch_idx):
        if self.first_batch is None:
            self.first_batch = batch_idx
        return self.layer(batch).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.zeros(15, 2), batch_size=1)


class SaveAfterSecondBatch(pl.Callback):
    def __init__(self, path):
        self.path = path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == 1:
            trainer.save_checkpoint(self.path)


def test_a_grouped_checkpoint_resumes_on_lightnings_standard_path(tmp_path):
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu",
                         callbacks=[SaveAfterSecondBatch(tmp_path / "grouped.ckpt")])
    trainer.fit(Steps(group=5))  # saved mid-epoch, after 2 batches of 5 steps
    checkpoint = torch.load(tmp_path / "grouped.ckpt", weights_only=True)
    compat.steps_in_both_counters(checkpoint)
    compat.batches_as_steps(checkpoint, 10)
    loop = checkpoint["loops"]["fit_loop"]
    automatic = loop["epoch_loop.automatic_optimization.optim_progress"]["optimizer"]
    assert automatic["step"]["total"]["completed"] == 10
    # saved within the second batch's end hook: completed lags by that batch
    assert loop["epoch_loop.batch_progress"]["current"] == {"ready": 10, "started": 10, "processed": 10,
                                                            "completed": 9}
    torch.save(checkpoint, tmp_path / "standard.ckpt")
    module = Automatic()
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu")
    trainer.fit(module, ckpt_path=tmp_path / "standard.ckpt")
    # resumed as after 10 batches of one step: the step count and the batch index go on from there
    assert (module.first_step, module.first_batch) == (10, 10)


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


def test_the_training_bar_counts_epochs_from_1():
    from types import SimpleNamespace

    from lightning.pytorch.callbacks import RichProgressBar

    class Bar(compat.EpochsFromOne, RichProgressBar):
        pass

    bar = Bar()
    bar._trainer = SimpleNamespace(max_epochs=10)  # what RichProgressBar.trainer reads
    # Lightning's own reads "Epoch 2/9" here, padded to the validation bar's description
    assert RichProgressBar._get_train_description(bar, 2).strip() == "Epoch 2/9"
    assert bar._get_train_description(2).strip() == "Epoch 3/10"
    assert len(bar._get_train_description(2)) == len(RichProgressBar._get_train_description(bar, 2))
