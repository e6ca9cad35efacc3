"""Every option of every config group composes, and the objects it names instantiate."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

CONF = Path(__file__).resolve().parent.parent / "conf"
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name != "hydra")
OPTIONS = [(g, f.stem) for g in GROUPS for f in sorted((CONF / g).glob("*.yaml"))]


def compose_train(overrides):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=True)


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_option_composes_and_instantiates(group, option, tmp_path):
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    cfg = compose_train([f"{group}={option}", f"hydra.run.dir={tmp_path}"])
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(tmp_path)
    HydraConfig.instance().set_config(cfg)
    assert instantiate(cfg.model).net is not None
    assert instantiate(cfg.data).batch_size > 0
    for node in (cfg.get("callbacks") or {}).values():
        instantiate(node)
    for node in (cfg.get("logger") or {}).values():
        instantiate(node)
    if group == "trainer" and option in ("gpu", "ddp"):
        return  # building these needs the hardware; composing them is what is checked here
    instantiate(cfg.trainer)


def test_keras_tutorial_is_the_tutorial():
    cfg = compose_train(["experiment=keras_tutorial"])
    assert cfg.data.batch_size == 32 and cfg.trainer.max_epochs == 10 and cfg.data.val_size == 12000
    assert cfg.model.optimizer._target_ == "torch.optim.Adam" and cfg.model.optimizer.lr == 1e-3
    assert list(cfg.model.net.hidden_sizes) == [128] and cfg.data.normalize is False


def test_seed_zero_is_honoured():
    cfg = compose_train(["seed=0"])
    assert cfg.seed == 0 and cfg.data.split_seed == 0
