"""One truth for every config key: the YAML file, the schema (mnist_lit/config/schema.py) and the constructor that
takes the key agree on its name and default value; a key added in one place only fails here."""

import dataclasses
import inspect
from pathlib import Path

import pytest
from omegaconf import MISSING, OmegaConf

from mnist_lit.config import schema
from mnist_lit.data import MNISTDataModule
from mnist_lit.digits import DigitsDataModule
from mnist_lit.distill import DistillationClassifier
from mnist_lit.model import CNN, MLP
from mnist_lit.module import MNISTClassifier
from mnist_lit.speed.grouped import GroupedSteps

CONF = Path(__file__).resolve().parent.parent / "conf"
SEED = OmegaConf.load(CONF / "train.yaml").seed


def yaml_values(path: Path, key: str | None = None) -> dict:
    node = OmegaConf.load(CONF / path)
    node = OmegaConf.merge({"seed": SEED}, node) if key is None else OmegaConf.merge({"seed": SEED, "x": node})
    values = OmegaConf.to_container(node if key is None else node.x, resolve=False)
    if key:
        values = values[key] if key != "." else values
    return {k: v for k, v in values.items() if not k.startswith("_") and k not in ("defaults", "hydra")}


def groups_chosen(path: Path) -> dict:
    """The keys whose value a group of the file's defaults list gives (model/mlp.yaml's `- net: mlp`)."""
    defaults = OmegaConf.to_container(OmegaConf.load(CONF / path)).get("defaults", [])
    return {k: {} for d in defaults if isinstance(d, dict) for k in d}


def resolved(value):
    if isinstance(value, str) and value == "${seed}":
        return SEED
    if isinstance(value, str) and value.startswith("${datamodule:"):  # what the default data, MNIST's, says
        return resolved(getattr(MNISTDataModule, value[len("${datamodule:"):].rstrip("}")))
    if isinstance(value, str) and value.startswith("${oc.env:"):
        return value.split(",", 1)[1].rstrip("}")  # the default when the variable is unset
    return list(value) if isinstance(value, (tuple, list)) else value


def params_of(cls, skip=()) -> dict:
    return {n: p.default for n, p in inspect.signature(cls.__init__).parameters.items()
            if n != "self" and n not in skip}


def fields_of(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls) if not f.name.startswith("_")}


CASES = {
    "data": (Path("data/mnist.yaml"), ".", schema.DataConfig, MNISTDataModule),
    "data=digits": (Path("data/digits.yaml"), ".", schema.DigitsDataConfig, DigitsDataModule),
    "model.net": (Path("model/net/mlp.yaml"), ".", schema.NetConfig, MLP),
    "model.net=cnn": (Path("model/net/cnn.yaml"), ".", schema.CNNConfig, CNN),
    "model": (Path("model/mlp.yaml"), ".", schema.ModelConfig, MNISTClassifier),
}


@pytest.mark.parametrize("name", CASES)
def test_yaml_schema_and_constructor_agree(name):
    path, key, fields, cls = CASES[name]
    values = groups_chosen(path) | yaml_values(path, key)
    params = params_of(cls)
    assert set(values) == fields_of(fields) == set(params), (
        f"{name}: YAML {sorted(values)}, schema {sorted(fields_of(fields))}, constructor {sorted(params)}")
    for key_, value in values.items():
        default = params[key_]
        if default is inspect.Parameter.empty or isinstance(value, dict):
            continue  # required (net, optimizer) or an object of its own
        assert resolved(value) == resolved(default), f"{name}.{key_}: YAML {value!r}, constructor {default!r}"


def test_distill_keys_agree():
    # model=distill is model=mlp (its first default) plus keys of its own, taken by the subclass
    own = yaml_values(Path("model/distill.yaml"), ".")
    params = params_of(DistillationClassifier, skip=("args", "kwargs"))
    assert set(own) == fields_of(schema.DistillModelConfig) - fields_of(schema.ModelConfig) == set(params)
    # the teacher and the function that reads it have no default
    assert all(own[k] == params[k] for k in own if k not in ("teacher", "load_teacher"))


def test_top_level_keys_agree():
    top = yaml_values(Path("train.yaml"))
    assert set(top) == fields_of(schema.TrainConfig) - {"data", "model", "trainer", "callbacks", "logger"}
    grouped = params_of(GroupedSteps)
    assert (top["fast"], top["steps_per_execution"]) == (grouped["enabled"], grouped["steps_per_execution"])


def test_schema_fields_are_missing_unless_optional():
    # defaults live in the YAML files; a default here would be a second copy that can drift
    for cls in (schema.DataConfig, schema.DigitsDataConfig, schema.NetConfig, schema.CNNConfig, schema.ModelConfig,
                schema.DistillModelConfig, schema.TrainConfig):
        for f in dataclasses.fields(cls):
            if f.default is not MISSING and f.default is not dataclasses.MISSING:
                assert f.default is None or f.name in ("test",), f"{cls.__name__}.{f.name} = {f.default!r}"


def test_a_key_in_the_yaml_only_fails(tmp_path, monkeypatch):
    extra = OmegaConf.load(CONF / "data" / "mnist.yaml")
    extra.shuffle_buffer = 7
    (tmp_path / "data").mkdir()
    OmegaConf.save(extra, tmp_path / "data" / "mnist.yaml")
    monkeypatch.setattr(__import__(__name__), "CONF", tmp_path)
    with pytest.raises(AssertionError, match="shuffle_buffer"):
        test_yaml_schema_and_constructor_agree("data")
