"""Schedules emitted as ONNX subgraphs of global_step, checked against MindSpore 2.10.

Each schedule is emitted into a tiny model (int64 ``global_step`` -> Cast float32 -> schedule ->
float32 scalar) run by onnxruntime for every recorded step, and compared with

* the values MindSpore 2.10 itself produced (``tests/golden/schedules.json``, written by
  ``tests/golden/make_schedules_golden.py``; mindspore is not needed here),
* an independent, vectorised numpy float32 reference written below from the formulas (its
  ``Pow``/``Sin`` in double from Python's math, rounded once: numpy's own float32 power/sin
  round differently on AVX-512, AVX2 and scalar CPUs),
* the schedule's own ``value(step)``.

Argument validation is checked against the exception types MindSpore raised for the same
arguments (also recorded in the golden file).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from adamax_onnx import schedules
from adamax_onnx.passes.builder import IR_VERSION, OPSET, GraphBuilder
from adamax_onnx.schedules import (
    CosineDecayLR,
    ExponentialDecayLR,
    InverseDecayLR,
    LearningRateSchedule,
    NaturalExpDecayLR,
    PolynomialDecayLR,
    WarmUpLR,
    WeightDecaySchedule,
)
from tests.reference import pow32, sin32, ulps

GOLDEN = json.loads((Path(__file__).parent / "golden" / "schedules.json").read_text())
STEPS = np.array(GOLDEN["steps"], dtype=np.int64)
RTOL = 1e-6
F = np.float32

SCHEDULE_CLASSES = {
    "ExponentialDecayLR": ExponentialDecayLR,
    "NaturalExpDecayLR": NaturalExpDecayLR,
    "InverseDecayLR": InverseDecayLR,
    "CosineDecayLR": CosineDecayLR,
    "PolynomialDecayLR": PolynomialDecayLR,
    "WarmUpLR": WarmUpLR,
}


def decode(value):
    """Inverse of ``encode`` in make_schedules_golden.py."""
    if isinstance(value, list):
        return [decode(v) for v in value]
    if isinstance(value, dict) and "$" in value:
        kind, v = value["$"], value["v"]
        if kind == "float":
            return float(v)
        if kind == "tuple":
            return tuple(decode(x) for x in v)
        if kind == "np.ndarray":
            return np.array(v, dtype=value["dtype"])
        return getattr(np, kind[3:])(v)
    if isinstance(value, dict):
        return {k: decode(v) for k, v in value.items()}
    return value


def case_id(case: dict) -> str:
    key = case.get("cls") or case.get("target")
    args = ",".join(f"{k}={v}" for k, v in case["kwargs"].items())
    return f"{key}({args})"


# -- running a schedule in onnxruntime ------------------------------------------------------------
def schedule_model(schedule: LearningRateSchedule, name: str = "sched") -> onnx.ModelProto:
    """global_step (int64 scalar) -> Cast(float32) -> schedule.emit -> "lr" (float32 scalar)."""
    g = GraphBuilder(taken=["global_step", "lr"])
    step = g.op("Cast", ["global_step"], "global_step_f", to=TensorProto.FLOAT)
    out = schedule.emit(g, step, name)
    g.op("Identity", [out], "lr", output="lr")
    graph = helper.make_graph(
        g.nodes,
        "schedule",
        [helper.make_tensor_value_info("global_step", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("lr", TensorProto.FLOAT, [])],
        initializer=g.initializers,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def run_model(model: onnx.ModelProto, steps) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    out = []
    for s in steps:
        (v,) = sess.run(["lr"], {"global_step": np.array(s, dtype=np.int64)})
        assert v.dtype == np.float32 and v.shape == ()
        out.append(v)
    return np.array(out, dtype=np.float32)


def run_schedule(schedule: LearningRateSchedule, steps=STEPS) -> np.ndarray:
    return run_model(schedule_model(schedule), steps)


# -- independent numpy float32 reference ---------------------------------------------------------
_pow = np.frompyfunc(pow32, 2, 1)  # elementwise, CPU independent (tests/reference.py)
_sin = np.frompyfunc(sin32, 1, 1)


def reference(cls: str, kw: dict, steps: np.ndarray) -> np.ndarray:
    """MindSpore's construct() formulas, vectorised over float32 steps."""
    with np.errstate(over="ignore", under="ignore"):
        return _reference(cls, kw, steps.astype(np.float32))


