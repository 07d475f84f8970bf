"""Gradients of the recurrent ops LSTM, GRU and RNN (ONNX opset 7/14/22 forms).

The sequence length is symbolic in exported models, so the backward pass is a loop over time in
the graph: a ``Scan`` that runs against the forward direction, carries the gradients of the
hidden (and cell) state, and emits per step the gradient of the gate pre-activations. What does
not depend on the recurrence is done in bulk over all steps, outside the loop: the previous
hidden states are the forward output ``Y`` shifted by one step (with ``initial_h``), so the
gates are recomputed with two chained Gemms, and the gradients of ``X``, ``W``, ``R`` and
``B`` are one MatMul / Gemm / ReduceSum each over all steps. The loop bodies hold only the
recurrent part (one ``[batch, gates*hidden] x [gates*hidden, hidden]`` MatMul and a few
elementwise ops per step). LSTM also needs its cell states, which the op does not output: a
small elementwise forward ``Scan`` recomputes them (``c_t = f_t * c_{t-1} + i_t * g_t``).

Handled: layout 0 and 1; directions forward, reverse, bidirectional; optional ``B``,
``initial_h``, ``initial_c`` (differentiable), ``sequence_lens`` (steps past a sequence's
length are masked: zero gradient, the state gradient passes through unchanged); outputs
``Y``, ``Y_h``, ``Y_c`` in any subset; GRU ``linear_before_reset`` 0 and 1; LSTM peepholes
``P`` (differentiable); activations Sigmoid, Tanh, Relu in any slot; GRU/RNN ``clip`` (it
bounds the pre-activations). Unsupported: other activations, LSTM ``clip`` (onnxruntime's
first step does not match clipping the gate pre-activations) and LSTM ``input_forget``.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from ..errors import Unsupported
from ..registry import rule

_INT64_MAX = np.iinfo(np.int64).max

_DEFAULT_ACTIVATIONS = {
    "LSTM": ["sigmoid", "tanh", "tanh"],
    "GRU": ["sigmoid", "tanh"],
    "RNN": ["tanh"],
}
_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
#: Activations whose derivative is written with the output y (ONNX names, lower case).
_ACT_OPS = {"sigmoid": "Sigmoid", "tanh": "Tanh", "relu": "Relu"}


def _dact(ctx, name: str, y, like):
    """f'(a) from y = f(a)."""
    if name == "relu":
        return ctx.op("Cast", ctx.op("Greater", y, ctx.scalar(0.0, like)), to=ctx.dtype(like))
    y2 = ctx.op("Mul", y, y)
    if name == "sigmoid":
        return ctx.op("Sub", y, y2)
    return ctx.op("Sub", ctx.scalar(1.0, like), y2)


def _fresh(ctx, name: str) -> str:
    """A name unique in the whole model (outer graph, gradient nodes and loop bodies)."""
    return ctx._e.unique(f"{ctx._prefix}/{name}")


class _Body:
    """Builds a ``Scan`` body (an ``ir.Graph``) whose names are unique in the model.

    Body nodes may read tensors of the outer graph (weights) directly.
    """

    def __init__(self, ctx, label: str, dtype: ir.DataType) -> None:
        self.ctx = ctx
        self.base = _fresh(ctx, label)
        self.dtype = dtype
        self.inputs: list[ir.Value] = []
        self.nodes: list[ir.Node] = []

    def input(self, label: str) -> ir.Value:
        name = self.ctx._e.unique(f"{self.base}/{label}")
        # Every body input is a [batch, width] slice; onnxruntime wants the ranks known.
        v = ir.Value(name=name, type=ir.TensorType(self.dtype), shape=ir.Shape([None, None]))
        self.inputs.append(v)
        return v

    def op(self, op_type: str, *inputs: ir.Value, **attrs) -> ir.Value:
        name = self.ctx._e.unique(f"{self.base}/{op_type}")
        node = ir.Node(
            "",
            op_type,
            list(inputs),
            attributes=[ir.convenience.convert_attribute(k, v) for k, v in attrs.items()],
            num_outputs=1,
            name=name,
        )
        node.outputs[0].name = self.ctx._e.unique(f"{name}_out")
        self.nodes.append(node)
        return node.outputs[0]

    def graph(self, outputs: list[ir.Value]) -> ir.Graph:
        for o in outputs:
            if o.dtype is None:
                o.dtype = self.dtype
        return ir.Graph(self.inputs, outputs, nodes=self.nodes, name=self.base)


