"""Gradient rules of MatMul, Gemm and Einsum against torch autograd and central differences."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from adamax_onnx.passes.autodiff import differentiate
from adamax_onnx.passes.autodiff.errors import GradientBuildError
from tests.gradcheck import check_op


def _rand(*shape, seed=0):
    return np.random.default_rng(seed + 7 * len(shape) + sum(shape)).standard_normal(shape)


# -- MatMul ----------------------------------------------------------------------------------

MATMUL_SHAPES = [
    ((3, 4), (4, 2)),  # plain 2-D (Gemm path)
    ((2, 3, 4), (4, 5)),  # linear layer over a batch (Flatten + Gemm for dB)
    ((2, 3, 4), (2, 4, 5)),  # batched
    ((2, 1, 3, 4), (1, 2, 4, 2)),  # batch dims broadcast both ways
    ((3, 4), (2, 4, 5)),  # 2-D A against batched B
    ((2, 3, 4), (3, 2, 1, 4, 2)),  # A with fewer batch dims
    ((4,), (4, 3)),  # 1-D A
    ((4,), (2, 4, 3)),  # 1-D A, batched B
    ((3, 4), (4,)),  # 1-D B
    ((2, 3, 4), (4,)),  # 1-D B, batched A
    ((5,), (5,)),  # dot product
]


@pytest.mark.parametrize(("sa", "sb"), MATMUL_SHAPES, ids=str)
def test_matmul(sa, sb):
    check_op(
        "MatMul",
        {"a": _rand(*sa), "b": _rand(*sb, seed=1)},
        torch_fn=lambda a, b: torch.matmul(a, b),
    )


def test_matmul_one_side():
    """Only the weight is trained (the activation gradient is not emitted)."""
    check_op(
        "MatMul",
        {"a": _rand(2, 3, 4)},
        consts={"w": _rand(4, 5, seed=3)},
        wrt=["w"],
        torch_fn=lambda a, w: torch.matmul(a, w),
    )


def test_matmul_linear_layer_emits_no_batched_product():
    """A [N, T, K] @ W [K, M]: dW is one Gemm over the flattened batch, no batched MatMul."""
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", "T", 4])
    w = onnx.numpy_helper.from_array(_rand(4, 5).astype(np.float32), "w")
    nodes = [
        helper.make_node("MatMul", ["a", "w"], ["y"]),
        helper.make_node("ReduceSum", ["y"], ["loss"], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "g", [a], [helper.make_tensor_value_info("loss", TensorProto.FLOAT, [])], [w]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    grad = differentiate(model, "loss", ["w"])
    ops = [n.op_type for n in grad.graph.node[len(nodes) :]]
    assert "Gemm" in ops and "MatMul" not in ops and "Transpose" not in ops, ops


# -- Gemm ------------------------------------------------------------------------------------

C_SHAPES = [None, (), (5,), (1, 5), (3, 1), (3, 5)]


@pytest.mark.parametrize("c_shape", C_SHAPES, ids=str)
@pytest.mark.parametrize(("ta", "tb"), [(0, 0), (1, 0), (0, 1), (1, 1)])
def test_gemm(ta, tb, c_shape):
    m, k, n = 3, 4, 5
    a = _rand(*((k, m) if ta else (m, k)))
    b = _rand(*((n, k) if tb else (k, n)), seed=1)
    inputs = {"a": a, "b": b}
    if c_shape is not None:
        inputs["c"] = _rand(*c_shape, seed=2) if c_shape else np.array(0.7)
    alpha, beta = 0.5, 1.5

    def fn(a, b, c=None):
        y = alpha * ((a.T if ta else a) @ (b.T if tb else b))
        return y if c is None else y + beta * c

    check_op(
        "Gemm",
        inputs,
        attrs={"transA": ta, "transB": tb, "alpha": alpha, "beta": beta},
        torch_fn=fn,
        batch=not ta,  # a transposed A's first dim is K, which must match B's
    )


def test_gemm_defaults():
    check_op(
        "Gemm",
        {"a": _rand(3, 4), "b": _rand(4, 2, seed=1), "c": _rand(2, seed=2)},
        torch_fn=lambda a, b, c: a @ b + c,
    )


# -- Einsum ----------------------------------------------------------------------------------

EINSUMS = [
    ("bij,bjk->bik", [(2, 3, 4), (2, 4, 2)]),
    ("bhqd,bhkd->bhqk", [(2, 2, 3, 4), (2, 2, 5, 4)]),
    ("ij->ji", [(3, 4)]),
    ("i,i->", [(5,), (5,)]),
    ("bi,bi->b", [(3, 4), (3, 4)]),
    ("...ij,...jk->...ik", [(2, 3, 4), (2, 4, 2)]),
    ("...ij,...jk->...ik", [(2, 1, 3, 4), (1, 3, 4, 2)]),  # ellipsis dims broadcast
    ("...ij,jk->...ik", [(2, 3, 4), (4, 2)]),
    ("ij,j->i", [(3, 4), (4,)]),
    ("ij->i", [(3, 4)]),  # reduced index of one operand: Expand
    ("ij->", [(3, 4)]),
    ("ij,jk", [(3, 4), (4, 2)]),  # implicit output
    ("bij,jk,bk->bi", [(2, 3, 4), (4, 5), (2, 5)]),  # three operands
    ("ik,jl->ij", [(3, 2), (4, 5)]),  # indices summed within each operand
    ("bIj, bjK -> bIK", [(2, 3, 4), (2, 4, 5)]),  # upper case, spaces
    ("...ij->...", [(2, 3, 4)]),
    ("ij,ij->ij", [(2, 3), (2, 3)]),
]


@pytest.mark.parametrize(("eq", "shapes"), EINSUMS, ids=[e for e, _ in EINSUMS])
def test_einsum(eq, shapes):
    names = [f"x{i}" for i in range(len(shapes))]
    inputs = {n: _rand(*s, seed=i) for i, (n, s) in enumerate(zip(names, shapes, strict=True))}
    check_op(
        "Einsum",
        inputs,
        attrs={"equation": eq},
        torch_fn=lambda **t: torch.einsum(eq, *[t[n] for n in names]),
    )


def test_einsum_diagonal_of_a_frozen_operand():
    """A trace in an operand that is not trained is fine: it stays in the gradient Einsum."""
    check_op(
        "Einsum",
        {"x0": _rand(4), "x1": _rand(3, 3, seed=1)},
        attrs={"equation": "j,ii->j"},
        wrt=["x0"],
        torch_fn=lambda x0, x1: torch.einsum("j,ii->j", x0, x1),
    )


def test_einsum_diagonal_is_unsupported():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 3])
    nodes = [helper.make_node("Einsum", ["x"], ["loss"], equation="ii->")]
    graph = helper.make_graph(
        nodes, "g", [x], [helper.make_tensor_value_info("loss", TensorProto.FLOAT, [])]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(GradientBuildError, match="diagonal"):
        differentiate(model, "loss", ["x"])
