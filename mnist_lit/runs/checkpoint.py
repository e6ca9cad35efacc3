"""Load a trained run safely: its own saved config, a checkpoint's weights, and the network built from both.

The one way into a run folder: whatever reads its checkpoints, `.hydra/config.yaml` or recorded
`.hydra/overrides.yaml` (evaluate, predict, export, a distillation teacher, `resume=`) goes through here, so
nothing read from a run folder ever runs code: checkpoints are unpickled weights-only, YAML is read safely,
and configs and overrides may name only the targets of mnist_lit/runs/allowlist.py.
Every step turns the user's possible mistakes into a UserError that names the file and the fix:

- `resolve_run_dir(path)`: a run folder (or `latest`), refusing sweep folders and folders that are no run;
- `read_checkpoint(path)`: `torch.load(weights_only=True)`, so a checkpoint can never run pickled code;
  missing, truncated, corrupt and foreign files get their own message;
- `load_state_into(module, state_dict)`: loads a (sub)module's weights, naming every layer whose shape
  differs between the checkpoint and the model (a checkpoint of another architecture);
- `load_config(run_dir)`: the run's `.hydra/config.yaml`, refused if it names a target outside the allowlist;
- `read_recorded_overrides(run_dir)`: the run's recorded command-line overrides, for `resume=`, refused
  likewise (and any Hydra setting, command-line flag or config group option that is no file of conf/);
- `load_run(run_dir=..., ckpt_path=...)`: all of the above, returning a `Run` (config, network in eval
  mode on the CPU, checkpoint path, the data module its config describes) for evaluate, predict, export
  (through mnist_lit/inference/loading.py) and a teacher.
"""

from __future__ import annotations

import json
import pickle
import re
import zipfile
from collections.abc import Collection
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from omegaconf import DictConfig, OmegaConf

from mnist_lit.config.overrides import override_key
from mnist_lit.errors import UserError, first_sentence
from mnist_lit.runs.allowlist import check_network, check_override, check_tree

if TYPE_CHECKING:  # torch is imported where it is used: `resume=` refuses a hostile folder before it
    import torch
    from torch import nn

    from mnist_lit.data import TensorDataModule

CONFIG_FILE = Path(".hydra") / "config.yaml"
OVERRIDES_FILE = Path(".hydra") / "overrides.yaml"
RUNS_DIR = Path("logs") / "train" / "runs"


@dataclass
class Run:
    """A trained network and where it came from."""

    cfg: DictConfig  # the run's composed training config (its .hydra/config.yaml), unresolved
    net: nn.Module  # the network (the LightningModule's `net`), on the CPU, in eval mode
    checkpoint: Path
    run_dir: Path

    @cached_property
    def datamodule(self) -> TensorDataModule:
        """The run's data module, built from its own config (no data is read until asked)."""
        return self.data_module()

    def data_module(self, **given) -> TensorDataModule:
        """The run's data module, built from its own config with the keys `given` that are not None (a
        command's data.root=...) instead of the config's; its data.root, when it has one, is data_root's."""
        from mnist_lit.config.building import build

        data = self.cfg.data
        unknown = [key for key, value in given.items() if value is not None and key not in data]
        if unknown:
            raise UserError(
                f"data.{unknown[0]}={given[unknown[0]]}: the run's data ({data.get('_target_')}) has no key "
                f"{unknown[0]} (its keys: {', '.join(k for k in data if not k.startswith('_'))}). Leave it out: "
                "the run's own data config is used."
            )
        kwargs = {key: value for key, value in given.items() if value is not None}
        if "root" in data:
            kwargs["root"] = self.data_root(given.get("root"))
        return build(data, f"data of {self.run_dir / CONFIG_FILE}", **kwargs)

    @property
    def normalize(self) -> bool:
        """Whether the network was trained on standardised pixels (data.normalize)."""
        return self.datamodule.normalization is not None

    def data_root(self, override: str | None = None) -> str:
        """The data folder (data.root): `override` when given, else the folder the run trained on
        (metrics.json's data_root, where it still is), else its data.root resolved here and now
        (`${oc.env:MNIST_ROOT,data}` depends on the shell)."""
        if override:
            return str(override)
        trained_on = read_metrics(self.run_dir).get("data_root")
        if isinstance(trained_on, str) and Path(trained_on).is_dir():
            return trained_on
        return str(OmegaConf.select(self.cfg, "data.root", default="data"))


