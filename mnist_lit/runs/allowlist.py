"""What may be built from a run folder's files: the allowlist of `_target_`s, interpolations and overrides.

A run folder (its `.hydra/config.yaml`, its recorded `.hydra/overrides.yaml`) may come from anyone, and
Hydra calls whatever a `_target_` names: `torch.load` of a pickle, `runpy.run_path`, `subprocess.run`...
So mnist-lit builds from those files only its own networks (the nn.Module classes defined in
mnist_lit.model) and the optimizers, schedulers, data, callbacks and loggers its conf/ uses (`SAFE_TARGETS`);
everything else in them must be plain values. Targets are compared as strings: nothing named by the file
is imported to check it. Configs given on the command line by the user are not checked here.
"""

from __future__ import annotations

import re

from mnist_lit import CONF_DIR
from mnist_lit.errors import UserError

NETWORK_MODULE = "mnist_lit.model"

CALLBACKS = ("LearningCurves", "LogSampleDigits", "LogTestImages", "NetworkSummary", "StepAxis", "StepProgressBar",
             "TrainingCurve", "TutorialCharts")

# Everything conf/ builds besides the networks (tests/test_security.py checks that conf/ uses nothing else);
# a new option that builds another class adds it here
SAFE_TARGETS = frozenset(
    [f"torch.optim.{name}" for name in (
        "Adam", "AdamW", "SGD", "RMSprop", "Adagrad", "Adadelta", "Adamax", "NAdam", "RAdam", "ASGD", "Rprop",
    )]
    + [f"torch.optim.lr_scheduler.{name}" for name in (
        "OneCycleLR", "CosineAnnealingLR", "CosineAnnealingWarmRestarts", "StepLR", "MultiStepLR",
        "ExponentialLR", "LinearLR", "ConstantLR", "PolynomialLR", "CyclicLR", "ReduceLROnPlateau",
    )]
    + [
        "mnist_lit.module.MNISTClassifier",
        "mnist_lit.distill.DistillationClassifier",
        "mnist_lit.runs.checkpoint.load_run",  # conf/model/distill.yaml: the teacher, read as evaluate reads a run
        "mnist_lit.data.MNISTDataModule",
        "mnist_lit.augment.RandomAffine",
        "mnist_lit.digits.DigitsDataModule",
        *[f"mnist_lit.reporting.callbacks.{name}" for name in CALLBACKS if name != "StepProgressBar"],
        "mnist_lit.reporting.progress.StepProgressBar",
        "mnist_lit.reporting.progress.EpochLines",
        "mnist_lit.runs.folders.ClaimRunDir",  # conf/train.yaml's hydra.callbacks
        # the names these classes had before the package was split into subpackages: runs trained then load
        *[f"mnist_lit.callbacks.{name}" for name in CALLBACKS],
        "mnist_lit.plots.LearningCurves",
        "mnist_lit.plots.LogTestImages",
        "mnist_lit.errors.CheckRunDir",
        "mnist_lit.runs.ClaimRunDir",
        "lightning.pytorch.Trainer",
    ]
    + [f"lightning.pytorch.callbacks.{name}" for name in (
        "ModelCheckpoint", "LearningRateMonitor", "RichModelSummary", "RichProgressBar", "ModelSummary",
        "TQDMProgressBar", "EarlyStopping",
    )]
    + [f"lightning.pytorch.loggers.{name}" for name in ("TensorBoardLogger", "CSVLogger", "MLFlowLogger")]
)
# OmegaConf resolvers that only read a value (an environment variable, Hydra's own config, the time, what the
# data module that data._target_ names, checked here like any target, says of its data: mnist_lit/config/
# building.py); oc.create / oc.decode would build a config (with a `_target_`) out of a string, others are
# unknown code
SAFE_RESOLVERS = frozenset({"oc.env", "hydra", "now", "datamodule"})
# the only Hydra settings a recorded override may change: where the run writes (Hydra itself never
# records hydra.* overrides in overrides.yaml; these are harmless if someone wrote them by hand)
SAFE_HYDRA_KEYS = frozenset({"hydra.run.dir", "hydra.sweep.dir", "hydra.sweep.subdir", "hydra.job.chdir"})

WHY = (
    "mnist-lit builds from a run folder's files only its own networks (the nn.Module classes of "
    f"{NETWORK_MODULE}) and the optimizers, schedulers, data, callbacks and loggers of its conf/ "
    "(mnist_lit/runs/allowlist.py), because a run folder can come from anyone and building anything else "
    "could run its code. Nothing was built or run. Use a run folder written by mnist_lit.train. If you "
    "wrote this yourself and trust it: give a recorded override again after resume=<run> (the command "
    "line's value replaces it), or add a class of your own to SAFE_TARGETS in mnist_lit/runs/allowlist.py"
)
NAME = re.compile(r"^[A-Za-z0-9_-]+$")


def refusal(source: str, what: str) -> UserError:
    return UserError(f"{source}: {what}: refused. {WHY}.")


def network_classes() -> dict[str, type]:
    """mnist-lit's networks, by target name: the nn.Module classes defined in mnist_lit.model."""
    import inspect

    from torch import nn

    from mnist_lit import model

    return {
        f"{NETWORK_MODULE}.{name}": obj
        for name, obj in vars(model).items()
        if inspect.isclass(obj) and issubclass(obj, nn.Module) and obj.__module__ == NETWORK_MODULE
    }


