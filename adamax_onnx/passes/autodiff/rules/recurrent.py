"""What the gradients of LSTM, GRU and RNN (ONNX opset 7/14/22 forms) share: the Scan loops.

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

The cells (:mod:`.lstm`, :mod:`.gru`, :mod:`.rnn`) hold what differs per op: the gates and the
body of the backward loop; :func:`recurrent_gradients` runs one per direction.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from ..errors import Unsupported

__all__ = [
    "ACT_OPS",
    "Body",
    "RecurrentNode",
    "dact",
    "recurrent_gradients",
    "scan",
    "shift",
]

_INT64_MAX = np.iinfo(np.int64).max

_DEFAULT_ACTIVATIONS = {
    "LSTM": ["sigmoid", "tanh", "tanh"],
    "GRU": ["sigmoid", "tanh"],
    "RNN": ["tanh"],
}
_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
#: Activations whose derivative is written with the output y (ONNX names, lower case).
ACT_OPS = {"sigmoid": "Sigmoid", "tanh": "Tanh", "relu": "Relu"}


def dact(ctx, name: str, y, like):
    """f'(a) from y = f(a)."""
    if name == "relu":
        return ctx.op("Cast", ctx.op("Greater", y, ctx.scalar(0.0, like)), to=ctx.dtype(like))
    y2 = ctx.op("Mul", y, y)
    if name == "sigmoid":
        return ctx.op("Sub", y, y2)
    return ctx.op("Sub", ctx.scalar(1.0, like), y2)


class Body:
    """Builds a ``Scan`` body (an ``ir.Graph``) whose names are unique in the model.

    Body nodes may read tensors of the outer graph (weights) directly.
    """

    def __init__(self, ctx, label: str, dtype: ir.DataType) -> None:
        self.ctx = ctx
        self.base = ctx.unique_name(label, in_node=True)
        self.dtype = dtype
        self.inputs: list[ir.Value] = []
        self.nodes: list[ir.Node] = []

    def input(self, label: str) -> ir.Value:
        name = self.ctx.unique_name(f"{self.base}/{label}")
        # Every body input is a [batch, width] slice; onnxruntime wants the ranks known.
        v = ir.Value(name=name, type=ir.TensorType(self.dtype), shape=ir.Shape([None, None]))
        self.inputs.append(v)
        return v

    def op(self, op_type: str, *inputs: ir.Value, **attrs) -> ir.Value:
        name = self.ctx.unique_name(f"{self.base}/{op_type}")
        node = ir.Node(
            "",
            op_type,
            list(inputs),
            attributes=[ir.convenience.convert_attribute(k, v) for k, v in attrs.items()],
            num_outputs=1,
            name=name,
        )
        node.outputs[0].name = self.ctx.unique_name(f"{name}_out")
        self.nodes.append(node)
        return node.outputs[0]

    def graph(self, outputs: list[ir.Value]) -> ir.Graph:
        for o in outputs:
            if o.dtype is None:
                o.dtype = self.dtype
        return ir.Graph(self.inputs, outputs, nodes=self.nodes, name=self.base)


def scan(ctx, body: Body, outputs, states, scans, num_scan_outputs: int, reverse: bool):
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


def shift(ctx, seq, first, reverse: bool):
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


class RecurrentNode:
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
            if len(lowered) != len(self.acts) or not set(lowered) <= set(ACT_OPS):
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

    def pre_activations(self, hprev, d: int, w_d, r_d):
        """x W^T + h_{t-1} R^T + Wb + Rb of direction ``d`` (all gates): [seq, batch, gates*H]."""
        ctx, bias = self.ctx, None
        if self.b is not None:
            bias = ctx.op("Add", *ctx.split(self.pick(self.b, d, 0), [self.G, self.G], 0, 2))
        return self.steps(
            self.affine(hprev, self.H, r_d, self.affine(self.x3, None, w_d, bias)), self.G
        )

    def outer(self, da, v, da_width: int, v_width):
        """sum over steps and batch of da^T v: [da_width, v_width]."""
        v2 = self.x2() if v is self.x3 else self.rows(v, v_width)
        return self.ctx.op("Gemm", self.rows(da, da_width), v2, transA=1)

    def bias_sum(self, da):
        return self.ctx.reduce_sum(da, [0, 1], keepdims=False)

    def gate_gradients(self, da_all, hprev, w_d, out: dict) -> dict:
        """Into ``out``: dx, dW, dR and dB (Wb and Rb get the same sum) from the gradients of the
        pre-activations of every gate, ``da_all`` [seq, batch, gates*H], where the node needs
        them (LSTM and RNN; GRU's linear_before_reset splits R's part differently)."""
        ctx, H = self.ctx, self.H
        if ctx.needs(0):
            out["dx"] = ctx.op("MatMul", da_all, w_d)
        if ctx.needs(1):
            out["dw"] = self.outer(da_all, self.x3, self.G, None)
        if ctx.needs(2):
            out["dr"] = self.outer(da_all, hprev, self.G, H)
        if ctx.needs(3):
            db = self.bias_sum(da_all)
            out["db"] = ctx.op("Concat", db, db, axis=0)
        return out


def recurrent_gradients(ctx, dys, kind: str, backward):
    """The input gradients of a ``kind`` node (LSTM, GRU, RNN): ``backward(c, d, reverse, y_d,
    dy_d, dyh_d, h0_d[, dyc_d, c0_d])`` (LSTM: the cell state too) differentiates direction ``d``
    and returns its gradients by name (dx, dw, dr, db, dh0, dc0, dp); they are stacked here."""
    c = RecurrentNode(ctx, kind)
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
        dyh_d = c.state_dir(dyh, d)
        extra = (c.state_dir(dyc, d), c.state_dir(c0_all, d)) if kind == "LSTM" else ()
        results.append(backward(c, d, reverse, y_d, dy_d, dyh_d, h0, *extra))

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
