"""Each stage of the AdaMax update alone: a tiny graph with just that stage, run by onnxruntime,
against numpy written from MindSpore 2.10's formula (nn.AdaMax, its optimizer base class and the
CPU ApplyAdaMax kernel; /work/shared/reference/mindspore-nn-AdaMax.txt).

MindSpore runs the gradient stages in the parameter's dtype, one rounding per op (numpy float16
and ml_dtypes bfloat16 arithmetic round the same way), and ApplyAdaMax in float32.
"""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto

from adamax_onnx.passes.adamax_stages import (
    KernelInputs,
    StageBuilder,
    StateInputs,
    advance_step,
    apply_adamax,
    apply_adamax_buckets,
    centralize_gradient,
    decay_weight,
    learning_rate,
    pack_buckets,
    unscale_gradient,
    weight_decay,
)
from adamax_onnx.passes.builder import IR_VERSION, OPSET
from adamax_onnx.passes.contract import BETA1_POWER, GLOBAL_STEP, lr_current_name, lr_input_name
from adamax_onnx.passes.precision import Precision
from adamax_onnx.schedules import WarmUpLR

f32 = np.float32
BF16 = ml_dtypes.bfloat16
ELEM = {
    np.dtype(np.float32): TensorProto.FLOAT,
    np.dtype(np.float16): TensorProto.FLOAT16,
    np.dtype(np.float64): TensorProto.DOUBLE,
    np.dtype(BF16): TensorProto.BFLOAT16,
}
PARAM_DTYPES = [np.float32, np.float16, BF16, np.float64]
DTYPE_IDS = ["float32", "float16", "bfloat16", "float64"]


