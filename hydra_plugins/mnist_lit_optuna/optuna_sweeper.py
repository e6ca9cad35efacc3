"""A Hydra Sweeper on Optuna's ask-and-tell: asks the study for trials, launches them as Hydra jobs through
any launcher (basic, joblib, submitit), tells the study how each ended (complete, pruned, failed).

- The study lives in a storage (default sqlite:///<sweep dir>/optuna.db), so running the sweep again with the
  same folder continues it up to n_trials; trials a dead sweep left RUNNING are marked failed and retried.
- Trial k runs in job folder <sweep dir>/k; its job finds the trial through three environment variables
  (mnist_lit/search/trial.py) and reports val/acc every epoch to the pruner.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import sys
import warnings
from pathlib import Path
from typing import Any

from hydra.core.plugins import Plugins
from hydra.errors import CompactHydraException
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


class SearchError(CompactHydraException):
    """A mistake in the search's setup (Hydra prints only the message)."""


def quoted(value: str) -> str:
    """A value as a quoted string of Hydra's override grammar."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class OptunaSweeper(Sweeper):
    def __init__(self, sampler: Any, pruner: Any, direction: str, study_name: str, storage: str | None,
                 n_trials: int, n_jobs: int, max_failure_rate: float, params: DictConfig | None) -> None:
        self.sampler, self.pruner, self.direction = sampler, pruner, direction
        self.study_name, self.storage = study_name, storage
        self.n_trials, self.n_jobs, self.max_failure_rate = n_trials, n_jobs, max_failure_rate
        self.params = OmegaConf.to_container(params) if params else {}

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function)

    def storage_url(self) -> str:
        sweep_dir = Path(self.config.hydra.sweep.dir).absolute()
        return self.storage or f"sqlite:///{sweep_dir / 'optuna.db'}"

    def check(self) -> None:
        metric = self.config.get("optimized_metric")
        if not metric or str(metric).startswith("test/"):
            raise SearchError(f"optimized_metric={metric}: the search must optimize a validation metric "
                              "(e.g. val/acc_best); the test set is looked at only by "
                              "python -m mnist_lit.confirm.")
        if self.n_trials < 1 or self.n_jobs < 1 or not 0 <= self.max_failure_rate <= 1:
            raise SearchError(f"hydra.sweeper: n_trials={self.n_trials} and n_jobs={self.n_jobs} must be "
                              f">= 1, max_failure_rate={self.max_failure_rate} in [0, 1].")

    def sweep(self, arguments: list[str]) -> None:
        import optuna

        from mnist_lit.search.space import SearchSpaceError, parse
        from mnist_lit.search.study import storage

        self.check()
        try:
            space, fixed = parse([f"{k}={v}" for k, v in self.params.items()] + list(arguments))
        except SearchSpaceError as err:
            raise SearchError(f"search space (hydra.sweeper.params or the command line): {err}") from None
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        # as Hydra's basic sweeper: the search's config and overrides, read by resume= and mnist_lit.confirm
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        url = self.storage_url()
        try:
            study = optuna.create_study(study_name=self.study_name, storage=storage(url),
                                        sampler=self.sampler, pruner=self.pruner, direction=self.direction,
                                        load_if_exists=True)
        except (ValueError, ImportError, optuna.exceptions.OptunaError) as err:
            raise SearchError(f"hydra.sweeper.storage={url}: cannot open the study: {err}. Give a writable "
                              "folder (hydra.sweep.dir) or a reachable Optuna storage URL.") from None
        with warnings.catch_warnings():  # experimental in Optuna since 3.2, unchanged since
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            # optuna-dashboard and study.trials_dataframe() name the objective, not "Objective 0"
            study.set_metric_names([str(self.config.optimized_metric)])
        seed = self.config.hydra.sweeper.sampler.get("seed")
        if study.trials and seed is not None:
            # continuing a study: a sampler seeded as at its start would draw the first trials' parameters
            study.sampler = instantiate(self.config.hydra.sweeper.sampler, seed=seed + len(study.trials))
        retry_interrupted(study)
        done = len(counted(study))
        log.info("Study %s in %s: %d of %d trials done; sampler %s, pruner %s. Watch it with: "
                 "optuna-dashboard %s", self.study_name, url, done, self.n_trials,
                 type(self.sampler).__name__, type(self.pruner).__name__, url)
        failures = ran = 0
        while done < self.n_trials:
            trials = [study.ask(space) for _ in range(min(self.n_jobs, self.n_trials - done))]
            failed, interrupted = self.run_batch(study, trials, fixed, url)
            failures, ran, done = failures + failed, ran + len(trials), len(counted(study))
            if interrupted is not None:  # Ctrl-C: the running trials stay RUNNING, to be retried on resume
                raise interrupted
            if failures > self.max_failure_rate * ran:
                raise SearchError(f"{failures} of {ran} trials failed (more than hydra.sweeper."
                                  f"max_failure_rate={self.max_failure_rate}); see "
                                  f"python -m mnist_lit.summarize {self.config.hydra.sweep.dir}")
        self.report(study)

    def run_batch(self, study, trials: list, fixed: dict[str, str], url: str
                  ) -> tuple[int, BaseException | None]:
        import optuna

        from mnist_lit.errors import RunStopped
        from mnist_lit.search.space import to_override
        from mnist_lit.search.study import STORAGE_ENV, STUDY_ENV, TRIAL_ENV
        from mnist_lit.search.sweep import JobPruned

        batches = []  # job folder = trial number: consecutive numbers go to the launcher together
        for trial in trials:
            overrides = (*(f"{k}={v}" for k, v in fixed.items()),
                         *(to_override(k, v) for k, v in trial.params.items()),
                         f"++hydra.job.env_set.{STORAGE_ENV}={quoted(url)}",
                         f"++hydra.job.env_set.{STUDY_ENV}={quoted(study.study_name)}",
                         f"++hydra.job.env_set.{TRIAL_ENV}={trial.number}")
            if batches and batches[-1][0] + len(batches[-1][1]) == trial.number:
                batches[-1][1].append(overrides)
            else:
                batches.append((trial.number, [overrides]))
        returns = []
        for first, overrides in batches:
            self.validate_batch_is_legal(overrides)
            returns += self.launcher.launch(overrides, initial_job_idx=first)
        failed, interrupted = 0, None
        for trial, ret in zip(trials, returns, strict=True):
            said = io.StringIO()  # Hydra's "Error executing job with overrides" line: none for a pruned trial
            try:
                with contextlib.redirect_stderr(said):
                    value = ret.return_value  # raises the job's error
            except JobPruned:
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                continue
            except RunStopped as err:  # Ctrl-C (keep_sweeping lets only "interrupted" through)
                sys.stderr.write(said.getvalue())
                interrupted = err
                continue
            except Exception as err:  # a job failed (JobFailed: bad value, diverged, ...): the search goes on
                sys.stderr.write(said.getvalue())
                value = err
            if isinstance(value, (int, float)) and math.isfinite(value):
                study.tell(trial, float(value))
            else:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                log.warning("trial %d failed: %s", trial.number,
                            value if isinstance(value, BaseException) else f"it returned {value!r}")
                failed += 1
        return failed, interrupted

    def report(self, study) -> None:
        """Log the best trial, write <sweep dir>/optimization_results.yaml (read by mnist_lit.summarize)."""
        import optuna

        states = [t.state for t in counted(study)]
        counts = {s.name.lower(): states.count(s) for s in optuna.trial.TrialState if s in states}
        complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if not complete:
            log.warning("no trial completed (%s)", counts)
            return
        best = study.best_trial
        results = {"name": "optuna", "study_name": study.study_name, "storage": self.storage_url(),
                   "best_trial": best.number, "best_params": best.params, "best_value": best.value,
                   "trials": counts}
        path = Path(self.config.hydra.sweep.dir) / "optimization_results.yaml"
        OmegaConf.save(OmegaConf.create(results), path)
        log.info("Best parameters (trial %d, %s): %s", best.number, counts, best.params)
        log.info("Best value: %s", best.value)


def counted(study) -> list:
    """The trials that count towards n_trials: finished ones, those a dead sweep interrupted excepted."""
    import optuna

    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
    return [t for t in study.get_trials(deepcopy=False, states=states) if "interrupted" not in t.user_attrs]


def retry_interrupted(study) -> None:
    """Trials left RUNNING by a sweep that died: marked failed (user attr `interrupted`) and asked again with
    the same parameters. One sweeper per study at a time: its own trials are the only RUNNING ones."""
    import optuna

    for frozen in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        trial = optuna.trial.Trial(study, frozen._trial_id)
        trial.set_user_attr("interrupted", True)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        study.enqueue_trial(frozen.params, user_attrs={"retry_of": frozen.number})
        log.warning("trial %d was left running by an earlier sweep: marked failed, retried with the same "
                    "parameters", frozen.number)
