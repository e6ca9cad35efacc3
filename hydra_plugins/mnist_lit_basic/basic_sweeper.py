"""Hydra's basic sweeper (grids and lists: `-m seed=1,2,3`), with each job's config composed once.

Hydra's basic sweeper composes every job's config to check the batch before launching it, and its launcher
composes it again to run the job: about 0.1-0.25 s of each short job's cost. Here the launcher takes the
config the check composed, when it runs the job in this process; a launcher that ships jobs to other
processes (joblib, submitit) composes there as before.
"""

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple  # noqa: UP035 (OmegaConf reads these annotations)

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper as HydraBasicSweeper
from hydra.core.config_loader import ConfigLoader
from hydra.core.config_store import ConfigStore
from hydra.types import HydraContext, RunMode, TaskFunction
from omegaconf import DictConfig

# composed configs kept between the check and the launch: a grid of thousands of jobs composes the rest twice
KEPT = 64


class ComposedOnce(ConfigLoader):
    """A config loader that hands the configs the batch check composed to the launcher's requests."""

    def __init__(self, loader: ConfigLoader) -> None:
        self.loader = loader
        self.kept: Dict[Tuple[str, ...], List[DictConfig]] = {}  # noqa: UP006

    def compose_and_keep(self, master_config: DictConfig, sweep_overrides: List[str]) -> None:  # noqa: UP006
        """Compose a job's config (raising what the composition raises) and keep it for the launcher."""
        config = self.loader.load_sweep_config(master_config, sweep_overrides)
        if sum(map(len, self.kept.values())) < KEPT:
            # one per job: two jobs of the same overrides (seed=0,0) each get their own config
            self.kept.setdefault(tuple(sweep_overrides), []).append(config)

    def load_sweep_config(self, master_config: DictConfig, sweep_overrides: List[str]) -> DictConfig:  # noqa: UP006
        kept = self.kept.get(tuple(sweep_overrides))
        if kept:
            return kept.pop(0)
        return self.loader.load_sweep_config(master_config, sweep_overrides)

    def __getstate__(self) -> Dict[str, Any]:  # noqa: UP006
        # shipped to another process (joblib, submitit): the job composes there, so keep nothing here either
        self.kept.clear()
        return {"loader": self.loader, "kept": {}}

    def load_configuration(self, config_name: Optional[str], overrides: List[str], run_mode: RunMode,  # noqa: UP006, UP045
                           from_shell: bool = True, validate_sweep_overrides: bool = True) -> DictConfig:
        return self.loader.load_configuration(config_name, overrides, run_mode, from_shell,
                                              validate_sweep_overrides)

    def get_search_path(self) -> Any:
        return self.loader.get_search_path()

    def get_sources(self) -> Any:
        return self.loader.get_sources()

    def list_groups(self, parent_name: str) -> List[str]:  # noqa: UP006
        return self.loader.list_groups(parent_name)

    def get_group_options(self, group_name: str, results_filter: Any = None, config_name: str = "",
                          overrides: Optional[List[str]] = None) -> List[str]:  # noqa: UP006, UP045
        return self.loader.get_group_options(group_name, results_filter, config_name, overrides)

    def compute_defaults_list(self, config_name: Optional[str], overrides: List[str],  # noqa: UP006, UP045
                              run_mode: RunMode) -> Any:
        return self.loader.compute_defaults_list(config_name, overrides, run_mode)


class BasicSweeper(HydraBasicSweeper):
    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.loader = ComposedOnce(hydra_context.config_loader)
        context = HydraContext(config_loader=self.loader, callbacks=hydra_context.callbacks)
        super().setup(hydra_context=context, task_function=task_function, config=config)

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        for overrides in batch:  # as Hydra's check: every job composes, before any runs
            self.loader.compose_and_keep(self.config, list(overrides))


@dataclass
class BasicSweeperConf:
    _target_: str = "hydra_plugins.mnist_lit_basic.basic_sweeper.BasicSweeper"
    max_batch_size: Optional[int] = None  # noqa: UP045
    params: Optional[Dict[str, str]] = None  # noqa: UP006, UP045


ConfigStore.instance().store(group="hydra/sweeper", name="mnist_basic", node=BasicSweeperConf,
                             provider="mnist_lit")
