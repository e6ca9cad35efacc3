"""Sweep throughput: the same 4 one-epoch jobs run one after the other (Hydra's basic launcher) and in
parallel (hydra/launcher=joblib, one worker per core, each limited to cores / workers threads).

Both are whole `python -m mnist_lit.train -m ...` commands on the real data, alternated over --reps
repetitions so that a shared machine's noise hits both alike. Reports each sweep's wall time, the jobs' fit
times and test accuracies, the ratio parallel / sequential (below 1: parallel is faster), what a job costs
besides its fit (the sweep's wall minus the fits, per job; for joblib also wall x workers minus the fits,
the workers' busy time), what a warm job costs besides its fit (from the end of its worker's previous job
to its own end, minus its fit: the imports are paid by each worker's first job), and what a fresh process
pays to import what a job needs (a SLURM job pays it once).

    python scripts/sweep_benchmark.py --root ../shared/mnist --reps 1
    python scripts/sweep_benchmark.py --jobs 16 --reps 2
    python scripts/sweep_benchmark.py --reps 2 -- data.batch_size=128     (extra overrides for every job)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

from timed import job_times, timed

ROOT = Path(__file__).resolve().parent.parent
LAUNCHERS = {"sequential": [], "joblib": ["hydra/launcher=joblib"]}
# what a training job imports (mnist_lit/train.py's _train and what it builds)
JOB_IMPORTS = ("mnist_lit.train, lightning.pytorch, mnist_lit.config.building, mnist_lit.runs.record, "
               "mnist_lit.reporting.callbacks, mnist_lit.runs.reliability, mnist_lit.data, mnist_lit.module")


def import_seconds(reps: int = 3) -> list[float]:
    """Wall time of a fresh `python -c "import ..."` of what a job imports, `reps` times."""
    times = []
    for _ in range(reps):
        times.append(timed([sys.executable, "-c", f"import {JOB_IMPORTS}"], "sweep_benchmark: importing")[0])
    return times


def workers(launcher: str, jobs: int) -> int:
    """Processes running jobs at once: hydra/launcher=joblib's n_jobs=-1 is one per core."""
    return min(jobs, os.cpu_count() or 1) if launcher == "joblib" else 1


def overheads(launcher: str, r: dict) -> tuple[float, float]:
    """A job's cost besides its fit: (wall - fits) / jobs, and (wall x workers - fits) / jobs."""
    jobs, fits = len(r["fit_s"]), sum(r["fit_s"])
    return (r["wall_s"] - fits) / jobs, (r["wall_s"] * workers(launcher, jobs) - fits) / jobs


def warm_costs(times: dict[int, tuple[float, float]], fits: list[float]) -> list[float]:
    """Each warm job's cost besides its fit: from its worker's previous job's end to its own end, minus its
    fit (`times`: job -> start, end). A job runs on the worker whose last job ended latest before it started
    (a free worker takes the next job at once)."""
    last_end: list[float] = []  # per worker seen so far: its last job's end
    costs = []
    for i in sorted(times, key=lambda n: times[n][0]):
        start, end = times[i]
        free = [w for w, t in enumerate(last_end) if t <= start]
        if free:  # a warm job: its worker had run one before
            w = max(free, key=last_end.__getitem__)
            costs.append(end - last_end[w] - fits[i])
            last_end[w] = end
        else:  # a new worker's first job: it paid the imports
            last_end.append(end)
    return costs


def spread(values) -> str:
    values = list(values)
    return f"{min(values):.2f} / {statistics.median(values):.2f} / {max(values):.2f}"


def sweep(args, launcher: str, sweep_dir: Path) -> dict:
    cmd = [
        sys.executable, "-m", "mnist_lit.train", "-m", f"seed={','.join(str(s) for s in range(args.jobs))}",
        f"data.root={args.root}", "trainer.max_epochs=1", "trainer=cpu", f"hydra.sweep.dir={sweep_dir}",
        *LAUNCHERS[launcher], *args.overrides,
    ]
    wall, _ = timed(cmd, f"sweep_benchmark: the {launcher} sweep")
    jobs = [json.loads((sweep_dir / str(i) / "metrics.json").read_text()) for i in range(args.jobs)]
    fits = [j["fit_seconds"] for j in jobs]
    return {"wall_s": wall, "fit_s": fits, "warm_s": warm_costs(job_times(sweep_dir), fits),
            "test_acc": [j["test_acc"] for j in jobs], "device": jobs[0]["device"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=os.environ.get("MNIST_ROOT", "../shared/mnist"))
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("overrides", nargs="*", help="extra mnist-lit overrides for every job (after --)")
    args = parser.parse_args()

    results: dict[str, list[dict]] = {name: [] for name in LAUNCHERS}
    with tempfile.TemporaryDirectory(prefix="sweep_benchmark_") as tmp:
        for rep in range(args.reps):
            order = list(LAUNCHERS) if rep % 2 == 0 else list(reversed(LAUNCHERS))
            for name in order:
                r = sweep(args, name, Path(tmp) / f"{name}{rep}")
                results[name].append(r)
                per_job, busy = overheads(name, r)
                print(f"rep {rep} {name:10s} wall {r['wall_s']:6.1f} s  fit per job "
                      f"{', '.join(f'{f:.1f}' for f in r['fit_s'])} s  test/acc "
                      f"{', '.join(f'{a:.4f}' for a in r['test_acc'])}  [{r['device']}]  besides the fit, "
                      f"per job: {per_job:.2f} s (x{workers(name, args.jobs)} workers: {busy:.2f} s); "
                      f"a warm job besides its fit: {spread(r['warm_s'])} s", flush=True)
        imports = import_seconds()

    walls = {name: statistics.median(r["wall_s"] for r in rs) for name, rs in results.items()}
    pairs = zip(results["joblib"], results["sequential"], strict=True)
    ratios = [p["wall_s"] / s["wall_s"] for p, s in pairs]
    print(f"\n{args.jobs} one-epoch jobs on {os.cpu_count()} cores, median over {args.reps} rep(s): "
          f"sequential {walls['sequential']:.1f} s, joblib {walls['joblib']:.1f} s; "
          f"ratio joblib / sequential {statistics.median(ratios):.2f} "
          f"(min {min(ratios):.2f}, max {max(ratios):.2f}); speed-up {1 / statistics.median(ratios):.2f}x")
    for name, rs in results.items():
        print(f"{name}: a job's cost besides its fit (min / median / max), (wall - fits) / jobs "
              f"{spread(overheads(name, r)[0] for r in rs)} s; (wall x {workers(name, args.jobs)} workers - "
              f"fits) / jobs {spread(overheads(name, r)[1] for r in rs)} s; a warm job besides its fit "
              f"{spread(w for r in rs for w in r['warm_s'])} s; fit per job "
              f"{spread(f for r in rs for f in r['fit_s'])} s")
    print(f"a fresh process's imports (min / median / max of {len(imports)}): {spread(imports)} s")


if __name__ == "__main__":
    main()
