"""Run folders and attempts: runs never share a folder, and a job that starts again continues its own work.

- `ClaimRunDir` (a Hydra callback): a run or sweep folder named from the clock is claimed with an exclusive
  mkdir, so two runs started in the same second get two folders (`<time>`, `<time>_1`); a folder named on the
  command line that already holds another run is refused, unless the command is that run's `resume=`.
- `continue_attempts` (wraps the task function): a sweep job that starts in a folder holding its own earlier
  attempt (SLURM requeued it, or `-m resume=<sweep dir>` reruns the sweep) decides from that attempt's
  metrics.json and checkpoints: completed -> left alone, its recorded metric returned; interrupted (or
  killed) with a `checkpoints/last.ckpt` -> continued from it at the exact step; failed or nothing to
  continue -> started clean, the earlier files moved to `previous_attempts/<n>/`.
- On SLURM through submitit: the preemption/time-limit signal (SIGUSR2) stops training like SIGTERM, at a
  step boundary with a resumable checkpoint, and then submitit requeues the job; Lightning's own SLURM
  auto-requeue (which would also catch the signals, and loads its checkpoints with pickles) is switched off.
- `run_resume` and `sweep_resume`: what `resume=` means for a run's folder and a grid sweep's
  (mnist_lit/cli/resume.py chooses).
"""

from __future__ import annotations

import functools
import logging
import os
import re
import shutil
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from mnist_lit.config.overrides import override_key
from mnist_lit.errors import RunStopped, UserError
from mnist_lit.runs.allowlist import SAFE_HYDRA_KEYS, check_override, refusal
from mnist_lit.runs.checkpoint import first_sentence, read_metrics, read_recorded_overrides, read_sweep_record
from mnist_lit.files import unwritable
from mnist_lit.runs.objectives import objective_values

log = logging.getLogger(__name__)
T = TypeVar("T")

# what a run leaves in its folder besides Hydra's own .hydra/ and the appended train.log
KEPT_ACROSS_ATTEMPTS = {".hydra", "train.log", "previous_attempts"}


# ---------------------------------------------------------------------------------------- run folders

def holds_run(folder: Path) -> bool:
    """Whether `folder` holds a training run's results: checkpoints, or a metrics.json. Not one of a run
    interrupted before its first checkpoint: it has nothing to keep, and its message says to run the command
    again."""
    if any((folder / "checkpoints").glob("*.ckpt")):
        return True
    if not (folder / "metrics.json").is_file():
        return False
    metrics = read_metrics(folder)
    return not (metrics.get("status") == "interrupted" and not metrics.get("resume_checkpoint"))


def holds_sweep(folder: Path) -> bool:
    """Whether `folder` holds a sweep that started a job: a job's folder (or submitit's of queued jobs) beside
    its multirun.yaml, or a job's results. A multirun.yaml alone is a sweep refused at its first job's config
    (a misspelt key): the corrected command may take the folder."""
    started = (folder / "multirun.yaml").is_file() and any(child.is_dir() for child in folder.iterdir())
    return started or any(holds_run(job) for job in folder.glob("*/"))


def _claim(folder: str) -> str:
    """An exclusive mkdir of `folder`, else `folder_1`, `folder_2`, ...: the first that no one else made."""
    Path(folder).parent.mkdir(parents=True, exist_ok=True)
    for n in range(10_000):
        candidate = folder if n == 0 else f"{folder}_{n}"
        try:
            os.mkdir(candidate)
            return candidate
        except FileExistsError:
            continue
    raise UserError(f"{folder}: 10,000 runs already use this name; choose another: hydra.run.dir=<folder>.")


_HELD: dict[Path, int] = {}  # the folders whose lock this process holds (until it ends), their lock files


def hold(folder: Path) -> bool:
    """Take `folder`'s lock (`.lock` in it) for the rest of this process; False if another process has it."""
    import fcntl

    if os.environ.get("LOCAL_RANK", "0") != "0" or folder.resolve() in _HELD:  # DDP: rank 0 holds it
        return True
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        return True  # not writable: ClaimRunDir says so in one line
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    _HELD[folder.resolve()] = fd
    return True


def held_folder() -> Path | None:
    """The first folder this process holds: its run's, or in a sweep's own process the sweep's."""
    return next(iter(_HELD), None)


