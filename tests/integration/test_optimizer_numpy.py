"""The standalone optimizer graph against the independent numpy reference (tests/reference.py)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import adamax_onnx as ax
from tests.reference import NumpyAdaMax

STEPS = 25


def make_params(dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "fc1.weight": rng.normal(size=(32, 8)).astype(dtype),
        "fc1.bias": rng.normal(size=(32,)).astype(dtype),
        "bn.gamma": (1 + 0.1 * rng.normal(size=(32,))).astype(dtype),
        "bn.beta": rng.normal(size=(32,)).astype(dtype),
        "conv.weight": rng.normal(size=(4, 16, 3, 3)).astype(dtype),
    }


def grads_for(params, step, seed=1):
    rng = np.random.default_rng(seed * 1000 + step)
    return {k: (rng.normal(size=v.shape) * 0.5).astype(v.dtype) for k, v in params.items()}


def run_both(opt_kwargs, ref_kwargs=None, steps=STEPS, dtype=np.float32, params=None):
    params = params or make_params(dtype)
    opt = ax.AdaMax(list(params), **opt_kwargs)
    model = ax.build_optimizer_model(opt, params)
    onnx.checker.check_model(model, full_check=True)
    sess = ax.TrainingSession(model)
    ref = NumpyAdaMax(params, **(ref_kwargs if ref_kwargs is not None else opt_kwargs))
    for step in range(steps):
        g = grads_for(params, step)
        sess.step({f"{k}_grad": v for k, v in g.items()})
        ref.update(g)
    return sess, ref


def assert_matches(sess, ref, rtol=1e-5, atol=1e-6):
    got = sess.parameters()
    state = sess.state()
    for k in ref.w:
        np.testing.assert_allclose(got[k], ref.w[k], rtol=rtol, atol=atol, err_msg=k)
        np.testing.assert_allclose(state["m"][k], ref.m[k], rtol=rtol, atol=atol, err_msg=k)
        np.testing.assert_allclose(state["v"][k], ref.v[k], rtol=rtol, atol=atol, err_msg=k)
    assert state["global_step"] == ref.step
    np.testing.assert_allclose(state["beta1_power"], ref.beta1_power, rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"learning_rate": 0.01, "beta1": 0.8, "beta2": 0.95, "eps": 1e-6},
        {"learning_rate": 0.003, "weight_decay": 0.05},
        {"learning_rate": 0.003, "weight_decay": 0.05, "loss_scale": 128.0},
        {"learning_rate": 0.002, "loss_scale": 1024},
        {"learning_rate": 5, "weight_decay": 1},
    ],
    ids=["defaults", "hyper", "weight_decay", "wd_loss_scale", "loss_scale_int", "int_args"],
)
def test_matches_numpy_reference(kwargs):
    sess, ref = run_both(kwargs)
    assert_matches(sess, ref)


def test_weight_decay_skips_beta_gamma_names():
    params = make_params()
    sess, ref = run_both({"learning_rate": 0.01, "weight_decay": 0.5}, params=params)
    assert_matches(sess, ref)
    # The filter really matters: without decay the gamma/beta parameters differ.
    sess2, _ = run_both({"learning_rate": 0.01, "weight_decay": 0.0}, params=params)
    p1, p2 = sess.parameters(), sess2.parameters()
    np.testing.assert_array_equal(p1["bn.gamma"], p2["bn.gamma"])
    np.testing.assert_array_equal(p1["bn.beta"], p2["bn.beta"])
    assert not np.allclose(p1["fc1.weight"], p2["fc1.weight"])


def test_lr_table_as_long_as_the_run():
    table = [0.01 * (0.9**i) for i in range(STEPS)]
    sess, ref = run_both({"learning_rate": table})
    assert_matches(sess, ref)


def test_lr_table_numpy_array():
    table = np.linspace(0.01, 0.001, STEPS).astype(np.float64)
    sess, ref = run_both({"learning_rate": table})
    assert_matches(sess, ref)


def test_short_lr_table_raises_before_the_step_and_keeps_state():
    params = make_params()
    table = [0.01, 0.02, 0.03]
    sess, ref = run_both({"learning_rate": table}, steps=3, params=params)
    before_p, before_s = sess.parameters(), sess.state()
    with pytest.raises(ax.LearningRateTableExhausted, match="global_step 3") as info:
        sess.step({f"{k}_grad": v for k, v in grads_for(params, 3).items()})
    assert isinstance(info.value, RuntimeError)  # MindSpore raises a RuntimeError here too
    after_p, after_s = sess.parameters(), sess.state()
    for k in before_p:
        np.testing.assert_array_equal(before_p[k], after_p[k])
        np.testing.assert_array_equal(before_s["m"][k], after_s["m"][k])
        np.testing.assert_array_equal(before_s["v"][k], after_s["v"][k])
    assert after_s["global_step"] == 3 and after_s["beta1_power"] == before_s["beta1_power"]
    assert_matches(sess, ref)


def test_nan_gradient_propagates_like_mindspore():
    params = {"w": np.ones((4,), np.float32)}
    sess = ax.TrainingSession(ax.build_optimizer_model(ax.AdaMax(["w"]), params))
    sess.step({"w_grad": np.array([np.nan, 1, 1, 1], np.float32)})
    w = sess.parameters()["w"]
    assert np.isnan(w[0]) and np.all(np.isfinite(w[1:]))
    assert np.isnan(sess.state()["m"]["w"][0])


def test_learning_rate_can_change_between_steps_without_rebuild():
    params = make_params()
    opt = ax.AdaMax(list(params), learning_rate=0.01)
    sess = ax.TrainingSession(ax.build_optimizer_model(opt, params))
    ref = NumpyAdaMax(params, learning_rate=0.01)
    for step in range(6):
        if step == 3:
            sess.set_learning_rate(0.05)
            for c in ref.cfg.values():
                c["lr"] = 0.05
        g = grads_for(params, step)
        sess.step({f"{k}_grad": v for k, v in g.items()})
        ref.update(g)
    assert sess.learning_rates == {0: pytest.approx(0.05)}
    assert_matches(sess, ref)


def test_update_subgraph_uses_standard_ops_and_readable_names():
    params = make_params()
    model = ax.build_optimizer_model(ax.AdaMax(list(params), weight_decay=0.1), params)
    assert {n.domain for n in model.graph.node} <= {""}
    inputs = {i.name for i in model.graph.input}
    outputs = {o.name for o in model.graph.output}
    for k in params:
        assert {k, f"{k}_grad", f"{k}.adamax.m", f"{k}.adamax.v"} <= inputs
        assert {f"{k}.updated", f"{k}.adamax.m.updated", f"{k}.adamax.v.updated"} <= outputs
    assert {"adamax.global_step", "adamax.beta1_power"} <= inputs


@pytest.mark.parametrize(
    "kwargs",
    [
        {"learning_rate": 0.01, "weight_decay": 0.01, "loss_scale": 8.0},
        # grad_centralization: the mean over axes 1.. is taken on the real shape first
        {"params": "gc", "learning_rate": 0.01},
    ],
)
def test_pointwise_conv_weights_update_as_a_flat_view(kwargs):
    """[O, I, 1, 1] weights (1x1 convolutions) run their update as a flat view (onnxruntime's
    scalar broadcast over trailing size-1 dims is ~100x slower); same numbers as numpy."""
    rng = np.random.default_rng(3)
    params = {
        "pw.weight": rng.normal(size=(320, 256, 1, 1)).astype(np.float32),
        "fc.weight": rng.normal(size=(16, 8)).astype(np.float32),
    }
    kwargs = dict(kwargs)
    ref_kwargs = dict(kwargs)
    if kwargs.pop("params", None) == "gc":
        groups = [{"params": list(params), "grad_centralization": True}]
        opt = ax.AdaMax(groups, **kwargs)
        # grouped: MindSpore applies no name filter and no decay here
        ref_kwargs = {
            "learning_rate": 0.01,
            "per_param": {k: {"gc": True, "decay": False} for k in params},
        }
    else:
        opt = ax.AdaMax(list(params), **kwargs)
        ref_kwargs.pop("params", None)
    model = ax.build_optimizer_model(opt, params)
    flats = [
        n for n in model.graph.node if n.name.startswith("pw.weight.adamax.") and "flat" in n.name
    ]
    assert flats, "the 1x1 weight is updated as a flat view"
    sess = ax.TrainingSession(model)
    ref = NumpyAdaMax(params, **ref_kwargs)
    for step in range(5):
        g = grads_for(params, step)
        sess.step({f"{k}_grad": v for k, v in g.items()})
        ref.update(g)
    assert sess.parameters()["pw.weight"].shape == (320, 256, 1, 1)
    assert_matches(sess, ref)
