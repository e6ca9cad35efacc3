"""Train, validate and test the MLP: `python -m mnist_lit.train [overrides]` (see README)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import resource
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from mnist_lit import __version__
from mnist_lit.errors import RunStopped, UserError, report_user_errors, user_error_of
from mnist_lit.runs import cluster_plugins, continue_attempts, expand_sweep_resume  # hooks: issue #13
from mnist_lit.schema import validate  # importing it registers the config schema
from mnist_lit.sweep import keep_sweeping

log = logging.getLogger(__name__)
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=5, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def flat_hparams(cfg: DictConfig) -> dict:
    """The run's hyperparameters as flat `group/key` -> scalar, for TensorBoard's HPARAMS table."""
    chosen = {"seed": cfg.seed, "data": cfg.data, "model": cfg.model, "trainer": {"max_epochs": cfg.trainer.max_epochs}}
    flat: dict = {}

    def walk(prefix: str, node) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key not in ("_target_", "_partial_"):
                    walk(f"{prefix}/{key}" if prefix else str(key), value)
            if "_target_" in node:
                flat[f"{prefix}/class"] = str(node["_target_"]).rsplit(".", 1)[-1]
        else:
            flat[prefix] = node if isinstance(node, (int, float, str, bool)) else str(node)

    walk("", OmegaConf.to_container(OmegaConf.create(chosen), resolve=True))
    return flat


def log_hparams(trainer, cfg: DictConfig, metric_names: list[str]) -> None:
    """Write the HPARAMS summary; its metric columns read the scalars the run already logged."""
    from lightning.pytorch.loggers import TensorBoardLogger
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams

    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            # the logger's own writer is closed once fit/test end; a new one appends to the same run
            with SummaryWriter(logger.log_dir) as writer:
                for summary in hparams(flat_hparams(cfg), {name: 0.0 for name in metric_names}):
                    writer.file_writer.add_summary(summary)


def device_name(trainer) -> str:
    import torch

    device = trainer.strategy.root_device
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def build(node: DictConfig, key: str, **kwargs):
    """instantiate(node), turning a failure into a UserError that names the config key."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        cause = user_error_of(err) or err.__cause__ or err
        if isinstance(cause, UserError):
            raise cause from None
        raise UserError(f"{key}: cannot be built from the config: {cause}. Check its keys and values "
                        f"(python -m mnist_lit.train --cfg job shows them).") from err


def check_accelerator(accelerator: str) -> None:
    """Refuse a GPU run on a machine without one, saying what to use instead (Lightning's own message doesn't)."""
    import torch

    if accelerator in ("gpu", "cuda") and not (torch.cuda.is_available() or torch.backends.mps.is_available()):
        raise UserError(
            f"trainer.accelerator={accelerator} asks for a GPU, and torch {torch.__version__} finds none on this "
            "machine. Train on the CPU with trainer=cpu, or use trainer=default, which takes the GPU when there is one."
        )


def check_optimizer(model) -> None:
    """Build the optimizer (and schedule) once, so that a bad argument fails now, not after loading."""
    try:
        model.optimizer_factory(params=model.parameters())
    except (TypeError, ValueError) as err:
        raise UserError(f"model.optimizer: {err}. Check its keys and values (--cfg job shows them).") from err


def check_checkpoint(path: str, model) -> None:
    """Refuse a checkpoint that cannot be read safely or that holds another network, before fitting."""
    from mnist_lit.checkpoint import load_state_into, read_checkpoint

    state = read_checkpoint(path)  # weights-only: pickled code is refused, never run
    try:
        load_state_into(model.net, state["state_dict"], prefix="net.", source=f"ckpt_path={path}")
    except UserError as err:
        raise UserError(f"{err} To continue a run with its own config: resume=<its run folder>.") from None


def write_metrics(out_dir: Path, metrics: dict) -> None:
    # a temporary name, then a rename: an interrupted write never leaves a truncated metrics.json
    tmp = out_dir / ".metrics.json.tmp"
    try:
        tmp.write_text(json.dumps(metrics, indent=2) + "\n")
        os.replace(tmp, out_dir / "metrics.json")
    except OSError as err:
        raise UserError(f"cannot write {out_dir / 'metrics.json'}: {err.strerror or err}. Choose a writable "
                        "folder with hydra.run.dir=<folder>.") from err


