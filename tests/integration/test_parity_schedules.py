"""Schedules as learning rate and as dynamic weight decay in the optimizer graph, against numpy.

Every case runs >= 40 steps, so each schedule crosses its ``decay_steps`` / stair / warm-up /
clamping boundaries inside the run. Parameters and moments are compared with the independent
numpy reference (``tests/reference.py``, whose schedules are written from MindSpore's
``construct`` formulas), and the values the graph uses at every step are read back through
``TrainingSession.get_lr`` / ``get_weight_decay`` and compared with the same formulas.
"""

from __future__ import annotations

import numpy as np
import pytest

import adamax_onnx as ax
from adamax_onnx import schedules
from adamax_onnx.schedules import LearningRateSchedule
from tests.reference import NumpyAdaMax, schedule, ulps

STEPS = 40

# id -> (MindSpore class name, arguments); every boundary falls inside the 40 steps.
CASES = {
    "exponential": ("ExponentialDecayLR", dict(learning_rate=0.02, decay_rate=0.7, decay_steps=7)),
    "exponential_stair": (
        "ExponentialDecayLR",
        dict(learning_rate=0.02, decay_rate=0.7, decay_steps=7, is_stair=True),
    ),
    "natural_exp": ("NaturalExpDecayLR", dict(learning_rate=0.02, decay_rate=0.05, decay_steps=6)),
    "natural_exp_stair": (
        "NaturalExpDecayLR",
        dict(learning_rate=0.02, decay_rate=0.05, decay_steps=6, is_stair=True),
    ),
    "inverse": ("InverseDecayLR", dict(learning_rate=0.02, decay_rate=0.5, decay_steps=5)),
    "inverse_stair": (
        "InverseDecayLR",
        dict(learning_rate=0.02, decay_rate=0.5, decay_steps=5, is_stair=True),
    ),
    "cosine": ("CosineDecayLR", dict(min_lr=0.001, max_lr=0.02, decay_steps=15)),
    "polynomial": (
        "PolynomialDecayLR",
        dict(learning_rate=0.02, end_learning_rate=0.001, decay_steps=9, power=2.0),
    ),
    "polynomial_update": (
        "PolynomialDecayLR",
        dict(
            learning_rate=0.02,
            end_learning_rate=0.001,
            decay_steps=9,
            power=0.5,
            update_decay_steps=True,
        ),
    ),
    "warmup": ("WarmUpLR", dict(learning_rate=0.02, warmup_steps=10)),
}


def ours(case):
    name, args = CASES[case]
    return getattr(schedules, name)(**args)


def ref(case):
    name, args = CASES[case]
    return schedule(name, **args)


def make_params(seed=0):
    rng = np.random.default_rng(seed)
    shapes = {"fc.weight": (6, 5), "fc.bias": (6,), "ln.gamma": (5,), "ln.beta": (5,)}
    return {k: (rng.normal(size=s) * 0.5).astype(np.float32) for k, s in shapes.items()}


def grads_for(params, step, scale=1.0):
    rng = np.random.default_rng(7000 + step)
    return {k: (rng.normal(size=v.shape) * 0.5 * scale).astype(v.dtype) for k, v in params.items()}


def assert_close(a, b, what):
    # float32 values from the same formula. The reference's Pow/Sin are the exact values rounded
    # once (tests/reference.py, the same on every CPU); onnxruntime's float32 powf/sinf are not
    # always correctly rounded: at most 1 ulp apart.
    d = ulps(np.float32(a), np.float32(b))
    assert d <= 1, f"{what}: {a!r} vs {b!r}, {d} ulps"


