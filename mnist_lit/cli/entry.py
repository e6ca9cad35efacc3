"""Command-line plumbing around the Hydra entry points: `resume=<run dir>` and the fast exit after a run."""

from __future__ import annotations

import atexit
import os
import sys
from collections.abc import Callable
from pathlib import Path

from mnist_lit.config.messages import explain_hydra_errors, report_user_errors
from mnist_lit.errors import UserError
from mnist_lit.runs.checkpoint import read_recorded_overrides
from mnist_lit.runs.folders import expand_sweep_resume, sweep_end_message  # hook: issue #13


def expand_resume(args: list[str]) -> list[str]:
    """`resume=<run dir>` on the command line -> that run's own overrides, its folder as the run dir and its
    last.ckpt, then this command's other arguments (which win). Hydra then records the whole config."""
    found = [i for i, a in enumerate(args) if a.startswith("resume=")]
    if not found:
        return args
    run_dir = Path(args[found[-1]].split("=", 1)[1]).expanduser()
    if {"-m", "--multirun"} & set(args):  # [optuna hook] an Optuna search's folder: continue its study
        from mnist_lit.search.study import resume_search

        search = resume_search(run_dir, [a for i, a in enumerate(args) if i not in found])
        if search is not None:
            return search
        return expand_sweep_resume(args)  # #13: a grid sweep's folder: rerun its unfinished jobs
    if (run_dir / "multirun.yaml").is_file():
        raise UserError(f"resume={run_dir} is a sweep's folder: continue the sweep with python -m "
                        f"mnist_lit.train -m resume={run_dir} (or a job of it alone, without -m).")
    last = run_dir / "checkpoints" / "last.ckpt"

    def key(arg: str) -> str:
        return arg.split("=", 1)[0].lstrip("+~")

    ours = [f"hydra.run.dir='{run_dir}'", f"ckpt_path='{last}'", f"resume='{run_dir}'"]
    rest = [a for i, a in enumerate(args) if i not in found]
    given = {key(a) for a in ours + rest if "=" in a}
    # the run's own overrides, less those given again here; refused if one could run code
    kept = read_recorded_overrides(run_dir, replaced=given)
    if not last.is_file():
        raise UserError(f"resume={run_dir}: the run has no checkpoints/last.ckpt (it stopped before its "
                        "first checkpoint, or ran with callbacks=none): start it again instead.")
    return kept + ours + rest


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


def run(main: Callable[[], object], single_run_done: Callable[[], bool]) -> None:
    """`python -m mnist_lit.train ...`: expand resume=, run Hydra's main, and leave at once after a single run."""
    report_user_errors(lambda: sys.argv.__setitem__(slice(1, None), expand_resume(sys.argv[1:])))()
    explain_hydra_errors(main, sweep_end_message)()  # errors: SystemExit with their own code (usual teardown)
    if single_run_done():
        exit_without_teardown()
