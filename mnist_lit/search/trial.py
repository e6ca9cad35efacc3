"""A training job as a trial of an Optuna search: reports val/acc every epoch, stops when the pruner says so.

The sweeper (hydra_plugins/mnist_lit_optuna) passes the trial to its job in three environment variables
(through `hydra.job.env_set`, which every launcher applies: basic, joblib, submitit): the storage URL,
the study name and the trial number; the pruner comes from the job's own hydra.sweeper config. Outside
such a job `trial_callbacks()` is empty, and optuna is never imported (it is an optional extra).
"""

from __future__ import annotations

import os

import lightning.pytorch as pl

from mnist_lit.runs.reliability import Ended
from mnist_lit.search.study import STORAGE_ENV, STUDY_ENV, TRIAL_ENV, directions, storage


class TrialPruned(Ended):
    """The pruner stopped this trial, inside its job: the run records status "pruned" and ends with
    RunStopped(status="pruned"), which reaches the sweeper as a JobPruned (mnist_lit.search.sweep)."""

    status = "pruned"


class ReportToTrial(pl.Callback):
    """After every validation: report `monitor` to the trial as that epoch's intermediate value, and raise
    TrialPruned when the study's pruner finds the trial hopeless (median, hyperband: the sweeper's config)."""

    def __init__(self, storage_url: str, study_name: str, number: int, pruner, monitor: str = "val/acc"):
        import optuna

        self.monitor = monitor
        store = storage(storage_url)
        trial_id = store.get_trial_id_from_study_id_trial_number(store.get_study_id_from_name(study_name), number)
        # the storage keeps no pruner: the trial asks the one of the sweep's config
        study = optuna.load_study(study_name=study_name, storage=store, pruner=pruner)
        self.trial = optuna.trial.Trial(study, trial_id)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if trainer.sanity_checking or value is None:
            return
        epoch = trainer.current_epoch
        if trainer.is_global_zero:
            self.trial.report(float(value), step=epoch)
        # every process takes rank 0's decision, so that all of them stop together
        if trainer.strategy.broadcast(trainer.is_global_zero and self.trial.should_prune()):
            raise TrialPruned(f"trial {self.trial.number} pruned after epoch {epoch + 1}: {self.monitor}="
                              f"{float(value):.4f} is below what the study's pruner lets through")


def trial_callbacks() -> list[pl.Callback]:
    """[ReportToTrial] inside an Optuna search's job of one objective, else [] (Optuna prunes no search of
    several objectives: the sweeper says so once)."""
    if TRIAL_ENV not in os.environ:
        return []
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import instantiate

    if len(directions(HydraConfig.get().sweeper.direction)) > 1:
        return []
    pruner = instantiate(HydraConfig.get().sweeper.pruner)
    return [ReportToTrial(os.environ[STORAGE_ENV], os.environ[STUDY_ENV], int(os.environ[TRIAL_ENV]), pruner)]
