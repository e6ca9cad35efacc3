"""The CNN option (model/net=cnn): built from config, trained, evaluated, predicted, exported as the MLP."""

from __future__ import annotations

import json
import re

import pytest
import torch
from conftest import compose

from mnist_lit.errors import UserError
from mnist_lit.model import CNN


def test_default_cnn_shape_and_size():
    net = CNN()
    assert sum(p.numel() for p in net.parameters() if p.requires_grad) == 215_418
    assert net(torch.rand(5, 784)).shape == (5, 10)
    convs = [m for m in net if isinstance(m, torch.nn.Conv2d)]
    assert [(m.in_channels, m.out_channels) for m in convs] == [(1, 16), (16, 32)]
    assert all(m.kernel_size == (5, 5) and m.padding == (2, 2) for m in convs)
    assert net[10].in_features == 32 * 7 * 7  # two 2x2 pools: 28 -> 14 -> 7


def test_cnn_options():
    net = CNN(channels=[4, 8, 8], kernel_size=3, hidden_size=20, dropout=0.5)
    assert [m.out_channels for m in net if isinstance(m, torch.nn.Conv2d)] == [4, 8, 8]
    assert sum(isinstance(m, torch.nn.Dropout) for m in net) == 2
    linear = [m for m in net if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [(8 * 3 * 3, 20), (20, 10)]
    assert net(torch.rand(2, 784)).shape == (2, 10)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"channels": [8] * 5}, "5 blocks halve the 28x28 image 5 times, to nothing; use at most 4 blocks"),
    ({"channels": [0]}, "model.net.channels=[0]"),
    ({"channels": []}, "model.net.channels=[]"),
    ({"kernel_size": 4}, "model.net.kernel_size=4 must be a positive odd integer"),
    ({"dropout": 1.0}, "model.net.dropout=1.0 must be in [0, 1)"),
    ({"input_size": 700}, "model.net.input_size=700 must be a square image"),
])
def test_bad_cnn_settings_are_user_errors(kwargs, message):
    with pytest.raises(UserError) as err:
        CNN(**kwargs)
    assert message in str(err.value)


def test_net_options_have_their_own_keys():
    from mnist_lit.config.schema import validate

    cnn = compose("train", "model/net=cnn", "model.net.channels=[8,16]")
    assert cnn.model.net._target_ == "mnist_lit.model.CNN" and list(cnn.model.net.channels) == [8, 16]
    mlp = compose("train", "model.net.hidden_sizes=[64]")  # the default stays the MLP, its keys as before
    assert mlp.model.net._target_ == "mnist_lit.model.MLP" and list(mlp.model.net.hidden_sizes) == [64]
    with pytest.raises(Exception, match="Could not override 'model.net.hidden_sizes'"):
        compose("train", "model/net=cnn", "model.net.hidden_sizes=[64]")
    with pytest.raises(Exception, match=re.escape("Error merging override model.net.channels=[a]")):
        compose("train", "model/net=cnn", "model.net.channels=[a]")
    kernel = r"\+model.net.kernel: model.net has no key 'kernel' \(did you mean model.net.kernel_size\?\)"
    with pytest.raises(UserError, match=kernel):
        validate(compose("train", "model/net=cnn", "+model.net.kernel=3"))


def test_cnn_run_evaluates_predicts_and_exports(synthetic_cnn_run, synthetic_root, tmp_path, capsys):
    from mnist_lit.data import load_mnist, to_features
    from mnist_lit.evaluate import evaluate
    from mnist_lit.export import export
    from mnist_lit.predict import predict
    from mnist_lit.runs.checkpoint import load_run

    metrics = json.loads((synthetic_cnn_run / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["epochs"] == 2
    run = load_run(synthetic_cnn_run)
    assert isinstance(run.net, CNN) and not run.net.training
    assert metrics["trainable_params"] == sum(p.numel() for p in run.net.parameters())
    # the batch norm statistics are in the checkpoint and were learnt (the defaults are 0 and 1)
    assert not torch.equal(run.net[2].running_mean, torch.zeros(4))

    ev = evaluate(compose("evaluate", f"run_dir={synthetic_cnn_run}", f"output_dir={tmp_path}"))
    assert ev["test_acc"] == pytest.approx(metrics["test_acc"], abs=1e-6) and ev["test_acc"] > 0.5

    results = predict(compose("predict", f"run_dir={synthetic_cnn_run}", "index=[0,1,2,3]"))
    images, labels = load_mnist(synthetic_root, train=False)
    with torch.inference_mode():
        expected = run.net(to_features(images[:4])).argmax(1)
    assert [r.digit for r in results] == expected.tolist()
    assert [r.label for r in results] == labels[:4].tolist()

    pytest.importorskip("onnxruntime")
    check = export(compose("export", f"run_dir={synthetic_cnn_run}", f"output={tmp_path / 'cnn.onnx'}",
                           "check_digits=200"))
    assert check["ok"] and check["max_abs_diff"] < 1e-5 and check["same_prediction"] == 200
    assert (tmp_path / "cnn.onnx").stat().st_size > 4 * sum(p.numel() for p in run.net.parameters())