def expand_resume(args: list[str]) -> list[str]:
    """`resume=<run dir>` on the command line -> that run's own overrides, its folder as the run dir and its
    last.ckpt, then this command's other arguments (which win). Hydra then records the whole config."""
    if {"-m", "--multirun"} & set(args):  # #13: resume=<sweep dir>
        return expand_sweep_resume(args)
    found = [i for i, a in enumerate(args) if a.startswith("resume=")]
    if not found:
        return args
    run_dir = Path(args[found[-1]].split("=", 1)[1]).expanduser()
    overrides, last = run_dir / ".hydra" / "overrides.yaml", run_dir / "checkpoints" / "last.ckpt"
    if not overrides.is_file():
        raise UserError(f"resume={run_dir}: not a training run folder (no .hydra/overrides.yaml). Pass the "
                        "folder of the run to continue, e.g. resume=logs/train/runs/<date_time>.")
    if not last.is_file():
        raise UserError(f"resume={run_dir}: the run has no checkpoints/last.ckpt (it stopped before its "
                        "first checkpoint, or ran with callbacks=none): start it again instead.")

    def key(arg: str) -> str:
        return arg.split("=", 1)[0].lstrip("+~")

    ours = [f"hydra.run.dir='{run_dir}'", f"ckpt_path='{last}'", f"resume='{run_dir}'"]
    rest = [a for i, a in enumerate(args) if i not in found]
    given = {key(a) for a in ours + rest if "=" in a}
    kept = [o for o in OmegaConf.load(overrides) if key(o) not in given]
    return kept + ours + rest


def train(cfg: DictConfig) -> dict:
    """Fit, test the best checkpoint, and write metrics.json into the run dir; returns those metrics.

    A run that stops early writes metrics.json too, with status "interrupted" (resumable with
    resume=<run dir>), "diverged" or "failed", and raises a RunStopped that says what happened and what to do.
    """
    validate(cfg)  # before importing torch: a config mistake is reported at once
    from mnist_lit.reliability import StopOnSignal

    # Ctrl-C and SIGTERM are caught from here on, so that they are never lost between loading and fitting
    with StopOnSignal() as stop:
        return _train(cfg, stop)


