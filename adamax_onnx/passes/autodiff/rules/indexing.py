"""Gradients of indexing ops: Gather, GatherElements, GatherND, ScatterND, ScatterElements, TopK,
CumSum.

Gathers scatter dy back into zeros of the data's shape with ``reduction="add"`` (opset >= 16,
so repeated indices accumulate); Gather at opsets 13-15 sums repeated indices with a one-hot
matrix product instead (axis 0: distinct indices x indices, via Unique; other axes: axis size x
indices). Negative indices are left to the scatter ops, which
accept them. Index tensors get no gradient.
"""

from __future__ import annotations

import onnx_ir as ir

from ..errors import Unsupported
from ..registry import rule
from .shape import _dim, _ints, reshape_back


def _dims(ctx, v: ir.Value, start: int, end: int) -> list[int | ir.Value]:
    """``v``'s sizes along axes start..end-1 (static ints, or one run-time slice)."""
    dims = ctx.dims(v)
    if dims is not None and all(isinstance(d, int) for d in dims[start:end]):
        return [int(d) for d in dims[start:end]]
    return [ctx.shape(v, start, end)] if end > start else []


def _prod(ctx, v: ir.Value, start: int, end: int) -> int | ir.Value:
    """The product of ``v``'s sizes along axes start..end-1 (int, or a [1] run-time tensor)."""
    dims = ctx.dims(v)
    if dims is not None and all(isinstance(d, int) for d in dims[start:end]):
        out = 1
        for d in dims[start:end]:
            out *= int(d)
        return out
    return ctx.op("ReduceProd", ctx.shape(v, start, end), keepdims=1)


def _need_scatter_add(ctx, what: str) -> None:
    if ctx.opset < 16:
        raise Unsupported(
            f"{what} needs scatter with reduction='add' (opset >= 16); the model has opset "
            f"{ctx.opset}: re-export it with opset_version >= 16"
        )


def _scatter_add(ctx, op_type: str, x: ir.Value, ind: ir.Value, upd: ir.Value, **attrs):
    """``op_type`` (ScatterND/ScatterElements) of ``upd`` added into zeros of ``x``'s shape.

    onnxruntime's CPU kernels add only in float32/float64 (not float16/bfloat16): narrower
    types accumulate in float32 and are cast back.
    """
    dtype = ctx.dtype(x)
    if dtype in (ir.DataType.FLOAT16, ir.DataType.BFLOAT16):
        zeros = ctx.op("Expand", ctx.const(0.0, ir.DataType.FLOAT), ctx.shape_or_const(x))
        upd = ctx.op("Cast", upd, to=ir.DataType.FLOAT)
        out = ctx.op(op_type, zeros, ind, upd, reduction="add", **attrs)
        return ctx.op("Cast", out, to=dtype)
    return ctx.op(op_type, ctx.zeros_like(x), ind, upd, reduction="add", **attrs)


def _i64(ctx, v: ir.Value) -> ir.Value:
    return v if v.dtype == ir.DataType.INT64 else ctx.op("Cast", v, to=ir.DataType.INT64)


# -- Gather -----------------------------------------------------------------------------------
@rule("Gather", since=13)
def gather(ctx, dys):
    (dy,) = dys
    if not ctx.needs(0):
        return [None, None]
    x, ind = ctx.x(0), ctx.x(1)
    a = int(ctx.attr("axis", 0))
    if ctx.dims(x) is None and a == 0 and ctx.opset >= 16:
        # Axis 0 needs no rank (a Reshape whose target is computed at run time hides it, e.g.
        # nn.MultiheadAttention's q, k, v = proj[0], proj[1], proj[2] in TorchScript exports).
        index_nd = ctx.unsqueeze(_i64(ctx, ind), [-1])
        return [_scatter_add(ctx, "ScatterND", x, index_nd, dy)]
    r = ctx.rank(x)
    if not -r <= a < r:
        raise Unsupported(f"axis {a} is out of range for rank {r}")
    a %= r
    q = ctx.rank(ind)
    const = ctx.const_input(1)
    if q == 0 and const is not None:
        return [_gather_scalar_pad(ctx, dy, x, a, int(const))]
    if ctx.opset < 16:
        if a == 0:
            return [_gather_rows_unique(ctx, dy, x, ind, q)]
        return [_gather_one_hot(ctx, dy, x, ind, a, q)]
    if a == 0:
        # Rows of dy added into the rows of zeros the indices name (the embedding case).
        index_nd = ctx.unsqueeze(_i64(ctx, ind), [-1])
        return [_scatter_add(ctx, "ScatterND", x, index_nd, dy)]
    # Bring dy to rank r (the index dims as one axis) and scatter along the axis.
    if q == 1:
        dy_r = dy
    elif q == 0:
        dy_r = ctx.unsqueeze(dy, [a])
    else:
        dy_r = ctx.reshape(dy, _ints(ctx, [*_dims(ctx, x, 0, a), -1, *_dims(ctx, x, a + 1, r)]))
    ind_r = ctx.reshape(ind, [1] * a + [-1] + [1] * (r - a - 1))
    ind_e = ctx.op("Expand", ind_r, ctx.shape(dy_r))
    return [_scatter_add(ctx, "ScatterElements", x, ind_e, dy_r, axis=a)]


