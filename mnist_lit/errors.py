"""User-facing errors: one paragraph that names the problem and the fix, no traceback."""

from __future__ import annotations

import functools
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

T = TypeVar("T")


class UserError(Exception):
    """A mistake the user can fix (bad config value, missing data, bad checkpoint...)."""

    label, exit_code = "error", 1


class RunStopped(UserError):
    """A run that ended before completing (interrupted, diverged, failed, pruned): metrics.json says how."""

    label = "stopped"

    def __init__(self, message: str, status: str, exit_code: int = 1):
        super().__init__(message)
        self.status, self.exit_code = status, exit_code

    def __reduce__(self):  # [optuna hook] joblib and submitit send a job's error back pickled
        return type(self), (str(self), self.status, self.exit_code)


class CheckRunDir(Callback):
    """A Hydra callback: refuses an output folder that cannot be written, before Hydra writes into it."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        self._check(config.hydra.run.dir, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self._check(config.hydra.sweep.dir, "hydra.sweep.dir")

    @staticmethod
    def _check(folder: str, key: str) -> None:
        try:
            Path(folder).mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as err:
            # Hydra turns a callback's exception into a warning and goes on, so this one exits itself
            print(f"error: cannot write the run folder {folder}: {err.strerror or err}. Choose a writable "
                  f"folder with {key}=<folder>.", file=sys.stderr)
            raise SystemExit(1) from None


def whole_number(cfg: DictConfig, key: str, least: int, most: int | None = None) -> int:
    """`cfg[key]` if it is a whole number in [least, most]; else a UserError saying what it must be."""
    value = cfg.get(key)
    whole = isinstance(value, int) and not isinstance(value, bool)
    if not whole or value < least or (most is not None and value > most):
        span = f"between {least} and {most}" if most is not None else f"at least {least}"
        raise UserError(f"{key}={value!r} must be a whole number {span}.")
    return value


def user_error_of(err: BaseException) -> UserError | None:
    """The UserError behind `err`: itself, or the cause Hydra's instantiate wrapped it in."""
    while err is not None and not isinstance(err, UserError):
        err = err.__cause__
    return err


def report_user_errors(func: Callable[..., T]) -> Callable[..., T]:
    """Print a UserError as one paragraph and exit 1; HYDRA_FULL_ERROR=1 shows the traceback instead."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except KeyboardInterrupt:  # Ctrl-C outside training (loading, testing): nothing to save
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            print("stopped: interrupted (Ctrl-C).", file=sys.stderr)
            raise SystemExit(130) from None
        except Exception as exc:
            err = user_error_of(exc)
            if err is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            print(f"{err.label}: {err}", file=sys.stderr)
            raise SystemExit(err.exit_code) from None

    return wrapper
