"""Exporting a run to ONNX and TorchScript, checked against PyTorch (mnist_lit.export)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import compose

from mnist_lit.errors import UserError


@pytest.mark.real_data
def test_onnx_file_runs_in_onnxruntime_like_pytorch(real_run, real_root, tmp_path, capsys):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from mnist_lit.data import load_mnist, to_features
    from mnist_lit.export import export
    from mnist_lit.runs.checkpoint import load_run

    path = tmp_path / "digits.onnx"
    check = export(compose("export", f"run_dir={real_run}", f"output={path}", f"data.root={real_root}"))
    assert check["ok"] and check["max_abs_diff"] < 1e-5 and check["digits"] == 10_000
    assert check["same_prediction"] == 10_000
    assert f"max |p_onnx - p_torch| = {check['max_abs_diff']:.2e} (< 1e-05)" in capsys.readouterr().out

    # as the README runs it: onnxruntime alone, pixels in [0, 1], any batch size
    images, labels = load_mnist(real_root, train=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["pixels"]
    run = load_run(real_run)
    for batch in (1, 7, 1000):
        pixels = images[:batch].numpy().astype(np.float32) / 255
        (probs,) = session.run(["probabilities"], {"pixels": pixels})
        with torch.inference_mode():
            expected = run.net(to_features(images[:batch], run.normalize)).softmax(1).numpy()
        assert probs.shape == (batch, 10)
        assert np.abs(probs - expected).max() < 1e-5
    assert (probs.argmax(1) == labels[:1000].numpy()).mean() > 0.95
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert meta["producer"] == "mnist-lit" and meta["checkpoint"] == str(run.checkpoint)


def test_torchscript_of_a_normalizing_run(synthetic_run, synthetic_root):
    from mnist_lit.data import load_mnist, to_features
    from mnist_lit.export import export
    from mnist_lit.runs.checkpoint import load_run

    check = export(compose("export", f"run_dir={synthetic_run}", "format=torchscript", "check_digits=100"))
    assert check["ok"] and check["digits"] == 100 and check["file"] == str(synthetic_run / "model.pt")
    extra = {"mnist_lit.json": ""}
    with pytest.warns(FutureWarning):  # torch 2.14 deprecates TorchScript; it still loads
        loaded = torch.jit.load(check["file"], _extra_files=extra)
    assert json.loads(extra["mnist_lit.json"])["format"] == "torchscript"
    images, _ = load_mnist(synthetic_root, train=False)
    run = load_run(synthetic_run)
    with torch.inference_mode():
        expected = run.net(to_features(images, normalize=True)).softmax(1)
        assert torch.allclose(loaded(images.float() / 255), expected, atol=1e-6)


def test_unknown_format(synthetic_run):
    from mnist_lit.export import export

    with pytest.raises(UserError, match="format=tflite is not known; choose one of onnx, torchscript"):
        export(compose("export", f"run_dir={synthetic_run}", "format=tflite"))


def test_a_failed_export_leaves_the_earlier_file(synthetic_run, tmp_path, monkeypatch):
    from mnist_lit import export as export_module

    earlier = tmp_path / "model.pt"
    earlier.write_bytes(b"a good model of yesterday")
    cfg = compose("export", f"run_dir={synthetic_run}", "format=torchscript", f"output={earlier}")
    # the exported file answers otherwise than PyTorch: refused, and the earlier file is left as it was
    monkeypatch.setattr(export_module, "run_exported", lambda path, fmt, pixels: torch.zeros(len(pixels), 10))
    with pytest.raises(UserError, match=f"so {earlier} was not written"):
        export_module.export(cfg)
    assert earlier.read_bytes() == b"a good model of yesterday"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]  # no partial file left either
    with pytest.raises(UserError, match=f"output={tmp_path} is a folder; give the file to write"):
        export_module.export(compose("export", f"run_dir={synthetic_run}", f"output={tmp_path}"))


def test_a_checkpoint_of_diverged_weights_is_refused(synthetic_run, tmp_path):
    from mnist_lit.runs.checkpoint import load_run

    ckpt = torch.load(synthetic_run / "checkpoints" / "last.ckpt", weights_only=True)
    first = next(k for k in ckpt["state_dict"] if k.startswith("net."))
    ckpt["state_dict"][first] = torch.full_like(ckpt["state_dict"][first], float("nan"))
    broken = synthetic_run / "checkpoints" / "nan.ckpt"
    torch.save(ckpt, broken)
    try:
        with pytest.raises(UserError, match=f"checkpoint {broken} holds weights that are not finite numbers"):
            load_run(ckpt_path=broken)
    finally:
        broken.unlink()