def _gather_scalar_pad(ctx, dy, x, a, index):
    """x.select(a, index) (BERT's pooler, ViT's class token): pad dy back to x's shape."""
    r = ctx.rank(x)
    d = _dim(ctx, x, a)
    if isinstance(d, int):
        if not -d <= index < d:
            raise Unsupported(f"index {index} is out of range for size {d}")
        before: int | ir.Value = index % d
        after: int | ir.Value = d - 1 - before
    elif index >= 0:
        before = index
        after = ctx.op("Sub", d, ctx.i64([index + 1]))
    else:
        before = ctx.op("Add", d, ctx.i64([index]))
        after = -index - 1
    begins: list[int | ir.Value] = [0] * r
    ends: list[int | ir.Value] = [0] * r
    begins[a], ends[a] = before, after
    pads = _ints(ctx, begins + ends)
    return ctx.op("Pad", ctx.unsqueeze(dy, [a]), pads)


def _gather_rows_unique(ctx, dy, x, ind, q):
    """Opset 13-15, axis 0 (embeddings): no scatter-add, so sum dy's rows per distinct index
    with a one-hot [U, K] @ dy[K, R] (U distinct among K indices: memory U x K, not V x K),
    then write the U sums, whose indices are distinct, with a plain ScatterND."""
    d = _dim(ctx, x, 0)
    flat = _i64(ctx, ctx.reshape(ind, [-1]))
    flat = ctx.op("Mod", flat, ctx.i64([d]) if isinstance(d, int) else d)  # -1 and V-1 meet
    uniq, _, inverse = ctx.op_multi("Unique", flat, num_outputs=3, sorted=1)
    count = ctx.squeeze(ctx.shape(uniq), [0])
    slots = ctx.unsqueeze(ctx.op("Range", ctx.i64(0), count, ctx.i64(1)), [1])
    one_hot = ctx.op("Cast", ctx.op("Equal", slots, ctx.unsqueeze(inverse, [0])), to=ctx.dtype(x))
    sums = ctx.op("MatMul", one_hot, ctx.op("Flatten", dy, axis=q))
    rows = ctx.reshape(sums, _ints(ctx, [-1, *_dims(ctx, x, 1, ctx.rank(x))]))
    return ctx.op("ScatterND", ctx.zeros_like(x), ctx.unsqueeze(uniq, [-1]), rows)


def _gather_one_hot(ctx, dy, x, ind, a, q):
    """Opset 13-15: dx[P, V, R] = onehot[V, K] @ dy[P, K, R] (sums repeated indices)."""
    d = _dim(ctx, x, a)
    depth = ctx.i64(d) if isinstance(d, int) else ctx.squeeze(d, [0])
    flat = _i64(ctx, ctx.reshape(ind, [-1]))
    flat = ctx.op("Mod", flat, depth)  # negative indices count from the end
    rows = ctx.unsqueeze(ctx.op("Range", ctx.i64(0), depth, ctx.i64(1)), [1])
    one_hot = ctx.op("Cast", ctx.op("Equal", rows, ctx.unsqueeze(flat, [0])), to=ctx.dtype(x))
    rest = _prod(ctx, x, a + 1, ctx.rank(x))
    dy3 = ctx.reshape(ctx.op("Flatten", dy, axis=a), _ints(ctx, [0, -1, rest]))
    dx = ctx.op("MatMul", one_hot, dy3)
    return reshape_back(ctx, dx, x)


