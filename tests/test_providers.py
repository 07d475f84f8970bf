"""``adamax_onnx.providers``: which providers a session may use, where its state lives, and the
session start that falls back to the model as built (on hand-written ``onnx.helper`` graphs)."""

from __future__ import annotations

import warnings

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from adamax_onnx.errors import ModelError
from adamax_onnx.providers import (
    checked_providers,
    default_chunk_size,
    device_of,
    start_session,
)


def _model(op: str):
    graph = helper.make_graph(
        [helper.make_node(op, ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def test_providers_default_to_the_cpu_and_unknown_ones_are_refused():
    assert checked_providers(None) == ["CPUExecutionProvider"]
    assert checked_providers([]) == ["CPUExecutionProvider"]
    given = [("CPUExecutionProvider", {})]
    assert checked_providers(given) == given
    with pytest.raises(ModelError, match=r"\['NoSuchExecutionProvider'\] are not available"):
        checked_providers(["NoSuchExecutionProvider", "CPUExecutionProvider"])


def test_the_first_provider_places_the_state():
    assert device_of(["CPUExecutionProvider"]) == ("cpu", 0)
    assert device_of([("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"]) == (
        "cuda",
        1,
    )
    assert device_of(["CUDAExecutionProvider"]) == ("cuda", 0)
    assert default_chunk_size(["CPUExecutionProvider"]) == 131072
    assert default_chunk_size(["CUDAExecutionProvider", "CPUExecutionProvider"]) == 0


def test_a_refused_chunked_model_falls_back_to_the_plain_one():
    plain, refused = _model("Relu"), _model("NoSuchOp")
    options, cpu = ort.SessionOptions(), ["CPUExecutionProvider"]
    with pytest.warns(RuntimeWarning, match="refused the chunked update"):
        session, runs = start_session(plain, refused, options, cpu)
    assert runs is plain
    x = np.array([-1.0, 0.0, 2.0], np.float32)
    np.testing.assert_array_equal(session.run(None, {"x": x})[0], np.maximum(x, 0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert start_session(plain, None, options, cpu)[1] is plain
        chunked = _model("Abs")
        assert start_session(plain, chunked, options, cpu)[1] is chunked  # accepted: no warning
    with pytest.raises(Exception, match="NoSuchOp"):
        start_session(refused, None, options, cpu)  # the model as built: its error, no warning
