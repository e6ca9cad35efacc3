"""Every option of every config group composes, and the objects it names instantiate."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

from mnist_lit.config import schema

CONF = Path(__file__).resolve().parent.parent / "conf"
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name != "hydra")
OPTIONS = [(g, f.stem) for g in GROUPS for f in sorted((CONF / g).glob("*.yaml"))]


def compose_train(overrides):
    GlobalHydra.instance().clear()
    schema.register()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=True)


def leaves(node, prefix=""):
    """(dotted key, value) of every leaf of a YAML file's content, its defaults list left out."""
    for key, value in node.items():
        if key == "defaults":
            continue
        if isinstance(value, dict):
            yield from leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def built(cfg):
    """The objects a run builds from cfg: datamodule, model, callbacks, loggers, trainer (or None)."""
    callbacks = [instantiate(n) for n in (cfg.get("callbacks") or {}).values() if n is not None]
    loggers = [instantiate(n) for n in (cfg.get("logger") or {}).values() if n is not None]
    gpu = cfg.trainer.get("accelerator") == "gpu" or cfg.trainer.get("strategy") == "ddp"
    trainer = None if gpu else instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    return instantiate(cfg.data), instantiate(cfg.model), callbacks, loggers, trainer


def names(objects):
    return {type(o).__name__ for o in objects}


# what each option must change in the built objects (beyond its keys reaching the composed config)
EFFECTS = {
    ("callbacks", "default"): lambda d, m, c, lg, t: {"ModelCheckpoint", "StepProgressBar", "TrainingCurve"}
    <= names(c),
    ("callbacks", "early_stopping"): lambda d, m, c, lg, t: [x.patience for x in c if type(x).__name__
                                                             == "EarlyStopping"] == [3],
    ("callbacks", "none"): lambda d, m, c, lg, t: c == [],
    ("data", "digits"): lambda d, m, c, lg, t: type(d).__name__ == "DigitsDataModule"
    and m.net[0].in_features == 64 and m.net[-1].out_features == 10,
    ("data", "mnist"): lambda d, m, c, lg, t: type(d).__name__ == "MNISTDataModule"
    and m.net[0].in_features == 784 and m.net[-1].out_features == 10,
    ("debug", "fast_dev_run"): lambda d, m, c, lg, t: t.fast_dev_run == 1,
    ("debug", "limit"): lambda d, m, c, lg, t: (t.limit_train_batches, t.max_epochs, t.log_every_n_steps)
    == (20, 2, 5),
    ("debug", "overfit"): lambda d, m, c, lg, t: (t.overfit_batches, t.log_every_n_steps) == (10, 5),
    ("logger", "csv"): lambda d, m, c, lg, t: names(lg) == {"CSVLogger"},
    ("logger", "many"): lambda d, m, c, lg, t: names(lg) == {"CSVLogger", "TensorBoardLogger"},
    ("logger", "tensorboard"): lambda d, m, c, lg, t: names(lg) == {"TensorBoardLogger"},
    ("trainer", "cpu"): lambda d, m, c, lg, t: type(t.accelerator).__name__ == "CPUAccelerator",
    ("experiment", "mlp128_best"): lambda d, m, c, lg, t: d.batch_size == 128 and m.augment is not None
    and m.label_smoothing == 0.1 and m.scheduler_factory.func.__name__ == "OneCycleLR",
    ("experiment", "fast_gpu"): lambda d, m, c, lg, t: d.batch_size == 1024 and t.max_epochs == 20,
    ("experiment", "cnn_teacher"): lambda d, m, c, lg, t: type(m.net).__name__ == "CNN"
    and m.label_smoothing == 0 and m.augment is not None and t.max_epochs == 15,
    ("experiment", "mlp128_distill"): lambda d, m, c, lg, t: type(m).__name__ == "DistillationClassifier"
    and sum(p.numel() for p in m.parameters()) == 101_770 and m.augment is not None
    and m.distill_weight == 0.9,
    ("model", "distill"): lambda d, m, c, lg, t: type(m).__name__ == "DistillationClassifier"
    and type(m.teacher).__name__ == "CNN" and m.temperature == 4.0,
}
# options that leave a key for the command line (a teacher run's folder): given here, checked by their EFFECTS
GIVEN = {("model", "distill"): "model.teacher", ("experiment", "mlp128_distill"): "model.teacher"}


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_option_composes_instantiates_and_takes_effect(group, option, tmp_path, request):
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf, open_dict

    given = []
    if (group, option) in GIVEN:
        given = [f"{GIVEN[group, option]}={request.getfixturevalue('synthetic_cnn_run')}"]
    cfg = compose_train([f"{group}={option}", f"hydra.run.dir={tmp_path}", *given])
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(tmp_path)
    HydraConfig.instance().set_config(cfg)
    # every value the option's file sets is in the composed config (under its package)
    raw = OmegaConf.to_container(OmegaConf.load(CONF / group / f"{option}.yaml"))
    package = "" if "@package _global_" in (CONF / group / f"{option}.yaml").read_text() else f"{group}."
    for key, value in leaves(raw):
        if (isinstance(value, str) and "${" in value) or key.startswith("hydra."):
            continue  # interpolations, and Hydra's own node (the sweeper's params are read when sweeping)
        if package + key == GIVEN.get((group, option)):
            continue  # given on the command line here
        assert OmegaConf.select(cfg, package + key, throw_on_resolution_failure=False) == value, key
    objects = built(cfg)
    effect = EFFECTS.get((group, option))
    if effect is not None:
        assert effect(*objects), f"{group}={option} did not take effect"


def test_keras_tutorial_is_the_tutorial():
    cfg = compose_train(["experiment=keras_tutorial"])
    assert cfg.data.batch_size == 32 and cfg.trainer.max_epochs == 10 and cfg.data.val_size == 12000
    assert cfg.model.optimizer._target_ == "torch.optim.Adam" and cfg.model.optimizer.lr == 1e-3
    assert list(cfg.model.net.hidden_sizes) == [128] and cfg.data.normalize is False


def test_seed_zero_is_honoured():
    cfg = compose_train(["seed=0"])
    assert cfg.seed == 0 and cfg.data.split_seed == 0
