"""The callbacks mnist-lit adds to Lightning's own: what a run shows (network summary, curves, images) and
where its scalars sit on TensorBoard's step axis. The progress bar and the epoch lines: progress.py.

Every scalar and image is logged against optimizer steps (`trainer.global_step`): validation after the first
epoch of the tutorial at step 1500, whether or not steps are grouped (mnist_lit/speed/grouped.py).
"""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger

log = logging.getLogger(__name__)


# Lightning's start-up lines that tell a user nothing about this run
NOISE = ("💡 Tip", "TPU available", "HPU available", "You are using a CUDA device", "`Trainer.fit` stopped: `max_steps")


def quiet_lightning() -> None:
    """Lightning's log lines go through Hydra's handlers only (the console and train.log), less its noise."""
    logging.getLogger("lightning").handlers.clear()  # its own handler would print everything twice
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    warnings.filterwarnings("ignore", message=r"The `srun` command is available on your system but is not used")
    # a resumed run's own checkpoints (a folder holding another run's is refused before: mnist_lit/runs/folders.py)
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    # under DDP: the module's epoch scores are torchmetrics' compute(), already reduced over the processes
    warnings.filterwarnings("ignore", message=r"It is recommended to use `self.log\('(train|val|test)/")
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNoise) for f in logger.filters):
            logger.addFilter(_DropNoise())


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(NOISE)


def tensorboards(trainer: pl.Trainer) -> list[TensorBoardLogger]:
    return [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)] if trainer.is_global_zero else []


class HostCopy:
    """Device values on their way to the host: `read()` waits only for the work queued before the copy, not
    for the steps queued since (a GPU runs on while the host reads). On a CPU, the values themselves."""

    def __init__(self, values: torch.Tensor):
        self.done = None
        if values.is_cuda:
            values, self.done = values.to("cpu", non_blocking=True), torch.cuda.Event()
            self.done.record()
        self.values = values

    def read(self) -> torch.Tensor:
        if self.done is not None:
            self.done.synchronize()
        return self.values


class StepAxis(pl.Callback):
    """Puts epoch-end scalars at `global_step` (Lightning logs them at the step before the epoch's last one).

    Lightning's loggers take the step from a logged "step" value when there is one, and then leave out the
    "epoch" scalar they add to every other write: it is logged here too, so TensorBoard's `epoch` chart maps
    steps to epochs as in any Lightning run.
    """

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._log_axes(trainer, pl_module)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self._log_axes(trainer, pl_module)

    @staticmethod
    def _log_axes(trainer, pl_module) -> None:
        pl_module.log_dict({"step": float(trainer.global_step), "epoch": float(trainer.current_epoch)})


class TutorialCharts(pl.Callback):
    """TensorBoard's CUSTOM SCALARS tab: the tutorial's two plots, training and validation loss on one chart
    and accuracy on the other, per epoch at their optimizer steps (runs of a sweep side by side)."""

    LAYOUT = {"learning curves": {
        "loss": ["Multiline", ["^train/loss$", "^val/loss$"]],
        "accuracy": ["Multiline", ["^train/acc$", "^val/acc$"]],
    }}

    def on_fit_start(self, trainer, pl_module) -> None:
        for lg in tensorboards(trainer):
            lg.experiment.add_custom_scalars(self.LAYOUT)


class TrainingCurve(pl.Callback):
    """Every `trainer.log_every_n_steps` optimizer steps: the epoch's running training loss and accuracy so
    far (`train/loss_running`, `train/acc_running`) and the learning rate (`lr`), at that step.

    Read from the module's on-device sums (one host read per point). The grouped steps of mnist_lit/speed/grouped.py
    hand their points to `log_points` at the end of each group.
    """

    def __init__(self):
        self.last_step = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        every, step = trainer.log_every_n_steps, trainer.global_step
        if every and step % every == 0 and step != self.last_step:  # accumulating batches share a step
            self.last_step = step
            lr = trainer.optimizers[0].param_groups[0]["lr"]
            metrics = pl_module.train_metrics()
            self.log_points(trainer, [(trainer.global_step, metrics["train/loss"], metrics["train/acc"], lr)])

    def logged_elsewhere(self, step: int) -> None:
        """The points up to `step` are logged by their producer (the grouped steps log each group's)."""
        self.last_step = step

    @staticmethod
    def log_points(trainer: pl.Trainer, points) -> None:
        """Log (step, running loss, running accuracy, lr) points."""
        for step, loss, acc, lr in points:
            values = {"train/loss_running": float(loss), "train/acc_running": float(acc), "lr": float(lr)}
            for logger in trainer.loggers:
                logger.log_metrics(values, step=step)


