"""Gradient of the fused ``Attention`` op (opset 23+).

``Y = P @ V`` with ``P = softmax(softcap(scale * Q @ K^T) + bias)``, where the bias gathers the
attention mask, ``is_causal``, ``nonpad_kv_seqlen`` and the sliding windows. The rule does not
re-derive the bias: it runs the op again with ``qk_matmul_output_mode=3``, whose
``qk_matmul_output`` is ``P`` itself (masked entries 0, fully masked rows 0), then

    dV = P^T dY,  dP = dY V^T,  dS = P * (dP - rowsum(dP * P)),
    dQ = scale * dS' K,  dK = scale * dS'^T Q  (dS' = dS * (1 - tanh^2) under softcap),
    d attn_mask (float) = dS summed to the mask's shape.

Grouped-query attention (fewer K/V heads) repeats K and V per group and sums their gradients
back. 3-D inputs (``q_num_heads``/``kv_num_heads``) are viewed as 4-D. Unsupported: the KV
cache (``past_key``/``past_value``) and gradients flowing into ``present_key``,
``present_value`` or ``qk_matmul_output``.
"""

from __future__ import annotations

import math

import onnx_ir as ir

from ..errors import Unsupported
from ..registry import rule


def _heads_4d(ctx, v, heads: int):
    """[B, S, heads*D] -> [B, heads, S, D]."""
    return ctx.op("Transpose", ctx.reshape(v, [0, 0, heads, -1]), perm=[0, 2, 1, 3])


def _heads_3d(ctx, v):
    """[B, heads, S, D] -> [B, S, heads*D]."""
    return ctx.reshape(ctx.op("Transpose", v, perm=[0, 2, 1, 3]), [0, 0, -1])


