"""Gradients of shape and layout ops: Reshape, Flatten, Squeeze, Unsqueeze, Transpose, Expand,
Tile, Concat, Split, Slice, Trilu.

Shapes the gradient needs are constants when shape inference knew them, else read at run time
(``Shape`` of a forward tensor), so symbolic batch and sequence dims stay symbolic.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx_ir as ir

from ..errors import Unsupported
from ..registry import rule

_INT64_MAX = np.iinfo(np.int64).max


# -- helpers ----------------------------------------------------------------------------------
def _ints(ctx, parts: Sequence[int | ir.Value]) -> ir.Value:
    """A 1-D int64 tensor from ints and 1-D int64 Values (runs of ints become one constant)."""
    pieces: list[ir.Value] = []
    run: list[int] = []
    for p in parts:
        if isinstance(p, ir.Value):
            if run:
                pieces.append(ctx.i64(run))
                run = []
            pieces.append(p)
        else:
            run.append(int(p))
    if run:
        pieces.append(ctx.i64(run))
    if not pieces:
        return ctx.i64([])
    if len(pieces) == 1:
        return pieces[0]
    return ctx.op("Concat", *pieces, axis=0)


def _dim(ctx, v: ir.Value, axis: int) -> int | ir.Value:
    """``v``'s size along ``axis``: an int when static, else a 1-element run-time tensor."""
    dims = ctx.dims(v)
    d = dims[axis] if dims is not None else None
    return d if isinstance(d, int) else ctx.shape(v, axis, axis + 1)


def reshape_back(ctx, g: ir.Value, like: ir.Value) -> ir.Value:
    """``g`` reshaped to ``like``'s shape (exactly: a run-time 0 dim stays 0)."""
    static = ctx.static_shape(like)
    if static is not None:
        return ctx.reshape(g, list(static))
    if ctx.opset >= 14:
        return ctx.op("Reshape", g, ctx.shape(like), allowzero=1)
    return ctx.reshape(g, ctx.shape(like))


def _axis(ctx, axis: int, rank: int) -> int:
    if not -rank <= axis < rank:
        raise Unsupported(f"axis {axis} is out of range for rank {rank}")
    return axis % rank


# -- pure reshapes ----------------------------------------------------------------------------
@rule("Reshape", since=5)
@rule("Flatten", since=1)
@rule("Squeeze", since=1)
@rule("Unsqueeze", since=1)
def reshape(ctx, dys):
    """Element order is unchanged: the gradient is dy in x's shape."""
    (dy,) = dys
    return [reshape_back(ctx, dy, ctx.x(0))]


@rule("Transpose")
def transpose(ctx, dys):
    (dy,) = dys
    perm = ctx.attr("perm")
    if perm is None:
        perm = list(reversed(range(ctx.rank(ctx.x(0)))))
    inverse = [0] * len(perm)
    for i, p in enumerate(perm):
        inverse[int(p)] = i
    if inverse == list(range(len(perm))):
        return [dy]
    return [ctx.op("Transpose", dy, perm=inverse)]


