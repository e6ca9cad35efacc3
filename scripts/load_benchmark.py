"""CPU thread policies alone and under load: the same default training run alone, beside a second one (two
at once), and beside a busy loop that holds one core, for each policy:

- `default`: mnist-lit's default (`threads=null`: every core while the machine is free, fewer while other
  processes keep cores busy; MKL products that give the same bits whatever the thread count);
- `fixed`: the earlier default, torch's one thread per core, fixed (`MKL_CBWR=OFF`: the count cannot follow
  the load, see mnist_lit/speed/threads.py);
- `threads=1`.

Reports each run's fit seconds (metrics.json), the ratios loaded / alone and default / fixed alone as
min / median / max over --reps interleaved repetitions, and whether each policy's numbers (test accuracy and
loss, best val accuracy) are the same with and without the load.

    python scripts/load_benchmark.py --root ../shared/mnist --reps 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
POLICIES = {"default": ([], {}), "fixed": ([], {"MKL_CBWR": "OFF"}), "threads=1": (["threads=1"], {})}
NUMBERS = ("test_acc", "test_loss", "best_val_acc")


def command(args, policy: str, run_dir: Path) -> tuple[list[str], dict]:
    overrides, env = POLICIES[policy]
    cmd = [sys.executable, "-m", "mnist_lit.train", f"data.root={args.root}",
           f"trainer.max_epochs={args.epochs}", f"hydra.run.dir={run_dir}", *overrides]
    return cmd, {**os.environ, **env}


def run(args, policy: str, tmp: Path, name: str, beside: str | None) -> list[dict]:
    """The policy's run (two of them at once when beside == "pair"), with a busy loop beside it when
    beside == "busy"; returns each run's metrics.json."""
    dirs = [tmp / f"{name}-{i}" for i in range(2 if beside == "pair" else 1)]
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if beside == "busy" else None
    try:
        if busy is not None:
            time.sleep(1.0)
        procs = [subprocess.Popen(command(args, policy, d)[0], env=command(args, policy, d)[1], cwd=ROOT,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for d in dirs]
        for proc in procs:
            _, err = proc.communicate()
            if proc.returncode != 0:
                sys.exit(f"load_benchmark: {policy} run failed ({proc.returncode}):\n{err[-3000:]}")
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
    return [json.loads((d / "metrics.json").read_text()) for d in dirs]


def spread(values: list[float]) -> str:
    return f"{min(values):.2f} / {statistics.median(values):.2f} / {max(values):.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=os.environ.get("MNIST_ROOT", "../shared/mnist"))
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--policies", nargs="+", default=list(POLICIES), choices=list(POLICIES))
    args = parser.parse_args()

    print(f"load_benchmark: {args.epochs}-epoch default runs on {args.root}, {os.cpu_count()} cores; policies: "
          + "; ".join(f"{p}: {' '.join(o) or 'no override'}{' ' + str(e) if e else ''}"
                      for p, (o, e) in POLICIES.items() if p in args.policies))
    fits: dict[tuple[str, str], list[float]] = {}
    numbers: dict[tuple[str, str], set] = {}
    with tempfile.TemporaryDirectory(prefix="load_benchmark_") as tmp:
        for rep in range(args.reps):
            policies = args.policies if rep % 2 == 0 else list(reversed(args.policies))
            for policy in policies:
                for beside in ("alone", "pair", "busy"):
                    runs = run(args, policy, Path(tmp), f"{policy.replace('=', '')}-{beside}-{rep}",
                               None if beside == "alone" else beside)
                    fits.setdefault((policy, beside), []).extend(r["fit_seconds"] for r in runs)
                    numbers.setdefault((policy, beside), set()).update(
                        tuple(r[k] for k in NUMBERS) for r in runs)
                    print(f"rep {rep} {policy:10s} {beside:6s} fit " +
                          ", ".join(f"{r['fit_seconds']:.2f} s" for r in runs) +
                          f"  test_acc {runs[0]['test_acc']:.4f}  ({runs[0]['device']})", flush=True)
    print("\nfit seconds, min / median / max:")
    for policy in args.policies:
        alone = fits[(policy, "alone")]
        print(f"  {policy:10s} alone {spread(alone)}   two at once, each {spread(fits[(policy, 'pair')])}"
              f" ({statistics.median(fits[(policy, 'pair')]) / statistics.median(alone):.2f}x alone)"
              f"   beside a busy loop {spread(fits[(policy, 'busy')])}"
              f" ({statistics.median(fits[(policy, 'busy')]) / statistics.median(alone):.2f}x alone)")
        same = len(numbers[(policy, "alone")] | numbers[(policy, "pair")] | numbers[(policy, "busy")]) == 1
        print(f"  {'':10s} same numbers alone, in pairs and beside the loop: {same}")
    if "default" in args.policies and "fixed" in args.policies:
        ratios = [d / f for d, f in zip(fits[("default", "alone")], fits[("fixed", "alone")], strict=True)]
        print(f"default alone / fixed alone (same repetition): {spread(ratios)}")


if __name__ == "__main__":
    main()
