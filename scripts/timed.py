"""The benchmark scripts' one way to run a whole command (its wall time and output, or the script ends
saying which command failed and how), and to read when a sweep's jobs ran."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def timed(cmd: list[str], what: str, env: dict | None = None) -> tuple[float, str]:
    """Run `cmd` from the project root; return (wall seconds, stdout)."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{what} failed ({proc.returncode}): {' '.join(map(str, cmd))}\n{proc.stderr[-3000:]}")
    return wall, proc.stdout


def job_times(sweep_dir: Path) -> dict[int, tuple[float, float]]:
    """Each job of a sweep (number -> start, end), from its folder: when Hydra started it (its
    .hydra/overrides.yaml written) and when it ended (its metrics.json written)."""
    times = {}
    for job in sweep_dir.iterdir():
        start, end = job / ".hydra" / "overrides.yaml", job / "metrics.json"
        if job.name.isdigit() and start.is_file() and end.is_file():
            times[int(job.name)] = (start.stat().st_mtime, end.stat().st_mtime)
    return times
