"""Objects from config: `hydra.utils.instantiate` with errors that name the config key and the fix."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from mnist_lit.errors import UserError, named_key, raised_user_error, refusal_sentences

# what a config may ask of its data module with ${datamodule:<name>}: the class attributes that say what its
# data is like (mnist_lit.data.TensorDataModule), known without reading any data
DATAMODULE_ATTRIBUTES = ("image_shape", "input_size", "num_classes")


def datamodule_attribute(name: str, *, _root_: DictConfig):
    """`${datamodule:input_size}`: an attribute of the data module class that the config's data._target_
    names, so that the networks' sizes follow `data=...` (conf/model/net/mlp.yaml's input_size)."""
    from hydra.utils import get_class

    if name not in DATAMODULE_ATTRIBUTES:
        raise UserError(f"${{datamodule:{name}}}: a data module says only its "
                        f"{', '.join(DATAMODULE_ATTRIBUTES)}; use one of those.")
    target = OmegaConf.select(_root_, "data._target_")
    if not isinstance(target, str):
        raise UserError(f"${{datamodule:{name}}} needs a data module, and the config has no data._target_: "
                        "choose a dataset with data=<option> (python -m mnist_lit.train --help lists them).")
    value = getattr(get_class(target), name)
    return list(value) if isinstance(value, tuple) else value


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("datamodule"):
        OmegaConf.register_new_resolver("datamodule", datamodule_attribute)


def build(node: DictConfig, key: str, **kwargs):
    """instantiate(node), turning a failure into a UserError that names the config key."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    check_types(node, key)
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__ or err
        if raised_user_error(cause) is not None:
            raise raised_user_error(cause) from None
        # anything else the object refused (a library's check of its arguments): named by the node's keys
        message = str(cause).strip() or type(cause).__name__
        given = {f"{key}.{k}": _shown(node, k) for k in node if not str(k).startswith("_")}
        named = named_key(message, given)
        raise UserError(f"{named or key}: {key} cannot be built from the config: "
                        f"{refusal_sentences(message).rstrip('.')}. Check its keys and values "
                        f"(python -m mnist_lit.train --cfg job shows them).") from err


def check_types(node, key: str) -> None:
    """A UserError for a value of `node` (and of the objects it nests) whose type the parameter it goes to
    does not take, by the parameter's annotation: some libraries take any value and fail later on it, deep
    in their code (Lightning's `Trainer(profiler=5)` when the fit starts). Only what a command line can give
    (numbers, strings, booleans, null, lists, dicts) is checked, against the annotations understood; a
    literal's values are left to the library, whose message lists them."""
    import typing

    from hydra.utils import get_object

    if isinstance(node, DictConfig) and isinstance(node.get("_target_"), str):
        try:
            target = get_object(node._target_)
            hints = typing.get_type_hints(target.__init__ if isinstance(target, type) else target)
        except Exception:  # a target that cannot be imported: instantiate says so; unreadable annotations
            hints = {}
        for name in node:
            if name in hints and not str(name).startswith("_"):
                try:
                    value = node[name]
                except Exception:  # an interpolation that cannot be resolved here: left to instantiate
                    continue
                if OmegaConf.is_config(value) and "_target_" not in value:
                    value = OmegaConf.to_container(value, resolve=True)
                if not OmegaConf.is_config(value) and not _takes(hints[name], value):
                    raise UserError(
                        f"{key}.{name}={_shown(node, name)}: {node._target_} takes {_described(hints[name])} "
                        f"for {name}, not {_described(type(value))}. Give it one of those (python -m "
                        "mnist_lit.train --cfg job shows the config).")
    if OmegaConf.is_config(node):
        for name in node if isinstance(node, DictConfig) else range(len(node)):
            try:
                child = node[name]
            except Exception:
                continue
            if OmegaConf.is_config(child):
                check_types(child, f"{key}.{name}")


def _takes(hint, value) -> bool:
    """Whether a parameter annotated `hint` takes `value` (from a command line); True where unsure."""
    import collections.abc
    import datetime
    import os
    import typing

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is typing.Any or isinstance(hint, (typing.TypeVar, str, typing.ForwardRef)):
        return True
    if origin is typing.Union or type(hint).__name__ == "UnionType":
        return any(_takes(arg, value) for arg in args)
    if origin is typing.Literal:  # the library's own check lists the allowed values
        return True
    if hint is type(None) or hint is None:
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str or hint is os.PathLike or (isinstance(hint, type) and issubclass(hint, os.PathLike)):
        return isinstance(value, str)
    container = origin or hint
    if container in (list, tuple, collections.abc.Sequence, collections.abc.Iterable, set):
        element = args[0] if args and (container is not tuple or len(args) == 2 and args[1] is Ellipsis) \
            else typing.Any
        return isinstance(value, list) and all(_takes(element, item) for item in value)
    if container in (dict, collections.abc.Mapping):
        return isinstance(value, dict)
    if hint is datetime.timedelta or (isinstance(hint, type) and not hint.__module__ == "builtins"):
        return False  # an object a command line cannot give (a Profiler, a Strategy)
    return True


