"""A search's worker: takes the next trial from the study as soon as its last one ended, runs it as a Hydra
job in its own process, and tells the study how it ended, until the study has n_trials.

The sweeper (hydra_plugins/mnist_lit_optuna) hands a `Worker` to the launcher as the task of its n_jobs jobs
(basic: one, in the sweeper's process; joblib: n_jobs processes; submitit: n_jobs SLURM jobs): a process pays
its imports once, and no worker waits for another's trial. Any number of sweeper processes may share a study
(two terminals, K SLURM jobs), on any storage:

- the worker running a trial writes a heartbeat into it (user attr `heartbeat`: seconds since the epoch)
  every hydra.sweeper.heartbeat_interval seconds, from a thread. Before asking, a worker fails the RUNNING
  trials whose heartbeat is older than STALE_BEATS intervals (their process died: kill -9, a lost node) and
  asks their parameters again as a new trial (user attr `retry_of`). Only the worker whose state change took
  effect does: the storage refuses to finish a trial twice.
- a worker stopped by Ctrl-C fails its own trial (user attr `interrupted`) and enqueues its parameters at
  once, so that `-m resume=` runs them first, with no wait for a heartbeat to go stale.
- a finished trial counts towards n_trials unless it was run again, or was one too many (user attr `unused`:
  workers that asked for the last trials at the same moment).
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

HEARTBEAT, WORKER, RETRY_OF, INTERRUPTED, UNUSED = "heartbeat", "worker", "retry_of", "interrupted", "unused"
STOPPED = "stopped"  # a study user attr: why a worker stopped the search; the other workers stop as well
# heartbeats a trial may miss before its worker is taken for dead: a loaded machine delays a few
STALE_BEATS = 5


@dataclass
class Search:
    """What every worker knows of its search (pickled to joblib's processes and submitit's jobs)."""

    url: str
    study_name: str
    space: dict
    fixed: dict
    n_trials: int
    objectives: int
    max_failure_rate: float
    heartbeat_interval: float


def counted(trials: list) -> list:
    """The trials that count towards n_trials: finished ones, less those run again and those one too many."""
    import optuna

    state = optuna.trial.TrialState
    finished = (state.COMPLETE, state.PRUNED, state.FAIL)
    retried = {t.user_attrs.get(RETRY_OF) for t in trials}
    return [t for t in trials
            if t.state in finished and t.number not in retried and not t.user_attrs.get(UNUSED)]


def seeded_per_trial(make, seed: int):
    """The configured sampler (`make(seed)`), seeded anew for every trial with seed + its number: a trial's
    random draws are its own whichever worker or process asks for it, so workers sharing a seed never
    propose the same parameters, and a search of one worker proposes the same ones again."""
    from optuna.samplers import BaseSampler

    class SeededPerTrial(BaseSampler):
        def __init__(self) -> None:
            self.sampler = make(seed)

        def before_trial(self, study, trial) -> None:
            self.sampler = make(seed + trial.number)
            self.sampler.before_trial(study, trial)

        def infer_relative_search_space(self, study, trial):
            return self.sampler.infer_relative_search_space(study, trial)

        def sample_relative(self, study, trial, search_space):
            return self.sampler.sample_relative(study, trial, search_space)

        def sample_independent(self, study, trial, param_name, param_distribution):
            return self.sampler.sample_independent(study, trial, param_name, param_distribution)

        def after_trial(self, study, trial, state, values) -> None:
            self.sampler.after_trial(study, trial, state, values)

        def reseed_rng(self) -> None:
            self.sampler.reseed_rng()

    return SeededPerTrial()


def as_values(value: Any, n: int) -> list[float] | None:
    """A job's result as the study's n objective values; None if it is not n finite numbers."""
    values = list(value) if isinstance(value, (list, tuple)) or type(value).__name__ == "ListConfig" \
        else [value]
    if len(values) != n or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
        return None
    return [float(v) for v in values]


def quoted(value: str) -> str:
    """A value as a quoted string of Hydra's override grammar."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class Heartbeat:
    """While a trial runs: its heartbeat in the study now and every `interval` seconds, from a thread."""

    def __init__(self, trial, interval: float) -> None:
        self.trial, self.interval = trial, interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.beat, daemon=True, name=f"heartbeat-{trial.number}")

    def __enter__(self) -> Heartbeat:
        self.trial.set_user_attr(HEARTBEAT, time.time())
        self.thread.start()
        return self

    def beat(self) -> None:
        from optuna.exceptions import OptunaError, UpdateFinishedTrialError

        while not self.stop.wait(self.interval):
            try:
                self.trial.set_user_attr(HEARTBEAT, time.time())
            except UpdateFinishedTrialError:  # another worker took this one for dead and finished the trial
                return
            except (OptunaError, OSError) as err:  # the storage did not answer this time: try again
                log.warning("trial %d: its heartbeat was not written (%s)", self.trial.number, err)

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


