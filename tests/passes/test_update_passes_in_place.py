"""GuardNonFinite and ChunkUpdates (adamax_onnx/passes/{nonfinite,chunking}.py) as in-place
passes on an ``onnx_ir.Model``, the form a build pipeline runs them in.

References: the numpy AdaMax of tests/reference.py for an applied step, the state before the
step (bit for bit) for a skipped one, and the unchunked model run in onnxruntime for a chunked
one. Their ``ModelProto`` entry is covered by tests/passes/test_nonfinite.py,
tests/test_loss_scale.py and tests/passes/test_chunking.py through the build.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

import adamax_onnx as ax
from adamax_onnx.passes.chunking import ChunkUpdates
from adamax_onnx.passes.contract import initial_values, updated
from adamax_onnx.passes.nonfinite import OVERFLOW, GuardNonFinite
from tests.reference import NumpyAdaMax
from tests.reference import random_grads as _grads
from tests.reference import random_params as _params


def _run(model: onnx.ModelProto, feeds: dict) -> dict[str, np.ndarray]:
    """One run of ``model`` in onnxruntime with its initial state; outputs by name."""
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so)
    inits = {n: onnx.numpy_helper.to_array(t) for n, t in initial_values(model).items()}
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, {**inits, **feeds}), strict=True))


def _in_place(pass_, proto: onnx.ModelProto) -> tuple[onnx.ModelProto, bool]:
    """Run ``pass_`` on an ``onnx_ir.Model`` of ``proto``; the model it returns must be that
    one, edited. Returns it serialized, and whether the pass reported a change."""
    model = ir.serde.deserialize_model(proto)
    result = pass_(model)
    assert result.model is model
    return ir.serde.serialize_model(model), result.modified


def test_guard_in_place_skips_a_nan_step_and_applies_a_finite_one():
    params = _params([(4, 3), (3,)])
    opt = ax.AdaMax(list(params), learning_rate=0.1)
    built = ax.build_optimizer_model(opt, params)
    guarded, modified = _in_place(GuardNonFinite(list(params)), built)
    assert modified and OVERFLOW in [o.name for o in guarded.graph.output]
    assert OVERFLOW not in [o.name for o in built.graph.output]  # the proto is not touched
    onnx.checker.check_model(guarded, full_check=True)

    state = {n: onnx.numpy_helper.to_array(t) for n, t in initial_values(built).items()}
    grads = _grads(params, 0)
    poisoned = {**grads, "p1_grad": np.array([1.0, np.nan, 2.0], np.float32)}
    out = _run(guarded, poisoned)
    assert bool(out[OVERFLOW])
    for name, before in state.items():
        if updated(name) in out:  # every carried state, bit for bit
            np.testing.assert_array_equal(out[updated(name)], before, err_msg=name)

    out = _run(guarded, grads)
    assert not bool(out[OVERFLOW])
    ref = NumpyAdaMax(params, learning_rate=0.1)
    ref.update({k[: -len("_grad")]: v for k, v in grads.items()})
    for p in params:
        np.testing.assert_allclose(out[updated(p)], ref.w[p], rtol=1e-6, atol=1e-7, err_msg=p)


def test_guard_without_options_leaves_the_model_alone():
    params = _params([(4, 3)])
    built = ax.build_optimizer_model(ax.AdaMax(list(params), learning_rate=0.1), params)
    unchanged, modified = _in_place(GuardNonFinite(list(params), skip=False), built)
    assert not modified
    assert [n.name for n in unchanged.graph.node] == [n.name for n in built.graph.node]


def test_chunking_in_place_moves_the_update_into_a_scan_with_the_same_results():
    params = _params([(64, 100), (7, 7)])  # 6400 = 25 x 256; the small one stays whole
    opt = ax.AdaMax(list(params), learning_rate=0.01, weight_decay=0.05)
    built = ax.build_optimizer_model(opt, params, skip_nonfinite=True, bucket_size=0)
    chunked, modified = _in_place(ChunkUpdates(list(params), 256), built)
    assert modified
    scans = [n for n in chunked.graph.node if n.op_type == "Scan"]
    assert len(scans) == 1 and scans[0].output[0] == updated("p0")
    onnx.checker.check_model(chunked, full_check=True)
    dims = {
        o.name: [d.dim_value for d in o.type.tensor_type.shape.dim] for o in chunked.graph.output
    }
    assert dims[updated("p0")] == [25, 256] and dims[updated("p1")] == [7, 7]

    grads = _grads(params, 3)
    want, got = _run(built, grads), _run(chunked, grads)
    assert want.keys() == got.keys()
    for name, value in want.items():
        np.testing.assert_array_equal(got[name].reshape(value.shape), value, err_msg=name)
