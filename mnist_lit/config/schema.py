"""The config schema: the type of every key (Hydra checks it while composing) and the allowed values.

`register()` (called by the entry points) stores `train_schema` in Hydra's ConfigStore, where it heads
conf/train.yaml's defaults list: a wrong type (`model.net.dropout=abc`), an unknown key or an unknown group
option (`data=foo`) is refused by Hydra itself, before anything runs; `validate` checks a data module's keys
and types (DATA_SCHEMAS) and keys added with `+`. Default values live in
the YAML files and the constructors; fields here are MISSING unless the YAML may leave them out, and
tests/test_schema.py fails when a YAML key, a field here and a constructor parameter disagree. Values of the
right type but outside the allowed range are refused by the objects' constructors (data sizes, hidden
sizes, dropout, augmentation ranges) or, for keys that build no object of ours, by `validate`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, is_dataclass
from typing import Any, Dict, List  # noqa: UP035 (OmegaConf reads these annotations)

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from mnist_lit import CONF_DIR
from mnist_lit.config.messages import unknown_key
from mnist_lit.errors import UserError


@dataclass
class DigitsDataConfig:
    """The keys every data module takes (mnist_lit.data.TensorDataModule's); data=digits has no others."""

    _target_: str = MISSING
    val_size: int = MISSING
    batch_size: int = MISSING
    eval_batch_size: int = MISSING
    normalize: bool = MISSING
    split_seed: int = MISSING


@dataclass
class DataConfig(DigitsDataConfig):
    """data=mnist: where the files are, and whether to download them."""

    root: str = MISSING
    download: bool = MISSING


@dataclass
class NetConfig:
    _target_: str = MISSING
    input_size: int = MISSING
    hidden_sizes: List[int] = MISSING  # noqa: UP006
    num_classes: int = MISSING
    dropout: float = MISSING
    init: str = MISSING


@dataclass
class CNNConfig:
    _target_: str = MISSING
    input_size: int = MISSING
    channels: List[int] = MISSING  # noqa: UP006
    kernel_size: int = MISSING
    hidden_size: int = MISSING
    num_classes: int = MISSING
    dropout: float = MISSING


@dataclass
class ModelConfig:
    _target_: str = MISSING
    # typed by the chosen option's own schema (conf/model/net/<option>.yaml heads its defaults with it)
    net: Any = MISSING
    # any torch optimizer / scheduler / augmentation, each with its own keys
    optimizer: Dict[str, Any] = MISSING  # noqa: UP006
    # Any, not Optional[Dict]: OmegaConf 2.3 fails on `model.scheduler={...}` over a typed null
    scheduler: Any = None
    augment: Any = None
    label_smoothing: float = MISSING
    num_classes: int = MISSING


@dataclass
class DistillModelConfig(ModelConfig):
    teacher: str = MISSING
    load_teacher: Dict[str, Any] = MISSING  # noqa: UP006
    temperature: float = MISSING
    distill_weight: float = MISSING


@dataclass
class TrainConfig:
    # typed by validate(), with DATA_SCHEMAS' schema of the data module chosen
    data: Any = MISSING
    model: ModelConfig = MISSING
    # Lightning's Trainer arguments are many; its own checks name the bad one
    trainer: Dict[str, Any] = MISSING  # noqa: UP006
    callbacks: Any = field(default_factory=dict)
    logger: Any = field(default_factory=dict)
    seed: int = MISSING
    # the speed layer, mnist_lit/speed/grouped.py
    fast: bool = MISSING
    steps_per_execution: int = MISSING
    ckpt_path: str | None = None
    resume: str | None = None
    test: bool = True
    threads: int | None = None
    # one metric name, or a list of them (a multi-objective search); checked against METRICS by validate()
    optimized_metric: Any = None


def register() -> None:
    """Store the schema in Hydra's ConfigStore, where conf/train.yaml's defaults list finds it."""
    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainConfig)
    # the schemas that conf/model/net/{mlp,cnn}.yaml and conf/model/distill.yaml start with
    # at the root, not in those groups: `--help` would list them as options to choose
    store.store(name="mlp_schema", node=NetConfig)
    store.store(name="cnn_schema", node=CNNConfig)
    store.store(name="distill_schema", node=DistillModelConfig)


# each data module's schema (conf/data/<option>.yaml), by its _target_. Not at the head of the option's
# defaults list as the networks' are: Hydra lets `+data=mnist` (an option added twice) pass for an option
# that has a defaults list
DATA_SCHEMAS = {
    "mnist_lit.data.MNISTDataModule": DataConfig,
    "mnist_lit.digits.DigitsDataModule": DigitsDataConfig,
}


def _positive_number(value: Any) -> bool:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return number and math.isfinite(value) and value > 0


# config groups below the top level: Hydra takes `model.net=cnn` for a value, not for model/net's option cnn
GROUP_KEYS = ("model.net", "model.scheduler", "model.augment")


def unset_keys(node, prefix: str = "") -> list[str]:
    """Keys without a value: one the config leaves for the command line (model=distill's teacher), one
    removed with `~key`, or one that points at a removed key (`~seed` leaves data.split_seed's `${seed}`)."""
    from omegaconf import ListConfig
    from omegaconf.errors import InterpolationKeyError

    found = []
    for key in node.keys() if isinstance(node, DictConfig) else range(len(node)):
        name = f"{prefix}{key}"
        if OmegaConf.is_missing(node, key):
            found.append(f"{name} has no value: give it on the command line ({name}=...)")
        elif OmegaConf.is_interpolation(node, key):
            try:
                node[key]
            except InterpolationKeyError as err:
                found.append(f"{name}: {str(err).splitlines()[0]}")
            except OmegaConfBaseException:  # resolvers that need a running Hydra job: not a config mistake
                pass
        elif isinstance(node[key], (DictConfig, ListConfig)):
            found += unset_keys(node[key], f"{name}.")
    return found