def _scan(ctx, body: _Body, outputs, states, scans, num_scan_outputs: int, reverse: bool):
    """Run ``body`` over the leading axis of ``scans``; returns final states + stacked outputs."""
    direction = 1 if reverse else 0
    return ctx.op_multi(
        "Scan",
        *states,
        *scans,
        num_outputs=len(states) + num_scan_outputs,
        body=body.graph(outputs),
        num_scan_inputs=len(scans),
        scan_input_directions=[direction] * len(scans),
        scan_output_directions=[direction] * num_scan_outputs,
    )


def _shift(ctx, seq, first, reverse: bool):
    """The state before each step: ``[first, seq[:-1]]``, or ``[seq[1:], first]`` in reverse.

    ``first`` None means zeros.
    """
    if reverse:
        rest = ctx.op("Slice", seq, ctx.i64([1]), ctx.i64([_INT64_MAX]), ctx.i64([0]))
    else:
        rest = ctx.op("Slice", seq, ctx.i64([0]), ctx.i64([-1]), ctx.i64([0]))
    if first is None:
        pads = [0, 0, 0, 1, 0, 0] if reverse else [1, 0, 0, 0, 0, 0]
        return ctx.op("Pad", rest, ctx.i64(pads))
    first = ctx.unsqueeze(first, [0])
    return (
        ctx.op("Concat", rest, first, axis=0) if reverse else ctx.op("Concat", first, rest, axis=0)
    )


