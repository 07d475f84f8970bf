"""Gradient rules of reductions and CumSum, against float64 central differences and torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.gradcheck import check_op

RNG = np.random.default_rng(7)

SHAPE = (2, 3, 2)  # the first dim is the symbolic batch "N"


def away(shape, lo=0.3, hi=1.5):
    mag = RNG.uniform(lo, hi, size=shape)
    return mag * RNG.choice([-1.0, 1.0], size=shape)


def _prod(x, dims, keepdim):
    for d in sorted(dims, reverse=True):
        x = torch.prod(x, d, keepdim=True)
    return x if keepdim else x.reshape([s for i, s in enumerate(x.shape) if i not in dims])


# op -> (torch reduction fn(x, dims, keepdim), elementwise form for noop_with_empty_axes, input)
OPS = {
    "ReduceSum": (lambda x, d, k: torch.sum(x, d, keepdim=k), lambda x: x, away),
    "ReduceMean": (lambda x, d, k: torch.mean(x, d, keepdim=k), lambda x: x, away),
    "ReduceMax": (lambda x, d, k: torch.amax(x, d, keepdim=k), lambda x: x, away),
    "ReduceMin": (lambda x, d, k: torch.amin(x, d, keepdim=k), lambda x: x, away),
    "ReduceSumSquare": (lambda x, d, k: torch.sum(x * x, d, keepdim=k), lambda x: x * x, away),
    "ReduceL1": (lambda x, d, k: torch.sum(x.abs(), d, keepdim=k), torch.abs, away),
    "ReduceL2": (
        lambda x, d, k: torch.linalg.vector_norm(x, 2, d, keepdim=k),
        torch.abs,
        away,
    ),
    "ReduceLogSum": (
        lambda x, d, k: torch.log(torch.sum(x, d, keepdim=k)),
        torch.log,
        lambda s: RNG.uniform(0.3, 1.5, size=s),
    ),
    "ReduceLogSumExp": (lambda x, d, k: torch.logsumexp(x, d, keepdim=k), lambda x: x, away),
    "ReduceProd": (_prod, lambda x: x, away),
}

# (axes or None for absent, keepdims, noop_with_empty_axes)
VARIANTS = {
    "ax1_keep": ([1], 1, 0),
    "ax02_drop": ([0, 2], 0, 0),
    "neg_drop": ([-1], 0, 0),
    "batch_axis_keep": ([0], 1, 0),
    "all_keep": (None, 1, 0),
    "all_drop": (None, 0, 0),
    "empty_all_drop": ([], 0, 0),
    "empty_noop": ([], 0, 1),
    "absent_noop": (None, 1, 1),
}


def _torch_fn(op, axes, keepdims, noop):
    reduce_fn, elementwise, _ = OPS[op]
    if not axes and noop:
        return lambda x, **_: elementwise(x)
    dims = list(range(len(SHAPE))) if not axes else [a % len(SHAPE) for a in axes]
    return lambda x, **_: reduce_fn(x, dims, bool(keepdims))


def _check(op, axes, keepdims, noop, opset, *, x=None, runtime_axes=False):
    x = OPS[op][2](SHAPE) if x is None else x
    attrs = {"keepdims": keepdims}
    inputs, consts, order = {"x": x}, {}, ["x"]
    input_form = op == "ReduceSum" or opset >= 18
    if noop:
        assert input_form
        attrs["noop_with_empty_axes"] = 1
    if axes is not None:
        if input_form:
            arr = np.array(axes, dtype=np.int64)
            (inputs if runtime_axes else consts)["axes"] = arr
            order.append("axes")
        else:
            attrs["axes"] = axes
    check_op(
        op,
        inputs,
        attrs=attrs,
        consts=consts,
        order=order,
        opset=opset,
        wrt=["x"],
        torch_fn=_torch_fn(op, axes, keepdims, noop),
    )


@pytest.mark.parametrize("variant", list(VARIANTS.values()), ids=list(VARIANTS))
@pytest.mark.parametrize("op", list(OPS))
def test_reduce_input_form(op, variant):
    """Opset 18: axes as a constant input."""
    _check(op, *variant, opset=18)


ATTR_VARIANTS = {k: VARIANTS[k] for k in ("ax1_keep", "ax02_drop", "all_drop", "neg_drop")}


@pytest.mark.parametrize("variant", list(ATTR_VARIANTS.values()), ids=list(ATTR_VARIANTS))
@pytest.mark.parametrize("op", list(OPS))
def test_reduce_opset13(op, variant):
    """Opset 13: axes as an attribute (ReduceSum: already an input)."""
    _check(op, *variant, opset=13)


def test_reduce_sum_noop_opset13():
    _check("ReduceSum", [], 1, 1, opset=13)
    _check("ReduceSum", None, 0, 1, opset=13)


@pytest.mark.parametrize("variant", ["ax02_drop", "neg_drop", "ax1_keep", "empty_noop"])
@pytest.mark.parametrize("op", ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceL2", "ReduceProd"])
def test_reduce_run_time_axes(op, variant):
    """Axes fed at run time: the gradient graph reuses the forward's axes tensor."""
    _check(op, *VARIANTS[variant], opset=18, runtime_axes=True)


def test_reduce_run_time_axes_empty_means_all():
    _check("ReduceMean", [], 0, 0, opset=18, runtime_axes=True)
    _check("ReduceMax", [], 0, 0, opset=18, runtime_axes=True)