def assert_state(sess, reference):
    got, state = sess.parameters(), sess.state()
    for k in reference.w:
        np.testing.assert_allclose(got[k], reference.w[k], rtol=1e-5, atol=1e-6, err_msg=k)
        np.testing.assert_allclose(state["m"][k], reference.m[k], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(state["v"][k], reference.v[k], rtol=1e-5, atol=1e-6)
    assert state["global_step"] == reference.step
    assert np.float32(state["beta1_power"]) == reference.beta1_power


def run(opt, reference, params, on_step=None, scale=1.0, steps=STEPS):
    sess = ax.TrainingSession(ax.build_optimizer_model(opt, params))
    for step in range(steps):
        if on_step:
            on_step(sess, step)
        g = grads_for(params, step, scale)
        sess.step({f"{k}_grad": v for k, v in g.items()})
        reference.update(g)
    assert_state(sess, reference)
    return sess


@pytest.mark.parametrize("case", list(CASES))
def test_schedule_as_learning_rate(case):
    params = make_params()
    fn = ref(case)
    seen = []

    def check(sess, step):
        lr = sess.get_lr()[0]
        assert_close(lr, fn(step), f"lr at step {step}")
        seen.append(lr)

    run(ax.AdaMax(list(params), learning_rate=ours(case)), NumpyAdaMax(params, fn), params, check)
    check_boundaries(case, np.array(seen, np.float32))


def check_boundaries(case, lr):
    """The shape of the schedule the graph actually used, at its boundaries."""
    name, a = CASES[case]
    if a.get("is_stair"):
        d = a["decay_steps"]
        for start in range(0, STEPS, d):
            window = lr[start : start + d]
            assert (window == window[0]).all(), f"constant within [{start}, {start + d})"
        assert (np.diff(lr[::d]) < 0).all(), "drops at every multiple of decay_steps"
    elif name == "CosineDecayLR":
        d = a["decay_steps"]
        assert (np.diff(lr[: d + 1]) < 0).all()
        assert (lr[d:] == np.float32(a["min_lr"])).all(), "clamped at min_lr after decay_steps"
    elif name == "PolynomialDecayLR" and a.get("update_decay_steps"):
        d = a["decay_steps"]
        end = np.float32(a["end_learning_rate"])
        for k in range(d, STEPS, d):
            assert lr[k] == end and lr[k + 1] > lr[k], f"restarts after step {k}"
    elif name == "PolynomialDecayLR":
        d = a["decay_steps"]
        assert (lr[d:] == np.float32(a["end_learning_rate"])).all()
    elif name == "WarmUpLR":
        w = a["warmup_steps"]
        assert lr[0] == 0 and (np.diff(lr[: w + 1]) > 0).all()
        assert (lr[w:] == np.float32(a["learning_rate"])).all()
    else:
        assert (np.diff(lr) < 0).all()


@pytest.mark.parametrize("loss_scale", [1.0, 4.0])
@pytest.mark.parametrize("case", ["exponential_stair", "natural_exp", "cosine", "warmup"])
def test_schedule_as_dynamic_weight_decay(case, loss_scale):
    """Ungrouped: the beta/gamma name filter still applies; the value is times loss_scale."""
    params = make_params()
    fn = ref(case)

    def check(sess, step):
        assert_close(sess.get_weight_decay()[0], fn(step), f"weight decay at step {step}")

    opt = ax.AdaMax(
        list(params), learning_rate=0.01, weight_decay=ours(case), loss_scale=loss_scale
    )
    reference = NumpyAdaMax(params, 0.01, weight_decay=fn, loss_scale=loss_scale)
    sess = run(opt, reference, params, check, scale=loss_scale)
    assert sess.contract.groups[0]["decayed"] == ["fc.weight", "fc.bias"]


def test_every_schedule_as_weight_decay_in_groups():
    """Grouped dynamic weight decay: no name filter, each group its own schedule."""
    params = make_params()
    cases = ["inverse_stair", "polynomial_update", "exponential", "warmup"]
    names = list(params)
    groups = [{"params": [n], "weight_decay": ours(c)} for n, c in zip(names, cases, strict=True)]
    ref_groups = [
        {"params": [n], "weight_decay": ref(c)} for n, c in zip(names, cases, strict=True)
    ]

    def check(sess, step):
        wd = sess.get_weight_decay()
        for g, c in enumerate(cases):
            assert_close(wd[g], ref(c)(step), f"group {g} weight decay at step {step}")

    opt = ax.AdaMax(groups, learning_rate=0.01, loss_scale=2.0)
    reference = NumpyAdaMax.from_groups(params, ref_groups, learning_rate=0.01, loss_scale=2.0)
    sess = run(opt, reference, params, check, scale=2.0)
    assert [g["decayed"] for g in sess.contract.groups] == [[n] for n in names]


def test_schedules_fixed_lr_and_table_per_group():
    """Per-group lrs of every kind in one model; get_lr reports each, as the graph uses it."""
    params = make_params()
    table = [0.01 * 0.95**i for i in range(STEPS)]
    groups = [
        {"params": ["fc.weight"], "lr": ours("cosine"), "weight_decay": ours("warmup")},
        {"params": ["fc.bias"], "lr": ours("polynomial_update")},
        {"params": ["ln.gamma"], "lr": table, "weight_decay": 0.1},
        {"params": ["ln.beta"]},  # the default fixed lr, next to dynamic ones: lr + 1 - 1
    ]
    ref_groups = [
        {**groups[0], "lr": ref("cosine"), "weight_decay": ref("warmup")},
        {**groups[1], "lr": ref("polynomial_update")},
        groups[2],
        groups[3],
    ]
    reference = NumpyAdaMax.from_groups(params, ref_groups, learning_rate=3e-4, weight_decay=0.01)

    def check(sess, step):
        lr = sess.get_lr()
        expected = [ref("cosine")(step), ref("polynomial_update")(step), table[step]]
        expected.append(reference.lr_at(3e-4, step))
        for g in range(4):
            assert_close(lr[g], expected[g], f"group {g} lr at step {step}")
        assert sess.get_lr_parameter("ln.beta") == lr[3]
        assert (
            lr[3]
            == float(np.float32(np.float32(np.float32(3e-4) + 1) - 1))
            != float(np.float32(3e-4))
        )
        wd = sess.get_weight_decay()
        assert wd[2] == pytest.approx(0.1) and wd[3] == pytest.approx(0.01)

    opt = ax.AdaMax(groups, learning_rate=3e-4, weight_decay=0.01)
    run(opt, reference, params, check)


def test_fixed_and_tabled_lr_readback_and_override():
    params = make_params()
    table = [0.01 * 0.9**i for i in range(12)]
    opt = ax.AdaMax([{"params": ["fc.weight", "fc.bias"]}, {"params": ["ln.gamma", "ln.beta"]}])
    sess = ax.TrainingSession(ax.build_optimizer_model(opt, params))
    assert sess.get_lr() == {0: pytest.approx(1e-3), 1: pytest.approx(1e-3)}
    assert sess.get_lr()[0] == float(np.float32(1e-3))  # no rounding: only fixed lrs
    sess.set_learning_rate(0.05, group=1)
    assert sess.get_lr()[1] == float(np.float32(0.05))
    assert sess.get_weight_decay() == {0: 0.0, 1: 0.0}

    tabled = ax.TrainingSession(ax.build_optimizer_model(ax.AdaMax(list(params), table), params))
    for step in range(12):
        assert tabled.get_lr() == {0: float(np.float32(table[step]))}
        tabled.step({f"{k}_grad": v for k, v in grads_for(params, step).items()})
    with pytest.raises(ax.LearningRateTableExhausted, match="global_step 12"):
        tabled.get_lr()


class ConstantThenHalve(LearningRateSchedule):
    """The custom-schedule example of adamax_onnx.schedules' documentation."""

    def __init__(self, learning_rate, boundary):
        self.learning_rate = learning_rate
        self.boundary = boundary

    def emit(self, g, step, name):
        lr = g.const(self.learning_rate, np.float32, f"{name}.learning_rate")
        half = g.const(np.float32(self.learning_rate) * np.float32(0.5), np.float32, f"{name}.half")
        boundary = g.const(self.boundary, np.float32, f"{name}.boundary")
        before = g.op("Less", [step, boundary], f"{name}.before_boundary")
        return g.op("Where", [before, lr, half], name)

    def value(self, step):
        lr = np.float32(self.learning_rate)
        return float(lr if step < self.boundary else lr * np.float32(0.5))


def test_user_defined_schedule_as_lr_and_weight_decay():
    params = make_params()

    def ref_fn(lr, boundary):
        return lambda step: np.float32(lr) * (np.float32(1) if step < boundary else np.float32(0.5))

    opt = ax.AdaMax(
        list(params),
        learning_rate=ConstantThenHalve(0.02, 17),
        weight_decay=ConstantThenHalve(0.1, 25),
        loss_scale=2.0,
    )
    reference = NumpyAdaMax(params, ref_fn(0.02, 17), weight_decay=ref_fn(0.1, 25), loss_scale=2.0)

    def check(sess, step):
        assert sess.get_lr()[0] == float(ref_fn(0.02, 17)(step))
        assert sess.get_weight_decay()[0] == float(np.float32(ref_fn(0.1, 25)(step)))

    run(opt, reference, params, check, scale=2.0)
