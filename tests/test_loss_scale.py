"""Loss scaling (adamax_onnx/loss_scale.py and the dynamic update of passes/nonfinite.py):
fixed and dynamic loss-scale managers in the training graph.

References: MindSpore 2.10's ``nn.DynamicLossScaleUpdateCell`` trajectories recorded in
tests/golden/mindspore_loss_scale.json (by tests/golden/make_mindspore_loss_scale.py); for
"unchanged", the state before the step, compared bit for bit.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, numpy_helper

import adamax_onnx as ax
from adamax_onnx.models.mlp import build_mlp
from tests.nonfinitecheck import (
    F16,
    F32,
    assert_bitwise_equal,
    fp16_batch,
    fp16_model,
    mlp_batch,
    mlp_session,
    poison,
    snapshot,
)

GOLDEN = json.loads(
    (Path(__file__).parent / "golden" / "mindspore_loss_scale.json").read_text(encoding="utf-8")
)


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
