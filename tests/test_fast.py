"""mnist_lit/speed/grouped.py: grouped steps give exactly what Lightning's standard path gives, or fall back saying why."""

from __future__ import annotations

import logging
import warnings
from functools import partial
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from conftest import SYNTHETIC_OVERRIDES, run_cli
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.loggers import Logger

from mnist_lit.augment import RandomAffine
from mnist_lit.data import MNISTDataModule
from mnist_lit.errors import UserError
from mnist_lit.model import MLP
from mnist_lit.module import MNISTClassifier
from mnist_lit.reporting.callbacks import StepAxis, TrainingCurve
from mnist_lit.reporting.progress import StepProgressBar
from mnist_lit.runs.reliability import ResumeExactly, StopOnDivergence
from mnist_lit.speed import grouped as fast_module
from mnist_lit.speed.grouped import GroupedSteps, StepGroups, make_capturable


class Recorder(Logger):
    """Every (step, name, value) a run logs."""

    def __init__(self):
        super().__init__()
        self.logged: list[tuple[int, str, float]] = []

    name, version = "recorder", 0

    def log_metrics(self, metrics, step=None):
        self.logged += [(step, k, float(v)) for k, v in sorted(metrics.items())]

    def log_hyperparams(self, params, *args, **kwargs):
        pass


ONECYCLE = partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=3e-3, total_steps=None, cycle_momentum=False)


def fit(root, *, fast=True, size=4, epochs=2, scheduler=None, augment=False, every=5, optimizer=None,
        callbacks=(), ckpt_path=None, model=None, **trainer_args):
    pl.seed_everything(0, verbose=False)
    dm = MNISTDataModule(str(root), download=False, val_size=100, batch_size=32)
    model = model or MNISTClassifier(MLP(), optimizer or partial(torch.optim.Adam, lr=1e-3), scheduler,
                                     augment=RandomAffine(degrees=10, translate=2) if augment else None)
    recorder = Recorder()
    trainer = pl.Trainer(
        max_epochs=epochs, accelerator="cpu", logger=recorder, enable_checkpointing=False,
        enable_progress_bar=any(isinstance(cb, ProgressBar) for cb in callbacks), enable_model_summary=False,
        num_sanity_val_steps=0, log_every_n_steps=every,
        callbacks=[TrainingCurve(), StepAxis(), StopOnDivergence(), ResumeExactly(), GroupedSteps(fast, size),
                   *callbacks],
        **trainer_args,
    )
    trainer.fit(model, dm, ckpt_path=ckpt_path)
    return model, trainer, recorder.logged


def params(model):
    return torch.cat([p.detach().flatten() for p in model.net.parameters()])


def grouped(trainer) -> bool:
    """Whether the grouped steps trained: Lightning saw a batch per group (4 minibatches), not per step."""
    return trainer.fit_loop.epoch_loop.batch_progress.total.completed < trainer.global_step


@pytest.mark.parametrize("recipe", ["plain", "onecycle", "augment"])
def test_grouped_steps_are_bit_identical_to_lightnings_path(synthetic_root, one_thread, recipe):
    options = {"plain": {}, "onecycle": {"scheduler": ONECYCLE}, "augment": {"augment": True}}[recipe]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fast, t_fast, logged_fast = fit(synthetic_root, fast=True, **options)
    # the schedule planned ahead of the steps is no "scheduler stepped before the optimizer" (fast=false:
    # none either)
    assert not [w for w in caught if "lr_scheduler.step()" in str(w.message)]
    slow, t_slow, logged_slow = fit(synthetic_root, fast=False, **options)
    assert grouped(t_fast) and not grouped(t_slow)  # both paths ran
    assert fast.automatic_optimization and "training_step" not in vars(fast)  # the module as it was
    assert t_fast.global_step == t_slow.global_step == 32  # 2 epochs of 16 batches (500 examples)
    assert torch.equal(params(fast), params(slow))
    assert logged_fast == logged_slow  # every value, at every step
    names = {name for _, name, _ in logged_fast}
    assert {"train/loss", "train/acc", "val/loss", "val/acc", "val/acc_best", "train/loss_running", "lr"} <= names
    if recipe == "onecycle":  # the schedule ran over the whole fit's 32 steps, not over groups
        lrs = [value for _, name, value in logged_fast if name == "lr"]
        assert max(lrs) == pytest.approx(3e-3, rel=0.05) and lrs[-1] < 1e-4


