"""passes/batchnorm.py: training-mode BatchNormalization decomposed at every opset form."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from passes.batchnorm import DecomposeBatchNorm


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
