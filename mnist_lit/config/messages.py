"""A user's mistake as one paragraph that names the problem and the fix, no traceback: Hydra's composition
errors, keys a config does not have, a config checked as a run's before `--cfg` prints it, and the decorator
that prints a UserError and exits 1."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from omegaconf import DictConfig

from mnist_lit import CONF_DIR
from mnist_lit.errors import UserError, user_error_of

T = TypeVar("T")


def whole_number(cfg: DictConfig, key: str, least: int, most: int | None = None) -> int:
    """`cfg[key]` if it is a whole number in [least, most]; else a UserError saying what it must be."""
    value = cfg.get(key)
    whole = isinstance(value, int) and not isinstance(value, bool)
    if not whole or value < least or (most is not None and value > most):
        span = f"between {least} and {most}" if most is not None else f"at least {least}"
        raise UserError(f"{key}={value!r} must be a whole number {span}.")
    return value


def report_user_errors(func: Callable[..., T]) -> Callable[..., T]:
    """Print a UserError as one paragraph and exit 1; HYDRA_FULL_ERROR=1 shows the traceback instead."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except KeyboardInterrupt:  # Ctrl-C outside training (loading, testing): nothing to save
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            print("stopped: interrupted (Ctrl-C).", file=sys.stderr)
            raise SystemExit(130) from None
        except PermissionError as exc:  # a file or folder of the command's that this user may not open
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            print(f"error: {exc.filename or 'a file'}: permission denied ({exc.strerror or exc}). Give this "
                  "user access to it, or use another path.", file=sys.stderr)
            raise SystemExit(1) from None
        except Exception as exc:
            err = user_error_of(exc)
            if err is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            print(f"{err.label}: {err}", file=sys.stderr)
            raise SystemExit(err.exit_code) from None

    return wrapper


def explain_hydra_errors(entry: Callable[[], T], explain: Callable[[Exception], str | None] = lambda err: None
                         ) -> Callable[[], T]:
    """`entry` (a `@hydra.main` function) reporting in one paragraph what Hydra would print in several lines
    or as a traceback: a command line it cannot compose, a sweeper's refusal, and what `explain` explains
    (how a sweep ended: mnist_lit.runs.folders.sweep_end_message).

    Hydra prints an unknown key, an unknown option, a value of the wrong type or an override it cannot parse
    in several lines that end in advice about HYDRA_FULL_ERROR, and for a misspelt key it suggests
    `+key=...`, which the schema then refuses. A read of Hydra's internals: its `hydra.main` calls
    `hydra._internal.utils.run_and_report` around composing the config and running the job
    (tests/test_errors.py fails if that changes).
    """

    @functools.wraps(entry)
    def wrapper():
        from hydra._internal import utils

        report = utils.run_and_report
        utils.run_and_report = lambda func: report(lambda: _explained(func, explain))
        try:  # --help and Hydra's checks of its flags run outside run_and_report
            return _explained(entry, explain)
        finally:
            utils.run_and_report = report

    return wrapper


def _explained(func: Callable[[], T], explain: Callable[[Exception], str | None]) -> T:
    from hydra.errors import CompactHydraException

    try:
        return func()
    except Exception as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        message = explain(err)
        if message is None and not _in_job(err):
            if isinstance(err, ValueError) and _raised_in(err, "_run_hydra"):  # flags that do not go together
                message = (f"{str(err).rstrip('.')}. python -m mnist_lit.{Path(sys.argv[0]).stem} --help "
                           "lists the flags.")
            elif _composing(err):
                message = composition_message(err, sys.argv)
            elif isinstance(err, CompactHydraException):  # a sweeper's refusal: its message is the paragraph
                message = str(err)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(1) from None


def _raised_in(err: Exception, function: str) -> bool:
    """Whether the innermost frame of `err`'s traceback is `function`'s."""
    import traceback

    frames = traceback.extract_tb(err.__traceback__)
    return bool(frames) and frames[-1].name == function


def _in_job(err: Exception) -> bool:
    """Whether `err` was raised in a job this process ran (Hydra's run_job is among its frames)."""
    import traceback

    return any(frame.name == "run_job" for frame in traceback.extract_tb(err.__traceback__))


def _composing(err: Exception) -> bool:
    """Whether `err` (from outside a job) comes from composing the config: Hydra's composition errors, or any
    error raised in Hydra's and OmegaConf's own code alone (`data=null`)."""
    import traceback

    import hydra
    import omegaconf
    from hydra.errors import ConfigCompositionException, OverrideParseException

    frames = traceback.extract_tb(err.__traceback__)
    if isinstance(err, (ConfigCompositionException, OverrideParseException)):
        return True
    theirs = (str(Path(hydra.__file__).parent), str(Path(omegaconf.__file__).parent), __file__)
    return all(frame.filename.startswith(theirs) for frame in frames)