def test_a_fitted_module_fits_again_with_grouped_steps(synthetic_root, one_thread):
    # a notebook's second trainer.fit of the same module: grouped again, from the weights the first one left
    model, first, _ = fit(synthetic_root, epochs=1)
    trained = params(model).clone()
    model, second, logged = fit(synthetic_root, epochs=1, model=model)
    assert grouped(first) and grouped(second) and second.global_step == 16
    assert not torch.equal(params(model), trained)
    assert [step for step, name, _ in logged if name == "val/acc"] == [16]


class Rewritten(pl.Callback):
    """Test helper: after each training batch, what of the module, the datamodule and the trainer's callbacks
    is not as the run built them."""

    steps_in_groups = True

    def __init__(self):
        self.seen = set()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        for owner in (pl_module, trainer.datamodule):
            self.seen |= {f"{type(owner).__name__}.{name}" for name, value in vars(owner).items()
                          if callable(value) and callable(getattr(type(owner), name, None))}
        if not any(isinstance(cb, TrainingCurve) for cb in trainer.callbacks):
            self.seen.add("TrainingCurve removed")


def test_the_grouped_steps_replace_nothing_of_the_module_datamodule_or_callbacks(synthetic_root, one_thread):
    rewritten = Rewritten()
    model, trainer, _ = fit(synthetic_root, epochs=1, callbacks=[rewritten])
    assert grouped(trainer) and rewritten.seen == set()
    assert model.automatic_optimization and "training_step" not in vars(trainer.strategy)  # handed back


class SaveAt(pl.Callback):
    """Test helper: saves a checkpoint after optimizer step `step` (mid-epoch), as a Ctrl-C would."""

    steps_in_groups = True

    def __init__(self, step: int, path):
        self.step, self.path = step, path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            trainer.save_checkpoint(self.path)


def test_a_checkpoint_resumes_on_either_path(synthetic_root, one_thread, tmp_path):
    # saved after step 24 (8 steps into the second epoch) by each path, resumed by the other: both go on
    # at step 24 with the epoch's sums so far, and end as the uninterrupted runs
    ref, _, logged = fit(synthetic_root, fast=True, scheduler=ONECYCLE,
                         callbacks=[SaveAt(24, tmp_path / "fast.ckpt")])
    fit(synthetic_root, fast=False, scheduler=ONECYCLE, callbacks=[SaveAt(24, tmp_path / "slow.ckpt")])
    saved = {path: torch.load(tmp_path / f"{path}.ckpt", weights_only=True) for path in ("fast", "slow")}
    assert saved["fast"]["global_step"] == saved["slow"]["global_step"] == 24
    assert saved["fast"]["state_dict"].keys() == saved["slow"]["state_dict"].keys()
    for key, value in saved["slow"]["state_dict"].items():
        assert torch.equal(saved["fast"]["state_dict"][key], value), key
    assert saved["slow"]["state_dict"]["train_loss.weight"] == 8
    for counter in ("epoch_loop.batch_progress", "epoch_loop.state_dict"):
        assert saved["fast"]["loops"]["fit_loop"][counter] == saved["slow"]["loops"]["fit_loop"][counter]
    for resumed_by, path in ((False, "fast"), (True, "slow")):
        model, trainer, resumed = fit(synthetic_root, fast=resumed_by, scheduler=ONECYCLE,
                                      ckpt_path=tmp_path / f"{path}.ckpt")
        assert grouped(trainer) is resumed_by and trainer.global_step == 32
        assert torch.equal(params(model), params(ref))
        assert resumed == [entry for entry in logged if entry[0] > 24], resumed_by  # running curve included


class ShownSteps(StepProgressBar):
    """StepProgressBar recording what its training bar shows (done, total) after each batch and epoch."""

    def __init__(self):
        super().__init__(update_seconds=0)
        self.enable()  # as on a terminal (the tests' output is none)
        self.shown = []

    def on_train_batch_end(self, *args) -> None:
        super().on_train_batch_end(*args)
        self.record()

    def on_train_epoch_end(self, *args) -> None:
        super().on_train_epoch_end(*args)
        self.record()

    def record(self) -> None:
        task = self.progress.tasks[self.train_progress_bar_id]
        self.shown.append((task.completed, task.total))


