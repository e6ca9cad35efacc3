"""Summarise a sweep: `python -m mnist_lit.summarize <sweep dir> [--csv] [--plot FILE]`.

Prints one row per job (its swept overrides, val/acc_best, test/acc, fit time, status), jobs that failed or
never finished included; with several seeds of a configuration, also their mean and standard deviation; and
writes a plot of the swept metric against each swept parameter (default <sweep dir>/summary.png).
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import statistics
import sys
from collections import Counter
from pathlib import Path

import yaml
from omegaconf import OmegaConf

from mnist_lit.config.messages import report_user_errors
from mnist_lit.errors import UserError
from mnist_lit.runs.checkpoint import is_run_dir, metrics_of

SEED_KEYS = ("seed",)


def job_dirs(sweep_dir: Path) -> list[Path]:
    """The folders Hydra ran a job in (they hold .hydra/overrides.yaml), in job-number order."""
    found = [p.parent.parent for p in sweep_dir.glob("**/.hydra/overrides.yaml")]
    found = [d for d in found if not any(part.startswith(".") for part in d.relative_to(sweep_dir).parts)]
    return sorted(found, key=lambda d: (0, int(d.name), "") if d.name.isdigit() else (1, 0, str(d)))


def load_job(folder: Path, metric: str) -> dict:
    try:  # plain YAML: nothing in a job's folder is resolved or run
        overrides = yaml.safe_load((folder / ".hydra" / "overrides.yaml").read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        overrides = None
    given = dict(o.lstrip("+~").split("=", 1) for o in overrides if isinstance(o, str) and "=" in o) \
        if isinstance(overrides, list) else {}
    # how a job was started again (a resumed sweep's later jobs), not what it ran
    job = {"job": folder.name,
           "overrides": {k: v for k, v in given.items() if k not in ("resume", "ckpt_path")}}
    metrics, problem = metrics_of(folder)
    if problem == "missing":
        metrics = {"status": "unfinished"}  # still running, or killed before it could write anything
    elif problem is not None:
        metrics = {"status": "unreadable", "error": problem}
    values = metrics.get("metrics") or {}
    job |= {
        "metric": values.get(metric),
        "val/acc_best": metrics.get("best_val_acc", values.get("val/acc_best")),
        "test/acc": metrics.get("test_acc", values.get("test/acc")),
        "fit_s": metrics.get("fit_seconds"),
        "status": metrics.get("status", "unknown"),
        "error": metrics.get("error"),
    }
    return job


def swept_keys(jobs: list[dict]) -> tuple[list[str], dict]:
    """Keys whose value differs between jobs, and the overrides all jobs share."""
    keys = list(dict.fromkeys(k for job in jobs for k in job["overrides"]))
    swept = [k for k in keys if len({job["overrides"].get(k) for job in jobs}) > 1]
    common = {k: jobs[0]["overrides"][k] for k in keys if k not in swept}
    return swept, common


def fmt(value, digits: int = 4) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}f}" if math.isfinite(value) else str(value)
    return str(value)


def job_table(jobs: list[dict], swept: list[str], metric: str) -> tuple[list[str], list[list[str]]]:
    extra = [metric] if metric not in ("val/acc_best", "test/acc") else []
    header = ["job", *swept, "val/acc_best", "test/acc", *extra, "fit s", "status", "error"]
    rows = [
        [job["job"], *(job["overrides"].get(k, "") for k in swept), fmt(job["val/acc_best"]),
         fmt(job["test/acc"]), *(fmt(job["metric"]) for _ in extra), fmt(job["fit_s"], 1), job["status"],
         (job["error"] or "")[:120]]
        for job in jobs
    ]
    return header, rows


def seed_table(jobs: list[dict], swept: list[str]) -> tuple[list[str], list[list[str]]] | None:
    """Mean and standard deviation over the seeds of each configuration (completed jobs only)."""
    config_keys = [k for k in swept if k not in SEED_KEYS]
    groups: dict[tuple, list[dict]] = {}
    for job in jobs:
        if job["status"] == "completed":
            groups.setdefault(tuple(job["overrides"].get(k, "") for k in config_keys), []).append(job)
    if not any(len(group) > 1 for group in groups.values()):
        return None

    def mean_std(group: list[dict], key: str) -> str:
        values = [job[key] for job in group if job[key] is not None]
        if not values:
            return ""
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.fmean(values):.4f} ± {std:.4f}"

    header = [*config_keys, "seeds", "val/acc_best (mean ± std)", "test/acc (mean ± std)"]
    rows = [[*config, str(len(group)), mean_std(group, "val/acc_best"), mean_std(group, "test/acc")]
            for config, group in groups.items()]
    return header, rows


def markdown(header: list[str], rows: list[list[str]]) -> str:
    def line(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |"

    return "\n".join([line(header), line(["---"] * len(header)), *map(line, rows)])


def as_csv(header: list[str], rows: list[list[str]]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows([header, *rows])
    return out.getvalue().rstrip("\n")


def number(text: str) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def plot(jobs: list[dict], swept: list[str], metric: str, path: Path) -> None:
    """The optimized metric against each swept parameter, one panel per parameter; failed jobs left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [job for job in jobs if job["metric"] is not None]
    params = [k for k in swept if k not in SEED_KEYS] or ["job"]
    fig, axes = plt.subplots(1, len(params), figsize=(4 * len(params), 3.5), squeeze=False, sharey=True)
    for ax, key in zip(axes[0], params, strict=True):
        raw = [job["job"] if key == "job" else job["overrides"].get(key, "") for job in done]
        xs = [number(v) for v in raw]
        if raw and all(x is not None for x in xs):
            if min(xs) > 0 and max(xs) / min(xs) >= 10:
                ax.set_xscale("log")
        else:  # categories in order of first appearance
            order = list(dict.fromkeys(raw))
            xs = [order.index(v) for v in raw]
            ax.set_xticks(range(len(order)), order, rotation=30, ha="right")
        ax.scatter(xs, [job["metric"] for job in done], alpha=0.8)
        ax.set_xlabel(key)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(metric)
    fig.suptitle(f"{metric}: {len(done)} of {len(jobs)} jobs with a value")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def summarize(sweep_dir: Path, use_csv: bool = False, plot_path: Path | None = None) -> tuple[str, list[str]]:
    """The tables, and notes for the reader (job counts, shared overrides, Optuna's best, the plot's path)."""
    if not sweep_dir.is_dir():
        raise UserError(f"{sweep_dir} is not a folder. Pass a sweep folder: logs/train/multiruns/<time>.")
    if is_run_dir(sweep_dir) and not (sweep_dir / "multirun.yaml").is_file():
        raise UserError(f"{sweep_dir} is a single run's folder, not a sweep's: see its scores with python -m "
                        f"mnist_lit.evaluate run_dir={sweep_dir}. Pass a sweep folder: "
                        "logs/train/multiruns/<time>.")
    folders = job_dirs(sweep_dir)
    if not folders:
        raise UserError(f"no jobs in {sweep_dir}: a sweep folder holds one folder per job, each with "
                        ".hydra/overrides.yaml (python -m mnist_lit.train -m ... writes them).")
    config_file = folders[0] / ".hydra" / "config.yaml"
    config = OmegaConf.load(config_file) if config_file.is_file() else OmegaConf.create()
    metric = OmegaConf.select(config, "optimized_metric") or "val/acc_best"
    jobs = [load_job(folder, metric) for folder in folders]
    swept, common = swept_keys(jobs)
    render = as_csv if use_csv else markdown
    parts = [render(*job_table(jobs, swept, metric))]
    by_seed = seed_table(jobs, swept)
    if by_seed is not None:
        parts.append(render(*by_seed))
    text = "\n\n".join(parts)

    counts = Counter(job["status"] for job in jobs)
    notes = [f"{len(jobs)} jobs in {sweep_dir}: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))]
    if common:
        notes.append("shared overrides: " + " ".join(f"{k}={v}" for k, v in common.items()))
    results = sweep_dir / "optimization_results.yaml"
    if results.is_file():  # written by the Optuna sweeper
        best = OmegaConf.load(results)
        notes.append(f"Optuna best {metric} = {best.get('best_value')}: "
                     + " ".join(f"{k}={v}" for k, v in (best.get("best_params") or {}).items()))
    plot_path = plot_path or sweep_dir / "summary.png"
    try:
        if plot_path.is_dir():
            raise IsADirectoryError(f"{plot_path} is a folder")
        plot(jobs, swept, metric, plot_path)
        notes.append(f"plot: {plot_path}")
    except (OSError, ValueError) as err:  # the tables are printed all the same
        notes.append(f"error: the plot {plot_path} was not written ({err}). Pass --plot <file>.png in a "
                     "folder you can write.")
    return text, notes


@report_user_errors
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mnist_lit.summarize",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path, help="a multirun folder, e.g. logs/train/multiruns/<time>")
    parser.add_argument("--csv", action="store_true", help="CSV instead of a Markdown table")
    parser.add_argument("--plot", type=Path, default=None,
                        help="where to write the PNG (default <sweep_dir>/summary.png)")
    args = parser.parse_args(argv)
    text, notes = summarize(args.sweep_dir, args.csv, args.plot)
    print(text, flush=True)
    print("\n".join(notes), file=sys.stderr)
    if any(note.startswith("error:") for note in notes):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
