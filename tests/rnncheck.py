"""Check the gradients of LSTM, GRU and RNN against torch references of the ONNX definitions.

The torch references follow the ONNX definitions (onnx.defs.get_schema("LSTM").doc, ...) step by
step; tests/passes/autodiff/rules/test_recurrent.py also checks them against torch.nn.LSTM / GRU
with the weights mapped to the ONNX gate order, so that they are not only our reading of the spec.
:func:`check_recurrent` runs :func:`tests.gradcheck.check_op` (float64 central differences and
torch autograd); :func:`check_ort_vs_torch` covers what central differences cannot
(sequence_lens, layout=1, clip, other activations).
"""

from __future__ import annotations

import numpy as np

from tests.gradcheck import check_op, make_node

__all__ = [
    "BATCH",
    "H",
    "IN",
    "T",
    "check_ort_vs_torch",
    "check_recurrent",
    "recurrent_inputs",
    "torch_rnn",
]

T, BATCH, IN, H = 3, 2, 3, 2


def torch_rnn(
    kind,
    x,
    w,
    r,
    b,
    h0,
    c0,
    *,
    direction,
    layout,
    lbr=0,
    lens=None,
    acts=None,
    peep=None,
    clip=None,
):
    """Y, Y_h, Y_c of the ONNX op, from its definition (float64 torch).

    ``lens`` (sequence_lens): steps at or past a sequence's length leave the state unchanged
    and output zeros (a reversed sequence starts at its last valid step)."""
    import torch

    if layout == 1:
        x = x.transpose(0, 1)
        h0 = None if h0 is None else h0.transpose(0, 1)
        c0 = None if c0 is None else c0.transpose(0, 1)
    nd = w.shape[0]
    hidden = r.shape[-1]
    ng = {"LSTM": 4, "GRU": 3, "RNN": 1}[kind]
    steps, batch = x.shape[0], x.shape[1]
    ys, yhs, ycs = [], [], []
    for d in range(nd):
        rev = direction == "reverse" or d == 1
        wd, rd = w[d], r[d]
        bd = b[d] if b is not None else torch.zeros(2 * ng * hidden, dtype=x.dtype)
        wb, rb = bd[: ng * hidden], bd[ng * hidden :]
        h = h0[d] if h0 is not None else torch.zeros(batch, hidden, dtype=x.dtype)
        slot = {"LSTM": 3, "GRU": 2, "RNN": 1}[kind]
        default = {"LSTM": ["sigmoid", "tanh", "tanh"], "GRU": ["sigmoid", "tanh"], "RNN": ["tanh"]}
        names = (acts or default[kind] * nd)[slot * d : slot * d + slot] + [None] * 2
        fa, ga, ha = (_act(a, clip) if a else None for a in names[:3])
        c = c0[d] if c0 is not None else torch.zeros(batch, hidden, dtype=x.dtype)
        out = [None] * steps
        order = range(steps - 1, -1, -1) if rev else range(steps)
        for t in order:
            xt = x[t]
            h_old, c_old = h, c
            if kind == "LSTM":
                g = xt @ wd.T + h @ rd.T + wb + rb
                i, o, f, cc = g.split(hidden, -1)
                if peep is not None:
                    pi, po, pf = peep[d].split(hidden)
                    i, f = i + pi * c, f + pf * c
                i, f, cc = fa(i), fa(f), ga(cc)
                c = f * c + i * cc
                o = fa(o + po * c) if peep is not None else fa(o)
                h = o * ha(c)
            elif kind == "GRU":
                wz, wr, wh = wd.split(hidden, 0)
                rz, rr, rh = rd.split(hidden, 0)
                wbz, wbr, wbh = wb.split(hidden)
                rbz, rbr, rbh = rb.split(hidden)
                z = fa(xt @ wz.T + h @ rz.T + wbz + rbz)
                rg = fa(xt @ wr.T + h @ rr.T + wbr + rbr)
                if lbr:
                    hh = ga(xt @ wh.T + rg * (h @ rh.T + rbh) + wbh)
                else:
                    hh = ga(xt @ wh.T + (rg * h) @ rh.T + rbh + wbh)
                h = (1 - z) * hh + z * h
            else:
                h = fa(xt @ wd.T + h @ rd.T + wb + rb)
            out[t] = h
            if lens is not None:
                m = (t < lens).to(x.dtype)[:, None]
                h = m * h + (1 - m) * h_old
                c = m * c + (1 - m) * c_old
                out[t] = m * out[t]
        ys.append(torch.stack(out, 0))
        yhs.append(h)
        ycs.append(c)
    y = torch.stack(ys, 1)  # [seq, nd, batch, hidden]
    yh, yc = torch.stack(yhs, 0), torch.stack(ycs, 0)
    if layout == 1:
        y = y.permute(2, 0, 1, 3)
        yh, yc = yh.transpose(0, 1), yc.transpose(0, 1)
    return y, yh, yc


