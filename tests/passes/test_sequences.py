"""passes/sequences.py: SplitToSequence + SequenceAt(constant) become Slices, same values."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from adamax_onnx.passes.sequences import SplitSequencesToSlices
from tests.gradcheck import check_graph

RNG = np.random.default_rng(0)


def _model(split, positions, axis=1, keepdims=None, runtime_position=False):
    inits = [
        numpy_helper.from_array(np.asarray(p, np.int64), f"i{k}") for k, p in enumerate(positions)
    ]
    split_in = []
    if split is not None:
        inits.append(numpy_helper.from_array(np.asarray(split, np.int64), "split"))
        split_in = ["split"]
    attrs = {"axis": axis} if keepdims is None else {"axis": axis, "keepdims": keepdims}
    nodes = [helper.make_node("SplitToSequence", ["x", *split_in], ["seq"], **attrs)]
    outs = []
    for k in range(len(positions)):
        pos = "pos" if runtime_position and k == 0 else f"i{k}"
        nodes.append(helper.make_node("SequenceAt", ["seq", pos], [f"y{k}"], name=f"at{k}"))
        outs.append(helper.make_tensor_value_info(f"y{k}", TensorProto.FLOAT, None))
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 7, 3])]
    if runtime_position:
        inputs.append(helper.make_tensor_value_info("pos", TensorProto.INT64, []))
    graph = helper.make_graph(nodes, "seq", inputs, outs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model, feeds):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


@pytest.mark.parametrize(
    "split,positions,keepdims",
    [
        (3, [0, 1, 2], None),  # chunks of 3, the last one short (7 = 3 + 3 + 1)
        ([2, 4, 1], [2, 0, -2], None),  # sizes; a negative position
        (None, [0, 6, 3], 0),  # no split: size-1 chunks, keepdims=0 squeezes the axis
        (None, [5], 1),
    ],
)
def test_rewritten_graph_computes_the_same_values(split, positions, keepdims):
    model = _model(split, positions, keepdims=keepdims)
    out = SplitSequencesToSlices()(model)
    assert out.modified
    ops = [n.op_type for n in out.model.graph.node]
    assert "SplitToSequence" not in ops and "SequenceAt" not in ops, ops
    x = RNG.standard_normal((2, 7, 3)).astype(np.float32)
    for got, want in zip(_run(out.model, {"x": x}), _run(model, {"x": x}), strict=True):
        np.testing.assert_array_equal(got, want)


def test_a_run_time_position_is_left_alone():
    model = _model(3, [0, 1], runtime_position=True)
    out = SplitSequencesToSlices()(model)
    assert not out.modified


def test_gradient_through_a_dynamo_style_qkv_split_matches_torch():
    """GPT-2's ``q, k, v = qkv.split(n, dim=2)`` as torch's dynamo exporter writes it: after
    the pass, our autodiff differentiates it like torch and like central differences."""
    consts = {
        "two": np.array(2, np.int64),
        "i0": np.array(0, np.int64),
        "i2": np.array(2, np.int64),
    }
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["qkv"]),
        helper.make_node("SplitToSequence", ["qkv", "two"], ["seq"], axis=1, keepdims=1),
        helper.make_node("SequenceAt", ["seq", "i0"], ["q"]),
        helper.make_node("SequenceAt", ["seq", "i2"], ["v"]),
        helper.make_node("Mul", ["q", "v"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
            helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, 6]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in consts.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    out = SplitSequencesToSlices()(model).model
    check_graph(
        list(out.graph.node),
        {"x": RNG.standard_normal((3, 4)), "w": RNG.standard_normal((4, 6))},
        ["y"],
        consts={i.name: numpy_helper.to_array(i) for i in out.graph.initializer},
        wrt=["w"],
        torch_fn=lambda x, w, **_: (lambda q, k, v: q * v)(*(x @ w).split(2, dim=1)),
    )