def sweep_end_message(err: Exception) -> str | None:
    """How a sweep ended, where Hydra would print a traceback (a joblib worker killed) or the first failed
    job's error alone: which jobs failed, and what to do. None for anything else."""
    sweep = held_folder()
    kind = type(err).__name__  # joblib's, submitit's and mnist_lit.search.sweep's: none is imported here
    if kind == "FailedJobError":  # submitit's: sbatch refused the jobs
        reason = str(err).strip().splitlines()[-1] if str(err).strip() else "no reason given"
        return (f"the cluster did not take the sweep's jobs ({reason}). Check that SLURM answers here "
                "(sinfo), or run the sweep on this machine: hydra/launcher=joblib.")
    if sweep is None or kind not in ("TerminatedWorkerError", "JobFailed"):
        return None
    see = f"See them all with: python -m mnist_lit.summarize {sweep}"
    if kind == "TerminatedWorkerError":
        codes = str(err).rpartition("exit codes of the workers are ")[2].splitlines()[0].strip(" .{}")
        return (f"a worker process of the sweep {sweep} was killed ({codes or 'by a signal'}; the "
                "kernel's out-of-memory killer and kill -9 stop a process that way), and joblib then stopped "
                "the sweep. Its finished jobs are kept; the job that worker ran is not. "
                f"{see}; run the rest with: python -m mnist_lit.train -m resume={sweep}. If memory ran out, "
                "run fewer at once (hydra.launcher.n_jobs).")
    jobs = sorted((job for job in sweep.iterdir() if job.name.isdigit()), key=lambda job: int(job.name))
    ended = [(job.name, read_metrics(job)) for job in jobs]
    failed = [f"job {name} ({m['status']}: {first_sentence(str(m['error']))})"
              for name, m in ended if m.get("status") in ("failed", "diverged") and m.get("error")]
    if not failed:
        return None
    others = " The other jobs ran on." if len(failed) < len(jobs) else ""
    return (f"{len(failed)} of the {len(jobs)} jobs of the sweep {sweep} ended early: {'; '.join(failed)}."
            f"{others} {see}")


_RECORDED: dict[Path, bytes | None] = {}  # a resumed run's .hydra files as they were (None: not there)


def keep_recorded(folder: Path) -> None:
    """Remember `folder`'s .hydra files before Hydra writes the resumed run's over them."""
    for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
        path = folder / ".hydra" / name
        _RECORDED[path] = path.read_bytes() if path.is_file() else None


def put_back_recorded() -> None:
    """A refused resume leaves the run's folder as it was: its .hydra files as before the command."""
    for path, content in _RECORDED.items():
        if content is None:
            path.unlink(missing_ok=True)
        else:
            path.write_bytes(content)


def in_use(what: str, folder: Path) -> str:
    return (f"{what} {folder} is in use: another process is continuing it (it holds {folder / '.lock'}). "
            "Wait for that one to end, or stop it (Ctrl-C), then continue again; two at once would write the "
            "same checkpoints.")


def continues_search(config: DictConfig, folder: Path) -> bool:
    """An Optuna search started again on the folder of its own study: it continues that study (the same
    command again, as well as `-m resume=`), so the folder is its own."""
    return is_search(config) and any((folder / name).is_file() for name in ("optuna.journal", "optuna.db"))


def is_search(config: DictConfig) -> bool:
    """An Optuna search: several sweeper processes may share its folder (and its study)."""
    return "mnist_lit_optuna" in str(OmegaConf.select(config, "hydra.sweeper._target_", default="") or "")


