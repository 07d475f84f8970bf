"""Gradients built by the gradient pass against PyTorch autograd (torch is a test-only dependency)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

import adamax_onnx as ax
from adamax_onnx.models.cnn import build_cnn
from adamax_onnx.models.mlp import build_mlp
from adamax_onnx.passes.gradients import BuildGradients
from adamax_onnx.passes.loss import AttachLoss


def onnx_gradients(model, loss, feeds, label_extra=None):
    names = ax.trainable_params(model)
    g = BuildGradients("loss", names)(AttachLoss(loss)(model).model).model
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(g.SerializeToString(), so, providers=["CPUExecutionProvider"])
    init = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    outs = sess.run(None, {**feeds, **{n: init[n] for n in names}})
    by = dict(zip([o.name for o in sess.get_outputs()], outs, strict=True))
    return by["loss"], {n: by[f"{n}_grad"] for n in names}, init


def torch_params(init):
    return {
        k: torch.tensor(v, requires_grad=True) for k, v in init.items() if v.dtype == np.float32
    }


def mlp_forward(p, x, activation):
    act = {"relu": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh}[activation]
    h = act(x @ p["fc1.weight"].T + p["fc1.bias"])
    return h @ p["fc2.weight"].T + p["fc2.bias"]


def cnn_forward(p, x):
    h = F.max_pool2d(torch.relu(F.conv2d(x, p["conv1.weight"], p["conv1.bias"], padding=1)), 2)
    h = F.max_pool2d(torch.relu(F.conv2d(h, p["conv2.weight"], p["conv2.bias"], padding=1)), 2)
    h = torch.relu(h.reshape(h.shape[0], -1) @ p["fc1.weight"].T + p["fc1.bias"])
    return h @ p["fc2.weight"].T + p["fc2.bias"]


def compare(loss, grads, tloss, tparams, names):
    tloss.backward()
    np.testing.assert_allclose(loss, tloss.item(), rtol=1e-5)
    for n in names:
        np.testing.assert_allclose(
            grads[n], tparams[n].grad.numpy(), rtol=1e-4, atol=1e-6, err_msg=n
        )


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh"])
@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_mlp_gradients_match_torch(activation, loss):
    model = build_mlp(in_features=12, hidden=(20,), num_classes=5, activation=activation, seed=1)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 12)).astype(np.float32)
    y = (
        rng.integers(0, 5, 16).astype(np.int64)
        if loss == "cross_entropy"
        else rng.normal(size=(16, 5)).astype(np.float32)
    )
    value, grads, init = onnx_gradients(model, loss, {"input": x, "labels": y})
    p = torch_params(init)
    out = mlp_forward(p, torch.tensor(x), activation)
    tloss = (
        F.cross_entropy(out, torch.tensor(y))
        if loss == "cross_entropy"
        else F.mse_loss(out, torch.tensor(y))
    )
    compare(value, grads, tloss, p, ax.trainable_params(model))


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_cnn_gradients_match_torch(loss):
    model = build_cnn(seed=2)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(8, 1, 8, 8)).astype(np.float32)
    y = (
        rng.integers(0, 10, 8).astype(np.int64)
        if loss == "cross_entropy"
        else rng.normal(size=(8, 10)).astype(np.float32)
    )
    value, grads, init = onnx_gradients(model, loss, {"input": x, "labels": y})
    p = torch_params(init)
    out = cnn_forward(p, torch.tensor(x))
    tloss = (
        F.cross_entropy(out, torch.tensor(y))
        if loss == "cross_entropy"
        else F.mse_loss(out, torch.tensor(y))
    )
    compare(value, grads, tloss, p, ax.trainable_params(model))


def test_loss_scale_seeds_the_gradient():
    model = build_mlp(in_features=6, hidden=(8,), num_classes=3)
    names = ax.trainable_params(model)
    rng = np.random.default_rng(0)
    feeds = {"input": rng.normal(size=(4, 6)).astype(np.float32), "labels": np.array([0, 1, 2, 0])}
    with_loss = AttachLoss("cross_entropy")(model).model
    init = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    so = ort.SessionOptions()
    so.log_severity_level = 3
    res = []
    for seed in (1.0, 256.0):
        g = BuildGradients("loss", names, seed=seed)(with_loss).model
        s = ort.InferenceSession(g.SerializeToString(), so, providers=["CPUExecutionProvider"])
        out = dict(
            zip([o.name for o in s.get_outputs()], s.run(None, {**feeds, **init}), strict=True)
        )
        res.append(out)
    for n in names:
        np.testing.assert_allclose(res[1][f"{n}_grad"], 256.0 * res[0][f"{n}_grad"], rtol=1e-6)
    assert res[0]["loss"] == res[1]["loss"]