def _reference(cls: str, kw: dict, s: np.ndarray) -> np.ndarray:
    if cls == "ExponentialDecayLR":
        p = s / F(kw["decay_steps"])
        if kw.get("is_stair", False):
            p = np.floor(p)
        return F(kw["learning_rate"]) * _pow(F(kw["decay_rate"]), p).astype(F)
    if cls == "NaturalExpDecayLR":
        d = F(kw["decay_steps"])
        p = np.floor(s / d) * d if kw.get("is_stair", False) else s
        return F(kw["learning_rate"]) * _pow(F(math.e), F(-kw["decay_rate"]) * p).astype(F)
    if cls == "InverseDecayLR":
        p = s / F(kw["decay_steps"])
        if kw.get("is_stair", False):
            p = np.floor(p)
        # MindSpore's order, lr * (1 / denominator); a plain division is 1 ulp off at times.
        return F(kw["learning_rate"]) * (F(1) / (F(1) + F(kw["decay_rate"]) * p))
    if cls == "CosineDecayLR":
        d = F(kw["decay_steps"])
        delta = F(0.5 * (kw["max_lr"] - kw["min_lr"]))
        x = F(math.pi) * (np.minimum(s, d) / d + F(0.5))
        return F(kw["min_lr"]) + delta * (F(1) + _sin(x).astype(F))
    if cls == "PolynomialDecayLR":
        d = F(kw["decay_steps"])
        if kw.get("update_decay_steps", False):
            horizon, t = d * np.maximum(np.ceil(s / d), F(1)), s
        else:
            horizon, t = d, np.minimum(s, d)
        diff = F(kw["learning_rate"] - kw["end_learning_rate"])
        factor = _pow(F(1) - t / horizon, F(kw["power"])).astype(F)
        return diff * factor + F(kw["end_learning_rate"])
    if cls == "WarmUpLR":
        w = F(kw["warmup_steps"])
        return F(kw["learning_rate"]) * (np.minimum(s, w) / w)
    raise KeyError(cls)


# -- golden comparisons ----------------------------------------------------------------------------
@pytest.mark.parametrize("case", GOLDEN["schedules"], ids=case_id)
def test_graph_matches_mindspore_reference_and_value(case):
    cls, kw = case["cls"], case["kwargs"]
    sched = SCHEDULE_CLASSES[cls](**kw)
    golden = np.array(decode(case["values"]), dtype=np.float32)
    got = run_schedule(sched)

    np.testing.assert_allclose(got, golden, rtol=RTOL, atol=0, err_msg=f"{cls} vs MindSpore")
    # The reference rounds the exact Pow/Sin once (CPU independent); onnxruntime's and MindSpore's
    # float32 powf/sinf are within 1 ulp of that but not always correctly rounded (seen: 1 ulp,
    # NaturalExpDecayLR at step 55). Only IEEE arithmetic elsewhere: bit for bit.
    ref = reference(cls, kw, STEPS)
    allowed = 0 if cls in ("InverseDecayLR", "WarmUpLR") else 1
    worst = ulps(got, ref).max()
    assert worst <= allowed, f"{cls} vs numpy: {worst} ulps"
    # value() rounds Pow/Sin once from double, like the reference: bit for bit on every CPU
    # (numpy's float32 power/sin would not be: their SIMD kernels differ by CPU, up to 6 ulps).
    values = np.array([sched.value(int(s)) for s in STEPS], dtype=np.float32)
    assert all(isinstance(sched.value(int(s)), float) for s in STEPS[:3])
    np.testing.assert_array_equal(values, ref, err_msg=f"{cls}.value vs numpy reference")
    assert ulps(values, got).max() <= allowed, f"{cls}.value vs graph"