class ClaimRunDir(Callback):
    """Gives every run and sweep a folder of its own (see the module docstring), and refuses one that is
    empty or cannot be written, in one line, before Hydra writes into it. conf/train.yaml lists it first."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._settle(config, "run")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._settle(config, "sweep")
        folder = str(config.hydra.sweep.dir)

        def interrupted(signum: int, frame: Any) -> None:
            # the jobs got the same Ctrl-C and each saves a resumable checkpoint (or its result) itself
            os.write(2, f"\nstopped: interrupted (Ctrl-C); each running job saves a resumable checkpoint. "
                        f"Continue the sweep with: python -m mnist_lit.train -m resume={folder}\n".encode())
            os._exit(130)

        signal.signal(signal.SIGINT, interrupted)

    @staticmethod
    def _settle(config: DictConfig, kind: str) -> None:
        node = config.hydra[kind]
        folder, key = str(node.dir), f"hydra.{kind}.dir"
        if not folder.strip():  # Hydra would write into the current folder
            _refuse(f"{key} is empty: give the run a folder of its own, or leave {key} out (a fresh "
                    "timestamped folder).")
        if "${now:" in str(node._get_node("dir")._value()):  # named from the clock: claim a fresh one
            try:
                claimed = _claim(folder)
            except OSError as err:
                _refuse(_cannot_write(folder, str(err.strerror or err), key))
            hold(Path(claimed))
            if claimed != folder:
                with read_write(config.hydra), open_dict(config.hydra):
                    node.dir = claimed
                    # sweep jobs compose their config anew from these overrides: they must see the claim too
                    config.hydra.overrides.hydra.append(f"hydra.{kind}.dir={claimed}")
            return
        resume = config.get("resume")
        is_resume = resume is not None and Path(str(resume)).resolve() == Path(folder).resolve()
        # a sweep's folder refused to a single run and a run's to a sweep as well: each continues as its kind
        held = "sweep" if holds_sweep(Path(folder)) else "run" if holds_run(Path(folder)) else None
        search = held == kind == "sweep" and not is_resume and continues_search(config, Path(folder))
        if held and not is_resume and not search:
            what = "a sweep" if held == "sweep" else \
                f"{'another' if kind == 'run' else 'a'} run (metrics.json or checkpoints)"
            again = f"python -m mnist_lit.train {'-m ' if held == 'sweep' else ''}resume={folder}"
            _refuse(f"hydra.{kind}.dir={folder} already holds {what}; a new {kind} never writes over it. "
                    f"Choose another folder, leave hydra.{kind}.dir out (a fresh timestamped folder), or "
                    f"continue that {held} with: {again}")
        reason = unwritable(folder)
        if reason is not None:
            _refuse(_cannot_write(folder, reason, key))
        # a run still training there, or another resume of it; a search's folder is shared by its processes
        if not hold(Path(folder)) and not (kind == "sweep" and is_search(config)):
            _refuse(in_use(kind, Path(folder)))
        if search:
            print(f"continuing the Optuna search of {folder} (its study is in that folder)", file=sys.stderr)
        if is_resume and kind == "run":
            keep_recorded(Path(folder))



def _cannot_write(folder: str, reason: str, key: str) -> str:
    return f"cannot write the run folder {folder}: {reason}. Choose a writable folder with {key}=<folder>."


def _refuse(message: str) -> NoReturn:
    # Hydra turns a callback's exception into a warning and goes on, so the callback exits itself
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(1)


# ------------------------------------------------------------------------------------------- attempts

def set_aside(folder: Path) -> Path | None:
    """Move an earlier attempt's files into previous_attempts/<n>/ (nothing already written is lost)."""
    leftovers = [p for p in folder.iterdir()
                 if p.name not in KEPT_ACROSS_ATTEMPTS and not p.name.startswith(".")]
    if not leftovers:
        return None
    n = len(list((folder / "previous_attempts").glob("*")))
    target = folder / "previous_attempts" / str(n)
    target.mkdir(parents=True)
    for path in leftovers:
        shutil.move(str(path), str(target / path.name))
    return target


def prepare_attempt(cfg: DictConfig, out_dir: Path, job: str) -> dict | None:
    """Look at what an earlier attempt of this job left in `out_dir`; returns its metrics if it completed."""
    metrics = read_metrics(out_dir)
    status = metrics.get("status")
    last = out_dir / "checkpoints" / "last.ckpt"
    if status == "completed":
        log.info("%s completed in an earlier attempt: left alone (%s/metrics.json)", job, out_dir)
        return metrics
    if status == "diverged":  # deterministic: it would diverge again
        raise RunStopped(f"{job} diverged in an earlier attempt ({metrics.get('error')}); not run again. "
                         "Start a new sweep with a lower learning rate.", "diverged")
    if status in (None, "interrupted") and last.is_file():
        where = (f"epoch {metrics['epochs']}, step {metrics['steps']}" if "steps" in metrics
                 else "its last checkpoint; the earlier attempt was killed")
        log.info("%s: continuing its earlier attempt from %s (%s)", job, last, where)
        with read_write(cfg), open_dict(cfg):
            cfg.ckpt_path = str(last)
        return None
    moved = set_aside(out_dir) if out_dir.is_dir() else None
    if moved is not None:
        what = f"failed ({metrics.get('error')})" if status == "failed" else "left nothing to continue"
        log.info("%s: its earlier attempt %s; starting it again (its files moved to %s)", job, what, moved)
    return None