@pytest.mark.parametrize("fast, accumulate", [(True, 1), (False, 1), (False, 3)])
def test_progress_bar_counts_optimizer_steps(synthetic_root, one_thread, fast, accumulate):
    bar = ShownSteps()
    _, trainer, _ = fit(synthetic_root, fast=fast, epochs=1, callbacks=[bar],
                        accumulate_grad_batches=accumulate)
    # at the end its training bar is gone from the screen: the epoch's line holds the epoch's numbers
    assert not bar.progress.tasks[bar.train_progress_bar_id].visible
    # 16 batches: grouped 4 by 4, one by one, or 6 steps of up to 3 batches (the last one of 1)
    expected = {(True, 1): [4, 8, 12, 16], (False, 1): list(range(1, 17)),
                (False, 3): [0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4, 5, 6]}[fast, accumulate]
    total = 6 if accumulate == 3 else 16
    assert bar.shown == [(done, total) for done in expected] + [(total, total)]


class ReplayOnCpu:
    """CudaGraph's part, on the CPU: a capture keeps the group's work without running it, and a replay runs it
    again on the same static tensors. What is around it (a graph per group shape, static inputs, learning-rate
    rows, traces of the sums) is what runs on a GPU."""

    def __init__(self):
        self.work = None

    @staticmethod
    def warm_up(run):
        run()

    def capture(self, run):
        self.work = run

    def replay(self):
        self.work()


class SameSums(pl.Callback):
    """Test helper: whether the grouped steps' sums are the same tensors at training's end as at its start."""

    steps_in_groups = True

    def on_train_start(self, trainer, pl_module):
        self.layer = next(cb for cb in trainer.callbacks if isinstance(cb, GroupedSteps))
        self.sums = dict(self.layer.sums)

    def on_train_end(self, trainer, pl_module):
        self.kept = all(self.layer.sums[name] is value for name, value in self.sums.items())


@pytest.mark.parametrize("recipe", ["plain", "onecycle"])
def test_captured_groups_replay_exactly_what_lightnings_path_does(synthetic_root, one_thread, monkeypatch,
                                                                  recipe):
    scheduler = ONECYCLE if recipe == "onecycle" else None
    # what make_capturable gives a GPU run: capturable (fused) Adam, under a schedule a tensor learning rate
    # (a new one for each run: the scheduler writes into it)
    def optimizer(params):
        lr = torch.tensor(1e-3) if scheduler else 1e-3
        return torch.optim.Adam(params, lr=lr, fused=True, capturable=True)

    slow, _, logged_slow = fit(synthetic_root, fast=False, scheduler=scheduler, optimizer=optimizer)
    monkeypatch.setattr(fast_module, "graphs_for", lambda device: ReplayOnCpu)
    same_sums = SameSums()
    grouped, trainer, logged = fit(synthetic_root, fast=True, scheduler=scheduler, optimizer=optimizer,
                                   callbacks=[same_sums])
    assert same_sums.kept  # a CUDA graph writes the tensors it captured: the layer's sums stay those
    graphs = next(cb for cb in trainer.callbacks if isinstance(cb, GroupedSteps)).graphs
    # epoch 0: the first group and the short last one (20 examples) run eagerly, groups 2 and 3 are replays;
    # epoch 1: four replays, the short group's graph captured then
    assert set(graphs.graphs) == {(32, 32, 32, 32), (32, 32, 32, 20)} and graphs.replays == 6
    assert torch.equal(params(grouped), params(slow))
    assert logged == logged_slow
    if scheduler:
        assert torch.is_tensor(trainer.optimizers[0].param_groups[0]["lr"])  # what the graphs read


class EpochSchedule(MNISTClassifier):
    """The learning rate changed by Lightning at epoch ends (interval "epoch"), not by the steps."""

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(params=self.net.parameters())
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1, gamma=0.1)
        return {"optimizer": optimizer, "lr_scheduler": scheduler}