def is_run_dir(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file()


def latest_run_dir(runs_dir: Path = RUNS_DIR) -> Path | None:
    """The most recently started run under logs/train/runs that has a checkpoint, or None (a run refused
    for a config mistake, or stopped before its first epoch ended, has none)."""
    runs = [p for p in runs_dir.glob("*") if is_run_dir(p) and any(p.glob("checkpoints/*.ckpt"))] \
        if runs_dir.is_dir() else []
    # the config is written once, when the run starts; the folder's own time changes with every file added
    return max(runs, key=lambda p: (p / CONFIG_FILE).stat().st_mtime, default=None)


def resolve_run_dir(path: str | Path) -> Path:
    """A training run's folder: `path` itself, or the newest run for `latest`."""
    if str(path) == "latest":
        latest = latest_run_dir()
        if latest is None:
            raise UserError(
                f"run_dir=latest: no training run found under {RUNS_DIR.resolve()}. Train one first "
                "(python -m mnist_lit.train) or pass the run's folder, e.g. "
                "run_dir=logs/train/runs/<date_time>."
            )
        return latest
    run_dir = Path(path).expanduser()
    if not run_dir.exists():
        raise UserError(
            f"run_dir={path}: no such folder. Pass a training run's folder, e.g. {_example_run()}."
        )
    if not run_dir.is_dir():
        raise UserError(
            f"run_dir={path} is a file; pass its folder, or pass a checkpoint as ckpt_path={path}."
        )
    if not is_run_dir(run_dir):
        subruns = sorted(p.name for p in run_dir.iterdir() if is_run_dir(p))
        if subruns:
            raise UserError(
                f"run_dir={path} is a sweep (multirun) folder; pass one of its runs, e.g. "
                f"run_dir={run_dir / subruns[0]} (runs: {', '.join(subruns[:10])}), or compare them all with "
                f"python -m mnist_lit.summarize {path}."
            )
        raise UserError(
            f"run_dir={path} is not a training run: it has no {CONFIG_FILE}. Pass the folder that "
            f"mnist_lit.train wrote, e.g. {_example_run()}."
        )
    return run_dir


def _example_run() -> str:
    latest = latest_run_dir()
    return f"run_dir={latest}" if latest else f"run_dir={RUNS_DIR}/<date_time>"


def _val_acc(path: Path) -> float:
    match = re.search(r"val_acc(\d+(?:\.\d+)?)", path.name)
    return float(match.group(1)) if match else -1.0


def metrics_of(folder: Path) -> tuple[dict, str | None]:
    """The run's metrics.json and None; or {} and why there is none to use: "missing" (the run is still
    running, or was killed before writing it), or what is wrong with the file."""
    try:
        metrics = json.loads((folder / "metrics.json").read_text())
    except FileNotFoundError:
        return {}, "missing"
    except (OSError, ValueError):
        return {}, "metrics.json is not valid JSON"
    if not isinstance(metrics, dict):
        return {}, "metrics.json holds no JSON object"
    return metrics, None


def read_metrics(folder: Path) -> dict:
    """The run's metrics.json; {} where there is none, or none that reads as a JSON object."""
    return metrics_of(folder)[0]


@dataclass
class SweepRecord:
    """What a sweep recorded when it started (its multirun.yaml): the `hydra` node and its overrides."""

    hydra: dict
    hydra_overrides: list
    task_overrides: list


def read_sweep_record(sweep_dir: Path) -> SweepRecord | None:
    """The sweep's multirun.yaml; None where there is none, a UserError where it cannot be read. Plain YAML:
    OmegaConf would resolve interpolations while reading (a folder's files may come from anyone)."""
    path = sweep_dir / "multirun.yaml"
    if not path.is_file():
        return None
    try:
        hydra = yaml.safe_load(path.read_text())["hydra"]
        overrides = [hydra["overrides"][kind] for kind in ("hydra", "task")]
        if not isinstance(hydra, dict) or not all(isinstance(o, list) for o in overrides):
            raise TypeError("its hydra.overrides are not lists")
    except (OSError, UnicodeDecodeError, yaml.YAMLError, KeyError, TypeError) as err:
        raise UserError(f"{path} cannot be read ({err}): restore it from the original sweep, or start a new "
                        "sweep.") from None
    return SweepRecord(hydra, *overrides)


def best_checkpoint(run_dir: Path) -> Path:
    """The run's best checkpoint: metrics.json's `best_checkpoint`, else the best `epoch*` file, else
    last.ckpt."""
    ckpt_dir = run_dir / "checkpoints"
    recorded = read_metrics(run_dir).get("best_checkpoint")
    # only its name: the run's checkpoints are in its own folder (which may have been moved or copied since),
    # and a path in an edited metrics.json may point anywhere
    if recorded and (ckpt_dir / Path(str(recorded)).name).is_file():
        return ckpt_dir / Path(str(recorded)).name
    candidates = sorted(ckpt_dir.glob("epoch*.ckpt"), key=_val_acc)
    if candidates:
        return candidates[-1]
    if (ckpt_dir / "last.ckpt").is_file():
        return ckpt_dir / "last.ckpt"
    raise UserError(
        f"run {run_dir} has no checkpoint in {ckpt_dir} (was it trained with callbacks=none, or stopped "
        "before the first epoch ended?). Train again with the default callbacks, or pass a checkpoint as "
        "ckpt_path=..."
    )


def find_run_dir(ckpt_path: Path) -> Path | None:
    """The run folder a checkpoint belongs to (<run>/checkpoints/x.ckpt, or next to it), or None."""
    for folder in list(ckpt_path.resolve().parents)[:3]:
        if is_run_dir(folder):
            return folder
    return None


def read_checkpoint(path: str | Path) -> dict:
    """A Lightning checkpoint's contents, loaded with weights_only=True (no arbitrary pickled code runs)."""
    import torch

    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(
            f"checkpoint {path} does not exist. Pass an existing .ckpt file, e.g. "
            "<run>/checkpoints/last.ckpt."
        )
    if path.is_dir():
        last = path / "checkpoints" / "last.ckpt"
        raise UserError(f"checkpoint {path} is a folder; pass a .ckpt file (a run's: {last}), or the run "
                        f"folder itself where a command takes one (resume={path} for train, run_dir={path} "
                        "for evaluate, predict and export).")
    if path.stat().st_size == 0:
        raise UserError(
            f"checkpoint {path} is empty (0 bytes): the save was interrupted. Use another checkpoint."
        )
    with open(path, "rb") as f:
        start = f.read(4)
    if start != b"PK\x03\x04":  # torch.save has written zip archives since torch 1.6
        raise UserError(
            f"checkpoint {path} is not a PyTorch checkpoint (torch.save writes a zip archive; this file is "
            "none). Use a checkpoint written by mnist_lit.train, e.g. <run>/checkpoints/last.ckpt."
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # weights_only refuses any object that is not a tensor or a plain container: the file was written
        # by other code, and unpickling it could run arbitrary code
        lines = str(err).splitlines()
        what = next((line.strip() for line in lines if "WeightsUnpickler error" in line), lines[0])
        raise UserError(
            f"checkpoint {path} holds Python objects other than tensors and plain values, which mnist-lit "
            f"refuses to unpickle (it could run arbitrary code): {first_sentence(what)}. Use a checkpoint "
            "written by mnist_lit.train."
        ) from err
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
        raise UserError(
            f"checkpoint {path} cannot be read: it is truncated or corrupt, or not a PyTorch file "
            f"({type(err).__name__}: {first_sentence(str(err))}). Use another checkpoint, e.g. "
            "last.ckpt or the best epoch*.ckpt of the run."
        ) from err
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise UserError(
            f"checkpoint {path} is a PyTorch file but not a Lightning checkpoint (no 'state_dict'). "
            "Use a checkpoint written by mnist_lit.train (<run>/checkpoints/*.ckpt)."
        )
    return ckpt


def _shape(t: torch.Tensor) -> str:
    return "x".join(map(str, t.shape)) or "scalar"


def load_state_into(
    module: nn.Module, state_dict: dict, prefix: str = "net.", source: str = "the checkpoint"
) -> None:
    """Load the entries of `state_dict` under `prefix` into `module`, or raise a UserError naming every
    layer whose shape differs and every missing or unexpected one."""
    own = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if not own:
        raise UserError(
            f"{source} holds no weights under '{prefix}': it is not a checkpoint of an mnist-lit model."
        )
    expected = module.state_dict()
    mismatched = [
        f"{prefix}{k} is {_shape(own[k])} in the checkpoint but {_shape(v)} in the model"
        for k, v in expected.items()
        if k in own and own[k].shape != v.shape
    ]
    missing = [prefix + k for k in expected if k not in own]
    unexpected = [prefix + k for k in own if k not in expected]
    if mismatched or missing or unexpected:
        problems = mismatched + [f"{k} is missing from the checkpoint" for k in missing]
        problems += [f"{k} is in the checkpoint but not in the model" for k in unexpected]
        raise UserError(
            f"{source} does not fit the model built from the config (another architecture?): "
            f"{'; '.join(problems[:8])}{' ...' if len(problems) > 8 else ''}. Pass the checkpoint's own run "
            "(run_dir=<its run folder>), whose .hydra/config.yaml describes the network it was trained with."
        )
    module.load_state_dict(own)


def load_config(run_dir: Path) -> DictConfig:
    """The run's composed config, refused if it names any target outside the allowlist (anywhere in it)."""
    path = run_dir / CONFIG_FILE
    try:
        cfg = OmegaConf.load(path)
    except Exception as err:  # YAML errors of several kinds: all mean the same for the user
        raise UserError(
            f"the run's config {path} cannot be read ({err}). Restore it from the original run."
        ) from err
    if not isinstance(cfg, DictConfig) or OmegaConf.select(cfg, "model.net") is None:
        raise UserError(f"the run's config {path} has no model.net: it is not an mnist_lit.train config.")
    check_tree(OmegaConf.to_container(cfg, resolve=False), str(path))
    check_network(OmegaConf.select(cfg, "model.net._target_"), str(path), "model.net._target_")
    return cfg


def read_recorded_overrides(run_dir: Path, replaced: Collection[str] = ()) -> list[str]:
    """The command-line overrides the run recorded (.hydra/overrides.yaml), for `resume=` to repeat, except
    those of the keys in `replaced` (given anew by the user, who may trust a target the check would refuse);
    refused when one names a target outside the allowlist, changes Hydra's settings or is not plain."""
    path = run_dir / OVERRIDES_FILE
    if not path.is_file():
        raise UserError(f"resume={run_dir}: not a training run folder (no .hydra/overrides.yaml). Pass the "
                        "folder of the run to continue, e.g. resume=logs/train/runs/<date_time>.")
    try:
        # plain YAML: OmegaConf would resolve interpolations in the lines while reading them
        recorded = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise UserError(f"the run's recorded overrides {path} cannot be read ({err}). Restore the file from "
                        "the original run, or start the run again.") from err
    if not isinstance(recorded, list):
        raise UserError(f"the run's recorded overrides {path} are not a list of overrides. Restore the file "
                        "from the original run, or start the run again.")
    kept = [o for o in recorded if not (isinstance(o, str) and override_key(o) in replaced)]
    for override in kept:
        check_override(override, str(path))
    return kept


def build_net(cfg: DictConfig, source: str) -> nn.Module:
    """The network described by cfg.model.net (allowlisted by load_config), with fresh weights."""
    from mnist_lit.config.building import build

    return build(cfg.model.net, f"model.net of {source}")


def load_run(run_dir: str | Path | None = None, ckpt_path: str | Path | None = None) -> Run:
    """The network of a training run with the weights of its best checkpoint (or of `ckpt_path`).

    With only `ckpt_path`, the run folder is the one the checkpoint lies in (<run>/checkpoints/x.ckpt);
    its .hydra/config.yaml gives the architecture, so a network trained with any hidden sizes loads.
    """
    if run_dir is None and ckpt_path is None:
        raise UserError(
            f"no model given: pass a training run's folder, e.g. {_example_run()} (or run_dir=latest), "
            "or a checkpoint, ckpt_path=<run>/checkpoints/last.ckpt."
        )
    ckpt = Path(ckpt_path).expanduser() if ckpt_path is not None else None
    if run_dir is not None:
        folder = resolve_run_dir(run_dir)
    else:
        ckpt_state = read_checkpoint(ckpt)  # a bad file is reported as such before looking for its run
        folder = find_run_dir(ckpt)
        if folder is None:
            raise UserError(
                f"checkpoint {ckpt} is not inside a training run folder, so its config (the network's "
                f"hidden sizes, the pixel scaling) is unknown. Keep it in <run>/checkpoints/, or pass "
                "run_dir=<its run folder> together with ckpt_path."
            )
    ckpt = ckpt or best_checkpoint(folder)
    cfg = load_config(folder)
    net = build_net(cfg, source=str(folder / CONFIG_FILE))
    state = ckpt_state if run_dir is None else read_checkpoint(ckpt)
    load_state_into(net, state["state_dict"], prefix="net.", source=f"checkpoint {ckpt}")
    broken = [name for name, value in net.state_dict().items() if not value.isfinite().all()]
    if broken:  # a diverged training's weights: every prediction would be NaN
        raise UserError(f"checkpoint {ckpt} holds weights that are not finite numbers (NaN or inf, in "
                        f"{', '.join(broken[:4])}): it was saved by a training that diverged. Use another "
                        "checkpoint, e.g. the run's best one (leave ckpt_path out).")
    return Run(cfg=cfg, net=net.eval(), checkpoint=ckpt, run_dir=folder)


def check_fits(path: str | Path, net: nn.Module) -> None:
    """Refuse a checkpoint to train on that cannot be read safely or that holds another network."""
    state = read_checkpoint(path)  # weights-only: pickled code is refused, never run
    try:
        load_state_into(net, state["state_dict"], prefix="net.", source=f"ckpt_path={path}")
    except UserError as err:
        raise UserError(f"{err} To continue a run with its own config: resume=<its run folder>.") from None
