"""Learning-rate schedules (conf/model/scheduler): they compose, and the logged lr follows them."""

import csv
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from conftest import compose
from hydra.utils import instantiate
from lightning.pytorch.loggers import CSVLogger

from mnist_lit.data import MNISTDataModule
from mnist_lit.reporting.callbacks import TrainingCurve
from mnist_lit.speed.grouped import GroupedSteps

CONF = Path(__file__).resolve().parent.parent / "conf"
SCHEDULERS = sorted(p.stem for p in (CONF / "model" / "scheduler").glob("*.yaml"))



pytestmark = pytest.mark.usefixtures("one_thread")


def logged_lrs(csv_path: Path, column: str) -> list[float]:
    with csv_path.open() as f:
        return [float(row[column]) for row in csv.DictReader(f) if row.get(column)]


@pytest.mark.parametrize("option", SCHEDULERS)
def test_scheduler_options_compose(option):
    cfg = compose("train", f"model/scheduler={option}")
    assert cfg.model.scheduler._target_ == "torch.optim.lr_scheduler.OneCycleLR"
    assert cfg.model.scheduler.total_steps is None  # filled in by the module from the fit's length
    # `model.scheduler=null` still turns a chosen schedule off, and the default has none
    off = compose("train", f"model/scheduler={option}", "model.scheduler=null")
    assert instantiate(off.model).scheduler_factory is None
    assert instantiate(compose("train").model).scheduler_factory is None


@pytest.mark.parametrize(("overrides", "limit_groups"), [
    (["model/scheduler=onecycle"], None),
    (["model/scheduler=warmup_cosine"], 2),
    (["experiment=mlp128_best"], None),
])
def test_logged_lr_follows_the_schedule_over_the_whole_fit(overrides, limit_groups, synthetic_root, tmp_path):
    cfg = compose("train", *overrides)
    model = instantiate(cfg.model)
    # 500 training examples / 25 = 20 optimizer steps per epoch, grouped 5 at a time (or limited, which
    # takes Lightning's own path)
    data = MNISTDataModule(str(synthetic_root), download=False, val_size=100, batch_size=25, split_seed=0)
    epochs = 3
    trainer = pl.Trainer(
        accelerator="cpu", max_epochs=epochs, limit_train_batches=limit_groups and limit_groups * 5,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1,
        logger=CSVLogger(tmp_path, name="csv", version=""), callbacks=[TrainingCurve(), GroupedSteps(True, 5)],
    )
    pl.seed_everything(0, verbose=False)
    trainer.fit(model, datamodule=data)

    steps = epochs * (limit_groups * 5 if limit_groups else 20)
    assert trainer.global_step == steps
    # the same schedule, by torch, over exactly the fit's optimizer steps
    optimizer = trainer.optimizers[0]
    reference_opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    reference = instantiate(cfg.model.scheduler)(optimizer=reference_opt, total_steps=steps)
    expected = []
    for _ in range(steps):
        reference_opt.step()
        reference.step()
        expected.append(reference_opt.param_groups[0]["lr"])
    lrs = logged_lrs(tmp_path / "csv" / "metrics.csv", "lr")
    # logged after every step, as the next step will use it
    assert lrs == pytest.approx(expected, rel=1e-6)
    s = cfg.model.scheduler
    assert max(expected) == pytest.approx(s.max_lr, rel=1e-3)
    # the module gave the schedule the fit's true length: the last step ran at the schedule's final lr
    assert expected[-2] == pytest.approx(s.max_lr / (s.div_factor * s.final_div_factor), rel=1e-6)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(reference_opt.param_groups[0]["lr"])
