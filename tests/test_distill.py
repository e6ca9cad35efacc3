"""Knowledge distillation (model=distill): a frozen teacher run, the student's loss, the student's run."""

from __future__ import annotations

import json
from functools import partial

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from conftest import SYNTHETIC_OVERRIDES, compose, run_cli
from torch.overrides import TorchFunctionMode

from mnist_lit.augment import RandomAffine
from mnist_lit.data import MNISTDataModule
from mnist_lit.distill import DistillationClassifier
from mnist_lit.errors import UserError
from mnist_lit.model import MLP
from mnist_lit.runs.checkpoint import load_run
from mnist_lit.speed.grouped import GroupedSteps


def student(teacher, **kwargs) -> DistillationClassifier:
    return DistillationClassifier(MLP(), partial(torch.optim.Adam, lr=1e-3), teacher=str(teacher),
                                   load_teacher=load_run, **kwargs)


def is_frozen(net: torch.nn.Module) -> bool:
    return not any(m.training for m in net.modules()) and not any(p.requires_grad for p in net.parameters())


class Watch(pl.Callback):
    """Records, at each training epoch's start and end (after its validation), whether the student trains."""

    def __init__(self):
        self.states = []

    def on_train_epoch_start(self, trainer, module):
        self.states.append(("start", trainer.current_epoch, module.net.training))

    def on_train_epoch_end(self, trainer, module):
        self.states.append(("end", trainer.current_epoch, module.net.training))


def fit(model, root, *callbacks, epochs=2, normalize=False, fast=False):
    pl.seed_everything(0, verbose=False)
    dm = MNISTDataModule(str(root), download=False, val_size=100, batch_size=32, normalize=normalize)
    trainer = pl.Trainer(
        max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=1,
        callbacks=[*callbacks, GroupedSteps(fast, 4)],
    )
    trainer.fit(model, dm)
    return trainer


@pytest.mark.parametrize("fast", [False, True], ids=["lightning", "grouped"])
def test_teacher_stays_frozen_and_sees_the_students_augmented_batch(
    fast, synthetic_cnn_run, synthetic_root, tmp_path, one_thread
):
    model = student(synthetic_cnn_run, augment=RandomAffine(degrees=10, translate=2))
    seen = {"teacher": [], "student": [], "frozen": []}

    def teacher_called(module, args):
        seen["teacher"].append(args[0].clone())
        seen["frozen"].append(is_frozen(module))

    model.teacher.register_forward_pre_hook(teacher_called)
    model.net.register_forward_pre_hook(
        lambda m, args: seen["student"].append(args[0].clone()) if m.training else None
    )
    watch = Watch()
    trainer = fit(model, synthetic_root, watch, fast=fast)

    # the grouped steps ran: Lightning saw a batch per group of steps
    assert (trainer.fit_loop.epoch_loop.batch_progress.total.completed < trainer.global_step) is fast
    # Lightning switched the module to train mode at fit start and after each validation; never the teacher
    assert watch.states == [(when, epoch, True) for epoch in (0, 1) for when in ("start", "end")]
    assert len(seen["frozen"]) == 32 and all(seen["frozen"]) and is_frozen(model.teacher)
    # one teacher pass per optimizer step (500 examples in batches of 32, 2 epochs), on the student's input
    assert len(seen["teacher"]) == len(seen["student"]) == trainer.global_step == 32
    assert all(torch.equal(t, s) for t, s in zip(seen["teacher"], seen["student"], strict=True))
    pixels = seen["student"][0] * 255  # augmentation interpolates: no longer whole multiples of 1/255
    assert ((pixels - pixels.round()).abs() > 1e-3).any()

    # only the student is trained, counted and saved
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 101_770
    optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert optimized == {id(p) for p in model.net.parameters()}
    trainer.save_checkpoint(tmp_path / "student.ckpt", weights_only=True)
    state = torch.load(tmp_path / "student.ckpt", weights_only=True)["state_dict"]
    assert {k for k in state if k.startswith("net.")} == {f"net.{k}" for k in MLP().state_dict()}
    assert not any("teacher" in k for k in state), sorted(state)


