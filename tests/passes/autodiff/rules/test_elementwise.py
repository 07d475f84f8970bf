"""Gradient rules of adamax_onnx/passes/autodiff/rules/elementwise.py (arithmetic, math functions,
selection, casts), against float64 central differences and torch autograd."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper, numpy_helper

from adamax_onnx.passes.autodiff import differentiate
from adamax_onnx.passes.autodiff.errors import GradientBuildError
from tests.gradcheck import (
    away,
    check_float_type,
    check_graph,
    check_op,
    float_type_cases,
    make_node,
    positive,
)

RNG = np.random.default_rng(1234)

# onnx.reference computes Erf in float32 whatever the input: central differences need a larger
# step there.
FD_ERF = {"Erf": {"fd_eps": 1e-2}}


# -- binary arithmetic with broadcasting in both directions -------------------------------------

BROADCASTS = {
    "same": ((2, 3), (2, 3)),
    "b_smaller": ((2, 4, 3), (4, 1)),
    "both": ((2, 1, 3), (4, 1)),
    "a_smaller": ((2, 1, 1), (2, 4, 3)),
    "a_lower_rank": ((3,), (2, 4, 3)),
    "scalar_b": ((2, 3), ()),
}


@pytest.mark.parametrize("shapes", list(BROADCASTS.values()), ids=list(BROADCASTS))
@pytest.mark.parametrize(
    "op,fn",
    [
        ("Add", lambda a, b: a + b),
        ("Sub", lambda a, b: a - b),
        ("Mul", lambda a, b: a * b),
        ("Div", lambda a, b: a / b),
        ("Pow", lambda a, b: a**b),
    ],
    ids=["Add", "Sub", "Mul", "Div", "Pow"],
)
def test_binary(op, fn, shapes):
    sa, sb = shapes
    a = positive(sa) if op == "Pow" else away(sa)
    b = away(sb, 0.5, 1.5) if op in ("Div", "Pow") else away(sb)
    check_op(op, {"a": a, "b": b}, torch_fn=lambda a, b: fn(a, b))


def test_binary_wrt_one_input():
    """Only the second input is trained (the first is data)."""
    a, b = away((2, 3)), away((3,))
    check_op("Mul", {"a": a, "b": b}, wrt=["b"], torch_fn=lambda a, b: a * b)
    check_op("Div", {"a": a, "b": b}, wrt=["b"], torch_fn=lambda a, b: a / b)


@pytest.mark.parametrize("c", [2.0, 3.0, 0.5, 1.0, -1.5, 0.0])
def test_pow_constant_exponent(c):
    check_op(
        "Pow",
        {"a": positive((2, 3))},
        consts={"c": np.array(c)},
        torch_fn=lambda a, c: a**c,
    )


def test_pow_integer_exponent():
    check_op(
        "Pow",
        {"a": away((2, 3))},
        consts={"c": np.array([3], dtype=np.int64)},
        torch_fn=lambda a, c: a ** c.double(),
    )


def test_pow_run_time_integer_exponent():
    check_op(
        "Pow",
        {"a": away((2, 3)), "b": np.array([1, 2, 3], dtype=np.int64)},
        wrt=["a"],
        torch_fn=lambda a, b: a ** b.double(),
    )


def test_pow_tensor_exponent_wrt_base_only():
    check_op(
        "Pow",
        {"a": positive((2, 3)), "b": away((3,))},
        wrt=["a"],
        torch_fn=lambda a, b: a**b,
    )


def test_pow_exponent_zero_base_like_torch():
    """d(a ** b)/db is 0 where a == 0 and b >= 0 (torch), not nan."""
    a = np.array([[0.0, 1.5, 0.0, 2.0]])
    b = np.array([[2.0, 1.0, 3.0, 0.5]])
    check_op("Pow", {"a": a, "b": b}, wrt=["b"], torch_fn=lambda a, b: a**b)


# -- unary ops ---------------------------------------------------------------------------------

UNARY = [
    ("Neg", {}, lambda x: -x, away),
    ("Abs", {}, torch.abs, away),
    ("Sqrt", {}, torch.sqrt, positive),
    ("Reciprocal", {}, torch.reciprocal, away),
    ("Exp", {}, torch.exp, away),
    ("Log", {}, torch.log, positive),
    ("Sin", {}, torch.sin, away),
    ("Cos", {}, torch.cos, away),
    ("Erf", {}, torch.erf, away),
    ("Identity", {}, lambda x: x, away),
    ("Tan", {}, torch.tan, away),
    ("Sinh", {}, torch.sinh, away),
    ("Cosh", {}, torch.cosh, away),
    ("Asin", {}, torch.asin, lambda s: away(s, 0.1, 0.9)),
    ("Acos", {}, torch.acos, lambda s: away(s, 0.1, 0.9)),
    ("Atan", {}, torch.atan, away),
    ("Asinh", {}, torch.asinh, away),
    ("Acosh", {}, torch.acosh, lambda s: positive(s, 1.2, 3.0)),
    ("Atanh", {}, torch.atanh, lambda s: away(s, 0.1, 0.9)),
]


@pytest.mark.parametrize("op,attrs,fn,gen", UNARY, ids=[f"{u[0]}-{len(u[1])}" for u in UNARY])
def test_unary(op, attrs, fn, gen):
    x = gen((3, 4))
    check_op(op, {"x": x}, attrs=attrs, torch_fn=lambda x: fn(x), opset=17, **FD_ERF.get(op, {}))


def test_abs_kink_follows_torch():
    """At 0 Abs gives torch's choice (0); central differences are not defined there."""
    x = np.array([[0.0, 1.0, -1.0, 3.0, -3.0, 2.5, 0.5, -0.5]])
    check_op("Abs", {"x": x}, torch_fn=torch.abs, fd_atol=1e9)


