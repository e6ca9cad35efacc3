"""Summarise sweeps: `python -m mnist_lit.summarize <sweep dir> [<sweep dir> ...] [--csv] [--plot FILE]`.

One sweep: one row per job (its swept overrides, val/acc_best, test/acc, the optimized metrics, fit time,
status), jobs that failed or never finished included; with several seeds of a configuration, also their mean
and standard deviation; and a plot of each optimized metric against each swept parameter (default
<sweep dir>/summary.png). Several sweeps: their configurations side by side in one table, with the mean and
standard deviation over seeds. Of an Optuna search, also the Pareto front (several objectives) and each
parameter's importance for each objective (Optuna's default importance evaluator).
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import statistics
import sys
import warnings
from collections import Counter
from pathlib import Path

import yaml
from omegaconf import OmegaConf

from mnist_lit.config.messages import report_user_errors
from mnist_lit.errors import UserError
from mnist_lit.runs.checkpoint import is_run_dir, metrics_of
from mnist_lit.runs.objectives import objective_names

SEED_KEYS = ("seed",)


def job_dirs(sweep_dir: Path) -> list[Path]:
    """The folders Hydra ran a job in (they hold .hydra/overrides.yaml), in job-number order."""
    found = [p.parent.parent for p in sweep_dir.glob("**/.hydra/overrides.yaml")]
    found = [d for d in found if not any(part.startswith(".") for part in d.relative_to(sweep_dir).parts)]
    return sorted(found, key=lambda d: (0, int(d.name), "") if d.name.isdigit() else (1, 0, str(d)))


def load_job(folder: Path) -> dict:
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
    values = metrics.get("metrics")
    values = dict(values) if isinstance(values, dict) else {}
    values |= {"val/acc_best": metrics.get("best_val_acc", values.get("val/acc_best")),
               "test/acc": metrics.get("test_acc", values.get("test/acc"))}
    job |= {
        "values": values,  # every metric the job recorded (model/params, ...)
        "val/acc_best": values["val/acc_best"],
        "test/acc": values["test/acc"],
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


SHOWN = ("val/acc_best", "test/acc")  # every table's metric columns; an optimized metric besides, after them


def extra_metrics(objectives: list[str]) -> list[str]:
    return [name for name in objectives if name not in SHOWN]


def job_table(jobs: list[dict], swept: list[str], objectives: list[str]) -> tuple[list[str], list[list[str]]]:
    extra = extra_metrics(objectives)
    header = ["job", *swept, *SHOWN, *extra, "fit s", "status", "error"]
    rows = [
        [job["job"], *(job["overrides"].get(k, "") for k in swept), *(fmt(job[k]) for k in SHOWN),
         *(fmt(job["values"].get(k)) for k in extra), fmt(job["fit_s"], 1), job["status"],
         (job["error"] or "")[:120]]
        for job in jobs
    ]
    return header, rows


def mean_std(group: list[dict], key: str) -> str:
    """`mean ± std` of a metric over jobs (the sample standard deviation; 0 for one job)."""
    values = [job["values"][key] for job in group if isinstance(job["values"].get(key), (int, float))]
    if not values:
        return ""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    digits = 0 if all(isinstance(v, int) for v in values) else 4  # counts: model/params
    return f"{statistics.fmean(values):.{digits}f} ± {std:.{digits}f}"


def by_config(jobs: list[dict], keys: list[str]) -> dict[tuple, list[dict]]:
    """The completed jobs grouped by their values of `keys` (a configuration; seeds left out)."""
    groups: dict[tuple, list[dict]] = {}
    for job in jobs:
        if job["status"] == "completed":
            groups.setdefault(tuple(job["overrides"].get(k, "") for k in keys), []).append(job)
    return groups


def seed_table(jobs: list[dict], swept: list[str]) -> tuple[list[str], list[list[str]]] | None:
    """Mean and standard deviation over the seeds of each configuration (completed jobs only)."""
    config_keys = [k for k in swept if k not in SEED_KEYS]
    groups = by_config(jobs, config_keys)
    if not any(len(group) > 1 for group in groups.values()):
        return None
    header = [*config_keys, "seeds", *(f"{k} (mean ± std)" for k in SHOWN)]
    rows = [[*config, str(len(group)), *(mean_std(group, k) for k in SHOWN)]
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


def plot(jobs: list[dict], swept: list[str], objectives: list[str], path: Path) -> None:
    """Each optimized metric (a row of panels) against each swept parameter (a panel); no failed jobs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    from mnist_lit.reporting.plots import save

    params = [k for k in swept if k not in SEED_KEYS] or ["job"]
    fig, axes = plt.subplots(len(objectives), len(params), figsize=(4 * len(params), 3.5 * len(objectives)),
                             squeeze=False, sharey="row")
    for row, metric in zip(axes, objectives, strict=True):
        done = [job for job in jobs if job["values"].get(metric) is not None]
        for ax, key in zip(row, params, strict=True):
            raw = [job["job"] if key == "job" else job["overrides"].get(key, "") for job in done]
            xs = [number(v) for v in raw]
            if raw and all(x is not None for x in xs):
                if min(xs) > 0 and max(xs) / min(xs) >= 10:
                    ax.set_xscale("log")
                    ax.xaxis.set_minor_formatter(NullFormatter())  # labels of 2x10^-4... overlap
            else:  # categories in order of first appearance
                order = list(dict.fromkeys(raw))
                xs = [order.index(v) for v in raw]
                ax.set_xticks(range(len(order)), order, rotation=30, ha="right")
            ax.scatter(xs, [job["values"][metric] for job in done], alpha=0.8)
            ax.set_xlabel(key)
            ax.grid(alpha=0.3)
        row[0].set_ylabel(f"{metric} ({len(done)} of {len(jobs)} jobs)")
    fig.suptitle(", ".join(objectives) + " against the swept parameters")
    fig.tight_layout()
    save(fig, path, dpi=100)
    plt.close(fig)


