"""The exceptions a user's mistake raises: every layer raises them, the commands print them as one paragraph."""

from __future__ import annotations

import re
import sys
from pathlib import Path


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
    """The UserError behind `err` (raised_user_error), or one made of a library's refusal of a value the user
    gave (library_refusal)."""
    return raised_user_error(err) or library_refusal(err)


def raised_user_error(err: BaseException) -> UserError | None:
    """The UserError raised: `err` itself, or the cause Hydra's instantiate wrapped it in."""
    while err is not None and not isinstance(err, UserError):
        err = err.__cause__
    return err


def first_sentence(text: str) -> str:
    """The first sentence of a library's message (torch's go on with advice that does not apply here)."""
    if not text.strip():
        return ""
    first = re.split(r"(?<=[^.])\.(?:\s|$)", text.strip(), maxsplit=1)[0].splitlines()[0]
    return first if len(first) <= 240 else first[:240].rsplit(" ", 1)[0] + " ..."


def refusal_sentences(text: str) -> str:
    """A library's refusal in its own words: its first sentence, and the one that lists what is allowed where
    one does (Lightning's "Allowed precision values: ...")."""
    first = first_sentence(text)
    rest = text.strip()[len(first):].lstrip(". ")
    listing = r"(allowed|valid|supported|available|possible|expected|choose|use one of)\b"
    allowed = next((s for s in re.split(r"(?<=[^.])\.\s+", rest) if re.match(listing, s, re.I)), None)
    return f"{first}. {first_sentence(allowed)}" if allowed else first


def named_key(message: str, candidates: dict[str, str | None]) -> str | None:
    """The candidate key (`full.key` -> the value given, or None) that `message` names by its last part, or
    else whose value it quotes (`Timer(duration='abc')`): `key=value` when the value is known. Of several,
    the one named whose value the message quotes, then the one named first."""
    words = [w.lower() for w in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", message)]
    found = []
    for key, value in candidates.items():
        name = key.rpartition(".")[2].lower()
        quoted = value is not None and len(value) > 1 and re.search(
            rf"(?<![\w.]){re.escape(value)}(?![\w.])", message, re.IGNORECASE) is not None
        if name in words or quoted:
            found.append((name not in words, not quoted, words.index(name) if name in words else 0, key, value))
    if not found:
        return None
    *_, key, value = min(found)
    return key if value is None else f"{key}={value}"


def library_refusal(err: BaseException) -> UserError | None:
    """A UserError naming the key, for an error by which a library refuses a value of the user's config:
    Lightning's MisconfigurationException wherever it is raised, and a ValueError or TypeError of a Lightning
    or torchmetrics argument check whose message names a Trainer argument or a key given on the command line
    (the trainer checks some only when fit starts: val_check_interval, gradient_clip_algorithm). Any other
    error, a bug's, keeps its traceback."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        misconfigured = any(c.__name__ == "MisconfigurationException" for c in type(err).__mro__)
        if misconfigured or (isinstance(err, (ValueError, TypeError)) and _raised_by_lightning(err)):
            message = str(err).strip()
            key = named_key(message, _user_keys())
            if key is not None or misconfigured:
                return UserError(f"{key or 'trainer'}: {refusal_sentences(message).rstrip('.')}. Give the "
                                 "key another value (python -m mnist_lit.train --cfg job shows the config).")
        err = err.__cause__ or err.__context__
    return None


def _raised_by_lightning(err: BaseException) -> bool:
    """Whether the line that raised `err` is Lightning's or torchmetrics' (loaded: they raised it)."""
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return False
    packages = [sys.modules[name] for name in ("lightning", "lightning_fabric", "torchmetrics")
                if name in sys.modules]
    where = tb.tb_frame.f_code.co_filename
    return any(where.startswith(str(Path(package.__file__).parent)) for package in packages)


def _user_keys() -> dict[str, str | None]:
    """The keys a message may name: those of the running job's command line (`key=value`, as typed), then
    the Trainer's arguments (`trainer.<argument>`)."""
    keys: dict[str, str | None] = {}
    if "lightning.pytorch" in sys.modules:
        import inspect

        from lightning.pytorch import Trainer

        keys |= {f"trainer.{name}": None for name in inspect.signature(Trainer).parameters}
    if "hydra.core.hydra_config" in sys.modules:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            for override in HydraConfig.get().overrides.task:
                key, _, value = str(override).partition("=")
                keys[key.lstrip("+~")] = value
    return keys
