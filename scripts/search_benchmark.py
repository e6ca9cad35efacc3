"""Idle workers in a parallel Optuna search: one whole `python -m mnist_lit.train -m hparams_search=optuna`
command (n_jobs workers, hydra/launcher=joblib, the median pruner) on the real data, then, from its trials'
job folders (timed.job_times: the study's own trial datetimes would not show a batch's barrier), how much of
the search's wall time its workers spent without a job:

    idle share = 1 - (sum of the jobs' durations) / (workers x span)

where span runs from the first job's start to the last one's end. `idle between trials` leaves out each
worker's wait for the others' last jobs (the search's tail, where no trial is left to run); it needs the
worker recorded on each trial (user attr `worker`, written by the asynchronous sweeper).

    python scripts/search_benchmark.py --root ../shared/mnist          # 16 trials, 2 workers, 3 epochs
    python scripts/search_benchmark.py --trials 8 -- data.batch_size=128         (extra overrides after --)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from timed import job_times, timed

ROOT = Path(__file__).resolve().parent.parent


def idle_shares(times: dict[int, tuple[float, float]], workers: int, worker_of: dict[int, str]) -> dict:
    """Busy and idle time of a search's jobs (number -> start, end)."""
    span = max(end for _, end in times.values()) - min(start for start, _ in times.values())
    busy = sum(end - start for start, end in times.values())
    result = {"span_s": span, "busy_s": busy, "idle_share": 1 - busy / (workers * span)}
    if set(times) <= set(worker_of):
        # from a worker's first job's start to its last one's end: the time it spent between jobs
        gaps = 0.0
        for worker in set(worker_of.values()):
            own = [times[n] for n in times if worker_of[n] == worker]
            gaps += max(e for _, e in own) - min(s for s, _ in own) - sum(e - s for s, e in own)
        result["idle_between_share"] = gaps / (workers * span)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=os.environ.get("MNIST_ROOT", "../shared/mnist"))
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", type=Path, help="sweep folder (default: a temporary one)")
    parser.add_argument("overrides", nargs="*", help="extra overrides for the search (after --)")
    args = parser.parse_args()

    import optuna

    from mnist_lit.search.study import load_study

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="search_benchmark_") as tmp:
        sweep_dir = (args.out or Path(tmp) / "search").absolute()
        cmd = [sys.executable, "-m", "mnist_lit.train", "-m", "hparams_search=optuna",
               f"data.root={args.root}", f"trainer.max_epochs={args.epochs}", "trainer=cpu",
               "hydra/sweeper/pruner=median",
               f"hydra.sweeper.n_trials={args.trials}", f"hydra.sweeper.n_jobs={args.jobs}",
               "hydra/launcher=joblib", f"hydra.launcher.n_jobs={args.jobs}", f"hydra.sweep.dir={sweep_dir}",
               *args.overrides]
        wall, _ = timed(cmd, "search_benchmark: the search")
        study = load_study(sweep_dir)
        trials = study.get_trials(deepcopy=False)
        worker_of = {t.number: t.user_attrs["worker"] for t in trials if "worker" in t.user_attrs}
        shares = idle_shares(job_times(sweep_dir), args.jobs, worker_of)
        states = defaultdict(int)
        for t in trials:
            states[t.state.name.lower()] += 1
        best = study.best_trial
    between = shares.get("idle_between_share")
    print(f"command wall {wall:.1f} s; trials span {shares['span_s']:.1f} s, busy {shares['busy_s']:.1f} s; "
          f"idle {shares['idle_share']:.1%} of {args.jobs} workers x span"
          + (f", {between:.1%} between trials" if between is not None else "")
          + f"; trials {dict(states)}; best {best.value:.4f} (trial {best.number})")
    print(f"| `{' '.join(['python', 'scripts/search_benchmark.py', *sys.argv[1:]])}` | 2-core CPU VM | "
          f"{time.strftime('%Y-%m-%d')} | {wall:.0f} s | {shares['span_s']:.0f} s | "
          f"{shares['idle_share']:.1%} | "
          f"{'n/a' if between is None else f'{between:.1%}'} | "
          f"{', '.join(f'{n} {s}' for s, n in states.items())} | {best.value:.4f} |")


if __name__ == "__main__":
    main()
