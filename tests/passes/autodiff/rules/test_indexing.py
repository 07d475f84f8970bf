"""Gradient rules of indexing ops (adamax_onnx/passes/autodiff/rules/indexing.py) against
float64 central differences and torch autograd, with a symbolic batch dim.

(Over 400 lines: the tests of the one rule module they mirror, for Gather, GatherElements,
GatherND, the scatters, TopK and CumSum.)
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import helper

from adamax_onnx.passes.autodiff.errors import GradientBuildError
from tests.gradcheck import check_graph, check_op

RNG = np.random.default_rng(0)


def rand(*shape):
    return RNG.standard_normal(shape)


def i64(*v):
    return np.array(v, dtype=np.int64)


def _torch_gather(x, ind, axis):
    """numpy.take semantics (ONNX Gather) with torch ops; negative indices count from the end."""
    d = x.shape[axis]
    ind = torch.as_tensor(ind).long() % d
    flat = x.index_select(axis, ind.reshape(-1))
    return flat.reshape(*x.shape[:axis], *ind.shape, *x.shape[axis + 1 :])


# -- Gather -----------------------------------------------------------------------------------
@pytest.mark.parametrize("opset", [13, 17])
def test_gather_embedding(opset):
    """A [V, D] embedding by [B, T] int64 token ids (repeated ids accumulate)."""
    ids = i64([1, 4, 1], [0, 1, 4])
    w = rand(5, 4)
    check_op(
        "Gather",
        {"ids": ids, "w": w},
        order=["w", "ids"],
        wrt=["w"],
        opset=opset,
        torch_fn=lambda ids, w: w[ids],
    )


@pytest.mark.parametrize("opset", [13, 17])
@pytest.mark.parametrize("index", [0, -1, 2])
def test_gather_scalar_index(opset, index):
    """x[:, index] on [B, T, D] (BERT's pooler, ViT's class token)."""
    x = rand(2, 3, 4)
    check_op(
        "Gather",
        {"x": x},
        consts={"i": np.array(index, dtype=np.int64)},
        attrs={"axis": 1},
        opset=opset,
        torch_fn=lambda x, i: x[:, index],
    )


@pytest.mark.parametrize("opset", [13, 17])
def test_gather_scalar_index_symbolic_axis(opset):
    x = rand(3, 2)
    for index in (1, -1):
        check_op(
            "Gather",
            {"x": x},
            consts={"i": np.array(index, dtype=np.int64)},
            attrs={"axis": 0},
            opset=opset,
            torch_fn=lambda x, i, index=index: x[index],
        )


@pytest.mark.parametrize("opset", [13, 16])
@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize(
    "ind",
    [
        np.array(1, dtype=np.int64),  # run-time scalar
        np.array([2, 0, 2, -1], dtype=np.int32),  # repeated and negative, int32
        np.array([[0, 1], [1, -2]], dtype=np.int64),  # rank 2
    ],
)
def test_gather_runtime_indices(opset, axis, ind):
    x = rand(3, 3, 3)
    check_op(
        "Gather",
        {"x": x, "i": ind},
        attrs={"axis": axis},
        opset=opset,
        torch_fn=lambda x, i: _torch_gather(x, i, axis % 3),
    )


@pytest.mark.parametrize("opset", [13, 17])
def test_gather_const_indices_rank2_axis2(opset):
    x = rand(2, 2, 4, 3)
    ind = i64([3, 0], [3, 3])
    check_op(
        "Gather",
        {"x": x},
        consts={"i": ind},
        attrs={"axis": 2},
        opset=opset,
        torch_fn=lambda x, i: _torch_gather(x, i, 2),
    )


# -- GatherElements / GatherND ----------------------------------------------------------------
@pytest.mark.parametrize("axis", [0, 1])  # onnx.reference mishandles a negative axis here
def test_gather_elements(axis):
    x = rand(3, 4)
    # onnx.reference wants the index as large as x on the other axes
    ind = i64([0, 2, 2, 1], [1, -1, 0, 0]) if axis == 0 else i64([3, 3], [1, -4], [2, 2])
    check_op(
        "GatherElements",
        {"x": x},
        consts={"i": ind},
        attrs={"axis": axis},
        torch_fn=lambda x, i: torch.gather(x, axis, i % x.shape[axis]),
    )


def test_gather_elements_needs_opset16():
    with pytest.raises(GradientBuildError, match="opset >= 16"):
        check_op("GatherElements", {"x": rand(2, 2)}, consts={"i": i64([0, 0], [1, 1])}, opset=15)


@pytest.mark.parametrize(
    "ind",
    [
        i64([0, 1], [2, 0], [0, 1]),  # full index tuples, repeated
        i64([2], [0], [2]),  # rows
        i64([[1, -1]], [[0, 0]]),  # rank 3 indices, negative
    ],
)
def test_gather_nd(ind):
    x = rand(3, 2)

    def ref(x, i):
        k = i.shape[-1]
        cols = [i[..., j] % x.shape[j] for j in range(k)]
        return x[tuple(cols)]

    check_op("GatherND", {"x": x}, consts={"i": ind}, torch_fn=ref)


@pytest.mark.parametrize(
    "ind", [i64([1], [0], [1]), i64([[1, 2], [1, 2]], [[0, 0], [0, 1]], [[1, 1], [1, 1]])]
)
def test_gather_nd_batch_dims1(ind):
    x = rand(3, 2, 3)  # batch 3 (symbolic)

    def ref(x, i):
        rows = []
        for b in range(x.shape[0]):
            k = i.shape[-1]
            cols = [i[b][..., j] for j in range(k)]
            rows.append(x[b][tuple(cols)])
        return torch.stack(rows)

    check_op("GatherND", {"x": x, "i": ind}, attrs={"batch_dims": 1}, torch_fn=ref)


# -- scatters ---------------------------------------------------------------------------------
@pytest.mark.parametrize("reduction", [None, "add"])
def test_scatter_nd(reduction):
    x, u = rand(4, 3), rand(2, 3)
    ind = i64([2], [0]) if reduction is None else i64([2], [2])
    attrs = {"reduction": reduction} if reduction else {}

    def ref(x, u, i):
        if reduction == "add":
            return x.index_put((i[:, 0],), u, accumulate=True)
        return x.index_put((i[:, 0],), u)

    check_op(
        "ScatterND",
        {"x": x, "u": u},
        consts={"i": ind},
        order=["x", "i", "u"],
        attrs=attrs,
        opset=16,
        torch_fn=ref,
    )


def test_scatter_nd_elements_tuples():
    x, u = rand(3, 3), rand(2)
    check_op(
        "ScatterND",
        {"x": x, "u": u},
        consts={"i": i64([0, 1], [2, -1])},
        order=["x", "i", "u"],
        opset=13,
        torch_fn=lambda x, u, i: x.index_put((i[:, 0], i[:, 1] % 3), u),
    )


@pytest.mark.parametrize("reduction", [None, "add"])
@pytest.mark.parametrize("axis", [0, 1])
def test_scatter_elements(reduction, axis):
    x, u = rand(3, 4), rand(2, 3)
    ind = i64([0, 2, 1], [1, 0, 2]) if axis == 0 else i64([3, 0, 1], [1, 2, 0])
    if reduction == "add":
        ind = i64([0, 0, 1], [0, 2, 0]) if axis == 0 else i64([1, 1, 3], [0, 0, 0])
    attrs = {"axis": axis, **({"reduction": reduction} if reduction else {})}

    def ref(x, u, i):
        if reduction == "add":
            return x.scatter_add(axis, i, u)
        return x.scatter(axis, i, u)

    check_op(
        "ScatterElements",
        {"x": x, "u": u},
        consts={"i": ind},
        order=["x", "i", "u"],
        attrs=attrs,
        opset=16,
        torch_fn=ref,
    )


def test_scatter_mul_unsupported():
    with pytest.raises(GradientBuildError, match="reduction='mul'"):
        check_op(
            "ScatterElements",
            {"x": rand(2, 2), "u": rand(1, 2)},
            consts={"i": i64([0, 1])},
            order=["x", "i", "u"],
            attrs={"reduction": "mul"},
            opset=16,
        )


# -- TopK -------------------------------------------------------------------------------------
@pytest.mark.parametrize("opset", [13, 17])
@pytest.mark.parametrize(("axis", "largest"), [(-1, 1), (1, 0), (0, 1)])
def test_topk(opset, axis, largest):
    x = RNG.permutation(24).reshape(2, 3, 4) / 7.0 + rand(2, 3, 4) * 0.01  # no ties
    check_op(
        "TopK",
        {"x": x},
        consts={"k": i64(2)},
        attrs={"axis": axis, "largest": largest},
        num_outputs=2,
        loss_outputs=[0],
        opset=opset,
        torch_fn=lambda x, k: torch.topk(x, 2, dim=axis, largest=bool(largest))[0],
    )


# -- CumSum -----------------------------------------------------------------------------------
@pytest.mark.parametrize("exclusive", [0, 1])
@pytest.mark.parametrize("reverse", [0, 1])
@pytest.mark.parametrize("axis", [0, -1, np.int32(1)])
def test_cumsum(exclusive, reverse, axis):
    x = rand(3, 4)
    a = int(axis)

    def ref(x, a_=None):
        t = x.flip(a) if reverse else x
        c = t.cumsum(a)
        if exclusive:
            c = c - t
        return c.flip(a) if reverse else c

    check_op(
        "CumSum",
        {"x": x},
        consts={"a": np.array(axis, dtype=np.array(axis).dtype)},
        attrs={"exclusive": exclusive, "reverse": reverse},
        torch_fn=lambda x, a: ref(x),
    )


@pytest.mark.parametrize("axis", [0, 1])
def test_gather_float16_accumulates_in_float32(axis):
    """onnxruntime's CPU scatter-add has no float16 kernel: the rule adds in float32."""
    from onnx import helper

    from tests.gradcheck import _graph, run_gradients

    ids = i64([1, 2, 1], [0, 1, 1])
    w = rand(3, 3)
    node = helper.make_node("Gather", ["w", "ids"], ["y"], axis=axis)
    out_shape = (2, 3, 3) if axis == 0 else (3, 2, 3)
    weights = rand(*out_shape)
    model = _graph([node], {"ids": ids, "w": w}, {}, ["y"], {"y": weights}, np.float16, 17, True)
    grads, _ = run_gradients(model, {"ids": ids, "w": w.astype(np.float16)}, ["w"])
    expected = np.zeros_like(w)
    wt = weights.astype(np.float16).astype(np.float64)
    for idx in np.ndindex(ids.shape):
        if axis == 0:
            expected[ids[idx]] += wt[idx]
        else:
            expected[:, ids[idx]] += wt[:, idx[0], idx[1]]
    assert grads["w"].dtype == np.float16
    np.testing.assert_allclose(grads["w"].astype(np.float64), expected, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("opset", [13, 17])
def test_embedding_then_class_token(opset):
    """A transformer's embedding lookup followed by x[:, 0] (the pooler / class token)."""
    from tests.gradcheck import check_graph, make_node

    ids = i64([1, 4, 1], [0, 1, 4])
    w = rand(5, 4)
    nodes = [
        make_node("Gather", ["w", "ids"], ["h"]),
        make_node("Gather", ["h", "zero"], ["cls"], axis=1),
        make_node("Gather", ["h", "last"], ["tail"], axis=1),
    ]
    check_graph(
        nodes,
        {"ids": ids, "w": w},
        ["cls", "tail"],
        consts={"zero": np.array(0, dtype=np.int64), "last": np.array(-1)},
        wrt=["w"],
        opset=opset,
        torch_fn=lambda ids, w, zero, last: (w[ids][:, 0], w[ids][:, -1]),
    )


@pytest.mark.parametrize("opset", [21, 25])
def test_newest_opsets(opset):
    x = rand(3, 4)
    check_op(
        "Gather",
        {"ids": i64([1, 2], [2, 0]), "w": x},
        order=["w", "ids"],
        wrt=["w"],
        opset=opset,
        torch_fn=lambda ids, w: w[ids],
    )
    check_op(
        "Gather",
        {"x": x},
        consts={"i": np.array(-1)},
        attrs={"axis": 1},
        opset=opset,
        torch_fn=lambda x, i: x[:, -1],
    )
    check_op(
        "GatherElements",
        {"x": x},
        consts={"i": i64([0, 0, 3, 1], [2, 2, 1, 0], [1, 1, 1, 1])},
        attrs={"axis": 1},
        opset=opset,
        torch_fn=lambda x, i: torch.gather(x, 1, i),
    )
    check_op(
        "GatherND",
        {"x": x},
        consts={"i": i64([0, 1], [0, 1])},
        opset=opset,
        torch_fn=lambda x, i: x[i[:, 0], i[:, 1]],
    )
    check_op(
        "ScatterND",
        {"x": x, "u": rand(1, 4)},
        consts={"i": i64([2])},
        order=["x", "i", "u"],
        opset=opset,
        torch_fn=lambda x, u, i: x.index_put((i[:, 0],), u),
    )
    check_op(
        "ScatterElements",
        {"x": x, "u": rand(3, 1)},
        consts={"i": i64([0], [3], [1])},
        order=["x", "i", "u"],
        attrs={"axis": 1, "reduction": "add"},
        opset=opset,
        torch_fn=lambda x, u, i: x.scatter_add(1, i, u),
    )
    check_op(
        "TopK",
        {"x": RNG.permutation(12).reshape(3, 4) / 5.0},
        consts={"k": i64(2)},
        num_outputs=2,
        loss_outputs=[0],
        opset=opset,
        torch_fn=lambda x, k: torch.topk(x, 2)[0],
    )
    check_op(
        "CumSum",
        {"x": x},
        consts={"a": np.array(1)},
        attrs={"reverse": 1},
        opset=opset,
        torch_fn=lambda x, a: x.flip(1).cumsum(1).flip(1),
    )


def test_gather_axis0_on_a_tensor_of_unknown_rank():
    """ViT's TorchScript export: q, k, v = proj[0..2] after a Reshape whose target length is
    known only at run time, so shape inference cannot tell the rank; axis 0 needs none."""
    rng = np.random.default_rng(7)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("Reshape", ["h", "s"], ["r"]),
        helper.make_node("Gather", ["r", "i"], ["y"], axis=0),
    ]
    s = np.array([2, 3, 2], np.int64)
    check_graph(
        nodes,
        # "s" first: the harness gives the first input a symbolic dim, so its length is unknown
        {"s": s, "x": rng.standard_normal((2, 4)), "w": rng.standard_normal((4, 6))},
        ["y"],
        consts={"i": np.array(1, np.int64)},
        wrt=["w"],
        torch_fn=lambda s, x, w, i: (x @ w).reshape(tuple(s.tolist()))[1],
    )
