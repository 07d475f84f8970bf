"""Performance invariants (not timings): one run per step, no per-step copies, lean update graph.

* a step is exactly one ``InferenceSession.run_with_iobinding`` (counted through a proxy);
* updated parameters and state land in the two preallocated ping-pong buffer sets, whose
  memory never moves (seen through ``TrainingSession.ortvalue``), and a step allocates nothing parameter-sized on the host (tracemalloc
  sees numpy's allocations; resident memory covers onnxruntime's);
* the AdaMax update of a float32 parameter is 10 nodes, plus 2 for weight decay and 1 for a loss
  scale, and ``lr / (1 - beta1_power)`` is computed once per group;
* ``bucket_size`` packs small parameters into flat buckets (far fewer nodes) and ``chunk_size``
  updates large ones by a Scan over chunks: both give the numbers of the independent numpy
  reference, bit-identical to the default graph;
* ``TrainingSession.bind_inputs`` binds device-resident gradients once.
"""

from __future__ import annotations

import gc
import tracemalloc
from collections import Counter

import numpy as np
import onnxruntime as ort
import pytest

import adamax_onnx as ax
from adamax_onnx.models.mlp import build_mlp
from tests.reference import NumpyAdaMax
from tests.reference import random_grads as _grads
from tests.reference import random_params as _params


class _CountingSession:
    """Stands in for ``TrainingSession.session`` and counts every run-like call."""

    def __init__(self, inner: ort.InferenceSession) -> None:
        self._inner = inner
        self.calls: Counter = Counter()

    def __getattr__(self, name):
        attr = getattr(self._inner, name)
        if name.startswith("run") and callable(attr):

            def counted(*args, **kwargs):
                self.calls[name] += 1
                return attr(*args, **kwargs)

            return counted
        return attr


def _mlp_session(**build):
    model = build_mlp(in_features=16, hidden=(32,), num_classes=4)
    opt = ax.AdaMax(ax.trainable_params(model), learning_rate=1e-2)
    sess = ax.TrainingSession(ax.build_training_model(model, opt, **build))
    rng = np.random.default_rng(0)
    feeds = {
        "input": rng.standard_normal((8, 16)).astype(np.float32),
        "labels": rng.integers(0, 4, 8).astype(np.int64),
    }
    return sess, feeds


@pytest.mark.parametrize("kind", ["training", "optimizer"])
def test_exactly_one_run_per_step(kind):
    if kind == "training":
        sess, feeds = _mlp_session()
    else:
        params = _params([(5, 3), (7,)])
        sess = ax.TrainingSession(ax.build_optimizer_model(ax.AdaMax(list(params)), params))
        feeds = _grads(params, 0)
    counter = _CountingSession(sess.session)
    sess.session = counter
    for _ in range(5):
        sess.step(feeds)
    assert counter.calls == Counter({"run_with_iobinding": 5})


@pytest.mark.parametrize(
    "build", [{}, {"bucket_size": 0, "chunk_size": 32}], ids=["default", "chunk_layout"]
)
def test_updates_land_in_the_two_preallocated_buffer_sets(build):
    # chunk_layout: W1 (16 x 32) and W2 are updated by a Scan whose outputs are declared
    # [rows, 32]; they must still be written into the same parameter-shaped buffers.
    sess, feeds = _mlp_session(**build)
    if build:
        layout = sess.chunk_layout
        assert layout and all(len(shape) == 2 for shape in layout.values())
    names = sess.contract.state_inputs()
    ptrs = []  # per step: name -> memory of the current value
    for _ in range(5):
        current = {n: sess.ortvalue(n) for n in names}
        ptrs.append({n: v.data_ptr() for n, v in current.items()})
        before = {n: v.numpy().copy() for n, v in current.items()}
        sess.step(feeds)
        params = sess.parameters()
        for n in names:
            # The run read the current set, left it unchanged, and wrote the other one.
            np.testing.assert_array_equal(current[n].numpy(), before[n])
            assert sess.ortvalue(n).data_ptr() != ptrs[-1][n]
        for p in sess.contract.params:
            np.testing.assert_array_equal(sess.ortvalue(p).numpy(), params[p])
            assert not np.array_equal(params[p], before[p])
    # Two distinct buffer sets whose memory never moves: the current one alternates.
    assert not set(ptrs[0].values()) & set(ptrs[1].values())
    for k in range(2, len(ptrs)):
        assert ptrs[k] == ptrs[k - 2], f"step {k}: a buffer moved"


def _rss_kib() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")  # pragma: no cover


def test_no_parameter_sized_host_allocation_per_step():
    n = 1 << 20  # 4 MiB per tensor
    params = {"w": np.ones(n, np.float32), "b": np.ones(3, np.float32)}
    sess = ax.TrainingSession(ax.build_optimizer_model(ax.AdaMax(list(params)), params))
    grads = {k: ort.OrtValue.ortvalue_from_numpy(v) for k, v in _grads(params, 0).items()}
    sess.bind_inputs(grads)
    for _ in range(3):  # warm-up: onnxruntime's arena reaches its size
        sess.step()
    gc.collect()
    rss0 = _rss_kib()
    tracemalloc.start()
    try:
        for _ in range(20):
            sess.step()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    grown = _rss_kib() - rss0
    assert peak < 64 * 1024, f"a step allocated {peak} bytes on the Python/numpy heap"
    assert grown < 1024, f"resident memory grew by {grown} KiB over 20 steps"