def test_pow_constant_tensor_exponent():
    check_op(
        "Pow",
        {"a": positive((2, 3))},
        consts={"c": np.array([2.0, 0.5, -1.0])},
        torch_fn=lambda a, c: a**c,
    )


# -- Where, Max, Min, Sum, Mean ----------------------------------------------------------------


def test_where_broadcast():
    a, b = away((2, 3)), away((4, 1, 1))
    cond = RNG.random((4, 1, 3)) > 0.5
    check_op(
        "Where",
        {"a": a, "b": b},
        consts={"cond": cond},
        order=["cond", "a", "b"],
        torch_fn=lambda a, b, cond: torch.where(cond, a, b),
    )


def test_where_one_branch_constant():
    a = away((3, 4))
    cond = RNG.random((3, 4)) > 0.5
    check_op(
        "Where",
        {"a": a},
        consts={"cond": cond, "z": np.array(0.0)},
        order=["cond", "a", "z"],
        torch_fn=lambda a, cond, z: torch.where(cond, a, z),
    )


@pytest.mark.parametrize(
    "op,fn", [("Max", torch.maximum), ("Min", torch.minimum)], ids=["Max", "Min"]
)
def test_max_min_two_inputs(op, fn):
    a = away((2, 4, 3))
    b = away((4, 1))
    check_op(op, {"a": a, "b": b}, torch_fn=lambda a, b: fn(a, b))


@pytest.mark.parametrize(
    "op,fn", [("Max", torch.maximum), ("Min", torch.minimum)], ids=["Max", "Min"]
)
def test_max_min_ties_split_like_torch(op, fn):
    a = np.array([[0.5, 1.0, -2.0, 3.0], [1.5, -0.5, 0.25, 2.0]])
    b = np.array([[0.5, 2.0, -2.0, 1.0], [1.5, -1.5, 0.5, 2.0]])
    # Central differences give 1/2 at a tie too.
    check_op(op, {"a": a, "b": b}, torch_fn=lambda a, b: fn(a, b))
    check_op(op, {"a": a, "b": b[:1]}, torch_fn=lambda a, b: fn(a, b))


@pytest.mark.parametrize(
    "op,fn", [("Max", torch.maximum), ("Min", torch.minimum)], ids=["Max", "Min"]
)
def test_max_min_variadic(op, fn):
    a = np.array([[0.5, 1.0, -2.0, 3.0], [1.5, -0.5, 0.25, 2.0]])
    b = np.array([[0.5, 2.0, -1.0, 1.0], [0.7, -1.5, 0.5, 2.0]])
    c = np.array([[0.1, 2.0, -2.0, 2.5]])
    check_op(op, {"a": a, "b": b, "c": c}, torch_fn=lambda a, b, c: fn(fn(a, b), c))
    check_op(op, {"a": a}, torch_fn=lambda a: a)


def test_sum_mean_variadic():
    a, b, c = away((2, 3)), away((3,)), away((1, 3))
    check_op("Sum", {"a": a, "b": b, "c": c}, torch_fn=lambda a, b, c: a + b + c)
    check_op("Mean", {"a": a, "b": b, "c": c}, torch_fn=lambda a, b, c: (a + b + c) / 3)
    check_op("Mean", {"a": a}, torch_fn=lambda a: a)


# -- Cast, Dropout -----------------------------------------------------------------------------