# -- GatherElements / GatherND ----------------------------------------------------------------
@rule("GatherElements", since=13)
def gather_elements(ctx, dys):
    (dy,) = dys
    if not ctx.needs(0):
        return [None, None]
    _need_scatter_add(ctx, "the gradient of GatherElements")
    axis = int(ctx.attr("axis", 0))
    return [_scatter_add(ctx, "ScatterElements", ctx.x(0), ctx.x(1), dy, axis=axis), None]


@rule("GatherND", since=13)
def gather_nd(ctx, dys):
    (dy,) = dys
    if not ctx.needs(0):
        return [None, None]
    _need_scatter_add(ctx, "the gradient of GatherND")
    x, ind = ctx.x(0), _i64(ctx, ctx.x(1))
    b = int(ctx.attr("batch_dims", 0))
    if b == 1:
        # Prepend each row's batch position to its index tuple: batch_dims 0.
        m = ctx.rank(ctx.x(1))
        batch = ctx.squeeze(ctx.shape(x, 0, 1), [0])
        positions = ctx.reshape(
            ctx.op("Range", ctx.i64(0), batch, ctx.i64(1)), [-1] + [1] * (m - 1)
        )
        lead = ctx.op("Expand", positions, _ints(ctx, [*_dims(ctx, ctx.x(1), 0, m - 1), 1]))
        ind = ctx.op("Concat", lead, ind, axis=-1)
    elif b != 0:
        raise Unsupported(f"batch_dims={b} (only 0 and 1 are supported)")
    return [_scatter_add(ctx, "ScatterND", x, ind, dy), None]


# -- scatters ---------------------------------------------------------------------------------
def _scatter(ctx, dys, scatter_op, gather_op, axis_attrs):
    (dy,) = dys
    reduction = ctx.attr("reduction", "none")
    if reduction not in ("none", "add"):
        raise Unsupported(f"reduction={reduction!r} (only 'none' and 'add' are supported)")
    ind = ctx.x(1)
    out = [None, None, None]
    if ctx.needs(0):
        if reduction == "add":
            out[0] = dy
        else:  # the overwritten positions do not reach the output
            zeros = ctx.zeros_like(ctx.x(2))
            out[0] = ctx.op(scatter_op, dy, ind, zeros, **axis_attrs)
    if ctx.needs(2):
        out[2] = ctx.op(gather_op, dy, ind, **axis_attrs)
    return out


@rule("ScatterND", since=13)
def scatter_nd(ctx, dys):
    """data gets dy (without the overwritten positions), updates get dy at their positions."""
    return _scatter(ctx, dys, "ScatterND", "GatherND", {})


@rule("ScatterElements", since=13)
def scatter_elements(ctx, dys):
    return _scatter(
        ctx, dys, "ScatterElements", "GatherElements", {"axis": int(ctx.attr("axis", 0))}
    )


# -- TopK -------------------------------------------------------------------------------------
@rule("TopK", since=10)
def topk(ctx, dys):
    """dy of the values goes back to the positions the indices name (distinct along the axis)."""
    dy = dys[0]
    if dy is None or not ctx.needs(0):
        return [None, None]
    zeros = ctx.zeros_like(ctx.x(0))
    axis = int(ctx.attr("axis", -1))
    return [ctx.op("ScatterElements", zeros, ctx.y(1), dy, axis=axis), None]


# -- CumSum -----------------------------------------------------------------------------------
@rule("CumSum", since=11)
def cumsum(ctx, dys):
    """dx_j = sum of dy_i over the i whose running sum includes x_j: the reverse CumSum."""
    (dy,) = dys
    exclusive, reverse = int(ctx.attr("exclusive", 0)), int(ctx.attr("reverse", 0))
    return [ctx.op("CumSum", dy, ctx.x(1), exclusive=exclusive, reverse=1 - reverse), None]