@pytest.mark.parametrize(
    "case",
    [c for c in GOLDEN["schedules"] if c["cls"] in ("InverseDecayLR", "WarmUpLR")],
    ids=case_id,
)
def test_bit_exact_where_only_ieee_arithmetic(case):
    # +, *, /, Reciprocal, Floor and Min are correctly rounded everywhere, so these schedules
    # (no Pow/Sin) must reproduce MindSpore bit for bit, including its order of operations.
    sched = SCHEDULE_CLASSES[case["cls"]](**case["kwargs"])
    golden = np.array(decode(case["values"]), dtype=np.float32)
    np.testing.assert_array_equal(run_schedule(sched), golden)
    np.testing.assert_array_equal([F(sched.value(int(s))) for s in STEPS], golden)


def test_golden_covers_the_required_argument_sets():
    steps = set(GOLDEN["steps"])
    assert set(range(61)) <= steps and max(steps) >= 10**6
    seen = {(c["cls"], tuple(sorted(c["kwargs"].items()))) for c in GOLDEN["schedules"]}
    classes = {cls for cls, _ in seen}
    assert classes == set(SCHEDULE_CLASSES)
    for cls in ("ExponentialDecayLR", "NaturalExpDecayLR", "InverseDecayLR"):
        stairs = {dict(kw).get("is_stair", False) for c, kw in seen if c == cls}
        assert stairs == {False, True}, cls
    poly = [dict(kw) for c, kw in seen if c == "PolynomialDecayLR"]
    assert {kw.get("update_decay_steps", False) for kw in poly} == {False, True}
    assert any(kw["power"] != 1.0 for kw in poly)


# Hand-computed values at the boundaries, independent of both MindSpore and numpy.
@pytest.mark.parametrize(
    "sched, step, expected",
    [
        (ExponentialDecayLR(0.1, 0.5, 4, is_stair=True), 3, 0.1),
        (ExponentialDecayLR(0.1, 0.5, 4, is_stair=True), 4, 0.05),
        (ExponentialDecayLR(0.1, 0.5, 4, is_stair=True), 8, 0.025),
        (ExponentialDecayLR(0.1, 0.5, 4), 2, 0.1 * 0.5**0.5),
        # NaturalExpDecayLR does NOT divide by decay_steps unless is_stair.
        (NaturalExpDecayLR(0.1, 0.5, 4), 2, 0.1 * math.exp(-1.0)),
        (NaturalExpDecayLR(0.1, 0.5, 4, is_stair=True), 7, 0.1 * math.exp(-2.0)),
        (NaturalExpDecayLR(0.1, 0.5, 4, is_stair=True), 8, 0.1 * math.exp(-4.0)),
        (InverseDecayLR(0.1, 1.0, 5, is_stair=True), 9, 0.05),
        (InverseDecayLR(0.1, 1.0, 5), 15, 0.025),
        (CosineDecayLR(0.01, 0.11, 10), 0, 0.11),
        (CosineDecayLR(0.01, 0.11, 10), 5, 0.06),
        (CosineDecayLR(0.01, 0.11, 10), 10, 0.01),
        (CosineDecayLR(0.01, 0.11, 10), 500, 0.01),
        (PolynomialDecayLR(0.1, 0.02, 10, 2.0), 5, 0.08 * 0.25 + 0.02),
        (PolynomialDecayLR(0.1, 0.02, 10, 2.0), 50, 0.02),
        # update_decay_steps: the horizon grows to 20 after step 10, and the step is not clamped.
        (PolynomialDecayLR(0.1, 0.02, 10, 1.0, True), 10, 0.02),
        (PolynomialDecayLR(0.1, 0.02, 10, 1.0, True), 15, 0.08 * 0.25 + 0.02),
        (WarmUpLR(0.1, 4), 0, 0.0),
        (WarmUpLR(0.1, 4), 2, 0.05),
        (WarmUpLR(0.1, 4), 400, 0.1),
    ],
    ids=lambda x: x.__class__.__name__ if isinstance(x, LearningRateSchedule) else repr(x),
)
def test_hand_computed_boundaries(sched, step, expected):
    got = run_schedule(sched, [step])[0]
    assert got == pytest.approx(expected, rel=1e-6, abs=1e-9)
    assert sched.value(step) == pytest.approx(expected, rel=1e-6, abs=1e-9)