def _act(name, clip):
    """An activation of the ONNX op; ``clip`` bounds its input first."""
    import torch

    f = getattr(torch, name.lower())
    return f if clip is None else (lambda a: f(a.clamp(-clip, clip)))


def recurrent_inputs(kind, nd, layout, *, bias=True, h0=True, c0=True, peep=False, seed=0):
    rng = np.random.default_rng(seed)
    ng = {"LSTM": 4, "GRU": 3, "RNN": 1}[kind]
    xs = (T, BATCH, IN) if layout == 0 else (BATCH, T, IN)
    ss = (nd, BATCH, H) if layout == 0 else (BATCH, nd, H)
    inputs = {
        "X": rng.standard_normal(xs),
        "W": rng.standard_normal((nd, ng * H, IN)) * 0.6,
        "R": rng.standard_normal((nd, ng * H, H)) * 0.6,
    }
    order = ["X", "W", "R", "", "", "", ""]
    if bias:
        inputs["B"] = rng.standard_normal((nd, 2 * ng * H)) * 0.5
        order[3] = "B"
    if h0:
        inputs["initial_h"] = rng.standard_normal(ss) * 0.5
        order[5] = "initial_h"
    if kind == "LSTM" and c0:
        inputs["initial_c"] = rng.standard_normal(ss) * 0.5
        order[6] = "initial_c"
    if peep:
        inputs["P"] = rng.standard_normal((nd, 3 * H)) * 0.5
        order.append("P")
    if kind != "LSTM":
        order = order[:6]
    while order and order[-1] == "":
        order.pop()
    return inputs, order


def check_recurrent(kind, direction, layout, outs, *, lbr=0, opset=17, **kw):
    nd = 2 if direction == "bidirectional" else 1
    inputs, order = recurrent_inputs(kind, nd, layout, **kw)
    attrs = {"hidden_size": H, "direction": direction}
    if opset >= 14:
        attrs["layout"] = layout
    if kind == "GRU":
        attrs["linear_before_reset"] = lbr
    num_outputs = 3 if kind == "LSTM" else 2

    def torch_fn(X, W, R, B=None, initial_h=None, initial_c=None, P=None):
        res = torch_rnn(
            kind,
            X,
            W,
            R,
            B,
            initial_h,
            initial_c,
            direction=direction,
            layout=layout,
            lbr=lbr,
            peep=P,
        )
        return tuple(res[k] for k in outs)

    return check_op(
        kind,
        inputs,
        attrs=attrs,
        order=order,
        num_outputs=num_outputs,
        loss_outputs=outs,
        torch_fn=torch_fn,
        opset=opset,
    )


def _to_layout0(model):
    """Rewrite layout=1 recurrent nodes as Transpose + layout-0 node + Transposes (same
    outputs): onnxruntime's CPU kernels refuse layout=1."""
    import onnx
    from onnx import helper

    nodes = []
    for n in model.graph.node:
        layout = next((a.i for a in n.attribute if a.name == "layout"), 0)
        if n.op_type not in ("LSTM", "GRU", "RNN") or layout == 0:
            nodes.append(n)
            continue
        ins = list(n.input)
        perm3 = [1, 0, 2]
        for k in (0, 5, 6):
            if k < len(ins) and ins[k]:
                nodes.append(
                    helper.make_node("Transpose", [ins[k]], [f"{n.name}_in{k}"], perm=perm3)
                )
                ins[k] = f"{n.name}_in{k}"
        outs = [f"{n.name}_out{k}" if o else "" for k, o in enumerate(n.output)]
        attrs = [a for a in n.attribute if a.name != "layout"]
        new = helper.make_node(n.op_type, ins, outs, name=n.name)
        new.attribute.extend(attrs)
        nodes.append(new)
        for k, o in enumerate(n.output):
            if o:
                perm = [2, 0, 1, 3] if k == 0 else perm3
                nodes.append(helper.make_node("Transpose", [outs[k]], [o], perm=perm))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.checker.check_model(model, full_check=True)
    return model


