"""Writing files: one atomic writer and one writability check, used by every file a command writes."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from mnist_lit.errors import UserError


def write_atomically(path: Path, write: Callable[[IO[bytes]], object], sync: bool = False) -> None:
    """`write(file)` into `.<name>.tmp` beside `path`, then a rename: the final name only ever holds a
    complete file, and an interrupted or failed write (a full disk, a second Ctrl-C) leaves no temporary
    file behind. `sync` flushes the data to disk before the rename (checkpoints: a crash keeps them)."""
    path = Path(path)
    if path.exists() and not path.is_file() and not path.is_dir():
        # a device or a pipe (output=/dev/null, /dev/stdout): written in place; a rename would replace it
        with open(path, "wb") as f:
            write(f)
        return
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            write(f)
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def unwritable(folder: str | Path) -> str | None:
    """Why `folder` cannot be written (created if needed), or None if it can: a file is made and removed."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        return str(err.strerror or err)
    return None


def check_writable(folder: str | Path, key: str) -> None:
    """A UserError naming `key` (the setting that chose `folder`) when `folder` cannot be written."""
    reason = unwritable(folder)
    if reason is not None:
        raise UserError(f"cannot write into {folder} ({reason}); pass {key}=<a writable folder>.")
