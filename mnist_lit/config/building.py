"""Objects from config: `hydra.utils.instantiate` with errors that name the config key and the fix."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from mnist_lit.errors import UserError, user_error_of

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

    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        cause = user_error_of(err) or err.__cause__ or err
        if isinstance(cause, UserError):
            raise cause from None
        reason = str(cause).rstrip(". ")
        raise UserError(f"{key}: cannot be built from the config: {reason}. Check its keys and values "
                        f"(python -m mnist_lit.train --cfg job shows them).") from err


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
