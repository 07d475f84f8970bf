"""The autodiff engine on an ``onnx_ir.Model``: in place, no weight copied, facts left as stated.

The gradients are checked against the closed form of a small model written with numpy
(loss = sum((x @ W)^2) through a Reshape, so dloss/dW = 2 x^T (x @ W)), run in onnxruntime.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from adamax_onnx.passes.autodiff import differentiate
from adamax_onnx.passes.gradients import BuildGradients

RNG = np.random.default_rng(0)
W = RNG.standard_normal((16, 32)).astype(np.float32)  # 2 KB: a weight shape inference never reads
X = RNG.standard_normal((3, 16)).astype(np.float32)


def _model(opset: int = 17) -> onnx.ModelProto:
    """x [N, 16] @ W -> Reshape [N, 4, 8] -> squared -> summed: a scalar loss."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])
    shape = numpy_helper.from_array(np.array([-1, 4, 8], np.int64), "shape")
    reduce = (
        helper.make_node("ReduceSum", ["sq"], ["loss"], keepdims=0)
        if opset >= 13
        else helper.make_node("ReduceSum", ["sq"], ["loss"], keepdims=0, axes=[0, 1, 2])
    )
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["y"]),
        helper.make_node("Reshape", ["y", "shape"], ["r"]),
        helper.make_node("Mul", ["r", "r"], ["sq"]),
        reduce,
    ]
    loss = helper.make_tensor_value_info("loss", TensorProto.FLOAT, [])
    graph = helper.make_graph(nodes, "g", [x], [loss], [numpy_helper.from_array(W, "W"), shape])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _run(model: onnx.ModelProto, feeds: dict) -> dict:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds), strict=True))


def _expected_grad() -> np.ndarray:
    x, w = X.astype(np.float64), W.astype(np.float64)
    return 2.0 * x.T @ (x @ w)


def test_differentiates_an_ir_model_in_place_without_copying_weights():
    model = ir.serde.deserialize_model(_model())
    weight = model.graph.initializers["W"].const_value
    assert differentiate(model, "loss", ["W"]) is model
    assert model.graph.initializers["W"].const_value is weight  # the caller's tensor, shared
    # the facts shape inference found for the rules stay out of the model: values the model
    # stated nothing about still state nothing
    stated = [v.name for n in model.graph for v in n.outputs if v.type is not None]
    assert set(stated) == {"loss", "W_grad"}
    out = _run(ir.serde.serialize_model(model), {"x": X})
    np.testing.assert_allclose(out["W_grad"], _expected_grad(), rtol=1e-4, atol=1e-4)


def test_a_model_proto_is_left_as_it_was():
    proto = _model()
    before = proto.SerializeToString()
    grad = differentiate(proto, "loss", ["W"])
    assert isinstance(grad, onnx.ModelProto) and proto.SerializeToString() == before
    out = _run(grad, {"x": X})
    np.testing.assert_allclose(out["W_grad"], _expected_grad(), rtol=1e-4, atol=1e-4)


def test_an_old_opset_is_upgraded_in_place():
    model = ir.serde.deserialize_model(_model(opset=11))
    differentiate(model, "loss", ["W"])
    assert model.opset_imports[""] == 13
    out = _run(ir.serde.serialize_model(model), {"x": X})
    np.testing.assert_allclose(out["W_grad"], _expected_grad(), rtol=1e-4, atol=1e-4)

    model = ir.serde.deserialize_model(_model(opset=11))
    assert BuildGradients("loss", ["W"])(model).model is model
    out = _run(ir.serde.serialize_model(model), {"x": X, "W": W})
    np.testing.assert_allclose(out["W_grad"], _expected_grad(), rtol=1e-4, atol=1e-4)


def test_build_gradients_is_an_in_place_ir_step_with_the_default_builder():
    model = ir.serde.deserialize_model(_model())
    step = BuildGradients("loss", ["W"], seed=4.0)
    assert step.form == "ir" and step.in_place
    assert step(model).model is model
    assert "W" not in model.graph.initializers  # a graph input now, its value left out
    assert [v.name for v in model.graph.inputs] == ["x", "W"]
    assert model.graph.inputs[1].const_value is None
    proto = ir.serde.serialize_model(model)
    out = _run(proto, {"x": X, "W": W})  # seeded with 4: the gradient comes out times 4
    np.testing.assert_allclose(out["W_grad"], 4.0 * _expected_grad(), rtol=1e-4, atol=1e-3)