def read_sweep(sweep_dir: Path) -> tuple[list[dict], list[str]]:
    """A sweep folder's jobs, and the metrics it optimized (its optimized_metric; val/acc_best if none)."""
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
    objectives = objective_names(OmegaConf.select(config, "optimized_metric")) or ["val/acc_best"]
    return [load_job(folder) for folder in folders], objectives


def counts_note(jobs: list[dict], sweep_dir: Path) -> str:
    counts = Counter(job["status"] for job in jobs)
    return f"{len(jobs)} jobs in {sweep_dir}: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))


def summarize(sweep_dir: Path, use_csv: bool = False, plot_path: Path | None = None) -> tuple[str, list[str]]:
    """The tables, and notes for the reader (job counts, shared overrides, Optuna's best, the plot's path)."""
    jobs, objectives = read_sweep(sweep_dir)
    search = Search.of(sweep_dir, objectives)
    if search is not None:
        search.mark_reruns(jobs)
    swept, common = swept_keys(jobs)
    render = as_csv if use_csv else markdown
    parts = [render(*job_table(jobs, swept, objectives))]
    seeds = seed_table(jobs, swept)
    if seeds is not None:
        parts.append(render(*seeds))

    notes = [counts_note(jobs, sweep_dir)]
    if common:
        notes.append("shared overrides: " + " ".join(f"{k}={v}" for k, v in common.items()))
    if search is not None:
        parts += [render(*table) for table in (search.pareto_table(), search.importance_table()) if table]
        notes += search.notes
    plot_path = plot_path or sweep_dir / "summary.png"
    try:
        if plot_path.is_dir():
            raise IsADirectoryError(f"{plot_path} is a folder")
        plot(jobs, swept, objectives, plot_path)
        notes.append(f"plot: {plot_path}")
    except (OSError, ValueError) as err:  # the tables are printed all the same
        notes.append(f"error: the plot {plot_path} was not written ({err}). Pass --plot <file>.png in a "
                     "folder you can write.")
    return "\n\n".join(parts), notes