def check_shown_config(config_name: str, check: Callable[[DictConfig], object], argv: list[str]) -> None:
    """For a command line that prints the config instead of running (`--cfg job|hydra|all`, `--info` of the
    config): `check` (the checks of a run) on that config first, so what a run refuses is refused here too,
    where Hydra would print it unchecked. A command line Hydra cannot compose is left to Hydra's report.

    A read of Hydra's internals: the argument parser its `hydra.main` parses with
    (`hydra._internal.utils.get_args_parser`), to read the flags and the overrides as Hydra does
    (tests/test_errors.py fails if that changes).
    """
    from hydra import compose, initialize_config_dir
    from hydra._internal.utils import get_args_parser
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    args = parse_flags(get_args_parser(), argv, config_name)
    if args.cfg is None and args.info not in ("all", "config"):
        return
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(args.config_name or config_name, args.overrides, return_hydra_config=True)
    except Exception:  # Hydra says what is wrong with the command line when it composes it again
        return
    HydraConfig.instance().set_config(cfg)  # ${hydra:...} keys resolve as in a run
    with open_dict(cfg):
        del cfg["hydra"]
    check(cfg)


def parse_flags(parser, argv: list[str], config_name: str):
    """`argv` parsed by Hydra's argument `parser`; a flag it does not know, or a bad value of one of its
    flags, is a UserError (argparse would print its usage and exit 2)."""
    command = f"python -m mnist_lit.{config_name}"

    def refuse(message: str):
        raise UserError(f"{message.rstrip('.')}: {command} takes key=value overrides and Hydra's flags "
                        f"(--help, --cfg job|hydra|all, --info, -m ...); {command} --help lists them.")

    parser.error = refuse  # argparse reports through its parser's error()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        refuse(f"unrecognized arguments: {' '.join(unknown)}")
    return args


