"""passes/irbuild.py: names, node replacement, inferred facts and value-free serialization."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from adamax_onnx.passes.infra import to_ir, to_proto
from adamax_onnx.passes.irbuild import IRBuilder, inferred, replace_node, without_values

W = np.arange(6, dtype=np.float32).reshape(2, 3)


def _model():
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
            helper.make_node("Relu", ["h"], ["y"], name="relu"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(W, "w")],
    )
    return to_ir(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_builder_names_never_collide_with_the_graph():
    model = _model()
    g = IRBuilder(model.graph)
    assert g.unique("h") == "h_1" and g.unique("mm") == "mm_1" and g.unique("fresh") == "fresh"
    one = g.const(1.0, name="w")
    assert one.name == "w_1" and g.const(1.0, name="other") is one  # equal constants shared


def test_replace_node_keeps_the_output_name_and_the_graph_output():
    model = _model()
    graph = model.graph
    relu = next(n for n in graph if n.op_type == "Relu")
    g = IRBuilder(graph)
    zero = g.const(0.0, name="zero")
    y = g.op("Max", [relu.inputs[0], zero], "relu_as_max")
    replace_node(graph, relu, g.nodes, [y])
    proto = to_proto(model)
    assert [n.op_type for n in proto.graph.node] == ["MatMul", "Max"]
    assert proto.graph.output[0].name == "y" and proto.graph.node[1].output == ["y"]
    x = np.array([[1.0, -2.0], [-3.0, 0.5]], np.float32)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(sess.run(None, {"x": x})[0], np.maximum(x @ W, 0))


def test_inferred_gives_facts_without_writing_them_into_the_model():
    model = _model()
    facts = inferred(model)
    assert facts["h"].dtype == ir.DataType.FLOAT and len(facts["h"].shape) == 2
    h = next(n for n in model.graph if n.op_type == "MatMul").outputs[0]
    assert h.shape is None and h.type is None


def test_without_values_keeps_names_types_and_dims_but_no_data():
    model = _model()
    proto = without_values(model)
    (init,) = proto.graph.initializer
    assert (init.name, init.data_type, list(init.dims)) == ("w", TensorProto.FLOAT, [2, 3])
    assert not init.raw_data and not init.float_data
    assert [n.op_type for n in proto.graph.node] == ["MatMul", "Relu"]
    np.testing.assert_array_equal(model.graph.initializers["w"].const_value.numpy(), W)