def compare(sweep_dirs: list[Path], use_csv: bool = False) -> tuple[str, list[str]]:
    """Several sweeps side by side: one row per configuration of each sweep (its completed jobs, the seeds
    of a configuration together: mean ± std), the columns every override that differs between any two jobs
    of them all; then each search's Pareto front and parameter importances."""
    sweeps = [(sweep_dir, *read_sweep(sweep_dir)) for sweep_dir in sweep_dirs]
    searches = []
    for sweep_dir, jobs, objectives in sweeps:
        search = Search.of(sweep_dir, objectives, label=str(sweep_dir))
        if search is not None:
            search.mark_reruns(jobs)
            searches.append(search)
    everyone = [job for _, jobs, _ in sweeps for job in jobs]
    swept, _ = swept_keys(everyone)
    keys = [k for k in swept if k not in SEED_KEYS]
    optimized = list(dict.fromkeys(name for _, _, objectives in sweeps for name in objectives))
    metrics = [*SHOWN, *extra_metrics(optimized)]
    header = ["sweep", *keys, "seeds", *(f"{k} (mean ± std)" for k in metrics)]
    rows = [[str(sweep_dir), *config, str(len(group)), *(mean_std(group, k) for k in metrics)]
            for sweep_dir, jobs, _ in sweeps for config, group in by_config(jobs, keys).items()]
    render = as_csv if use_csv else markdown
    parts = [render(header, rows)]
    notes = [counts_note(jobs, sweep_dir) for sweep_dir, jobs, _ in sweeps]
    for tables in (s.pareto_table() for s in searches), (s.importance_table() for s in searches):
        table = merged([t for t in tables if t])
        if table:
            parts.append(render(*table))
    return "\n\n".join(parts), notes + [note for search in searches for note in search.notes]


def merged(tables: list[tuple[list[str], list[list[str]]]]) -> tuple[list[str], list[list[str]]] | None:
    """Several tables as one: the union of their columns in order of appearance, blank where one has none."""
    if not tables:
        return None
    header = list(dict.fromkeys(column for h, _ in tables for column in h))
    rows = [[dict(zip(h, row, strict=True)).get(column, "") for column in header]
            for h, rs in tables for row in rs]
    return header, rows


COUNTS = ("model/params",)  # metrics that are whole numbers (Optuna keeps every value as a float)


