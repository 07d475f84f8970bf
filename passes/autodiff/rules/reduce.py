"""Gradients of reductions: ReduceSum/Mean/Max/Min/SumSquare/L2/LogSumExp."""

from __future__ import annotations

from ..errors import Unsupported
from ..registry import rule


def _axes(ctx, x):
    """(axes normalized to >= 0 or None for all, keepdims) of the forward reduction."""
    keepdims = bool(ctx.attr("keepdims", 1))
    axes = ctx.ints_input_or_attr(1, "axes")
    if not axes:
        if axes is not None or ctx.x(1) is not None:
            pass
        if ctx.attr("noop_with_empty_axes", 0):
            return "noop", keepdims
        return None, keepdims
    r = ctx.rank(x)
    return sorted(a % r for a in axes), keepdims


def _expand_back(ctx, dy, x):
    """dy (reduced) broadcast back to x's shape."""
    axes, keepdims = _axes(ctx, x)
    if axes == "noop":
        return dy
    if not keepdims:
        if axes is None:
            axes = list(range(ctx.rank(x)))
        dy = ctx.unsqueeze(dy, axes)
    return ctx.op("Expand", dy, ctx.shape_or_const(x))


@rule("ReduceSum", since=13)
def reduce_sum(ctx, dys):
    (dy,) = dys
    x = ctx.x(0)
    if ctx.x(1) is not None and ctx.const_input(1) is None:
        raise Unsupported("the axes are computed at run time")
    return [_expand_back(ctx, dy, x)]
