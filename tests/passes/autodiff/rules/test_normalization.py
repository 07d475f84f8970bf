"""Gradient rules of the normalizations (adamax_onnx/passes/autodiff/rules/normalization.py),
checked with tests/gradcheck.py against float64 central differences and torch autograd."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import helper

from adamax_onnx.passes.autodiff.errors import GradientBuildError
from tests.gradcheck import _graph, check_graph, check_op, run_gradients


def _rand(*shape, seed=0, positive=False):
    a = np.random.default_rng(seed).standard_normal(shape)
    return np.abs(a) + 0.5 if positive else a


def _norm(x, dims, eps, center=True):
    """Standardize over ``dims`` (RMS when not ``center``)."""
    if center:
        x = x - x.mean(dims, keepdim=True)
    return x / torch.sqrt((x * x).mean(dims, keepdim=True) + eps)


# -- LayerNormalization ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "opset, axis, scale_shape, bias_shape, eps, outputs",
    [
        (17, -1, (4,), (4,), 1e-5, 1),  # what torch exporters write
        (18, -1, (4,), (4,), 1e-5, 1),  # ReduceMean takes its axes as an input
        (17, 1, (3, 4), (3, 4), 1e-3, 3),  # Mean and InvStdDev outputs read back
        (18, 1, (3, 4), (3, 4), 1e-3, 3),
        (17, -2, (1, 4), (4,), 1e-5, 1),  # Scale broadcast to the normalized shape [3, 4]
        (17, 2, (4,), None, 1e-5, 3),  # no B
        (18, 0, (2, 3, 4), (1, 1, 4), 1e-5, 1),  # every axis normalized
    ],
)
def test_layer_normalization(opset, axis, scale_shape, bias_shape, eps, outputs):
    inputs = {"x": _rand(2, 3, 4), "s": _rand(*scale_shape, seed=1)}
    if bias_shape is not None:
        inputs["b"] = _rand(*bias_shape, seed=2)
    dims = tuple(range(axis % 3, 3))

    def torch_fn(x, s, b=None):
        y = _norm(x, dims, eps) * s
        return y if b is None else y + b

    check_op(
        "LayerNormalization",
        inputs,
        attrs={"axis": axis, "epsilon": eps},
        num_outputs=outputs,
        loss_outputs=[0],
        torch_fn=torch_fn,
        opset=opset,
        batch=axis != 0,
    )


def test_layer_normalization_torch_functional():
    """The exporter's form matches torch.nn.functional.layer_norm."""
    check_op(
        "LayerNormalization",
        {"x": _rand(3, 2, 5), "s": _rand(5, seed=1), "b": _rand(5, seed=2)},
        attrs={"axis": -1},
        torch_fn=lambda x, s, b: F.layer_norm(x, (5,), s, b, 1e-5),
    )


def test_layer_normalization_mean_output_in_loss_is_refused():
    with pytest.raises(GradientBuildError, match="Mean/InvStdDev"):
        check_op(
            "LayerNormalization",
            {"x": _rand(2, 4), "s": _rand(4, seed=1)},
            num_outputs=3,
            loss_outputs=[0, 1],
        )


# -- RMSNormalization --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "axis, scale_shape, eps", [(-1, (4,), 1e-5), (1, (3, 4), 1e-3), (-2, (1, 4), 1e-5)]
)
def test_rms_normalization(axis, scale_shape, eps):
    dims = tuple(range(axis % 3, 3))
    check_op(
        "RMSNormalization",
        {"x": _rand(2, 3, 4), "s": _rand(*scale_shape, seed=1)},
        attrs={"axis": axis, "epsilon": eps},
        torch_fn=lambda x, s: _norm(x, dims, eps, center=False) * s,
        opset=23,
    )


def test_rms_normalization_torch_functional():
    check_op(
        "RMSNormalization",
        {"x": _rand(3, 5), "s": _rand(5, seed=1)},
        torch_fn=lambda x, s: F.rms_norm(x, (5,), s, 1e-5),
        opset=23,
    )


# -- GroupNormalization ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape, groups", [((2, 4, 3), 2), ((2, 4, 2, 2), 2), ((2, 4, 3), 4), ((2, 4, 2, 2), 1)]
)
def test_group_normalization_21(shape, groups):
    """Opset 21: scale and bias per channel (torch's group_norm). stash_type=11: onnx.reference
    computes the statistics in double (its default, float, is too coarse for central
    differences); the rule computes in the input's type whatever the stash_type."""
    check_op(
        "GroupNormalization",
        {"x": _rand(*shape), "s": _rand(4, seed=1), "b": _rand(4, seed=2)},
        attrs={"num_groups": groups, "epsilon": 1e-4, "stash_type": 11},
        torch_fn=lambda x, s, b: F.group_norm(x, groups, s, b, 1e-4),
        opset=21,
    )


