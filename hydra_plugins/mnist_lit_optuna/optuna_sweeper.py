"""A Hydra Sweeper on Optuna's ask-and-tell with asynchronous workers: it starts hydra.sweeper.n_jobs worker
jobs through any launcher (basic: one, in this process; joblib: processes; submitit: SLURM jobs); each worker
asks the study for a trial as soon as its last one ended, runs it as a Hydra job, tells the study how it ended
(complete, pruned, failed), until the study has n_trials (mnist_lit/search/worker.py).

- The study lives in a storage (default: the journal file <sweep dir>/optuna.journal), so running the sweep
  again with the same folder continues it up to n_trials, and several sweeper processes started on the same
  storage share it: heartbeats tell a dead process's running trials, which are run again.
- A grid (hydra.sweeper.grid=true, hparams_search=optuna_grid): every combination of the space's lists is
  enqueued once, and the workers take them in order; n_trials is their number.
- Trial k runs in job folder <sweep dir>/k; its job finds the trial through three environment variables
  (mnist_lit/search/trial.py) and reports val/acc every epoch to the pruner.
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import warnings
from pathlib import Path
from typing import Any

from hydra.core.plugins import Plugins
from hydra.errors import CompactHydraException
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, ListConfig, OmegaConf

log = logging.getLogger(__name__)


class SearchError(CompactHydraException):
    """A mistake in the search's setup (Hydra prints only the message)."""


