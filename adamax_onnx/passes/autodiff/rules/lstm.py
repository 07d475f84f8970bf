"""Gradient of LSTM: the cell states are recomputed by a forward Scan (with peepholes, the
input and forget gates too), then one backward Scan carries the hidden and cell state gradients.
The machinery shared with GRU and RNN (directions, layouts, sequence_lens) is in :mod:`.recurrent`.
"""

from __future__ import annotations

from ..registry import rule
from .recurrent import ACT_OPS, Body, RecurrentNode, dact, recurrent_gradients, scan, shift


def _lstm_dir(c: RecurrentNode, d, reverse, y_d, dy, dyh, h0, dyc, c0):
    ctx, H = c.ctx, c.H
    fa, ga, ha = c.acts[3 * d : 3 * d + 3]  # gates, cell input, cell output
    w_d, r_d = c.pick(c.w, d, 0), c.pick(c.r, d, 0)
    hprev = shift(ctx, c.hidden_states(y_d, h0, reverse), h0, reverse)
    a = c.pre_activations(hprev, d, w_d, r_d)
    c_init = c0 if c0 is not None else c.zeros()
    peep = ctx.x(7)
    if peep is None:
        a_s, a_g = ctx.split(a, [3 * H, H], -1, 2)
        s = ctx.op(ACT_OPS[fa], a_s)  # i, o, f
        g = ctx.op(ACT_OPS[ga], a_g)
        i, o, f = ctx.split(s, [H, H, H], -1, 3)
        ig = c.masked(ctx.op("Mul", i, g))
        f = c.where_valid(f, ctx.scalar(1.0, c.x))  # the cell state holds past the length

        # Forward loop: the cell states c_t = f_t * c_{t-1} + i_t * g_t.
        body = Body(ctx, "cell_scan", c.dtype)
        c_prev, f_t, ig_t = body.input("c_prev"), body.input("f"), body.input("ig")
        c_new = body.op("Add", body.op("Mul", f_t, c_prev), ig_t)
        c_seq = body.op("Identity", c_new)
        _, cells = scan(ctx, body, [c_new, c_seq], [c_init], [f, ig], 1, reverse)
        cprev = shift(ctx, cells, c0, reverse)
    else:
        # Peepholes: i and f read c_{t-1}, o reads c_t; the loop computes i, f and c.
        p_i, p_o, p_f = ctx.split(c.pick(peep, d, 0), [H, H, H], 0, 3)
        a_i, a_o, a_f, a_g = ctx.split(a, [H, H, H, H], -1, 4)
        g = ctx.op(ACT_OPS[ga], a_g)
        body = Body(ctx, "cell_scan", c.dtype)
        c_prev = body.input("c_prev")
        a_i_t, a_f_t, g_t = body.input("a_i"), body.input("a_f"), body.input("g")
        i_t = body.op(ACT_OPS[fa], body.op("Add", a_i_t, body.op("Mul", c_prev, p_i)))
        f_t = body.op(ACT_OPS[fa], body.op("Add", a_f_t, body.op("Mul", c_prev, p_f)))
        c_new = body.op("Add", body.op("Mul", f_t, c_prev), body.op("Mul", i_t, g_t))
        scans = [a_i, a_f, g]
        if c.lens is not None:  # the cell state holds past the length
            m_t, keep_t = body.input("mask"), body.input("keep")
            c_new = body.op("Add", body.op("Mul", c_new, m_t), body.op("Mul", c_prev, keep_t))
            scans += [c.mask()[1], c.keep()]
        c_seq = body.op("Identity", c_new)
        outs = [c_new, c_seq, i_t, f_t]
        _, cells, i, f = scan(ctx, body, outs, [c_init], scans, 3, reverse)
        cprev = shift(ctx, cells, c0, reverse)
        o = ctx.op(ACT_OPS[fa], ctx.op("Add", a_o, ctx.op("Mul", cells, p_o)))
        s = ctx.op("Concat", i, o, f, axis=-1)
    tc = ctx.op(ACT_OPS[ha], cells)

    # d a_{i,o,f,g} = [dc, dh, dc, dc] * k, with dc the total cell gradient of the step.
    one = ctx.scalar(1.0, c.x)
    k_iof = ctx.op("Mul", dact(ctx, fa, s, c.x), ctx.op("Concat", g, tc, cprev, axis=-1))
    k_g = ctx.op("Mul", i, dact(ctx, ga, g, c.x))
    k = ctx.op("Concat", k_iof, k_g, axis=-1)
    k2 = ctx.op("Mul", o, dact(ctx, ha, tc, c.x))  # dc += dh * k2
    if peep is not None:
        # c_t also reaches o_t (dc += da_o p_o), c_{t-1} reaches i_t, f_t (+= da_i p_i + da_f p_f).
        k_i, k_o, k_f = ctx.split(k_iof, [H, H, H], -1, 3)
        k2 = ctx.op("Add", k2, ctx.op("Mul", k_o, p_o))
        f = ctx.op("Add", f, ctx.op("Add", ctx.op("Mul", k_i, p_i), ctx.op("Mul", k_f, p_f)))
        f = c.where_valid(f, one)
    k, k2 = c.masked(k, k2)

    body = Body(ctx, "lstm_grad_scan", c.dtype)
    dh_c, dc_c = body.input("dh"), body.input("dc")
    dy_t = body.input("dy") if dy is not None else None
    k_t, k2_t, f_t = body.input("k"), body.input("k2"), body.input("f")
    dh = body.op("Add", dh_c, dy_t) if dy_t is not None else dh_c
    dct = body.op("Add", dc_c, body.op("Mul", dh, k2_t))
    da = body.op("Mul", body.op("Concat", dct, dh, dct, dct, axis=-1), k_t)
    dh_new = body.op("MatMul", da, r_d)
    if c.lens is not None:
        keep_t = body.input("keep")
        dh_new = body.op("Add", dh_new, body.op("Mul", dh, keep_t))
    dc_new = body.op("Mul", dct, f_t)
    scans = ([dy] if dy is not None else []) + [k, k2, f]
    if c.lens is not None:
        scans.append(c.keep())
    states = [dyh if dyh is not None else c.zeros(), dyc if dyc is not None else c.zeros()]
    dh0, dc0, da_all = scan(ctx, body, [dh_new, dc_new, da], states, scans, 1, not reverse)

    out = c.gate_gradients(da_all, hprev, w_d, {"dh0": dh0, "dc0": dc0})
    if peep is not None and ctx.needs(7):
        da_iof = ctx.op("Slice", da_all, ctx.i64([0]), ctx.i64([3 * H]), ctx.i64([2]))
        states = ctx.op("Concat", cprev, cells, cprev, axis=-1)
        out["dp"] = c.bias_sum(ctx.op("Mul", da_iof, states))
    return out


@rule("LSTM", since=7)
def lstm(ctx, dys):
    return recurrent_gradients(ctx, dys, "LSTM", _lstm_dir)
