"""Evaluate a trained run on its data's test set: `python -m mnist_lit.evaluate run_dir=<run>` (see README).

Prints test accuracy, loss and per-class accuracy; writes confusion_matrix.png, misclassified.png and
eval.json into the run dir.
"""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig

from mnist_lit.cli.entry import command
from mnist_lit.config.messages import (
    refuse_added_keys,
    whole_number,
)
from mnist_lit.files import check_writable, write_atomically
from mnist_lit.scoring import Evaluation, evaluate_net


def report(result: Evaluation) -> str:
    """The console summary: overall scores and a per-class table."""
    confusion = result.confusion
    lines = [
        f"test accuracy {result.accuracy:.2%} ({int(confusion.diag().sum())}/{len(result.labels)})   "
        f"test loss {result.loss:.4f}",
        "",
        "digit  count  accuracy  most often mistaken for",
    ]
    for digit in range(result.num_classes):
        row = confusion[digit].clone()
        total = int(row.sum())
        row[digit] = 0
        mistaken = f"{int(row.argmax())} ({int(row.max())}x)" if row.max() > 0 else "-"
        acc = f"{result.per_class_accuracy[digit]:.2%}" if total else "-"
        lines.append(f"{digit:>5}  {total:>5}  {acc:>8}  {mistaken}")
    return "\n".join(lines)


def evaluate(cfg: DictConfig) -> dict:
    """Evaluate the run's checkpoint on the test set, print the scores, write the figures and eval.json."""
    from mnist_lit.inference.loading import load, test_set

    refuse_added_keys(cfg, "evaluate")
    whole_number(cfg, "misclassified", 0)
    run = load(cfg)  # a hostile run is refused before anything is built
    from mnist_lit.data import unit_pixels
    from mnist_lit.reporting.plots import confusion_matrix_figure, misclassified_figure, save

    data = run.datamodule
    source = data.provenance()
    images, labels = test_set(run)
    result = evaluate_net(run.net, data.to_features(images), labels)
    out_dir = Path(cfg.get("output_dir") or run.run_dir)
    check_writable(out_dir, "output_dir")

    worst = result.most_confident_errors(cfg.misclassified)
    files = {
        "confusion_matrix": save(
            confusion_matrix_figure(
                result.confusion,
                f"Confusion matrix on the {data.name} test set (accuracy {result.accuracy:.2%})\n"
                f"{run.checkpoint.name}",
                data.class_names,
            ),
            out_dir / "confusion_matrix.png",
        ),
        "misclassified": save(
            misclassified_figure(
                unit_pixels(images[worst]),
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
        "data": data.name,
        **source,  # where the test set came from (MNIST: data_root)
        "num_examples": len(labels),
        "test_acc": result.accuracy,
        "test_loss": result.loss,
        "per_class": {
            str(d): {"count": int(result.confusion[d].sum()), "accuracy": result.per_class_accuracy[d].item()}
            for d in range(result.num_classes)
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
    write_atomically(files["eval"], lambda f: f.write((json.dumps(summary, indent=2) + "\n").encode()))

    where = ", ".join(map(str, source.values())) or "its source"
    print(
        f"run         {run.run_dir}\ncheckpoint  {run.checkpoint}\n"
        f"test set    {data.name}: {len(labels)} digits from {where}\n"
    )
    print(report(result))
    print(f"\nwrote {', '.join(p.name for p in files.values())} to {out_dir}")
    return summary


@command("evaluate")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
