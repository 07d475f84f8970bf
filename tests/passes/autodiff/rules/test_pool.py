"""Gradient rules of adamax_onnx/passes/autodiff/rules/pool.py against torch autograd and
central differences."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.gradcheck import check_op, symbolic_vs_static

R = np.random.default_rng(0)


def _r(*shape):
    return R.standard_normal(shape)


# -- MaxPool ------------------------------------------------------------------------------------


def _max_pool_torch(attrs, n=2):
    def fn(x):
        k = attrs["kernel_shape"]
        p = attrs.get("pads", [0] * 2 * n)
        tp = []
        for i in reversed(range(n)):
            tp += [p[i], p[n + i]]
        if attrs.get("ceil_mode"):  # symmetric pads only
            return F.max_pool2d(
                x,
                k,
                attrs.get("strides", [1] * n),
                p[:n],
                attrs.get("dilations", [1] * n),
                ceil_mode=True,
            )
        x = F.pad(x, tp, value=-float("inf"))
        return F.max_pool2d(x, k, attrs.get("strides", [1] * n), 0, attrs.get("dilations", [1] * n))

    return fn


MAXPOOL = [
    ("disjoint", {"kernel_shape": [2, 2], "strides": [2, 3], "pads": [0, 1, 1, 1]}),
    ("overlap", {"kernel_shape": [3, 3], "strides": [1, 1]}),
    ("pads_strides", {"kernel_shape": [3, 2], "strides": [2, 2], "pads": [1, 0, 1, 1]}),
    ("dilations", {"kernel_shape": [2, 2], "dilations": [2, 1], "strides": [1, 2]}),
    ("ceil", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1}),
    ("same_upper", {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"}),
]


@pytest.mark.parametrize("outputs,opset", [(1, 17), (2, 13)])
@pytest.mark.parametrize("name,attrs", MAXPOOL, ids=[c[0] for c in MAXPOOL])
def test_max_pool(name, attrs, outputs, opset):
    tfn = None
    if attrs.get("auto_pad") is None:
        tfn = _max_pool_torch(attrs)
    check_op(
        "MaxPool",
        {"x": _r(1, 2, 6, 5)},
        attrs=attrs,
        num_outputs=outputs,
        loss_outputs=[0],
        opset=opset,
        torch_fn=tfn,
    )


@pytest.mark.parametrize("opset", [13, 17])
def test_max_pool_storage_order(opset):
    attrs = {"kernel_shape": [2, 2], "strides": [1, 1], "storage_order": 1}
    check_op(
        "MaxPool",
        {"x": _r(1, 2, 4, 5)},
        attrs=attrs,
        num_outputs=2,
        loss_outputs=[0],
        opset=opset,
        torch_fn=_max_pool_torch(attrs),
    )


def test_max_pool1d():
    attrs = {"kernel_shape": [3], "strides": [2], "pads": [1, 1]}
    check_op(
        "MaxPool",
        {"x": _r(2, 2, 7)},
        attrs=attrs,
        opset=13,
        torch_fn=lambda x: F.max_pool1d(x, 3, 2, 1),
    )


# -- AveragePool ----------------------------------------------------------------------------------


AVGPOOL = [
    ("plain", {"kernel_shape": [3, 3], "strides": [1, 1]}),
    (
        "pads_incl",
        {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "count_include_pad": 1},
    ),
    ("pads_excl", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    (
        "ceil_excl",
        {"kernel_shape": [2, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1},
    ),
    (
        "ceil_incl",
        {
            "kernel_shape": [3, 3],
            "strides": [2, 2],
            "pads": [1, 1, 1, 1],
            "ceil_mode": 1,
            "count_include_pad": 1,
        },
    ),
    ("asym_excl", {"kernel_shape": [2, 3], "strides": [1, 2], "pads": [0, 1, 1, 2]}),
    (
        "asym_incl",
        {"kernel_shape": [2, 3], "strides": [1, 2], "pads": [0, 1, 1, 2], "count_include_pad": 1},
    ),
    ("same_lower", {"kernel_shape": [3, 2], "strides": [2, 2], "auto_pad": "SAME_LOWER"}),
]


def _avg_pool_torch(attrs):
    k, s = attrs["kernel_shape"], attrs.get("strides", [1, 1])
    p = attrs.get("pads", [0] * 4)
    incl = bool(attrs.get("count_include_pad", 0))
    if p[:2] == p[2:]:
        return lambda x: F.avg_pool2d(x, k, s, p[:2], bool(attrs.get("ceil_mode")), incl)
    tp = [p[1], p[3], p[0], p[2]]

    def fn(x):
        xp = F.pad(x, tp)
        if incl:
            return F.avg_pool2d(xp, k, s)
        ones = F.pad(x.detach() * 0 + 1, tp)
        return F.avg_pool2d(xp, k, s) / F.avg_pool2d(ones, k, s)

    return fn


@pytest.mark.parametrize("name,attrs", AVGPOOL, ids=[c[0] for c in AVGPOOL])
def test_average_pool(name, attrs):
    tfn = None if "auto_pad" in attrs else _avg_pool_torch(attrs)
    check_op("AveragePool", {"x": _r(1, 2, 6, 5)}, attrs=attrs, torch_fn=tfn)


def test_average_pool_dilations_opset19():
    attrs = {"kernel_shape": [2, 2], "strides": [1, 2], "dilations": [2, 2], "pads": [1, 0, 0, 1]}
    check_op("AveragePool", {"x": _r(1, 2, 5, 6)}, attrs=attrs, opset=19)


def test_global_pools():
    check_op(
        "GlobalAveragePool",
        {"x": _r(2, 2, 3, 4)},
        torch_fn=lambda x: x.mean(dim=(2, 3), keepdim=True),
    )
    check_op("GlobalMaxPool", {"x": _r(2, 2, 3, 4)}, torch_fn=lambda x: F.adaptive_max_pool2d(x, 1))


# -- symbolic spatial sizes -----------------------------------------------------------------------


def test_symbolic_spatial_sizes():
    from onnx import helper

    x = _r(2, 4, 5, 6)
    pool = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 1])
    symbolic_vs_static(pool, x, {})
    symbolic_vs_static(helper.make_node("GlobalAveragePool", ["x"], ["y"]), x, {})
    symbolic_vs_static(helper.make_node("GlobalMaxPool", ["x"], ["y"]), x, {})


@pytest.mark.parametrize("opset", [13, 17])
@pytest.mark.parametrize("op", ["MaxPool", "AveragePool"])
def test_pool_ceil_last_window_in_pad(op, opset):
    """ceil_mode where onnx's shape inference keeps a window that onnxruntime (and torch) drop:
    6x5 input, kernel 2, stride 2, pads 1: onnx infers 4x4, onnxruntime computes 4x3."""
    import onnx
    from onnx import helper

    from tests.gradcheck import run_gradients

    attrs = {"kernel_shape": [2, 2], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1}
    nodes = [
        helper.make_node(op, ["x"], ["y"], **attrs),
        helper.make_node("Mul", ["y", "y"], ["sq"]),
        helper.make_node("ReduceSum", ["sq"], ["loss"], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 2, 6, 5])],
        [helper.make_tensor_value_info("loss", onnx.TensorProto.FLOAT, [])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    x = _r(2, 2, 6, 5)
    ours, _ = run_gradients(model, {"x": x.astype(np.float32)}, ["x"])
    t = torch.tensor(x, requires_grad=True)
    if op == "MaxPool":
        y = F.max_pool2d(t, 2, 2, 1, ceil_mode=True)
    else:
        y = F.avg_pool2d(t, 2, 2, 1, ceil_mode=True, count_include_pad=False)
    assert y.shape[2:] == (4, 3)
    (y * y).sum().backward()
    np.testing.assert_allclose(ours["x"], t.grad.numpy(), rtol=1e-4, atol=1e-5)


def test_max_pool_ceil_overlapping_opset13_matches_scatter():
    """The opset-13 tap-mask formulation with a window onnx's shape inference keeps and
    onnxruntime drops (6x6, kernel 3, stride 2, pads 2, ceil: onnx 5x5, onnxruntime 4x4) gives
    the opset-17 ScatterElements gradient."""
    import onnx
    from onnx import helper

    from tests.gradcheck import run_gradients

    x = _r(2, 2, 6, 6).astype(np.float32)
    res = []
    for opset in (13, 17):
        nodes = [
            helper.make_node(
                "MaxPool",
                ["x"],
                ["y"],
                kernel_shape=[3, 3],
                strides=[2, 2],
                pads=[2] * 4,
                ceil_mode=1,
            ),
            helper.make_node("Mul", ["y", "y"], ["sq"]),
            helper.make_node("ReduceSum", ["sq"], ["loss"], keepdims=0),
        ]
        graph = helper.make_graph(
            nodes,
            "g",
            [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 2, 6, 6])],
            [helper.make_tensor_value_info("loss", onnx.TensorProto.FLOAT, [])],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        res.append(run_gradients(model, {"x": x}, ["x"])[0]["x"])
    assert np.abs(res[1]).max() > 0
    np.testing.assert_allclose(res[0], res[1], rtol=1e-6, atol=1e-6)


# -- MaxPool windows that tile the input (2x2/2), and exact ties ----------------------------


@pytest.mark.parametrize("kernel", [[2, 2], [2, 3], [3, 1]])
def test_max_pool_tiled_windows(kernel):
    xs = (2, 3, 6, 6)
    attrs = {"kernel_shape": kernel, "strides": kernel}
    check_op(
        "MaxPool",
        {"x": _r(*xs)},
        attrs=attrs,
        torch_fn=lambda x: F.max_pool2d(x, kernel, kernel),
    )


def test_max_pool_tiled_ties_go_to_the_first_tap_like_torch():
    """Exact ties (repeated values, a window of equal values): only the first maximum in
    row-major window order gets dY, as torch's kernel picks it. Central differences are not
    defined at a tie, so torch alone is the reference here."""
    x = np.array(
        [[[[1.0, 1.0, 0.5, 2.0], [0.0, 1.0, 2.0, 2.0], [3.0, 3.0, 3.0, 3.0], [3.0, 3.0, 3.0, 3.0]]]]
    )
    x = np.concatenate([x, x[:, :, ::-1]], axis=1)  # two channels, the second mirrored
    check_op(
        "MaxPool",
        {"x": x},
        attrs={"kernel_shape": [2, 2], "strides": [2, 2]},
        torch_fn=lambda x: F.max_pool2d(x, 2, 2),
        fd_atol=1e9,
    )