def shown(value) -> str:
    """A parameter's value: floats to 4 significant digits."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def objective_value(name: str, value) -> str:
    return str(round(value)) if name in COUNTS and isinstance(value, float) else fmt(value)


class Search:
    """An Optuna search's study, read for its Pareto front and its parameters' importances; where the study
    cannot be read, the Pareto front its sweeper wrote into optimization_results.yaml."""

    def __init__(self, sweep_dir: Path, label: str | None, objectives: list[str], directions: list[str]):
        self.sweep_dir, self.label = sweep_dir, label
        self.objectives, self.directions = objectives, directions
        self.study, self.notes = None, []
        self.results = {}
        results = sweep_dir / "optimization_results.yaml"
        if results.is_file():  # written by the Optuna sweeper
            loaded = yaml.safe_load(results.read_text())
            self.results = loaded if isinstance(loaded, dict) else {}

    @classmethod
    def of(cls, sweep_dir: Path, objectives: list[str], label: str | None = None) -> Search | None:
        """The search of `sweep_dir` (its jobs optimized `objectives`), or None for a sweep that is no
        Optuna search."""
        from mnist_lit.search.study import directions, load_study, search_config

        try:
            config = search_config(sweep_dir)
        except UserError:  # a broken multirun.yaml: the jobs' tables are shown all the same
            return None
        if config is None:
            return None
        recorded = config.hydra["sweeper"].get("direction") or "maximize"
        search = cls(sweep_dir, label, objectives, directions(recorded))
        try:
            search.study = load_study(sweep_dir)
        except UserError as err:
            search.notes.append(f"{search.where}the study was not read ({err})")
        if search.study is not None:
            search.directions = [d.name.lower() for d in search.study.directions]
            search.objectives = list(search.study.metric_names or []) or search.objectives
        if len(search.objectives) != len(search.directions):
            search.objectives = [f"objective {i}" for i in range(len(search.directions))]
        best = search.results.get("best_value")
        if best is not None and len(search.directions) == 1:
            search.notes.append(f"{search.where}Optuna best {search.objectives[0]} = {best}: " + " ".join(
                f"{k}={v}" for k, v in (search.results.get("best_params") or {}).items()))
        return search

    def mark_reruns(self, jobs: list[dict]) -> None:
        """Jobs whose trial was stopped (Ctrl-C, a requeued or dead worker) and its parameters run again as
        a later trial: status `rerun`, and which trial ran them."""
        from mnist_lit.search.worker import RETRY_OF

        if self.study is None:
            return
        again = {t.user_attrs[RETRY_OF]: t.number for t in self.study.get_trials(deepcopy=False)
                 if t.user_attrs.get(RETRY_OF) is not None}
        for job in jobs:
            number = int(job["job"]) if job["job"].isdigit() else None
            if number in again:
                job["error"] = f"{job['status']}; its parameters ran again as trial {again[number]}"
                job["status"] = "rerun"

    @property
    def where(self) -> str:
        return f"{self.label}: " if self.label else ""

    def lead(self) -> list[str]:
        return [self.label] if self.label else []

    def pareto_table(self) -> tuple[list[str], list[list[str]]] | None:
        """The trials no other trial beats on every objective (several objectives only), best first on the
        first objective."""
        if len(self.directions) < 2:
            return None
        if self.study is not None:
            front = [(t.number, t.values, t.params) for t in self.study.best_trials]
        else:
            front = [(t.get("number"), t.get("values") or [], t.get("params") or {})
                     for t in self.results.get("pareto_front") or [] if isinstance(t, dict)]
        if not front:
            self.notes.append(f"{self.where}no completed trial: no Pareto front yet")
            return None
        first_max = self.directions[0] == "maximize"
        front.sort(key=lambda t: (-t[1][0] if first_max else t[1][0], t[0]))
        params = list(dict.fromkeys(k for _, _, p in front for k in p))
        head = ["sweep"] if self.label else []
        header = [*head, "Pareto trial", *(f"{o} ({d})" for o, d in zip(self.objectives, self.directions,
                                                                        strict=True)), *params]
        rows = [[*self.lead(), str(number), *map(objective_value, self.objectives, values),
                 *(shown(p.get(k, "")) for k in params)]
                for number, values, p in front]
        return header, rows

    def importance_table(self) -> tuple[list[str], list[list[str]]] | None:
        """Each parameter's importance for each objective (Optuna's default evaluator), most important first
        on the first objective; a note instead where too few trials completed."""
        import optuna

        if self.study is None:
            return None
        done = self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        too_few = f"{self.where}parameter importances: too few completed trials ({len(done)}) to tell the " \
            "parameters apart"
        if len(done) < 2:
            self.notes.append(too_few)
            return None
        columns = {}
        for i, (name, direction) in enumerate(zip(self.objectives, self.directions, strict=True)):
            sign = -1.0 if direction == "maximize" else 1.0  # the default evaluator takes lower as better
            with warnings.catch_warnings(record=True) as said:
                warnings.simplefilter("always")
                importances = optuna.importance.get_param_importances(
                    self.study, target=lambda t, i=i, sign=sign: sign * t.values[i])
            if not importances or any("will be equal" in str(w.message) for w in said):
                self.notes.append(too_few)
                return None
            columns[name] = importances
        self.notes.append(f"{self.where}parameter importances: Optuna's default evaluator (PED-ANOVA in "
                          f"Optuna 5) on {len(done)} completed trials")
        first = next(iter(columns.values()))
        head = ["sweep"] if self.label else []
        header = [*head, "parameter", *(f"importance for {name}" for name in columns)]
        rows = [[*self.lead(), param, *(f"{imp.get(param, 0.0):.3f}" for imp in columns.values())]
                for param in sorted(first, key=lambda p: -first[p])]
        return header, rows


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose refusal of a command line is one paragraph with exit code 1, like every command's."""

    def error(self, message: str):
        raise UserError(f"{message}. Usage: {' '.join(self.format_usage().split()[1:])} (--help says more).")


@report_user_errors
def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="python -m mnist_lit.summarize", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dirs", type=Path, nargs="+", metavar="sweep_dir",
                        help="a multirun folder, e.g. logs/train/multiruns/<time>; several: side by side")
    parser.add_argument("--csv", action="store_true", help="CSV instead of Markdown tables")
    parser.add_argument("--plot", type=Path, default=None,
                        help="where to write the PNG of one sweep (default <sweep_dir>/summary.png)")
    args = parser.parse_args(argv)
    if len(args.sweep_dirs) == 1:
        text, notes = summarize(args.sweep_dirs[0], args.csv, args.plot)
    elif args.plot is not None:
        raise UserError("--plot draws the jobs of one sweep: pass one sweep folder with --plot, or several "
                        "sweep folders without it.")
    else:
        text, notes = compare(args.sweep_dirs, args.csv)
    print(text, flush=True)
    print("\n".join(notes), file=sys.stderr)
    if any(note.startswith("error:") for note in notes):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