def test_a_scheduler_stepped_once_an_epoch_takes_the_standard_path(synthetic_root, one_thread, caplog):
    # Lightning steps it only under automatic optimization: known when configure_optimizers returns it
    runs = []
    for fast in (False, True):
        pl.seed_everything(0, verbose=False)
        model = EpochSchedule(MLP(), partial(torch.optim.Adam, lr=1e-3))
        recorder = Recorder()
        trainer = pl.Trainer(max_epochs=2, accelerator="cpu", logger=recorder, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                             log_every_n_steps=5, callbacks=[TrainingCurve(), GroupedSteps(fast, 4)])
        with caplog.at_level(logging.INFO, logger="mnist_lit.speed.grouped"):
            trainer.fit(model, MNISTDataModule(str(synthetic_root), download=False, val_size=100))
        runs.append((model, trainer, recorder.logged))
    (slow, _, logged_slow), (fell_back, trainer, logged) = runs
    lines = [r.getMessage() for r in caplog.records if r.name == "mnist_lit.speed.grouped"]
    assert len(lines) == 1 and "interval 'epoch'" in lines[0] and "standard path" in lines[0]
    assert not grouped(trainer) and trainer.global_step == 32
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(1e-5)  # two epoch ends: x0.1 each
    assert torch.equal(params(fell_back), params(slow)) and logged == logged_slow  # running curve included


@pytest.mark.parametrize("configs, supported", [
    ([], True),
    ([{"interval": "step"}], True),
    ([{}], False),  # Lightning's default interval: "epoch" (also for a scheduler returned outside a dict)
    ([{"interval": "step", "frequency": 2}], False),
    ([{"interval": "step", "reduce_on_plateau": True, "monitor": "val/loss"}], False),
    ([{"interval": "step"}, {"interval": "step"}], False),
])
def test_schedules_the_grouped_steps_can_step(configs, supported):
    # as Lightning sets them up from configure_optimizers (trainer.lr_scheduler_configs)
    from lightning.pytorch.utilities.types import LRSchedulerConfig

    from mnist_lit.speed.grouped import unsupported_schedule

    configs = [LRSchedulerConfig(scheduler=None, **config) for config in configs]
    assert (unsupported_schedule(configs) is None) is supported


def test_logged_steps_do_not_depend_on_grouping(synthetic_root, one_thread):
    steps = {}
    for size in (1, 5, 50):
        _, _, logged = fit(synthetic_root, size=size)
        steps[size] = sorted({(name, step) for step, name, _ in logged})
    assert steps[1] == steps[5] == steps[50]
    by_name = {}
    for name, step in steps[1]:
        by_name.setdefault(name, []).append(step)
    assert by_name["val/acc"] == [16, 32]  # at the optimizer step that ends each epoch
    assert by_name["train/loss"] == [16, 32]
    assert by_name["train/loss_running"] == [5, 10, 15, 20, 25, 30]
    # Lightning's epoch scalar, which an explicit step would leave out: epoch 0 ends at step 16, epoch 1 at 32
    epochs = sorted({(step, value) for step, name, value in logged if name == "epoch"})
    assert epochs == [(16, 0.0), (32, 1.0)]


@pytest.mark.parametrize("trainer_args, reason", [
    ({"accumulate_grad_batches": 2}, "trainer.accumulate_grad_batches=2"),
    ({"gradient_clip_val": 1.0}, "trainer.gradient_clip_val=1.0"),
    ({"precision": "bf16-mixed"}, "trainer.precision=bf16-mixed"),
    ({"limit_train_batches": 3}, "trainer.limit_train_batches=3"),
])
def test_what_groups_cannot_do_falls_back_with_one_line(synthetic_root, one_thread, caplog, trainer_args, reason):
    with caplog.at_level(logging.INFO, logger="mnist_lit.speed.grouped"):
        model, trainer, logged = fit(synthetic_root, epochs=1, **trainer_args)
    lines = [r.getMessage() for r in caplog.records if r.name == "mnist_lit.speed.grouped"]
    assert len(lines) == 1 and reason in lines[0] and "standard path" in lines[0]
    assert not grouped(trainer) and trainer.global_step > 0
    assert any(name == "val/acc" for _, name, _ in logged)