def run(build, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run the nodes ``build(g, state, x)`` adds (``x``: the fed values by name); returns the
    values ``build`` returns (values, or names of values it made), then the outputs it declared
    on ``state``. ``feeds`` may also set the state inputs the stages add (they have defaults)."""
    x = {
        n: ir.Value(
            name=n, type=ir.TensorType(ir.DataType.from_numpy(a.dtype)), shape=ir.Shape(a.shape)
        )
        for n, a in feeds.items()
    }
    graph = ir.Graph([], [], nodes=[], opset_imports={"": OPSET}, name="stage")
    g = StageBuilder(graph)  # the feeds' names are short ("w", "grad"): no stage makes them
    state = StateInputs(g)
    results = list(build(g, state, x))
    graph.extend(g.nodes)
    state.attach(graph)
    declared = {v.name for v in state.inputs}
    graph.inputs.extend(v for n, v in x.items() if n not in declared)
    made = {v.name: v for node in graph for v in node.outputs}
    declared_outputs = list(graph.outputs)
    graph.outputs.clear()
    graph.outputs.extend([made[r] if isinstance(r, str) else r for r in results])
    graph.outputs.extend(declared_outputs)
    model = ir.serde.serialize_model(ir.Model(graph, ir_version=IR_VERSION))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def random(shape, dtype, seed=0, scale=1.0) -> np.ndarray:
    return (np.random.default_rng(seed).normal(size=shape) * scale).astype(dtype)


def stage_inputs(dtype, *arrays: np.ndarray) -> list[np.ndarray]:
    """Parameter-dtype arrays as the stages read them: float32 for low precision."""
    prec = Precision(ELEM[np.dtype(dtype)], "p.adamax")
    return [a.astype(prec.stage_dtype) for a in arrays]


def assert_bits(got: np.ndarray, expected: np.ndarray, dtype) -> None:
    """Equal once both are in the parameter dtype (stage outputs of float16/bfloat16 are float32
    holding exactly representable values)."""
    got_p, exp_p = np.asarray(got).astype(dtype), np.asarray(expected).astype(dtype)
    np.testing.assert_array_equal(got_p.astype(np.float64), exp_p.astype(np.float64))
    # The float32 carrier holds the rounded value exactly: no extra bits.
    np.testing.assert_array_equal(np.asarray(got).astype(np.float64), got_p.astype(np.float64))


# -- gradient stages -------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", PARAM_DTYPES, ids=DTYPE_IDS)
def test_decay_weight(dtype):
    w, grad = random((8, 5), dtype, 0), random((8, 5), dtype, 1, 0.01)
    wd = f32(0.05 * 128.0)  # weight_decay * loss_scale, a float32 Tensor in MindSpore
    prec = Precision(ELEM[np.dtype(dtype)], "p.adamax")
    feeds = dict(zip(("w", "grad"), stage_inputs(dtype, w, grad), strict=True))
    feeds["wd"] = np.array(wd)
    (got,) = run(lambda g, s, x: [decay_weight(g, prec, x["w"], x["grad"], x["wd"])], feeds)
    # MindSpore: AddN(Mul(w, Cast(wd, dtype)), grad), each op in the parameter dtype.
    wd_p = np.asarray(wd).astype(dtype)
    expected = (w * wd_p).astype(dtype) + grad
    assert expected.dtype == np.dtype(dtype)
    assert_bits(got, expected, dtype)


@pytest.mark.parametrize("dtype", PARAM_DTYPES, ids=DTYPE_IDS)
def test_centralize_gradient(dtype):
    grad = random((4, 16, 3, 3), dtype, 2)
    prec = Precision(ELEM[np.dtype(dtype)], "p.adamax")
    (feed,) = stage_inputs(dtype, grad)
    (got,) = run(lambda g, s, x: [centralize_gradient(g, prec, x["grad"], 4)], {"grad": feed})
    mean = grad.astype(np.float64).mean(axis=(1, 2, 3), keepdims=True)
    expected = grad - mean.astype(dtype)
    assert expected.dtype == np.dtype(dtype)
    # The mean is a sum of 36 terms: onnxruntime's summation order is not numpy's, so a float32
    # or float64 mean may differ from the correctly rounded one by an ulp or two; float16 and
    # bfloat16 (summed in float32, then rounded) are exact.
    if dtype in (np.float32, np.float64):
        ulp = np.spacing(np.asarray(4.0, dtype))  # |grad| < 4 here
        np.testing.assert_allclose(got, expected, rtol=0, atol=4 * ulp)
    else:
        assert_bits(got, expected, dtype)
    # Centralized: every row now sums to (about) zero.
    assert np.abs(np.asarray(got, np.float64).mean(axis=(1, 2, 3))).max() < 0.02


@pytest.mark.parametrize("dtype", PARAM_DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("loss_scale", [128.0, 3.0])
def test_unscale_gradient(dtype, loss_scale):
    grad = random((7, 3), dtype, 3, 100.0)
    prec = Precision(ELEM[np.dtype(dtype)], "p.adamax")
    (feed,) = stage_inputs(dtype, grad)
    (got,) = run(lambda g, s, x: [unscale_gradient(g, prec, x["grad"], loss_scale)], {"grad": feed})
    # MindSpore: grad * Cast(float32(1 / loss_scale), dtype).
    expected = grad * np.asarray(f32(1.0 / loss_scale)).astype(dtype)
    assert_bits(got, expected, dtype)


def test_low_precision_rounds_after_every_op():
    """float16: a stage result rounded only at the end would differ from MindSpore's."""
    w = np.array([0.361572265625, -0.6650390625, 0.9033203125], np.float16)
    grad = np.array([-0.12213134765625, 0.267578125, 0.4462890625], np.float16)
    prec = Precision(TensorProto.FLOAT16, "p.adamax")
    feeds = {"w": w.astype(f32), "grad": grad.astype(f32), "wd": np.array(f32(1.0 / 3.0))}
    (got,) = run(lambda g, s, x: [decay_weight(g, prec, x["w"], x["grad"], x["wd"])], feeds)
    wd16 = np.float16(f32(1.0 / 3.0))
    per_op = (w * wd16).astype(np.float16) + grad
    at_end = (w.astype(f32) * f32(wd16) + grad.astype(f32)).astype(np.float16)
    assert_bits(got, per_op, np.float16)
    assert (per_op != at_end).all()  # the case really tells them apart


# -- per-group scalars ---------------------------------------------------------------------
def test_advance_step():
    def build(g, state, x):
        step = advance_step(g, state, f32(0.9))
        return [step.step_f, step.bias_correction]

    step_f, bias, step_next, b1p_next = run(build, {})  # defaults: step 0, beta1_power 1
    assert step_f == 0.0 and step_next == 1
    assert b1p_next == f32(0.9) and bias == f32(1.0) - f32(0.9)


def test_advance_step_from_a_later_state():
    b1p = f32(0.9) ** 41
    feeds = {GLOBAL_STEP: np.array(41, np.int64), BETA1_POWER: np.array(b1p, f32)}
    bias, step_next, b1p_next = run(
        lambda g, state, x: [advance_step(g, state, f32(0.9)).bias_correction], feeds
    )
    assert step_next == 42 and b1p_next == f32(b1p * f32(0.9))
    assert bias == f32(1.0) - b1p_next


def _group_lr(lr, convert_fixed, step, fixed_feed=None):
    """The lr stage of group 0 at ``step``; also checks its named copy ``lr_current``."""
    feeds = {GLOBAL_STEP: np.array(step, np.int64)}
    if fixed_feed is not None:
        feeds[lr_input_name(0)] = np.array(fixed_feed, f32)

    def build(g, state, x):
        step_t = advance_step(g, state, f32(0.9))
        return [learning_rate(g, state, lr, 0, step_t, convert_fixed), lr_current_name(0)]

    value, current, *_ = run(build, feeds)
    assert value == current
    return value


def test_learning_rate_fixed_is_an_input_with_its_default():
    assert _group_lr(0.003, False, 5) == f32(0.003)
    assert _group_lr(0.003, False, 5, fixed_feed=0.25) == f32(0.25)


def test_learning_rate_fixed_next_to_a_dynamic_one_is_converted():
    lr = 1e-3 + 3e-9  # not a multiple of 2**-23
    got = _group_lr(lr, True, 0)
    expected = f32(f32(f32(lr) + f32(1.0)) - f32(1.0))  # MindSpore _ConvertToCell
    assert got == expected and expected != f32(lr)


def test_learning_rate_table_is_read_at_the_step_before_the_increment():
    table = np.array([0.5, 0.25, 0.125], f32)
    for step in range(3):
        assert _group_lr(table, False, step) == table[step]


def test_learning_rate_schedule():
    schedule = WarmUpLR(0.1, 4)
    for step in (0, 1, 3, 9):
        expected = f32(0.1) * (f32(min(step, 4)) / f32(4))
        assert _group_lr(schedule, False, step) == expected


def _group_wd(wd, loss_scale, step):
    """The weight-decay stage of group 0 at ``step`` (None: no decay)."""
    made = []

    def build(g, state, x):
        value = weight_decay(g, wd, 0, advance_step(g, state, f32(0.9)), loss_scale)
        made.append(value)
        return [] if value is None else [value]

    got = run(build, {GLOBAL_STEP: np.array(step, np.int64)})
    return None if made[0] is None else got[0]


def test_weight_decay_fixed_is_the_double_product_stored_as_float32():
    wd, loss_scale = 0.01, 10.0
    assert _group_wd(wd, loss_scale, 0) == f32(wd * loss_scale)
    assert f32(wd * loss_scale) != f32(wd) * f32(loss_scale)  # the case tells them apart
    assert _group_wd(0.0, loss_scale, 0) is None


def test_weight_decay_schedule_is_multiplied_on_the_graph_in_float32():
    schedule = WarmUpLR(0.3, 7)
    for step, loss_scale in ((3, 3.0), (5, 1.0)):
        wd = f32(0.3) * (f32(step) / f32(7))
        assert _group_wd(schedule, loss_scale, step) == wd * f32(loss_scale)


# -- ApplyAdaMax -----------------------------------------------------------------------------
HYPER = (f32(0.9), f32(0.999), f32(1e-8))


def apply_reference(w, m, v, grad, lr):
    """MindSpore's ApplyAdaMax CPU kernel, float32, in its order."""
    beta1, beta2, eps = HYPER
    m_next = m * beta1 + grad * (f32(1.0) - beta1)
    v_next = np.maximum(v * beta2, np.abs(grad))
    return m_next, v_next, w - lr * (m_next / (v_next + eps))


def test_apply_adamax():
    w, m, grad = random((6, 4), f32, 4), random((6, 4), f32, 5, 0.1), random((6, 4), f32, 6)
    v = np.abs(random((6, 4), f32, 7))
    lr = f32(f32(0.01) / (f32(1.0) - f32(0.9) ** 3))
    feeds = {"w": w, "m": m, "v": v, "grad": grad, "lr": np.array(lr)}

    def build(g, state, x):
        return apply_adamax(g, "p.adamax", x["w"], x["m"], x["v"], x["grad"], x["lr"], HYPER)

    got = run(build, feeds)
    for got_t, exp_t in zip(got, apply_reference(w, m, v, grad, lr), strict=True):
        np.testing.assert_array_equal(got_t, exp_t)


@pytest.mark.parametrize("dtype", [np.float16, np.float64], ids=["float16", "float64"])
def test_apply_adamax_runs_in_float32_for_other_dtypes(dtype):
    w, m, grad = random((5,), dtype, 8), random((5,), dtype, 9, 0.1), random((5,), dtype, 10)
    v = np.abs(random((5,), dtype, 11))
    lr = f32(0.003)
    prec = Precision(ELEM[np.dtype(dtype)], "p.adamax")

    def build(g, state, x):
        w_s, g_s = prec.enter_stages(g, x["w"], x["grad"])
        w_k, g_k, m_k, v_k = prec.enter_kernel(g, w_s, g_s, x["m"], x["v"])
        results = apply_adamax(g, prec.prefix, w_k, m_k, v_k, g_k, x["lr"], HYPER)
        return [
            prec.leave_kernel(g, r, label, f"{label}.out")
            for r, label in zip(results, "mvw", strict=True)
        ]

    got = run(build, {"w": w, "m": m, "v": v, "grad": grad, "lr": np.array(lr)})
    expected = apply_reference(*(x.astype(f32) for x in (w, m, v, grad)), lr)
    for got_t, exp_t in zip(got, expected, strict=True):
        assert got_t.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(got_t, exp_t.astype(dtype))


def test_apply_adamax_buckets_match_one_parameter_at_a_time():
    shapes = {"a": (3, 4), "b": (5,), "c": (2, 1, 3), "d": (40,)}
    feeds = {}
    for i, (p, shape) in enumerate(shapes.items()):
        for j, label in enumerate(("w", "m", "v", "grad")):
            a = random(shape, f32, 10 * i + j, 0.1 if label == "m" else 1.0)
            feeds[f"{p}.{label}"] = np.abs(a) if label == "v" else a
    lr = f32(0.05)
    feeds["lr"] = np.array(lr)
    members = []

    def build(g, state, x):
        for p, shape in shapes.items():
            tensors = (x[f"{p}.{k}"] for k in ("w", "m", "v", "grad"))
            members.append(KernelInputs(p, list(shape), math.prod(shape), *tensors))
        for k in members:
            state.output(f"{k.param}.adamax.m.updated", TensorProto.FLOAT, k.dims)
            state.output(f"{k.param}.adamax.v.updated", TensorProto.FLOAT, k.dims)
            state.output(f"{k.param}.updated", TensorProto.FLOAT, k.dims)
        apply_adamax_buckets(g, 0, members, x["lr"], HYPER, bucket_size=30)
        return []

    got = run(build, feeds)
    assert [len(b) for b in pack_buckets(members, 30)] == [3, 1]  # 12+5+6, then 40 alone
    for i, k in enumerate(members):
        expected = apply_reference(*(feeds[f"{k.param}.{x}"] for x in ("w", "m", "v", "grad")), lr)
        for got_t, exp_t in zip(got[3 * i : 3 * i + 3], expected, strict=True):
            assert got_t.shape == exp_t.shape
            np.testing.assert_array_equal(got_t, exp_t)


def test_pack_buckets_fills_in_order():
    sizes = [10, 10, 5, 30, 1, 1]
    members = [KernelInputs(f"p{i}", [n], n, *[ir.Value()] * 4) for i, n in enumerate(sizes)]
    packed = [[k.numel for k in b] for b in pack_buckets(members, 25)]
    assert packed == [[10, 10, 5], [30], [1, 1]]
