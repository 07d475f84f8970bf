"""The machinery of adamax_onnx/passes/autodiff/rules/recurrent.py that LSTM, GRU and RNN share
(layout=1, sequence_lens, clip, activations, unsupported variants, models exported by torch),
against torch autograd of the ONNX definitions (:mod:`tests.rnncheck`)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.gradcheck import check_op
from tests.rnncheck import BATCH, IN, H, T, check_ort_vs_torch, recurrent_inputs, torch_rnn


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
            y, yh, yc = torch_rnn(
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

    inputs, order = recurrent_inputs(kind, 1, 0)
    with pytest.raises(GradientBuildError, match=kind):
        check_op(kind, inputs, attrs={"hidden_size": H, **attrs}, order=order, num_outputs=2)


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
    check_ort_vs_torch(kind, "bidirectional", 1, outs, lbr=lbr)


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
    check_ort_vs_torch(kind, direction, 0, outs, lbr=lbr, lens=[2, 3], peep=peep)


@pytest.mark.parametrize("kind, lbr", [("GRU", 0), ("GRU", 1), ("RNN", 0)])
def test_clip(kind, lbr):
    """clip bounds the pre-activations (onnx.reference ignores it: torch only)."""
    check_ort_vs_torch(kind, "bidirectional", 0, [0, 1], lbr=lbr, clip=0.6, lens=[3, 2])


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
    check_ort_vs_torch(kind, "bidirectional", 0, [0, 1], acts=acts)


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