class OptunaSweeper(Sweeper):
    def __init__(self, sampler: Any, pruner: Any, direction: str | list[str], study_name: str,
                 storage: str | None, n_trials: int, n_jobs: int, heartbeat_interval: float,
                 max_failure_rate: float, grid: bool, params: DictConfig | None) -> None:
        self.sampler, self.pruner, self.grid = sampler, pruner, grid
        from mnist_lit.search.study import directions

        self.directions = directions(direction)
        self.study_name, self.storage = study_name, storage
        self.n_trials, self.n_jobs, self.heartbeat_interval = n_trials, n_jobs, heartbeat_interval
        self.max_failure_rate = max_failure_rate
        self.params = OmegaConf.to_container(params) if params else {}

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def storage_url(self) -> str:
        from mnist_lit.search.study import default_storage

        if self.storage is None:
            return default_storage(Path(self.config.hydra.sweep.dir))
        # a journal file: the same file whichever folder a worker starts in
        return self.storage if "://" in self.storage else str(Path(self.storage).absolute())

    def metrics(self) -> list[str]:
        metric = self.config.get("optimized_metric")
        return [str(m) for m in metric] if isinstance(metric, ListConfig) else [str(metric)]

    def check(self) -> None:
        from mnist_lit.config.schema import optimized_metric_problem

        metrics = self.metrics()
        problem = optimized_metric_problem(metrics)  # before any trial: each would fail on it
        if problem:
            raise SearchError(problem + ".")
        for metric in metrics:
            if metric in ("", "None") or metric.startswith("test/"):
                raise SearchError(f"optimized_metric={metric}: the search must optimize a validation metric "
                                  "(e.g. val/acc_best); the test set is looked at only by "
                                  "python -m mnist_lit.confirm.")
        if len(metrics) != len(self.directions) or not set(self.directions) <= {"maximize", "minimize"}:
            raise SearchError(f"hydra.sweeper.direction={self.directions} and optimized_metric={metrics}: "
                              "give one direction (maximize or minimize) per metric, in the same order, e.g. "
                              "hydra.sweeper.direction=[maximize,minimize] optimized_metric=[val/acc_best,"
                              "model/params].")
        if self.n_trials < 1 or self.n_jobs < 1 or not 0 <= self.max_failure_rate <= 1 \
                or not self.heartbeat_interval > 0:
            raise SearchError(f"hydra.sweeper: n_trials={self.n_trials} and n_jobs={self.n_jobs} must be "
                              f">= 1, max_failure_rate={self.max_failure_rate} in [0, 1], heartbeat_interval="
                              f"{self.heartbeat_interval} seconds > 0.")

    def open_study(self, url: str):
        import optuna

        from mnist_lit.search.study import shown, storage

        try:
            study = optuna.create_study(study_name=self.study_name, storage=storage(url),
                                        directions=self.directions, load_if_exists=True)
        except (ValueError, ImportError, OSError, optuna.exceptions.OptunaError) as err:
            raise SearchError(f"hydra.sweeper.storage={shown(url)}: cannot open the study: {err}. Give a "
                              "writable folder (hydra.sweep.dir) or a reachable Optuna storage (a database URL "
                              "or a journal file's path).") from None
        had = [d.name.lower() for d in study.directions]
        if had != self.directions:
            raise SearchError(f"the study {self.study_name} in {shown(url)} has direction {had}, not "
                              f"{self.directions}: continue it as it was, or start a new search (another "
                              "hydra.sweep.dir or hydra.sweeper.study_name).")
        with warnings.catch_warnings():  # experimental in Optuna since 3.2, unchanged since
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            # optuna-dashboard and study.trials_dataframe() name the objectives, not "Objective 0"
            study.set_metric_names(self.metrics())
        return study

    def sweep(self, arguments: list[str]) -> None:
        from mnist_lit.errors import RunStopped
        from mnist_lit.search.space import SearchSpaceError, combinations, parse
        from mnist_lit.search.study import shown
        from mnist_lit.search.worker import STOPPED, Search, Worker, counted

        self.check()
        try:
            space, fixed = parse([f"{k}={v}" for k, v in self.params.items()] + list(arguments))
            grid = combinations(space) if self.grid else None
        except SearchSpaceError as err:
            raise SearchError(f"search space (hydra.sweeper.params or the command line): {err}") from None
        if grid is not None:
            self.n_trials = len(grid)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        # as Hydra's basic sweeper: the search's config and overrides, read by resume= and mnist_lit.confirm
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        url = self.storage_url()
        study = self.open_study(url)
        if study.user_attrs.get(STOPPED):  # an earlier run stopped at max_failure_rate: this one decides anew
            study.set_user_attr(STOPPED, None)
        if grid is not None:  # each combination once: one already in the study (an earlier run) is not added
            for params in grid:
                study.enqueue_trial(params, skip_if_exists=True)
            log.info("Grid of %d combinations (n_trials=%d), run in order by the workers; the sampler is not "
                     "asked", len(grid), len(grid))
        search = Search(url=url, study_name=self.study_name, space=space, fixed=fixed, n_trials=self.n_trials,
                        objectives=len(self.directions), max_failure_rate=self.max_failure_rate,
                        heartbeat_interval=self.heartbeat_interval)
        launcher = Plugins.instance().instantiate_launcher(
            config=self.config, hydra_context=self.hydra_context,
            task_function=Worker(search, self.hydra_context, self.config, self.task_function))
        workers = 1 if type(launcher).__name__ == "BasicLauncher" else self.n_jobs
        log.info("Study %s in %s: %d of %d trials done; sampler %s, pruner %s; %d worker(s). Watch it with: "
                 "optuna-dashboard %s", self.study_name, shown(url),
                 len(counted(study.get_trials(deepcopy=False))), self.n_trials, type(self.sampler).__name__,
                 type(self.pruner).__name__, workers, shown(url))
        if workers < self.n_jobs:
            log.info("hydra.sweeper.n_jobs=%d: the basic launcher runs one worker, its trials one after "
                     "another (hydra/launcher=joblib runs %d at once)", self.n_jobs, self.n_jobs)
        if len(self.directions) > 1 and type(self.pruner).__name__ != "NopPruner":
            log.info("pruning off: Optuna prunes no search of several objectives (%d here), so the pruner %s "
                     "is not asked", len(self.directions), type(self.pruner).__name__)
        # a job's config is composed from Hydra's overrides and these alone: the command line's fixed ones
        # too. Each worker's own log in <sweep dir>/workers/<i>/, and no .hydra/ there: it is no training job
        jobs = [[*(f"{k}={v}" for k, v in fixed.items()), f"hydra.sweep.subdir=workers/{i}",
                 "hydra.output_subdir=null"] for i in range(workers)]
        self.validate_batch_is_legal(jobs)
        interrupted, stopped = None, None
        for ret in launcher.launch(jobs, initial_job_idx=0):
            said = io.StringIO()  # Hydra's "Error executing job with overrides" line
            try:
                with contextlib.redirect_stderr(said):
                    stopped = stopped or ret.return_value["stopped"]
            except RunStopped as err:  # Ctrl-C: each worker has enqueued its trial to run again
                sys.stderr.write(said.getvalue())
                interrupted = err
        if interrupted is not None:
            raise interrupted
        if stopped:
            raise SearchError(f"{stopped}; see python -m mnist_lit.summarize {sweep_dir}")
        self.report(study)

    def report(self, study) -> None:
        """Log the best trial (of several objectives: the Pareto front), write <sweep dir>/
        optimization_results.yaml (read by mnist_lit.summarize)."""
        import optuna

        from mnist_lit.search.worker import counted

        states = [t.state for t in counted(study.get_trials(deepcopy=False))]
        counts = {s.name.lower(): states.count(s) for s in optuna.trial.TrialState if s in states}
        complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if not complete:
            log.warning("no trial completed (%s)", counts)
            return
        results: dict[str, Any] = {"name": "optuna", "study_name": study.study_name,
                                   "storage": self.storage_url(), "trials": counts}
        if len(self.directions) > 1:
            front = sorted(study.best_trials, key=lambda t: t.number)
            results["pareto_front"] = [{"number": t.number, "values": t.values, "params": t.params}
                                       for t in front]
            log.info("Pareto front (%d of the trials; %s; %s):", len(front), counts,
                     ", ".join(f"{d} {m}" for d, m in zip(self.directions, self.metrics(), strict=True)))
            for t in front:
                log.info("  trial %d: %s; %s", t.number, ", ".join(
                    f"{m}={v:.6g}" for m, v in zip(self.metrics(), t.values, strict=True)), t.params)
        else:
            best = study.best_trial
            results.update(best_trial=best.number, best_params=best.params, best_value=best.value)
            log.info("Best parameters (trial %d, %s): %s", best.number, counts, best.params)
            log.info("Best value: %s", best.value)
        path = Path(self.config.hydra.sweep.dir) / "optimization_results.yaml"
        OmegaConf.save(OmegaConf.create(results), path)