class NetworkSummary(pl.Callback):
    """At the start of fitting, prints the network layer by layer with exact parameter counts (101,770 for
    the tutorial's 784-128-10 MLP, as Keras' model.summary() shows it)."""

    def on_fit_start(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        net = pl_module.net
        rows = [(name, type(m).__name__, sum(p.numel() for p in m.parameters(recurse=False)))
                for name, m in net.named_modules() if name]
        width = max([len(r[0]) for r in rows] + [5])
        lines = [f"{'layer':<{width}}  {'type':<12} {'params':>9}"]
        lines += [f"{name:<{width}}  {kind:<12} {count:>9,}" for name, kind, count in rows]
        trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
        total = sum(p.numel() for p in net.parameters())
        lines.append(f"{type(net).__name__}: {trainable:,} trainable parameters"
                     + (f" of {total:,}" if total != trainable else ""))
        log.info("network:\n%s", "\n".join(lines))


class LogSampleDigits(pl.Callback):
    """At the start of training, logs a grid of training digits with their labels to TensorBoard."""

    def __init__(self, count: int = 64):
        self.count = count

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        dm = trainer.datamodule
        if not tensorboards(trainer) or getattr(dm, "train_x", None) is None:
            return
        from mnist_lit.reporting.plots import labelled_grid

        x, y = dm.train_x[: self.count], dm.train_y[: self.count].tolist()
        grid = labelled_grid(dm.to_pixels(x), [dm.class_names[label] for label in y])
        for lg in tensorboards(trainer):
            lg.experiment.add_image("samples/train_digits", grid, global_step=trainer.global_step)


class LearningCurves(pl.Callback):
    """Keeps train/val loss and accuracy of every epoch and draws them into `<dirpath>/<filename>` after fit.

    The history is part of the checkpoint, so a resumed run draws its whole training.
    """

    def __init__(self, dirpath: str, filename: str = "curves.png"):
        self.path = Path(dirpath) / filename
        self.history: list[dict] = []

    def _record(self, epoch: int, values: dict) -> None:
        entry = next((h for h in self.history if h["epoch"] == epoch), None)
        if entry is None:
            entry = {"epoch": epoch}
            self.history.append(entry)
            self.history.sort(key=lambda h: h["epoch"])
        entry.update({k: float(v) for k, v in values.items()})

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # validation follows the epoch's last step and precedes its checkpoint: both scores are known here
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        metrics = trainer.callback_metrics
        values = {k: metrics[k] for k in ("val/loss", "val/acc") if k in metrics}
        self._record(trainer.current_epoch + 1, {**pl_module.train_metrics(), **values})

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero and self.history:
            from mnist_lit.reporting.plots import learning_curves_figure, save

            save(learning_curves_figure(self.history), self.path)

    def state_dict(self) -> dict:
        return {"history": [dict(h) for h in self.history]}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = list(state_dict.get("history", []))


class LogTestImages(pl.Callback):
    """After testing, logs the confusion matrix and the most confidently misclassified test digits to
    TensorBoard."""

    def __init__(self, count: int = 36):
        self.count = count

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        dm = trainer.datamodule
        if not tensorboards(trainer) or getattr(dm, "test_x", None) is None:
            return
        from mnist_lit.reporting.plots import confusion_matrix_figure, figure_image, labelled_grid
        from mnist_lit.scoring import evaluate_net

        result = evaluate_net(pl_module.net, dm.test_x, dm.test_y)
        worst = result.most_confident_errors(self.count)
        matrix = figure_image(confusion_matrix_figure(
            result.confusion, f"Confusion matrix: test accuracy {result.accuracy:.2%}", dm.class_names))
        # "true>predicted" on each digit (`python -m mnist_lit.evaluate` draws the captioned figure)
        names = dm.class_names
        pairs = zip(result.labels[worst].tolist(), result.predicted[worst].tolist(), strict=True)
        captions = [f"{names[t]}>{names[p]}" for t, p in pairs]
        grid = labelled_grid(dm.to_pixels(dm.test_x[worst]), captions, nrow=6, scale=3) if captions else None
        for lg in tensorboards(trainer):
            lg.experiment.add_image("test/confusion_matrix", matrix, global_step=trainer.global_step,
                                    dataformats="HWC")
            if grid is not None:
                lg.experiment.add_image("test/misclassified", grid, global_step=trainer.global_step)



# plumbing that does not change results: where the data is, how it is batched for speed, eval batch size
NOT_HPARAMS = {"root", "download", "eval_batch_size", "num_classes", "input_size", "fused", "foreach",
               "capturable", "total_steps", "cycle_momentum", "image_size", "image_shape"}


HPARAM_PARTS = ("net", "optimizer", "scheduler", "augment")  # the model's parts, by their own names


def result_hparams(cfg) -> dict:
    """What changes a run's results, flat (`optimizer/lr`, `net/hidden_sizes`, ...), for TensorBoard's HPARAMS."""
    from omegaconf import OmegaConf

    model = OmegaConf.to_container(cfg.model, resolve=True)
    flat = {"seed": cfg.seed, "data/batch_size": cfg.data.batch_size, "data/normalize": cfg.data.normalize,
            "data/val_size": cfg.data.val_size}
    flat.update({f"trainer/{key}": cfg.trainer.get(key) for key in (
        "max_epochs", "precision", "accumulate_grad_batches", "gradient_clip_val")})
    for part in HPARAM_PARTS:
        node = model.get(part)
        if not isinstance(node, dict):
            flat[part] = "none"
            continue
        flat[f"{part}/class"] = str(node.get("_target_", "")).rsplit(".", 1)[-1]
        flat.update({f"{part}/{k}": v for k, v in node.items() if not k.startswith("_") and k not in NOT_HPARAMS})
    # an optimizer left at its default weight decay still gets the column (Adam: 0), so runs compare
    flat.setdefault("optimizer/weight_decay", _default_argument(model["optimizer"]["_target_"], "weight_decay"))
    flat.update({f"model/{k}": v for k, v in model.items() if k not in HPARAM_PARTS
                 and not isinstance(v, (dict, list)) and not k.startswith("_") and k not in NOT_HPARAMS})
    # a bool as text (TensorBoard would show a number), None as "none"
    return {k: v if isinstance(v, (int, float, str)) and not isinstance(v, bool) else str(v).lower()
            for k, v in flat.items()}


def _default_argument(target: str, name: str):
    import inspect

    from hydra.utils import get_method

    parameter = inspect.signature(get_method(target)).parameters.get(name)
    return "none" if parameter is None or parameter.default is inspect.Parameter.empty else parameter.default


# TensorBoard's HPARAMS table shows the first five metric columns until more are ticked: accuracy first
METRIC_ORDER = ("val/acc_best", "test/acc", "val/acc", "train/acc", "val/loss", "test/loss", "train/loss")


def swept_hparams(names, sweep_keys) -> set[str]:
    """Which hparam `names` (result_hparams') the config keys a sweep varies change: `model.optimizer.lr` ->
    optimizer/lr, `model.net.hidden_sizes.0` -> net/hidden_sizes, the group `model/optimizer` -> optimizer/*.
    """
    swept = set()
    for key in sweep_keys:
        parts = [part for part in re.split(r"[./]", key.lstrip("+~")) if part]
        if len(parts) > 1 and parts[0] == "model" and parts[1] in HPARAM_PARTS:
            parts = parts[1:]
        path = "/".join(parts)
        swept |= {n for n in names if n == path or n.startswith(path + "/") or path.startswith(n + "/")}
    return swept


def log_params(trainer: pl.Trainer, cfg) -> None:
    """Give the other loggers (MLflow's params, CSV's hparams.yaml) what changes results, at the start: runs
    that stop early have them too. TensorBoard's table comes with the scores (log_hparams)."""
    for logger in trainer.loggers:
        if not isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(result_hparams(cfg))


def log_hparams(trainer: pl.Trainer, cfg, metric_names, sweep_keys=(), status: str = "completed") -> None:
    """Write the HPARAMS table; its metric columns read the scalars the run already logged.

    The hparams a sweep varies (`sweep_keys`, mnist_lit.search.sweep.sweep_keys) are marked as differing:
    TensorBoard lists those first and shows them without a click (it shows five columns of a sweep's runs).
    A run that ended early (`status` pruned or diverged, as in metrics.json) is a failed session there:
    TensorBoard's status filter then leaves it out of a comparison of finished runs.
    """
    from tensorboard.plugins.hparams.api_pb2 import Status
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams

    values = result_hparams(cfg)
    rank = {name: i for i, name in enumerate(METRIC_ORDER)}
    # every run lists every column: TensorBoard takes a sweep's columns from one of its runs, which may be one
    # that diverged before its first score (nothing to show then for any run)
    tested = cfg.get("test", True)
    names = set(metric_names) | {name for name in METRIC_ORDER if tested or not name.startswith("test/")}
    order = sorted(names, key=lambda name: (rank.get(name, len(rank)), name))
    summaries = hparams(values, dict.fromkeys(order, 0.0))  # the experiment, the session's start and end
    # the experiment's hparams say which differ between the sweep's runs (torch's helper has no argument)
    plugin_data = summaries[0].value[0].metadata.plugin_data
    data = HParamsPluginData.FromString(plugin_data.content)
    swept = swept_hparams(values, sweep_keys)
    for info in data.experiment.hparam_infos:
        info.differs = info.name in swept
    plugin_data.content = data.SerializeToString()
    end = summaries[2].value[0].metadata.plugin_data
    end_data = HParamsPluginData.FromString(end.content)
    ended = Status.STATUS_SUCCESS if status == "completed" else Status.STATUS_FAILURE
    end_data.session_end_info.status = ended
    end.content = end_data.SerializeToString()
    for logger in tensorboards(trainer):
        # the logger's own writer is closed once fit and test end; a new one appends to the same run
        with SummaryWriter(logger.log_dir) as writer:
            for pb in summaries:
                writer.file_writer.add_summary(pb)