def test_cast_round_trip():
    """float32 -> double -> float32: the gradient is cast back at each step."""
    nodes = [  # CastLike back: the graph is also built in float64 for central differences
        make_node("Cast", ["x"], ["xd"], to=onnx.TensorProto.DOUBLE),
        make_node("Mul", ["xd", "xd"], ["sq"]),
        make_node("CastLike", ["sq", "x"], ["y"]),
    ]
    check_graph(nodes, {"x": away((2, 3))}, ["y"], torch_fn=lambda x: x * x)


def test_cast_to_int_cuts_gradient():
    """A Cast to int64 carries no gradient; the other path still does."""
    nodes = [
        make_node("Cast", ["x"], ["xi"], to=onnx.TensorProto.INT64),
        make_node("CastLike", ["xi", "x"], ["xf"]),
        make_node("Mul", ["x", "xf"], ["y"]),
    ]
    x = away((2, 3), 1.2, 3.7)
    check_graph(nodes, {"x": x}, ["y"], torch_fn=lambda x: x * x.trunc().detach())


@pytest.mark.parametrize("form", ["absent", "false", "ratio_only"])
def test_dropout_inference_is_identity(form):
    consts, order = {}, ["x"]
    if form == "false":
        consts = {"ratio": np.array(0.3), "training": np.array(False)}
        order = ["x", "ratio", "training"]
    elif form == "ratio_only":
        consts, order = {"ratio": np.array(0.3)}, ["x", "ratio"]
    check_op(
        "Dropout",
        {"x": away((3, 4))},
        consts=consts,
        order=order,
        num_outputs=2,
        loss_outputs=[0],
        torch_fn=lambda x, **_: x,
    )


def _dropout_training(ratio, ratio_input: bool, training_input: bool):
    x = away((4, 8))
    w = RNG.standard_normal((4, 8)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w")]
    inputs = [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 8])]
    feeds = {"x": x.astype(np.float32)}
    if ratio_input:
        inputs.append(helper.make_tensor_value_info("ratio", onnx.TensorProto.FLOAT, []))
        feeds["ratio"] = np.array(ratio, dtype=np.float32)
    else:
        inits.append(numpy_helper.from_array(np.array(ratio, dtype=np.float32), "ratio"))
    if training_input:
        inputs.append(helper.make_tensor_value_info("training", onnx.TensorProto.BOOL, []))
        feeds["training"] = np.array(True)
    else:
        inits.append(numpy_helper.from_array(np.array(True), "training"))
    nodes = [
        make_node("Dropout", ["x", "ratio", "training"], ["y", "mask"], seed=3),
        make_node("Mul", ["y", "w"], ["t"]),
        make_node("ReduceSum", ["t"], ["loss"], keepdims=0),
    ]
    outputs = [
        helper.make_tensor_value_info("loss", onnx.TensorProto.FLOAT, []),
        helper.make_tensor_value_info("mask", onnx.TensorProto.BOOL, None),
    ]
    graph = helper.make_graph(nodes, "dropout", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    grad_model = differentiate(model, "loss", ["x"])
    onnx.checker.check_model(grad_model, full_check=True)
    sess = ort.InferenceSession(grad_model.SerializeToString(), providers=["CPUExecutionProvider"])
    mask, gx = sess.run(["mask", "x_grad"], feeds)
    expected = w * mask / (1.0 - ratio)
    assert 0 < mask.sum() < mask.size
    np.testing.assert_allclose(gx, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "ratio_input,training_input", [(False, False), (True, False), (True, True)]
)
def test_dropout_training_uses_forward_mask(ratio_input, training_input):
    _dropout_training(0.3, ratio_input, training_input)


def test_dropout_training_without_mask_is_unsupported():
    nodes = [make_node("Dropout", ["x", "ratio", "training"], ["y"])]
    with pytest.raises(GradientBuildError, match="Dropout.*mask"):
        check_graph(
            nodes,
            {"x": away((2, 3))},
            ["y"],
            consts={"ratio": np.array(0.5), "training": np.array(True)},
        )


# -- other element types ----------------------------------------------------------------------

TYPED = [
    ("Div", 2, lambda a, b: a / b),
    ("Pow", 2, lambda a, b: a**b),
    ("Max", 2, torch.maximum),
    ("Sqrt", 1, torch.sqrt),
    ("Erf", 1, torch.erf),
]


@pytest.mark.parametrize("op,arity,fn,dtype", float_type_cases(TYPED, no_double={"Erf"}))
def test_other_float_types(op, arity, fn, dtype):
    """The emitted constants follow the element type: the gradient graph runs in ORT."""
    check_float_type(op, [positive((2, 3), 0.3, 1.5) for _ in range(arity)], fn, dtype)