def test_no_table_any_step():
    # Far beyond anything a table could hold: the subgraph is a formula of global_step.
    sched = WarmUpLR(0.25, 10)
    big = [2**31 - 1, 10**12, 2**53]
    assert list(run_schedule(sched, big)) == [0.25, 0.25, 0.25]
    model = schedule_model(CosineDecayLR(0.0, 1.0, 1000))
    assert all(np.asarray(onnx.numpy_helper.to_array(t)).size == 1 for t in model.graph.initializer)


# -- graph structure -------------------------------------------------------------------------------
@pytest.mark.parametrize("case", GOLDEN["schedules"][::3], ids=case_id)
def test_emitted_subgraph_is_standard_float32_scalar(case):
    sched = SCHEDULE_CLASSES[case["cls"]](**case["kwargs"])
    g = GraphBuilder(taken=["step"])
    out = sched.emit(g, "step", "adamax.lr.group0")
    assert out.startswith("adamax.lr.group0")
    assert all(n.domain in ("", "ai.onnx") for n in g.nodes)
    assert all(n.name.startswith("adamax.lr.group0") for n in g.nodes)
    assert all(t.name.startswith("adamax.lr.group0") for t in g.initializers)
    graph = helper.make_graph(
        g.nodes,
        "s",
        [helper.make_tensor_value_info("step", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)],
        initializer=g.initializers,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=IR_VERSION
    )
    inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    (out_info,) = inferred.graph.output
    assert out_info.type.tensor_type.elem_type == TensorProto.FLOAT
    assert [d.dim_value for d in out_info.type.tensor_type.shape.dim] == []


def test_two_schedules_in_one_graph_get_distinct_names():
    g = GraphBuilder(taken=["global_step", "lr0", "lr1"])
    step = g.op("Cast", ["global_step"], "step_f", to=TensorProto.FLOAT)
    a = ExponentialDecayLR(0.1, 0.9, 4, True).emit(g, step, "adamax.lr")
    b = ExponentialDecayLR(0.2, 0.8, 3).emit(g, step, "adamax.lr")
    assert a != b
    g.op("Identity", [a], "lr0", output="lr0")
    g.op("Identity", [b], "lr1", output="lr1")
    names = [n.name for n in g.nodes]
    assert len(names) == len(set(names))
    graph = helper.make_graph(
        g.nodes,
        "two",
        [helper.make_tensor_value_info("global_step", TensorProto.INT64, [])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, []) for n in ("lr0", "lr1")],
        initializer=g.initializers,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION
    )
    onnx.checker.check_model(model, full_check=True)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for s in (0, 5, 13):
        lr0, lr1 = sess.run(None, {"global_step": np.array(s, np.int64)})
        assert lr0 == pytest.approx(ExponentialDecayLR(0.1, 0.9, 4, True).value(s), rel=1e-6)
        assert lr1 == pytest.approx(ExponentialDecayLR(0.2, 0.8, 3).value(s), rel=1e-6)


