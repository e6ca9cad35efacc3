"""Train, validate and test the MLP: `python -m mnist_lit.train [overrides]` (see README)."""

from __future__ import annotations

import json
import logging
import os
import platform
import resource
import subprocess
import time
import warnings
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from mnist_lit import __version__
from mnist_lit.errors import report_user_errors

log = logging.getLogger(__name__)
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=5, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def flat_hparams(cfg: DictConfig) -> dict:
    """The run's hyperparameters as flat `group/key` -> scalar, for TensorBoard's HPARAMS table."""
    chosen = {"seed": cfg.seed, "data": cfg.data, "model": cfg.model, "trainer": {"max_epochs": cfg.trainer.max_epochs}}
    flat: dict = {}

    def walk(prefix: str, node) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key not in ("_target_", "_partial_"):
                    walk(f"{prefix}/{key}" if prefix else str(key), value)
            if "_target_" in node:
                flat[f"{prefix}/class"] = str(node["_target_"]).rsplit(".", 1)[-1]
        else:
            flat[prefix] = node if isinstance(node, (int, float, str, bool)) else str(node)

    walk("", OmegaConf.to_container(OmegaConf.create(chosen), resolve=True))
    return flat


def log_hparams(trainer, cfg: DictConfig, metric_names: list[str]) -> None:
    """Write the HPARAMS summary; its metric columns read the scalars the run already logged."""
    from lightning.pytorch.loggers import TensorBoardLogger
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams

    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            # the logger's own writer is closed once fit/test end; a new one appends to the same run
            with SummaryWriter(logger.log_dir) as writer:
                for summary in hparams(flat_hparams(cfg), {name: 0.0 for name in metric_names}):
                    writer.file_writer.add_summary(summary)


def device_name(trainer) -> str:
    import torch

    device = trainer.strategy.root_device
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def train(cfg: DictConfig) -> dict:
    """Fit, test the best checkpoint, and write metrics.json into the run dir; returns those metrics."""
    import lightning
    import lightning.pytorch as pl
    import torch
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import instantiate

    out_dir = Path(HydraConfig.get().runtime.output_dir)
    # Hydra's handlers already print and write train.log; Lightning's own would print everything twice
    logging.getLogger("lightning").handlers.clear()
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    if cfg.get("threads"):
        torch.set_num_threads(cfg.threads)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)

    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()  # missing or broken data fails here, before any other work
    model = instantiate(cfg.model)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    if trainer.strategy.root_device.type == "cpu":
        # Lightning sets this so that CUDA checks never initialise CUDA before a fork; without a GPU the
        # check then reloads the NVML library inside every Adam step (0.1 ms, a tenth of a step here)
        os.environ.pop("PYTORCH_NVML_BASED_CUDA_CHECK", None)

    start = time.perf_counter()
    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    fit_seconds = time.perf_counter() - start
    final = {k: v.item() for k, v in trainer.callback_metrics.items() if k.startswith(("train/", "val/"))}

    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if cfg.get("test", True):
        # the best-on-validation weights, loaded without unpickling arbitrary objects
        trainer.test(model, datamodule=datamodule, ckpt_path=best or None, weights_only=True, verbose=False)
        final |= {k: v.item() for k, v in trainer.callback_metrics.items() if k.startswith("test/")}

    metrics = {
        "status": "completed",
        "test_acc": final.get("test/acc"),
        "test_loss": final.get("test/loss"),
        "best_val_acc": final.get("val/acc_best"),
        "metrics": final,
        "epochs": trainer.current_epoch,
        "steps": trainer.global_step,
        "fit_seconds": round(fit_seconds, 3),
        "seed": cfg.seed,
        "split_seed": datamodule.split_seed,
        "split_digest": getattr(datamodule, "split_digest", None),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "device": device_name(trainer),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "gpu_peak_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_initialized() else None,
        "best_checkpoint": best or None,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "lightning": lightning.__version__,
            "mnist_lit": __version__,
        },
        "git_commit": git_commit(),
    }
    if trainer.is_global_zero:
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        log_hparams(trainer, cfg, sorted(final))
        log.info("test/acc %.4f  test/loss %.4f  best val/acc %.4f  fit %.1f s  -> %s",
                 metrics["test_acc"] or float("nan"), metrics["test_loss"] or float("nan"),
                 metrics["best_val_acc"] or float("nan"), fit_seconds, out_dir)
    return metrics


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
@report_user_errors
def main(cfg: DictConfig) -> float | None:
    metrics = train(cfg)
    return metrics["metrics"].get(cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
