"""Gradients of reductions: ReduceSum/Mean/Max/Min/Prod/SumSquare/L1/L2/LogSum/LogSumExp.

Every ONNX form is handled: ``axes`` as an attribute (before opset 18, except ReduceSum from
13) or as an input (a constant, or a tensor computed at run time: the gradient then reuses it),
``keepdims`` 0 or 1, absent or empty axes meaning every axis, or none at all when
``noop_with_empty_axes`` is set (the op is then elementwise: ReduceSumSquare squares, ...).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from ..registry import rule


@dataclass
class _Axes:
    """The forward reduction's axes.

    ``axes``: sorted non-negative ints (negative ones kept when the rank is unknown), ``[]``
    when nothing is reduced (``noop_with_empty_axes``), None for every axis, or the forward's
    axes tensor when it is only known at run time.
    """

    axes: list[int] | ir.Value | None
    keepdims: bool
    noop: int


def _axes(ctx) -> _Axes:
    """The axes of the forward node (attribute or input form, see the module docstring)."""
    keepdims = bool(ctx.attr("keepdims", 1))
    noop = int(ctx.attr("noop_with_empty_axes", 0))
    if "axes" in ctx.node.attributes:  # attribute form (no noop_with_empty_axes there)
        axes = [int(a) for a in ctx.attr("axes")]
        noop = 0
    elif ctx.x(1) is None:
        axes = []
    else:
        value = ctx.const_input(1)
        if value is None:
            return _Axes(ctx.x(1), keepdims, noop)
        axes = [int(a) for a in np.asarray(value).reshape(-1)]
    if not axes:
        return _Axes([] if noop else None, keepdims, noop)
    dims = ctx.dims(ctx.x(0))
    if dims is not None:
        axes = sorted({a % len(dims) for a in axes})
    return _Axes(axes, keepdims, noop)


def _keep(ctx, spec: _Axes, v):
    """A reduced tensor ``v`` with the reduced axes put back as 1s (broadcasts against x)."""
    if spec.keepdims or spec.axes is None or (isinstance(spec.axes, list) and not spec.axes):
        return v  # a full reduction without keepdims is a scalar: it broadcasts as it is
    if isinstance(spec.axes, list):
        return ctx.unsqueeze(v, spec.axes)
    # Run-time axes: Unsqueeze accepts the same list (an empty one when all were reduced).
    return ctx.op("Unsqueeze", v, spec.axes)


def _reduce(ctx, spec: _Axes, op: str, v):
    """``op`` over the forward's axes with keepdims=1 (v has the forward input's shape)."""
    if isinstance(spec.axes, ir.Value):
        return ctx.op(op, v, spec.axes, keepdims=1, noop_with_empty_axes=spec.noop)
    if isinstance(spec.axes, list) and not spec.axes:
        return v
    return ctx.reduce(op, v, spec.axes, keepdims=True)


def _expand(ctx, v, x):
    return ctx.op("Expand", v, ctx.shape_or_const(x))


@rule("ReduceSum", since=1)
def reduce_sum(ctx, dys):
    spec, x = _axes(ctx), ctx.x(0)
    return [_expand(ctx, _keep(ctx, spec, dys[0]), x)]


def _count(ctx, spec: _Axes, x):
    """How many elements each output of the reduction averages, as a float of x's type."""
    dims = ctx.dims(x)
    if isinstance(spec.axes, list) and not spec.axes:
        return 1.0
    if isinstance(spec.axes, list) or spec.axes is None:
        reduced = range(len(dims)) if spec.axes is None and dims is not None else spec.axes
        if reduced is not None and dims is not None:
            sizes = [dims[a] for a in reduced]
            if all(isinstance(d, int) for d in sizes):
                return float(np.prod(sizes)) if sizes else 1.0
        if spec.axes is None:
            return ctx.op("Cast", ctx.op("Size", x), to=ctx.dtype(x))
        picked = ctx.op("Gather", ctx.shape(x), ctx.i64(list(spec.axes)))
        n = ctx.reduce("ReduceProd", picked, None, keepdims=False)
        return ctx.op("Cast", n, to=ctx.dtype(x))
    # Run-time axes: size(x) / size(y).
    nx = ctx.op("Cast", ctx.op("Size", x), to=ctx.dtype(x))
    ny = ctx.op("Cast", ctx.op("Size", ctx.y(0)), to=ctx.dtype(x))
    return ctx.op("Div", nx, ny)


