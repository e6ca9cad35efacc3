"""A training job inside a Hydra sweep: a failing job is recorded and the sweep goes on with the others."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from hydra.errors import CompactHydraException

from mnist_lit.errors import RunStopped, UserError, user_error_of

log = logging.getLogger(__name__)
T = TypeVar("T")


class JobFailed(CompactHydraException):
    """One sweep job's error, handed to Hydra as a plain exception (Hydra prints only its message)."""


class JobPruned(CompactHydraException):
    """A job its search's pruner stopped (metrics.json: status pruned), as the sweeper receives it: it tells
    Optuna the trial was pruned."""


def error_message(err: BaseException) -> str:
    user_error = user_error_of(err)
    return str(user_error) if user_error is not None else f"{type(err).__name__}: {err}"


def record_failure(out_dir: Path, err: BaseException) -> None:
    """Leave metrics.json with status "failed" and the error, unless the run already wrote its own status."""
    path = out_dir / "metrics.json"
    if not path.is_file():
        path.write_text(json.dumps({"status": "failed", "error": error_message(err)}, indent=2) + "\n")


# per-job figures a sweep of short jobs need not draw: curves.png cost a 1-epoch job about as much CPU as half
# its training (matplotlib's savefig); TensorBoard has every job's curves side by side, and
# `python -m mnist_lit.evaluate run_dir=<job>` draws a job's confusion matrix and misclassified digits
SWEEP_JOB_SKIPS = ("learning_curves", "test_images")


def drop_figures(cfg) -> None:
    from omegaconf import open_dict

    if cfg.get("callbacks"):
        with open_dict(cfg):
            for name in SWEEP_JOB_SKIPS:
                cfg.callbacks.pop(name, None)


def sweep_keys() -> list[str]:
    """The config keys the Hydra multirun running this job varies: its command line's sweep overrides (from
    the sweep's multirun.yaml, written when it starts) and its sweeper's params (an Optuna search's space).
    None outside a multirun. Only the keys are read: nothing of the file is built."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from hydra.types import RunMode

    from mnist_lit.runs.checkpoint import read_sweep_record

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return []
    hydra_cfg = HydraConfig.get()
    keys = [str(key) for key in (hydra_cfg.sweeper.get("params") or {})]
    sweep_dir = Path(hydra_cfg.runtime.cwd, hydra_cfg.sweep.dir)  # sweep.dir may be relative
    try:
        record = read_sweep_record(sweep_dir)
        if record is None:
            raise UserError("it has no multirun.yaml")
        overrides = OverridesParser.create().parse_overrides(record.task_overrides)
        keys += [o.key_or_group for o in overrides if o.is_sweep_override()]
    except (UserError, HydraException) as err:
        log.warning("%s: the sweep's overrides cannot be read (%s); TensorBoard's HPARAMS table will not put "
                    "the swept values first.", sweep_dir, err)
    return keys


def keep_sweeping(task: Callable[..., T]) -> Callable[..., T]:
    """Wraps a Hydra task function so that, in a multirun, one job's error does not end the sweep.

    report_user_errors (outside this wrapper) turns a UserError into a SystemExit, which Hydra does not
    catch: it would stop the sweep at the failing job. In a multirun the error reaches it as a JobFailed
    instead, which it lets through; Hydra's launchers (basic, joblib, submitit) record the job as failed,
    run the remaining jobs, and the sweep exits with that error at the end; the Optuna sweeper marks the
    trial failed. A single run, and an interrupted job (Ctrl-C stops the whole sweep), are unchanged.
    """

    @functools.wraps(task)
    def wrapper(cfg):
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hydra_cfg = HydraConfig.get()
        if hydra_cfg.mode != RunMode.MULTIRUN:
            return task(cfg)
        drop_figures(cfg)
        try:
            return task(cfg)
        except Exception as err:
            if isinstance(err, RunStopped) and err.status == "interrupted":
                raise
            if isinstance(err, RunStopped) and err.status == "pruned":  # not a failure
                log.info("job %s: %s", hydra_cfg.job.num, err)
                raise JobPruned(str(err)) from None
            from lightning.pytorch.utilities import rank_zero_only

            out_dir = Path(hydra_cfg.runtime.output_dir)
            if rank_zero_only.rank == 0:
                record_failure(out_dir, err)
            log.error("job %s failed: %s", hydra_cfg.job.num, error_message(err))
            # `from None`: report_user_errors looks for a UserError among the causes and would exit
            raise JobFailed(
                f"job {hydra_cfg.job.num} failed: {error_message(err)} ({out_dir}/metrics.json). The other "
                f"jobs ran on; see them all with: python -m mnist_lit.summarize {hydra_cfg.sweep.dir}"
            ) from None

    return wrapper
