"""Train, validate and test a classifier: `python -m mnist_lit.train [overrides]` (see README).

The recipe, in the order of lightning-hydra-template's: build the data, the model, the callbacks, the loggers
and the Trainer from the config; fit; test the best checkpoint; record the run in metrics.json. What keeps a
run safe (signals, divergence, atomic checkpoints, exact resume) lives in mnist_lit/runs/, the speed layer
in mnist_lit/speed/, and each comes in here as a callback or a plugin.
"""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig

from mnist_lit.cli.entry import command
from mnist_lit.config import schema


def train(cfg: DictConfig) -> dict:
    """Fit, test the best checkpoint, and write metrics.json into the run dir; returns what it wrote.

    A run that stops early writes metrics.json too, with status "interrupted" (resumable with
    resume=<run dir>), "diverged", "pruned" or "failed", and raises a RunStopped that says what to do.
    """
    schema.validate(cfg)  # before importing torch: a config mistake is reported at once
    from mnist_lit.runs.reliability import StopOnSignal

    with StopOnSignal() as stop:  # from here on, Ctrl-C and SIGTERM stop the run cleanly, never lost
        return _train(cfg, stop)


def _train(cfg: DictConfig, stop) -> dict:
    import lightning.pytorch as pl
    from hydra.core.hydra_config import HydraConfig

    from mnist_lit.config.building import build, build_each, build_loggers, check_accelerator, check_optimizer
    from mnist_lit.reporting.callbacks import log_hparams, log_params, quiet_lightning
    from mnist_lit.runs.checkpoint import check_fits
    from mnist_lit.runs.record import RunRecord
    from mnist_lit.runs.reliability import run_callbacks, run_plugins
    from mnist_lit.search.sweep import sweep_keys
    from mnist_lit.search.trial import trial_callbacks
    from mnist_lit.speed.grouped import GroupedSteps, unfused_for_clipping
    from mnist_lit.speed.threads import ThreadsFollowLoad

    quiet_lightning()
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    unfused_for_clipping(cfg)
    check_accelerator(str(cfg.trainer.get("accelerator", "auto")))

    datamodule = build(cfg.data, "data")
    datamodule.prepare_data()  # missing or broken data fails here, before any other work
    model = build(cfg.model, "model")
    check_optimizer(model, cfg.trainer)  # a bad argument fails now, not after the first epoch
    if cfg.get("ckpt_path"):
        check_fits(cfg.ckpt_path, model.net)  # weights-only; another network's checkpoint is named as such
    # besides the config's: a run that stops early keeps its work; the speed layer groups the steps and
    # sets the CPU threads
    callbacks = [*build_each(cfg.get("callbacks"), "callbacks"), *run_callbacks(stop),
                 GroupedSteps(cfg.fast, cfg.steps_per_execution), ThreadsFollowLoad(cfg.get("threads")),
                 *trial_callbacks()]
    loggers = build_loggers(cfg.get("logger"))
    trainer: pl.Trainer = build(cfg.trainer, "trainer", callbacks=callbacks, logger=loggers or False,
                                plugins=run_plugins())
    if trainer.strategy.root_device.type == "cpu":
        # Lightning sets this so that CUDA checks never initialise CUDA before a fork; without a GPU the
        # check then reloads the NVML library inside every Adam step (0.1 ms, a tenth of a step here)
        os.environ.pop("PYTORCH_NVML_BASED_CUDA_CHECK", None)

    out_dir = Path(HydraConfig.get().runtime.output_dir)
    record = RunRecord(out_dir, cfg, trainer, datamodule, model,
                       report=lambda metrics, status: log_hparams(trainer, cfg, metrics, sweep_keys(), status))
    log_params(trainer, cfg)
    with record.ending_cleanly(stop):
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=True)
        record.fitted(stop)
        if cfg.get("test", True):  # the best-on-validation weights, loaded without unpickling any object
            trainer.test(model, datamodule=datamodule, ckpt_path=record.best_checkpoint, weights_only=True,
                         verbose=False)
            record.tested()
    return record.complete()


@command("train", trains=True, check=schema.validate)
def main(cfg: DictConfig) -> float | list[float] | None:
    """One run, or one job of a sweep: returns the metric a sweeper optimises (a list: their values)."""
    from mnist_lit.runs.objectives import objective_values

    return objective_values(train(cfg)["metrics"], cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
