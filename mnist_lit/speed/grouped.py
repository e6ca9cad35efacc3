"""The speed layer (`fast=true`, the default): the training steps of mnist_lit/module.py, grouped.

Lightning's per-batch bookkeeping (hooks, loops, progress, logging) costs about as much as a whole optimizer
step of this small MLP. Here one Lightning batch is a group of `steps_per_execution` minibatches (Keras'
`steps_per_execution`), and each of them is one plain optimizer step that calls the module's own parts: its
augment, forward and training_loss, then backward, optimizer and scheduler steps. The group's losses and
predictions go into the module's train_loss and train_acc through their update(), so the module logs,
checkpoints and resets them as after its own training_step. On a GPU the whole group is replayed as one CUDA
graph. Nothing a user sees changes: the same batches in the same order, the same parameters (bit-identical on
a CPU), the same metrics at the same optimizer steps, the same checkpoints, progress bar and signals.

The layer replaces no method of the module or the datamodule: it groups the batches of the datamodule's
train_dataloader(), and Lightning's loop hands each group to it instead of to the module's training_step
(mnist_lit/lightning_compat.py, with every other Lightning internal the layer writes). For the fit the
module optimizes manually (`automatic_optimization`, Lightning's switch for it): Lightning then leaves the
optimizer and the scheduler to the layer's steps.

What the grouped steps cannot do exactly as Lightning does it (mixed precision, gradient accumulation or
clipping, several devices, a callback that acts on every batch, ...) is not refused: the run takes
Lightning's standard path and says why in one log line.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Callable

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Checkpoint

from mnist_lit import lightning_compat as compat
from mnist_lit.errors import UserError
from mnist_lit.module import MNISTClassifier
from mnist_lit.reporting.callbacks import HostCopy, TrainingCurve

log = logging.getLogger(__name__)

# hooks Lightning calls around every batch or step: a callback using them would see one call per group
PER_STEP_HOOKS = ("on_train_batch_start", "on_train_batch_end", "on_before_backward", "on_after_backward",
                  "on_before_optimizer_step", "on_before_zero_grad")


# the parts of an optimizer step that Lightning lets a module override: the grouped steps call none of them
STEP_PARTS = ("backward", "optimizer_step", "optimizer_zero_grad", "lr_scheduler_step",
              "configure_gradient_clipping")


class StepGroups:
    """The training loader's batches in lists of `size`: one Lightning batch is one such group.

    It has no length, so that Lightning counts nothing in groups; `steps_per_epoch` is the number of
    minibatches (the progress bar's total). The batches and their order are exactly those of `batches`.
    """

    def __init__(self, batches, size: int):
        self.batches, self.size = batches, size
        # Lightning calls set_epoch on a loader's sampler every epoch: the batches' (TensorBatches: itself)
        self.sampler = getattr(batches, "sampler", None)
        self.batch_sampler = getattr(batches, "batch_sampler", None)
        self.steps_per_epoch = len(batches)

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
    for hook in (*PER_STEP_HOOKS, *STEP_PARTS):
        if getattr(type(module), hook) is not getattr(MNISTClassifier, hook):
            return f"{type(module).__name__}.{hook}, which Lightning calls at every step"
    if not module.automatic_optimization:
        return "the module optimizes manually"
    checks = [
        (trainer.datamodule is None, "a training loader given to fit() rather than a datamodule"),
        (bool(trainer.reload_dataloaders_every_n_epochs),
         f"trainer.reload_dataloaders_every_n_epochs={trainer.reload_dataloaders_every_n_epochs}"),
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


def unsupported_schedule(configs) -> str | None:
    """Why the learning-rate schedulers Lightning set up from configure_optimizers' result
    (trainer.lr_scheduler_configs) are not one scheduler stepped after every optimizer step, as the grouped
    steps step it, or None."""
    if len(configs) > 1:
        return f"{len(configs)} learning-rate schedulers"
    for config in configs:
        if config.reduce_on_plateau:
            return "a learning-rate scheduler that watches a metric (ReduceLROnPlateau)"
        if config.interval != "step":
            return "a learning-rate scheduler stepped once an epoch (interval 'epoch')"
        if config.frequency != 1:
            return f"a learning-rate scheduler stepped every {config.frequency} steps (frequency)"
    return None


def _fall_back(reason: str) -> None:
    from lightning.pytorch.utilities import rank_zero_only

    if rank_zero_only.rank == 0:  # once, not once per DDP process
        log.info("fast=true: %s is not something grouped steps do exactly as Lightning does; training takes "
                 "Lightning's standard path (the numbers grouped steps would give, more slowly).", reason)


class GroupedSteps(pl.Callback):
    """Trains each Lightning batch (a group of minibatches) as that many optimizer steps; see the module doc.

    Keeps the epoch's training sums (loss, correct, count) on the device, as the module's torchmetrics add
    them up, for the running curve's points inside a group; after each group the module's metrics hold them.
    """

    steps_in_groups = True

    def __init__(self, enabled: bool = True, steps_per_execution: int = 50):
        self.enabled, self.size = enabled, steps_per_execution
        self.active = False
        self.grouped = False  # whether it trained (active only during a fit)
        self.sums: dict[str, torch.Tensor] = {}
        self.graphs: CapturedGroups | None = None
        self.points = None

    # --- set-up --------------------------------------------------------------------------------------------

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # after configure_optimizers (the schedule is known), before Lightning loads the training batches
        if not self.enabled:
            return
        reason = unsupported(trainer, pl_module) or unsupported_schedule(trainer.lr_scheduler_configs)
        if reason:
            _fall_back(reason)
            return
        self.active, self.trainer, self.module = True, trainer, pl_module
        self.curve = next((cb for cb in trainer.callbacks if isinstance(cb, TrainingCurve)), None)
        compat.use_training_loader(trainer, StepGroups(trainer.datamodule.train_dataloader(), self.size))
        compat.use_training_step(trainer, self.training_step)
        pl_module.automatic_optimization = False  # the steps below are the optimization

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit":
            self.hand_back()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self.log_points()
        self.hand_back()  # Lightning calls no teardown after an exception

    def hand_back(self) -> None:
        """Leave the trainer and the module as they were: another fit or a test sees no trace of this one."""
        if self.active:
            self.active = False
            compat.use_training_step(self.trainer, None)
            self.module.automatic_optimization = True

    def on_train_start(self, trainer, pl_module) -> None:
        if not self.active:
            return
        self.grouped = True
        self.optimizer = trainer.optimizers[0]
        configs = trainer.lr_scheduler_configs
        self.scheduler = configs[0].scheduler if configs else None
        # a run resumed mid-epoch goes on from the sums its checkpoint holds in the module's metrics
        # (Lightning then calls no on_train_epoch_start before the epoch's remaining batches)
        self.sums, self.steps, self.count = module_sums(pl_module)
        self.epoch_steps = trainer.train_dataloader.steps_per_epoch
        self.host_lrs = [float(group["lr"]) for group in self.optimizer.param_groups]
        graph_type = graphs_for(pl_module.device)
        if graph_type is not None:
            make_capturable(self.optimizer, pl_module.device, schedule=self.scheduler is not None)
            self.graphs = CapturedGroups(self.train_group, graph_type)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if self.active:
            sums, self.steps, self.count = module_sums(pl_module)
            for name, value in sums.items():
                self.sums[name].copy_(value)  # in place: the CUDA graphs captured these tensors

    # --- the steps -----------------------------------------------------------------------------------------

    def step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step on one minibatch, as the module's training_step and Lightning would do it;
        returns the (detached) logits and loss."""
        module = self.module
        if module.augment is not None:
            x = module.augment(x)
        logits = module(x)
        loss = module.training_loss(logits, y, x)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return logits.detach(), loss.detach()

    def train_group(self, batches, lrs, ends: torch.Tensor, loss_trace: torch.Tensor,
                    correct_trace: torch.Tensor, preds: torch.Tensor, targets: torch.Tensor) -> None:
        """A group's optimizer steps, device work only: a CUDA graph can replay it.

        `lrs[k]` holds each parameter group's learning rate for step k, row n the one after the group (None:
        no scheduler). The traces get the epoch's sums after each step: `loss_trace[k + 1]` (the float32
        additions torchmetrics' MeanMetric makes, in order) and `correct_trace[k]`; `ends` indexes each
        step's last example in the group. `preds` and `targets` get the group's predicted and true labels.
        """
        loss_trace[0].copy_(self.sums["loss"])
        outputs = []
        for k, (x, y) in enumerate(batches):
            if lrs is not None:
                self.set_lrs(lrs[k])
            logits, loss = self.step(x, y)
            torch.add(loss_trace[k], loss, out=loss_trace[k + 1])
            outputs.append(logits)
        if lrs is not None:
            self.set_lrs(lrs[len(batches)])
        # the group's correct predictions at once (counts add up exactly in any order)
        torch.argmax(torch.cat(outputs), 1, out=preds)
        torch.cat([y for _, y in batches], out=targets)
        correct_trace.copy_(self.sums["correct"] + (preds == targets).cumsum(0)[ends])
        self.sums["loss"].copy_(loss_trace[-1])
        self.sums["correct"].copy_(correct_trace[-1])

    def set_lrs(self, row) -> None:
        for group, lr in zip(self.optimizer.param_groups, row, strict=True):
            if torch.is_tensor(group["lr"]):
                group["lr"].copy_(lr)  # on a GPU (make_capturable): a device tensor the graph reads
            else:
                group["lr"] = lr

    def training_step(self, batch: list[tuple[torch.Tensor, torch.Tensor]], batch_idx: int) -> None:
        trainer, n = self.trainer, len(batch)
        lrs = self.planned_lrs(n) if self.scheduler is not None else None
        if self.graphs is not None:
            traces = self.graphs(batch, lrs)
        else:
            traces = new_traces(batch)
            self.train_group(batch, lrs, group_ends(batch), *traces)
        loss_trace, correct_trace, preds, targets = traces
        every, first = trainer.log_every_n_steps, trainer.global_step
        points = []
        for k, (_, y) in enumerate(batch):
            self.steps, self.count = self.steps + 1, self.count + len(y)
            if every and (first + k + 1) % every == 0:
                lr = self.optimizer.param_groups[0]["lr"]
                if lrs is not None:  # the one after step k, as the optimizer holds it (on a GPU: float32)
                    lr = torch.tensor(lrs[k + 1][0], dtype=lr.dtype) if torch.is_tensor(lr) else lrs[k + 1][0]
                points.append((first + k + 1, *_means(loss_trace[k + 1].clone(), self.steps,
                                                      correct_trace[k].clone(), self.count), lr))
        add_to_module_metrics(self.module, self.sums["loss"], self.steps, preds, targets)
        compat.count_optimizer_steps(trainer, n)
        self.log_points()
        if self.curve is not None:
            # the group's points are logged here: the curve's own per-batch point at the group's end would
            # come twice (and on a GPU read its values before the next group is launched)
            self.curve.logged_elsewhere(trainer.global_step)
            if points:
                # logged at the next group (or before anything else is logged): reading now would make the
                # host wait for this group's steps on a GPU, and launch the next group only then
                values = torch.stack([torch.stack([loss, acc]) for _, loss, acc, _ in points])
                self.points = [(step, lr) for step, _, _, lr in points], HostCopy(values)

    def log_points(self, *_) -> None:
        """Log the running-curve points of the last group (see training_step)."""
        if self.points is not None:
            (steps, copy), self.points = self.points, None
            values = copy.read()
            self.curve.log_points(self.trainer, [(step, loss, acc, lr) for (step, lr), (loss, acc)
                                                 in zip(steps, values, strict=True)])

    on_validation_start = on_train_epoch_end = on_train_end = log_points

    def planned_lrs(self, n: int) -> list[list[float]]:
        """Each parameter group's learning rate for the next n steps and after them (n + 1 rows): the
        scheduler stepped n times on the host, with plain floats, as the steps would step it."""
        groups = self.optimizer.param_groups
        held = [group["lr"] for group in groups]
        for group, lr in zip(groups, self.host_lrs, strict=True):
            group["lr"] = lr  # a device tensor would take a write (a kernel) per scheduler step
        rows = []
        with warnings.catch_warnings():  # the steps it plans for come after it here
            warnings.filterwarnings("ignore", re.escape("Detected call of `lr_scheduler.step()` before"))
            for _ in range(n):
                rows.append([group["lr"] for group in groups])
                self.scheduler.step()
        rows.append([group["lr"] for group in groups])
        self.host_lrs = rows[-1]
        for group, lr in zip(groups, held, strict=True):
            group["lr"] = lr
        return rows

    # --- checkpoints ---------------------------------------------------------------------------------------

    # A checkpoint resumes on either path (fast=true, fast=false or a fallback): it holds what fast=false's
    # would: the step count where Lightning's standard path counts it (the epoch's sums are in the module's
    # metrics already).

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        compat.steps_in_both_counters(checkpoint)
        if self.active:
            compat.batches_as_steps(checkpoint, self.steps)

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        compat.steps_in_both_counters(checkpoint)


def module_sums(module: MNISTClassifier) -> tuple[dict[str, torch.Tensor], int, int]:
    """The epoch's training sums so far in the module's train_loss (MeanMetric) and train_acc (micro
    MulticlassAccuracy), read through torchmetrics' `metric_state`: the loss sum and the correct predictions
    (new tensors on the device), the steps and the examples they count."""
    loss, acc = module.train_loss.metric_state, module.train_acc.metric_state
    correct = acc["tp"].sum()
    return ({"loss": loss["mean_value"].clone(), "correct": correct}, int(loss["weight"]),
            int(correct + acc["fn"].sum()))


def add_to_module_metrics(module: MNISTClassifier, loss_sum: torch.Tensor, steps: int, preds: torch.Tensor,
                          targets: torch.Tensor) -> None:
    """Count a group's steps in the module's train_loss and train_acc through their update(), leaving the
    state its training_step leaves: `loss_sum` is the epoch's loss sum after them (added one step at a time)
    over `steps` steps so far, `preds` and `targets` the group's predicted and true labels."""
    # MeanMetric adds a tensor of losses as one sum, which rounds otherwise than the step-by-step additions
    # of the module's training_step: it gets the epoch anew, as its sum and zeros for the other steps
    module.train_loss.reset()
    module.train_loss.update(F.pad(loss_sum.reshape(1), (0, steps - 1)))
    module.train_acc.update(preds, targets)


def _means(loss_sum: torch.Tensor, steps: int, correct: torch.Tensor, count: int):
    # what torchmetrics' MeanMetric and micro-averaged accuracy compute from the same sums: float32 divisions
    # (by a tensor: CUDA divides by a Python number by multiplying with its reciprocal)
    return loss_sum / _tensor(steps, loss_sum), correct.float() / _tensor(count, correct)


def _tensor(value: int, like: torch.Tensor) -> torch.Tensor:
    # on a GPU through pinned memory: a plain copy to the device would wait for the steps queued there
    host = torch.tensor(float(value))
    return host.pin_memory().to(like.device, non_blocking=True) if like.is_cuda else host


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
            for param in group["params"]:
                state = optimizer.state.get(param, {})
                if torch.is_tensor(state.get("step")):  # resumed from the standard path's state: on the host
                    state["step"] = state["step"].to(device=device, dtype=torch.float32)
        if schedule:
            if "capturable" not in group:
                raise UserError(
                    f"fast=true on a GPU with a learning-rate schedule needs an optimizer that takes its learning "
                    f"rate as a device tensor (Adam, AdamW); {type(optimizer).__name__} does not. Use "
                    "torch.optim.Adam(W), model.scheduler=null, or fast=false."
                )
            group["lr"] = torch.tensor(float(group["lr"]), device=device)


def group_ends(batches) -> torch.Tensor:
    """The index of each minibatch's last example in the group's concatenation."""
    sizes = torch.tensor([len(y) for _, y in batches], device=batches[0][1].device)
    return sizes.cumsum(0) - 1


def new_traces(batches) -> tuple[torch.Tensor, ...]:
    """Where train_group leaves a group's running sums, loss (n + 1 steps, float32) and correct (n, int64),
    and its predicted and true labels (int64, one per example)."""
    device, n, examples = batches[0][1].device, len(batches), sum(len(y) for _, y in batches)
    return (torch.empty(n + 1, device=device), torch.empty(n, dtype=torch.long, device=device),
            torch.empty(examples, dtype=torch.long, device=device),
            torch.empty(examples, dtype=torch.long, device=device))


def lr_table(lrs: list[list[float]] | None, device: torch.device) -> torch.Tensor | None:
    """planned_lrs' rows as the float32 values the optimizer's learning-rate tensors hold, on `device`."""
    return None if lrs is None else torch.tensor(lrs, dtype=torch.float32).to(device)


def graphs_for(device: torch.device):
    """What replays groups of steps on `device`: CUDA graphs on a GPU, nothing (eager steps) on a CPU."""
    return CudaGraph if device.type == "cuda" else None


class CudaGraph:
    """torch.cuda.CUDAGraph, as CapturedGroups uses it (tests put a replay on the CPU in its place)."""

    def __init__(self):
        self.graph = torch.cuda.CUDAGraph()

    @staticmethod
    def warm_up(run: Callable[[], None]) -> None:
        # before a capture, the kernels' lazy set-up (cuBLAS workspaces, optimizer state) must have run once
        # on a side stream, as torch.cuda.graph's documentation does it
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            run()
        torch.cuda.current_stream().wait_stream(side)

    def capture(self, run: Callable[[], None]) -> None:
        with torch.cuda.graph(self.graph):
            run()  # recorded, not run

    def replay(self) -> None:
        self.graph.replay()


class CapturedGroups:
    """Trains a group of steps as one CUDA graph: two input copies and one launch for the whole group.

    At batch 32 this MLP's step is a few dozen tiny kernels, and launching them from Python costs more
    than running them. A graph is captured for each shape of group (its minibatches' sizes) the second time
    it comes: the tutorial's 50 x 32, or an epoch's last group with its short batch. The first time runs
    eagerly: the kernels' lazy set-up, and shapes that never come back (a resumed epoch's first group).
    Warm-up and capture are real training steps. `run(batches, lrs, ends, *new_traces(batches))` does
    device work only.
    """

    MOST = 4  # shapes captured; others run eagerly

    def __init__(self, run: Callable, graph_type=CudaGraph):
        self.run, self.graph_type = run, graph_type
        self.seen: set[tuple[int, ...]] = set()
        self.graphs: dict[tuple[int, ...], tuple] = {}
        self.replays = 0

    def __call__(self, batches, lrs: list[list[float]] | None) -> tuple[torch.Tensor, ...]:
        x0 = batches[0][0]
        shape = tuple(len(y) for _, y in batches)
        if shape not in self.graphs and (shape not in self.seen or len(self.graphs) >= self.MOST):
            self.seen.add(shape)
            traces = new_traces(batches)
            lrs = lr_table(lrs, x0.device)
            self.graph_type.warm_up(lambda: self.run(batches, lrs, group_ends(batches), *traces))
            return traces
        if shape not in self.graphs:
            self.graphs[shape] = self.capture(batches, lrs)
        graph, (x, y, static_lrs, _ends), traces = self.graphs[shape]
        torch.cat([x for x, _ in batches], out=x)
        torch.cat([y for _, y in batches], out=y)
        if static_lrs is not None:
            host = torch.tensor(lrs, dtype=torch.float32)
            static_lrs.copy_(host.pin_memory() if static_lrs.is_cuda else host, non_blocking=True)
        graph.replay()
        self.replays += 1
        return traces

    def capture(self, batches, lrs):
        x = torch.cat([x for x, _ in batches])
        y = torch.cat([y for _, y in batches])
        static_lrs = lr_table(lrs, x.device)
        views, start = [], 0
        for _, batch_y in batches:
            views.append((x[start:start + len(batch_y)], y[start:start + len(batch_y)]))
            start += len(batch_y)
        ends = group_ends(batches)
        traces = new_traces(batches)
        graph = self.graph_type()
        graph.capture(lambda: self.run(views, static_lrs, ends, *traces))
        # every tensor the graph reads or writes stays alive with it: freed, its memory would be reused
        return graph, (x, y, static_lrs, ends), traces