def is_network(target: object) -> bool:
    # only a name under mnist_lit.model imports it (our own module) to list its classes
    return isinstance(target, str) and target.startswith(NETWORK_MODULE + ".") and target in network_classes()


def is_safe_target(target: object) -> bool:
    return isinstance(target, str) and (target in SAFE_TARGETS or is_network(target))


def check_network(target: object, source: str, key: str) -> None:
    """Refuse a network target (model.net._target_) that is not one of mnist-lit's networks."""
    if not is_network(target):
        raise refusal(source, f"key {key} names the target {target!r}, which is not one of mnist-lit's "
                              f"networks ({', '.join(sorted(network_classes()))})")


def check_tree(node: object, source: str, key: str = "") -> None:
    """Refuse a config (plain dicts, lists and scalars, interpolations unresolved) that names a target
    outside the allowlist, anywhere, or holds an interpolation that could build one."""
    if isinstance(node, dict):
        if "_target_" in node and not is_safe_target(node["_target_"]):
            raise refusal(source, f"key {_join(key, '_target_')} names the target {node['_target_']!r}")
        for name, value in node.items():
            check_tree(str(name), source, key)  # a key may hold an interpolation too
            check_tree(value, source, _join(key, str(name)))
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            check_tree(value, source, f"{key}[{i}]")
    elif isinstance(node, str):
        _check_interpolation(node, source, key)
    elif node is not None and not isinstance(node, (bool, int, float)):
        raise refusal(source, f"key {key} holds {node!r}, which is not a plain value")


def check_override(override: object, source: str) -> None:
    """Refuse a recorded override (one line of .hydra/overrides.yaml) unless it sets a key to plain values
    and allowed targets, or picks an option of a conf/ group: no Hydra settings, no command-line flags."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    if not isinstance(override, str) or override.startswith("-"):
        raise refusal(source, f"the recorded override {override!r} is not a key=value override (a "
                              "command-line flag?)")
    try:
        parsed = OverridesParser.create().parse_override(override)
    except HydraException as err:
        raise refusal(source, f"the recorded override {override!r} cannot be parsed "
                              f"({str(err).splitlines()[0]})") from None
    key = parsed.key_or_group
    if parsed.package is not None:
        raise refusal(source, f"the recorded override {override!r} moves the config group {key} into the "
                              f"package {parsed.package}")
    if not all(NAME.match(part) for part in re.split(r"[./]", key)):
        raise refusal(source, f"the recorded override {override!r} (key {key}) names no plain config key")
    value = _plain(parsed.value(), override, source, key)
    if re.split(r"[./]", key)[0] == "hydra":
        if key not in SAFE_HYDRA_KEYS or isinstance(value, (dict, list)):
            raise refusal(source, f"the recorded override {override!r} changes Hydra's own setting {key} "
                                  f"(only {', '.join(sorted(SAFE_HYDRA_KEYS))} may be recorded)")
    elif "/" in key or (CONF_DIR / key).is_dir():  # a config group: its option must be a file of conf/
        for option in value if isinstance(value, list) else [value]:
            if option is not None and not _is_option(key, option):
                raise refusal(source, f"the recorded override {override!r} picks {option!r} for the config "
                                      f"group {key}, which is not an option of mnist-lit's conf/{key}/")
    parent, _, last = key.rpartition(".")
    check_tree({last: value}, source, parent)


def _is_option(group: str, option: object) -> bool:
    if not isinstance(option, str) or not all(NAME.match(part) for part in option.split("/")):
        return False
    return (CONF_DIR / group / f"{option}.yaml").is_file()


def _plain(value: object, override: str, source: str, key: str) -> object:
    """Hydra's parsed override value as plain dicts, lists and scalars; a sweep or function is refused."""
    from hydra.core.override_parser.types import QuotedString

    if isinstance(value, QuotedString):
        return value.text
    if isinstance(value, dict):
        return {k: _plain(v, override, source, key) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v, override, source, key) for v in value]
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    raise refusal(source, f"the recorded override {override!r} gives key {key} a sweep or function "
                          f"({type(value).__name__}), not a plain value")


def _check_interpolation(text: str, source: str, key: str) -> None:
    """Refuse `${...}` calling a resolver outside SAFE_RESOLVERS or building a dict (OmegaConf's parser)."""
    if "${" not in text:
        return
    from omegaconf import grammar_parser
    from omegaconf.errors import GrammarParseError
    from omegaconf.grammar.gen.OmegaConfGrammarParser import OmegaConfGrammarParser as Grammar

    try:
        tree = grammar_parser.parse(text)
    except GrammarParseError:
        raise refusal(source, f"key {key} holds {text!r}, an interpolation that cannot be parsed") from None
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, Grammar.ResolverNameContext) and node.getText() not in SAFE_RESOLVERS:
            raise refusal(source, f"key {key} holds {text!r}, which calls the resolver {node.getText()} "
                                  f"(only {', '.join(sorted(SAFE_RESOLVERS))} may be used)")
        if isinstance(node, Grammar.DictContainerContext):
            raise refusal(source, f"key {key} holds {text!r}, an interpolation that builds a dict")
        stack.extend(node.getChildren() if hasattr(node, "getChildren") else [])


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name
