"""Gradient of the fused ``Attention`` op (opset 23+).

``Y = P @ V`` with ``P = softmax(softcap(scale * Q @ K^T) + bias)``, where the bias gathers the
attention mask, ``is_causal``, ``nonpad_kv_seqlen`` and the sliding windows. The rule does not
re-derive the bias: it runs the op again with ``qk_matmul_output_mode=3``, whose
``qk_matmul_output`` is ``P`` itself (masked entries 0, fully masked rows 0), then

    dV = P^T dY,  dP = dY V^T,  dS = P * (dP - rowsum(dP * P)),
    dQ = scale * dS' K,  dK = scale * dS'^T Q  (dS' = dS * (1 - tanh^2) under softcap),
    d attn_mask (float) = dS summed to the mask's shape.

Grouped-query attention (fewer K/V heads) repeats K and V per group and sums their gradients
back. 3-D inputs (``q_num_heads``/``kv_num_heads``) are viewed as 4-D. With a KV cache, the
keys/values attended to are ``present = Concat(past, new)``: their gradient (plus whatever
reaches the ``present_key``/``present_value`` outputs) is split back between the cache and the
new keys/values. Unsupported: gradients flowing into ``qk_matmul_output``.
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
    if dys[3] is not None:
        raise Unsupported("gradients through qk_matmul_output")
    if (ctx.x(4) is None) != (ctx.x(5) is None):
        raise Unsupported("past_key without past_value (or the reverse)")
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
        dy4 = _heads_4d(ctx, dy, hq) if dy is not None else None
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
    if ctx.x(4) is None:
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

    # With a KV cache the op attends to present = Concat(past, new) along the sequence axis.
    past_k, past_v = ctx.x(4), ctx.x(5)
    k_all, v_all = k4, v4
    if past_k is not None:
        # Read from the P node: without its present outputs, onnx shape inference (1.23)
        # takes P's key axis for the new keys only.
        k_all, v_all = outs[1], outs[2]

    def split_back(d_all, new, past, new_rank4, i_new, i_past):
        """d(present) -> gradients of the past cache and of the new keys/values."""
        if past is None:
            return {i_new: d_all}
        sizes = ctx.op("Concat", ctx.shape(past, 2, 3), ctx.shape(new_rank4, 2, 3), axis=0)
        d_past, d_new = ctx.split(d_all, sizes, 2, 2)
        return {i_new: d_new, i_past: d_past}

    out: list = [None] * len(node.inputs)
    need_k = ctx.needs(1) or (past_k is not None and ctx.needs(4))
    need_v = ctx.needs(2) or (past_v is not None and ctx.needs(5))
    dk_all, dv_all = dys[1], dys[2]  # gradients reaching present_key / present_value
    if dy is not None:
        if need_v:
            pt = ctx.op("Transpose", p, perm=[0, 1, 3, 2])
            dv = group_sum(ctx.op("MatMul", pt, dy4), v_head)
            dv_all = dv if dv_all is None else ctx.op("Add", dv_all, dv)
        need_mask = mask is not None and ctx.needs(3) and mask.dtype != ir.DataType.BOOL
        if ctx.needs(0) or need_k or need_mask:
            k_r = repeat(k_all, k_head)
            dp = ctx.op(
                "MatMul", dy4, ctx.op("Transpose", repeat(v_all, v_head), perm=[0, 1, 3, 2])
            )
            row = ctx.reduce_sum(ctx.op("Mul", dp, p), [-1], keepdims=True)
            ds = ctx.op("Mul", p, ctx.op("Sub", dp, row))
            if need_mask:
                out[3] = _sum_to_mask(ctx, ds, mask)
            if softcap > 0.0:
                s = ctx.op("MatMul", q4, ctx.op("Transpose", k_r, perm=[0, 1, 3, 2]))
                t = ctx.op("Tanh", ctx.op("Mul", s, ctx.scalar(scale / softcap, q)))
                ds = ctx.op("Mul", ds, ctx.op("Sub", ctx.scalar(1.0, q), ctx.op("Mul", t, t)))
            ds = ctx.op("Mul", ds, ctx.scalar(scale, q))
            if ctx.needs(0):
                dq = ctx.op("MatMul", ds, k_r)
                out[0] = dq if rank == 4 else _heads_3d(ctx, dq)
            if need_k:
                dk = ctx.op("MatMul", ctx.op("Transpose", ds, perm=[0, 1, 3, 2]), q4)
                dk = group_sum(dk, k_head)
                dk_all = dk if dk_all is None else ctx.op("Add", dk_all, dk)
    for d_all, new, past, i_new, i_past in (
        (dk_all, k4, past_k, 1, 4),
        (dv_all, v4, past_v, 2, 5),
    ):
        if d_all is None:
            continue
        for i, g in split_back(d_all, new, past, new, i_new, i_past).items():
            if ctx.needs(i):
                out[i] = g if rank == 4 or i == i_past else _heads_3d(ctx, g)
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
