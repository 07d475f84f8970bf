"""``StateBuffers``: the two state sets, their two bindings and the flip, on hand-built graphs.

Each graph is written here with ``onnx.helper`` (no adamax-onnx builder), and every expectation
is plain numpy arithmetic on what was fed: ``w.updated = w + ...``.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from adamax_onnx.buffers import StateBuffers
from adamax_onnx.errors import FeedError, ModelError
from adamax_onnx.feeds import TensorSpec

F32, F64 = TensorProto.FLOAT, TensorProto.DOUBLE


def _session(nodes, inputs, outputs, initializers=()) -> ort.InferenceSession:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(*i) for i in inputs],
        [helper.make_tensor_value_info(*o) for o in outputs],
        list(initializers),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(model)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _specs(session: ort.InferenceSession, names) -> list[TensorSpec]:
    by_name = {i.name: TensorSpec.of_input(i) for i in session.get_inputs()}
    return [by_name[n] for n in names]


def _accumulator(lr: float = 1.0):
    """w.updated = w + lr * x; loss = sum(x); lr is a fixed input."""
    session = _session(
        [
            helper.make_node("Mul", ["lr", "x"], ["step"]),
            helper.make_node("Add", ["w", "step"], ["w.updated"]),
            helper.make_node("ReduceSum", ["x"], ["loss"], keepdims=0),
        ],
        [("w", F32, [4]), ("lr", F32, []), ("x", F32, [4])],
        [("w.updated", F32, [4]), ("loss", F32, [])],
    )
    w0 = np.arange(4, dtype=np.float32)
    buffers = StateBuffers(
        session,
        {"w": w0},
        {"lr": np.array(lr, np.float32)},
        _specs(session, ["x"]),
        ["loss"],
    )
    return w0, buffers


def test_a_run_updates_the_state_and_the_host_outputs():
    w0, buffers = _accumulator(lr=0.5)
    rng = np.random.default_rng(0)
    expected = w0.copy()
    for _ in range(5):
        x = rng.standard_normal(4).astype(np.float32)
        buffers.run({"x": x})
        expected = expected + np.float32(0.5) * x
        np.testing.assert_array_equal(buffers.read("w"), expected)
        assert float(buffers.output("loss")) == pytest.approx(float(x.sum()), rel=1e-6)
    assert buffers.state_names == ["w"] and buffers.fixed_names == ["lr"]


def test_the_state_lives_in_two_buffers_that_never_move():
    w0, buffers = _accumulator()
    first = buffers.ortvalue("w").data_ptr()
    seen = [first]
    for _ in range(6):
        buffers.run({"x": np.ones(4, np.float32)})
        seen.append(buffers.ortvalue("w").data_ptr())
    other = seen[1]
    assert other != first  # a run writes into the other set, never the one it reads
    assert seen == [first, other] * 3 + [first]
    np.testing.assert_array_equal(buffers.read("w"), w0 + 6)


def test_a_failed_run_leaves_the_current_state_untouched():
    # w.updated is written before the broadcast of "r" against x fails (r has a free dim).
    session = _session(
        [
            helper.make_node("Add", ["w", "x"], ["w.updated"]),
            helper.make_node("Add", ["x", "r"], ["xr"]),
            helper.make_node("ReduceSum", ["xr"], ["loss"], keepdims=0),
        ],
        [("w", F32, [4]), ("x", F32, [4]), ("r", F32, ["n"])],
        [("w.updated", F32, [4]), ("loss", F32, [])],
    )
    w0 = np.full(4, 10.0, np.float32)
    buffers = StateBuffers(session, {"w": w0}, {}, _specs(session, ["x", "r"]), ["loss"])
    ones = np.ones(4, np.float32)
    buffers.run({"x": ones, "r": np.zeros(1, np.float32)})
    before, ptr = buffers.read("w"), buffers.ortvalue("w").data_ptr()
    with pytest.raises(Exception, match="(?i)broadcast|shape|dimension"):
        buffers.run({"x": ones * 100, "r": np.zeros(3, np.float32)})
    np.testing.assert_array_equal(buffers.read("w"), before)
    assert buffers.ortvalue("w").data_ptr() == ptr
    buffers.run({"x": ones, "r": np.zeros(4, np.float32)})  # runs on from the kept state
    np.testing.assert_array_equal(buffers.read("w"), w0 + 2)


def test_state_and_fixed_values_are_private_copies_read_and_written_in_place():
    w0, buffers = _accumulator(lr=1.0)
    w0[:] = -1  # the caller's array is not the buffer
    np.testing.assert_array_equal(buffers.read("w"), np.arange(4, dtype=np.float32))
    buffers.read("w")[:] = 99  # read gives a host copy
    np.testing.assert_array_equal(buffers.read("w"), np.arange(4, dtype=np.float32))
    buffers.write("w", np.full(4, 2.0, np.float32))
    buffers.write("lr", np.array(3.0, np.float32))
    buffers.run({"x": np.ones(4, np.float32)})
    np.testing.assert_array_equal(buffers.read("w"), np.full(4, 5.0, np.float32))
    assert float(buffers.read("lr")) == 3.0
    specs = buffers.specs()
    assert list(specs) == ["w", "lr"]
    assert specs["w"].shape == (4,) and specs["lr"].shape == () and specs["w"].dtype == np.float32
    with pytest.raises(ModelError, match="'x'"):
        buffers.ortvalue("x")  # a data input, not state
    with pytest.raises(ModelError, match="'lr'"):
        buffers.ortvalue("lr")  # fixed inputs do not flip
    with pytest.raises(ModelError, match="'nope'"):
        buffers.read("nope")


def test_a_chunk_layout_output_is_bound_to_the_parameter_shaped_buffer():
    session = _session(
        [
            helper.make_node("Add", ["w", "x"], ["sum"]),
            helper.make_node("Reshape", ["sum", "rows"], ["w.updated"]),
        ],
        [("w", F32, [8]), ("x", F32, [8])],
        [("w.updated", F32, [2, 4])],
        [numpy_helper.from_array(np.array([2, 4], np.int64), "rows")],
    )
    w0 = np.linspace(0, 1, 8, dtype=np.float32)
    buffers = StateBuffers(session, {"w": w0}, {}, _specs(session, ["x"]), layout={"w": [2, 4]})
    assert buffers.layout == {"w": [2, 4]}
    x = np.arange(8, dtype=np.float32)
    for _ in range(3):
        buffers.run({"x": x})
    assert buffers.read("w").shape == (8,)
    np.testing.assert_allclose(buffers.read("w"), w0 + 3 * x, rtol=1e-6)


def test_fed_inputs_of_every_kind_are_copied_in_each_run():
    # small static float32 and float64 inputs (packed), a free-dim input (its own slot, a new
    # one for a new shape) and a 1 MiB input (bound where it lies)
    big = 1 << 18
    session = _session(
        [
            helper.make_node("Cast", ["b"], ["b32"], to=F32),
            helper.make_node("ReduceSum", ["c"], ["c_sum"], keepdims=0),
            helper.make_node("ReduceSum", ["d"], ["d_sum"], keepdims=0),
            helper.make_node("Add", ["w", "a"], ["wa"]),
            helper.make_node("Add", ["wa", "b32"], ["wab"]),
            helper.make_node("Add", ["wab", "c_sum"], ["wabc"]),
            helper.make_node("Add", ["wabc", "d_sum"], ["w.updated"]),
        ],
        [("w", F32, [3]), ("a", F32, [3]), ("b", F64, [3]), ("c", F32, ["n"]), ("d", F32, [big])],
        [("w.updated", F32, [3])],
    )
    buffers = StateBuffers(
        session, {"w": np.zeros(3, np.float32)}, {}, _specs(session, ["a", "b", "c", "d"])
    )
    rng = np.random.default_rng(1)
    expected = np.zeros(3, np.float32)
    for n in (2, 2, 5, 1):
        feeds = {
            "a": rng.integers(-4, 4, 3).astype(np.float32),
            "b": rng.integers(-4, 4, 3).astype(np.float64),
            "c": rng.integers(-4, 4, n).astype(np.float32),
            "d": np.zeros(big, np.float32),
        }
        feeds["d"][rng.integers(0, big, 3)] = 1.0
        buffers.run(feeds)
        expected = (
            expected
            + feeds["a"]
            + feeds["b"].astype(np.float32)
            + feeds["c"].sum()
            + feeds["d"].sum()
        )
        np.testing.assert_array_equal(buffers.read("w"), expected)


def test_a_bound_input_is_read_in_place_and_no_longer_fed():
    w0, buffers = _accumulator()
    buffers.run({"x": np.ones(4, np.float32)})
    x = ort.OrtValue.ortvalue_from_numpy(np.full(4, 2.0, np.float32))
    buffers.bind_inputs({"x": x})
    assert buffers.bound == ["x"]
    buffers.run({})
    x.update_inplace(np.full(4, 10.0, np.float32))  # what the next run reads
    buffers.run({})
    np.testing.assert_array_equal(buffers.read("w"), w0 + 1 + 2 + 10)
    assert float(buffers.output("loss")) == 40.0


def test_bind_inputs_binds_nothing_unless_every_value_fits():
    _, buffers = _accumulator()
    good = ort.OrtValue.ortvalue_from_numpy(np.ones(4, np.float32))
    with pytest.raises(FeedError, match=r"'x' is tensor\(float\)\[3\], expected tensor\(float\)"):
        buffers.bind_inputs({"x": ort.OrtValue.ortvalue_from_numpy(np.ones(3, np.float32))})
    with pytest.raises(FeedError, match="'x' must be an onnxruntime.OrtValue, got ndarray"):
        buffers.bind_inputs({"x": np.ones(4, np.float32)})
    with pytest.raises(FeedError, match=r"cannot bind 'w': the data inputs are \['x'\]"):
        buffers.bind_inputs({"x": good, "w": good})
    assert buffers.bound == []