def _described(hint) -> str:
    """`hint` in words: "an int, a string or null"."""
    import typing

    if typing.get_origin(hint) is typing.Union or type(hint).__name__ == "UnionType":
        words = list(dict.fromkeys(_described(arg) for arg in typing.get_args(hint)))
        return ", ".join(words[:-1]) + f" or {words[-1]}" if len(words) > 1 else words[0]
    origin = typing.get_origin(hint) or hint
    names = {type(None): "null", bool: "a boolean", int: "an integer", float: "a number", str: "a string",
             list: "a list", tuple: "a list", dict: "a dict"}
    if typing.get_origin(hint) is typing.Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(hint)))
    return names.get(origin, f"a {getattr(origin, '__name__', str(origin))}")


def _shown(node: DictConfig, key: str) -> str | None:
    """The value of `node[key]` as a command line would give it, or None where it has none to show."""
    try:
        value = node[key]
    except Exception:  # an interpolation that needs what is not there
        return None
    if isinstance(value, DictConfig):
        return None
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value)
    return "null" if value is None else str(value).replace(" ", "")


def build_each(group: DictConfig | None, key: str) -> list:
    """The objects of a config group of named entries (callbacks, loggers); null entries are left out."""
    return [build(node, f"{key}.{name}") for name, node in (group or {}).items() if node is not None]


def build_loggers(group: DictConfig | None) -> list:
    """The loggers of the `logger` group. Jobs that share a SQLite store (MLflow's) build theirs in turn: the
    first one creates the store's tables, and two creating them at once would fail one of the jobs."""
    import contextlib
    import fcntl
    import os
    from pathlib import Path

    stores = {str(node.get("tracking_uri"))[len("sqlite:///"):] for node in (group or {}).values()
              if node is not None and str(node.get("tracking_uri", "")).startswith("sqlite:///")}
    with contextlib.ExitStack() as held:
        for store in sorted(stores):
            Path(store).parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(f"{store}.lock", os.O_RDWR | os.O_CREAT, 0o644)
            held.callback(os.close, fd)
            fcntl.flock(fd, fcntl.LOCK_EX)  # released with the file's closing
        return build_each(group, "logger")


def check_accelerator(accelerator: str) -> None:
    """Refuse a GPU run on a machine without one, saying what to use instead (Lightning's own message doesn't)."""
    import torch

    if accelerator in ("gpu", "cuda") and not (torch.cuda.is_available() or torch.backends.mps.is_available()):
        raise UserError(
            f"trainer.accelerator={accelerator} asks for a GPU, and torch {torch.__version__} finds none on this "
            "machine. Train on the CPU with trainer=cpu, or use trainer=default, which takes the GPU when there is one."
        )


def check_optimizer(module, trainer: DictConfig) -> None:
    """Build the optimizer and the scheduler once, so that a bad argument fails now, not after loading the
    data. A schedule over the whole fit (`total_steps: null`, filled in by the module) needs a fit of known
    length."""
    try:
        optimizer = module.optimizer_factory(params=module.net.parameters())
    except (TypeError, ValueError) as err:
        raise UserError(f"model.optimizer: {err}. Check its keys and values (--cfg job shows them).") from err
    if module.scheduler_factory is None:
        return
    whole_fit = getattr(module.scheduler_factory, "keywords", {}).get("total_steps", 0) is None
    if whole_fit and trainer.get("max_epochs", -1) == -1 and trainer.get("max_steps", -1) == -1:
        raise UserError("model.scheduler spans the whole fit (total_steps: null), and trainer.max_epochs=-1 "
                        "sets no end to it. Give trainer.max_epochs a number of epochs, or the scheduler a "
                        "total_steps.")
    try:
        module.scheduler_factory(optimizer=optimizer, **({"total_steps": 1000} if whole_fit else {}))
    except (TypeError, ValueError) as err:
        raise UserError(f"model.scheduler: {err}. Check its keys and values (--cfg job shows them).") from err