# -- broadcasting and repetition --------------------------------------------------------------
@rule("Expand", since=8)
def expand(ctx, dys):
    """Sum dy over the axes Expand broadcast (the result may have more axes than x)."""
    (dy,) = dys
    x, y = ctx.x(0), ctx.y(0)
    x_dims = ctx.dims(x)
    if x_dims is None:
        raise Unsupported(f"the rank of tensor {x.name!r} is unknown")
    y_dims = ctx.dims(y) if y is not None else None
    if y_dims is None:
        shape_dims = ctx.dims(ctx.x(1))
        if shape_dims is None or not isinstance(shape_dims[0], int):
            raise Unsupported("the rank of the Expand result is unknown")
        y_dims = [None] * max(len(x_dims), shape_dims[0])
    lead = len(y_dims) - len(x_dims)
    axes, dynamic = list(range(lead)), False
    for k, d in enumerate(x_dims):
        g = y_dims[lead + k]
        if d == 1:
            if g != 1:
                axes.append(lead + k)
        elif isinstance(d, int) or (d is not None and d == g):
            continue  # not broadcast
        else:
            dynamic = True  # a symbolic dim of x may be 1 at run time
    if dynamic:
        # Axes where x (padded with leading 1s) and y differ, found at run time.
        x_shape = _ints(ctx, [1] * lead + [ctx.shape(x)]) if lead else ctx.shape(x)
        differs = ctx.op("Not", ctx.op("Equal", x_shape, ctx.shape(y)))
        run_axes = ctx.reshape(ctx.op("NonZero", differs), [-1])
        summed = ctx.op("ReduceSum", dy, run_axes, keepdims=1, noop_with_empty_axes=1)
        return [reshape_back(ctx, summed, x)]
    if not axes:
        return [dy]
    if axes == list(range(lead)):
        return [ctx.reduce_sum(dy, axes, keepdims=False)]
    summed = ctx.reduce_sum(dy, axes, keepdims=True)
    return [reshape_back(ctx, summed, x) if lead else summed]


@rule("Tile", since=6)
def tile(ctx, dys):
    """y = Tile(x, r): view dy as [r0, d0, r1, d1, ...] and sum over the r axes."""
    (dy,) = dys
    x = ctx.x(0)
    r = ctx.rank(x)
    repeats = ctx.const_input(1)
    if repeats is not None:
        repeats = [int(v) for v in np.atleast_1d(repeats)]
        if len(repeats) != r:
            raise Unsupported(f"{len(repeats)} repeats for a tensor of rank {r}")
        if all(k == 1 for k in repeats):
            return [dy]
        parts: list[int | ir.Value] = []
        axes = []
        for i, k in enumerate(repeats):
            if k != 1:
                axes.append(len(parts))
                parts.append(k)
            parts.append(_dim(ctx, x, i))
        viewed = ctx.reshape(dy, _ints(ctx, parts))
        return [ctx.reduce_sum(viewed, axes, keepdims=False)]
    # Repeats known only at run time: interleave them with x's shape.
    reps = ctx.x(1)
    pairs = ctx.op(
        "Concat",
        ctx.unsqueeze(reps, [1]),
        ctx.unsqueeze(ctx.shape_or_const(x), [1]),
        axis=1,
    )
    viewed = ctx.reshape(dy, ctx.reshape(pairs, [-1]))
    return [ctx.reduce_sum(viewed, [2 * i for i in range(r)], keepdims=False)]


# -- joining and splitting --------------------------------------------------------------------
@rule("Concat", since=4)
def concat(ctx, dys):
    """Split dy along the axis by the (run-time) sizes of the inputs."""
    (dy,) = dys
    xs = list(ctx.inputs)
    if len(xs) == 1:
        return [dy]
    axis = _axis(ctx, int(ctx.attr("axis")), ctx.rank(xs[0]))
    sizes = _ints(ctx, [_dim(ctx, v, axis) for v in xs])
    parts = ctx.split(dy, sizes, axis, len(xs))
    return [p if ctx.needs(i) else None for i, p in enumerate(parts)]


@rule("Split", since=13)
def split(ctx, dys):
    """Concatenate the output gradients (zeros for outputs no gradient reaches)."""
    outs = list(ctx.outputs)
    if len(outs) == 1:
        return [dys[0]]
    axis = _axis(ctx, int(ctx.attr("axis", 0)), ctx.rank(ctx.x(0)))
    parts = []
    for k, dy in enumerate(dys):
        if dy is None:
            y = ctx.y(k)
            if y is None:
                raise Unsupported(f"output {k} is omitted and gets no gradient")
            dy = ctx.zeros_like(y)
        parts.append(dy)
    return [ctx.op("Concat", *parts, axis=axis)]


