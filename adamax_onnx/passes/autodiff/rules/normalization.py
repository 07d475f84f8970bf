"""Gradients of normalizations: LayerNormalization, RMSNormalization, GroupNormalization,
InstanceNormalization, BatchNormalization (inference and training mode).

All share one backward: with ``xhat = (x - mean) / std`` over a set of normalized axes and
``g = dY * scale`` (the gradient of ``xhat``),

    dX = (g - mean(g) - xhat * mean(g * xhat)) / std

(RMSNormalization: no mean is subtracted, so no ``mean(g)`` term). Where ``scale`` is constant
over the normalized axes (InstanceNormalization, BatchNormalization, GroupNormalization-18) it
is taken out of the means, ``mean(g) = scale * mean(dY)``, so that the per-slice means of
``dY`` and ``dY * xhat`` also give the bias and scale gradients (times the slice size) and no
extra full-size reduction is needed. Statistics that the forward node does not output are
recomputed in the input's float type.
"""

from __future__ import annotations

import math

from ..errors import Unsupported
from ..registry import rule


def _count(ctx, x, axes, like, divisor=1):
    """The number of elements of ``x`` over ``axes`` (divided by ``divisor``), a 0-d tensor of
    ``like``'s type: a constant when those dims are static, else read from Shape(x)."""
    axes = list(axes)
    dims = ctx.dims(x)
    if dims is not None and all(isinstance(dims[a], int) for a in axes):
        return ctx.scalar(math.prod(dims[a] for a in axes) / divisor, like)
    sizes = ctx.op("Gather", ctx.shape(x), ctx.i64(axes))
    n = ctx.op("Cast", ctx.op("ReduceProd", sizes, keepdims=0), to=ctx.dtype(like))
    return n if divisor == 1 else ctx.op("Div", n, ctx.scalar(divisor, like))


def _sum_to(ctx, g, like):
    """``g`` (the shape of X and Y) summed to the shape of ``like`` (numpy broadcasting
    undone): one ReduceSum when ``like`` (static) only lacks leading axes."""
    x = ctx.x(0)
    g_dims, x_dims = ctx.dims(x), ctx.dims(like)
    if g_dims is None or x_dims is None or len(x_dims) > len(g_dims):
        return ctx.sum_to(g, like, x)
    lead = len(g_dims) - len(x_dims)
    if any(
        not isinstance(d, int) or (d == 1 and g_dims[lead + k] != 1) for k, d in enumerate(x_dims)
    ):
        return ctx.sum_to(g, like, x)  # broadcast (or maybe: a symbolic dim) inside
    return ctx.reduce_sum(g, list(range(lead)), keepdims=False)


def _standardize(ctx, x, axes, eps, like, mean=None, inv_std=None):
    """(xhat, divide) for ``x`` standardized over ``axes``: ``divide(v) = v / std``.

    ``like``: a forward tensor of ``x``'s element type (``x`` may be an emitted Reshape).
    ``mean``/``inv_std``: the forward node's saved statistics when it outputs them.
    """
    if mean is None:
        mean = ctx.reduce("ReduceMean", x, axes)
    else:
        mean = ctx.cast_like(mean, like)
    centered = ctx.op("Sub", x, mean)
    if inv_std is not None:
        inv_std = ctx.cast_like(inv_std, like)
        return ctx.op("Mul", centered, inv_std), lambda v: ctx.op("Mul", v, inv_std)
    var = ctx.reduce("ReduceMean", ctx.op("Mul", centered, centered), axes)
    std = ctx.op("Sqrt", ctx.op("Add", var, ctx.scalar(eps, like)))
    return ctx.op("Div", centered, std), lambda v: ctx.op("Div", v, std)


def _dx(ctx, g, xhat, axes, divide, centered=True):
    """(g - mean(g) - xhat * mean(g * xhat)) / std over ``axes`` (no mean(g): RMS)."""
    proj = ctx.op("Mul", xhat, ctx.reduce("ReduceMean", ctx.op("Mul", g, xhat), axes))
    if centered:
        g = ctx.op("Sub", g, ctx.reduce("ReduceMean", g, axes))
    return divide(ctx.op("Sub", g, proj))


def _no_stat_gradients(dys, what):
    if any(d is not None for d in dys[1:]):
        raise Unsupported(f"the loss depends on the {what} output(s); only Y is differentiated")


