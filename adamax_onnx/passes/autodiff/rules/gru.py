"""Gradient of GRU (``linear_before_reset`` 0 and 1): one backward Scan carries the hidden state
gradient. The machinery shared with LSTM and RNN (directions, layouts, sequence_lens) is in
:mod:`.recurrent`.
"""

from __future__ import annotations

from ..registry import rule
from .recurrent import ACT_OPS, Body, RecurrentNode, dact, recurrent_gradients, scan, shift


def _gru_dir(c: RecurrentNode, d, reverse, y_d, dy, dyh, h0):
    ctx, H = c.ctx, c.H
    lbr = int(ctx.attr("linear_before_reset", 0))
    fa, ga = c.acts[2 * d : 2 * d + 2]
    w_d, r_d = c.pick(c.w, d, 0), c.pick(c.r, d, 0)
    hprev = shift(ctx, c.hidden_states(y_d, h0, reverse), h0, reverse)
    wb = rb = rb_zr = rb_h = None
    if c.b is not None:
        wb, rb = ctx.split(c.pick(c.b, d, 0), [c.G, c.G], 0, 2)
    xw = c.steps(c.affine(c.x3, None, w_d, wb), c.G)
    xw_zr, xw_h = ctx.split(xw, [2 * H, H], -1, 2)
    one = ctx.scalar(1.0, c.x)
    if lbr:
        hr = c.steps(c.affine(hprev, H, r_d, rb), c.G)
        hr_zr, hr_h = ctx.split(hr, [2 * H, H], -1, 2)
    else:
        r_zr, r_h = ctx.split(r_d, [2 * H, H], 0, 2)
        if rb is not None:
            rb_zr, rb_h = ctx.split(rb, [2 * H, H], 0, 2)
        hr_zr = c.steps(c.affine(hprev, H, r_zr, rb_zr), 2 * H)
    zr_pre, ind_zr = c.clipped(ctx.op("Add", xw_zr, hr_zr))
    zr = ctx.op(ACT_OPS[fa], zr_pre)
    z, r = ctx.split(zr, [H, H], -1, 2)
    if lbr:
        h_pre, ind_h = c.clipped(ctx.op("Add", xw_h, ctx.op("Mul", r, hr_h)))
        hh = ctx.op(ACT_OPS[ga], h_pre)
    else:
        rh = ctx.op("Mul", r, hprev)
        a_h = ctx.op("Add", xw_h, c.steps(c.affine(rh, H, r_h, rb_h), H))
        h_pre, ind_h = c.clipped(a_h)
        hh = ctx.op(ACT_OPS[ga], h_pre)

    # h_t = (1 - z) * hh + z * h_{t-1}
    dzr = c.times(dact(ctx, fa, zr, c.x), ind_zr)
    dz, dr = ctx.split(dzr, [H, H], -1, 2)
    kz = ctx.op("Mul", ctx.op("Sub", hprev, hh), dz)
    kh = ctx.op("Mul", ctx.op("Sub", one, z), c.times(dact(ctx, ga, hh, c.x), ind_h))
    # Past a sequence's length: no pre-activation gradient, and z = 1 passes dh through.
    z_state = c.where_valid(z, one)

    body = Body(ctx, "gru_grad_scan", c.dtype)
    dh_c = body.input("dh")
    dy_t = body.input("dy") if dy is not None else None
    if lbr:
        # Every pre-activation gradient is dh times a per-step factor.
        kr = ctx.op("Mul", ctx.op("Mul", kh, hr_h), dr)
        k = ctx.op("Concat", kz, kr, kh, axis=-1)  # d (x W^T + Wb)
        k2 = ctx.op("Concat", kz, kr, ctx.op("Mul", kh, r), axis=-1)  # d (h R^T + Rb)
        k, k2 = c.masked(k, k2)
        k2_t, z_t = body.input("k2"), body.input("z")
        dh = body.op("Add", dh_c, dy_t) if dy_t is not None else dh_c
        dg = body.op("Mul", body.op("Concat", dh, dh, dh, axis=-1), k2_t)
        dh_new = body.op("Add", body.op("MatMul", dg, r_d), body.op("Mul", dh, z_t))
        dh_seq = body.op("Identity", dh) if dy_t is None else dh
        scans = ([dy] if dy is not None else []) + [k2, z_state]
        dh0, dh_all = scan(
            ctx,
            body,
            [dh_new, dh_seq],
            [dyh if dyh is not None else c.zeros()],
            scans,
            1,
            not reverse,
        )
        d3 = ctx.op("Concat", dh_all, dh_all, dh_all, axis=-1)
        dxw = ctx.op("Mul", d3, k)
        dhr = ctx.op("Mul", d3, k2)
    else:
        kr = ctx.op("Mul", hprev, dr)
        kz, kh, kr = c.masked(kz, kh, kr)
        kz_t, kh_t, kr_t = body.input("kz"), body.input("kh"), body.input("kr")
        z_t, r_t = body.input("z"), body.input("r")
        dh = body.op("Add", dh_c, dy_t) if dy_t is not None else dh_c
        da_z = body.op("Mul", dh, kz_t)
        da_h = body.op("Mul", dh, kh_t)
        m = body.op("MatMul", da_h, r_h)  # d (r * h_{t-1})
        da_zr = body.op("Concat", da_z, body.op("Mul", m, kr_t), axis=-1)
        da = body.op("Concat", da_zr, da_h, axis=-1)
        dh_new = body.op(
            "Add",
            body.op("Add", body.op("Mul", dh, z_t), body.op("Mul", m, r_t)),
            body.op("MatMul", da_zr, r_zr),
        )
        scans = ([dy] if dy is not None else []) + [kz, kh, kr, z_state, r]
        dh0, dxw = scan(
            ctx, body, [dh_new, da], [dyh if dyh is not None else c.zeros()], scans, 1, not reverse
        )

    out = {"dh0": dh0}
    if ctx.needs(0):
        out["dx"] = ctx.op("MatMul", dxw, w_d)
    if ctx.needs(1):
        out["dw"] = c.outer(dxw, c.x3, c.G, None)
    if ctx.needs(2):
        if lbr:
            out["dr"] = c.outer(dhr, hprev, c.G, H)
        else:
            dxw_zr, dxw_h = ctx.split(dxw, [2 * H, H], -1, 2)
            out["dr"] = ctx.op(
                "Concat", c.outer(dxw_zr, hprev, 2 * H, H), c.outer(dxw_h, rh, H, H), axis=0
            )
    if ctx.needs(3):
        dwb = c.bias_sum(dxw)
        out["db"] = ctx.op("Concat", dwb, c.bias_sum(dhr) if lbr else dwb, axis=0)
    return out


@rule("GRU", since=7)
def gru(ctx, dys):
    return recurrent_gradients(ctx, dys, "GRU", _gru_dir)
