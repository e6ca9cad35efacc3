"""The Optuna study of a search: its storage, the folder's study, its best trials, and the command that
continues it (`python -m mnist_lit.train -m resume=<sweep dir>`)."""

from __future__ import annotations

from pathlib import Path

from mnist_lit.config.overrides import override_key
from mnist_lit.errors import UserError
from mnist_lit.runs.allowlist import check_override
from mnist_lit.runs.checkpoint import SweepRecord, read_sweep_record

SWEEPER_TARGET = "hydra_plugins.mnist_lit_optuna.optuna_sweeper.OptunaSweeper"
# how the sweeper tells a job its trial (hydra.job.env_set); read by mnist_lit/search/trial.py
STORAGE_ENV, STUDY_ENV = "MNIST_LIT_OPTUNA_STORAGE", "MNIST_LIT_OPTUNA_STUDY"
TRIAL_ENV = "MNIST_LIT_OPTUNA_TRIAL"
# Hydra config groups a search's recorded overrides may pick an option of (options are ConfigStore names)
SEARCH_GROUPS = frozenset(
    {"hydra/sweeper", "hydra/sweeper/sampler", "hydra/sweeper/pruner", "hydra/launcher"})


JOURNAL, SQLITE = "optuna.journal", "optuna.db"


def default_storage(sweep_dir: Path) -> str:
    """A search's storage when hydra.sweeper.storage is null: Optuna's journal file in the sweep folder (its
    lock is safe on a filesystem that several nodes share, where SQLite's is not); the SQLite file of a
    folder that an older search started keeps its study."""
    sweep_dir = sweep_dir.absolute()
    if (sweep_dir / SQLITE).is_file():
        return f"sqlite:///{sweep_dir / SQLITE}"
    return str(sweep_dir / JOURNAL)


def storage(url: str):
    """An Optuna storage: a database URL (sqlite://, postgresql://, mysql://...) or a journal file's path.
    SQLite waits for a lock instead of failing when parallel trials write at once."""
    import optuna
    import sqlalchemy.exc

    if "://" not in url:
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(url))
    # a server: a connection it dropped while a worker trained is replaced, not reported as an error; a small
    # pool per process, so that many workers stay within the server's max_connections
    engine_kwargs = ({"connect_args": {"timeout": 60}} if url.startswith("sqlite")
                     else {"pool_pre_ping": True, "pool_size": 2, "max_overflow": 2})
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
    except sqlalchemy.exc.OperationalError as err:  # a server unreachable or refusing the URL's login
        raise ValueError(" ".join(str(err.orig).split())) from None


def shown(url: str) -> str:
    """A storage URL as logs and messages show it: a database password as ***."""
    if "://" not in url:
        return url
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def directions(direction) -> list[str]:
    """hydra.sweeper.direction, a string or a list of them (several objectives), as a list."""
    return [direction] if isinstance(direction, str) else [str(d) for d in direction]


def search_config(sweep_dir: Path) -> SweepRecord | None:
    """What the sweep in `sweep_dir` recorded (its multirun.yaml), if it ran mnist-lit's Optuna sweeper."""
    record = read_sweep_record(sweep_dir)
    sweeper = record.hydra.get("sweeper") if record is not None else None
    return record if isinstance(sweeper, dict) and sweeper.get("_target_") == SWEEPER_TARGET else None


def check_search_override(override: object, source: str) -> None:
    """A recorded override of a search, as allowlist.check_override, plus the search's own Hydra settings:
    a sweeper or launcher option, and plain values of hydra.sweeper.* / hydra.launcher.* (no targets)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    key = override_key(str(override))
    if isinstance(override, str) and key.startswith("hydra") and "_target_" not in override \
            and "${" not in override:
        value = OverridesParser.create().parse_override(override).value()
        if key in SEARCH_GROUPS and isinstance(value, str) and value.isidentifier():
            return
        plain = isinstance(value, (str, int, float, bool))
        if key.startswith(("hydra.sweeper.", "hydra.launcher.")) and plain:
            return
    check_override(override, source)


def search_resume(sweep_dir: Path, args: list[str]) -> list[str]:
    """`-m resume=<sweep dir>` of an Optuna search -> its own overrides (Hydra's and the task's), its folder
    as hydra.sweep.dir, then `args` (which win): the sweeper then continues the study up to n_trials."""
    search = search_config(sweep_dir)
    key = override_key
    # hydra.mode: Hydra's record of -m
    given = {key(a) for a in args if "=" in a} | {"hydra.sweep.dir", "hydra.mode", "resume"}
    recorded = [*search.hydra_overrides, *search.task_overrides]
    kept = [o for o in recorded if key(str(o)) not in given]
    for override in kept:
        check_search_override(override, str(sweep_dir / "multirun.yaml"))
    flags = [a for a in args if a.startswith("-")]  # Hydra's argparse wants -m before the overrides
    # resume=: the run-folder claim (mnist_lit/runs/folders.py) lets a search continue in its own folder
    return [*flags, *kept, f"hydra.sweep.dir={sweep_dir}", f"resume={sweep_dir}",
            *(a for a in args if not a.startswith("-"))]


def load_study(sweep_dir: Path):
    """The study a search in `sweep_dir` wrote (its storage and study name from multirun.yaml)."""
    import optuna

    search = search_config(sweep_dir)
    if search is None:
        raise UserError(f"{sweep_dir}: not the folder of an Optuna search (no multirun.yaml naming "
                        "mnist-lit's sweeper). Pass the hydra.sweep.dir of a search: python -m "
                        "mnist_lit.train -m hparams_search=optuna hydra.sweep.dir=<folder>.")
    name = search.hydra["sweeper"].get("study_name")
    url = search.hydra["sweeper"].get("storage") or default_storage(sweep_dir)
    try:
        return optuna.load_study(study_name=name, storage=storage(str(url)))
    except (KeyError, ValueError, optuna.exceptions.OptunaError) as err:
        raise UserError(f"{sweep_dir}: cannot read the study {name!r} from {url}: "
                        f"{err}") from None


def best_trials(study, k: int) -> list:
    """The k best completed trials, best first (of several objectives: by the first, on the Pareto front)."""
    import optuna

    if len(study.directions) > 1:
        done = study.best_trials
    else:
        done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    maximize = study.directions[0] == optuna.study.StudyDirection.MAXIMIZE
    return sorted(done, key=lambda t: t.values[0], reverse=maximize)[:k]
