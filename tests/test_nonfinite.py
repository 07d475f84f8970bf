"""Non-finite gradients: MindSpore's default (applied as computed), skip_nonfinite, loss scaling.

References: tests/reference.py (numpy AdaMax written from the formula) for float32 updates;
MindSpore 2.10's ``nn.DynamicLossScaleUpdateCell`` trajectories recorded in
tests/golden/mindspore_loss_scale.json (by tests/golden/make_mindspore_loss_scale.py) for the
loss scale; for "unchanged", the state before the step, compared bit for bit.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import adamax_onnx as ax
from adamax_onnx.models.mlp import build_mlp
from adamax_onnx.passes.contract import initial_values
from tests.reference import NumpyAdaMax

GOLDEN = json.loads(
    (Path(__file__).parent / "golden" / "mindspore_loss_scale.json").read_text(encoding="utf-8")
)
F16, F32 = np.float16, np.float32


# -- helpers ------------------------------------------------------------------------------------
def snapshot(sess: ax.TrainingSession) -> dict[str, np.ndarray]:
    """Every parameter and every piece of optimizer state, as arrays."""
    snap = {f"param:{k}": v for k, v in sess.parameters().items()}
    st = sess.state()
    snap["global_step"] = np.asarray(st["global_step"])
    snap["beta1_power"] = np.asarray(st["beta1_power"], np.float32)
    for k in st["m"]:
        snap[f"m:{k}"] = st["m"][k]
        snap[f"v:{k}"] = st["v"][k]
    for k, v in st.get("extra", {}).items():
        snap[f"extra:{k}"] = v
    return snap


def assert_bitwise_equal(a: dict[str, np.ndarray], b: dict[str, np.ndarray], skip=()) -> None:
    assert set(a) - set(skip) == set(b) - set(skip)
    for k in set(a) - set(skip):
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert a[k].tobytes() == b[k].tobytes(), f"{k} changed"


def assert_same_up_to_fp16_rounding(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    """Bitwise for every non-float16 array; float16 arrays within one unit in the last place.

    onnxruntime's CPU provider computes float16 nodes in float32 (it inserts Casts and removes
    back-to-back ones), so where a float16 value is rounded depends on the graph's shape: adding
    the guard's Where nodes can move a rounding and change a float16 result by one ulp.
    """
    assert set(a) == set(b)
    for k in a:
        if a[k].dtype != np.float16:
            assert a[k].tobytes() == b[k].tobytes(), f"{k} changed"
            continue
        x, y = a[k].astype(np.float32), b[k].astype(np.float32)
        ulp = np.spacing(np.maximum(np.abs(a[k]), np.abs(b[k]))).astype(np.float32)
        assert (np.abs(x - y) <= ulp).all(), f"{k}: more than one float16 ulp apart"


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


def fp16_model() -> onnx.ModelProto:
    """float16 parameters and activations; the loss is computed in float32 (as MindSpore's amp
    casts the network output to float32 before the loss)."""
    rng = np.random.default_rng(3)
    w = numpy_helper.from_array((rng.standard_normal((8, 4)) * 0.5).astype(F16), "fc.weight")
    b = numpy_helper.from_array(np.zeros(4, F16), "fc.bias")
    nodes = [
        helper.make_node("MatMul", ["input", "fc.weight"], ["h"]),
        helper.make_node("Add", ["h", "fc.bias"], ["out"]),
        helper.make_node("Cast", ["out"], ["out32"], to=TensorProto.FLOAT),
        helper.make_node("Sub", ["out32", "target"], ["diff"]),
        helper.make_node("Mul", ["diff", "diff"], ["sq"]),
        helper.make_node("ReduceMean", ["sq"], ["fp32_mse"], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "fp16_linear",
        [
            helper.make_tensor_value_info("input", TensorProto.FLOAT16, ["N", 8]),
            helper.make_tensor_value_info("target", TensorProto.FLOAT, ["N", 4]),
        ],
        [
            helper.make_tensor_value_info("fp32_mse", TensorProto.FLOAT, []),
            helper.make_tensor_value_info("out", TensorProto.FLOAT16, ["N", 4]),
        ],
        [w, b],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def fp16_batch(step: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(200 + step)
    return {
        "input": rng.standard_normal((6, 8)).astype(F16),
        "target": rng.standard_normal((6, 4)).astype(F32),
    }


def mlp_session(**kwargs) -> ax.TrainingSession:
    m = build_mlp(in_features=12, hidden=(16,), num_classes=5, seed=1)
    opt = ax.AdaMax(ax.trainable_params(m), learning_rate=0.01)
    return ax.TrainingSession(ax.build_training_model(m, opt, loss="cross_entropy", **kwargs))


def mlp_batch(step: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(300 + step)
    return {
        "input": rng.standard_normal((8, 12)).astype(F32),
        "labels": rng.integers(0, 5, 8).astype(np.int64),
    }


def poison(arr: np.ndarray, kind: str, index=0) -> np.ndarray:
    out = arr.copy()
    value = {"nan": np.nan, "+inf": np.inf, "-inf": -np.inf, "1e30": 1e30}[kind]
    with np.errstate(over="ignore"):
        out.flat[index] = value  # 1e30 becomes +inf in float16
    return out


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


# -- loss scale managers ------------------------------------------------------------------------
def cell_reference(init, factor, window, overflows):
    """``nn.DynamicLossScaleUpdateCell.construct`` restated in numpy float32/int32."""
    scale, cur, last = np.float32(init), 1, 0
    out = []
    for ov in overflows:
        on_overflow = (
            max(scale * (np.float32(1) / np.float32(factor)), np.float32(1)) if ov else scale
        )
        should_inc = window <= cur - last
        if ov or should_inc:
            last = cur
        scale = (
            np.float32(on_overflow * np.float32(factor)) if should_inc and not ov else on_overflow
        )
        cur += 1
        out.append([float(scale), cur, last])
    return out


@pytest.mark.parametrize("case", sorted(GOLDEN["update_cell"]))
def test_cell_reference_matches_recorded_mindspore(case):
    rec = GOLDEN["update_cell"][case]
    got = cell_reference(rec["init"], rec["factor"], rec["window"], rec["overflow"])
    assert got == rec["after_each_step"]


@pytest.mark.parametrize("case", sorted(GOLDEN["update_cell"]))
def test_dynamic_loss_scale_graph_state_matches_mindspore(case):
    rec = GOLDEN["update_cell"][case]
    mgr = ax.DynamicLossScaleManager(rec["init"], rec["factor"], rec["window"])
    sess = mlp_session(loss_scale_manager=mgr)
    assert sess.loss_scale == rec["init"]
    clean_steps = 0
    for i, (overflow, expected) in enumerate(
        zip(rec["overflow"], rec["after_each_step"], strict=True)
    ):
        batch = mlp_batch(i)
        if overflow:
            batch["input"] = poison(batch["input"], "nan", index=i)
        before = snapshot(sess)
        sess.step(batch)
        clean_steps += not overflow
        assert sess.last_overflow == overflow
        assert sess.global_step == clean_steps
        extra = sess.state()["extra"]
        got = [
            sess.loss_scale,
            int(extra["adamax.loss_scale.cur_iter"]),
            int(extra["adamax.loss_scale.last_overflow_iter"]),
        ]
        assert got == expected, f"step {i}"
        if overflow:
            assert_bitwise_equal(before, snapshot(sess), skip=[k for k in before if "extra" in k])


def test_dynamic_loss_scale_float32_training_equals_unscaled_training_bit_for_bit():
    """Power-of-two scales commute with float rounding (no overflow/underflow here), so the
    loss-scaled run must equal a plain run that simply never saw the overflowing batches."""
    sess = mlp_session(loss_scale_manager=ax.DynamicLossScaleManager(2.0**10, 2, 2))
    plain = mlp_session()
    for step in range(8):
        batch = mlp_batch(step)
        if step in (2, 5):
            batch["input"] = poison(batch["input"], "+inf", index=step)
        loss = sess.step(batch)
        if step not in (2, 5):
            assert loss == plain.step(batch)
        assert sess.last_overflow == (step in (2, 5))
        assert_bitwise_equal(
            snapshot(plain), snapshot(sess), skip=[k for k in snapshot(sess) if "extra" in k]
        )
    assert sess.loss_scale == cell_reference(2.0**10, 2, 2, [s in (2, 5) for s in range(8)])[-1][0]


def test_dynamic_loss_scale_overflow_in_scaled_gradient_only():
    """MindSpore checks the gradients computed with the scale: an input of 1e36 gives gradients
    that are finite unscaled but overflow once multiplied by 2**24, so the step is skipped and
    the scale drops."""
    sess = mlp_session(loss_scale_manager=ax.DynamicLossScaleManager(2.0**24, 2, 100))
    batch = mlp_batch(0)
    batch["input"] = poison(batch["input"], "1e30", index=0) * np.float32(1e6)
    plain = mlp_session(skip_nonfinite=True)
    plain.step(batch)
    assert not plain.last_overflow  # finite without the scale
    sess.step(batch)
    assert sess.last_overflow and sess.loss_scale == 2.0**23


def test_dynamic_loss_scale_float16_warms_up_then_trains():
    """float16 gradients overflow at 2**24: steps are skipped (state untouched), the scale
    halves each time until the gradients fit float16, then training proceeds, with a skip
    whenever a scale increase overflows again; the scale follows MindSpore's rule."""
    m = fp16_model()
    opt = ax.AdaMax(ax.trainable_params(m), learning_rate=0.01)
    mgr = ax.DynamicLossScaleManager(2.0**24, 2, 4)
    sess = ax.TrainingSession(
        ax.build_training_model(m, opt, loss="fp32_mse", loss_scale_manager=mgr)
    )
    flags, scales, losses = [], [], []
    for step in range(24):
        before = snapshot(sess)
        losses.append(sess.step(fp16_batch(step % 4)))
        flags.append(sess.last_overflow)
        scales.append(sess.loss_scale)
        after = snapshot(sess)
        extra = [k for k in before if k.startswith("extra:")]
        if sess.last_overflow:
            assert_bitwise_equal(before, after, skip=extra)
        else:
            assert not np.array_equal(before["param:fc.weight"], after["param:fc.weight"])
    warmup = flags.index(False)
    assert warmup >= 1 and all(flags[:warmup])
    assert scales[warmup - 1] < 2.0**16  # 65536 * |gradient| no longer fits float16
    assert scales == [s for s, _, _ in cell_reference(2.0**24, 2, 4, flags)]
    assert sess.global_step == flags.count(False)
    assert losses[20] < losses[0]  # same batch, after training