def _update_nodes(params, bucket_size=0, **opt_kwargs) -> int:
    opt = ax.AdaMax(list(params), **opt_kwargs)
    return len(ax.build_optimizer_model(opt, params, bucket_size=bucket_size).graph.node)


@pytest.mark.parametrize(
    "kwargs, per_param",
    [
        ({}, 10),
        ({"weight_decay": 0.01}, 12),  # Mul by wd, Add to the gradient
        ({"loss_scale": 128.0}, 11),  # Mul by 1/loss_scale
        ({"weight_decay": 0.01, "loss_scale": 128.0}, 13),
    ],
)
def test_update_nodes_per_float32_parameter(kwargs, per_param):
    small = _params([(4, 3)] * 3)
    large = _params([(4, 3)] * 8)
    assert (_update_nodes(large, **kwargs) - _update_nodes(small, **kwargs)) == 5 * per_param
    # Bucketed (the default): the 10 ApplyAdaMax nodes run once per bucket; a further small
    # parameter adds its weight-decay/unscale nodes, 4 Reshapes in and 3 out.
    bucketed = _update_nodes(large, bucket_size=4096, **kwargs) - _update_nodes(
        small, bucket_size=4096, **kwargs
    )
    assert bucketed == 5 * (per_param - 10 + 7)


def test_bias_corrected_lr_once_per_group():
    params = _params([(3,)] * 6)
    names = list(params)
    opt = ax.AdaMax(
        [{"params": names[:4], "lr": 0.01}, {"params": names[4:], "lr": 0.02}],
    )
    model = ax.build_optimizer_model(opt, params, bucket_size=0)
    divs = [n for n in model.graph.node if n.op_type == "Div"]
    # One m/(v+eps) per parameter, one lr/(1-beta1_power) per group; nothing else divides.
    assert len(divs) == len(params) + 2
    assert sum("lr_bias_corrected" in n.name for n in divs) == 2
    # Bucketed (the default): one m/(v+eps) per bucket, here one bucket per group.
    divs = [n for n in ax.build_optimizer_model(opt, params).graph.node if n.op_type == "Div"]
    assert len(divs) == 2 + 2


def _run_optimizer(params, opt_kwargs, steps, **build):
    sess = ax.TrainingSession(
        ax.build_optimizer_model(ax.AdaMax(list(params), **opt_kwargs), params, **build)
    )
    for step in range(steps):
        sess.step(_grads(params, step))
    return sess


@pytest.mark.parametrize(
    "opt_kwargs",
    [{"learning_rate": 0.01}, {"learning_rate": 0.003, "weight_decay": 0.05, "loss_scale": 64.0}],
    ids=["plain", "decay_loss_scale"],
)
def test_bucketed_update_matches_reference_with_far_fewer_nodes(opt_kwargs):
    shapes = [(), (7,), (4, 5), (2, 3, 2, 2), (16,), (300,)] + [(9,)] * 20
    params = _params(shapes)
    params["bn.gamma"] = np.ones(5, np.float32)  # not decayed (MindSpore's name filter)
    bucket = 128  # (300,) is larger: updated on its own
    plain = ax.build_optimizer_model(ax.AdaMax(list(params), **opt_kwargs), params, bucket_size=0)
    packed = ax.build_optimizer_model(
        ax.AdaMax(list(params), **opt_kwargs), params, bucket_size=bucket
    )
    assert len(packed.graph.node) < len(plain.graph.node) / 2
    assert {n.domain for n in packed.graph.node} <= {""}
    steps = 6
    got = _run_optimizer(params, opt_kwargs, steps, bucket_size=bucket)
    ref = NumpyAdaMax(params, **opt_kwargs)
    for step in range(steps):
        ref.update({k[: -len("_grad")]: v for k, v in _grads(params, step).items()})
    state = got.state()
    for k, w in got.parameters().items():
        np.testing.assert_allclose(w, ref.w[k], rtol=1e-5, atol=1e-6, err_msg=k)
        np.testing.assert_allclose(state["m"][k], ref.m[k], rtol=1e-5, atol=1e-6, err_msg=k)
        np.testing.assert_allclose(state["v"][k], ref.v[k], rtol=1e-5, atol=1e-6, err_msg=k)
        assert w.shape == params[k].shape
    # The same float32 ops on the same values: bit-identical to the per-parameter graph.
    unpacked = _run_optimizer(params, opt_kwargs, steps, bucket_size=0)
    for k, w in unpacked.parameters().items():
        np.testing.assert_array_equal(got.parameters()[k], w, err_msg=k)


