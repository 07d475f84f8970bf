"""Gradient rules of Softmax, LogSoftmax, SoftmaxCrossEntropyLoss, NegativeLogLikelihoodLoss."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper

from adamax_onnx.passes.autodiff import differentiate
from tests.gradcheck import check_op, run_gradients


def _rand(*shape, seed=0):
    return np.random.default_rng(seed + sum(shape)).standard_normal(shape)


@pytest.mark.parametrize("opset", [13, 18])
@pytest.mark.parametrize("axis", [None, -1, 0, 1])
@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
def test_softmax(op, axis, opset):
    attrs = {} if axis is None else {"axis": axis}
    dim = -1 if axis is None else axis
    fn = torch.softmax if op == "Softmax" else torch.log_softmax
    check_op(
        op,
        {"x": _rand(2, 3, 4)},
        attrs=attrs,
        opset=opset,
        torch_fn=lambda x: fn(x, dim),
    )


# -- losses ----------------------------------------------------------------------------------

C = 4


def _labels(shape, ignore=None, seed=0):
    lab = np.random.default_rng(seed).integers(0, C, size=shape).astype(np.int64)
    if ignore is not None:
        lab.flat[::3] = ignore  # some positions ignored, not all
    return lab


LOSS_CASES = [
    # (reduction, weighted, ignore_index, scores shape)
    ("mean", False, None, (5, C)),
    ("sum", False, None, (5, C)),
    ("none", False, None, (5, C)),
    ("mean", True, None, (5, C)),
    ("sum", True, None, (5, C)),
    ("none", True, None, (5, C)),
    ("mean", False, -100, (5, C)),
    ("mean", True, -100, (5, C)),
    ("none", True, 1, (5, C)),
    ("sum", False, 2, (5, C)),
    ("mean", False, None, (2, C, 3)),
    ("mean", True, -1, (2, C, 3, 2)),
    ("none", False, -100, (2, C, 3)),
]


def _inputs(weighted, ignore, shape):
    labels_shape = (shape[0], *shape[2:])
    inputs = {"x": _rand(*shape), "labels": _labels(labels_shape, ignore)}
    order = ["x", "labels"]
    consts = {}
    if weighted:
        consts["w"] = np.array([0.5, 1.5, 2.0, 0.25])
        order.append("w")
    return inputs, consts, order


def _attrs(reduction, ignore):
    attrs = {"reduction": reduction}
    if ignore is not None:
        attrs["ignore_index"] = ignore
    return attrs


def _case_id(case):
    r, w, i, s = case
    return f"{r}-{'w' if w else 'nw'}-ign{i}-{'x'.join(map(str, s))}"


SCE_CASES = [
    *[(case, lp) for case in LOSS_CASES for lp in ("unread", "read")],
    *[(case, "none") for case in LOSS_CASES[::3]],  # no log_prob output: softmax recomputed
]


@pytest.mark.parametrize(
    ("case", "log_prob"), SCE_CASES, ids=[f"{_case_id(c)}-{lp}" for c, lp in SCE_CASES]
)
def test_softmax_cross_entropy(case, log_prob):
    reduction, weighted, ignore, shape = case
    inputs, consts, order = _inputs(weighted, ignore, shape)

    def fn(x, labels, w=None):
        loss = F.cross_entropy(
            x,
            labels,
            weight=w,
            ignore_index=-100 if ignore is None else ignore,
            reduction=reduction,
        )
        return (loss, F.log_softmax(x, 1)) if log_prob == "read" else loss

    check_op(
        "SoftmaxCrossEntropyLoss",
        inputs,
        consts=consts,
        order=order,
        attrs=_attrs(reduction, ignore),
        num_outputs=1 if log_prob == "none" else 2,
        loss_outputs=[0, 1] if log_prob == "read" else [0],
        wrt=["x"],
        torch_fn=fn,
    )


@pytest.mark.parametrize("case", LOSS_CASES, ids=_case_id)
def test_negative_log_likelihood(case):
    reduction, weighted, ignore, shape = case
    inputs, consts, order = _inputs(weighted, ignore, shape)

    def fn(x, labels, w=None):
        return F.nll_loss(
            x,
            labels,
            weight=w,
            ignore_index=-100 if ignore is None else ignore,
            reduction=reduction,
        )

    check_op(
        "NegativeLogLikelihoodLoss",
        inputs,
        consts=consts,
        order=order,
        attrs=_attrs(reduction, ignore),
        wrt=["x"],
        torch_fn=fn,
    )


def test_log_prob_only():
    """The loss reads only the log_prob output of SoftmaxCrossEntropyLoss."""
    check_op(
        "SoftmaxCrossEntropyLoss",
        {"x": _rand(3, C), "labels": _labels((3,))},
        num_outputs=2,
        loss_outputs=[1],
        wrt=["x"],
        torch_fn=lambda x, labels: F.log_softmax(x, 1),
    )


def test_int32_labels_and_ignore_index_double():
    """int32 labels; the gradient graph runs in float64 too (OneHot has no double kernel)."""
    for op in ("SoftmaxCrossEntropyLoss", "NegativeLogLikelihoodLoss"):
        x = helper.make_tensor_value_info("x", TensorProto.DOUBLE, ["N", C])
        lab = helper.make_tensor_value_info("labels", TensorProto.INT32, ["N"])
        nodes = [helper.make_node(op, ["x", "labels"], ["loss"], ignore_index=-1)]
        graph = helper.make_graph(
            nodes, "g", [x, lab], [helper.make_tensor_value_info("loss", TensorProto.DOUBLE, [])]
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        xv = _rand(5, C)
        labels = np.array([0, 3, -1, 2, 1], dtype=np.int32)
        ours, _ = run_gradients(model, {"x": xv, "labels": labels}, ["x"])
        xt = torch.tensor(xv, requires_grad=True)
        inp = xt if op.startswith("Neg") else F.log_softmax(xt, 1)
        F.nll_loss(inp, torch.tensor(labels).long(), ignore_index=-1).backward()
        np.testing.assert_allclose(ours["x"], xt.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_cross_entropy_graph_is_small():
    """Mean SCE over [N, C]: no OneHot, no Softmax recomputed (exp of the log_prob output)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", C])
    lab = helper.make_tensor_value_info("labels", TensorProto.INT64, ["N"])
    nodes = [helper.make_node("SoftmaxCrossEntropyLoss", ["x", "labels"], ["loss", "lp"])]
    graph = helper.make_graph(
        nodes, "g", [x, lab], [helper.make_tensor_value_info("loss", TensorProto.FLOAT, [])]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    grad = differentiate(model, "loss", ["x"])
    ops = [n.op_type for n in grad.graph.node[1:]]
    # 10: the token count is ReduceProd(Shape) (the engine writes Size so: every EP has them)
    assert "Softmax" not in ops and "OneHot" not in ops and len(ops) <= 10, ops
    onnx.checker.check_model(grad, full_check=True)


# -- a whole model: transformer classifier + cross-entropy loss ----------------------------


def _torch_transformer(p, ids, labels, heads):
    """adamax_onnx.models.build_transformer's forward and AttachLoss's mean cross-entropy, in torch."""
    n, t = ids.shape
    d = p["embed.weight"].shape[1]

    def linear(x, name):
        return x @ p[f"{name}.weight"] + p[f"{name}.bias"]

    def ln(x, name):
        return F.layer_norm(x, (d,), p[f"{name}.weight"], p[f"{name}.bias"], eps=1e-5)

    x = p["embed.weight"][ids] + p["pos.weight"]
    h = ln(x, "ln1")
    q, k, v = (linear(h, f"attn.{s}").reshape(n, t, heads, d // heads) for s in "qkv")
    s = (q.permute(0, 2, 1, 3) @ k.permute(0, 2, 3, 1)) * p["attn.scale"]
    c = torch.softmax(s, -1) @ v.permute(0, 2, 1, 3)
    x1 = x + linear(c.permute(0, 2, 1, 3).reshape(n, t, d), "attn.out")
    f = linear(ln(x1, "ln2"), "ff1")
    g = f * (torch.erf(f * p["gelu.inv_sqrt2"]) + p["gelu.one"]) * p["gelu.half"]
    x2 = x1 + linear(g, "ff2")
    logits = linear(x2.mean(1), "head")
    return F.cross_entropy(logits, labels)


def test_transformer_with_cross_entropy_matches_torch():
    from adamax_onnx.models import build_transformer
    from adamax_onnx.passes.autodiff.registry import find_rule
    from adamax_onnx.passes.loss import AttachLoss

    model = AttachLoss("cross_entropy")(build_transformer(seed=3)).model
    ops = {n.op_type for n in model.graph.node}
    assert all(find_rule("", op, 17) for op in ops), "every op of the transformer has a rule"
    params = [
        i.name
        for i in model.graph.initializer
        if i.data_type == TensorProto.FLOAT and len(i.dims) > 0
    ]
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 16, size=(3, 8)).astype(np.int64)
    labels = rng.integers(0, 4, size=(3,)).astype(np.int64)
    ours, _ = run_gradients(model, {"input_ids": ids, "labels": labels}, params)

    consts = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    p = {
        k: torch.tensor(v.astype(np.float64), requires_grad=k in params)
        for k, v in consts.items()
        if v.dtype == np.float32
    }
    loss = _torch_transformer(p, torch.tensor(ids), torch.tensor(labels), heads=2)
    loss.backward()
    for name in params:
        ref = p[name].grad.numpy()
        np.testing.assert_allclose(
            ours[name],
            ref,
            rtol=2e-3,
            atol=2e-5 * max(1.0, float(np.abs(ref).max())),
            err_msg=f"d loss / d {name}",
        )


@pytest.mark.parametrize("op", ["SoftmaxCrossEntropyLoss", "NegativeLogLikelihoodLoss"])
def test_losses_at_opset_13(op):
    """Every op the rules emit is valid at the lowest opset (checker, full check)."""
    reduction, weighted, ignore, shape = ("mean", True, -1, (2, C, 3))
    inputs, consts, order = _inputs(weighted, ignore, shape)
    f = F.cross_entropy if op.startswith("Softmax") else F.nll_loss
    check_op(
        op,
        inputs,
        consts=consts,
        order=order,
        attrs=_attrs(reduction, ignore),
        wrt=["x"],
        opset=13,
        torch_fn=lambda x, labels, w: f(x, labels, weight=w, ignore_index=ignore),
    )
