"""ChunkUpdates (adamax_onnx/passes/chunking.py) and the TrainingSession that applies it on the CPU.

The rewritten update must give the numbers of the independent numpy reference and be
bit-identical to the same model run without it, for every kind of elementwise region the AdaMax
pass emits (plain, weight decay + loss scale, float16 Casts, skip_nonfinite Where guards,
gradient centralization feeding the region); regions it cannot close are left alone.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import adamax_onnx as ax
from adamax_onnx.models.mlp import build_mlp
from adamax_onnx.passes.chunking import DEFAULT_CHUNK_SIZE, ChunkUpdates
from adamax_onnx.passes.contract import initial_values, updated
from adamax_onnx.runtime import default_chunk_size
from tests.reference import NumpyAdaMax
from tests.reference import random_grads as _grads
from tests.reference import random_params as _params


def _out_dims(model):
    return {o.name: [d.dim_value for d in o.type.tensor_type.shape.dim] for o in model.graph.output}


@pytest.mark.parametrize(
    "opt_kwargs",
    [{"learning_rate": 0.01}, {"learning_rate": 0.003, "weight_decay": 0.05, "loss_scale": 64.0}],
    ids=["plain", "decay_loss_scale"],
)
def test_pass_rewrites_each_large_parameter_into_one_scan(opt_kwargs):
    params = _params([(64, 100), (3000,), (7, 7)])  # 6400 = 25 x 256, 3000 = 12 x 250, small
    opt = ax.AdaMax(list(params), **opt_kwargs)
    model = ax.build_optimizer_model(opt, params, bucket_size=0)
    result = ChunkUpdates(list(params), 256)(model)
    assert result.modified
    out = result.model
    onnx.checker.check_model(out, full_check=True)
    scans = [n for n in out.graph.node if n.op_type == "Scan"]
    assert len(scans) == 2 and {n.domain for n in out.graph.node} <= {""}
    # The Scan outputs are the graph outputs, in chunk layout; the small one is untouched.
    dims = _out_dims(out)
    for p, layout in (("p0", [25, 256]), ("p1", [12, 250]), ("p2", [7, 7])):
        for name in (p, f"{p}.adamax.m", f"{p}.adamax.v"):
            assert dims[updated(name)] == layout, name
    # The input model is not modified; the 10 (12 with decay, +1 unscale) nodes moved inside.
    assert not any(n.op_type == "Scan" for n in model.graph.node)
    body = scans[0].attribute[0].g
    assert len(body.node) == (13 if "weight_decay" in opt_kwargs else 10)

    # Run both in plain onnxruntime, feeding the outputs back (reshaped) as a user would.
    so = ort.SessionOptions()
    so.log_severity_level = 3
    runs = [ort.InferenceSession(m.SerializeToString(), so) for m in (model, out)]
    inits = {n: onnx.numpy_helper.to_array(t) for n, t in initial_values(model).items()}
    names = [o.name for o in model.graph.output]
    carried = [i.name for i in model.graph.input if updated(i.name) in names]
    lrs = {n: v for n, v in inits.items() if n not in carried}  # fed as they are
    states = [{n: inits[n] for n in carried} for _ in runs]
    ref = NumpyAdaMax(params, **opt_kwargs)
    for step in range(5):
        grads = _grads(params, step)
        ref.update({k[: -len("_grad")]: v for k, v in grads.items()})
        for sess, state in zip(runs, states, strict=True):
            got = dict(zip(names, sess.run(names, {**state, **lrs, **grads}), strict=True))
            for n in carried:
                state[n] = got[updated(n)].reshape(state[n].shape)
    for k in params:
        np.testing.assert_allclose(states[1][k], ref.w[k], rtol=1e-5, atol=1e-6, err_msg=k)
        np.testing.assert_allclose(states[1][f"{k}.adamax.v"], ref.v[k], rtol=1e-5, atol=1e-6)
    for n in carried:
        np.testing.assert_array_equal(states[1][n], states[0][n], err_msg=n)


def _session_pair(model, **kwargs):
    return (
        ax.TrainingSession(model, chunk_size=64, **kwargs),
        ax.TrainingSession(model, chunk_size=0, **kwargs),
    )


def _assert_same(a, b):
    pa, pb = a.parameters(), b.parameters()
    sa, sb = a.state(), b.state()
    for k in pa:
        np.testing.assert_array_equal(pa[k], pb[k], err_msg=k)
        assert pa[k].shape == pb[k].shape
        np.testing.assert_array_equal(sa["m"][k], sb["m"][k], err_msg=k)
        np.testing.assert_array_equal(sa["v"][k], sb["v"][k], err_msg=k)
    assert a.global_step == b.global_step


def test_float16_parameters_chunk_with_their_casts():
    params = _params([(64, 32)], dtype=np.float16)  # chunk layout [32, 64]
    model = ax.build_optimizer_model(ax.AdaMax(list(params), learning_rate=0.01), params)
    chunked, plain = _session_pair(model)
    assert chunked.chunk_layout and not plain.chunk_layout
    for step in range(4):
        grads = _grads(params, step)
        chunked.step(grads)
        plain.step(grads)
    _assert_same(chunked, plain)
    assert chunked.parameters()["p0"].dtype == np.float16


def test_training_model_with_guard_and_centralization_is_bit_identical():
    # skip_nonfinite wraps every update in Where(all_finite, new, old); gradient centralization
    # (ReduceMean over a 2-D weight) feeds the region from outside; both must survive chunking.
    model = build_mlp(in_features=32, hidden=(64,), num_classes=16)
    names = ax.trainable_params(model)
    opt = ax.AdaMax(
        [{"params": names, "grad_centralization": True}], learning_rate=1e-2, weight_decay=1e-3
    )
    train = ax.build_training_model(model, opt, bucket_size=0, skip_nonfinite=True)
    chunked, plain = _session_pair(train)
    # fc1.weight [64, 32] runs as [32, 64]; fc2.weight [16, 64] as [16, 64] (same shape)
    assert (
        chunked.chunk_layout["fc1.weight"] == [32, 64] and "fc2.weight" not in chunked.chunk_layout
    )
    # The same rewrite baked into the file at build time (applied after the guard).
    baked_model = ax.build_training_model(
        model, opt, bucket_size=0, skip_nonfinite=True, chunk_size=64
    )
    assert sum(n.op_type == "Scan" for n in baked_model.graph.node) == 2
    baked = ax.TrainingSession(baked_model, chunk_size=0)
    rng = np.random.default_rng(0)
    for step in range(4):
        x = rng.standard_normal((8, 32)).astype(np.float32)
        if step == 2:
            x[0, 0] = np.nan  # a skipped step: every session keeps its state
        feeds = {"input": x, "labels": rng.integers(0, 16, 8).astype(np.int64)}
        losses = [s.step(feeds) for s in (chunked, plain, baked)]
        assert all(np.isnan(v) for v in losses) or len(set(losses)) == 1
        assert chunked.last_overflow == plain.last_overflow == baked.last_overflow == (step == 2)
    _assert_same(chunked, plain)
    _assert_same(baked, plain)


def test_regions_that_are_not_elementwise_are_left_alone():
    params = _params([(64, 100), (3000,)])
    opt = ax.AdaMax(list(params))
    bucketed = ax.build_optimizer_model(opt, params, bucket_size=65536)
    assert not ChunkUpdates(list(params), 256)(bucketed).modified
    prechunked = ax.build_optimizer_model(opt, params, bucket_size=0, chunk_size=256)
    assert not ChunkUpdates(list(params), 256)(prechunked).modified
    plain = ax.build_optimizer_model(opt, params, bucket_size=0)
    assert not ChunkUpdates(list(params), 0)(plain).modified  # 0: off
    assert not ChunkUpdates(list(params), 4096)(plain).modified  # fewer than 8 chunks


def test_training_session_chunks_by_default_on_cpu_only():
    assert default_chunk_size(["CPUExecutionProvider"]) == DEFAULT_CHUNK_SIZE == 131072
    assert default_chunk_size([("CUDAExecutionProvider", {}), "CPUExecutionProvider"]) == 0
    params = _params([(1 << 20,), (5,)])
    model = ax.build_optimizer_model(ax.AdaMax(list(params)), params)
    sess = ax.TrainingSession(model)
    assert sess.chunk_size == DEFAULT_CHUNK_SIZE
    assert sess.chunk_layout == {n: [8, 131072] for n in ("p0", "p0.adamax.m", "p0.adamax.v")}
    # the model itself keeps parameter-shaped outputs (portable file)
    assert _out_dims(sess.model)["p0.updated"] == [1 << 20]
    with pytest.raises(ValueError, match="chunk_size"):
        ax.TrainingSession(model, chunk_size=-1)


def test_a_chunked_model_onnxruntime_refuses_falls_back_with_a_warning(monkeypatch):
    import adamax_onnx.passes.session as session_pass
    from adamax_onnx.passes.base import PassResult

    class Broken:  # stands in for ChunkUpdates: a rewrite onnxruntime cannot load
        def __init__(self, params, chunk_size):
            pass

        def __call__(self, model):
            bad = onnx.ModelProto()
            bad.CopyFrom(model)
            bad.graph.node.append(onnx.helper.make_node("NoSuchOp", ["p0"], ["junk"]))
            return PassResult(bad, True)

    monkeypatch.setattr(session_pass, "ChunkUpdates", Broken)
    params = _params([(64, 32)])
    model = ax.build_optimizer_model(ax.AdaMax(list(params), learning_rate=0.01), params)
    with pytest.warns(RuntimeWarning, match="refused the chunked update"):
        sess = ax.TrainingSession(model, chunk_size=64)
    assert sess.chunk_layout == {}
    ref = NumpyAdaMax(params, learning_rate=0.01)
    grads = _grads(params, 0)
    sess.step(grads)
    ref.update({"p0": grads["p0_grad"]})
    np.testing.assert_allclose(sess.parameters()["p0"], ref.w["p0"], rtol=1e-5, atol=1e-6)