@pytest.mark.parametrize("shape", [(2, 4, 3), (2, 6, 2, 2)])
def test_group_normalization_18(shape, monkeypatch):
    """Opset 18: scale and bias per group. onnx deprecated this form (the checker refuses it),
    onnxruntime still runs it, and models exported at opsets 18-20 hold it."""
    n, c = shape[:2]
    check_model = onnx.checker.check_model

    def tolerant_check(model, *args, **kwargs):
        try:
            check_model(model, *args, **kwargs)
        except onnx.checker.ValidationError as exc:
            if "GroupNormalization is deprecated" not in str(exc):
                raise

    monkeypatch.setattr(onnx.checker, "check_model", tolerant_check)

    def torch_fn(x, s, b):
        xr = x.reshape(n, 2, -1)
        return (_norm(xr, (2,), 1e-5) * s[:, None] + b[:, None]).reshape(shape)

    check_op(
        "GroupNormalization",
        {"x": _rand(*shape), "s": _rand(2, seed=1), "b": _rand(2, seed=2)},
        attrs={"num_groups": 2},
        torch_fn=torch_fn,
        opset=18,
    )


# -- InstanceNormalization ---------------------------------------------------------------------


@pytest.mark.parametrize("opset", [13, 18])
@pytest.mark.parametrize("shape", [(2, 3, 4), (2, 3, 2, 3)])
def test_instance_normalization(opset, shape):
    check_op(
        "InstanceNormalization",
        {"x": _rand(*shape), "s": _rand(3, seed=1), "b": _rand(3, seed=2)},
        attrs={"epsilon": 1e-3},
        torch_fn=lambda x, s, b: F.instance_norm(x, weight=s, bias=b, eps=1e-3),
        opset=opset,
    )


# -- BatchNormalization ------------------------------------------------------------------------


def _bn_inputs(shape, seed=0):
    c = shape[1]
    return {
        "x": _rand(*shape, seed=seed),
        "s": _rand(c, seed=seed + 1),
        "b": _rand(c, seed=seed + 2),
        "m": _rand(c, seed=seed + 3),
        "v": _rand(c, seed=seed + 4, positive=True),
    }


def _bn_eval_torch(x, s, b, m, v, eps=1e-5):
    """Inference-mode BatchNorm written out (torch's refuses a gradient for mean/var)."""
    shape = (-1,) + (1,) * (x.dim() - 2)
    m, v, s, b = (t.reshape(shape) for t in (m, v, s, b))
    return (x - m) / torch.sqrt(v + eps) * s + b


@pytest.mark.parametrize("attrs", [{}, {"training_mode": 0}])
@pytest.mark.parametrize("shape", [(3, 4), (2, 3, 2, 2)])
def test_batch_normalization_inference(attrs, shape):
    check_op(
        "BatchNormalization",
        _bn_inputs(shape),
        attrs={**attrs, "epsilon": 1e-3},
        wrt=["x", "s", "b"],
        torch_fn=lambda x, s, b, m, v: F.batch_norm(x, m, v, s, b, training=False, eps=1e-3),
        opset=15,
    )


def test_batch_normalization_inference_mean_var_gradients():
    """mean/var are not trained in practice, but a gradient reaching them is still right."""
    check_op(
        "BatchNormalization",
        _bn_inputs((2, 3, 2)),
        wrt=["x", "s", "b", "m", "v"],
        torch_fn=_bn_eval_torch,
        opset=15,
    )


def _bn_train_torch(x, s, b, m, v, eps=1e-5):
    # torch updates the running buffers in place: hand it detached copies
    return F.batch_norm(x, m.detach().clone(), v.detach().clone(), s, b, True, 0.1, eps)


@pytest.mark.parametrize(
    "opset, shape", [(14, (4, 3)), (15, (2, 3, 2, 2)), (18, (4, 3)), (18, (2, 3, 2, 2))]
)
def test_batch_normalization_training(opset, shape):
    """training_mode=1: batch statistics over every axis but 1 (torch's train-mode BatchNorm);
    the running statistics outputs exist but the loss does not read them."""
    check_op(
        "BatchNormalization",
        _bn_inputs(shape),
        attrs={"training_mode": 1, "momentum": 0.8},
        num_outputs=3,
        loss_outputs=[0],
        wrt=["x", "s", "b"],
        torch_fn=_bn_train_torch,
        opset=opset,
    )


def test_batch_normalization_training_running_stats_in_loss_is_refused():
    with pytest.raises(GradientBuildError, match="running"):
        check_op(
            "BatchNormalization",
            _bn_inputs((4, 3)),
            attrs={"training_mode": 1},
            num_outputs=3,
            loss_outputs=[0, 1],
            wrt=["x"],
            opset=15,
        )