def test_a_callback_acting_on_every_batch_takes_the_standard_path(synthetic_root, one_thread, caplog):
    class EveryBatch(pl.Callback):
        def __init__(self):
            self.calls = 0

        def on_train_batch_end(self, *args):
            self.calls += 1

    seen = EveryBatch()
    pl.seed_everything(0, verbose=False)
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[seen, GroupedSteps()])
    with caplog.at_level(logging.INFO, logger="mnist_lit.speed.grouped"):
        trainer.fit(MNISTClassifier(MLP(), partial(torch.optim.Adam, lr=1e-3)),
                    MNISTDataModule(str(synthetic_root), download=False, val_size=100))
    assert seen.calls == 16 and "EveryBatch" in caplog.text


def test_a_module_acting_on_every_step_takes_the_standard_path(synthetic_root, one_thread, caplog):
    class GradNorms(MNISTClassifier):
        def on_before_optimizer_step(self, optimizer):
            self.seen = getattr(self, "seen", 0) + 1

    pl.seed_everything(0, verbose=False)
    model = GradNorms(MLP(), partial(torch.optim.Adam, lr=1e-3))
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[GroupedSteps()])
    with caplog.at_level(logging.INFO, logger="mnist_lit.speed.grouped"):
        trainer.fit(model, MNISTDataModule(str(synthetic_root), download=False, val_size=100))
    assert model.seen == 16 and "GradNorms.on_before_optimizer_step" in caplog.text


def test_a_group_counted_in_the_module_metrics_leaves_what_its_steps_leave():
    from mnist_lit.speed.grouped import add_to_module_metrics

    # one by one, 1 + 2^-24 rounds back to 1 twice; the group's own sum (2^-23) added at once would not
    losses = torch.tensor([1.0, 2.0**-24, 2.0**-24])
    preds, targets = torch.tensor([3, 1, 4, 1, 5, 9]), torch.tensor([3, 1, 4, 2, 5, 6])
    stepwise, grouped = (MNISTClassifier(MLP(), partial(torch.optim.Adam, lr=1e-3)) for _ in range(2))
    for k, loss in enumerate(losses):  # as training_step counts them
        stepwise.train_loss.update(loss)
        stepwise.train_acc.update(preds[2 * k : 2 * k + 2], targets[2 * k : 2 * k + 2])
    add_to_module_metrics(grouped, losses[0], 1, preds[:2], targets[:2])  # a group of 1 step, then of 2
    add_to_module_metrics(grouped, losses[0] + losses[1] + losses[2], 3, preds[2:], targets[2:])
    assert stepwise.train_loss.compute() == torch.tensor(1.0) / 3  # the steps' sum: 1
    for metric in ("train_loss", "train_acc"):  # what a checkpoint keeps of them, bit for bit
        state = getattr(stepwise, metric).state_dict()
        for key, value in getattr(grouped, metric).state_dict().items():
            assert torch.equal(value, state[key]), (metric, key)
    assert grouped.train_metrics() == stepwise.train_metrics()


