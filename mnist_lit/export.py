"""Export a trained run for inference without mnist-lit (see README):
`python -m mnist_lit.export run_dir=<run> format=onnx` (or `format=torchscript`).

The exported model takes `pixels`, float32 (N, H, W) in [0, 1], the run's data's image shape (MNIST's
(N, 28, 28): a light digit on black, as MNIST and `mnist_lit.inference.preprocess.to_digit` make them), and
returns `probabilities`, float32 (N, classes): the run's pixel scaling and the softmax are part of it. After
writing, the file is loaded back with its own runtime (onnxruntime, torch.jit) and its probabilities on the
run's test digits are compared with PyTorch's.

ONNX goes through torch.onnx.export's torch.export-based ("dynamo") exporter, the default since torch 2.9;
it needs the `onnxscript` package (`pip install -e ".[export]"`).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn

from mnist_lit.cli.entry import command
from mnist_lit.config.messages import (
    refuse_added_keys,
    whole_number,
)
from mnist_lit.errors import UserError

FORMATS = {"onnx": "model.onnx", "torchscript": "model.pt"}
TOLERANCE = 1e-5
ONNX_OPSET = 18


class ProbabilityModel(nn.Module):
    """pixels (N, H, W) in [0, 1] -> probabilities (N, classes): the data's scaling (a data module's
    `input_size` and `normalization`), the network and a softmax."""

    def __init__(self, net: nn.Module, input_size: int, normalization: tuple[float, float] | None):
        super().__init__()
        self.net = net
        self.input_size, self.normalization = input_size, normalization

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.reshape(pixels.shape[0], self.input_size)
        if self.normalization is not None:
            x = (x - self.normalization[0]) / self.normalization[1]
        return self.net(x).softmax(dim=1)


def input_text(data) -> str:
    return (f"pixels: float32 [N, {', '.join(map(str, data.image_shape))}], values in [0, 1], light digit on "
            f"black ({data.name} style)")


def output_text(data) -> str:
    return (f"probabilities: float32 [N, {data.num_classes}], of the classes "
            f"{', '.join(data.class_names)}")


def metadata(run, fmt: str) -> dict[str, str]:
    return {
        "producer": "mnist-lit",
        "run_dir": str(run.run_dir),
        "checkpoint": str(run.checkpoint),
        "input": input_text(run.datamodule),
        "output": output_text(run.datamodule),
        "format": fmt,
    }


def export_onnx(model: nn.Module, path: Path, meta: dict[str, str], example: torch.Tensor) -> None:
    try:
        import onnx
        import onnxscript  # noqa: F401  (the exporter needs it; failing here gives the better message)
    except ImportError as err:
        raise UserError(
            f"format=onnx needs the onnx and onnxscript packages ({err}). Install them with "
            'pip install -e ".[export]" (or pip install onnx onnxscript onnxruntime).'
        ) from None
    batch = torch.export.Dim("batch", min=1)
    program = torch.onnx.export(
        model,
        (example,),
        input_names=["pixels"],
        output_names=["probabilities"],
        dynamic_shapes={"pixels": {0: batch}},
        opset_version=ONNX_OPSET,
        dynamo=True,
        verbose=False,
    )
    proto = program.model_proto
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def export_torchscript(model: nn.Module, path: Path, meta: dict[str, str], example: torch.Tensor) -> None:
    with warnings.catch_warnings():
        # torch 2.14 marks TorchScript deprecated (README: prefer ONNX); it still works and is asked for
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(model, example)
        torch.jit.save(traced, str(path), _extra_files={"mnist_lit.json": json.dumps(meta)})


def run_exported(path: Path, fmt: str, pixels: torch.Tensor) -> torch.Tensor:
    """The exported file's probabilities for `pixels`, computed by its own runtime."""
    if fmt == "onnx":
        try:
            import onnxruntime as ort
        except ImportError:
            raise UserError(
                "checking the ONNX file needs onnxruntime: "
                'pip install -e ".[export]" (or pip install onnxruntime).'
            ) from None
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (probs,) = session.run(["probabilities"], {"pixels": pixels.numpy()})
        return torch.from_numpy(probs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        loaded = torch.jit.load(str(path), map_location="cpu")
    with torch.inference_mode():
        return loaded(pixels)


def export(cfg: DictConfig) -> dict:
    """Export the run's network, check the file against PyTorch on test digits; print and return the check."""
    from mnist_lit.data import unit_pixels
    from mnist_lit.inference.loading import load, test_set
    from mnist_lit.files import check_writable

    refuse_added_keys(cfg, "export")
    fmt = str(cfg.format).lower()
    if fmt not in FORMATS:
        raise UserError(f"format={cfg.format} is not known; choose one of {', '.join(FORMATS)}.")
    whole_number(cfg, "check_digits", 1, 10_000)
    run = load(cfg)
    data = run.datamodule
    images, _ = test_set(run)
    pixels = unit_pixels(images[: cfg.check_digits])

    model = ProbabilityModel(run.net, data.input_size, data.normalization).eval()
    example = torch.rand(2, *data.image_shape)
    path = Path(cfg.get("output") or run.run_dir / FORMATS[fmt])
    if path.is_dir():
        raise UserError(f"output={path} is a folder; give the file to write, e.g. "
                        f"output={path / FORMATS[fmt]}.")
    check_writable(path.parent, "output")
    meta = metadata(run, fmt)
    # written beside its place and moved there once checked: a failed export leaves an earlier file intact
    partial = path.with_name(f".{path.name}.partial")
    try:
        if fmt == "onnx":
            export_onnx(model, partial, meta, example)
        else:
            export_torchscript(model, partial, meta, example)
        with torch.inference_mode():
            expected = model(pixels)
        got = run_exported(partial, fmt, pixels)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    diff = (got - expected).abs().max().item()
    same = int((got.argmax(1) == expected.argmax(1)).sum())
    check = {
        "file": str(path),
        "format": fmt,
        "checkpoint": str(run.checkpoint),
        "digits": len(pixels),
        "input_shape": list(pixels.shape),
        "max_abs_diff": diff,
        "same_prediction": same,
        "ok": diff < TOLERANCE,
    }
    size = partial.stat().st_size / 1e6
    if check["ok"]:
        partial.replace(path)
    else:
        partial.unlink(missing_ok=True)
    done = "exported" if check["ok"] else "not written:"
    print(f"{done} {path} ({fmt}, {size:.2f} MB) from {run.checkpoint}")
    print(f"  input  {input_text(data)}")
    print(f"  output {output_text(data)}")
    print(
        f"check on {len(pixels)} test digits of {data.name}: max |p_{fmt} - p_torch| = {diff:.2e} "
        f"({'<' if check['ok'] else 'NOT <'} {TOLERANCE:g}); same predicted digit for {same}/{len(pixels)}"
    )
    if not check["ok"]:
        raise UserError(
            f"the exported model differs from the PyTorch model by up to {diff:.2e} in probability "
            f"(tolerance {TOLERANCE:g}), so {path} was not written. Report this with the run's config."
        )
    return check


@command("export")
def main(cfg: DictConfig) -> None:
    export(cfg)


if __name__ == "__main__":
    main()