# what a run records in metrics.json, the names optimized_metric may give: the module's scores, and the
# network's cost (mnist_lit/runs/objectives.py)
METRICS = ("val/acc_best", "val/acc", "val/loss", "train/acc", "train/loss", "test/acc", "test/loss",
           "model/params", "model/latency_ms")


def optimized_metric_problem(metric) -> str | None:
    """What is wrong with an optimized_metric (one name of METRICS or a non-empty list of them), or None."""
    listed = isinstance(metric, (list, tuple, ListConfig))
    names = list(metric) if listed else [metric]
    unknown = [str(name) for name in names if name not in METRICS]
    if metric is None or (names and not unknown):
        return None
    said = f"no metric {', '.join(unknown)}" if unknown else "an empty list"
    shown = f"[{','.join(map(str, names))}]" if listed else metric
    return (f"optimized_metric={shown}: {said}; a run records {', '.join(METRICS)}. Name one, or a list of "
            "them for several objectives: 'optimized_metric=[val/acc_best,model/params]' "
            "'hydra.sweeper.direction=[maximize,minimize]'")


def validate(cfg: DictConfig) -> None:
    """Raise a UserError naming the key, its value and what is allowed, for values the types let through."""
    unset = unset_keys(cfg)
    if unset:
        raise UserError("invalid config: " + "; ".join(unset) + ".")
    schema = OmegaConf.structured(TrainConfig)
    # options with a schema of their own: model=distill, model/net=cnn
    for key in ("model", "model.net"):
        node = OmegaConf.select(cfg, key)
        if isinstance(node, DictConfig) and is_dataclass(OmegaConf.get_type(node)):
            OmegaConf.update(schema, key, OmegaConf.structured(OmegaConf.get_type(node)), merge=False)
    data_schema = DATA_SCHEMAS.get(str(OmegaConf.select(cfg, "data._target_")))
    if data_schema is not None:
        OmegaConf.update(schema, "data", OmegaConf.structured(data_schema), merge=False)
    try:  # keys added with `+` bypass Hydra's check; a merge into the schema (as plain dicts) finds them
        OmegaConf.merge(schema, OmegaConf.to_container(cfg))
    except OmegaConfBaseException as err:
        if isinstance(err, ConfigKeyError) and isinstance(err.parent_node, DictConfig):
            added = unknown_key(f"+{err.full_key}", str(err.full_key), err.parent_node)
            raise UserError(f"invalid config: {added}") from None
        raise UserError(
            f"invalid config: {err.full_key}: {str(err).splitlines()[0]}. See every key and its value with "
            "python -m mnist_lit.train --cfg job."
        ) from None
    problems = []
    for key in GROUP_KEYS:  # `model.net=cnn` sets a key to a string where `model/net=cnn` chooses an option
        value = OmegaConf.select(cfg, key)
        if isinstance(value, str):
            group = key.replace(".", "/")
            options = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
            problems.append(f"{key}={value!r}: {key} is chosen from the config group {group}, with "
                            f"{group}={value if value in options else '<option>'} "
                            f"(options: {', '.join(options)})")
    if problem := optimized_metric_problem(cfg.get("optimized_metric")):
        problems.append(problem)
    if not 0 <= cfg.seed < 2**32:
        problems.append(f"seed={cfg.seed}: must be between 0 and {2**32 - 1}")
    if cfg.get("threads") is not None and cfg.threads <= 0:
        problems.append(f"threads={cfg.threads}: must be a positive integer (or null: one per core)")
    if "lr" in cfg.model.optimizer and not _positive_number(cfg.model.optimizer.lr):
        problems.append(f"model.optimizer.lr={cfg.model.optimizer.lr!r}: must be a number > 0, e.g. 1e-3")
    if cfg.steps_per_execution < 1:
        problems.append(f"steps_per_execution={cfg.steps_per_execution}: must be a positive integer (1: no grouping)")
    if not 0.0 <= cfg.model.label_smoothing <= 1.0:
        problems.append(f"model.label_smoothing={cfg.model.label_smoothing}: must be in [0, 1]")
    if not str(cfg.data.get("root", "x")).strip():  # the current folder, where a download would land
        problems.append("data.root is empty: give the folder that holds MNIST/raw (or leave it out)")
    if "max_epochs" in cfg.trainer:
        max_epochs = cfg.trainer.max_epochs
        if max_epochs is None:  # Lightning would train 1000 epochs
            problems.append("trainer.max_epochs=null: give a number of epochs (or -1: no limit)")
        elif not isinstance(max_epochs, int) or isinstance(max_epochs, bool) or not (max_epochs > 0 or max_epochs == -1):
            problems.append(f"trainer.max_epochs={max_epochs!r}: must be a positive integer (or -1: no limit)")
    for key in ("accumulate_grad_batches", "check_val_every_n_epoch"):
        value = cfg.trainer.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            problems.append(f"trainer.{key}={value!r}: must be a positive integer")
    clip = cfg.trainer.get("gradient_clip_val")
    if clip is not None and not (_positive_number(clip) or clip == 0):
        problems.append(f"trainer.gradient_clip_val={clip!r}: must be a number > 0 (or null: no clipping)")
    if problems:
        raise UserError("invalid config: " + "; ".join(problems) + ".")
