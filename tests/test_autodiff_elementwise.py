"""Gradient rules of elementwise ops, against float64 central differences and torch autograd."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import helper, numpy_helper

from adamax_onnx.passes.autodiff import differentiate
from adamax_onnx.passes.autodiff.errors import GradientBuildError
from tests.gradcheck import check_graph, check_op, make_node

RNG = np.random.default_rng(1234)


def away(shape, lo=0.2, hi=1.5, rng=RNG):
    """Random values with |x| in [lo, hi] (away from the kinks at 0)."""
    mag = rng.uniform(lo, hi, size=shape)
    return np.asarray(mag * rng.choice([-1.0, 1.0], size=shape))


def pos(shape, lo=0.3, hi=2.0):
    return np.asarray(RNG.uniform(lo, hi, size=shape))


# No central differences where the function has a kink at the point (they give the mean of the
# one-sided slopes there); torch's convention is checked instead.
NO_FD = {"fd_atol": 1e9}
# onnx.reference computes Erf (and Gelu, a function of Erf) in float32 whatever the input:
# central differences need a larger step there.
FD_ERF = {"Erf": {"fd_eps": 1e-2}, "Gelu": {"fd_eps": 1e-2}}


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
    a = pos(sa) if op == "Pow" else away(sa)
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
        {"a": pos((2, 3))},
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
        {"a": pos((2, 3)), "b": away((3,))},
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
    ("Sqrt", {}, torch.sqrt, pos),
    ("Reciprocal", {}, torch.reciprocal, away),
    ("Exp", {}, torch.exp, away),
    ("Log", {}, torch.log, pos),
    ("Sin", {}, torch.sin, away),
    ("Cos", {}, torch.cos, away),
    ("Erf", {}, torch.erf, away),
    ("Tanh", {}, torch.tanh, away),
    ("Sigmoid", {}, torch.sigmoid, away),
    ("Relu", {}, torch.relu, away),
    ("LeakyRelu", {}, lambda x: F.leaky_relu(x, 0.01), away),
    ("LeakyRelu", {"alpha": 0.3}, lambda x: F.leaky_relu(x, 0.3), away),
    ("Elu", {}, F.elu, away),
    ("Elu", {"alpha": 0.7}, lambda x: F.elu(x, 0.7), away),
    ("Selu", {}, F.selu, away),
    (
        "Selu",
        {"alpha": 1.2, "gamma": 0.9},
        lambda x: torch.where(x > 0, 0.9 * x, 0.9 * 1.2 * (torch.exp(x) - 1)),
        away,
    ),
    ("Celu", {}, F.celu, away),
    ("Celu", {"alpha": 0.5}, lambda x: F.celu(x, 0.5), away),
    ("Softplus", {}, F.softplus, away),
    ("Softsign", {}, F.softsign, away),
    ("HardSigmoid", {}, lambda x: torch.clamp(0.2 * x + 0.5, 0, 1), lambda s: away(s, 0.2, 4.0)),
    (
        "HardSigmoid",
        {"alpha": 1.0 / 6.0, "beta": 0.5},
        F.hardsigmoid,
        lambda s: away(s, 0.2, 5.0),
    ),
    ("HardSwish", {}, F.hardswish, lambda s: away(s, 0.2, 5.0)),
    ("Identity", {}, lambda x: x, away),
    ("Tan", {}, torch.tan, away),
    ("Sinh", {}, torch.sinh, away),
    ("Cosh", {}, torch.cosh, away),
    ("Asin", {}, torch.asin, lambda s: away(s, 0.1, 0.9)),
    ("Acos", {}, torch.acos, lambda s: away(s, 0.1, 0.9)),
    ("Atan", {}, torch.atan, away),
    ("Asinh", {}, torch.asinh, away),
    ("Acosh", {}, torch.acosh, lambda s: pos(s, 1.2, 3.0)),
    ("Atanh", {}, torch.atanh, lambda s: away(s, 0.1, 0.9)),
    ("ThresholdedRelu", {}, lambda x: torch.where(x > 1.0, x, 0.0), lambda s: away(s, 0.2, 2.5)),
    (
        "ThresholdedRelu",
        {"alpha": 0.5},
        lambda x: torch.where(x > 0.5, x, 0.0),
        away,
    ),
    ("Shrink", {}, lambda x: F.hardshrink(x, 0.5), away),
    ("Shrink", {"lambd": 0.7, "bias": 0.7}, lambda x: F.softshrink(x, 0.7), away),
]


@pytest.mark.parametrize("op,attrs,fn,gen", UNARY, ids=[f"{u[0]}-{len(u[1])}" for u in UNARY])
def test_unary(op, attrs, fn, gen):
    x = gen((3, 4))
    check_op(op, {"x": x}, attrs=attrs, torch_fn=lambda x: fn(x), opset=17, **FD_ERF.get(op, {}))


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu(approximate):
    x = away((3, 4), 0.1, 4.0)
    check_op(
        "Gelu",
        {"x": x},
        attrs={"approximate": approximate},
        torch_fn=lambda x: F.gelu(x, approximate=approximate),
        opset=20,
        **FD_ERF["Gelu"],
    )


def test_mish():
    check_op("Mish", {"x": away((3, 4), 0.1, 4.0)}, torch_fn=lambda x: F.mish(x), opset=18)


def test_pow_constant_tensor_exponent():
    check_op(
        "Pow",
        {"a": pos((2, 3))},
        consts={"c": np.array([2.0, 0.5, -1.0])},
        torch_fn=lambda a, c: a**c,
    )


def test_gelu_default_attribute():
    check_op("Gelu", {"x": away((2, 5))}, torch_fn=lambda x: F.gelu(x), opset=20, **FD_ERF["Gelu"])


def test_kinks_follow_torch():
    """At 0: Relu, Abs, LeakyRelu give torch's one-sided choice; HardSwish at +-3."""
    x = np.array([[0.0, 1.0, -1.0, 3.0, -3.0, 2.5, 0.5, -0.5]])
    for op, fn in [
        ("Relu", torch.relu),
        ("Abs", torch.abs),
        ("LeakyRelu", lambda x: F.leaky_relu(x, 0.01)),
        ("HardSwish", F.hardswish),
        ("Elu", F.elu),
        ("ThresholdedRelu", lambda x: torch.where(x > 1.0, x, 0.0)),
        ("Shrink", lambda x: F.hardshrink(x, 0.5)),
    ]:
        check_op(op, {"x": x}, torch_fn=lambda x, fn=fn: fn(x), **NO_FD)


