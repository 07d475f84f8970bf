"""Gradient rules of LSTM, GRU and RNN against float64 central differences and torch autograd.

The torch references follow the ONNX definitions (onnx.defs.get_schema("LSTM").doc, ...) step by
step; one test also checks them against torch.nn.LSTM / GRU with the weights mapped to the
ONNX gate order, so that they are not only our reading of the spec.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.gradcheck import check_graph, check_op, make_node

T, BATCH, IN, H = 3, 2, 3, 2


def _torch_rnn(
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


def _inputs(kind, nd, layout, *, bias=True, h0=True, c0=True, peep=False, seed=0):
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


def _check(kind, direction, layout, outs, *, lbr=0, opset=17, **kw):
    nd = 2 if direction == "bidirectional" else 1
    inputs, order = _inputs(kind, nd, layout, **kw)
    attrs = {"hidden_size": H, "direction": direction}
    if opset >= 14:
        attrs["layout"] = layout
    if kind == "GRU":
        attrs["linear_before_reset"] = lbr
    num_outputs = 3 if kind == "LSTM" else 2

    def torch_fn(X, W, R, B=None, initial_h=None, initial_c=None, P=None):
        res = _torch_rnn(
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


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_lstm(direction):
    _check("LSTM", direction, 0, [0, 1, 2])


@pytest.mark.parametrize("outs", [[0], [1], [2], [1, 2]])
def test_lstm_output_subsets(outs):
    _check("LSTM", "forward", 0, outs)


@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
def test_lstm_peepholes(direction):
    _check("LSTM", direction, 0, [0, 1, 2], peep=True)


def test_lstm_peepholes_no_initial_state():
    _check("LSTM", "reverse", 0, [0], peep=True, h0=False, c0=False)


def test_lstm_no_optional_inputs_opset13():
    _check("LSTM", "bidirectional", 0, [0, 2], bias=False, h0=False, c0=False, opset=13)


@pytest.mark.parametrize("lbr", [0, 1])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_gru(direction, lbr):
    _check("GRU", direction, 0, [0, 1], lbr=lbr)


@pytest.mark.parametrize("lbr", [0, 1])
def test_gru_subsets(lbr):
    _check("GRU", "reverse", 0, [1], lbr=lbr)
    _check("GRU", "forward", 0, [0], lbr=lbr, bias=False, h0=False, opset=22)


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_rnn(direction):
    _check("RNN", direction, 0, [0, 1])


def test_rnn_y_h_only_no_optional_inputs():
    _check("RNN", "forward", 0, [1], bias=False, h0=False, opset=13)


def test_lstm_without_y_output():
    """Y is not an output of the node: the rule runs the op again to get the hidden states."""
    inputs, order = _inputs("LSTM", 1, 0)
    node = make_node("LSTM", order, ["", "yh", "yc"], hidden_size=H)

    def torch_fn(X, W, R, B, initial_h, initial_c):
        _, yh, yc = _torch_rnn(
            "LSTM", X, W, R, B, initial_h, initial_c, direction="forward", layout=0
        )
        return yh, yc

    check_graph([node], inputs, ["yh", "yc"], torch_fn=torch_fn)


def test_torch_nn_agrees_with_reference():
    """Our torch reference of the ONNX ops matches torch.nn.LSTM / GRU (weights remapped)."""
    import torch

    torch.manual_seed(0)
    x = torch.randn(T, BATCH, IN, dtype=torch.float64)
    for kind, cls, perm in (
        ("LSTM", torch.nn.LSTM, [0, 3, 1, 2]),  # torch ifgo -> onnx iofc
        ("GRU", torch.nn.GRU, [1, 0, 2]),  # torch rzn -> onnx zrh
    ):
        m = cls(IN, H, bidirectional=True).double()
        ws, rs, bs = [], [], []
        for sfx in ("", "_reverse"):

            def gates(t, perm=perm):
                return torch.cat([t.chunk(len(perm), 0)[p] for p in perm], 0)

            ws.append(gates(getattr(m, f"weight_ih_l0{sfx}")))
            rs.append(gates(getattr(m, f"weight_hh_l0{sfx}")))
            bs.append(
                torch.cat(
                    [gates(getattr(m, f"bias_ih_l0{sfx}")), gates(getattr(m, f"bias_hh_l0{sfx}"))]
                )
            )
        w, r, b = torch.stack(ws), torch.stack(rs), torch.stack(bs)
        with torch.no_grad():
            ref_y, ref_h = m(x)[:2]
            y, yh, yc = _torch_rnn(
                kind, x, w, r, b, None, None, direction="bidirectional", layout=0, lbr=1
            )
        # torch: [seq, batch, 2*hidden]; onnx: [seq, 2, batch, hidden]
        np.testing.assert_allclose(
            y.permute(0, 2, 1, 3).reshape(T, BATCH, 2 * H).numpy(), ref_y.numpy(), rtol=1e-10
        )
        ref_h = ref_h[0] if kind == "LSTM" else ref_h
        np.testing.assert_allclose(yh.numpy(), ref_h.numpy(), rtol=1e-10)


@pytest.mark.parametrize(
    "kind, attrs",
    [
        ("LSTM", {"clip": 1.0}),
        ("LSTM", {"input_forget": 1}),
        ("RNN", {"activations": ["Softsign"]}),
    ],
)
def test_unsupported_variants(kind, attrs):
    from adamax_onnx.passes.autodiff.errors import GradientBuildError

    inputs, order = _inputs(kind, 1, 0)
    with pytest.raises(GradientBuildError, match=kind):
        check_op(kind, inputs, attrs={"hidden_size": H, **attrs}, order=order, num_outputs=2)


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


def _check_ort_vs_torch(
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
    inputs, order = _inputs(kind, nd, layout, peep=peep)
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
        return _torch_rnn(
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


@pytest.mark.parametrize(
    "kind, lbr, outs",
    [
        ("LSTM", 0, [0, 1, 2]),
        ("LSTM", 0, [2]),
        ("GRU", 0, [0, 1]),
        ("GRU", 1, [0]),
        ("RNN", 0, [1]),
    ],
)
def test_layout1(kind, lbr, outs):
    _check_ort_vs_torch(kind, "bidirectional", 1, outs, lbr=lbr)


@pytest.mark.parametrize(
    "kind, lbr, direction, outs",
    [
        ("LSTM", 0, "forward", [0, 1, 2]),
        ("LSTM", 0, "reverse", [0, 1, 2]),
        ("LSTM", 0, "bidirectional", [1, 2]),
        ("LSTM+P", 0, "bidirectional", [0, 1, 2]),
        ("GRU", 0, "bidirectional", [0, 1]),
        ("GRU", 1, "bidirectional", [0, 1]),
        ("RNN", 0, "bidirectional", [0, 1]),
    ],
)
def test_sequence_lens(kind, lbr, direction, outs):
    peep = kind == "LSTM+P"
    kind = kind.replace("+P", "")
    _check_ort_vs_torch(kind, direction, 0, outs, lbr=lbr, lens=[2, 3], peep=peep)


@pytest.mark.parametrize("kind, lbr", [("GRU", 0), ("GRU", 1), ("RNN", 0)])
def test_clip(kind, lbr):
    """clip bounds the pre-activations (onnx.reference ignores it: torch only)."""
    _check_ort_vs_torch(kind, "bidirectional", 0, [0, 1], lbr=lbr, clip=0.6, lens=[3, 2])


@pytest.mark.parametrize(
    "kind, acts",
    [
        ("RNN", ["Relu", "Sigmoid"]),
        ("LSTM", ["Tanh", "Relu", "Sigmoid", "Sigmoid", "Tanh", "Relu"]),
        ("GRU", ["Tanh", "Relu", "Relu", "Sigmoid"]),
    ],
)
def test_other_activations(kind, acts):
    """onnx.reference knows only the default activations: checked against torch only."""
    _check_ort_vs_torch(kind, "bidirectional", 0, [0, 1], acts=acts)


@pytest.mark.parametrize(
    "cls, perm, kwargs",
    [
        ("LSTM", [0, 3, 1, 2], {"num_layers": 2, "bidirectional": True}),
        ("GRU", [1, 0, 2], {"bidirectional": True}),
        ("RNN", [0], {"batch_first": True}),
        ("RNN", [0], {"nonlinearity": "relu", "bidirectional": True}),
    ],
)
def test_torch_export_end_to_end(cls, perm, kwargs):
    """A torch.nn recurrent module exported by torch.onnx (TorchScript exporter): gradients of
    the input and of every weight/bias initializer match torch autograd."""
    import io
    import warnings

    import onnx
    import onnxruntime as ort
    import torch
    from onnx import helper, numpy_helper

    from adamax_onnx.passes.autodiff import differentiate

    torch.manual_seed(0)
    m = getattr(torch.nn, cls)(IN, H, **kwargs)
    x = torch.randn(BATCH, T, IN) if kwargs.get("batch_first") else torch.randn(T, BATCH, IN)
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            m,
            (x,),
            f,
            dynamo=False,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "A", 1: "B"}},
            opset_version=17,
        )
    model = onnx.load_from_string(f.getvalue())
    w_out = np.random.default_rng(0).standard_normal(tuple(m(x)[0].shape)).astype(np.float32)
    g = model.graph
    g.initializer.append(numpy_helper.from_array(w_out, "loss.w"))
    g.node.extend(
        [
            helper.make_node("Mul", ["y", "loss.w"], ["loss.t"]),
            helper.make_node("ReduceSum", ["loss.t"], ["loss"], keepdims=0),
        ]
    )
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("loss", onnx.TensorProto.FLOAT, []))
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer if i.name != "loss.w"}
    params = [k for k, v in inits.items() if v.dtype == np.float32 and v.ndim >= 2]
    grad_model = differentiate(model, "loss", ["x", *params])
    onnx.checker.check_model(grad_model, full_check=True)
    sess = ort.InferenceSession(grad_model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = dict(
        zip(
            ["x", *params],
            sess.run([f"{p}_grad" for p in ["x", *params]], {"x": x.numpy()}),
            strict=True,
        )
    )

    xt = x.clone().requires_grad_(True)
    (m(xt)[0] * torch.tensor(w_out)).sum().backward()
    np.testing.assert_allclose(got["x"], xt.grad.numpy(), rtol=1e-4, atol=1e-5)

    def gates(t):
        return torch.cat([t.chunk(len(perm), 0)[p] for p in perm], 0)

    sfxs = ["", "_reverse"] if kwargs.get("bidirectional") else [""]
    expected = []  # (value, grad) of the ONNX W, R, B of each layer
    for layer in range(kwargs.get("num_layers", 1)):
        ps = {
            n: [getattr(m, f"{n}_l{layer}{s}") for s in sfxs]
            for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        }
        for names in (["weight_ih"], ["weight_hh"], ["bias_ih", "bias_hh"]):
            val = torch.stack(
                [torch.cat([gates(ps[n][d]) for n in names]) for d in range(len(sfxs))]
            )
            grad = torch.stack(
                [torch.cat([gates(ps[n][d].grad) for n in names]) for d in range(len(sfxs))]
            )
            expected.append((val.detach().numpy(), grad.numpy()))
    matched = 0
    for p in params:
        for val, grad in expected:
            if inits[p].shape == val.shape and np.array_equal(inits[p], val):
                np.testing.assert_allclose(got[p], grad, rtol=1e-4, atol=1e-5, err_msg=p)
                matched += 1
    assert matched == len(expected)