@rule("ReduceMean", since=1)
def reduce_mean(ctx, dys):
    spec, x = _axes(ctx), ctx.x(0)
    n = _count(ctx, spec, x)
    dy = dys[0]
    if isinstance(n, float):
        g = dy if n == 1.0 else ctx.op("Mul", dy, ctx.scalar(1.0 / n, x))
    else:
        g = ctx.op("Div", dy, n)
    return [_expand(ctx, _keep(ctx, spec, g), x)]


def _max_min(ctx, dys):
    """dy to the elements equal to the result, split evenly on ties (torch's amax/amin)."""
    spec, x, y = _axes(ctx), ctx.x(0), ctx.y(0)
    mask = ctx.op("Equal", x, _keep(ctx, spec, y))
    count = _reduce(ctx, spec, "ReduceSum", ctx.op("Cast", mask, to=ctx.dtype(x)))
    share = ctx.op("Div", _keep(ctx, spec, dys[0]), count)
    return [ctx.op("Where", mask, share, ctx.scalar(0.0, x))]


@rule("ReduceMax", since=1)
def reduce_max(ctx, dys):
    return _max_min(ctx, dys)


@rule("ReduceMin", since=1)
def reduce_min(ctx, dys):
    return _max_min(ctx, dys)


@rule("ReduceSumSquare", since=1)
def reduce_sum_square(ctx, dys):
    """dx = 2 x dy."""
    spec, x = _axes(ctx), ctx.x(0)
    g = ctx.op("Mul", dys[0], ctx.scalar(2.0, x))
    return [ctx.op("Mul", x, _keep(ctx, spec, g))]


@rule("ReduceL1", since=1)
def reduce_l1(ctx, dys):
    """dx = sign(x) dy (0 at 0, like torch)."""
    spec, x = _axes(ctx), ctx.x(0)
    return [ctx.op("Mul", ctx.op("Sign", x), _keep(ctx, spec, dys[0]))]


@rule("ReduceL2", since=1)
def reduce_l2(ctx, dys):
    """dx = x dy / y, 0 where y == 0 (torch's norm backward)."""
    spec, x, y = _axes(ctx), ctx.x(0), ctx.y(0)
    zero = ctx.scalar(0.0, x)
    g = ctx.op("Where", ctx.op("Equal", y, zero), zero, ctx.op("Div", dys[0], y))
    return [ctx.op("Mul", x, _keep(ctx, spec, g))]


@rule("ReduceLogSum", since=1)
def reduce_log_sum(ctx, dys):
    """y = log(sum x): dx = dy / exp(y)."""
    spec, x, y = _axes(ctx), ctx.x(0), ctx.y(0)
    g = ctx.op("Div", dys[0], ctx.op("Exp", y))
    return [_expand(ctx, _keep(ctx, spec, g), x)]


@rule("ReduceLogSumExp", since=1)
def reduce_log_sum_exp(ctx, dys):
    """dx = dy exp(x - y) (softmax of x along the axes)."""
    spec, x, y = _axes(ctx), ctx.x(0), ctx.y(0)
    p = ctx.op("Exp", ctx.op("Sub", x, _keep(ctx, spec, y)))
    return [ctx.op("Mul", p, _keep(ctx, spec, dys[0]))]


@rule("ReduceProd", since=1)
def reduce_prod(ctx, dys):
    """dx_i = dy * prod_{j != i} x_j, exact with zeros (torch's prod backward).

    No zero in the slice: y / x_i. One zero: the product of the others at the zero, 0 elsewhere.
    Two or more: 0.
    """
    spec, x, y = _axes(ctx), ctx.x(0), ctx.y(0)
    zero, one = ctx.scalar(0.0, x), ctx.scalar(1.0, x)
    is_zero = ctx.op("Equal", x, zero)
    zeros = _reduce(ctx, spec, "ReduceSum", ctx.op("Cast", is_zero, to=ctx.dtype(x)))
    others = _reduce(ctx, spec, "ReduceProd", ctx.op("Where", is_zero, one, x))
    at_nonzero = ctx.op(
        "Where", ctx.op("Equal", zeros, zero), ctx.op("Div", _keep(ctx, spec, y), x), zero
    )
    at_zero = ctx.op("Where", ctx.op("Equal", zeros, one), others, zero)
    local = ctx.op("Where", is_zero, at_zero, at_nonzero)
    return [ctx.op("Mul", local, _keep(ctx, spec, dys[0]))]