def test_step_groups_hold_the_same_batches(synthetic_root):
    dm = MNISTDataModule(str(synthetic_root), download=False, val_size=100, batch_size=32)
    dm.setup("fit")
    batches = dm.train_dataloader()
    groups = list(StepGroups(batches, 5))
    assert [len(g) for g in groups] == [5, 5, 5, 1] and StepGroups(batches, 5).steps_per_epoch == 16
    flat = [b for g in groups for b in g]
    for (x1, y1), (x2, y2) in zip(flat, batches, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    batches.resume_at(0, 7)  # a run resumed after 7 steps of epoch 0 goes on with the 8th batch
    resumed = [b for g in StepGroups(batches, 5) for b in g]
    assert len(resumed) == 9 and torch.equal(resumed[0][0], flat[7][0])


def test_capturable_optimizer_for_cuda_graphs_or_a_clear_refusal():
    net = MLP()
    adam = torch.optim.Adam(net.parameters(), lr=2e-3)
    make_capturable(adam, torch.device("cpu"), schedule=True)
    group = adam.param_groups[0]
    assert group["capturable"] is True and torch.is_tensor(group["lr"]) and group["lr"].item() == pytest.approx(2e-3)
    with pytest.raises(UserError, match="Adam"):  # SGD's learning rate cannot be a device tensor
        make_capturable(torch.optim.SGD(net.parameters(), lr=0.1), torch.device("cpu"), schedule=True)
    # a state resumed from the standard path's checkpoint keeps its step counts on the host: moved along
    resumed = torch.optim.Adam(net.parameters(), lr=2e-3)
    net(torch.zeros(1, 784)).sum().backward()
    resumed.step()
    make_capturable(resumed, torch.device("meta"), schedule=False)  # a device the test can tell apart
    assert {state["step"].device.type for state in resumed.state.values()} == {"meta"}


def test_fast_false_runs_lightnings_own_features(synthetic_root, tmp_path):
    proc = run_cli("mnist_lit.train", "fast=false", "trainer.accumulate_grad_batches=2", "trainer.gradient_clip_val=1.0",
                   "trainer.precision=bf16-mixed", "trainer.max_epochs=1", f"data.root={synthetic_root}",
                   f"hydra.run.dir={tmp_path}", *SYNTHETIC_OVERRIDES)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert '"status": "completed"' in (tmp_path / "metrics.json").read_text()
    assert "standard path" not in proc.stdout + proc.stderr  # fast=false: nothing to fall back from


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_steps_match_eager_on_gpu(synthetic_root):
    results = {}
    for fast in (False, True):
        pl.seed_everything(0, verbose=False)
        dm = MNISTDataModule(str(synthetic_root), download=False, val_size=100)
        model = MNISTClassifier(MLP(), partial(torch.optim.Adam, lr=1e-3, fused=True), ONECYCLE)
        grouped = GroupedSteps(fast, 4)
        trainer = pl.Trainer(max_epochs=2, accelerator="gpu", logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, num_sanity_val_steps=0, callbacks=[grouped])
        trainer.fit(model, dm)
        results[fast] = (params(model), trainer.callback_metrics, grouped)
    graphs = results[True][2].graphs  # groups of 4 steps: a graph for the full groups, one for the short last
    assert graphs is not None and len(graphs.graphs) == 2 and graphs.replays == 6
    torch.testing.assert_close(results[True][0], results[False][0], atol=1e-5, rtol=1e-4)
    for key in ("train/loss", "train/acc", "val/loss", "val/acc"):
        torch.testing.assert_close(results[True][1][key], results[False][1][key], atol=1e-5, rtol=0)


def test_staged_gpu_setup_is_refused_only_for_what_graphs_cannot_replay():
    # unsupported() on a 2-process or 16-bit GPU run names the setting (staged: no GPU here)
    from mnist_lit.speed.grouped import unsupported

    module = MNISTClassifier(MLP(), partial(torch.optim.Adam, lr=1e-3))
    trainer = SimpleNamespace(world_size=2, precision="32-true", accumulate_grad_batches=1, gradient_clip_val=None,
                              limit_train_batches=1.0, val_check_interval=1.0, max_steps=-1, fast_dev_run=False,
                              overfit_batches=0.0, callbacks=[], datamodule=object(),
                              reload_dataloaders_every_n_epochs=0)
    assert "2 processes" in unsupported(trainer, module)
    trainer.world_size, trainer.precision = 1, "16-mixed"
    assert "16-mixed" in unsupported(trainer, module)
    trainer.precision = "32-true"
    assert unsupported(trainer, module) is None


def test_fused_adam_is_unfused_only_for_clipping_under_mixed_precision(caplog):
    from conftest import compose

    from mnist_lit.speed.grouped import unfused_for_clipping

    cfg = compose("train")
    unfused_for_clipping(cfg)
    assert cfg.model.optimizer.fused is True  # the default: one kernel per update
    cfg = compose("train", "trainer.gradient_clip_val=1.0", "trainer.precision=bf16-mixed")
    with caplog.at_level(logging.INFO, logger="mnist_lit.speed.grouped"):
        unfused_for_clipping(cfg)
    assert cfg.model.optimizer.fused is False and "model.optimizer.fused=false" in caplog.text
