"""The build pipeline with either kind of gradient builder: the default one builds in place on
``onnx_ir`` (lowering then only looks at the op types), a builder on ``ModelProto`` runs as a
proto step (lowering as a proto step after it). Both lower an op of the model itself.

The model reads its input through ``com.microsoft`` ``FusedMatMul`` with a frozen matrix, then a
trained ``Gemm``; the first step's loss is checked against numpy's cross entropy.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

import adamax_onnx as ax
from adamax_onnx.models.mlp import build_mlp
from adamax_onnx.passes.autodiff import AutodiffBuilder

RNG = np.random.default_rng(3)
P = RNG.standard_normal((4, 6)).astype(np.float32)  # frozen
W = RNG.standard_normal((6, 3)).astype(np.float32)
B = RNG.standard_normal(3).astype(np.float32)
X = RNG.standard_normal((5, 4)).astype(np.float32)
Y = np.array([0, 2, 1, 1, 0], np.int64)


class ProtoOnlyBuilder:
    """A gradient builder with only the ``ModelProto`` method (as onnxruntime-training's)."""

    def build(self, model: onnx.ModelProto, loss, params) -> onnx.ModelProto:
        return AutodiffBuilder().build(model, loss, params)


def _model() -> onnx.ModelProto:
    nodes = [
        helper.make_node("FusedMatMul", ["x", "P"], ["h"], domain="com.microsoft", alpha=1.0),
        helper.make_node("Gemm", ["h", "W", "b"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(a, n) for a, n in ((P, "P"), (W, "W"), (B, "b"))],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=9)


def _cross_entropy() -> float:
    logits = (X.astype(np.float64) @ P @ W) + B
    logits -= logits.max(axis=1, keepdims=True)
    log_prob = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return float(-log_prob[np.arange(len(Y)), Y].mean())


@pytest.mark.parametrize("builder", [None, ProtoOnlyBuilder()], ids=["in_place", "proto"])
def test_a_model_op_is_lowered_with_either_builder(builder):
    train = ax.build_training_model(_model(), ax.AdaMax(["W", "b"]), gradient_builder=builder)
    assert {n.domain for n in train.graph.node} <= {""}
    assert [o.domain for o in train.opset_import] == [""]
    sess = ax.TrainingSession(train)
    loss = sess.step({"x": X, "labels": Y})
    np.testing.assert_allclose(loss, _cross_entropy(), rtol=1e-5)


def test_portable_false_keeps_the_model_op():
    train = ax.build_training_model(_model(), ax.AdaMax(["W", "b"]), portable=False)
    assert "FusedMatMul" in {n.op_type for n in train.graph.node}


def test_the_weights_are_read_once_and_written_once(monkeypatch):
    """The whole build is one onnx_ir model: the input's tensors are wrapped once, and each
    trained parameter's value is serialized once, into the built model (no copy in between)."""
    model = build_mlp(in_features=32, hidden=(48,), num_classes=10)
    params = ax.trainable_params(model)
    reads, writes = [], Counter()
    read, write = ir.serde.deserialize_model, ir.serde.serialize_tensor_into

    def counted_read(proto):
        if any(len(t.raw_data) > 1000 for t in proto.graph.initializer):
            reads.append(proto)
        return read(proto)

    def counted_write(proto, from_):
        writes[from_.name] += 1
        return write(proto, from_)

    monkeypatch.setattr(ir.serde, "deserialize_model", counted_read)
    monkeypatch.setattr(ir.serde, "serialize_tensor_into", counted_write)
    opt = ax.AdaMax(params)
    train = ax.build_training_model(model, opt, loss_scale_manager=ax.DynamicLossScaleManager())
    assert len(reads) == 1
    assert {p: writes[p] for p in params} == dict.fromkeys(params, 1)
    assert {i.name for i in train.graph.initializer} >= {f"{p}.initial" for p in params}
