"""The speed paths keep the numerics: compiled vs eager step, fused Adam, step grouping."""

from functools import partial
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from conftest import SYNTHETIC_OVERRIDES, run_cli

from mnist_lit.data import MNISTDataModule
from mnist_lit.errors import UserError
from mnist_lit.graphed_step import GraphedStep
from mnist_lit.model import MLP
from mnist_lit.module import MNISTClassifier


def fit(root, *, compile=False, fused=True, steps_per_execution=4, batches=3, precision="32-true",
        accelerator="cpu", epochs=1, scheduler=None):
    pl.seed_everything(0, verbose=False)
    dm = MNISTDataModule(str(root), download=False, val_size=100, steps_per_execution=steps_per_execution)
    model = MNISTClassifier(MLP(), partial(torch.optim.Adam, lr=1e-3, fused=fused), scheduler, compile=compile)
    trainer = pl.Trainer(
        max_epochs=epochs, accelerator=accelerator, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, limit_train_batches=batches, precision=precision,
    )
    trainer.fit(model, dm)
    return model, trainer


def params(model):
    return torch.cat([p.detach().flatten() for p in model.net.parameters()])


def test_step_grouping_does_not_change_training(synthetic_root):
    grouped, t1 = fit(synthetic_root, steps_per_execution=4, batches=3)
    single, t2 = fit(synthetic_root, steps_per_execution=1, batches=12)
    assert t1.global_step == t2.global_step == 12
    assert torch.equal(params(grouped), params(single))
    assert t1.callback_metrics["train/loss"] == t2.callback_metrics["train/loss"]


def test_fused_adam_matches_foreach(synthetic_root):
    fused, _ = fit(synthetic_root, fused=True)
    foreach, _ = fit(synthetic_root, fused=False)
    torch.testing.assert_close(params(fused), params(foreach), atol=1e-5, rtol=1e-4)


def test_compiled_step_matches_eager_on_cpu(synthetic_root):
    eager, t_eager = fit(synthetic_root, compile=False)
    compiled, t_compiled = fit(synthetic_root, compile=True)
    assert t_compiled.global_step == t_eager.global_step == 12
    torch.testing.assert_close(params(compiled), params(eager), atol=1e-5, rtol=1e-4)
    for key in ("train/loss", "train/acc", "val/loss", "val/acc"):
        torch.testing.assert_close(t_compiled.callback_metrics[key], t_eager.callback_metrics[key], atol=1e-5, rtol=0)


def test_fp16_mixed_is_refused(monkeypatch):
    # on a CPU Lightning itself turns 16-mixed into bf16-mixed, so the GPU case is staged
    model = MNISTClassifier(MLP(), partial(torch.optim.Adam, lr=1e-3))
    monkeypatch.setattr(MNISTClassifier, "trainer", property(lambda self: SimpleNamespace(precision="16-mixed")))
    with pytest.raises(UserError, match="bf16-mixed"):
        model.setup("fit")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("compile", ["false", "true"])
def test_gpu_training_runs(synthetic_root, tmp_path, compile):
    proc = run_cli("mnist_lit.train", "trainer=gpu", f"model.compile={compile}", "trainer.max_epochs=2",
                   f"data.root={synthetic_root}", f"hydra.run.dir={tmp_path}",
                   *[o for o in SYNTHETIC_OVERRIDES if not o.startswith("trainer=")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "cuda" in (tmp_path / "metrics.json").read_text()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_step_matches_eager_on_gpu(synthetic_root):
    # 2 epochs of 16 steps (15 of batch 32, one of 20): warmup, capture, replays, the short batch run eagerly,
    # and a one-cycle schedule that changes the learning rate between replays
    schedule = partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=3e-3, total_steps=32, cycle_momentum=False)
    run = partial(fit, synthetic_root, batches=None, accelerator="gpu", epochs=2, scheduler=schedule)
    eager, t_eager = run(compile=False)
    graphed, t_graphed = run(compile=True)
    assert isinstance(graphed.step, GraphedStep) and graphed.step.graph is not None and graphed.step.calls == 32
    assert t_graphed.global_step == t_eager.global_step == 32
    torch.testing.assert_close(params(graphed), params(eager), atol=1e-5, rtol=1e-4)
    for key in ("train/loss", "train/acc", "val/loss", "val/acc"):
        torch.testing.assert_close(t_graphed.callback_metrics[key], t_eager.callback_metrics[key], atol=1e-5, rtol=0)


def test_graphed_step_prepares_the_optimizer_or_refuses(monkeypatch):
    # what setup and on_train_start do on a GPU before the capture, staged on the CPU
    gpu = SimpleNamespace(root_device=torch.device("cuda"))
    trainer = SimpleNamespace(precision="32-true", world_size=1, strategy=gpu)
    monkeypatch.setattr(MNISTClassifier, "trainer", property(lambda self: trainer))
    model = MNISTClassifier(MLP(), partial(torch.optim.Adam, lr=1e-3), compile=True)
    model.setup("fit")
    adam = torch.optim.Adam(model.parameters(), lr=2e-3, fused=True)
    model._make_optimizer_capturable(adam, schedule=True)
    group = adam.param_groups[0]
    assert group["capturable"] is True and torch.is_tensor(group["lr"]) and group["lr"].item() == pytest.approx(2e-3)
    with pytest.raises(UserError, match="Adam"):  # SGD's learning rate cannot be a device tensor
        model._make_optimizer_capturable(torch.optim.SGD(model.parameters(), lr=0.1), schedule=True)
    trainer.precision = "bf16-mixed"
    with pytest.raises(UserError, match="trainer.precision=32"):
        model.setup("fit")
    trainer.precision, trainer.world_size = "32-true", 2
    with pytest.raises(UserError, match="one device"):
        model.setup("fit")
