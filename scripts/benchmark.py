"""Side-by-side benchmark: mnist-lit's real entry point vs the plain PyTorch loop (scripts/plain_pytorch.py).

Both run as whole commands (imports, data loading, fit with validation every epoch, test), interleaved
over several repetitions on the same data and device, so that the machine's noise hits both alike.
Each variant reports its own peak RSS (getrusage). Reports per variant: whole-command wall time, fit time, ms per optimizer step, samples per second,
peak host RSS, peak GPU memory (on a GPU), final val and test accuracy; and the ratios mnist-lit / plain
(min, median, max over the repetitions).

    python scripts/benchmark.py --root ../shared/mnist --epochs 10 --batch-size 32 --reps 3
    python scripts/benchmark.py --reps 3 -- fast=false   (extra mnist-lit overrides)
    python scripts/benchmark.py --reps 3 --bare -- fast=false   (also the bare-Lightning floor)

Also measured, interleaved the same way: each variant's import time (a fresh interpreter importing what the
command imports before it starts fitting).

CPU threads, the same policy for every side, printed first: MKL_CBWR=AUTO,STRICT (mnist-lit's default), and
torch's default count (one per core) or --threads N for all (OMP_NUM_THREADS). mnist-lit steps its count
down while other processes keep cores busy (mnist_lit/speed/threads.py); benchmark on a quiet machine, where
it keeps the count the references have.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

from timed import timed

ROOT = Path(__file__).resolve().parent.parent


THREAD_ENV = {"MKL_CBWR": "AUTO,STRICT"}  # main() adds OMP_NUM_THREADS for --threads


def run(cmd: list[str]) -> tuple[float, str]:
    """Run a whole command under the thread policy; return (wall seconds, stdout)."""
    return timed(cmd, "benchmark: a command", env={**os.environ, **THREAD_ENV})


def mnist_lit(args, run_dir: str) -> dict:
    cmd = [
        sys.executable, "-m", "mnist_lit.train", f"data.root={args.root}", f"trainer.max_epochs={args.epochs}",
        f"data.batch_size={args.batch_size}", f"trainer.accelerator={args.device}", f"hydra.run.dir={run_dir}",
        *args.overrides,
    ]
    wall, _ = run(cmd)
    m = json.loads((Path(run_dir) / "metrics.json").read_text())
    return {
        "wall_s": wall, "fit_s": m["fit_seconds"], "steps": m["steps"], "rss_mb": m["peak_rss_mb"],
        "gpu_peak_mb": m.get("gpu_peak_mb"), "val_acc": m["metrics"]["val/acc"], "test_acc": m["test_acc"],
    }


def reference(args, script: str) -> dict:
    """A reference script (plain_pytorch.py, bare_lightning.py) as a whole command; they print the same JSON."""
    cmd = [
        sys.executable, script, "--json", "--root", args.root, "--epochs", str(args.epochs),
        "--batch-size", str(args.batch_size), "--device", args.device,
    ]
    wall, out = run(cmd)
    m = json.loads(out.strip().splitlines()[-1])
    return {
        "wall_s": wall, "fit_s": m["fit_seconds"], "steps": m["steps"], "rss_mb": m["peak_rss_mb"],
        "gpu_peak_mb": m.get("gpu_peak_mb"), "val_acc": m["val_acc"], "test_acc": m["test_acc"],
    }


IMPORTS = {
    # what `python -m mnist_lit.train` has imported when fitting starts
    "mnist-lit": "import mnist_lit.train, mnist_lit.config.building, mnist_lit.reporting.callbacks, "
                 "mnist_lit.runs.checkpoint, mnist_lit.data, mnist_lit.speed.grouped, mnist_lit.module, "
                 "mnist_lit.runs.reliability, mnist_lit.runs.record; import lightning.pytorch",
    "plain": "import torch, torch.nn.functional; from torchvision.datasets import MNIST",
    "lightning-bare": "import torch, torch.nn.functional; from torchvision.datasets import MNIST; "
                      "import lightning.pytorch",
}


def import_seconds(name: str) -> float:
    wall, _ = run([sys.executable, "-c", IMPORTS[name]])
    return wall


def spread(values: list[float]) -> str:
    return f"{min(values):.3f} / {statistics.median(values):.3f} / {max(values):.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=os.environ.get("MNIST_ROOT", "../shared/mnist"))
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, help="CPU threads for every side (default: torch's, one per core)")
    parser.add_argument("--json", dest="json_path", help="also write all measurements to this JSON file")
    parser.add_argument("--bare", action="store_true",
                        help="also run scripts/bare_lightning.py: the plain loop under a bare Lightning Trainer, "
                             "the floor of any canonical LightningModule (compare with -- fast=false)")
    parser.add_argument("overrides", nargs="*", help="extra mnist-lit overrides (after --)")
    args = parser.parse_args()
    if args.threads:
        THREAD_ENV["OMP_NUM_THREADS"] = str(args.threads)
    print(f"CPU threads for every side: {args.threads or 'torch default (one per core)'}, MKL_CBWR=AUTO,STRICT; "
          "mnist-lit steps down only while other processes keep cores busy", flush=True)
    results: dict[str, list[dict]] = {"mnist-lit": [], "plain": []} | ({"lightning-bare": []} if args.bare else {})
    with tempfile.TemporaryDirectory() as tmp:
        runners = {"plain": lambda rep: reference(args, "scripts/plain_pytorch.py"),
                   "mnist-lit": lambda rep: mnist_lit(args, f"{tmp}/run{rep}"),
                   "lightning-bare": lambda rep: reference(args, "scripts/bare_lightning.py")}
        for rep in range(args.reps):
            # rotate which goes first, so that none always runs on a warmer machine
            names = list(results)
            order = names[rep % len(names):] + names[: rep % len(names)]
            for name in order:
                r = runners[name](rep)
                r["import_s"] = import_seconds(name)
                results[name].append(r)
                print(f"rep {rep + 1}/{args.reps} {name:9s} wall {r['wall_s']:6.2f} s  fit {r['fit_s']:6.2f} s  "
                      f"import {r['import_s']:5.2f} s  "
                      f"test_acc {r['test_acc']:.4f}  rss {r['rss_mb']:.0f} MB", flush=True)

    print(f"\n{args.epochs} epochs, batch {args.batch_size}, device {args.device}; min / median / max over {args.reps}")
    print("| variant | whole command s | import s | fit s | ms/step | samples/s | peak RSS MB | GPU peak MB | val acc "
          "| test acc |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, rs in results.items():
        ms = [1000 * r["fit_s"] / r["steps"] for r in rs]
        sps = [r["steps"] * args.batch_size / r["fit_s"] for r in rs]
        gpu = [r["gpu_peak_mb"] for r in rs if r["gpu_peak_mb"] is not None]
        print(f"| {name} | {spread([r['wall_s'] for r in rs])} | {spread([r['import_s'] for r in rs])} | "
              f"{spread([r['fit_s'] for r in rs])} | {spread(ms)} | "
              f"{statistics.median(sps):.0f} | {statistics.median([r['rss_mb'] for r in rs]):.0f} | "
              f"{statistics.median(gpu) if gpu else '-'} | {statistics.median([r['val_acc'] for r in rs]):.4f} | "
              f"{statistics.median([r['test_acc'] for r in rs]):.4f} |")
    for name in (n for n in results if n != "plain"):
        print(f"\nratio {name} / plain (min / median / max over repetitions):")
        for key, label in (("wall_s", "whole command"), ("import_s", "import"), ("fit_s", "fit"),
                           ("rss_mb", "peak RSS")):
            ratios = [a[key] / b[key] for a, b in zip(results[name], results["plain"], strict=True)]
            print(f"  {label:14s} {spread(ratios)}")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps({"args": vars(args), "results": results}, indent=2))


if __name__ == "__main__":
    main()