def check_resolves(cfg: DictConfig) -> None:
    """A UserError for a value that cannot be resolved (`misclassified=${seed}` where the config has no
    seed, `${oops:1}`), before anything reads it; a value left unset (`???`) is the command's own check's."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "the config"
        raise UserError(f"{key}: {str(err).splitlines()[0].rstrip('.')}. Give it a value of its own, or "
                        f"interpolate a key the config has (python -m mnist_lit.{Path(sys.argv[0]).stem} "
                        "--cfg job shows them).") from None


# the keys of evaluate, predict and export that name a file or folder (their configs have no schema: Hydra
# reads `run_dir=2026` as a number and `ckpt_path=true` as a boolean)
PATH_KEYS = ("run_dir", "ckpt_path", "output_dir", "preview", "data.root")
COMMAND_PATH_KEYS = {"export": ("output",)}


def refuse_added_keys_and_non_paths(cfg: DictConfig, config_name: str) -> None:
    """What evaluate, predict and export check first: no key added (refuse_added_keys), and every path a
    string."""
    from omegaconf import OmegaConf

    refuse_added_keys(cfg, config_name)
    refuse_removed_keys(cfg, config_name)
    for key in PATH_KEYS + COMMAND_PATH_KEYS.get(config_name, ()):
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None and not isinstance(value, str):
            shown = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
            raise UserError(f"{key}={shown}: a path is text, and this reads as a {type(shown).__name__}. "
                            f"Quote it: {key}='{shown}' (in the shell: \"{key}='{shown}'\").")


def refuse_removed_keys(cfg: DictConfig, config_name: str) -> None:
    """A UserError for a key of conf/<config_name>.yaml that `cfg` lacks (`~output`): the command reads it."""

    def walk(node: DictConfig, own: DictConfig, prefix: str) -> None:
        for key in own:
            name = f"{prefix}{key}"
            if key not in node:
                default = own[key]
                shown = "null" if default is None else str(default)
                raise UserError(f"~{name}: python -m mnist_lit.{config_name} reads {name}; leave ~{name} out "
                                f"(its default: {name}={shown}) or give it a value with {name}=...")
            if isinstance(own[key], DictConfig) and isinstance(node[key], DictConfig):
                walk(node[key], own[key], f"{name}.")

    walk(cfg, own_keys(config_name), "")


def own_keys(config_name: str) -> DictConfig:
    """The keys conf/<config_name>.yaml gives its command (Hydra's defaults list and settings left out)."""
    from omegaconf import OmegaConf

    own = OmegaConf.load(CONF_DIR / f"{config_name}.yaml")
    for composing in ("defaults", "hydra"):
        own.pop(composing, None)
    return own


def refuse_added_keys(cfg: DictConfig, config_name: str) -> None:
    """A UserError for a key of `cfg` that conf/<config_name>.yaml does not have: evaluate, predict and export
    read only their own keys, so one added with `+` (a misspelt one) would be ignored without a word."""

    def walk(node: DictConfig, known: DictConfig, prefix: str) -> None:
        for key in node:
            name = f"{prefix}{key}"
            if key not in known:
                raise UserError(unknown_key(f"+{name}", name, known, f"python -m mnist_lit.{config_name}"))
            if isinstance(node[key], DictConfig) and isinstance(known[key], DictConfig):
                walk(node[key], known[key], f"{name}.")

    walk(cfg, own_keys(config_name), "")


def unknown_key(override: str, full_key: str, parent, command: str = "python -m mnist_lit.train") -> str:
    """`override` names `full_key`, which `parent` (its DictConfig) does not have: the likely key, the keys
    there, and `+key=` where an object takes arguments its config does not list (the optimizer's)."""
    import difflib
    from dataclasses import is_dataclass

    from omegaconf import OmegaConf

    where, _, key = full_key.rpartition(".")
    keys = [str(k) for k in parent if str(k) != "hydra" and not str(k).startswith("_")]
    message = f"{override}: {where or 'the config'} has no key {key!r}"
    close = difflib.get_close_matches(key, keys, n=1)
    if close:
        message += f" (did you mean {where + '.' if where else ''}{close[0]}?)"
    message += f"; it has {', '.join(keys)}."
    # an object whose config has no schema may take arguments it does not list; a data module's has one,
    # checked by validate (schema.DATA_SCHEMAS), though Hydra does not know it
    typed = is_dataclass(OmegaConf.get_type(parent)) or where == "data"
    if "_target_" in parent and not typed and not override.startswith("+"):
        message += f" To pass one it does not set yet, add it with +{override}."
    return message + f" {command} --cfg job prints the whole config."


def composition_message(err: Exception, argv: list[str]) -> str:
    """What is wrong with the command line `argv` that Hydra could not compose (`err`), and the fix."""
    import re

    from hydra.errors import MissingConfigException, OverrideParseException
    from omegaconf import DictConfig, ListConfig, OmegaConf

    command = f"python -m mnist_lit.{Path(argv[0]).stem}"
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if isinstance(err, OverrideParseException):
        return (f"cannot read the override {err.override!r}: {lines[0] if lines else 'bad syntax'}. In the "
                "shell, quote an override that has brackets, commas or spaces, e.g. "
                "'model.net.hidden_sizes=[256,128]'; the syntax: "
                "https://hydra.cc/docs/advanced/override_grammar/basic/")
    if isinstance(err, MissingConfigException) and err.missing_cfg_file and err.options:
        group, _, name = err.missing_cfg_file.rpartition("/")
        return (f"{group}={name}: {group} has no option {name!r}; choose one of: {', '.join(err.options)}. "
                f"{command} --help lists every group and its options.")
    cause = err.__cause__
    full_key, parent = getattr(cause, "full_key", None), getattr(cause, "parent_node", None)
    first = lines[0] if lines else type(err).__name__
    if first.startswith("Could not override") and full_key and isinstance(parent, DictConfig):
        override = next((a for a in argv[1:] if a.split("=", 1)[0] == full_key), f"{full_key}=...")
        return unknown_key(override, str(full_key), parent, command)
    if first.startswith("Error merging override") and cause is not None:
        override = first.removeprefix("Error merging override").strip()
        reason = str(cause).splitlines()[0].rstrip(".")
        message = f"{override}: {reason}."
        key = str(full_key).rpartition(".")[2]
        if isinstance(parent, DictConfig) and key in parent:
            try:
                value = parent[key]
                if isinstance(value, ListConfig):
                    value = OmegaConf.to_container(value)
            except Exception:  # an interpolation that cannot be resolved here: show nothing
                value = None
            shown = "" if value is None or isinstance(value, DictConfig) else str(value).replace(" ", "")
            if shown and len(shown) <= 40:
                message += f" For comparison, the config's own value: {full_key}={shown}."
        return message + f" {command} --cfg job prints the whole config."
    no_group = re.match(r"Could not override '(\S+)'\. No match in the defaults list", " ".join(lines))
    if no_group:  # evaluate's model/net=cnn: a group of train's, where evaluate reads the run's own config
        group = no_group.group(1)
        return (f"{group}=...: {command} has no config group {group} to choose (a run's network and data "
                f"come from its own config). {command} --help lists what it takes.")
    chosen = re.match(r"Multiple values for (\S+)\.|(\S+) appears more than once in the final", first)
    if chosen:  # `+group=option` for a group the config has chosen already
        group = chosen.group(1) or chosen.group(2)
        return (f"+{group}=...: {group} has an option already; choose another with {group}=<option>, "
                f"without the +. {command} --help lists the options.")
    details = [line for line in lines if not line.startswith(("full_key:", "reference_type", "object_type"))]
    if cause is not None and str(cause):
        details.append(str(cause).splitlines()[0])
    return (f"the command line cannot be made into a config: {' '.join(details).rstrip('.')}. Check the "
            f"overrides; {command} --help lists the groups and their options.")
