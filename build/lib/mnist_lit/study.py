"""The Optuna study of a search: its storage, the folder's study, its best trials, and the command that
continues it (`python -m mnist_lit.train -m resume=<sweep dir>`)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from mnist_lit.errors import UserError

SWEEPER_TARGET = "hydra_plugins.mnist_lit_optuna.optuna_sweeper.OptunaSweeper"
# how the sweeper tells a job its trial (hydra.job.env_set); read by mnist_lit/optuna_trial.py
STORAGE_ENV, STUDY_ENV, TRIAL_ENV = "MNIST_LIT_OPTUNA_STORAGE", "MNIST_LIT_OPTUNA_STUDY", "MNIST_LIT_OPTUNA_TRIAL"


def storage(url: str):
    """An Optuna storage; SQLite waits for a lock instead of failing when parallel trials write at once."""
    import optuna

    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)


def search_config(sweep_dir: Path):
    """The sweep's multirun.yaml (written when the sweep starts) if it ran mnist-lit's Optuna sweeper."""
    path = sweep_dir / "multirun.yaml"
    if not path.is_file():
        return None
    cfg = OmegaConf.load(path)
    return cfg if OmegaConf.select(cfg, "hydra.sweeper._target_") == SWEEPER_TARGET else None


def resume_search(sweep_dir: Path, args: list[str]) -> list[str] | None:
    """`-m resume=<sweep dir>` of an Optuna search -> its own overrides (Hydra's and the task's), its folder as
    hydra.sweep.dir, then `args` (which win): the sweeper then continues the study up to n_trials.
    None when the folder holds no Optuna search (a grid sweep is another resume's business)."""
    cfg = search_config(sweep_dir)
    if cfg is None:
        return None

    def key(arg: str) -> str:
        return arg.split("=", 1)[0].lstrip("+~")

    given = {key(a) for a in args if "=" in a} | {"hydra.sweep.dir", "resume"}
    recorded = [*cfg.hydra.overrides.hydra, *cfg.hydra.overrides.task]
    flags = [a for a in args if a.startswith("-")]  # Hydra's argparse wants -m before the overrides
    return [*flags, *(o for o in recorded if key(o) not in given), f"hydra.sweep.dir={sweep_dir}",
            *(a for a in args if not a.startswith("-"))]


def load_study(sweep_dir: Path):
    """The study a search in `sweep_dir` wrote (its storage and study name from multirun.yaml)."""
    import optuna

    cfg = search_config(sweep_dir)
    if cfg is None:
        raise UserError(f"{sweep_dir}: not the folder of an Optuna search (no multirun.yaml naming mnist-lit's "
                        "sweeper). Pass the hydra.sweep.dir of a python -m mnist_lit.train -m hparams_search=optuna run.")
    url = cfg.hydra.sweeper.storage or f"sqlite:///{sweep_dir.absolute() / 'optuna.db'}"
    try:
        return optuna.load_study(study_name=cfg.hydra.sweeper.study_name, storage=storage(url))
    except (KeyError, ValueError, optuna.exceptions.OptunaError) as err:
        raise UserError(f"{sweep_dir}: cannot read the study {cfg.hydra.sweeper.study_name!r} from {url}: "
                        f"{err}") from None


def best_trials(study, k: int) -> list:
    """The k best completed trials, best first."""
    import optuna

    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    return sorted(done, key=lambda t: t.value, reverse=maximize)[:k]