def _train(cfg: DictConfig, stop) -> dict:
    import lightning
    import lightning.pytorch as pl
    import torch

    from mnist_lit.reliability import (
        AtomicCheckpointIO,
        Diverged,
        Interrupted,
        ResumeExactly,
        StopOnDivergence,
        last_checkpoint_path,
    )

    out_dir = Path(HydraConfig.get().runtime.output_dir)
    # Hydra's handlers already print and write train.log; Lightning's own would print everything twice
    logging.getLogger("lightning").handlers.clear()
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    if cfg.get("threads"):
        torch.set_num_threads(cfg.threads)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)

    check_accelerator(str(cfg.trainer.get("accelerator", "auto")))
    datamodule = build(cfg.data, "data")
    datamodule.prepare_data()  # missing or broken data fails here, before any other work
    model = build(cfg.model, "model")
    check_optimizer(model)
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path:
        check_checkpoint(ckpt_path, model)
    callbacks = [build(c, f"callbacks.{k}") for k, c in (cfg.get("callbacks") or {}).items() if c is not None]
    loggers = [build(c, f"logger.{k}") for k, c in (cfg.get("logger") or {}).items() if c is not None]
    if not loggers:
        from lightning.pytorch.callbacks import LearningRateMonitor

        # LearningRateMonitor refuses a Trainer without loggers; with nowhere to log it has nothing to do
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    # not options: whatever the config, a run that stops early keeps its work (mnist_lit/reliability.py)
    callbacks += [stop, StopOnDivergence(), ResumeExactly()]
    trainer: pl.Trainer = build(  # #13: cluster_plugins() switches Lightning's SLURM auto-requeue off
        cfg.trainer, "trainer", callbacks=callbacks, logger=loggers or False,
        plugins=[AtomicCheckpointIO(), *cluster_plugins()],
    )
    if trainer.strategy.root_device.type == "cpu":
        # Lightning sets this so that CUDA checks never initialise CUDA before a fork; without a GPU the
        # check then reloads the NVML library inside every Adam step (0.1 ms, a tenth of a step here)
        os.environ.pop("PYTORCH_NVML_BASED_CUDA_CHECK", None)

    def finish(status: str, fit_seconds: float, final: dict, **extra) -> dict:
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        metrics = {
            "status": status,
            **extra,
            "test_acc": final.get("test/acc"),
            "test_loss": final.get("test/loss"),
            "best_val_acc": final.get("val/acc_best"),
            "metrics": final,
            "epochs": trainer.current_epoch,
            "steps": trainer.global_step,
            "fit_seconds": round(fit_seconds, 3),
            "seed": cfg.seed,
            "split_seed": datamodule.split_seed,
            "split_digest": getattr(datamodule, "split_digest", None),
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "device": device_name(trainer),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "gpu_peak_mb": (round(torch.cuda.max_memory_allocated() / 2**20, 1)
                            if torch.cuda.is_initialized() else None),
            "best_checkpoint": best or None,
            "versions": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "lightning": lightning.__version__,
                "mnist_lit": __version__,
            },
            "git_commit": git_commit(),
        }
        if trainer.is_global_zero:
            write_metrics(out_dir, metrics)
        return metrics

    start = time.perf_counter()
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        if stop.signum is not None:  # a signal during the last validation: training is complete, but stop
            raise Interrupted(stop.signum, str(last_checkpoint_path(trainer)))
        fit_seconds = time.perf_counter() - start
        final = {k: v.item() for k, v in trainer.callback_metrics.items() if k.startswith(("train/", "val/"))}
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        if cfg.get("test", True):
            # the best-on-validation weights, loaded without unpickling arbitrary objects
            trainer.test(model, datamodule=datamodule, ckpt_path=best or None, weights_only=True,
                         verbose=False)
            final |= {k: v.item() for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
    except (Interrupted, SystemExit) as err:
        # SystemExit: Lightning's own stop after a second Ctrl-C, or its SIGTERM check at an epoch end
        if isinstance(err, SystemExit) and stop.signum is None:
            raise
        fit_seconds = time.perf_counter() - start
        checkpoint = err.checkpoint if isinstance(err, Interrupted) else str(last_checkpoint_path(trainer))
        signame = signal.Signals(stop.signum or signal.SIGINT).name
        code = 128 + (stop.signum or signal.SIGINT)
        if checkpoint is None or not Path(checkpoint).is_file():
            finish("interrupted", fit_seconds, {}, resume_checkpoint=None)
            raise RunStopped(f"interrupted by {signame} before the first checkpoint; nothing to resume from: "
                             "run the command again.", "interrupted", code) from None
        finish("interrupted", fit_seconds, {}, resume_checkpoint=checkpoint)
        raise RunStopped(
            f"interrupted by {signame} in epoch {trainer.current_epoch} after {trainer.global_step} "
            f"optimizer steps; saved the resumable checkpoint {checkpoint} (metrics.json: status "
            f"interrupted). Continue the run with: python -m mnist_lit.train resume={out_dir}",
            "interrupted", code) from None
    except Diverged as err:
        finish("diverged", time.perf_counter() - start, {}, error=str(err))
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        kept = f"The best checkpoint so far is kept: {best}" if best else "No epoch finished: no checkpoint"
        raise RunStopped(
            f"{err}; stopped (metrics.json: status diverged). {kept}. Lower the learning rate "
            f"(model.optimizer.lr={cfg.model.optimizer.get('lr')}; the tutorial's is 1e-3).",
            "diverged") from None
    except Exception as err:
        with contextlib.suppress(Exception):  # the error itself is what the user must see
            finish("failed", time.perf_counter() - start, {}, error=str(user_error_of(err) or repr(err)))
        raise

    metrics = finish("completed", fit_seconds, final)
    if trainer.is_global_zero:
        log_hparams(trainer, cfg, sorted(final))
        log.info("test/acc %.4f  test/loss %.4f  best val/acc %.4f  fit %.1f s  -> %s",
                 metrics["test_acc"] or float("nan"), metrics["test_loss"] or float("nan"),
                 metrics["best_val_acc"] or float("nan"), fit_seconds, out_dir)
    return metrics


SINGLE_RUN_DONE = False  # set by a completed run without -m: nothing else of this process is left to finish


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
@report_user_errors
@keep_sweeping
@continue_attempts  # #13: a sweep job continues its own earlier attempt
def main(cfg: DictConfig) -> float | None:
    global SINGLE_RUN_DONE
    metrics = train(cfg)
    SINGLE_RUN_DONE = HydraConfig.get().mode == RunMode.RUN
    return metrics["metrics"].get(cfg.get("optimized_metric"))


@report_user_errors
def expand_argv() -> None:
    sys.argv[1:] = expand_resume(sys.argv[1:])


def exit_without_teardown() -> None:
    """Exit 0 after a single completed run, skipping the interpreter's teardown of its modules.

    With torch, Lightning, torchvision, scipy and matplotlib loaded (some 3,800 modules) that teardown takes
    1.5-3 s on a 2-core CPU, a tenth of a 10-epoch run, and does nothing for the user: checkpoints,
    metrics.json and TensorBoard files are closed by now (Lightning finalizes its loggers after fit and test),
    and the exit handlers still run (logging's flush and close). A sweep exits as usual: its launchers'
    worker pools shut down in the interpreter's own exit sequence.
    """
    import atexit

    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    expand_argv()
    main()  # errors leave through SystemExit with their own code, and tear down as usual
    if SINGLE_RUN_DONE:
        exit_without_teardown()