@rule("LayerNormalization", since=17)
def layer_normalization(ctx, dys):
    _no_stat_gradients(dys, "Mean/InvStdDev")
    dy, x, scale, bias = dys[0], ctx.x(0), ctx.x(1), ctx.x(2)
    rank = ctx.rank(x)
    axis = int(ctx.attr("axis", -1))
    if not -rank <= axis < rank:
        raise Unsupported(f"axis={axis} out of range for rank {rank}")
    axes = list(range(axis % rank, rank))
    eps = float(ctx.attr("epsilon", 1e-5))
    grads = [None, None, None]
    if ctx.needs(0) or ctx.needs(1):
        xhat, divide = _standardize(ctx, x, axes, eps, x, ctx.y(1), ctx.y(2))
        if ctx.needs(0):
            grads[0] = _dx(ctx, ctx.op("Mul", dy, scale), xhat, axes, divide)
        if ctx.needs(1):
            grads[1] = _sum_to(ctx, ctx.op("Mul", dy, xhat), scale)
    if bias is not None and ctx.needs(2):
        grads[2] = _sum_to(ctx, dy, bias)
    return grads


@rule("RMSNormalization", since=23)
def rms_normalization(ctx, dys):
    dy, x, scale = dys[0], ctx.x(0), ctx.x(1)
    rank = ctx.rank(x)
    axis = int(ctx.attr("axis", -1))
    if not -rank <= axis < rank:
        raise Unsupported(f"axis={axis} out of range for rank {rank}")
    axes = list(range(axis % rank, rank))
    eps = float(ctx.attr("epsilon", 1e-5))
    mean_sq = ctx.reduce("ReduceMean", ctx.op("Mul", x, x), axes)
    rms = ctx.op("Sqrt", ctx.op("Add", mean_sq, ctx.scalar(eps, x)))
    xhat = ctx.op("Div", x, rms)
    grads = [None, None]
    if ctx.needs(0):
        divide = lambda v: ctx.op("Div", v, rms)  # noqa: E731
        grads[0] = _dx(ctx, ctx.op("Mul", dy, scale), xhat, axes, divide, centered=False)
    if ctx.needs(1):
        grads[1] = _sum_to(ctx, ctx.op("Mul", dy, xhat), scale)
    return grads


def _per_channel(ctx, v, rank):
    """A [C] tensor shaped [C, 1, ..., 1] to broadcast against [N, C, D1, ...]."""
    return ctx.unsqueeze(v, list(range(1, rank - 1))) if rank > 2 else v


def _scaled_backward(ctx, dy, xhat, divide, scale_b, axes, count_of, sum_axes):
    """Backward for a scale constant over the normalized ``axes``: returns (dX, dScale, dB).

    m1 = mean(dY), m2 = mean(dY * xhat) over ``axes``; dX = scale / std * (dY - m1 - xhat *
    m2); dScale and dB are m2 and m1 summed over ``sum_axes`` times the slice size.
    ``count_of()`` gives that size (emitted only when a parameter gradient is needed).
    """
    m1 = ctx.reduce("ReduceMean", dy, axes) if ctx.needs(0) or ctx.needs(2) else None
    m2 = None
    if ctx.needs(0) or ctx.needs(1):
        m2 = ctx.reduce("ReduceMean", ctx.op("Mul", dy, xhat), axes)
    dx = dscale = dbias = None
    if ctx.needs(0):
        inner = ctx.op("Sub", ctx.op("Sub", dy, m1), ctx.op("Mul", xhat, m2))
        dx = ctx.op("Mul", inner, divide(scale_b))
    if ctx.needs(1) or ctx.needs(2):
        n = count_of()
        if ctx.needs(1):
            dscale = ctx.op("Mul", ctx.reduce_sum(m2, sum_axes, keepdims=False), n)
        if ctx.needs(2):
            dbias = ctx.op("Mul", ctx.reduce_sum(m1, sum_axes, keepdims=False), n)
    return dx, dscale, dbias


@rule("InstanceNormalization", since=6)
def instance_normalization(ctx, dys):
    dy, x, scale = dys[0], ctx.x(0), ctx.x(1)
    rank = ctx.rank(x)
    if rank < 3:
        raise Unsupported(f"input of rank {rank}; InstanceNormalization needs [N, C, D1, ...]")
    axes = list(range(2, rank))
    xhat, divide = _standardize(ctx, x, axes, float(ctx.attr("epsilon", 1e-5)), x)
    return _scaled_backward(
        ctx,
        dy,
        xhat,
        divide,
        _per_channel(ctx, scale, rank),
        axes,
        lambda: _count(ctx, x, axes, x),
        [0, *axes],
    )


