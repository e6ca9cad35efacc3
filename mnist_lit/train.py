"""Train, validate and test the MLP: `python -m mnist_lit.train [overrides]` (see README).

The recipe: build the data, the model and the Trainer from the config, fit, test the best checkpoint, and
record the run in metrics.json. A run that stops early records how (mnist_lit/runs/reliability.py).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from mnist_lit.cli import entry as cli
from mnist_lit.config import schema
from mnist_lit.config.messages import report_user_errors
from mnist_lit.errors import RunStopped
from mnist_lit.runs.folders import cluster_plugins, continue_attempts  # hooks: issue #13
from mnist_lit.search.sweep import keep_sweeping, sweep_keys

log = logging.getLogger(__name__)
schema.register()  # conf/train.yaml's defaults list starts with it; also in launcher workers that import this


def train(cfg: DictConfig) -> dict:
    """Fit, test the best checkpoint, and write metrics.json into the run dir; returns what it wrote.

    A run that stops early writes metrics.json too, with status "interrupted" (resumable with
    resume=<run dir>), "diverged" or "failed", and raises a RunStopped that says what happened and what to do.
    """
    schema.validate(cfg)  # before importing torch: a config mistake is reported at once
    from mnist_lit.runs.reliability import StopOnSignal

    # Ctrl-C and SIGTERM are caught from here on, so that they are never lost between loading and fitting
    with StopOnSignal() as stop:
        return _train(cfg, stop)


def _train(cfg: DictConfig, stop) -> dict:
    import lightning.pytorch as pl
    import torch

    from mnist_lit.config.building import build, build_each, build_loggers, check_accelerator, check_optimizer
    from mnist_lit.reporting.callbacks import log_hparams, log_params, quiet_lightning
    from mnist_lit.runs.checkpoint import check_fits
    from mnist_lit.runs.record import RunRecord, final_metrics
    from mnist_lit.runs.reliability import (
        AtomicCheckpointIO,
        Diverged,
        Interrupted,
        ResumeExactly,
        StopOnDivergence,
        end_early,
        last_checkpoint_path,
    )
    from mnist_lit.search.trial import TrialPruned, trial_callbacks  # [optuna hook]
    from mnist_lit.speed.grouped import GroupedSteps, unfused_for_clipping

    out_dir = Path(HydraConfig.get().runtime.output_dir)
    quiet_lightning()
    if cfg.get("threads"):
        torch.set_num_threads(cfg.threads)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)

    check_accelerator(str(cfg.trainer.get("accelerator", "auto")))
    unfused_for_clipping(cfg)
    datamodule = build(cfg.data, "data")
    datamodule.prepare_data()  # missing or broken data fails here, before any other work
    model = build(cfg.model, "model")
    check_optimizer(model, cfg.trainer)
    if cfg.get("ckpt_path"):
        check_fits(cfg.ckpt_path, model.net)  # weights-only; another network's checkpoint is named as such
    # not options: whatever the config, a run that stops early keeps its work (mnist_lit/runs/reliability.py)
    callbacks = build_each(cfg.get("callbacks"), "callbacks") + [
        stop, StopOnDivergence(), ResumeExactly(), GroupedSteps(cfg.fast, cfg.steps_per_execution)]
    callbacks += trial_callbacks()  # [optuna hook] in an Optuna search's trial: report val/acc, get pruned
    loggers = build_loggers(cfg.get("logger"))
    trainer: pl.Trainer = build(  # #13: cluster_plugins() switches Lightning's SLURM auto-requeue off
        cfg.trainer, "trainer", callbacks=callbacks, logger=loggers or False,
        plugins=[AtomicCheckpointIO(), *cluster_plugins()],
    )
    if trainer.strategy.root_device.type == "cpu":
        # Lightning sets this so that CUDA checks never initialise CUDA before a fork; without a GPU the
        # check then reloads the NVML library inside every Adam step (0.1 ms, a tenth of a step here)
        os.environ.pop("PYTORCH_NVML_BASED_CUDA_CHECK", None)
    record = RunRecord(out_dir, cfg, trainer, datamodule, model)
    log_params(trainer, cfg)

    start = time.perf_counter()
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=True)
        if stop.signum is not None:  # a signal during the last validation: training is complete, but stop
            path = last_checkpoint_path(trainer)
            if not path.is_file():  # no checkpoint callback saved it (callbacks=none): the training is kept
                trainer.save_checkpoint(path, weights_only=False)
            raise Interrupted(stop.signum, str(path))
        fit_seconds = time.perf_counter() - start
        metrics = record.previous | final_metrics(trainer, model)
        if cfg.get("test", True):
            # the best-on-validation weights, loaded without unpickling arbitrary objects
            trainer.test(model, datamodule=datamodule, ckpt_path=record.best_checkpoint, weights_only=True,
                         verbose=False)
            metrics |= final_metrics(trainer, model, prefixes=("test/",))
    except TrialPruned as err:  # [optuna hook] status "pruned", exit 0: the sweeper tells Optuna
        metrics = final_metrics(trainer, model)
        record.write("pruned", time.perf_counter() - start, metrics, pruned=str(err))
        log_hparams(trainer, cfg, metrics, sweep_keys(), "pruned")  # a search's pruned trials belong there
        raise RunStopped(f"{err} (metrics.json: status pruned)", "pruned", 0) from None
    except BaseException as err:
        if isinstance(err, Diverged):  # an ended run, as a pruned one (an interrupted one goes on later)
            log_hparams(trainer, cfg, final_metrics(trainer, model), sweep_keys(), "diverged")
        end_early(err, stop, record, time.perf_counter() - start, cfg.model.optimizer.get("lr"),
                  resume_args())
        raise

    result = record.write("completed", fit_seconds, metrics)
    if trainer.is_global_zero:
        log_hparams(trainer, cfg, metrics, sweep_keys())
        tested = (f"test/acc {result['test_acc']:.4f}  test/loss {result['test_loss']:.4f}"
                  if result["test_acc"] is not None else "not tested (test=false)")
        log.info("%s  best val/acc %.4f  fit %.1f s  -> %s", tested, result["best_val_acc"] or float("nan"),
                 fit_seconds, out_dir)
    return result


def resume_args() -> str:
    """How to continue this run: a sweep's job (or search trial) with the whole sweep, the others alone."""
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN:
        return f"-m resume={Path(hydra_cfg.runtime.cwd, hydra_cfg.sweep.dir)}"
    return f"resume={hydra_cfg.runtime.output_dir}"


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


if __name__ == "__main__":
    cli.run(main, lambda: SINGLE_RUN_DONE)