class PreemptionStopsTraining:
    """Inside a submitit job: submitit's preemption/time-limit signal (SIGUSR2 by default) goes to the
    SIGTERM handler of the moment (during training: a clean stop at the next step boundary, with a resumable
    checkpoint). `requeue()` afterwards hands the signal to submitit's own handler, which asks SLURM to
    requeue the job and exits."""

    def __init__(self):
        name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
        self.signum = getattr(signal, f"SIG{name}", None) if "SUBMITIT_FOLDER" in os.environ else None
        self.came, self.previous = False, None

    def __enter__(self) -> PreemptionStopsTraining:
        if self.signum is not None:
            self.previous = signal.signal(self.signum, self._forward)
        return self

    def __exit__(self, *exc) -> None:
        if self.signum is not None:
            signal.signal(self.signum, self.previous)

    def _forward(self, signum: int, frame: Any) -> None:
        self.came = True
        handler = signal.getsignal(signal.SIGTERM)
        if callable(handler):
            handler(signum, frame)

    def requeue(self) -> None:
        if self.came and callable(self.previous):
            # the requeue makes SLURM send SIGTERM to the whole job, its own `scontrol requeue` child too:
            # ignored (and so by that child) it cannot cut the requeue short
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            self.previous(self.signum, None)


def continue_attempts(task: Callable[[DictConfig], T]) -> Callable[[DictConfig], T]:
    """Wraps the task function: a sweep job continues its own earlier attempt (see the module docstring)."""

    @functools.wraps(task)
    def wrapper(cfg: DictConfig):
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hydra_cfg = HydraConfig.get()
        if hydra_cfg.mode != RunMode.MULTIRUN:
            if not cfg.get("resume"):
                return task(cfg)
            log.info("resume=%s: continuing the run in its own folder from %s", cfg.resume, cfg.ckpt_path)
            if read_metrics(Path(str(cfg.resume))).get("status") == "completed":
                log.info("resume=%s: the run had completed; it trains only up to a new trainer.max_epochs "
                         "given here, and is tested again", cfg.resume)
            try:
                return task(cfg)
            except UserError:
                put_back_recorded()
                raise
        out_dir = Path(hydra_cfg.runtime.output_dir)
        if not hold(out_dir):  # a requeued SLURM job beside a `-m resume=` of its sweep, say
            raise UserError(in_use(f"job {hydra_cfg.job.num}: its folder", out_dir))
        done = prepare_attempt(cfg, out_dir, f"job {hydra_cfg.job.num}")
        if done is not None:
            return objective_values(done.get("metrics", {}), cfg.get("optimized_metric"))
        preemption = PreemptionStopsTraining()
        try:
            with preemption:
                return task(cfg)
        except RunStopped as err:
            if err.status == "interrupted" and preemption.came:
                print(f"stopped: {err}", file=sys.stderr)
                preemption.requeue()  # submitit: checkpoint() + scontrol requeue, then exits
            # otherwise (SIGTERM) SLURM has requeued or cancelled the job itself; the exit that follows
            # (report_user_errors) records no result, so the sweep waits for the job's next attempt
            raise

    return wrapper


