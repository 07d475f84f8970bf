"""Gradients of Softmax, LogSoftmax and the classification losses built on them.

SoftmaxCrossEntropyLoss and NegativeLogLikelihoodLoss: the class axis is 1 (scores
``[N, C, d1, ...]``, labels ``[N, d1, ...]``); labels and class weights get no gradient. Each
label position ``n`` contributes with a factor ``f[n]``: ``dLoss[n]`` (reduction "none") or the
scalar ``dLoss`` ("sum"), divided for "mean" by the number of positions or, with class weights
or an ignore_index, by the total weight of the positions that count; times the class weight of
its label; zero where the label is ignore_index. Then

* NLL: ``dX = -onehot(label) * f``: ``-f`` scattered into zeros;
* SCE: ``dScores = (softmax(scores) - onehot(label)) * f``: ``softmax * f`` with ``f``
  subtracted at the label (GatherElements, ScatterElements), the softmax read as
  ``exp(log_prob)``; plus the LogSoftmax gradient of log_prob when the loss reads it too.

ScatterElements rather than OneHot: onnxruntime's OneHot kernel is several times slower (and
has no double kernel).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from ..errors import Unsupported
from ..registry import rule


@rule("Softmax", since=13)
def softmax(ctx, dys):
    """dX = (dY - sum(dY * Y, axis)) * Y."""
    (dy,) = dys
    y = ctx.y(0)
    axis = int(ctx.attr("axis", -1))
    dot = ctx.reduce_sum(ctx.op("Mul", dy, y), [axis], keepdims=True)
    return [ctx.op("Mul", ctx.op("Sub", dy, dot), y)]


@rule("LogSoftmax", since=13)
def log_softmax(ctx, dys):
    """dX = dY - exp(Y) * sum(dY, axis)."""
    (dy,) = dys
    y = ctx.y(0)
    axis = int(ctx.attr("axis", -1))
    total = ctx.reduce_sum(dy, [axis], keepdims=True)
    return [ctx.op("Sub", dy, ctx.op("Mul", ctx.op("Exp", y), total))]


def _num_classes(ctx, x):
    """C (dim 1 of ``x``) when static, else None."""
    dims = ctx.dims(x)
    if dims is not None and len(dims) > 1 and isinstance(dims[1], int):
        return dims[1]
    return None


def _factor(ctx, x, dloss):
    """(label as int64, per-position factor, whether it is per position).

    The factor has the label's shape when per position, else it is a scalar. The label is
    safe to index with: ignored positions out of [0, C) are moved to class 0 (their factor is 0).
    """
    reduction = ctx.attr("reduction", "mean")
    if reduction not in ("mean", "sum", "none"):
        raise Unsupported(f"reduction={reduction!r}")
    if ctx.rank(x) < 2:
        raise Unsupported("scores of rank < 2 (the class axis is 1)")
    label, weight = ctx.x(1), ctx.x(2)
    ignore = ctx.attr("ignore_index")
    if label.dtype != ir.DataType.INT64:
        label = ctx.op("Cast", label, to=ir.DataType.INT64)
    keep = None
    if ignore is not None:
        keep = ctx.op("Not", ctx.op("Equal", label, ctx.i64(int(ignore))))
        c_static = _num_classes(ctx, x)
        if not (c_static is not None and 0 <= int(ignore) < c_static):
            label = ctx.op("Where", keep, label, ctx.i64(0))
    w = None  # weight of each label position, or None when every position counts 1
    if weight is not None:
        w = ctx.op("Gather", weight, label, axis=0)
        if keep is not None:
            w = ctx.op("Where", keep, w, ctx.scalar(0.0, x))
    elif keep is not None:
        w = ctx.op("Cast", keep, to=ctx.dtype(x))

    if reduction == "mean":
        if w is not None:
            denom = ctx.reduce_sum(w, None, keepdims=False)
            # Nothing counts (all ignored): every factor is 0; avoid 0 / 0.
            tiny = float(np.finfo(ctx.np_dtype(x)).tiny)
            denom = ctx.op("Max", denom, ctx.scalar(tiny, x))
        else:
            shape = ctx.static_shape(ctx.x(1))
            if shape is not None:
                denom = ctx.scalar(float(max(1, int(np.prod(shape)))), x)
            else:
                denom = ctx.op("Cast", ctx.op("Size", label), to=ctx.dtype(x))
        dloss = ctx.op("Div", dloss, denom)
    f = dloss if w is None else ctx.op("Mul", w, dloss)
    return label, f, reduction == "none" or w is not None


@rule("SoftmaxCrossEntropyLoss", since=13)
def softmax_cross_entropy_loss(ctx, dys):
    dloss = dys[0]
    dlog_prob = dys[1] if len(dys) > 1 else None
    if not ctx.needs(0):
        return [None]
    x = ctx.x(0)
    log_prob = ctx.y(1)
    prob = ctx.op("Exp", log_prob) if log_prob is not None else ctx.op("Softmax", x, axis=1)
    dx = None
    if dloss is not None:
        label, f, per = _factor(ctx, x, dloss)
        f = ctx.unsqueeze(f, [1]) if per else f
        # (p - onehot) * f = scatter of p*f with p*f - f at the label.
        pf = ctx.op("Mul", prob, f)
        idx = ctx.unsqueeze(label, [1])
        at_label = ctx.op("Sub", ctx.op("GatherElements", pf, idx, axis=1), f)
        dx = ctx.op("ScatterElements", pf, idx, at_label, axis=1)
    if dlog_prob is not None:
        total = ctx.reduce_sum(dlog_prob, [1], keepdims=True)
        d_lp = ctx.op("Sub", dlog_prob, ctx.op("Mul", prob, total))
        dx = d_lp if dx is None else ctx.op("Add", dx, d_lp)
    return [dx]


@rule("NegativeLogLikelihoodLoss", since=13)
def negative_log_likelihood_loss(ctx, dys):
    (dloss,) = dys[:1]
    if not ctx.needs(0) or dloss is None:
        return [None]
    x = ctx.x(0)
    label, f, per = _factor(ctx, x, dloss)
    idx = ctx.unsqueeze(label, [1])
    upd = ctx.op("Neg", ctx.unsqueeze(f, [1]) if per else f)
    if not per:
        upd = ctx.op("Expand", upd, ctx.shape(idx))
    return [ctx.op("ScatterElements", ctx.zeros_like(x), idx, upd, axis=1)]
