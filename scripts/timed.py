"""The benchmark scripts' one way to run a whole command: its wall time and output, or the script ends
saying which command failed and how."""

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