class _Common:
    """What every direction shares: sizes, reshaped inputs, zeros, bulk weight gradients."""

    def __init__(self, ctx, kind: str) -> None:
        self.ctx = ctx
        self.kind = kind
        x, w, r = ctx.x(0), ctx.x(1), ctx.x(2)
        self.layout = int(ctx.attr("layout", 0))
        if self.layout not in (0, 1):
            raise Unsupported(f"layout={self.layout}")
        direction = ctx.attr("direction", "forward")
        if direction not in ("forward", "reverse", "bidirectional"):
            raise Unsupported(f"direction={direction!r}")
        self.direction = direction
        self.nd = 2 if direction == "bidirectional" else 1
        self.clip = ctx.attr("clip")
        if self.clip is not None and kind == "LSTM":
            raise Unsupported("clip is not supported for LSTM")
        acts = ctx.attr("activations")
        self.acts = _DEFAULT_ACTIVATIONS[kind] * self.nd
        if acts is not None:
            lowered = [a.lower() for a in acts]
            if len(lowered) != len(self.acts) or not set(lowered) <= set(_ACT_OPS):
                raise Unsupported(f"activations {acts} (supported: Sigmoid, Tanh, Relu)")
            self.acts = lowered
        if kind == "LSTM":
            if int(ctx.attr("input_forget", 0)) != 0:
                raise Unsupported("input_forget=1 is not supported")
        self.lens = ctx.x(4)
        if self.lens is not None:
            lens = ctx.const_input(4)
            t_dim = (ctx.dims(x) or [None, None])[self.layout]
            if lens is not None and isinstance(t_dim, int) and np.all(lens == t_dim):
                self.lens = None  # every sequence is full: nothing to mask
        hidden = ctx.attr("hidden_size")
        if hidden is None:
            rd = ctx.dims(r)
            hidden = rd[-1] if rd is not None else None
            if not isinstance(hidden, int):
                raise Unsupported("hidden_size is unknown")
        self.H = int(hidden)
        self.G = _GATES[kind] * self.H
        self.dtype = ctx.dtype(x)
        self.x = x
        self.w, self.r, self.b = w, r, ctx.x(3)
        # X as [seq, batch, input].
        self.x3 = x if self.layout == 0 else ctx.op("Transpose", x, perm=[1, 0, 2])
        self._rows: dict = {}
        self._steps: dict = {}
        self._zeros = None
        self._mask = None
        self._keep = None

    def mask(self):
        """(bool, float) masks [seq, batch, 1] of the steps within each sequence's length."""
        if self._mask is None:
            ctx = self.ctx
            steps = ctx.op("Squeeze", ctx.shape(self.x, self.layout, self.layout + 1), ctx.i64([0]))
            t = ctx.unsqueeze(ctx.op("Range", ctx.i64(0), steps, ctx.i64(1)), [1, 2])
            lens = ctx.unsqueeze(ctx.op("Cast", self.lens, to=ir.DataType.INT64), [0, 2])
            mb = ctx.op("Less", t, lens)
            self._mask = (mb, ctx.op("Cast", mb, to=self.dtype))
        return self._mask

    def masked(self, *vs):
        """``vs`` times the float mask (unchanged without sequence_lens)."""
        if self.lens is None:
            return vs if len(vs) > 1 else vs[0]
        mf = self.mask()[1]
        out = tuple(self.ctx.op("Mul", v, mf) for v in vs)
        return out if len(out) > 1 else out[0]

    def where_valid(self, v, other):
        """``v`` within the sequence lengths, ``other`` (a scalar) past them."""
        if self.lens is None:
            return v
        return self.ctx.op("Where", self.mask()[0], v, other)

    def clipped(self, a):
        """(a clipped to [-clip, clip] as the op does, the derivative of the clip) or (a, None)."""
        if self.clip is None:
            return a, None
        ctx, bound = self.ctx, float(self.clip)
        inside = ctx.op("Less", ctx.op("Abs", a), ctx.scalar(bound, self.x))
        ind = ctx.op("Cast", inside, to=self.dtype)
        return ctx.op("Clip", a, ctx.scalar(-bound, self.x), ctx.scalar(bound, self.x)), ind

    def times(self, v, ind):
        return v if ind is None else self.ctx.op("Mul", v, ind)

    def keep(self):
        """1 - mask: the state gradient passes unchanged through steps past the length."""
        if self._keep is None:
            self._keep = self.ctx.op("Sub", self.ctx.scalar(1.0, self.x), self.mask()[1])
        return self._keep

    def hidden_states(self, y_d, h0, reverse):
        """The hidden state after each step: Y, except past the length of a reversed
        sequence, where the state is still the initial one (Y is 0 there)."""
        if self.lens is None or not reverse or h0 is None:
            return y_d
        return self.ctx.op("Add", y_d, self.ctx.op("Mul", self.keep(), h0))

    # -- per direction slices --------------------------------------------------------------
    def pick(self, v, d: int, axis: int):
        return self.ctx.op("Gather", v, self.ctx.i64(d), axis=axis)

    def seq_dir(self, y, d: int):
        """Direction ``d`` of a Y-shaped tensor as [seq, batch, hidden]."""
        if self.layout == 0:
            return self.pick(y, d, 1)
        return self.ctx.op("Transpose", self.pick(y, d, 2), perm=[1, 0, 2])

    def state_dir(self, s, d: int):
        """Direction ``d`` of a Y_h-shaped tensor as [batch, hidden]."""
        return None if s is None else self.pick(s, d, 0 if self.layout == 0 else 1)

    def zeros(self):
        """Zeros of [batch, hidden]."""
        if self._zeros is None:
            ctx = self.ctx
            b_axis = 1 if self.layout == 0 else 0
            shape = ctx.op(
                "Concat", ctx.shape(self.x, b_axis, b_axis + 1), ctx.i64([self.H]), axis=0
            )
            self._zeros = ctx.op("Expand", ctx.scalar(0.0, self.x), shape)
        return self._zeros

    # -- bulk helpers ----------------------------------------------------------------------
    def rows(self, v, width):
        """[seq, batch, width] -> [seq*batch, width]; width an int or an int64 [1] tensor."""
        key = id(v)
        if key not in self._rows:
            if isinstance(width, int):
                self._rows[key] = self.ctx.reshape(v, [-1, width])
            else:
                shape = self.ctx.op("Concat", self.ctx.i64([-1]), width, axis=0)
                self._rows[key] = self.ctx.reshape(v, shape)
        return self._rows[key]

    def x2(self):
        return self.rows(self.x3, self.ctx.shape(self.x, 2, 3))

    def steps(self, v2, width: int):
        """[seq*batch, width] -> [seq, batch, width]."""
        if width not in self._steps:
            ctx = self.ctx
            b_axis = 1 if self.layout == 0 else 0
            batch = ctx.shape(self.x, b_axis, b_axis + 1)
            self._steps[width] = ctx.op("Concat", ctx.i64([-1]), batch, ctx.i64([width]), axis=0)
        return self.ctx.reshape(v2, self._steps[width])

    def affine(self, v, v_width, m, bias=None):
        """rows(v) @ m^T + bias as [seq*batch, n] (one Gemm; ``bias`` [n] or [seq*batch, n])."""
        args = [self.x2() if v is self.x3 else self.rows(v, v_width), m]
        if bias is not None:
            args.append(bias)
        return self.ctx.op("Gemm", *args, transB=1)

    def outer(self, da, v, da_width: int, v_width):
        """sum over steps and batch of da^T v: [da_width, v_width]."""
        v2 = self.x2() if v is self.x3 else self.rows(v, v_width)
        return self.ctx.op("Gemm", self.rows(da, da_width), v2, transA=1)

    def bias_sum(self, da):
        return self.ctx.reduce_sum(da, [0, 1], keepdims=False)


