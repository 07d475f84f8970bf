"""Gradients of the activation functions (Relu and its variants, Sigmoid, Tanh, Gelu, Mish, the
hard and soft forms, Clip), written with the forward output where the derivative allows.

Conventions follow PyTorch autograd where the derivative is not defined (Clip passes the
gradient on its bounds, Relu gives 0 at 0, HardSwish takes the one-sided slope at +-3, ...).
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import Unsupported
from ..registry import rule
from .elementwise import mul_const, where0


@rule("Tanh")
def tanh(ctx, dys):
    """dx = dy * (1 - y ** 2)."""
    y = ctx.y(0)
    return [ctx.op("Mul", dys[0], ctx.op("Sub", ctx.scalar(1.0, y), ctx.op("Mul", y, y)))]


@rule("Sigmoid")
def sigmoid(ctx, dys):
    """dx = dy * y * (1 - y)."""
    y = ctx.y(0)
    return [ctx.op("Mul", dys[0], ctx.op("Mul", y, ctx.op("Sub", ctx.scalar(1.0, y), y)))]


@rule("Relu")
def relu(ctx, dys):
    (dy,) = dys
    y = ctx.y(0)
    return [where0(ctx, ctx.op("Greater", y, ctx.scalar(0.0, y)), dy, y)]


@rule("LeakyRelu")
def leaky_relu(ctx, dys):
    (dy,) = dys
    x = ctx.x(0)
    alpha = float(ctx.attr("alpha", 0.01))
    pos = ctx.op("Greater", x, ctx.scalar(0.0, x))
    return [ctx.op("Where", pos, dy, mul_const(ctx, dy, alpha, ctx.x(0)))]


@rule("PRelu")
def prelu(ctx, dys):
    """y = x if x > 0 else slope * x (slope broadcast to x)."""
    (dy,) = dys
    x, slope = ctx.x(0), ctx.x(1)
    pos = ctx.op("Greater", x, ctx.scalar(0.0, x))
    out = [None, None]
    if ctx.needs(0):
        out[0] = ctx.op("Where", pos, dy, ctx.op("Mul", dy, slope))
    if ctx.needs(1):
        g = ctx.op("Where", pos, ctx.scalar(0.0, x), ctx.op("Mul", dy, x))
        out[1] = ctx.sum_to(g, slope, g_like=x)
    return out


def _piecewise(ctx, dy, x, pos_slope, neg_slope):
    """dy * (pos_slope where x > 0 else neg_slope)."""
    pos = ctx.op("Greater", x, ctx.scalar(0.0, x))
    return ctx.op("Mul", dy, ctx.op("Where", pos, ctx.scalar(pos_slope, x), neg_slope))


@rule("Elu")
def elu(ctx, dys):
    """x <= 0: y = alpha (exp(x) - 1), dy/dx = y + alpha."""
    x, y = ctx.x(0), ctx.y(0)
    alpha = float(ctx.attr("alpha", 1.0))
    return [_piecewise(ctx, dys[0], x, 1.0, ctx.op("Add", y, ctx.scalar(alpha, y)))]


@rule("Selu")
def selu(ctx, dys):
    """x <= 0: y = gamma alpha (exp(x) - 1), dy/dx = y + gamma alpha; x > 0: gamma."""
    x, y = ctx.x(0), ctx.y(0)
    alpha = float(ctx.attr("alpha", 1.67326319217681884765625))
    gamma = float(ctx.attr("gamma", 1.05070102214813232421875))
    neg = ctx.op("Add", y, ctx.scalar(gamma * alpha, y))
    return [_piecewise(ctx, dys[0], x, gamma, neg)]


@rule("Celu")
def celu(ctx, dys):
    """x <= 0: y = alpha (exp(x / alpha) - 1), dy/dx = y / alpha + 1."""
    x, y = ctx.x(0), ctx.y(0)
    alpha = float(ctx.attr("alpha", 1.0))
    neg = ctx.op("Add", mul_const(ctx, y, 1.0 / alpha, y), ctx.scalar(1.0, y))
    return [_piecewise(ctx, dys[0], x, 1.0, neg)]


@rule("Gelu", since=20)
def gelu(ctx, dys):
    """y = x Phi(x) (approximate="none") or its tanh approximation (torch's formulas)."""
    (dy,) = dys
    x = ctx.x(0)
    approximate = ctx.attr("approximate", "none")
    x2 = ctx.op("Mul", x, x)
    if approximate == "none":
        # Phi(x) + x phi(x) = 0.5 (1 + erf(x / sqrt 2)) + x exp(-x^2 / 2) / sqrt(2 pi)
        cdf = ctx.op("Erf", mul_const(ctx, x, 1.0 / math.sqrt(2.0), x))
        cdf = ctx.op("Add", mul_const(ctx, cdf, 0.5, x), ctx.scalar(0.5, x))
        pdf = ctx.op("Exp", mul_const(ctx, x2, -0.5, x))
        pdf = ctx.op("Mul", x, mul_const(ctx, pdf, 1.0 / math.sqrt(2.0 * math.pi), x))
        return [ctx.op("Mul", dy, ctx.op("Add", cdf, pdf))]
    if approximate == "tanh":
        # u = k (x + c x^3), t = tanh(u); dy/dx = 0.5 (1 + t) + 0.5 x (1 - t^2) k (1 + 3 c x^2)
        k, c = math.sqrt(2.0 / math.pi), 0.044715
        one = ctx.scalar(1.0, x)
        inner = ctx.op("Add", mul_const(ctx, x2, c, x), one)
        t = ctx.op("Tanh", mul_const(ctx, ctx.op("Mul", x, inner), k, x))
        left = ctx.op("Add", mul_const(ctx, t, 0.5, x), ctx.scalar(0.5, x))
        dinner = ctx.op("Add", mul_const(ctx, x2, 3.0 * c, x), one)
        sech2 = ctx.op("Sub", one, ctx.op("Mul", t, t))
        right = ctx.op("Mul", mul_const(ctx, x, 0.5 * k, x), ctx.op("Mul", sech2, dinner))
        return [ctx.op("Mul", dy, ctx.op("Add", left, right))]
    raise Unsupported(f"approximate={approximate!r}")


@rule("Mish", since=18)
def mish(ctx, dys):
    """y = x tanh(softplus(x)): dy/dx = t + x sigmoid(x) (1 - t^2), t = tanh(softplus(x))."""
    x = ctx.x(0)
    t = ctx.op("Tanh", ctx.op("Softplus", x))
    sech2 = ctx.op("Sub", ctx.scalar(1.0, x), ctx.op("Mul", t, t))
    slope = ctx.op("Add", t, ctx.op("Mul", ctx.op("Mul", x, ctx.op("Sigmoid", x)), sech2))
    return [ctx.op("Mul", dys[0], slope)]


@rule("ThresholdedRelu")
def thresholded_relu(ctx, dys):
    """y = x where x > alpha, else 0."""
    x = ctx.x(0)
    alpha = float(ctx.attr("alpha", 1.0))
    return [where0(ctx, ctx.op("Greater", x, ctx.scalar(alpha, x)), dys[0], x)]


@rule("Shrink")
def shrink(ctx, dys):
    """y = x -+ bias where |x| > lambd, else 0 (torch's hardshrink/softshrink: 0 at +-lambd)."""
    x = ctx.x(0)
    lambd = float(ctx.attr("lambd", 0.5))
    outside = ctx.op("Greater", ctx.op("Abs", x), ctx.scalar(lambd, x))
    return [where0(ctx, outside, dys[0], x)]


@rule("Softplus")
def softplus(ctx, dys):
    return [ctx.op("Mul", dys[0], ctx.op("Sigmoid", ctx.x(0)))]


@rule("Softsign")
def softsign(ctx, dys):
    """y = x / (1 + |x|): dy/dx = 1 / (1 + |x|)^2 = (1 - |y|)^2."""
    y = ctx.y(0)
    s = ctx.op("Sub", ctx.scalar(1.0, y), ctx.op("Abs", y))
    return [ctx.op("Mul", dys[0], ctx.op("Mul", s, s))]


@rule("HardSigmoid")
def hard_sigmoid(ctx, dys):
    """y = clip(alpha x + beta, 0, 1): alpha where 0 < y < 1 (strictly, like torch)."""
    (dy,) = dys
    y = ctx.y(0)
    alpha = float(ctx.attr("alpha", 0.2))
    inside = ctx.op(
        "And",
        ctx.op("Greater", y, ctx.scalar(0.0, y)),
        ctx.op("Less", y, ctx.scalar(1.0, y)),
    )
    return [where0(ctx, inside, mul_const(ctx, dy, alpha, ctx.x(0)), y)]


@rule("HardSwish")
def hard_swish(ctx, dys):
    """y = x clip(x / 6 + 1/2, 0, 1); torch: 0 for x <= -3, x / 3 + 1/2 for x < 3, else 1."""
    (dy,) = dys
    x = ctx.x(0)
    mid = ctx.op("Add", mul_const(ctx, x, 1.0 / 3.0, x), ctx.scalar(0.5, x))
    slope = ctx.op(
        "Where",
        ctx.op("LessOrEqual", x, ctx.scalar(-3.0, x)),
        ctx.scalar(0.0, x),
        ctx.op("Where", ctx.op("Less", x, ctx.scalar(3.0, x)), mid, ctx.scalar(1.0, x)),
    )
    return [ctx.op("Mul", dy, slope)]


@rule("Clip", since=11)
def clip(ctx, dys):
    """The gradient passes where min <= x <= max (torch.clamp); the bounds get none."""
    (dy,) = dys
    x, y = ctx.x(0), ctx.y(0)
    lo, hi = ctx.x(1), ctx.x(2)
    if lo is None and hi is None:
        return [dy]
    lo_c, hi_c = ctx.const_input(1), ctx.const_input(2)
    if (
        lo is None
        or hi is None
        or (lo_c is not None and hi_c is not None and bool(np.all(lo_c <= hi_c)))
    ):
        # min <= max: x is kept exactly where min <= x <= max, i.e. where y == x.
        inside = ctx.op("Equal", x, y)
    else:
        # min > max would make Clip output max everywhere: test the bounds themselves.
        inside = ctx.op("And", ctx.op("GreaterOrEqual", x, lo), ctx.op("LessOrEqual", x, hi))
    return [where0(ctx, inside, dy, x)]