@rule("Attention", since=23)
def attention(ctx, dys):
    dys = list(dys) + [None] * 4
    dy = dys[0]
    if any(d is not None for d in dys[1:4]):
        raise Unsupported("gradients through present_key/present_value/qk_matmul_output")
    if ctx.x(4) is not None or ctx.x(5) is not None:
        raise Unsupported("the KV cache inputs past_key/past_value are not supported")
    if dy is None:
        return []
    q, k, v, mask = ctx.x(0), ctx.x(1), ctx.x(2), ctx.x(3)
    rank = ctx.rank(q)
    if rank == 3:
        hq, hk = ctx.attr("q_num_heads"), ctx.attr("kv_num_heads")
        if hq is None or hk is None:
            raise Unsupported("3-D inputs without q_num_heads/kv_num_heads")
        hq, hk = int(hq), int(hk)
        qd, kd, vd = ctx.dims(q), ctx.dims(k), ctx.dims(v)
        head = qd[-1] // hq if isinstance(qd[-1], int) else None
        k_head = kd[-1] // hk if kd is not None and isinstance(kd[-1], int) else None
        v_head = vd[-1] // hk if vd is not None and isinstance(vd[-1], int) else None
        q4, k4, v4 = _heads_4d(ctx, q, hq), _heads_4d(ctx, k, hk), _heads_4d(ctx, v, hk)
        dy4 = _heads_4d(ctx, dy, hq)
    elif rank == 4:
        qd, kd, vd = ctx.dims(q), ctx.dims(k), ctx.dims(v)
        hq, hk = qd[1], (kd[1] if kd is not None else None)
        head, k_head = qd[-1], (kd[-1] if kd is not None else None)
        v_head = vd[-1] if vd is not None else None
        if hq != hk and not (isinstance(hq, int) and isinstance(hk, int)):
            raise Unsupported("the numbers of query and key/value heads are unknown")
        q4, k4, v4, dy4 = q, k, v, dy
    else:
        raise Unsupported(f"rank-{rank} inputs")
    scale = ctx.attr("scale")
    if scale is None:
        if not isinstance(head, int):
            raise Unsupported("the head size is unknown (needed for the default scale)")
        scale = 1.0 / math.sqrt(head)
    scale = float(scale)
    softcap = float(ctx.attr("softcap", 0.0))

    # P, from the op itself.
    node = ctx.node
    attrs = {
        name: ir.Attr(a.name, a.type, a.value)
        for name, a in node.attributes.items()
        if name not in ("qk_matmul_output_mode", "softmax_precision")
    }
    outs = ctx.op_multi("Attention", *node.inputs, num_outputs=4, qk_matmul_output_mode=3, **attrs)
    outs[1].name = outs[2].name = ""
    p = outs[3]

    groups = 1
    if hq != hk:
        if hq % hk:
            raise Unsupported(f"{hq} query heads for {hk} key/value heads")
        groups = hq // hk
        if not (isinstance(k_head, int) and isinstance(v_head, int)):
            raise Unsupported("the key/value head sizes are unknown")

    def repeat(t, last):
        """[B, hk, L, last] -> [B, hq, L, last], each key/value head used by its group."""
        if groups == 1:
            return t
        t = ctx.op("Expand", ctx.unsqueeze(t, [2]), ctx.i64([1, 1, groups, 1, 1]))
        return ctx.reshape(t, [0, hq, -1, last])

    def group_sum(t, last):
        if groups == 1:
            return t
        return ctx.reduce_sum(ctx.reshape(t, [0, hk, groups, -1, last]), [2], keepdims=False)

    out = [None] * len(node.inputs)
    if ctx.needs(2):
        dv = group_sum(ctx.op("MatMul", ctx.op("Transpose", p, perm=[0, 1, 3, 2]), dy4), v_head)
        out[2] = dv if rank == 4 else _heads_3d(ctx, dv)
    if not (ctx.needs(0) or ctx.needs(1) or (mask is not None and ctx.needs(3))):
        return out
    k_r = repeat(k4, k_head)
    dp = ctx.op("MatMul", dy4, ctx.op("Transpose", repeat(v4, v_head), perm=[0, 1, 3, 2]))
    row = ctx.reduce_sum(ctx.op("Mul", dp, p), [-1], keepdims=True)
    ds = ctx.op("Mul", p, ctx.op("Sub", dp, row))
    if mask is not None and ctx.needs(3) and mask.dtype != ir.DataType.BOOL:
        out[3] = _sum_to_mask(ctx, ds, mask)
    if softcap > 0.0:
        s = ctx.op("MatMul", q4, ctx.op("Transpose", k_r, perm=[0, 1, 3, 2]))
        t = ctx.op("Tanh", ctx.op("Mul", s, ctx.scalar(scale / softcap, q)))
        ds = ctx.op("Mul", ds, ctx.op("Sub", ctx.scalar(1.0, q), ctx.op("Mul", t, t)))
    ds = ctx.op("Mul", ds, ctx.scalar(scale, q))
    if ctx.needs(0):
        dq = ctx.op("MatMul", ds, k_r)
        out[0] = dq if rank == 4 else _heads_3d(ctx, dq)
    if ctx.needs(1):
        dk = ctx.op("MatMul", ctx.op("Transpose", ds, perm=[0, 1, 3, 2]), q4)
        dk = group_sum(dk, k_head)
        out[1] = dk if rank == 4 else _heads_3d(ctx, dk)
    return out


def _sum_to_mask(ctx, ds, mask):
    """Sum ``ds`` [B, H, S, T] to the (broadcastable) shape of the float mask."""
    dims = ctx.dims(mask)
    if dims is None:
        raise Unsupported("the rank of attn_mask is unknown")
    lead = 4 - len(dims)
    axes = list(range(lead)) + [lead + i for i, d in enumerate(dims) if d == 1]
    if not axes:
        return ds
    g = ctx.reduce_sum(ds, axes, keepdims=True)
    return ctx.reshape(g, ctx.shape_or_const(mask)) if lead else g