def _lstm_dir(c: _Common, d, reverse, y_d, dy, dyh, dyc, h0, c0):
    ctx, H = c.ctx, c.H
    fa, ga, ha = c.acts[3 * d : 3 * d + 3]  # gates, cell input, cell output
    w_d, r_d = c.pick(c.w, d, 0), c.pick(c.r, d, 0)
    hprev = _shift(ctx, c.hidden_states(y_d, h0, reverse), h0, reverse)
    bias = None
    if c.b is not None:
        bias = ctx.op("Add", *ctx.split(c.pick(c.b, d, 0), [c.G, c.G], 0, 2))
    a = c.steps(c.affine(hprev, H, r_d, c.affine(c.x3, None, w_d, bias)), c.G)
    c_init = c0 if c0 is not None else c.zeros()
    peep = ctx.x(7)
    if peep is None:
        a_s, a_g = ctx.split(a, [3 * H, H], -1, 2)
        s = ctx.op(_ACT_OPS[fa], a_s)  # i, o, f
        g = ctx.op(_ACT_OPS[ga], a_g)
        i, o, f = ctx.split(s, [H, H, H], -1, 3)
        ig = c.masked(ctx.op("Mul", i, g))
        f = c.where_valid(f, ctx.scalar(1.0, c.x))  # the cell state holds past the length

        # Forward loop: the cell states c_t = f_t * c_{t-1} + i_t * g_t.
        body = _Body(ctx, "cell_scan", c.dtype)
        c_prev, f_t, ig_t = body.input("c_prev"), body.input("f"), body.input("ig")
        c_new = body.op("Add", body.op("Mul", f_t, c_prev), ig_t)
        c_seq = body.op("Identity", c_new)
        _, cells = _scan(ctx, body, [c_new, c_seq], [c_init], [f, ig], 1, reverse)
        cprev = _shift(ctx, cells, c0, reverse)
    else:
        # Peepholes: i and f read c_{t-1}, o reads c_t; the loop computes i, f and c.
        p_i, p_o, p_f = ctx.split(c.pick(peep, d, 0), [H, H, H], 0, 3)
        a_i, a_o, a_f, a_g = ctx.split(a, [H, H, H, H], -1, 4)
        g = ctx.op(_ACT_OPS[ga], a_g)
        body = _Body(ctx, "cell_scan", c.dtype)
        c_prev = body.input("c_prev")
        a_i_t, a_f_t, g_t = body.input("a_i"), body.input("a_f"), body.input("g")
        i_t = body.op(_ACT_OPS[fa], body.op("Add", a_i_t, body.op("Mul", c_prev, p_i)))
        f_t = body.op(_ACT_OPS[fa], body.op("Add", a_f_t, body.op("Mul", c_prev, p_f)))
        c_new = body.op("Add", body.op("Mul", f_t, c_prev), body.op("Mul", i_t, g_t))
        scans = [a_i, a_f, g]
        if c.lens is not None:  # the cell state holds past the length
            m_t, keep_t = body.input("mask"), body.input("keep")
            c_new = body.op("Add", body.op("Mul", c_new, m_t), body.op("Mul", c_prev, keep_t))
            scans += [c.mask()[1], c.keep()]
        c_seq = body.op("Identity", c_new)
        outs = [c_new, c_seq, i_t, f_t]
        _, cells, i, f = _scan(ctx, body, outs, [c_init], scans, 3, reverse)
        cprev = _shift(ctx, cells, c0, reverse)
        o = ctx.op(_ACT_OPS[fa], ctx.op("Add", a_o, ctx.op("Mul", cells, p_o)))
        s = ctx.op("Concat", i, o, f, axis=-1)
    tc = ctx.op(_ACT_OPS[ha], cells)

    # d a_{i,o,f,g} = [dc, dh, dc, dc] * k, with dc the total cell gradient of the step.
    one = ctx.scalar(1.0, c.x)
    k_iof = ctx.op("Mul", _dact(ctx, fa, s, c.x), ctx.op("Concat", g, tc, cprev, axis=-1))
    k_g = ctx.op("Mul", i, _dact(ctx, ga, g, c.x))
    k = ctx.op("Concat", k_iof, k_g, axis=-1)
    k2 = ctx.op("Mul", o, _dact(ctx, ha, tc, c.x))  # dc += dh * k2
    if peep is not None:
        # c_t also reaches o_t (dc += da_o p_o), c_{t-1} reaches i_t, f_t (+= da_i p_i + da_f p_f).
        k_i, k_o, k_f = ctx.split(k_iof, [H, H, H], -1, 3)
        k2 = ctx.op("Add", k2, ctx.op("Mul", k_o, p_o))
        f = ctx.op("Add", f, ctx.op("Add", ctx.op("Mul", k_i, p_i), ctx.op("Mul", k_f, p_f)))
        f = c.where_valid(f, one)
    k, k2 = c.masked(k, k2)

    body = _Body(ctx, "lstm_grad_scan", c.dtype)
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
    dh0, dc0, da_all = _scan(ctx, body, [dh_new, dc_new, da], states, scans, 1, not reverse)

    out = {"dh0": dh0, "dc0": dc0}
    if ctx.needs(0):
        out["dx"] = ctx.op("MatMul", da_all, w_d)
    if ctx.needs(1):
        out["dw"] = c.outer(da_all, c.x3, c.G, None)
    if ctx.needs(2):
        out["dr"] = c.outer(da_all, hprev, c.G, H)
    if ctx.needs(3):
        db = c.bias_sum(da_all)
        out["db"] = ctx.op("Concat", db, db, axis=0)
    if peep is not None and ctx.needs(7):
        da_iof = ctx.op("Slice", da_all, ctx.i64([0]), ctx.i64([3 * H]), ctx.i64([2]))
        states = ctx.op("Concat", cprev, cells, cprev, axis=-1)
        out["dp"] = c.bias_sum(ctx.op("Mul", da_iof, states))
    return out