class Worker:
    """The task of a search's worker jobs: trials, one after another, until the study has n_trials."""

    def __init__(self, search: Search, hydra_context, config, task_function) -> None:
        self.search, self.hydra_context, self.config = search, hydra_context, config
        self.task_function = task_function

    def sampler(self):
        from hydra.utils import instantiate

        node = self.config.hydra.sweeper.sampler
        seed = node.get("seed")
        if seed is None:
            return instantiate(node)
        return seeded_per_trial(lambda s: instantiate(node, seed=s), int(seed))

    def __call__(self, cfg) -> dict:
        import optuna

        from mnist_lit.search.study import storage

        search = self.search
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        study = optuna.load_study(study_name=search.study_name, storage=storage(search.url),
                                  sampler=self.sampler())
        ran = failed = 0
        while True:
            trials = study.get_trials(deepcopy=False)
            if self.reap(study, trials):
                continue
            stopped = study.user_attrs.get(STOPPED)
            done = len(counted(trials))
            if stopped or done >= search.n_trials:
                return {"ran": ran, "failed": failed, "stopped": stopped}
            running = sum(t.state == optuna.trial.TrialState.RUNNING for t in trials)
            # the last trials run elsewhere: wait, to take them over if their worker dies
            if done + running >= search.n_trials:
                time.sleep(min(search.heartbeat_interval, 2.0))
                continue
            trial = study.ask(search.space)
            if self.one_too_many(study, trial):
                continue
            outcome = self.run(study, trial)
            ran, failed = ran + 1, failed + (outcome == "failed")
            if failed > search.max_failure_rate * ran:
                rate = search.max_failure_rate
                study.set_user_attr(STOPPED, f"{failed} of the {ran} trials of worker {self.name} failed "
                                             f"(more than hydra.sweeper.max_failure_rate={rate})")

    def reap(self, study, trials: list) -> bool:
        """Fail the RUNNING trials whose worker is gone and ask their parameters again; whether any was."""
        import optuna

        stale, now, reaped = self.search.heartbeat_interval * STALE_BEATS, time.time(), False
        for t in trials:
            if t.state != optuna.trial.TrialState.RUNNING:
                continue
            silent = now - t.user_attrs.get(HEARTBEAT, t.datetime_start.timestamp())
            if silent > stale and fail_and_retry(study, t):
                log.warning("trial %d: no heartbeat for %.0f s (its worker %s is gone): marked failed, its "
                            "parameters run again", t.number, silent, t.user_attrs.get(WORKER, "unknown"))
                reaped = True
        return reaped

    def one_too_many(self, study, trial) -> bool:
        """Whether `trial` would take the study beyond n_trials (workers asked at the same moment): if so, it
        is told failed (user attr `unused`) and counts for nothing."""
        import optuna

        trials = study.get_trials(deepcopy=False)
        taken = sorted([t.number for t in trials if t.state == optuna.trial.TrialState.RUNNING]
                       + [t.number for t in counted(trials)])
        if taken.index(trial.number) < self.search.n_trials:
            return False
        trial.set_user_attr(UNUSED, True)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return True

    def overrides(self, trial) -> list[str]:
        from mnist_lit.search.space import to_override
        from mnist_lit.search.study import STORAGE_ENV, STUDY_ENV, TRIAL_ENV

        return [*(f"{k}={v}" for k, v in self.search.fixed.items()),
                *(to_override(k, v) for k, v in trial.params.items()),
                f"++hydra.job.env_set.{STORAGE_ENV}={quoted(self.search.url)}",
                f"++hydra.job.env_set.{STUDY_ENV}={quoted(self.search.study_name)}",
                f"++hydra.job.env_set.{TRIAL_ENV}={trial.number}"]

    def run(self, study, trial) -> str:
        """Trial `trial` as Hydra job <sweep dir>/<its number>, as Hydra's joblib launcher runs a job; told to
        the study. Returns complete, pruned or failed."""
        from hydra.core.hydra_config import HydraConfig
        from hydra.core.utils import configure_log, run_job
        from omegaconf import open_dict

        from mnist_lit.search.space import to_override

        worker_hydra = HydraConfig.get()
        trial.set_user_attr(WORKER, self.name)
        log.info("trial %d: %s", trial.number, " ".join(to_override(k, v) for k, v in trial.params.items()))
        try:
            with Heartbeat(trial, self.search.heartbeat_interval):
                loader = self.hydra_context.config_loader
                config = loader.load_sweep_config(self.config, self.overrides(trial))
                with open_dict(config):
                    config.hydra.job.id = f"{config.hydra.job.name}_{trial.number}"
                    config.hydra.job.num = trial.number
                ret = run_job(hydra_context=self.hydra_context, config=config,
                              task_function=self.task_function, job_dir_key="hydra.sweep.dir",
                              job_subdir_key="hydra.sweep.subdir")
            return self.tell(study, trial, ret)
        except BaseException:  # Ctrl-C, or a bug: the trial is run again when the search continues
            if fail_and_retry(study, study.get_trials(deepcopy=False)[trial.number], interrupted=trial):
                log.warning("trial %d interrupted: marked failed; its parameters run first when the search "
                            "continues", trial.number)
            raise
        finally:
            configure_log(worker_hydra.job_logging, worker_hydra.verbose)  # the worker's log, not the trial's

    def tell(self, study, trial, ret) -> str:
        """Tell the study how the job of `trial` ended, as its JobReturn says."""
        import optuna

        from mnist_lit.errors import RunStopped
        from mnist_lit.search.sweep import JobPruned

        said = io.StringIO()  # Hydra's "Error executing job with overrides" line: none for a pruned trial
        try:
            with contextlib.redirect_stderr(said):
                value = ret.return_value  # raises the job's error
        except JobPruned:
            return told(study, trial, "pruned", state=optuna.trial.TrialState.PRUNED)
        except RunStopped:  # Ctrl-C (keep_sweeping lets only "interrupted" through)
            sys.stderr.write(said.getvalue())
            raise
        except Exception as err:  # a job failed (JobFailed: bad value, diverged, ...): the search goes on
            sys.stderr.write(said.getvalue())
            value = err
        values = as_values(value, self.search.objectives)
        if values is not None:
            return told(study, trial, "complete", values=values)
        log.warning("trial %d failed: %s", trial.number,
                    value if isinstance(value, BaseException) else
                    f"it returned {value!r}, not {self.search.objectives} finite number(s)")
        return told(study, trial, "failed", state=optuna.trial.TrialState.FAIL)


def told(study, trial, outcome: str, **result) -> str:
    """study.tell; a trial that another worker took for dead (its heartbeat came late) and failed is left."""
    try:
        study.tell(trial, **result)
    except (ValueError, RuntimeError) as err:  # "Cannot tell a FAIL trial", or the storage's own refusal
        log.warning("trial %d %s, but the study had it failed already (%s); its parameters ran again",
                    trial.number, outcome, err)
    return outcome


def fail_and_retry(study, frozen, interrupted=None) -> bool:
    """Mark a RUNNING trial failed and enqueue its parameters as a new trial (`retry_of` its number); False if
    it was finished meanwhile (another worker did it, or it ended). `interrupted`: the trial, asked by this
    worker, which it marks so."""
    import optuna

    if frozen.state != optuna.trial.TrialState.RUNNING:
        return False
    try:
        if interrupted is not None:
            interrupted.set_user_attr(INTERRUPTED, True)
        study.tell(frozen.number, state=optuna.trial.TrialState.FAIL)
    except (ValueError, RuntimeError, optuna.exceptions.OptunaError):  # it was finished meanwhile
        return False
    study.enqueue_trial(frozen.params, user_attrs={RETRY_OF: frozen.number})
    return True
