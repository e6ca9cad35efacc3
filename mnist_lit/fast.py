"""The speed layer (`fast=true`, the default): the training steps of mnist_lit/module.py, grouped.

Lightning's per-batch bookkeeping (hooks, loops, progress, logging) costs about as much as a whole optimizer
step of this small MLP. Here one Lightning batch is a group of `steps_per_execution` minibatches (Keras'
`steps_per_execution`), and each of them is one plain optimizer step: the module's own augment, forward and
training_loss, then backward, optimizer and scheduler steps. On a GPU the whole step is replayed as a CUDA
graph. Nothing a user sees changes: the same batches in the same order, the same parameters (bit-identical on
a CPU), the same metrics at the same optimizer steps, the same checkpoints, progress bar and signals.

What the grouped steps cannot do exactly as Lightning does it (mixed precision, gradient accumulation or
clipping, several devices, a callback that acts on every batch, ...) is not refused: the run takes
Lightning's standard path and says why in one log line. Lightning internals that the layer writes are in
mnist_lit/lightning_compat.py.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Checkpoint

from mnist_lit import lightning_compat as compat
from mnist_lit.callbacks import TrainingCurve
from mnist_lit.errors import UserError
from mnist_lit.module import MNISTClassifier

log = logging.getLogger(__name__)

# hooks Lightning calls around every batch or step: a callback using them would see one call per group
PER_STEP_HOOKS = ("on_train_batch_start", "on_train_batch_end", "on_before_backward", "on_after_backward",
                  "on_before_optimizer_step", "on_before_zero_grad")


class StepGroups:
    """The training loader's batches in lists of `size`: one Lightning batch is one such group.

    It has no length, so that Lightning counts nothing in groups; `steps_per_epoch` is the number of
    minibatches (the progress bar's total). The batches and their order are exactly those of `batches`.
    """

    def __init__(self, batches, size: int):
        self.batches, self.size = batches, size
        self.sampler, self.batch_sampler = batches, None  # Lightning calls sampler.set_epoch every epoch
        self.steps_per_epoch = len(batches)

    def resume_at(self, epoch: int, done: int) -> None:
        self.batches.resume_at(epoch, done)

    def __iter__(self):
        group = []
        for batch in self.batches:
            group.append(batch)
            if len(group) == self.size:
                yield group
                group = []
        if group:
            yield group


def unsupported(trainer: pl.Trainer, module: pl.LightningModule) -> str | None:
    """Why the grouped steps cannot train this run exactly as Lightning would, or None."""
    if not isinstance(module, MNISTClassifier) or type(module).training_step is not MNISTClassifier.training_step:
        return f"{type(module).__name__} has a training_step of its own"
    if not module.automatic_optimization:
        return "the module optimizes manually"
    checks = [
        (trainer.world_size > 1, f"{trainer.world_size} processes (trainer.strategy / devices)"),
        (str(trainer.precision) not in ("32-true", "32"), f"trainer.precision={trainer.precision}"),
        (trainer.accumulate_grad_batches != 1, f"trainer.accumulate_grad_batches={trainer.accumulate_grad_batches}"),
        (bool(trainer.gradient_clip_val), f"trainer.gradient_clip_val={trainer.gradient_clip_val}"),
        (trainer.limit_train_batches != 1.0, f"trainer.limit_train_batches={trainer.limit_train_batches}"),
        (trainer.val_check_interval != 1.0, f"trainer.val_check_interval={trainer.val_check_interval}"),
        (trainer.max_steps != -1, f"trainer.max_steps={trainer.max_steps}"),
        (bool(trainer.fast_dev_run), "trainer.fast_dev_run"),
        (bool(trainer.overfit_batches), f"trainer.overfit_batches={trainer.overfit_batches}"),
    ]
    for failed, what in checks:
        if failed:
            return what
    for cb in trainer.callbacks:
        if getattr(cb, "steps_in_groups", False) or isinstance(cb, TrainingCurve):
            continue
        if isinstance(cb, Checkpoint) and not compat.saves_within_epochs(cb):
            continue  # saves at epoch ends
        if any(getattr(type(cb), hook) is not getattr(pl.Callback, hook) for hook in PER_STEP_HOOKS):
            return f"callback {type(cb).__name__} acts on every batch"
    return None


class GroupedSteps(pl.Callback):
    """Trains each Lightning batch (a group of minibatches) as that many optimizer steps; see the module doc.

    Keeps the epoch's training sums (loss, correct, count) on the device: the same float32 additions that
    the module's torchmetrics make, so `train/loss` and `train/acc` come out bit-identical.
    """

    steps_in_groups = True

    def __init__(self, enabled: bool = True, steps_per_execution: int = 50):
        if steps_per_execution < 1:
            raise UserError(f"steps_per_execution={steps_per_execution} must be a positive integer (1: no grouping).")
        self.enabled, self.size = enabled, steps_per_execution
        self.active = False
        self.sums: dict[str, torch.Tensor] = {}
        self.saved: dict | None = None
        self.graph: GraphedStep | None = None

    # --- set-up --------------------------------------------------------------------------------------------

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or not self.enabled:
            return
        reason = unsupported(trainer, pl_module)
        if reason:
            log.info("fast=true: %s is not something grouped steps do exactly as Lightning does; training "
                     "takes Lightning's standard path (same results, slower).", reason)
            return
        self.active, self.trainer, self.module = True, trainer, pl_module
        self.curve = next((cb for cb in trainer.callbacks if isinstance(cb, TrainingCurve)), None)
        if self.curve is not None:
            trainer.callbacks.remove(self.curve)  # its points come from inside the groups (log_points)
        datamodule = trainer.datamodule
        make_batches = datamodule.train_dataloader
        datamodule.train_dataloader = lambda: StepGroups(make_batches(), self.size)
        configure = pl_module.configure_optimizers

        def configure_optimizers():
            # Lightning counts a fit's steps in batches, here groups: a schedule over the fit needs minibatches
            loader = make_batches()
            with compat.fit_length(trainer, len(loader) * trainer.max_epochs):
                return configure()

        pl_module.configure_optimizers = configure_optimizers
        pl_module.automatic_optimization = False  # the steps below are the optimization
        pl_module.training_step = self.training_step
        pl_module.train_metrics = self.train_metrics

    def on_train_start(self, trainer, pl_module) -> None:
        if not self.active:
            return
        self.optimizer = trainer.optimizers[0]
        configs = trainer.lr_scheduler_configs
        self.scheduler = configs[0].scheduler if configs and configs[0].interval == "step" else None
        device = pl_module.device
        # loss: float32 on the device; correct: int64 on the device; steps and examples: counted on the host
        self.sums = {"loss": torch.zeros((), device=device), "correct": torch.zeros((), dtype=torch.long,
                                                                                    device=device)}
        self.steps = self.count = 0
        if self.saved is not None:
            for key in self.sums:
                self.sums[key].copy_(self.saved[key])
            self.steps, self.count = int(self.saved["steps"]), int(self.saved["count"])
        self.sums_epoch = self.saved_epoch if self.saved is not None else trainer.current_epoch
        if device.type == "cuda":
            make_capturable(self.optimizer, device, schedule=self.scheduler is not None)
            self.graph = GraphedStep(self.counted_step)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if self.active and self.sums_epoch != trainer.current_epoch:  # not the epoch a resumed run goes on with
            for value in self.sums.values():
                value.zero_()
            self.steps = self.count = 0
            self.sums_epoch = trainer.current_epoch

    # --- the steps -----------------------------------------------------------------------------------------

    def step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One optimizer step on one minibatch, as the module's training_step and Lightning would do it;
        returns the (detached) logits."""
        module = self.module
        if module.augment is not None:
            x = module.augment(x)
        logits = module(x)
        loss = module.training_loss(logits, y, x)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.sums["loss"] += loss.detach()  # the float32 additions torchmetrics' MeanMetric makes, in order
        return logits.detach()

    def counted_step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        # inside a CUDA graph the count costs no launches: done per step
        self.sums["correct"] += (self.step(x, y).argmax(1) == y).sum()

    def training_step(self, batch: list[tuple[torch.Tensor, torch.Tensor]], batch_idx: int) -> None:
        trainer, every = self.trainer, self.trainer.log_every_n_steps
        step, points, outputs = trainer.global_step, [], []
        for i, (x, y) in enumerate(batch):
            if self.graph is not None:
                self.graph(x, y)
            else:
                outputs.append(self.step(x, y))
            if self.scheduler is not None:
                self.scheduler.step()
            step += 1
            self.steps, self.count = self.steps + 1, self.count + len(y)
            if every and step % every == 0:
                lr = self.optimizer.param_groups[0]["lr"]
                # a graph counts correct predictions per step; eager steps count them for the group below
                correct = self.sums["correct"].clone() if self.graph is not None else i
                points.append((step, self.sums["loss"].clone(), self.steps, correct, self.count,
                               lr.clone() if torch.is_tensor(lr) else lr))
        if outputs:
            # the group's correct predictions at once (counts add up exactly in any order)
            hits = torch.cat(outputs).argmax(1) == torch.cat([y for _, y in batch])
            ends = torch.tensor([len(y) for _, y in batch], device=hits.device).cumsum(0) - 1
            running = self.sums["correct"] + hits.cumsum(0)[ends]
            self.sums["correct"] = running[-1].clone()
            points = [(s, loss, n, running[i], count, lr) for s, loss, n, i, count, lr in points]
        compat.count_optimizer_steps(trainer, len(batch))
        if points and self.curve is not None:
            self.curve.log_points(trainer, [(s, *_means(loss, n, correct, count), lr)
                                            for s, loss, n, correct, count, lr in points])

    def train_metrics(self) -> dict[str, torch.Tensor]:
        loss, acc = _means(self.sums["loss"], self.steps, self.sums["correct"], self.count)
        return {"train/loss": loss, "train/acc": acc}

    # --- checkpoints ---------------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        if not self.active or not self.sums:
            return {}
        sums = {k: v.detach().cpu() for k, v in self.sums.items()} | {"steps": self.steps, "count": self.count}
        return {"epoch": self.sums_epoch, "sums": sums}

    def load_state_dict(self, state_dict: dict) -> None:
        if state_dict:
            self.saved, self.saved_epoch = state_dict["sums"], state_dict["epoch"]


def _means(loss_sum: torch.Tensor, steps: int, correct: torch.Tensor, count: int):
    # what torchmetrics' MeanMetric and micro-averaged accuracy compute from the same sums: float32 divisions
    mean_loss = loss_sum / torch.tensor(float(steps), device=loss_sum.device)
    return mean_loss, correct.float() / torch.tensor(float(count), device=correct.device)


def unfused_for_clipping(cfg) -> None:
    """`fused=True` Adam (one kernel per update) with gradient clipping under mixed precision is refused by
    Lightning; such a run gets the same optimizer unfused, and says so."""
    optimizer = cfg.model.optimizer
    if optimizer.get("fused") and cfg.trainer.get("gradient_clip_val") and "mixed" in str(
            cfg.trainer.get("precision", "")):
        log.info("model.optimizer.fused=false: Lightning clips gradients under %s precision only for "
                 "optimizers that are not fused.", cfg.trainer.precision)
        optimizer.fused = False


def make_capturable(optimizer: torch.optim.Optimizer, device: torch.device, schedule: bool) -> None:
    """Let a CUDA graph replay `optimizer.step()`: the step counters, and under a schedule the learning rate,
    become device tensors that the optimizer and the scheduler change in place."""
    for group in optimizer.param_groups:
        if "capturable" in group:  # optimizers with a step counter (Adam, AdamW)
            group["capturable"] = True
        if schedule:
            if "capturable" not in group:
                raise UserError(
                    f"fast=true on a GPU with a learning-rate schedule needs an optimizer that takes its learning "
                    f"rate as a device tensor (Adam, AdamW); {type(optimizer).__name__} does not. Use "
                    "torch.optim.Adam(W), model.scheduler=null, or fast=false."
                )
            group["lr"] = torch.tensor(float(group["lr"]), device=device)


class GraphedStep:
    """Runs ``step(x, y)``: eagerly for the first ``warmup`` calls, then as a replay of a CUDA graph of it.

    At batch 32 this MLP's step is a few dozen tiny kernels, and launching them from Python costs far more
    than running them; a replay costs two input copies and one launch. ``step`` must do device work only (no
    reads back to the host). The graph is captured for the batch shape it first sees after the warmup; other
    shapes (an epoch's short last batch) run eagerly. Warmup and capture calls are real training steps.
    """

    def __init__(self, step: Callable[[torch.Tensor, torch.Tensor], None], warmup: int = 3):
        self.step, self.warmup = step, warmup
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.inputs: tuple[torch.Tensor, torch.Tensor] | None = None

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.calls += 1
        if self.inputs is not None and x.shape == self.inputs[0].shape and y.shape == self.inputs[1].shape:
            self.inputs[0].copy_(x)
            self.inputs[1].copy_(y)
            self.graph.replay()
        elif self.inputs is not None:
            self.step(x, y)
        elif self.calls <= self.warmup:
            # before a capture, the kernels' lazy set-up (cuBLAS workspaces, optimizer state) must have run
            # once on a side stream, as torch.cuda.graph's documentation does it
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self.step(x, y)
            torch.cuda.current_stream().wait_stream(side)
        else:
            self.inputs = (x.clone(), y.clone())
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.step(*self.inputs)
            self.graph.replay()  # a capture records the step without running it
