"""The build pipeline (passes.infra, passes.pipeline): one copy, declared errors, named failures."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx_ir.passes import PassError, PassResult

import adamax_onnx as ax
from adamax_onnx.models import build_mlp
from adamax_onnx.passes.infra import BuildPass, Pipeline, ProtoStep, Translate


def _relu_model() -> onnx.ModelProto:
    w = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        [w],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


class _RenameRelu(BuildPass):
    def call(self, model: ir.Model) -> PassResult:
        for node in model.graph:
            if node.op_type == "Relu":
                node.op_type = "Sigmoid"
        return PassResult(model, True)


class _Fails(BuildPass):
    def call(self, model: ir.Model) -> PassResult:
        raise KeyError("no such thing")


def _op_types(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def test_the_input_model_is_left_unchanged_and_the_result_holds_its_weights():
    model = _relu_model()
    before = model.SerializeToString()
    seen = []

    def record(proto: onnx.ModelProto) -> PassResult:
        seen.append(_op_types(proto))
        proto.doc_string = "edited"
        return PassResult(proto, True)

    out = Pipeline(_RenameRelu(), ProtoStep(record, "Record"))(model)
    assert model.SerializeToString() == before
    assert seen == [["MatMul", "Sigmoid"]]  # the proto step sees the ir step's edit
    assert _op_types(out) == ["MatMul", "Sigmoid"] and out.doc_string == "edited"
    np.testing.assert_array_equal(
        numpy_helper.to_array(out.graph.initializer[0]),
        np.arange(6, dtype=np.float32).reshape(2, 3),
    )


def test_a_proto_step_first_edits_a_copy():
    model = _relu_model()

    def edit(proto: onnx.ModelProto) -> PassResult:
        proto.graph.node[1].op_type = "Tanh"
        return PassResult(proto, True)

    out = Pipeline(ProtoStep(edit, "Edit"))(model)
    assert _op_types(out) == ["MatMul", "Tanh"]
    assert _op_types(model) == ["MatMul", "Relu"]


def test_a_build_pass_called_on_a_proto_returns_a_new_proto():
    model = _relu_model()
    result = _RenameRelu()(model)
    assert isinstance(result.model, onnx.ModelProto) and result.modified
    assert _op_types(result.model) == ["MatMul", "Sigmoid"]
    assert _op_types(model) == ["MatMul", "Relu"]


def test_a_declared_error_reaches_the_caller_as_the_public_error_with_its_message():
    step = _Fails()
    step.translations = [Translate(KeyError, ax.ModelError, lambda e: f"bad: {e.args[0]}")]
    with pytest.raises(ax.ModelError, match="^bad: no such thing$") as info:
        Pipeline(_RenameRelu(), step)(_relu_model())
    assert isinstance(info.value.__cause__, KeyError)


def test_an_undeclared_failure_names_the_step_and_the_steps_before_it():
    with pytest.raises(PassError, match=r"'_Fails' pass after the following passes: \['_Ren"):
        Pipeline(_RenameRelu(), _Fails())(_relu_model())


def test_gradient_and_lowering_failures_are_the_public_errors():
    # No gradient rule for this op: GradientError, its message naming the op.
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    w = numpy_helper.from_array(np.ones((3, 3), np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["h"]),
            helper.make_node("Det", ["h"], ["d"]),
            helper.make_node("ReduceSum", ["d"], ["s"], keepdims=0),
        ],
        "g",
        [x],
        [helper.make_tensor_value_info("s", TensorProto.FLOAT, [])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ax.GradientError, match="Det"):
        ax.build_training_model(model, ax.AdaMax(["w"]), loss="s")


def test_the_built_model_matches_an_unchanged_input():
    model = build_mlp()
    before = model.SerializeToString()
    opt = ax.AdaMax(ax.trainable_params(model))
    first = ax.build_training_model(model, opt)
    assert model.SerializeToString() == before
    assert ax.build_training_model(model, opt).SerializeToString() == first.SerializeToString()


def test_untying_leaves_the_callers_tensors_as_they_were():
    """The untied copy is a new tensor: the input's TensorProto keeps its name and value."""
    w = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(3, 2), "w")
    graph = helper.make_graph(
        [
            helper.make_node("Identity", ["w"], ["w_alias"]),
            helper.make_node("MatMul", ["x", "w"], ["h"]),
            helper.make_node("MatMul", ["x", "w_alias"], ["h2"]),
            helper.make_node("Add", ["h", "h2"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 2])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    before = model.SerializeToString()
    with pytest.warns(UserWarning, match="untied 1 tensor"):
        train = ax.build_training_model(model, ax.AdaMax(["w", "w_alias"]), loss="mse")
    assert model.SerializeToString() == before
    values = {i.name: numpy_helper.to_array(i) for i in train.graph.initializer}
    for name in ("w.initial", "w_alias.initial"):
        np.testing.assert_array_equal(values[name], np.arange(6, dtype=np.float32).reshape(3, 2))