def test_prelu():
    x = away((2, 3, 2, 2))
    slope = RNG.uniform(0.05, 0.5, size=(3, 1, 1))
    check_op(
        "PRelu",
        {"x": x, "slope": slope},
        torch_fn=lambda x, slope: torch.where(x > 0, x, slope * x),
    )
    check_op(
        "PRelu",
        {"x": x, "slope": np.array([0.25])},
        torch_fn=lambda x, slope: torch.where(x > 0, x, slope * x),
    )


# -- Clip ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("opset", [13, 17])
@pytest.mark.parametrize("bounds", ["both", "min", "max", "none"])
def test_clip(bounds, opset):
    x = np.array([[-1.7, -0.9, -0.3, 0.2, 0.45, 0.9], [1.3, -0.55, 0.7, -0.2, 0.1, 2.0]])
    lo, hi = np.array(-0.5), np.array(0.6)
    consts, order = {}, ["x", "", ""]
    if bounds in ("both", "min"):
        consts["lo"], order[1] = lo, "lo"
    if bounds in ("both", "max"):
        consts["hi"], order[2] = hi, "hi"
    while order[-1] == "":
        order.pop()
    kw = {"min": -0.5 if "lo" in consts else None, "max": 0.6 if "hi" in consts else None}
    check_op(
        "Clip",
        {"x": x},
        consts=consts,
        order=order,
        opset=opset,
        torch_fn=lambda x, **_: torch.clamp(x, **kw) if consts else x,
    )