@pytest.mark.parametrize("op", ["ReduceMax", "ReduceMin"])
@pytest.mark.parametrize("axes,keepdims", [([1], 0), (None, 1)])
def test_reduce_max_min_ties_split_evenly(op, axes, keepdims):
    """Two-way ties get half each, as torch.amax/amin (and central differences) give."""
    x = np.array(
        [
            [[1.0, -1.0], [1.0, 2.0], [0.25, 2.0]],
            [[-1.0, 0.3], [0.3, -0.8], [-1.0, 0.9]],
        ]
    )
    if op == "ReduceMin":
        x = -x
    if axes is None:
        x[0, 0, 0] = x[1, 2, 1] = 3.0 if op == "ReduceMax" else -3.0
    _check(op, axes, keepdims, 0, opset=18, x=x)


def test_reduce_max_three_way_tie_like_torch():
    """Three-way ties: a third each (torch.amax). Central differences would give 1/2."""
    x = np.array([[[2.0, 2.0, 2.0, 1.0]], [[0.5, 1.0, 0.5, 0.2]]])
    ours = check_op(
        "ReduceMax",
        {"x": x},
        attrs={"keepdims": 0},
        consts={"axes": np.array([2])},
        order=["x", "axes"],
        opset=18,
        torch_fn=lambda x, **_: torch.amax(x, 2),
        fd_atol=1e9,
    )
    w0 = ours["x"][0, 0, 0]
    np.testing.assert_allclose(ours["x"][0, 0, :3], [w0, w0, w0])


@pytest.mark.parametrize("zeros", [1, 2])
def test_reduce_prod_with_zeros(zeros):
    x = away(SHAPE)
    x[0, 1, 1] = 0.0
    if zeros == 2:
        x[0, 1, 0] = 0.0
        x[1, 2, 1] = 0.0
    for axes, keepdims in [([2], 0), ([1, 2], 1)]:
        _check("ReduceProd", axes, keepdims, 0, opset=18, x=x)


def test_reduce_l2_zero_slice():
    """A slice of zeros: torch's norm backward gives 0 (not nan)."""
    x = away(SHAPE)
    x[1, :, 1] = 0.0
    check_op(
        "ReduceL2",
        {"x": x},
        attrs={"keepdims": 0},
        consts={"axes": np.array([1])},
        order=["x", "axes"],
        opset=18,
        torch_fn=lambda x, **_: torch.linalg.vector_norm(x, 2, 1),
        fd_atol=1e9,  # the norm has a kink at 0: central differences give nothing useful
    )


# -- CumSum ------------------------------------------------------------------------------------


@pytest.mark.parametrize("exclusive", [0, 1])
@pytest.mark.parametrize("reverse", [0, 1])
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_cumsum(axis, exclusive, reverse):
    def fn(x, axis):
        a = int(axis)
        if reverse:
            x = torch.flip(x, [a])
        y = torch.cumsum(x, a)
        if exclusive:
            y = torch.cat([torch.zeros_like(y.narrow(a, 0, 1)), y.narrow(a, 0, y.shape[a] - 1)], a)
        return torch.flip(y, [a]) if reverse else y

    check_op(
        "CumSum",
        {"x": away((3, 4))},
        consts={"axis": np.array(axis, dtype=np.int64)},
        attrs={"exclusive": exclusive, "reverse": reverse},
        torch_fn=fn,
        opset=14,
    )


def test_cumsum_run_time_int32_axis():
    check_op(
        "CumSum",
        {"x": away((3, 4)), "axis": np.array(1, dtype=np.int32)},
        wrt=["x"],
        torch_fn=lambda x, axis: torch.cumsum(x, 1),
        opset=13,
    )


# -- other element types ----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float64, np.float16], ids=["double", "half"])
@pytest.mark.parametrize("op", list(OPS))
def test_other_float_types(op, dtype):
    """Emitted constants and casts follow the element type (run-time count of ReduceMean too)."""
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    from adamax_onnx.passes.autodiff import differentiate

    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    x = OPS[op][2](SHAPE)
    w = RNG.standard_normal(SHAPE[1:])
    nodes = [
        helper.make_node(op, ["x", "axes"], ["y"], keepdims=0),
        helper.make_node("Mul", ["y", "w"], ["t"]),
        helper.make_node("ReduceSum", ["t"], ["loss"], keepdims=0),
    ]
    inits = [
        numpy_helper.from_array(np.array([0], dtype=np.int64), "axes"),
        numpy_helper.from_array(w.astype(dtype), "w"),
    ]
    graph = helper.make_graph(
        nodes,
        "typed",
        [helper.make_tensor_value_info("x", elem, ["N", *SHAPE[1:]])],
        [helper.make_tensor_value_info("loss", elem, [])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    grad_model = differentiate(model, "loss", ["x"])
    onnx.checker.check_model(grad_model, full_check=True)
    sess = ort.InferenceSession(grad_model.SerializeToString(), providers=["CPUExecutionProvider"])
    (ours,) = sess.run(["x_grad"], {"x": x.astype(dtype)})
    t = torch.tensor(x.astype(dtype).astype(np.float64), requires_grad=True)
    y = _torch_fn(op, [0], 0, 0)(t)
    (y * torch.tensor(w.astype(dtype).astype(np.float64))).sum().backward()
    tol = 1e-9 if dtype == np.float64 else 2e-2
    assert ours.dtype == dtype
    np.testing.assert_allclose(ours.astype(np.float64), t.grad.numpy(), rtol=tol, atol=tol)
