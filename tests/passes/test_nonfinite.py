"""Non-finite gradients (adamax_onnx/passes/nonfinite.py): MindSpore's default (applied as
computed) and skip_nonfinite. The loss scale is in tests/test_loss_scale.py.

References: tests/reference.py (numpy AdaMax written from the formula) for float32 updates; for
"unchanged", the state before the step, compared bit for bit.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import adamax_onnx as ax
from adamax_onnx.passes.contract import initial_values
from tests.nonfinitecheck import (
    F16,
    F32,
    assert_bitwise_equal,
    assert_same_up_to_fp16_rounding,
    fp16_batch,
    fp16_model,
    mlp_batch,
    mlp_session,
    poison,
    snapshot,
)
from tests.reference import NumpyAdaMax


# -- helpers ------------------------------------------------------------------------------------
def optimizer_session(dtype, skip: bool, **opt_kwargs) -> tuple[ax.TrainingSession, dict]:
    rng = np.random.default_rng(7)
    params = {
        "w": rng.standard_normal((3, 4)).astype(dtype),
        "b": rng.standard_normal(4).astype(dtype),
    }
    opt = ax.AdaMax(list(params), learning_rate=0.01, **opt_kwargs)
    model = ax.build_optimizer_model(opt, params, skip_nonfinite=skip)
    return ax.TrainingSession(model), params


def grads(step: int, dtype) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(100 + step)
    return {
        "w_grad": rng.standard_normal((3, 4)).astype(dtype),
        "b_grad": rng.standard_normal(4).astype(dtype),
    }


# -- MindSpore's default: applied as computed ---------------------------------------------------
@pytest.mark.parametrize("dtype", [F32, F16])
def test_default_applies_a_nan_gradient_as_computed(dtype):
    sess, params = optimizer_session(dtype, skip=False)
    assert sess.contract.overflow is None
    g = grads(0, dtype)
    g["w_grad"] = poison(g["w_grad"], "nan", index=5)
    sess.step(g)
    w = sess.parameters()["w"]
    assert np.isnan(w.flat[5]) and sess.global_step == 1 and not sess.last_overflow
    others = np.delete(w.ravel(), 5)
    assert np.isfinite(others).all()
    if dtype is F32:
        ref = NumpyAdaMax(params, learning_rate=0.01)
        ref.update({"w": g["w_grad"], "b": g["b_grad"]})
        np.testing.assert_allclose(others, np.delete(ref.w["w"].ravel(), 5), rtol=1e-6)
        np.testing.assert_allclose(sess.parameters()["b"], ref.w["b"], rtol=1e-6)


def test_default_training_model_propagates_nan_from_data():
    sess = mlp_session()
    batch = mlp_batch(0)
    batch["input"] = poison(batch["input"], "nan", index=3)
    loss = sess.step(batch)
    assert math.isnan(loss)
    assert any(np.isnan(v).any() for v in sess.parameters().values())


# -- skip_nonfinite on the optimizer model (gradients given exactly) ------------------------------
# 1e30 is finite in float32 (applied: test_finite_1e30_gradient_is_applied), +inf in float16.
@pytest.mark.parametrize(
    "dtype,kind",
    [(F32, k) for k in ("nan", "+inf", "-inf")]
    + [(F16, k) for k in ("nan", "+inf", "-inf", "1e30")],
)
@pytest.mark.parametrize("target", ["w_grad", "b_grad"])
def test_skip_leaves_every_parameter_and_state_unchanged(dtype, kind, target):
    sess, params = optimizer_session(dtype, skip=True)
    plain, _ = optimizer_session(dtype, skip=False)  # the same optimizer that never sees it
    for step in range(2):
        sess.step(grads(step, dtype))
        plain.step(grads(step, dtype))
        assert not sess.last_overflow
    before = snapshot(sess)
    bad = grads(2, dtype)
    bad[target] = poison(bad[target], kind, index=1)
    sess.step(bad)
    assert sess.last_overflow
    assert sess.global_step == 2
    assert_bitwise_equal(before, snapshot(sess))
    # The next clean step continues as if the bad one never happened, bit for bit.
    sess.step(grads(3, dtype))
    plain.step(grads(3, dtype))
    assert not sess.last_overflow
    assert_same_up_to_fp16_rounding(snapshot(plain), snapshot(sess))


@pytest.mark.parametrize("dtype", [F32, F16])
def test_clean_steps_are_untouched_by_the_guard(dtype):
    sess, params = optimizer_session(dtype, skip=True)
    plain, _ = optimizer_session(dtype, skip=False)
    ref = NumpyAdaMax(params, learning_rate=0.01)
    for step in range(5):
        g = grads(step, dtype)
        sess.step(g)
        plain.step(g)
        ref.update({"w": g["w_grad"], "b": g["b_grad"]})
        assert not sess.last_overflow
    assert_same_up_to_fp16_rounding(snapshot(plain), snapshot(sess))
    if dtype is F32:
        for k, v in sess.parameters().items():
            np.testing.assert_allclose(v, ref.w[k], rtol=1e-6, err_msg=k)


def test_finite_1e30_gradient_is_applied():
    sess, params = optimizer_session(F32, skip=True)
    g = grads(0, F32)
    g["w_grad"] = poison(g["w_grad"], "1e30", index=2)
    sess.step(g)
    assert not sess.last_overflow and sess.global_step == 1
    ref = NumpyAdaMax(params, learning_rate=0.01)
    ref.update({"w": g["w_grad"], "b": g["b_grad"]})
    for k, v in sess.parameters().items():
        assert np.isfinite(v).all()
        np.testing.assert_allclose(v, ref.w[k], rtol=1e-6, err_msg=k)


def test_skip_with_weight_decay_and_optimizer_loss_scale():
    """The guard reads the gradients, not the decayed/unscaled values: all stages are gated."""
    sess, _ = optimizer_session(F32, skip=True, weight_decay=0.1, loss_scale=8.0)
    sess.step(grads(0, F32))
    before = snapshot(sess)
    bad = grads(1, F32)
    bad["b_grad"] = poison(bad["b_grad"], "-inf")
    sess.step(bad)
    assert sess.last_overflow
    assert_bitwise_equal(before, snapshot(sess))


def test_guarded_optimizer_model_is_standard_onnx_and_runs_in_plain_onnxruntime():
    rng = np.random.default_rng(0)
    params = {"w": rng.standard_normal((2, 2)).astype(F32)}
    model = ax.build_optimizer_model(ax.AdaMax(["w"]), params, skip_nonfinite=True)
    onnx.checker.check_model(model, full_check=True)
    assert all(n.domain in ("", "ai.onnx") for n in model.graph.node)
    plain = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    g = np.array([[1.0, np.nan], [0.0, 1.0]], F32)
    state = {n: numpy_helper.to_array(t) for n, t in initial_values(model).items()}
    out = dict(
        zip(
            [o.name for o in plain.get_outputs()],
            plain.run(None, {"w_grad": g, **state}),
            strict=True,
        )
    )
    assert out["adamax.overflow"].dtype == np.bool_ and bool(out["adamax.overflow"])
    np.testing.assert_array_equal(out["w.updated"], params["w"])
    assert int(out["adamax.global_step.updated"]) == 0


# -- skip_nonfinite on training models (float32 and float16) ---------------------------------------
@pytest.mark.parametrize("kind", ["nan", "+inf", "-inf"])
def test_training_model_float32_skips_poisoned_batch(kind):
    sess = mlp_session(skip_nonfinite=True)
    plain = mlp_session()
    for step in range(2):
        sess.step(mlp_batch(step))
        plain.step(mlp_batch(step))
    before = snapshot(sess)
    bad = mlp_batch(2)
    bad["input"] = poison(bad["input"], kind, index=7)
    sess.step(bad)
    assert sess.last_overflow and sess.global_step == 2
    assert_bitwise_equal(before, snapshot(sess))
    loss = sess.step(mlp_batch(3))
    assert loss == plain.step(mlp_batch(3))
    assert_bitwise_equal(snapshot(plain), snapshot(sess))


@pytest.mark.parametrize("kind", ["nan", "+inf", "1e30"])
def test_training_model_float16_skips_poisoned_batch(kind):
    m = fp16_model()
    opt = ax.AdaMax(ax.trainable_params(m), learning_rate=0.01)
    sess = ax.TrainingSession(ax.build_training_model(m, opt, loss="fp32_mse", skip_nonfinite=True))
    plain = ax.TrainingSession(ax.build_training_model(m, opt, loss="fp32_mse"))
    assert sess.parameters()["fc.weight"].dtype == F16
    sess.step(fp16_batch(0))
    plain.step(fp16_batch(0))
    before = snapshot(sess)
    bad = fp16_batch(1)
    bad["input"] = poison(bad["input"], kind, index=4)  # float16(1e30) is +inf
    sess.step(bad)
    assert sess.last_overflow
    assert_bitwise_equal(before, snapshot(sess))
    sess.step(fp16_batch(2))
    plain.step(fp16_batch(2))
    assert not sess.last_overflow
    assert_same_up_to_fp16_rounding(snapshot(plain), snapshot(sess))
