"""Predict digits with a trained run: `python -m mnist_lit.predict run_dir=<run> images=[a.png,b.jpg]` or
`index=2` (a test-set digit); see README.

Each input gets a line with the predicted digit and the top-3 probabilities (or `output=json`). An input
that cannot be used (missing, not an image, blank) gets its own error line; the others are still predicted,
and the exit status is 1 when any failed.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig, ListConfig

from mnist_lit.cli.entry import command
from mnist_lit.config.messages import (
    refuse_added_keys,
    whole_number,
)
from mnist_lit.errors import UserError

OUTPUTS = ("text", "json")
PREVIEW_SUFFIXES = (".png", ".jpg", ".jpeg", ".pdf", ".svg")


@dataclass
class Prediction:
    """One input's result: the digit and the top-k (digit, probability), or the error that stopped it."""

    input: str
    digit: int | None = None
    top: list[tuple[int, float]] = field(default_factory=list)
    label: int | None = None  # the true digit, for test-set inputs
    error: str | None = None
    pixels: torch.Tensor | None = None  # the digit the model saw: the data's shape, float in [0, 1]

    def as_dict(self) -> dict:
        out: dict = {"input": self.input}
        if self.error is not None:
            out["error"] = self.error
            return out
        out["digit"] = self.digit
        out["top"] = [{"digit": d, "probability": round(p, 6)} for d, p in self.top]
        if self.label is not None:
            out["label"] = self.label
        return out

    def as_text(self, width: int = 0) -> str:
        name = f"{self.input}:".ljust(width + 1)
        if self.error is not None:
            return f"{name} error: {self.error}"
        top = "  ".join(f"{d}: {p:6.2%}" for d, p in self.top)
        truth = ""
        if self.label is not None:
            truth = f"   (true {self.label}{'' if self.label == self.digit else ', wrong'})"
        return f"{name} {self.digit}   top: {top}{truth}"


def as_list(value) -> list:
    """A config value that may be one item or a list of items."""
    if value is None:
        return []
    if isinstance(value, (list, tuple, ListConfig)):
        return list(value)
    return [value]


def image_extensions() -> set[str]:
    from PIL import Image

    return {ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}


def expand_images(paths: list) -> list[Path]:
    """The image files named: files as given, folders as the image files they hold (sorted, not recursive)."""
    files: list[Path] = []
    extensions = image_extensions()
    for item in paths:
        path = Path(str(item)).expanduser()
        if path.is_dir():
            try:
                found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in extensions)
            except OSError:  # unreadable: reported with the other inputs, which are still predicted
                found = []
            if not found:
                # reported like an unusable file, so the other inputs are still predicted
                files.append(path)
            files.extend(found)
        else:
            files.append(path)
    return files


def parse_indices(value) -> list[int]:
    indices = []
    for item in as_list(value):
        if isinstance(item, bool) or not isinstance(item, int):
            raise UserError(
                f"index={item!r} is not a test-set index; pass integers, e.g. index=2 or index=[0,1,2]."
            )
        indices.append(item)
    return indices


@torch.inference_mode()
def classify(
    net: torch.nn.Module, digits: torch.Tensor, datamodule, top_k: int
) -> list[list[tuple[int, float]]]:
    """(N, H, W) digits of `datamodule`'s data (uint8 bytes or float pixels in [0, 1]) -> for each, the top_k
    (class, probability), most probable first."""
    probs = net.eval()(datamodule.to_features(digits)).float().softmax(1)
    values, classes = probs.topk(min(top_k, probs.shape[1]), dim=1)
    return [list(zip(c.tolist(), v.tolist(), strict=True)) for c, v in zip(classes, values, strict=True)]


def predict(cfg: DictConfig) -> list[Prediction]:
    """Load the run's network, preprocess every input, classify the usable ones; print and return all."""
    from mnist_lit.data import unit_pixels
    from mnist_lit.inference.loading import load, test_set
    from mnist_lit.inference.preprocess import load_digit

    refuse_added_keys(cfg, "predict")
    if cfg.output not in OUTPUTS:
        raise UserError(f"output={cfg.output} is not known; choose one of {', '.join(OUTPUTS)}.")
    whole_number(cfg, "top_k", 1)
    if cfg.get("preview") and Path(cfg.preview).suffix.lower() not in PREVIEW_SUFFIXES:
        raise UserError(f"preview={cfg.preview}: the picture is written as PNG, JPEG, PDF or SVG; name it "
                        f"with one of {', '.join(PREVIEW_SUFFIXES)}.")
    images, indices = as_list(cfg.get("images")), parse_indices(cfg.get("index"))
    if not images and not indices:
        raise UserError(
            "nothing to predict: pass image files or folders, images=[a.png,b.jpg] or images=my_digits/, "
            "and/or test-set indices, index=2 or index=[0,1,2]."
        )
    run = load(cfg)
    data = run.datamodule

    results: list[Prediction] = []
    for path in expand_images(images):
        if path.is_dir():
            readable = os.access(path, os.R_OK | os.X_OK)
            error = "a folder without image files (PNG, JPEG, ...)." if readable else (
                "a folder this user cannot read (permission denied).")
            results.append(Prediction(input=str(path), error=error))
            continue
        try:
            results.append(Prediction(input=str(path), pixels=load_digit(path, data)))
        except UserError as err:
            message = str(err)
            prefix = f"{path}: "
            results.append(Prediction(input=str(path), error=message.removeprefix(prefix)))
    if indices:
        test_images, test_labels = test_set(run)
        test_images = unit_pixels(test_images)
        for i in indices:
            name = f"test[{i}]"
            if not 0 <= i < len(test_images):
                results.append(
                    Prediction(
                        input=name, error=f"no such test digit: index must be 0-{len(test_images) - 1}."
                    )
                )
            else:
                results.append(Prediction(input=name, pixels=test_images[i], label=int(test_labels[i])))

    usable = [r for r in results if r.error is None]
    if usable:
        tops = classify(run.net, torch.stack([r.pixels for r in usable]), data, cfg.top_k)
        for r, top in zip(usable, tops, strict=True):
            r.digit, r.top = top[0][0], top

    if cfg.output == "json":
        print(json.dumps([r.as_dict() for r in results], indent=2))
    else:
        width = max(len(r.input) for r in results)
        for r in results:
            print(r.as_text(width), file=sys.stderr if r.error else sys.stdout)
    for r in results:
        if r.error is not None and cfg.output == "json":
            print(f"error: {r.input}: {r.error}", file=sys.stderr)
    if cfg.get("preview") and usable:
        from mnist_lit.reporting.plots import predictions_figure, save

        captions = [f"{Path(r.input).name[:22]}\n→ {r.digit} ({r.top[0][1]:.1%})" for r in usable]
        path = save(
            predictions_figure(
                torch.stack([r.pixels for r in usable]),
                captions,
                title=f"What the model saw ({'x'.join(map(str, data.image_shape))} inputs) and its predictions",
            ),
            cfg.preview,
        )
        print(f"wrote {path}", file=sys.stderr)
    return results


@command("predict")
def main(cfg: DictConfig) -> None:
    results = predict(cfg)
    failed = sum(r.error is not None for r in results)
    if failed:
        print(f"{failed} of {len(results)} inputs failed.", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