@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 2, 2)])
@pytest.mark.parametrize("training", [False, True])
def test_batch_normalization_9(shape, training):
    """Opset 13 (BatchNormalization-9): declaring the 4 statistics outputs means training mode.
    onnx.reference runs neither form as onnxruntime and torch do (it takes the default momentum
    for a training request), so torch autograd is the only reference here."""
    inputs = _bn_inputs(shape)
    weights = np.random.default_rng(7).standard_normal(shape)
    outputs = ["y", "rm", "rv", "sm", "sv"] if training else ["y"]
    node = helper.make_node("BatchNormalization", list(inputs), outputs)
    mul = helper.make_node("Mul", ["y", "w"], ["t"])
    red = helper.make_node("ReduceSum", ["t"], ["loss"], keepdims=0)
    f32 = onnx.TensorProto.FLOAT
    dims = ["N", *shape[1:]]
    graph = helper.make_graph(
        [node, mul, red],
        "bn9",
        [helper.make_tensor_value_info("x", f32, dims)]
        + [helper.make_tensor_value_info(k, f32, [shape[1]]) for k in "sbmv"],
        [helper.make_tensor_value_info("loss", f32, [])],
        [onnx.numpy_helper.from_array(weights.astype(np.float32), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    feeds = {k: v.astype(np.float32) for k, v in inputs.items()}
    ours, _ = run_gradients(model, feeds, ["x", "s", "b"])

    t = {k: torch.tensor(v, requires_grad=k in "xsb") for k, v in inputs.items()}
    y = (_bn_train_torch if training else _bn_eval_torch)(**t)
    (y * torch.tensor(weights)).sum().backward()
    for k in "xsb":
        ref = t[k].grad.numpy()
        np.testing.assert_allclose(ours[k], ref, rtol=1e-4, atol=1e-5 * max(1, abs(ref).max()))


def test_normalization_chain_symbolic_batch():
    """LayerNorm feeding BatchNorm (training) through a MatMul: the rules compose, and the
    batch dim stays symbolic all the way (run-time counts for the batch statistics)."""
    inputs = {
        "x": _rand(4, 3),
        "w": _rand(3, 5, seed=1),
        "ls": _rand(5, seed=2),
        "lb": _rand(5, seed=3),
        **{k: v for k, v in _bn_inputs((4, 5), seed=4).items() if k != "x"},
    }
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("LayerNormalization", ["h", "ls", "lb"], ["ln"]),
        helper.make_node(
            "BatchNormalization", ["ln", "s", "b", "m", "v"], ["y", "rm", "rv"], training_mode=1
        ),
    ]

    def torch_fn(x, w, ls, lb, s, b, m, v):
        return _bn_train_torch(F.layer_norm(x @ w, (5,), ls, lb), s, b, m, v)

    check_graph(
        nodes, inputs, ["y"], wrt=["x", "w", "ls", "lb", "s", "b"], torch_fn=torch_fn, opset=17
    )


# -- float16 and double --------------------------------------------------------------------------

_DTYPE_CASES = {
    "LayerNormalization": ("LayerNormalization", "xsb", (2, 3, 4), {}, 1, 17),
    "LayerNormalization-3": ("LayerNormalization", "xsb", (2, 3, 4), {"axis": 1}, 3, 17),
    "RMSNormalization": ("RMSNormalization", "xs", (2, 3, 4), {}, 1, 23),
    "GroupNormalization": ("GroupNormalization", "xsb", (2, 4, 3), {"num_groups": 2}, 1, 21),
    "InstanceNormalization": ("InstanceNormalization", "xsb", (2, 4, 3), {}, 1, 17),
    "BatchNormalization": ("BatchNormalization", "xsbmv", (2, 4, 3), {}, 1, 15),
    "BatchNormalization-train": (
        "BatchNormalization",
        "xsbmv",
        (2, 4, 3),
        {"training_mode": 1},
        3,
        15,
    ),
}


# onnxruntime's CPU InstanceNormalization has no double kernel: that pair is not generated.
_DTYPE_PARAMS = [
    pytest.param(case, dtype, id=f"{case}-{np.dtype(dtype).name}")
    for case in _DTYPE_CASES
    for dtype in (np.float64, np.float16)
    if not (_DTYPE_CASES[case][0] == "InstanceNormalization" and dtype == np.float64)
]


@pytest.mark.parametrize("case,dtype", _DTYPE_PARAMS)
def test_other_float_types(case, dtype):
    """The gradient graphs run in onnxruntime in double and float16 (Mean/InvStdDev outputs are
    float: cast to the input's type) and agree with the float32 ones."""
    op, names, shape, attrs, outputs, opset = _DTYPE_CASES[case]
    params = _bn_inputs(shape)
    if op in ("LayerNormalization", "RMSNormalization"):
        normalized = shape[attrs.get("axis", -1) % len(shape) :]
        params["s"], params["b"] = _rand(*normalized, seed=8), _rand(*normalized, seed=9)
    inputs = {k: params[k] for k in names}
    weights = {"y0": _rand(*shape, seed=5)}
    node = helper.make_node(op, list(inputs), [f"y{k}" for k in range(outputs)], **attrs)
    grads = {}
    for dt in (np.float32, dtype):
        model = _graph([node], inputs, {}, ["y0"], weights, dt, opset, True)
        feeds = {k: v.astype(dt) for k, v in inputs.items()}
        grads[dt], _ = run_gradients(model, feeds, ["x", "s"])
    tol = 3e-2 if dtype == np.float16 else 1e-4
    for k, ref in grads[np.float32].items():
        got = grads[dtype][k]
        assert got.dtype == dtype
        np.testing.assert_allclose(got, ref, rtol=tol, atol=tol * max(1.0, np.abs(ref).max()))