# -- slicing ----------------------------------------------------------------------------------
@rule("Slice", since=13)
def slice_(ctx, dys):
    """Pad dy back (unit steps, constant starts) or scatter it into zeros (any other slice)."""
    (dy,) = dys
    x = ctx.x(0)
    r = ctx.rank(x)
    starts = ctx.const_input(1)
    axes = ctx.const_input(3) if ctx.x(3) is not None else None
    steps = ctx.const_input(4) if ctx.x(4) is not None else None
    const_axes = ctx.x(3) is None or axes is not None
    unit = ctx.x(4) is None or (steps is not None and bool(np.all(steps == 1)))
    if starts is not None and const_axes and unit:
        starts = [int(s) for s in np.atleast_1d(starts)]
        axes = list(range(len(starts))) if axes is None else [int(a) for a in np.atleast_1d(axes)]
        if len(axes) != len(starts):
            raise Unsupported("starts and axes differ in length")
        return [_slice_pad(ctx, dy, x, starts, [_axis(ctx, a, r) for a in axes])]
    return [_slice_scatter(ctx, dy, x)]


def _slice_pad(ctx, dy, x, starts, axes):
    """Pad dy with the elements the unit-step slice dropped: before = start clamped to [0, d],
    after = d - before - (slice length)."""
    r = ctx.rank(x)
    x_dims, y_dims = ctx.dims(x), ctx.dims(ctx.y(0))
    begin: list[int | ir.Value] = [0] * r
    for a, s in zip(axes, starts, strict=True):
        d = x_dims[a]
        if isinstance(d, int):
            begin[a] = min(max(s + d if s < 0 else s, 0), d)
        elif s == 0:
            begin[a] = 0
        else:
            dim = ctx.shape(x, a, a + 1)
            if s < 0:
                b = ctx.op("Max", ctx.op("Add", dim, ctx.i64([s])), ctx.i64([0]))
            else:
                b = ctx.op("Min", ctx.i64([min(s, _INT64_MAX)]), dim)
            begin[a] = b
    end: list[int | ir.Value] = [0] * r
    for a in range(r):
        if a not in axes:
            continue
        d, n, b = x_dims[a], y_dims[a] if y_dims is not None else None, begin[a]
        if isinstance(d, int) and isinstance(n, int) and isinstance(b, int):
            end[a] = d - b - n
        else:
            dv = ctx.i64([d]) if isinstance(d, int) else ctx.shape(x, a, a + 1)
            nv = ctx.i64([n]) if isinstance(n, int) else ctx.shape(ctx.y(0), a, a + 1)
            rest = ctx.op("Sub", dv, nv)
            end[a] = ctx.op("Sub", rest, b if isinstance(b, ir.Value) else ctx.i64([b]))
    if all(isinstance(v, int) and v == 0 for v in begin + end):
        return dy
    return ctx.op("Pad", dy, _ints(ctx, begin + end))


def _slice_scatter(ctx, dy, x):
    """Slice the flat positions of x like x itself, and scatter dy to them in zeros."""
    size = ctx.op("Size", x)
    positions = ctx.op("Range", ctx.i64(0), size, ctx.i64(1))
    grid = ctx.reshape(positions, ctx.shape_or_const(x))
    picked = ctx.op("Slice", grid, *ctx.inputs[1:])
    flat_zeros = ctx.op("Expand", ctx.scalar(0.0, x), ctx.unsqueeze(size, [0]))
    scattered = ctx.op(
        "ScatterElements",
        flat_zeros,
        ctx.reshape(picked, [-1]),
        ctx.reshape(dy, [-1]),
        axis=0,
    )
    return reshape_back(ctx, scattered, x)


# -- triangles --------------------------------------------------------------------------------
@rule("Trilu", since=14)
def trilu(ctx, dys):
    """The kept triangle passes dy through; the zeroed one gets nothing."""
    (dy,) = dys
    upper = int(ctx.attr("upper", 1))
    k = ctx.x(1)
    return [
        ctx.op("Trilu", dy, k, upper=upper) if k is not None else ctx.op("Trilu", dy, upper=upper)
    ]