@pytest.mark.parametrize(
    "opt_kwargs",
    [{"learning_rate": 0.01}, {"learning_rate": 0.003, "weight_decay": 0.05, "loss_scale": 64.0}],
    ids=["plain", "decay_loss_scale"],
)
def test_chunked_update_matches_reference(opt_kwargs):
    params = _params([(64, 100), (3000,), (7, 7)])  # 6400 and 3000 elements: chunked
    build = {"bucket_size": 0, "chunk_size": 256}
    chunked = ax.build_optimizer_model(ax.AdaMax(list(params), **opt_kwargs), params, **build)
    scans = [n for n in chunked.graph.node if n.op_type == "Scan"]
    assert len(scans) == 2 and {n.domain for n in chunked.graph.node} <= {""}
    # The Scan outputs are the graph outputs, in chunk layout: 6400 = 25 x 256, 3000 = 12 x 250.
    dims = {
        o.name: [d.dim_value for d in o.type.tensor_type.shape.dim] for o in chunked.graph.output
    }
    for p, layout in (("p0", [25, 256]), ("p1", [12, 250]), ("p2", [7, 7])):
        for name in (p, f"{p}.adamax.m", f"{p}.adamax.v"):
            assert dims[f"{name}.updated"] == layout, name
    steps = 5
    got = _run_optimizer(params, opt_kwargs, steps, **build)
    ref = NumpyAdaMax(params, **opt_kwargs)
    for step in range(steps):
        ref.update({k[: -len("_grad")]: v for k, v in _grads(params, step).items()})
    state = got.state()
    for k, w in got.parameters().items():
        np.testing.assert_allclose(w, ref.w[k], rtol=1e-5, atol=1e-6, err_msg=k)
        np.testing.assert_allclose(state["m"][k], ref.m[k], rtol=1e-5, atol=1e-6, err_msg=k)
        np.testing.assert_allclose(state["v"][k], ref.v[k], rtol=1e-5, atol=1e-6, err_msg=k)
    plain = _run_optimizer(params, opt_kwargs, steps, bucket_size=0)
    for k, w in plain.parameters().items():
        np.testing.assert_array_equal(got.parameters()[k], w, err_msg=k)
        assert got.parameters()[k].shape == params[k].shape


def test_tuned_training_model_is_bit_identical():
    results = []
    for build in ({"bucket_size": 0}, {}, {"bucket_size": 0, "chunk_size": 32}):
        sess, feeds = _mlp_session(**build)
        for _ in range(5):
            sess.step(feeds)
        results.append(sess.parameters())
    for k in results[0]:
        for other in results[1:]:
            np.testing.assert_array_equal(results[0][k], other[k], err_msg=k)


def test_bucket_and_chunk_size_are_validated():
    params = _params([(3,)])
    with pytest.raises(ValueError, match="bucket_size"):
        ax.build_optimizer_model(ax.AdaMax(list(params)), params, bucket_size=-1)
    with pytest.raises(ValueError, match="chunk_size"):
        ax.build_optimizer_model(ax.AdaMax(list(params)), params, chunk_size=1.5)


def test_bind_inputs_reads_device_gradients_in_place():
    params = _params([(6, 4)])
    fed = _run_optimizer(params, {"learning_rate": 0.01}, 3)
    bound = ax.TrainingSession(
        ax.build_optimizer_model(ax.AdaMax(list(params), learning_rate=0.01), params)
    )
    grad = ort.OrtValue.ortvalue_from_numpy(np.zeros((6, 4), np.float32))
    bound.bind_inputs({"p0_grad": grad})
    for step in range(3):
        grad.update_inplace(_grads(params, step)["p0_grad"])  # new gradient, same memory
        bound.step()
    np.testing.assert_array_equal(bound.parameters()["p0"], fed.parameters()["p0"])


def test_bind_inputs_errors_name_the_input():
    params = _params([(6, 4)])
    sess = ax.TrainingSession(ax.build_optimizer_model(ax.AdaMax(list(params)), params))
    ok = ort.OrtValue.ortvalue_from_numpy(np.zeros((6, 4), np.float32))
    with pytest.raises(ax.FeedError, match="'nope'"):
        sess.bind_inputs({"nope": ok})
    with pytest.raises(ax.FeedError, match="'p0_grad'.*OrtValue"):
        sess.bind_inputs({"p0_grad": np.zeros((6, 4), np.float32)})
    with pytest.raises(ax.FeedError, match=r"'p0_grad' is tensor\(float\)\[6, 5\]"):
        sess.bind_inputs({"p0_grad": ort.OrtValue.ortvalue_from_numpy(np.zeros((6, 5), "f4"))})
    with pytest.raises(ax.FeedError, match=r"tensor\(double\)"):
        sess.bind_inputs({"p0_grad": ort.OrtValue.ortvalue_from_numpy(np.zeros((6, 4)))})
    sess.bind_inputs({"p0_grad": ok})
    with pytest.raises(ax.FeedError, match="bound with bind_inputs"):
        sess.step({"p0_grad": np.zeros((6, 4), np.float32)})