def test_fixed_loss_scale_manager_without_drop_is_the_optimizer_loss_scale():
    m = build_mlp(in_features=12, hidden=(16,), num_classes=5, seed=1)
    params = ax.trainable_params(m)
    mgr = ax.FixedLossScaleManager(64.0, drop_overflow_update=False)
    a = ax.TrainingSession(
        ax.build_training_model(m, ax.AdaMax(params, loss_scale=64.0), loss_scale_manager=mgr)
    )
    b = ax.TrainingSession(ax.build_training_model(m, ax.AdaMax(params, loss_scale=64.0)))
    assert a.contract.overflow is None
    for step in range(3):
        assert a.step(mlp_batch(step)) == b.step(mlp_batch(step))
    assert_bitwise_equal(snapshot(a), snapshot(b))


def test_fixed_loss_scale_manager_with_drop_skips_and_unscales():
    sess = mlp_session(loss_scale_manager=ax.FixedLossScaleManager(1024.0))
    plain = mlp_session()
    for step in range(4):
        batch = mlp_batch(step)
        if step == 1:
            batch["input"] = poison(batch["input"], "nan")
        sess.step(batch)
        if step != 1:
            plain.step(batch)
        assert sess.last_overflow == (step == 1)
    assert sess.loss_scale is None  # constant, not state
    assert_bitwise_equal(snapshot(plain), snapshot(sess))


