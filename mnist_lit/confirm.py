"""After a search: retrain its best configurations over several seeds and report test accuracy mean ± std.

    python -m mnist_lit.confirm <sweep dir> [top_k=3] [seeds=3] [out=<folder>] [train overrides...]

The k best completed trials of the study (by the search's own metric, a validation one) are each trained
again as a Hydra multirun over seeds 1..N, with the test this time (the search never looked at the test
set), into <out>/trial<number>/ (default out: <sweep dir>-confirm); then mnist_lit.summarize's tables.
Any other argument goes to every training, e.g. hydra/launcher=joblib or trainer.max_epochs=20.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from mnist_lit.config.messages import report_user_errors
from mnist_lit.config.overrides import override_key
from mnist_lit.errors import UserError
from mnist_lit.runs.allowlist import check_override
from mnist_lit.search.space import to_override
from mnist_lit.search.study import best_trials, load_study, search_config
from mnist_lit.summarize import summarize

# overrides of the search that the confirmation replaces: it trains without the sweeper, with the test
DROPPED = ("hparams_search", "seed", "test", "resume")


def parse_args(argv: list[str]) -> tuple[Path, int, int, Path | None, list[str]]:
    if not argv or "=" in argv[0] or argv[0].startswith("-"):
        raise UserError("usage: python -m mnist_lit.confirm <sweep dir> [top_k=3] [seeds=3] [out=<folder>] "
                        "[train overrides...]")
    options, rest = {"top_k": "3", "seeds": "3", "out": None}, []
    for arg in argv[1:]:
        key, _, value = arg.partition("=")
        if key in options:
            options[key] = value
        else:
            rest.append(arg)
    try:
        top_k, seeds = int(options["top_k"]), int(options["seeds"])
    except ValueError:
        top_k = seeds = 0
    if top_k < 1 or seeds < 1:
        raise UserError(f"top_k={options['top_k']} seeds={options['seeds']}: both must be integers >= 1.")
    return Path(argv[0]), top_k, seeds, Path(options["out"]) if options["out"] else None, rest


def trial_overrides(search_overrides: list[str], params: dict) -> list[str]:
    """The search's command-line overrides (sweep ones and DROPPED removed) and the trial's parameters."""
    kept = [o for o in search_overrides if override_key(o) not in DROPPED and override_key(o) not in params]
    return kept + [to_override(k, v) for k, v in params.items()]


def confirm(sweep_dir: Path, top_k: int, seeds: int, out: Path | None, extra: list[str]) -> Path:
    study = load_study(sweep_dir)
    trials = best_trials(study, top_k)
    if not trials:
        raise UserError(f"{sweep_dir}: the study has no completed trial to confirm yet.")
    search = list(search_config(sweep_dir).task_overrides)
    out = out or sweep_dir.with_name(sweep_dir.name + "-confirm")
    for trial in trials:
        values = ", ".join(f"{d.name.lower()} {v:.4f}"
                           for d, v in zip(study.directions, trial.values, strict=True))
        print(f"trial {trial.number} ({values}): {trial.params}", file=sys.stderr, flush=True)
        overrides = trial_overrides(search, trial.params)
        for override in overrides:  # the sweep folder's files may come from anyone
            check_override(override, str(sweep_dir / "multirun.yaml"))
        command = [sys.executable, "-m", "mnist_lit.train", "-m", *overrides,
                   "seed=" + ",".join(str(s) for s in range(1, seeds + 1)), "test=true", *extra,
                   f"hydra.sweep.dir={out / f'trial{trial.number}'}"]
        subprocess.run(command, check=False)  # a failed job is listed by the summary below
    return out


@report_user_errors
def main(argv: list[str] | None = None) -> None:
    sweep_dir, top_k, seeds, out, extra = parse_args(sys.argv[1:] if argv is None else argv)
    out = confirm(sweep_dir, top_k, seeds, out, extra)
    text, notes = summarize(out)
    print(text, flush=True)
    print("\n".join(notes), file=sys.stderr)


if __name__ == "__main__":
    main()