# -- user-defined schedules ------------------------------------------------------------------------
class ConstantThenHalve(LearningRateSchedule):
    """The module docstring's example: ``lr`` before ``boundary``, ``lr / 2`` from it on."""

    def __init__(self, learning_rate: float, boundary: int) -> None:
        self.learning_rate = learning_rate
        self.boundary = boundary

    def emit(self, g: GraphBuilder, step: str, name: str) -> str:
        lr = g.const(self.learning_rate, np.float32, f"{name}.learning_rate")
        half = g.const(
            np.float32(self.learning_rate) * np.float32(0.5),
            np.float32,
            f"{name}.half_learning_rate",
        )
        boundary = g.const(self.boundary, np.float32, f"{name}.boundary")
        before = g.op("Less", [step, boundary], f"{name}.before_boundary")
        return g.op("Where", [before, lr, half], name)

    def value(self, step: int) -> float:
        lr = np.float32(self.learning_rate)
        if np.float32(step) < np.float32(self.boundary):
            return float(lr)
        return float(lr * np.float32(0.5))


def test_user_defined_schedule():
    sched = ConstantThenHalve(0.01, 20)
    got = run_schedule(sched, range(60))
    expected = np.where(np.arange(60) < 20, F(0.01), F(0.005)).astype(np.float32)
    np.testing.assert_array_equal(got, expected)
    assert [sched.value(s) for s in range(60)] == [float(v) for v in expected]
    assert isinstance(sched, WeightDecaySchedule)


def test_module_docstring_example_runs():
    """The example in the module docstring is the class above, and it works as written."""
    doc = schedules.__doc__
    start = doc.index("    import numpy as np")
    end = doc.index("An instance is then passed")
    code = "\n".join(line[4:] for line in doc[start:end].splitlines())
    namespace: dict = {}
    exec(compile(code, "<schedules docstring>", "exec"), namespace)
    sched = namespace["ConstantThenHalve"](0.01, 20)
    np.testing.assert_array_equal(
        run_schedule(sched, range(40)), run_schedule(ConstantThenHalve(0.01, 20), range(40))
    )
    assert re.search(r"def emit\(self, g, step, name\)", doc)
    assert re.search(r"def value\(self, step\)", doc)


def test_base_class_requires_emit_and_value():
    assert WeightDecaySchedule is LearningRateSchedule
    with pytest.raises(NotImplementedError):
        LearningRateSchedule().emit(GraphBuilder(), "step", "x")
    with pytest.raises(NotImplementedError):
        LearningRateSchedule().value(0)


def test_attributes_and_repr():
    s = PolynomialDecayLR(0.1, 0.01, 10, 0.5, update_decay_steps=True)
    assert (s.learning_rate, s.end_learning_rate, s.decay_steps, s.power) == (0.1, 0.01, 10, 0.5)
    assert s.update_decay_steps is True
    assert repr(s).startswith("PolynomialDecayLR(learning_rate=0.1")
    c = CosineDecayLR(0.0, 0.1, 10)
    assert (c.min_lr, c.max_lr, c.decay_steps) == (0.0, 0.1, 10)
    w = WarmUpLR(0.1, 3)
    assert (w.learning_rate, w.warmup_steps) == (0.1, 3)


# -- argument validation -----------------------------------------------------------------------
ERROR_CASES = [c for c in GOLDEN["errors"] if c["target"] in SCHEDULE_CLASSES]
EXCEPTIONS = {"TypeError": TypeError, "ValueError": ValueError, "OverflowError": OverflowError}


@pytest.mark.parametrize("case", ERROR_CASES, ids=case_id)
def test_argument_validation_matches_mindspore(case):
    cls = SCHEDULE_CLASSES[case["target"]]
    kwargs = decode(case["kwargs"])
    if case["raises"] is None:
        cls(**kwargs)  # MindSpore accepts these arguments
        return
    expected = EXCEPTIONS[case["raises"]]
    with pytest.raises(expected) as info:
        cls(**kwargs)
    # Exactly MindSpore's type, not a subclass/superclass coincidence.
    assert type(info.value) is expected


def test_error_cases_cover_every_argument():
    for name, cls in SCHEDULE_CLASSES.items():
        import inspect

        params = [p for p in inspect.signature(cls).parameters]
        bad = {k for c in ERROR_CASES if c["target"] == name and c["raises"] for k in c["kwargs"]}
        assert set(params) <= bad, name
