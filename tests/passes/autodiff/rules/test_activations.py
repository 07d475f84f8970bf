"""Gradient rules of adamax_onnx/passes/autodiff/rules/activations.py, against float64 central
differences and torch autograd."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.gradcheck import away, check_float_type, check_op, float_type_cases, positive

RNG = np.random.default_rng(1234)

# No central differences where the function has a kink at the point (they give the mean of the
# one-sided slopes there); torch's convention is checked instead.
NO_FD = {"fd_atol": 1e9}
# onnx.reference computes Gelu (a function of Erf) in float32 whatever the input: central
# differences need a larger step there.
FD_GELU = {"fd_eps": 1e-2}

ACTIVATIONS = [
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


@pytest.mark.parametrize(
    "op,attrs,fn,gen", ACTIVATIONS, ids=[f"{u[0]}-{len(u[1])}" for u in ACTIVATIONS]
)
def test_activation(op, attrs, fn, gen):
    x = gen((3, 4))
    check_op(op, {"x": x}, attrs=attrs, torch_fn=lambda x: fn(x), opset=17)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu(approximate):
    x = away((3, 4), 0.1, 4.0)
    check_op(
        "Gelu",
        {"x": x},
        attrs={"approximate": approximate},
        torch_fn=lambda x: F.gelu(x, approximate=approximate),
        opset=20,
        **FD_GELU,
    )


def test_mish():
    check_op("Mish", {"x": away((3, 4), 0.1, 4.0)}, torch_fn=lambda x: F.mish(x), opset=18)


def test_gelu_default_attribute():
    check_op("Gelu", {"x": away((2, 5))}, torch_fn=lambda x: F.gelu(x), opset=20, **FD_GELU)


def test_kinks_follow_torch():
    """At 0: Relu, LeakyRelu give torch's one-sided choice; HardSwish at +-3."""
    x = np.array([[0.0, 1.0, -1.0, 3.0, -3.0, 2.5, 0.5, -0.5]])
    for op, fn in [
        ("Relu", torch.relu),
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


# -- other element types ----------------------------------------------------------------------

TYPED = [
    ("Tanh", torch.tanh),
    ("Sigmoid", torch.sigmoid),
    ("Relu", torch.relu),
    ("LeakyRelu", lambda x: F.leaky_relu(x, 0.01)),
    ("Elu", F.elu),
    ("Softplus", F.softplus),
    ("HardSigmoid", lambda x: torch.clamp(0.2 * x + 0.5, 0, 1)),
]


@pytest.mark.parametrize(
    "op,fn,dtype", float_type_cases(TYPED, no_double={"Elu", "Softplus", "HardSigmoid"})
)
def test_other_float_types(op, fn, dtype):
    """The emitted constants follow the element type: the gradient graph runs in ORT."""
    check_float_type(op, [positive((2, 3), 0.3, 1.5)], fn, dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float16], ids=["double", "half"])
def test_clip_other_float_types(dtype):
    bounds = {"lo": -0.5, "hi": 0.6}
    check_float_type("Clip", [away((2, 3))], lambda x: torch.clamp(x, -0.5, 0.6), dtype, bounds)