@rule("GroupNormalization", since=18)
def group_normalization(ctx, dys):
    dy, x, scale = dys[0], ctx.x(0), ctx.x(1)
    rank = ctx.rank(x)
    if rank < 2:
        raise Unsupported(f"input of rank {rank}; GroupNormalization needs [N, C, ...]")
    groups = int(ctx.attr("num_groups", 0))
    if groups < 1:
        raise Unsupported(f"num_groups={groups}")
    grouped = [0, groups, -1]  # [N, G, C/G * D1 * ...]
    eps = float(ctx.attr("epsilon", 1e-5))
    xhat, divide = _standardize(ctx, ctx.reshape(x, grouped), [2], eps, x)
    x_shape = ctx.shape_or_const(x)
    if ctx.opset < 21:  # scale and bias per group: constant over each normalized slice
        dx, dscale, dbias = _scaled_backward(
            ctx,
            ctx.reshape(dy, grouped),
            xhat,
            divide,
            ctx.unsqueeze(scale, [1]),
            [2],
            lambda: _count(ctx, x, range(1, rank), x, groups),
            [0, 2],
        )
        return [ctx.reshape(dx, x_shape) if dx is not None else None, dscale, dbias]
    # opset 21: scale and bias per channel
    grads = [None, None, None]
    sum_axes = [0, *range(2, rank)]
    if ctx.needs(0):
        g = ctx.reshape(ctx.op("Mul", dy, _per_channel(ctx, scale, rank)), grouped)
        grads[0] = ctx.reshape(_dx(ctx, g, xhat, [2], divide), x_shape)
    if ctx.needs(1):
        xhat_x = ctx.reshape(xhat, x_shape)
        grads[1] = ctx.reduce_sum(ctx.op("Mul", dy, xhat_x), sum_axes, keepdims=False)
    if ctx.needs(2):
        grads[2] = ctx.reduce_sum(dy, sum_axes, keepdims=False)
    return grads


def _batch_norm_training(ctx):
    if ctx.opset >= 14:
        return bool(ctx.attr("training_mode", 0))
    # BatchNormalization-9: training mode when the node declares the statistics outputs
    return len(ctx.outputs) > 1


@rule("BatchNormalization", since=9)
def batch_normalization(ctx, dys):
    dy, x, scale = dys[0], ctx.x(0), ctx.x(1)
    rank = ctx.rank(x)
    if rank < 2:
        raise Unsupported(f"input of rank {rank}; BatchNormalization needs [N, C, ...]")
    axes = [0, *range(2, rank)]
    eps = float(ctx.attr("epsilon", 1e-5))
    if _batch_norm_training(ctx):
        _no_stat_gradients(dys, "running/saved mean and variance")
        # batch statistics over every axis but 1; input_mean/input_var only feed the running
        # statistics outputs, which receive no gradient
        xhat, divide = _standardize(ctx, x, axes, eps, x)
        dx, dscale, dbias = _scaled_backward(
            ctx,
            dy,
            xhat,
            divide,
            _per_channel(ctx, scale, rank),
            axes,
            lambda: _count(ctx, x, axes, x),
            axes,
        )
        return [dx, dscale, dbias, None, None]
    # inference mode: y = (x - mean) * scale / sqrt(var + eps) + B, per channel
    mean, var = ctx.x(3), ctx.x(4)
    grads = [None] * 5
    std = ctx.op("Sqrt", ctx.op("Add", var, ctx.scalar(eps, var)))
    k = None
    if ctx.needs(0) or ctx.needs(3) or ctx.needs(4):
        k = ctx.op("Div", scale, std)  # dY/dX per channel
    if ctx.needs(0):
        grads[0] = ctx.op("Mul", dy, _per_channel(ctx, k, rank))
    dbias = None
    if ctx.needs(2) or ctx.needs(3):
        dbias = ctx.reduce_sum(dy, axes, keepdims=False)
        grads[2] = dbias if ctx.needs(2) else None
    if ctx.needs(1) or ctx.needs(4):
        centered = ctx.op("Sub", x, _per_channel(ctx, mean, rank))
        dscale = ctx.op(
            "Div", ctx.reduce_sum(ctx.op("Mul", dy, centered), axes, keepdims=False), std
        )
        grads[1] = dscale if ctx.needs(1) else None
        if ctx.needs(4):  # d/dvar = -1/2 * scale * sum(dY * (x - mean)) / std^3
            half = ctx.op("Mul", ctx.op("Mul", dscale, k), ctx.scalar(-0.5, var))
            grads[4] = ctx.op("Div", half, std)
    if ctx.needs(3):
        grads[3] = ctx.op("Neg", ctx.op("Mul", dbias, k))
    return grads
