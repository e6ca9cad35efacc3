"""Evaluate a trained run on the official test set: `python -m mnist_lit.evaluate run_dir=<run>` (see README).

Prints test accuracy, loss and per-class accuracy; writes confusion_matrix.png, misclassified.png and
eval.json into the run dir.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig

from mnist_lit.cli.entry import command
from mnist_lit.config.messages import (
    refuse_added_keys,
    whole_number,
)
from mnist_lit.errors import UserError
from mnist_lit.runs.files import check_writable
from mnist_lit.scoring import NUM_CLASSES, Evaluation, evaluate_net

if TYPE_CHECKING:
    import torch


def load_test_set(root: str, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The official 10k test images (uint8, N x 28 x 28) and labels; an error says how to point at them."""
    from mnist_lit.data import load_mnist

    try:
        return load_mnist(root, train=False, download=download)
    except UserError as err:
        raise UserError(
            f"{err} (The run's own data.root is used unless you pass data.root=<folder>.)"
        ) from None



def report(result: Evaluation) -> str:
    """The console summary: overall scores and a per-digit table."""
    confusion = result.confusion
    lines = [
        f"test accuracy {result.accuracy:.2%} ({int(confusion.diag().sum())}/{len(result.labels)})   "
        f"test loss {result.loss:.4f}",
        "",
        "digit  count  accuracy  most often mistaken for",
    ]
    for digit in range(NUM_CLASSES):
        row = confusion[digit].clone()
        total = int(row.sum())
        row[digit] = 0
        mistaken = f"{int(row.argmax())} ({int(row.max())}x)" if row.max() > 0 else "-"
        acc = f"{result.per_class_accuracy[digit]:.2%}" if total else "-"
        lines.append(f"{digit:>5}  {total:>5}  {acc:>8}  {mistaken}")
    return "\n".join(lines)


def evaluate(cfg: DictConfig) -> dict:
    """Evaluate the run's checkpoint on the test set, print the scores, write the figures and eval.json."""
    from mnist_lit.runs.checkpoint import load_run

    refuse_added_keys(cfg, "evaluate")
    whole_number(cfg, "misclassified", 0)
    run = load_run(cfg.get("run_dir"), cfg.get("ckpt_path"))  # a hostile run is refused before Lightning is
    from mnist_lit.data import to_features
    from mnist_lit.reporting.plots import confusion_matrix_figure, misclassified_figure, save

    root = run.data_root(cfg.data.get("root"))
    images, labels = load_test_set(root, cfg.data.get("download", False))
    result = evaluate_net(run.net, to_features(images, run.normalize), labels)
    out_dir = Path(cfg.get("output_dir") or run.run_dir)
    check_writable(out_dir, "output_dir")

    worst = result.most_confident_errors(cfg.misclassified)
    files = {
        "confusion_matrix": save(
            confusion_matrix_figure(
                result.confusion,
                f"Confusion matrix on the MNIST test set (accuracy {result.accuracy:.2%})\n"
                f"{run.checkpoint.name}",
            ),
            out_dir / "confusion_matrix.png",
        ),
        "misclassified": save(
            misclassified_figure(
                images[worst],
                labels[worst],
                result.predicted[worst],
                result.confidence[worst],
                worst,
                title=f"The {len(worst)} most confidently misclassified test digits "
                f"({int((result.predicted != result.labels).sum())} errors in {len(labels)})",
            ),
            out_dir / "misclassified.png",
        ),
    }
    summary = {
        "run_dir": str(run.run_dir),
        "checkpoint": str(run.checkpoint),
        "data_root": root,
        "num_examples": len(labels),
        "test_acc": result.accuracy,
        "test_loss": result.loss,
        "per_class": {
            str(d): {"count": int(result.confusion[d].sum()), "accuracy": result.per_class_accuracy[d].item()}
            for d in range(NUM_CLASSES)
        },
        "confusion_matrix": result.confusion.tolist(),
        "misclassified": [
            {
                "index": int(i),
                "label": int(labels[i]),
                "predicted": int(result.predicted[i]),
                "confidence": round(result.confidence[i].item(), 6),
            }
            for i in worst
        ],
        "files": {name: str(path) for name, path in files.items()},
    }
    files["eval"] = out_dir / "eval.json"
    files["eval"].write_text(json.dumps(summary, indent=2) + "\n")

    print(
        f"run         {run.run_dir}\ncheckpoint  {run.checkpoint}\n"
        f"test set    {len(labels)} digits from {root}\n"
    )
    print(report(result))
    print(f"\nwrote {', '.join(p.name for p in files.values())} to {out_dir}")
    return summary


@command("evaluate")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
