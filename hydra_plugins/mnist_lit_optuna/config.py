"""The sweeper's config, in Hydra's ConfigStore: group hydra/sweeper option `mnist_optuna`, with the groups
hydra/sweeper/sampler (tpe, random) and hydra/sweeper/pruner (median, hyperband, none)."""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional  # noqa: UP035 (OmegaConf reads these annotations)

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.mnist_lit_optuna.optuna_sweeper.OptunaSweeper"
    defaults: List[Any] = field(default_factory=lambda: [{"sampler": "tpe"}, {"pruner": "median"}])  # noqa: UP006
    sampler: Any = MISSING
    pruner: Any = MISSING
    # maximize or minimize; a list of them for several objectives (then optimized_metric is a list as long)
    direction: Any = "maximize"
    study_name: str = "mnist_lit"
    # an Optuna database URL (sqlite:///..., postgresql://...) or a journal file's path; null: the journal
    # <sweep dir>/optuna.journal (<sweep dir>/optuna.db where an older search left one). Shared by the
    # sweeper's workers, their trials, and every sweeper process started on it
    storage: Optional[str] = None  # noqa: UP045
    # trials in the study in all (finished, pruned or failed); a second run of the sweep goes on up to it
    n_trials: int = 8
    # workers, each running one trial after another (hydra/launcher=joblib: processes on this machine;
    # submitit: SLURM jobs; the basic launcher runs one)
    n_jobs: int = 1
    # seconds between a running trial's heartbeats; a trial silent for 5 of them is taken as its worker's
    # death (kill -9, a lost node): failed, and its parameters run again
    heartbeat_interval: float = 10.0
    # stop the search with an error when more than this fraction of its trials failed
    max_failure_rate: float = 1.0
    # true: run every combination of the space's lists of values once (trials enqueued in the study, taken
    # by the workers in order); n_trials is then the number of combinations, and the sampler is not asked
    grid: bool = False
    # the search space in Hydra's override grammar: key -> choice(...), range(...), tag(log, interval(...))
    params: Dict[str, str] = field(default_factory=dict)  # noqa: UP006


ConfigStore.instance().store(group="hydra/sweeper", name="mnist_optuna", node=OptunaSweeperConf,
                             provider="mnist_lit")
SAMPLERS = {
    "tpe": {"_target_": "optuna.samplers.TPESampler", "seed": None},
    "random": {"_target_": "optuna.samplers.RandomSampler", "seed": None},
}
PRUNERS = {
    # a trial stops after an epoch (from its second on) whose val/acc is below the median of the earlier
    # trials' at that epoch, once 4 trials have finished
    "median": {"_target_": "optuna.pruners.MedianPruner", "n_startup_trials": 4, "n_warmup_steps": 1},
    "hyperband": {"_target_": "optuna.pruners.HyperbandPruner", "min_resource": 1, "max_resource": "auto",
                  "reduction_factor": 3},
    "none": {"_target_": "optuna.pruners.NopPruner"},
}
for _group, _options in (("sampler", SAMPLERS), ("pruner", PRUNERS)):
    for _name, _node in _options.items():
        ConfigStore.instance().store(group=f"hydra/sweeper/{_group}", name=_name, node=_node,
                                     provider="mnist_lit")