def _gru_dir(c: _Common, d, reverse, y_d, dy, dyh, h0):
    ctx, H = c.ctx, c.H
    lbr = int(ctx.attr("linear_before_reset", 0))
    fa, ga = c.acts[2 * d : 2 * d + 2]
    w_d, r_d = c.pick(c.w, d, 0), c.pick(c.r, d, 0)
    hprev = _shift(ctx, c.hidden_states(y_d, h0, reverse), h0, reverse)
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
    zr = ctx.op(_ACT_OPS[fa], zr_pre)
    z, r = ctx.split(zr, [H, H], -1, 2)
    if lbr:
        h_pre, ind_h = c.clipped(ctx.op("Add", xw_h, ctx.op("Mul", r, hr_h)))
        hh = ctx.op(_ACT_OPS[ga], h_pre)
    else:
        rh = ctx.op("Mul", r, hprev)
        a_h = ctx.op("Add", xw_h, c.steps(c.affine(rh, H, r_h, rb_h), H))
        h_pre, ind_h = c.clipped(a_h)
        hh = ctx.op(_ACT_OPS[ga], h_pre)

    # h_t = (1 - z) * hh + z * h_{t-1}
    dzr = c.times(_dact(ctx, fa, zr, c.x), ind_zr)
    dz, dr = ctx.split(dzr, [H, H], -1, 2)
    kz = ctx.op("Mul", ctx.op("Sub", hprev, hh), dz)
    kh = ctx.op("Mul", ctx.op("Sub", one, z), c.times(_dact(ctx, ga, hh, c.x), ind_h))
    # Past a sequence's length: no pre-activation gradient, and z = 1 passes dh through.
    z_state = c.where_valid(z, one)

    body = _Body(ctx, "gru_grad_scan", c.dtype)
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
        dh0, dh_all = _scan(
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
        dh0, dxw = _scan(
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


def _rnn_dir(c: _Common, d, reverse, y_d, dy, dyh, h0):
    ctx, H = c.ctx, c.H
    w_d, r_d = c.pick(c.w, d, 0), c.pick(c.r, d, 0)
    hprev = _shift(ctx, c.hidden_states(y_d, h0, reverse), h0, reverse)
    k = _dact(ctx, c.acts[d], y_d, c.x)
    if c.clip is not None:  # the pre-activations, for the derivative of the clip
        bias = None
        if c.b is not None:
            bias = ctx.op("Add", *ctx.split(c.pick(c.b, d, 0), [c.G, c.G], 0, 2))
        a = c.steps(c.affine(hprev, H, r_d, c.affine(c.x3, None, w_d, bias)), c.G)
        k = c.times(k, c.clipped(a)[1])
    k = c.masked(k)

    body = _Body(ctx, "rnn_grad_scan", c.dtype)
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
    dh0, da_all = _scan(
        ctx, body, [dh_new, da], [dyh if dyh is not None else c.zeros()], scans, 1, not reverse
    )

    out = {"dh0": dh0}
    if ctx.needs(0):
        out["dx"] = ctx.op("MatMul", da_all, w_d)
    if ctx.needs(1):
        out["dw"] = c.outer(da_all, c.x3, c.G, None)
    if ctx.needs(2):
        out["dr"] = c.outer(da_all, hprev, c.G, H)
    if ctx.needs(3):
        db = c.bias_sum(da_all)
        out["db"] = ctx.op("Concat", db, db, axis=0)
    return out


def _recurrent(ctx, dys, kind: str):
    c = _Common(ctx, kind)
    dys = list(dys) + [None] * 3
    dy, dyh, dyc = dys[0], dys[1], dys[2] if kind == "LSTM" else None
    y = ctx.y(0)
    if y is None:  # Y is not an output of the node: run the op again for it.
        node = ctx.node
        attrs = {k: ir.Attr(a.name, a.type, a.value) for k, a in node.attributes.items()}
        y = ctx.op(node.op_type, *node.inputs, **attrs)
    h0_all = ctx.x(5)
    c0_all = ctx.x(6) if kind == "LSTM" else None

    results = []
    for d in range(c.nd):
        reverse = c.direction == "reverse" or d == 1
        y_d = c.seq_dir(y, d)
        dy_d = c.masked(c.seq_dir(dy, d)) if dy is not None else None
        h0 = c.state_dir(h0_all, d)
        if kind == "LSTM":
            res = _lstm_dir(
                c,
                d,
                reverse,
                y_d,
                dy_d,
                c.state_dir(dyh, d),
                c.state_dir(dyc, d),
                h0,
                c.state_dir(c0_all, d),
            )
        elif kind == "GRU":
            res = _gru_dir(c, d, reverse, y_d, dy_d, c.state_dir(dyh, d), h0)
        else:
            res = _rnn_dir(c, d, reverse, y_d, dy_d, c.state_dir(dyh, d), h0)
        results.append(res)

    def stack(key, axis):
        parts = [ctx.unsqueeze(res[key], [axis]) for res in results]
        return parts[0] if len(parts) == 1 else ctx.op("Concat", *parts, axis=axis)

    grads: list = [None] * 8
    if ctx.needs(0):
        dx = results[0]["dx"]
        for res in results[1:]:
            dx = ctx.op("Add", dx, res["dx"])
        grads[0] = dx if c.layout == 0 else ctx.op("Transpose", dx, perm=[1, 0, 2])
    for i, key in ((1, "dw"), (2, "dr"), (3, "db"), (7, "dp")):
        if ctx.needs(i) and ctx.x(i) is not None:
            grads[i] = stack(key, 0)
    state_axis = 0 if c.layout == 0 else 1
    if h0_all is not None and ctx.needs(5):
        grads[5] = stack("dh0", state_axis)
    if c0_all is not None and ctx.needs(6):
        grads[6] = stack("dc0", state_axis)
    return grads


@rule("LSTM", since=7)
def lstm(ctx, dys):
    return _recurrent(ctx, dys, "LSTM")


@rule("GRU", since=7)
def gru(ctx, dys):
    return _recurrent(ctx, dys, "GRU")


@rule("RNN", since=7)
def rnn(ctx, dys):
    return _recurrent(ctx, dys, "RNN")