def test_dynamic_loss_scale_state_is_checkpointed(tmp_path):
    mgr = ax.DynamicLossScaleManager(2.0**6, 2, 2)
    a = mlp_session(loss_scale_manager=mgr)
    for step in range(5):
        batch = mlp_batch(step)
        if step == 1:
            batch["input"] = poison(batch["input"], "nan")
        a.step(batch)
    a.save_checkpoint(tmp_path / "ckpt")
    b = mlp_session(loss_scale_manager=mgr)
    b.load_checkpoint(tmp_path / "ckpt")
    assert_bitwise_equal(snapshot(a), snapshot(b))
    assert b.loss_scale == a.loss_scale and b.global_step == a.global_step == 4
    for step in range(5, 9):
        assert a.step(mlp_batch(step)) == b.step(mlp_batch(step))
    assert_bitwise_equal(snapshot(a), snapshot(b))
    # A checkpoint of the plain model is not silently loaded into the guarded one.
    plain = mlp_session()
    plain.save_checkpoint(tmp_path / "plain")
    with pytest.raises(ax.CheckpointError, match="another model"):
        b.load_checkpoint(tmp_path / "plain")


def test_dynamic_loss_scale_state_travels_in_the_trainable_file(tmp_path):
    from adamax_onnx.trainable import export_trainable_model

    a = mlp_session(loss_scale_manager=ax.DynamicLossScaleManager(2.0**8, 2, 2))
    for step in range(5):
        batch = mlp_batch(step)
        if step == 2:
            batch["input"] = poison(batch["input"], "nan")
        a.step(batch)
    b = ax.TrainingSession(str(export_trainable_model(a, tmp_path / "t.onnx")))
    assert_bitwise_equal(snapshot(a), snapshot(b))
    for step in range(5, 8):
        assert a.step(mlp_batch(step)) == b.step(mlp_batch(step))
    assert_bitwise_equal(snapshot(a), snapshot(b))


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_float16_output_with_a_builtin_loss_is_computed_in_float32(loss):
    """A float16 network output is cast to float32 before a built-in loss (MindSpore's amp);
    the step's loss equals a numpy float32 loss of the float16 forward pass."""
    m = fp16_model()
    opt = ax.AdaMax(ax.trainable_params(m), learning_rate=0.01)
    train = ax.build_training_model(m, opt, loss=loss, output="out")
    loss_out = next(o for o in train.graph.output if o.name == "loss")
    assert loss_out.type.tensor_type.elem_type == TensorProto.FLOAT
    sess = ax.TrainingSession(train)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 8)).astype(F16)
    w = numpy_helper.to_array(next(i for i in m.graph.initializer if i.name == "fc.weight"))
    out = (x.astype(F32) @ w.astype(F32)).astype(F16).astype(F32)  # bias starts at 0
    if loss == "mse":
        y = rng.standard_normal((16, 4)).astype(F16)
        expected = float(((out - y.astype(F32)) ** 2).mean())
    else:
        y = rng.integers(0, 4, 16).astype(np.int64)
        z = out - out.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        expected = float(-logp[np.arange(16), y].mean())
    first = sess.step({"input": x, "target": np.zeros((16, 4), F32), "labels": y})
    assert first == pytest.approx(expected, rel=2e-3)
    losses = [
        sess.step({"input": x, "target": np.zeros((16, 4), F32), "labels": y}) for _ in range(30)
    ]
    assert losses[-1] < first
    assert sess.parameters()["fc.weight"].dtype == F16


