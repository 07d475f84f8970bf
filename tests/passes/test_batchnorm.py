"""passes/batchnorm.py: training-mode BatchNormalization decomposed at every opset form, and
the eval-mode model that export writes."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import adamax_onnx as ax
from adamax_onnx.passes.batchnorm import DecomposeBatchNorm


@pytest.mark.parametrize("opset", [15, 17, 18, 21])
def test_training_mode_uses_batch_statistics_at_every_opset(opset):
    """ReduceMean takes axes as an attribute below opset 18 and as an input from 18."""
    rng = np.random.default_rng(opset)
    c = 3
    vals = {
        "scale": rng.uniform(0.5, 1.5, c).astype(np.float32),
        "bias": rng.standard_normal(c).astype(np.float32),
        "mean": rng.standard_normal(c).astype(np.float32),
        "var": rng.uniform(0.5, 2.0, c).astype(np.float32),
    }
    node = helper.make_node(
        "BatchNormalization",
        ["X", *vals],
        ["Y", "running_mean", "running_var"],
        name="bn",
        epsilon=1e-3,
        training_mode=1,
    )
    graph = helper.make_graph(
        [node],
        "bn",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", c, 4, 5])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", c, 4, 5])],
        initializer=[numpy_helper.from_array(v, k) for k, v in vals.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    decomposed = DecomposeBatchNorm()(model).model
    assert all(n.op_type != "BatchNormalization" for n in decomposed.graph.node)
    sess = ort.InferenceSession(decomposed.SerializeToString(), providers=["CPUExecutionProvider"])
    x = rng.standard_normal((2, c, 4, 5)).astype(np.float32)
    (got,) = sess.run(["Y"], {"X": x})
    r = (-1, 1, 1)
    mean, var = x.mean(axis=(0, 2, 3)).reshape(r), x.var(axis=(0, 2, 3)).reshape(r)
    want = (x - mean) / np.sqrt(var + 1e-3) * vals["scale"].reshape(r) + vals["bias"].reshape(r)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)



def test_running_statistic_graph_outputs_are_the_updated_statistics():
    """A training-mode node whose running_mean / running_var outputs are graph outputs: they
    take the updated running statistics, as torch computes them (momentum on the old value,
    unbiased batch variance). (Read by another node, they are refused: test_train_mode.)"""
    rng = np.random.default_rng(7)
    c, momentum = 3, 0.9
    vals = {
        "scale": rng.uniform(0.5, 1.5, c).astype(np.float32),
        "bias": rng.standard_normal(c).astype(np.float32),
        "mean": rng.standard_normal(c).astype(np.float32),
        "var": rng.uniform(0.5, 2.0, c).astype(np.float32),
    }
    nodes = [
        helper.make_node(
            "BatchNormalization",
            ["X", *vals],
            ["Y", "running_mean", "running_var"],
            name="bn",
            training_mode=1,
            momentum=momentum,
        ),
    ]
    outs = [("Y", ["N", c, 4, 5]), ("running_mean", [c]), ("running_var", [c])]
    graph = helper.make_graph(
        nodes,
        "bn",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", c, 4, 5])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outs],
        initializer=[numpy_helper.from_array(v, k) for k, v in vals.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    decomposed = DecomposeBatchNorm()(model).model
    assert all(n.op_type != "BatchNormalization" for n in decomposed.graph.node)
    sess = ort.InferenceSession(decomposed.SerializeToString(), providers=["CPUExecutionProvider"])
    x = rng.standard_normal((4, c, 4, 5)).astype(np.float64)
    got_mean, got_var, new_mean, new_var = sess.run(
        ["running_mean", "running_var", "mean.updated", "var.updated"],
        {"X": x.astype(np.float32)},
    )
    want_mean = momentum * vals["mean"] + (1 - momentum) * x.mean(axis=(0, 2, 3))
    want_var = momentum * vals["var"] + (1 - momentum) * x.var(axis=(0, 2, 3), ddof=1)
    np.testing.assert_allclose(got_mean, want_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_var, want_var, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got_mean, new_mean)  # the same value as the state output
    np.testing.assert_array_equal(got_var, new_var)

def test_export_of_a_model_with_training_mode_dropout_given_as_initializers(tmp_path):
    """Dropout(x, ratio, training_mode) with both as initializers: the exported inference
    model is the identity there and keeps no initializer without a value."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["h"]),
            helper.make_node("Dropout", ["h", "dropout.ratio", "dropout.training"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [
            numpy_helper.from_array(w, "w"),
            numpy_helper.from_array(np.array(0.25, np.float32), "dropout.ratio"),
            numpy_helper.from_array(np.array(True), "dropout.training"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    sess = ax.TrainingSession(ax.build_training_model(model, ax.AdaMax(["w"], learning_rate=1e-2)))
    x = rng.standard_normal((4, 4)).astype(np.float32)
    sess.step({"x": x, "labels": np.array([0, 1, 2, 0])})
    path = tmp_path / "m.onnx"
    sess.export_inference_model(str(path))
    exported = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (y,) = exported.run(None, {"x": x})
    np.testing.assert_allclose(y, x @ sess.parameters()["w"], rtol=1e-6, atol=1e-6)
