"""Gradient of Pad (constant, edge, reflect, wrap)."""

from __future__ import annotations

import numpy as np

from ..errors import Unsupported
from ..registry import rule

_INT64_MIN = int(np.iinfo(np.int64).min)
_INT64_MAX = int(np.iinfo(np.int64).max)


def _full_pads(ctx, rank):
    """Pads as (begins, ends) over every axis, from the pads (and opset-18 axes) inputs."""
    pads = ctx.const_input(1)
    if pads is None:
        raise Unsupported("the pads are computed at run time")
    pads = [int(p) for p in np.atleast_1d(pads)]
    axes = ctx.ints_input_or_attr(3, "axes") if ctx.opset >= 18 else None
    axes = list(range(rank)) if axes is None else [a % rank for a in axes]
    n = len(axes)
    begins, ends = [0] * rank, [0] * rank
    for a, b_, e in zip(axes, pads[:n], pads[n:], strict=True):
        begins[a], ends[a] = b_, e
    return begins, ends


def _slice(ctx, v, axis, start, end, step=1):
    args = [v, ctx.i64([start]), ctx.i64([end]), ctx.i64([axis])]
    if step != 1:
        args.append(ctx.i64([step]))
    return ctx.op("Slice", *args)


def _place(ctx, v, axis, rank, before, after):
    """Zero-pad ``v`` along ``axis`` (constant Pad)."""
    pads = [0] * (2 * rank)
    pads[axis], pads[rank + axis] = before, after
    return ctx.op("Pad", v, ctx.i64(pads))


@rule("Pad", since=13)
def pad(ctx, dys):
    """constant: dX = Pad(dY, -pads) (crops what was padded, zero-fills what was cropped).

    edge/reflect/wrap (static pads, static sizes of the padded axes, no negative pads): per
    axis, the centre of dY plus the padded margins folded back onto the input positions they
    copy (summed for edge, mirrored for reflect, shifted for wrap).
    """
    (dy,) = dys
    x = ctx.x(0)
    mode = ctx.attr("mode", "constant") or "constant"
    out = [None, None, None, None]
    if mode == "constant":
        pads_c = ctx.const_input(1)
        neg = (
            ctx.i64([-int(p) for p in np.atleast_1d(pads_c)])
            if pads_c is not None
            else (ctx.op("Neg", ctx.x(1)))
        )
        axes = ctx.x(3) if ctx.opset >= 18 else None
        dx = ctx.op("Pad", dy, neg, None, axes) if axes is not None else ctx.op("Pad", dy, neg)
        if ctx.needs(0):
            out[0] = dx
        c = ctx.x(2)
        if c is not None and ctx.needs(2):
            dc = ctx.op(
                "Sub", ctx.reduce_sum(dy, None, keepdims=False), ctx.reduce_sum(dx, None, False)
            )
            out[2] = ctx.reshape(dc, ctx.shape_or_const(c)) if ctx.rank(c) else dc
        return out
    if mode not in ("edge", "reflect", "wrap"):
        raise Unsupported(f"mode={mode!r} is not supported")
    if not ctx.needs(0):
        return out
    rank = ctx.rank(x)
    begins, ends = _full_pads(ctx, rank)
    dims = ctx.dims(x)
    g = dy
    for axis in range(rank):
        pb, pe = begins[axis], ends[axis]
        if pb == 0 and pe == 0:
            continue
        n = dims[axis]
        if not isinstance(n, int):
            raise Unsupported(f"mode={mode} needs static sizes of the padded axes")
        if pb < 0 or pe < 0:
            raise Unsupported(f"negative pads with mode={mode} are not supported")
        if mode == "reflect" and max(pb, pe) > n - 1 or mode == "wrap" and max(pb, pe) > n:
            raise Unsupported(f"pads larger than the input with mode={mode}")
        parts = [_slice(ctx, g, axis, pb, pb + n)]
        if mode == "edge":
            if pb:
                s = ctx.reduce_sum(_slice(ctx, g, axis, 0, pb), [axis], keepdims=True)
                parts.append(_place(ctx, s, axis, rank, 0, n - 1))
            if pe:
                s = ctx.reduce_sum(_slice(ctx, g, axis, pb + n, _INT64_MAX), [axis], True)
                parts.append(_place(ctx, s, axis, rank, n - 1, 0))
        elif mode == "reflect":
            if pb:
                s = _slice(ctx, g, axis, pb - 1, _INT64_MIN, -1)  # dY[pb-1 .. 0]
                parts.append(_place(ctx, s, axis, rank, 1, n - 1 - pb))
            if pe:
                s = _slice(ctx, g, axis, pb + n + pe - 1, pb + n - 1, -1)
                parts.append(_place(ctx, s, axis, rank, n - 1 - pe, 1))
        else:  # wrap
            if pb:
                parts.append(_place(ctx, _slice(ctx, g, axis, 0, pb), axis, rank, n - pb, 0))
            if pe:
                s = _slice(ctx, g, axis, pb + n, _INT64_MAX)
                parts.append(_place(ctx, s, axis, rank, 0, n - pe))
        g = parts[0] if len(parts) == 1 else ctx.op("Sum", *parts)
    out[0] = g
    return out
