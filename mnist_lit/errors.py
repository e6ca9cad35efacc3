"""The exceptions a user's mistake raises: every layer raises them, the commands print them as one paragraph."""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix (bad config value, missing data, bad checkpoint...)."""

    label, exit_code = "error", 1


class RunStopped(UserError):
    """A run that ended before completing (interrupted, diverged, failed, pruned): metrics.json says how."""

    label = "stopped"

    def __init__(self, message: str, status: str, exit_code: int = 1):
        super().__init__(message)
        self.status, self.exit_code = status, exit_code

    def __reduce__(self):  # joblib and submitit send a job's error back pickled
        return type(self), (str(self), self.status, self.exit_code)


def user_error_of(err: BaseException) -> UserError | None:
    """The UserError behind `err`: itself, or the cause Hydra's instantiate wrapped it in."""
    while err is not None and not isinstance(err, UserError):
        err = err.__cause__
    return err