def cluster_plugins() -> list:
    """Under SLURM, Lightning's SLURM environment without its auto-requeue: submitit requeues the job
    (launcher and checkpoint() from hydra-submitit-launcher), and mnist-lit continues it from last.ckpt."""
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    return [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []


# ------------------------------------------------------------------------------------------ sweep resume

# the recorded Hydra options a resumed sweep repeats: the launcher and its resources. Others (a launcher's
# `setup` lines, `_target_`s, callbacks, search paths) could run code, and a sweep folder may come from anyone
LAUNCHER_GROUPS = {"hydra/launcher", "hydra/sweeper", "hydra.mode"}
LAUNCHER_KEYS = {
    "timeout_min", "cpus_per_task", "gpus_per_node", "tasks_per_node", "mem_gb", "nodes", "name", "partition",
    "qos", "comment", "constraint", "exclude", "gres", "cpus_per_gpu", "gpus_per_task", "mem_per_gpu",
    "mem_per_cpu", "account", "array_parallelism", "max_num_timeout", "signal_delay_s", "n_jobs", "backend",
    "prefer", "verbose", "pre_dispatch", "batch_size",
}


def check_recorded(override: str, source: str) -> None:
    """Refuse a recorded sweep override that could run code (mnist_lit.runs.allowlist's rules, for each value of
    a sweep; for Hydra's options, only the launcher and its resources)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    key = override_key(override)
    if key.split("/")[0].split(".")[0] == "hydra":
        value = override.split("=", 1)[1] if "=" in override else ""
        resource = key.removeprefix("hydra.launcher.") in LAUNCHER_KEYS
        known = key in LAUNCHER_GROUPS | SAFE_HYDRA_KEYS or resource
        if not (known and re.fullmatch(r"[\w.@:/-]*", value)):
            raise refusal(source, f"the sweep's recorded option {override!r} is not repeated (only the "
                                  "launcher and its resources are); give it on the command line if you trust "
                                  "it")
        return
    parsed = OverridesParser.create().parse_override(override)
    if not parsed.is_sweep_override():
        return check_override(override, source)
    for value in parsed.sweep_string_iterator():
        check_override(f"{parsed.get_key_element()}={value}", source)


def run_resume(run_dir: Path, rest: list[str]) -> list[str]:
    """`resume=<run dir>` -> that run's own overrides, its folder as the run dir and its last.ckpt, then this
    command's other arguments `rest` (which win). Hydra then records the whole config."""
    if (run_dir / "multirun.yaml").is_file():
        raise UserError(f"resume={run_dir} is a sweep's folder: continue the sweep with python -m "
                        f"mnist_lit.train -m resume={run_dir} (or a job of it alone, without -m).")
    last = run_dir / "checkpoints" / "last.ckpt"
    ours = [f"hydra.run.dir='{run_dir}'", f"ckpt_path='{last}'", f"resume='{run_dir}'"]
    given = {override_key(a) for a in ours + rest if "=" in a}
    # the run's own overrides, less those given again here; refused if one could run code
    kept = read_recorded_overrides(run_dir, replaced=given)
    if not last.is_file():
        raise UserError(f"resume={run_dir}: the run has no checkpoints/last.ckpt (it stopped before its "
                        "first checkpoint, or ran with callbacks=none): start it again instead.")
    return kept + ours + rest


def sweep_resume(sweep_dir: Path, rest: list[str]) -> list[str]:
    """`-m resume=<sweep dir> [hydra overrides]` of a grid sweep -> the sweep's own overrides (from its
    multirun.yaml), its launcher and its folder, then `rest`, this command's hydra overrides (which win, e.g.
    another launcher). Hydra then reruns the jobs; each continues its own earlier attempt."""
    record = read_sweep_record(sweep_dir)
    if record is None and holds_run(sweep_dir):
        raise UserError(f"resume={sweep_dir}: not a sweep folder (no multirun.yaml) but a single run's: "
                        f"continue it with python -m mnist_lit.train resume={sweep_dir}, without -m.")
    if record is None:
        raise UserError(f"resume={sweep_dir}: not a sweep folder (no multirun.yaml). Pass the folder of the "
                        "sweep to continue (logs/train/multiruns/<date_time>); for a single run, drop -m.")
    hydra_overrides, task_overrides = record.hydra_overrides, record.task_overrides
    changed = [a for a in rest
               if "=" in a and not override_key(a).startswith("hydra") and a not in task_overrides]
    if changed:
        raise UserError(f"-m resume={sweep_dir} reruns the sweep's unfinished jobs with the sweep's own "
                        f"overrides; it takes only hydra options (e.g. hydra/launcher=joblib) and the "
                        f"sweep's own overrides, not {' '.join(changed)}. Start a new sweep to change them.")
    ours = [f"hydra.sweep.dir='{sweep_dir}'", f"resume='{sweep_dir}'"]
    given = {override_key(a) for a in ours + rest if "=" in a}
    kept = [o for o in hydra_overrides + task_overrides if override_key(o) not in given]
    for override in kept:  # those given again on this command line are the user's own: not checked
        check_recorded(override, str(sweep_dir / "multirun.yaml"))
    flags = [a for a in rest if a.startswith("-")]  # Hydra's parser wants its flags before the overrides
    return flags + kept + ours + [a for a in rest if not a.startswith("-")]
