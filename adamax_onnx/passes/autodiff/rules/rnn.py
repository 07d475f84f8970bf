"""Gradient of RNN (the simple recurrence h_t = f(x_t W^T + h_{t-1} R^T + b)): one backward Scan
carries the hidden state gradient. The machinery shared with LSTM and GRU (directions, layouts,
sequence_lens) is in :mod:`.recurrent`.
"""

from __future__ import annotations

from ..registry import rule
from .recurrent import Body, RecurrentNode, dact, recurrent_gradients, scan, shift


def _rnn_dir(c: RecurrentNode, d, reverse, y_d, dy, dyh, h0):
    ctx = c.ctx
    w_d, r_d = c.pick(c.w, d, 0), c.pick(c.r, d, 0)
    hprev = shift(ctx, c.hidden_states(y_d, h0, reverse), h0, reverse)
    k = dact(ctx, c.acts[d], y_d, c.x)
    if c.clip is not None:  # the pre-activations, for the derivative of the clip
        a = c.pre_activations(hprev, d, w_d, r_d)
        k = c.times(k, c.clipped(a)[1])
    k = c.masked(k)

    body = Body(ctx, "rnn_grad_scan", c.dtype)
    dh_c = body.input("dh")
    dy_t = body.input("dy") if dy is not None else None
    k_t = body.input("k")
    dh = body.op("Add", dh_c, dy_t) if dy_t is not None else dh_c
    da = body.op("Mul", dh, k_t)
    dh_new = body.op("MatMul", da, r_d)
    scans = ([dy] if dy is not None else []) + [k]
    if c.lens is not None:
        dh_new = body.op("Add", dh_new, body.op("Mul", dh, body.input("keep")))
        scans.append(c.keep())
    dh0, da_all = scan(
        ctx, body, [dh_new, da], [dyh if dyh is not None else c.zeros()], scans, 1, not reverse
    )

    return c.gate_gradients(da_all, hprev, w_d, {"dh0": dh0})


@rule("RNN", since=7)
def rnn(ctx, dys):
    return recurrent_gradients(ctx, dys, "RNN", _rnn_dir)
