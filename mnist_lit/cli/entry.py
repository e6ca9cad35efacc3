"""The entry of every Hydra command: `@command("<config name>")` over a function of the composed config.

It composes the config with Hydra (the schema registered first), reports a user's mistake in one paragraph
with exit code 1 (a command line Hydra cannot compose included), and, after a single run that completed,
exits without the interpreter's slow teardown. A command that trains (`trains=True`) also takes
`resume=<folder>` (mnist_lit/cli/resume.py), and in a sweep each of its jobs continues its own earlier
attempt, and fails alone without ending the sweep.
"""

from __future__ import annotations

import atexit
import functools
import os
import sys
from collections.abc import Callable

import hydra
from omegaconf import DictConfig

from mnist_lit import CONF_DIR
from mnist_lit.cli.resume import expand_resume
from mnist_lit.config import schema
from mnist_lit.config.messages import (
    check_resolves,
    check_shown_config,
    explain_hydra_errors,
    refuse_added_keys_and_non_paths,
    report_user_errors,
)
from mnist_lit.runs.folders import continue_attempts, sweep_end_message
from mnist_lit.search.sweep import keep_sweeping

# in the command's process, and in a launcher's worker process, which imports this module to run a job
schema.register()


def command(config_name: str, trains: bool = False, check: Callable[[DictConfig], object] | None = None
            ) -> Callable[[Callable[[DictConfig], object]], Callable[[], None]]:
    """`python -m mnist_lit.<command> [overrides]`: the decorated function runs once per job. `check` (by
    default: no key added that conf/<config_name>.yaml lacks, and paths given as text) is what a run checks
    first; a command line that prints the config (`--cfg`) goes through it too."""
    check = check or functools.partial(refuse_added_keys_and_non_paths, config_name=config_name)

    def decorate(task: Callable[[DictConfig], object]) -> Callable[[], None]:
        # train checks its config itself (schema.validate), inside what keeps a sweep going
        job = report_user_errors(keep_sweeping(continue_attempts(resolved(task))) if trains
                                 else resolved(task, check))
        finished = []

        @functools.wraps(task)
        def run_job(cfg: DictConfig):
            from hydra.core.hydra_config import HydraConfig
            from hydra.types import RunMode

            result = job(cfg)
            finished.append(HydraConfig.get().mode == RunMode.RUN)
            return result

        composed = hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name=config_name)(run_job)

        def main() -> None:
            if trains:
                report_user_errors(lambda: sys.argv.__setitem__(slice(1, None), expand_resume(sys.argv[1:])))()
            report_user_errors(check_shown_config)(config_name, check, sys.argv[1:])
            explain_hydra_errors(composed, sweep_end_message)()  # errors: SystemExit with their own code
            if finished == [True]:
                exit_without_teardown()

        return main

    return decorate


def resolved(task: Callable[[DictConfig], object], check: Callable[[DictConfig], object] = lambda cfg: None
             ) -> Callable[[DictConfig], object]:
    """`task`, run once every value of its config resolves (check_resolves) and `check` passes."""

    @functools.wraps(task)
    def wrapper(cfg: DictConfig):
        check_resolves(cfg)
        check(cfg)
        return task(cfg)

    return wrapper


def exit_without_teardown() -> None:
    """Exit 0 after a single completed run, skipping the interpreter's teardown of its modules.

    With torch, Lightning, torchvision, scipy and matplotlib loaded (some 3,800 modules) that teardown takes
    1.5-3 s on a 2-core CPU, a tenth of a 10-epoch run, and does nothing for the user: checkpoints,
    metrics.json and TensorBoard files are closed by now (Lightning finalizes its loggers after fit and test),
    and the exit handlers still run (logging's flush and close). A sweep exits as usual: its launchers'
    worker pools shut down in the interpreter's own exit sequence.
    """
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
