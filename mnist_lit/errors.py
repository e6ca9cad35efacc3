"""User-facing errors: one paragraph that names the problem and the fix, no traceback."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class UserError(Exception):
    """A mistake the user can fix (bad config value, missing data, bad checkpoint...)."""


def report_user_errors(func: Callable[..., T]) -> Callable[..., T]:
    """Print a UserError as one paragraph and exit 1; HYDRA_FULL_ERROR=1 shows the traceback instead."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except UserError as err:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(1) from None

    return wrapper
