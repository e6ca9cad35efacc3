"""`resume=<folder>` on the command line: one expander, with a policy per kind of folder.

- a run's folder (without -m): its recorded overrides, its folder as the run dir and its last.ckpt
  (mnist_lit.runs.folders.run_resume);
- a grid sweep's folder (-m): the sweep's own overrides, launcher and folder; its unfinished jobs run again,
  each from its own earlier attempt (mnist_lit.runs.folders.sweep_resume);
- an Optuna search's folder (-m): its overrides and folder; the sweeper continues its study
  (mnist_lit.search.study.search_resume).

The expanded command line is then Hydra's as if typed, so Hydra records the whole config as usual.
"""

from __future__ import annotations

from pathlib import Path

from mnist_lit.runs.folders import run_resume, sweep_resume
from mnist_lit.search.study import search_config, search_resume


def expand_resume(args: list[str]) -> list[str]:
    """`args` with its (last) `resume=<folder>` expanded by the policy of the folder's kind; the others as given."""
    found = [i for i, a in enumerate(args) if a.startswith("resume=")]
    if not found:
        return args
    folder = Path(args[found[-1]].split("=", 1)[1]).expanduser()
    rest = [a for i, a in enumerate(args) if i not in found]
    if not {"-m", "--multirun"} & set(args):
        return run_resume(folder, rest)
    if search_config(folder) is not None:
        return search_resume(folder, rest)
    return sweep_resume(folder, rest)