# -- arguments ----------------------------------------------------------------------------------
def test_option_types_are_checked():
    m = build_mlp(in_features=4, hidden=(), num_classes=2)
    opt = ax.AdaMax(ax.trainable_params(m))
    with pytest.raises(TypeError, match="skip_nonfinite"):
        ax.build_training_model(m, opt, skip_nonfinite="yes")
    with pytest.raises(TypeError, match="loss_scale_manager"):
        ax.build_training_model(m, opt, loss_scale_manager=1024.0)


def _decode(kwargs: dict) -> dict:
    return {k: float(v) if v in ("nan", "inf") else v for k, v in kwargs.items()}


# Where we are stricter than MindSpore on purpose: it accepts a NaN/Inf scale or factor and then
# trains on NaN loss scales; the graph keeps the scale in float32, so we refuse them up front.
DELIBERATE = {"init_nan", "init_inf", "factor_nan", "nan"}


@pytest.mark.parametrize(
    "which,case",
    [("dynamic", c) for c in sorted(GOLDEN["dynamic_manager_args"])]
    + [("fixed", c) for c in sorted(GOLDEN["fixed_manager_args"])],
)
def test_manager_arguments_match_mindspore(which, case):
    rec = GOLDEN[f"{which}_manager_args"][case]
    cls = ax.DynamicLossScaleManager if which == "dynamic" else ax.FixedLossScaleManager
    expected = {"ValueError": ValueError, "TypeError": TypeError, None: None}[rec["raises"]]
    if case in DELIBERATE:
        assert expected is None
        expected = ValueError
    kwargs = _decode(rec["kwargs"])
    if expected is None:
        mgr = cls(**kwargs)
        assert mgr.get_drop_overflow_update() == kwargs.get("drop_overflow_update", True)
    else:
        with pytest.raises(expected) as info:
            cls(**kwargs)
        assert next(iter(kwargs)) in str(info.value)