def test_clip_gradient_passes_at_bounds_like_torch():
    x = np.array([[-0.5, 0.5, -0.25, 0.75, 1.0]])
    check_op(
        "Clip",
        {"x": x},
        consts={"lo": np.array(-0.5), "hi": np.array(0.5)},
        torch_fn=lambda x, lo, hi: torch.clamp(x, lo, hi),
        **NO_FD,
    )


def test_clip_run_time_bounds():
    """Bounds fed at run time (not differentiated) and min > max in some rows."""
    x = np.array([[-0.5, 0.5, -0.25, 0.75, 1.0], [0.3, -0.1, 0.9, -2.0, 0.2]])
    lo, hi = np.array(-0.5), np.array(0.5)
    check_op(
        "Clip",
        {"x": x, "lo": lo, "hi": hi},
        wrt=["x"],
        torch_fn=lambda x, lo, hi: torch.clamp(x, lo, hi),
        **NO_FD,
    )
    lo, hi = np.array(0.5), np.array(-0.5)  # min > max: the output is max everywhere
    check_op(
        "Clip",
        {"x": x, "lo": lo, "hi": hi},
        wrt=["x"],
        torch_fn=lambda x, lo, hi: torch.clamp(x, lo, hi),
        **NO_FD,
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
    ("Tanh", 1, torch.tanh),
    ("Sigmoid", 1, torch.sigmoid),
    ("Relu", 1, torch.relu),
    ("LeakyRelu", 1, lambda x: F.leaky_relu(x, 0.01)),
    ("Elu", 1, F.elu),
    ("Softplus", 1, F.softplus),
    ("HardSigmoid", 1, lambda x: torch.clamp(0.2 * x + 0.5, 0, 1)),
    ("Clip", 1, lambda x: torch.clamp(x, -0.5, 0.6)),
]


# onnxruntime's CPU provider has no double kernel for these (the forward cannot run there).
NO_DOUBLE_KERNEL = {"Erf", "Elu", "Softplus", "HardSigmoid"}
TYPED_CASES = [
    pytest.param(op, arity, fn, dtype, id=f"{op}-{name}")
    for op, arity, fn in TYPED
    for dtype, name in ((np.float64, "double"), (np.float16, "half"))
    if not (dtype == np.float64 and op in NO_DOUBLE_KERNEL)
]


@pytest.mark.parametrize("op,arity,fn,dtype", TYPED_CASES)
def test_other_float_types(op, arity, fn, dtype):
    """The emitted constants follow the element type: the gradient graph runs in ORT."""
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    xs = [pos((2, 3), 0.3, 1.5) for _ in range(arity)]
    names = ["a", "b"][:arity]
    inputs = [helper.make_tensor_value_info(n, elem, ["N", 3]) for n in names]
    order = list(names)
    inits = []
    if op == "Clip":
        xs = [away((2, 3))]
        inits = [
            numpy_helper.from_array(np.array(-0.5, dtype), "lo"),
            numpy_helper.from_array(np.array(0.6, dtype), "hi"),
        ]
        order += ["lo", "hi"]
    w = RNG.standard_normal((2, 3))
    inits.append(numpy_helper.from_array(w.astype(dtype), "w"))
    nodes = [
        make_node(op, order, ["y"]),
        make_node("Mul", ["y", "w"], ["t"]),
        make_node("ReduceSum", ["t"], ["loss"], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "typed", inputs, [helper.make_tensor_value_info("loss", elem, [])], inits
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    grad_model = differentiate(model, "loss", names)
    onnx.checker.check_model(grad_model, full_check=True)
    sess = ort.InferenceSession(grad_model.SerializeToString(), providers=["CPUExecutionProvider"])
    xs = [x.astype(dtype) for x in xs]
    ours = sess.run([f"{n}_grad" for n in names], dict(zip(names, xs, strict=True)))
    ts = [torch.tensor(x.astype(np.float64), requires_grad=True) for x in xs]
    (fn(*ts) * torch.tensor(w.astype(dtype).astype(np.float64))).sum().backward()
    tol = 1e-9 if dtype == np.float64 else 2e-2
    for g, t in zip(ours, ts, strict=True):
        assert g.dtype == dtype
        np.testing.assert_allclose(g.astype(np.float64), t.grad.numpy(), rtol=tol, atol=tol)