def check_ort_vs_torch(
    kind, direction, layout, outs, *, lbr=0, lens=None, acts=None, peep=False, clip=None
):
    """Gradients run in onnxruntime (float32) vs torch autograd of the ONNX definition, for
    what central differences cannot check: onnx.reference ignores sequence_lens, and
    onnxruntime's CPU kernels refuse layout=1 (the forward node of the gradient graph is then
    rewritten in layout 0, tests only). The forward outputs are compared too."""
    import onnx
    import onnxruntime as ort
    import torch
    from onnx import helper, numpy_helper

    from adamax_onnx.passes.autodiff import differentiate

    nd = 2 if direction == "bidirectional" else 1
    inputs, order = recurrent_inputs(kind, nd, layout, peep=peep)
    if lens is not None:
        order = order + [""] * max(0, 5 - len(order))
        order[4] = "sequence_lens"
    names = [f"y{k}" for k in range(3 if kind == "LSTM" else 2)]
    attrs = {"hidden_size": H, "direction": direction, "layout": layout}
    if kind == "GRU":
        attrs["linear_before_reset"] = lbr
    if acts is not None:
        attrs["activations"] = acts
    if clip is not None:
        attrs["clip"] = clip
    nodes = [make_node(kind, order, names, **attrs)]
    keys = ("X", "W", "R", "B", "initial_h", "initial_c")
    lens_t = None if lens is None else torch.tensor(lens)

    def reference(tensors):
        return torch_rnn(
            kind,
            *(tensors.get(k) for k in keys),
            direction=direction,
            layout=layout,
            lbr=lbr,
            lens=lens_t,
            acts=acts,
            peep=tensors.get("P"),
            clip=clip,
        )

    with torch.no_grad():
        ref = reference({k: torch.tensor(v) for k, v in inputs.items()})
    rng = np.random.default_rng(1)
    weights = {k: rng.standard_normal(tuple(ref[k].shape)) for k in outs}
    inits = [numpy_helper.from_array(weights[k].astype(np.float32), f"w{k}") for k in outs]
    terms = []
    for k in outs:
        nodes.append(make_node("Mul", [names[k], f"w{k}"], [f"t{k}"]))
        nodes.append(make_node("ReduceSum", [f"t{k}"], [f"s{k}"], keepdims=0))
        terms.append(f"s{k}")
    nodes.append(make_node("Sum", terms, ["loss"]))
    vis = []
    for k, v in inputs.items():
        dims = list(v.shape)
        if k == "X":
            dims[layout] = "T"
        vis.append(helper.make_tensor_value_info(k, onnx.TensorProto.FLOAT, dims))
    feeds = {k: v.astype(np.float32) for k, v in inputs.items()}
    if lens is not None:
        vis.append(helper.make_tensor_value_info("sequence_lens", onnx.TensorProto.INT32, ["N"]))
        feeds["sequence_lens"] = np.asarray(lens, np.int32)
    graph_outs = [helper.make_tensor_value_info("loss", onnx.TensorProto.FLOAT, [])]
    graph_outs += [
        helper.make_tensor_value_info(names[k], onnx.TensorProto.FLOAT, None) for k in outs
    ]
    model = helper.make_model(
        helper.make_graph(nodes, "g", vis, graph_outs, inits),
        opset_imports=[helper.make_opsetid("", 22 if layout else 17)],
        ir_version=10,
    )
    grad_model = differentiate(model, "loss", list(inputs))
    onnx.checker.check_model(grad_model, full_check=True)
    if layout:
        grad_model = _to_layout0(grad_model)
    sess = ort.InferenceSession(grad_model.SerializeToString(), providers=["CPUExecutionProvider"])
    res = sess.run([names[k] for k in outs] + [f"{k}_grad" for k in inputs], feeds)
    for k, y in zip(outs, res, strict=False):
        np.testing.assert_allclose(y, ref[k].numpy(), rtol=1e-5, atol=1e-6, err_msg=f"output {k}")
    got = res[len(outs) :]

    tensors = {k: torch.tensor(v, requires_grad=True) for k, v in inputs.items()}
    res = reference(tensors)
    sum((res[k] * torch.tensor(weights[k])).sum() for k in outs).backward()
    for (k, t), g in zip(tensors.items(), got, strict=True):
        ref = t.grad.numpy()
        scale = max(1.0, float(np.abs(ref).max()))
        np.testing.assert_allclose(g, ref, rtol=1e-4, atol=1e-5 * scale, err_msg=k)