def test_the_loss_mixes_cross_entropy_and_the_softened_teacher(synthetic_cnn_run, one_thread):
    torch.manual_seed(0)
    x, y = torch.rand(16, 784), torch.randint(0, 10, (16,))
    logits = torch.randn(16, 10, requires_grad=True)

    plain = student(synthetic_cnn_run, distill_weight=0.0, label_smoothing=0.1)
    plain.teacher.forward = lambda x: pytest.fail("the teacher ran with distill_weight=0")
    assert torch.equal(plain.training_loss(logits, y, x), F.cross_entropy(logits, y, label_smoothing=0.1))

    model = student(synthetic_cnn_run, distill_weight=0.75, temperature=3.0)
    with torch.no_grad():
        teacher = model.teacher(x)
    p_teacher = F.softmax(teacher / 3, 1)
    kl = (p_teacher * (p_teacher.log() - F.log_softmax(logits / 3, 1))).sum(1).mean()
    loss = model.training_loss(logits, y, x)
    torch.testing.assert_close(loss, 0.25 * F.cross_entropy(logits, y) + 0.75 * 9 * kl)
    loss.backward()
    assert logits.grad is not None and all(p.grad is None for p in model.teacher.parameters())
    # a student that already agrees with the teacher gets no soft loss, only the labels' share
    same = teacher.clone().requires_grad_(True)
    torch.testing.assert_close(model.training_loss(same, y, x), 0.25 * F.cross_entropy(same, y))


def test_student_run_loads_in_predict_and_export(synthetic_cnn_run, synthetic_root, tmp_path_factory):
    from mnist_lit.export import export
    from mnist_lit.predict import predict
    from mnist_lit.runs.checkpoint import load_run

    run_dir = tmp_path_factory.mktemp("distill") / "student"
    proc = run_cli(
        "mnist_lit.train", f"hydra.run.dir={run_dir}", f"data.root={synthetic_root}", "model=distill",
        f"model.teacher={synthetic_cnn_run}", "model/augment=translate", "trainer.max_epochs=2", "seed=0",
        "threads=1", *SYNTHETIC_OVERRIDES,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["trainable_params"] == 101_770
    assert metrics["test_acc"] > 0.5
    best = json.loads((synthetic_cnn_run / "metrics.json").read_text())["best_checkpoint"]
    assert f"teacher: CNN from {best} (" in (run_dir / "train.log").read_text()

    run = load_run(run_dir)  # the student alone: an MLP run like any other
    assert isinstance(run.net, MLP) and sum(p.numel() for p in run.net.parameters()) == 101_770
    results = predict(compose("predict", f"run_dir={run_dir}", "index=[0,1,2]"))
    assert all(r.error is None and r.digit is not None for r in results)
    check = export(compose("export", f"run_dir={run_dir}", "format=torchscript", "check_digits=100"))
    assert check["ok"] and check["same_prediction"] == 100


def test_bad_teacher_and_settings(synthetic_cnn_run, synthetic_root, tmp_path, one_thread):
    from mnist_lit.config.schema import validate

    with pytest.raises(UserError, match=f"model.teacher={tmp_path / 'nope'}: run_dir=.*: no such folder"):
        student(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="model.teacher=.*is not a training run"):
        student(tmp_path / "empty")
    with pytest.raises(UserError, match="model.temperature=0.0 must be > 0"):
        student(synthetic_cnn_run, temperature=0.0)
    with pytest.raises(UserError, match=r"model.distill_weight=1.5 must be in \[0, 1\]"):
        student(synthetic_cnn_run, distill_weight=1.5)
    with pytest.raises(UserError, match="model.teacher has no value: give it on the command line"):
        validate(compose("train", "model=distill", "threads=1"))
    with pytest.raises(UserError, match="model.teacher was trained with data.normalize=False, this run has "
                                        "data.normalize=True"):
        fit(student(synthetic_cnn_run), synthetic_root, epochs=1, normalize=True)


class NoHostReads(TorchFunctionMode):
    """Raises on every call that reads a tensor's values back to the host (on a GPU: waits for it)."""

    READS = {"item", "__bool__", "__float__", "__int__", "__index__", "tolist", "numpy", "cpu", "nonzero",
             "masked_select", "unique"}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in self.READS:
            raise AssertionError(f"host read: {func.__name__}")
        return func(*args, **(kwargs or {}))


def test_teacher_and_distillation_loss_read_nothing_back_to_the_host(synthetic_cnn_run, one_thread):
    # the CPU stand-in for the GPU test below: no call in the step could make the host wait for a device
    model = student(synthetic_cnn_run, augment=RandomAffine(degrees=10, translate=2))
    x, y = torch.rand(64, 784), torch.randint(0, 10, (64,))
    with NoHostReads():
        x = model.augment(x)
        loss = model.training_loss(model(x), y, x)
        loss.backward()
    assert torch.isfinite(loss) and model.net[0].weight.grad is not None
    with pytest.raises(AssertionError, match="host read: item"), NoHostReads():
        loss.item()  # the trap itself works


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_teacher_forward_does_not_sync_the_gpu(synthetic_cnn_run):
    model = student(synthetic_cnn_run).cuda()
    model.teacher.cuda()
    x, y = torch.rand(64, 784, device="cuda"), torch.randint(0, 10, (64,), device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any host-device sync raises
    try:
        loss = model.training_loss(model(x), y, x)
        loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(loss).item()
