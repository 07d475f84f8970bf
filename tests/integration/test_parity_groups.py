"""Parameter groups, order_params, gradient centralization and float16, against numpy.

Every case runs the optimizer graph in onnxruntime for >= 30 steps and compares parameters,
moments, ``global_step`` and ``beta1_power`` with the independent numpy reference in
``tests/reference.py`` (which models MindSpore 2.10's ``nn.AdaMax``; that reference is itself
checked against MindSpore's recorded trajectories in
``tests/integration/test_mindspore_golden.py``).
"""

from __future__ import annotations

import numpy as np
import pytest

import adamax_onnx as ax
from adamax_onnx import schedules
from tests.reference import NumpyAdaMax, schedule

STEPS = 32
TABLE_LEN = 40


def make_params(dtypes=None, seed=0):
    rng = np.random.default_rng(seed)
    shapes = {
        "conv1.weight": (4, 16, 3, 3),  # dim1 % 16 == 0: centralized when asked
        "conv2.weight": (6, 8, 3, 3),  # dim1 = 8: never centralized
        "fc1.weight": (5, 32),  # rank 2, dim1 = 32: centralized when asked
        "fc1.bias": (5,),  # rank 1: never centralized
        "bn.gamma": (8,),
        "bn.beta": (8,),
    }
    dtypes = dtypes or {}
    return {
        k: (rng.normal(size=s) * 0.5).astype(dtypes.get(k, np.float32)) for k, s in shapes.items()
    }


def grads_for(params, step, scale=1.0, seed=1):
    rng = np.random.default_rng(seed * 1000 + step)
    return {k: (rng.normal(size=v.shape) * 0.5 * scale).astype(v.dtype) for k, v in params.items()}


def run(opt, ref, params, steps=STEPS, scale=1.0):
    sess = ax.TrainingSession(ax.build_optimizer_model(opt, params))
    for step in range(steps):
        g = grads_for(params, step, scale)
        sess.step({f"{k}_grad": v for k, v in g.items()})
        ref.update(g)
    return sess


def tolerances(dtype):
    if dtype == np.float16:
        return dict(rtol=2e-3, atol=2e-3)
    return dict(rtol=1e-5, atol=1e-6)


def assert_matches(sess, ref, exact=False):
    got, state = sess.parameters(), sess.state()
    for k in ref.w:
        for name, ours, theirs in (
            ("w", got[k], ref.w[k]),
            ("m", state["m"][k], ref.m[k]),
            ("v", state["v"][k], ref.v[k]),
        ):
            assert ours.dtype == theirs.dtype, (k, name)
            if exact:
                np.testing.assert_array_equal(ours, theirs, err_msg=f"{name} {k}")
            else:
                np.testing.assert_allclose(
                    ours, theirs, err_msg=f"{name} {k}", **tolerances(theirs.dtype)
                )
    assert state["global_step"] == ref.step
    assert np.float32(state["beta1_power"]) == ref.beta1_power


def table(start, decay=0.93, n=TABLE_LEN):
    return [start * decay**i for i in range(n)]


LR_FORMS = {
    "float": (0.01, 0.01),
    "int": (1, 1.0),
    "zero": (0, 0.0),
    "numpy_0d": (np.array(0.02, np.float64), 0.02),
    "numpy_scalar": (np.float32(0.015), np.float32(0.015)),
    "list": (table(0.02), table(0.02)),
    "tuple": (tuple(table(0.01, 0.9)), table(0.01, 0.9)),
    "numpy_1d": (np.linspace(0.02, 0.001, TABLE_LEN), np.linspace(0.02, 0.001, TABLE_LEN)),
    "generator": ((0.01 + 0.0005 * i for i in range(TABLE_LEN)), None),
    "schedule": (
        schedules.CosineDecayLR(min_lr=0.001, max_lr=0.02, decay_steps=12),
        schedule("CosineDecayLR", min_lr=0.001, max_lr=0.02, decay_steps=12),
    ),
}


@pytest.mark.parametrize("form", list(LR_FORMS))
def test_group_lr_every_form(form):
    """One group's lr in each accepted form; the other groups keep fixed and table lrs."""
    ours_lr, ref_lr = LR_FORMS[form]
    if form == "generator":
        ref_lr = [0.01 + 0.0005 * i for i in range(TABLE_LEN)]
    params = make_params()
    groups = [
        {"params": ["fc1.weight", "fc1.bias"], "lr": ours_lr, "weight_decay": 0.01},
        {"params": ["conv1.weight", "conv2.weight"], "lr": table(0.005)},
        {"params": ["bn.gamma", "bn.beta"]},
    ]
    ref_groups = [dict(g) for g in groups]
    ref_groups[0]["lr"] = ref_lr
    opt = ax.AdaMax(groups, learning_rate=0.003)
    ref = NumpyAdaMax.from_groups(params, ref_groups, learning_rate=0.003)
    assert_matches(run(opt, ref, params), ref)


def test_all_fixed_group_lrs_are_not_rounded():
    """With only fixed lrs MindSpore keeps each as a float32 Parameter: no _ConvertToCell."""
    params = make_params()
    groups = [
        {"params": ["fc1.weight", "bn.gamma"], "lr": 1e-5},
        {"params": ["conv1.weight", "conv2.weight", "fc1.bias"], "lr": 0.0123},
        {"params": ["bn.beta"]},
    ]
    opt = ax.AdaMax(groups, learning_rate=0.003)
    ref = NumpyAdaMax.from_groups(params, groups, learning_rate=0.003)
    assert not ref.converts_fixed_lr
    assert_matches(run(opt, ref, params), ref, exact=True)


def test_fixed_lr_next_to_dynamic_one_is_rounded_like_mindspore():
    """lr 1e-5 next to a schedule is used as float32(1e-5 + 1 - 1) = 1.0013580322265625e-05."""
    params = make_params()
    groups = [
        {"params": ["fc1.weight", "fc1.bias", "bn.gamma"]},
        {"params": ["conv1.weight", "conv2.weight", "bn.beta"], "lr": schedules.WarmUpLR(0.01, 8)},
    ]
    opt = ax.AdaMax(groups, learning_rate=1e-5)
    ref = NumpyAdaMax.from_groups(
        params,
        [
            {**groups[0]},
            {**groups[1], "lr": schedule("WarmUpLR", learning_rate=0.01, warmup_steps=8)},
        ],
        learning_rate=1e-5,
    )
    assert ref.converts_fixed_lr
    assert float(ref.lr_at(1e-5, 0)) == 1.0013580322265625e-05
    assert_matches(run(opt, ref, params), ref)
    # Without the rounding, fc1.weight would move differently: the reference with a plain lr
    # is measurably off, so the test really checks the rounding.
    plain = NumpyAdaMax(params, learning_rate=1e-5)
    for step in range(STEPS):
        plain.update(grads_for(params, step))
    assert not np.allclose(
        plain.w["fc1.weight"] - params["fc1.weight"],
        ref.w["fc1.weight"] - params["fc1.weight"],
        rtol=1e-4,
        atol=0,
    )


WD_FORMS = {
    "float": (0.05, 0.05),
    "int": (1, 1.0),
    "zero": (0.0, 0.0),
    "schedule": (
        schedules.ExponentialDecayLR(0.2, 0.5, 5, is_stair=True),
        schedule(
            "ExponentialDecayLR", learning_rate=0.2, decay_rate=0.5, decay_steps=5, is_stair=True
        ),
    ),
    "warmup_schedule": (
        schedules.WarmUpLR(0.1, 10),
        schedule("WarmUpLR", learning_rate=0.1, warmup_steps=10),
    ),
}


@pytest.mark.parametrize("loss_scale", [1.0, 8.0])
@pytest.mark.parametrize("form", list(WD_FORMS))
def test_group_weight_decay_every_form(form, loss_scale):
    ours_wd, ref_wd = WD_FORMS[form]
    params = make_params()
    groups = [
        {"params": ["fc1.weight", "bn.gamma", "conv1.weight"], "weight_decay": ours_wd},
        {"params": ["fc1.bias", "bn.beta"], "weight_decay": 0.02},
        {"params": ["conv2.weight"]},  # inherits the optimizer's weight decay
    ]
    ref_groups = [dict(g) for g in groups]
    ref_groups[0]["weight_decay"] = ref_wd
    opt = ax.AdaMax(groups, learning_rate=0.01, weight_decay=0.03, loss_scale=loss_scale)
    ref = NumpyAdaMax.from_groups(
        params, ref_groups, learning_rate=0.01, weight_decay=0.03, loss_scale=loss_scale
    )
    by = {c.name: c for c in opt.param_configs}
    assert by["bn.gamma"].decay == (form != "zero")  # grouped: no name filter
    assert by["bn.beta"].decay and by["conv2.weight"].decay
    assert_matches(run(opt, ref, params, scale=loss_scale), ref)


def test_grouped_decay_has_no_name_filter_but_ungrouped_does():
    params = make_params()
    names = list(params)
    grouped = ax.AdaMax([{"params": names, "weight_decay": 0.5}], learning_rate=0.01)
    plain = ax.AdaMax(names, learning_rate=0.01, weight_decay=0.5)
    ref_g = NumpyAdaMax.from_groups(params, [{"params": names, "weight_decay": 0.5}], 0.01)
    ref_p = NumpyAdaMax(params, learning_rate=0.01, weight_decay=0.5)
    s_g = run(grouped, ref_g, params)
    s_p = run(plain, ref_p, params)
    assert_matches(s_g, ref_g)
    assert_matches(s_p, ref_p)
    pg, pp = s_g.parameters(), s_p.parameters()
    for k in ("bn.gamma", "bn.beta"):
        assert not np.allclose(pg[k], pp[k])  # decayed only when grouped
    np.testing.assert_allclose(pg["fc1.weight"], pp["fc1.weight"], rtol=1e-6)
    assert s_g.contract.groups[0]["decayed"] == names
    assert "bn.gamma" not in s_p.contract.groups[0]["decayed"]


def test_order_params_fixes_state_order():
    params = make_params()
    order = ["bn.beta", "conv2.weight", "fc1.weight", "bn.gamma", "fc1.bias", "conv1.weight"]
    groups = [
        {"params": ["fc1.weight", "fc1.bias"], "lr": 0.02, "grad_centralization": True},
        {"params": ["conv1.weight", "conv2.weight", "bn.gamma", "bn.beta"], "weight_decay": 0.1},
        {"order_params": order},
    ]
    opt = ax.AdaMax(groups, learning_rate=0.005)
    assert opt.param_names == order
    model = ax.build_optimizer_model(opt, params)
    inputs = [i.name for i in model.graph.input]
    outputs = [o.name for o in model.graph.output]
    for suffix in (".adamax.m", ".adamax.v"):
        assert [n for n in inputs if n.endswith(suffix)] == [p + suffix for p in order]
        assert [n for n in outputs if n.endswith(suffix + ".updated")] == [
            p + suffix + ".updated" for p in order
        ]
    assert [n for n in outputs if n in {p + ".updated" for p in order}] == [
        p + ".updated" for p in order
    ]
    ref = NumpyAdaMax.from_groups(params, groups, learning_rate=0.005)
    sess = run(opt, ref, params)
    assert sess.contract.params == order
    assert list(sess.parameters()) == order and list(sess.state()["m"]) == order
    assert_matches(sess, ref)


def test_order_params_does_not_change_the_numbers():
    params = make_params()
    groups = [
        {"params": ["fc1.weight", "fc1.bias"], "lr": 0.02},
        {"params": ["conv1.weight", "conv2.weight", "bn.gamma", "bn.beta"], "weight_decay": 0.1},
    ]
    ordered = groups + [{"order_params": list(reversed(list(params)))}]
    s1 = run(ax.AdaMax(groups), NumpyAdaMax.from_groups(params, groups), params)
    s2 = run(ax.AdaMax(ordered), NumpyAdaMax.from_groups(params, groups), params)
    p1, p2 = s1.parameters(), s2.parameters()
    for k in params:
        np.testing.assert_array_equal(p1[k], p2[k])


GC_SHAPES = [
    ((4, 16, 3, 3), True),
    ((2, 32, 1, 1), True),
    ((6, 8, 3, 3), False),
    ((3, 24, 2, 2), False),
    ((5, 32), True),
    ((5, 17), False),
    ((7,), False),
    ((3, 16, 5), True),
    ((1, 48), True),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_gradient_centralization_shapes(dtype):
    rng = np.random.default_rng(3)
    params = {
        f"p{i}": (rng.normal(size=s) * 0.5).astype(dtype) for i, (s, _) in enumerate(GC_SHAPES)
    }
    names = list(params)
    groups = [{"params": names, "grad_centralization": True, "weight_decay": 0.01}]
    opt = ax.AdaMax(groups, learning_rate=0.01, loss_scale=4.0)
    ref = NumpyAdaMax.from_groups(params, groups, learning_rate=0.01, loss_scale=4.0)
    sess = run(opt, ref, params, scale=4.0)
    assert_matches(sess, ref)
    # The rule really decides: the first-step moments are (1 - beta1) * g, centralized or not.
    model = ax.build_optimizer_model(ax.AdaMax(groups, learning_rate=0.01), params)
    centralized = {
        n.input[0].split(".adamax")[0] for n in model.graph.node if n.op_type == "ReduceMean"
    }
    assert centralized == {f"p{i}" for i, (_, yes) in enumerate(GC_SHAPES) if yes}


def test_gradient_centralization_only_for_groups_that_ask():
    params = make_params()
    groups = [
        {"params": ["conv1.weight", "conv2.weight"], "grad_centralization": True},
        {"params": ["fc1.weight", "fc1.bias", "bn.gamma", "bn.beta"]},
    ]
    opt = ax.AdaMax(groups, learning_rate=0.01)
    ref = NumpyAdaMax.from_groups(params, groups, learning_rate=0.01)
    sess = run(opt, ref, params)
    assert_matches(sess, ref)
    first = grads_for(params, 0)
    sess2 = ax.TrainingSession(ax.build_optimizer_model(opt, params))
    sess2.step({f"{k}_grad": v for k, v in first.items()})
    m = sess2.state()["m"]
    g = first["conv1.weight"]
    expect = np.float32(0.1) * (g - g.mean(axis=(1, 2, 3), keepdims=True))
    np.testing.assert_allclose(m["conv1.weight"], expect, rtol=1e-5, atol=1e-7)
    assert abs(float(m["conv1.weight"].sum(axis=(1, 2, 3)).max())) < 1e-5
    np.testing.assert_allclose(m["fc1.weight"], np.float32(0.1) * first["fc1.weight"], rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"learning_rate": 0.01},
        {"learning_rate": 0.01, "weight_decay": 0.05, "loss_scale": 64.0, "eps": 1e-3},
        {"learning_rate": table(0.02), "beta1": 0.85, "beta2": 0.99},
        {"learning_rate": schedules.WarmUpLR(0.02, 10), "weight_decay": 0.01, "loss_scale": 2},
    ],
    ids=["fixed", "wd_loss_scale_eps", "table_hyper", "schedule_wd"],
)
def test_float16_parameters(kwargs):
    params = make_params(dict.fromkeys(make_params(), np.float16))
    ref_kwargs = dict(kwargs)
    if isinstance(kwargs["learning_rate"], schedules.WarmUpLR):
        ref_kwargs["learning_rate"] = schedule("WarmUpLR", learning_rate=0.02, warmup_steps=10)
    opt = ax.AdaMax(list(params), **kwargs)
    ref = NumpyAdaMax(params, **ref_kwargs)
    sess = run(opt, ref, params, scale=float(kwargs.get("loss_scale", 1.0)))
    state = sess.state()
    assert all(a.dtype == np.float16 for a in state["m"].values())
    assert all(a.dtype == np.float16 for a in state["v"].values())
    # Bit-exact against the reference: both round exactly where MindSpore does.
    assert_matches(sess, ref, exact=True)


def test_float16_with_tiny_eps_does_not_divide_by_zero():
    """eps=1e-8 is 0 in float16, but MindSpore's float32 kernel keeps it: no 0/0 for g == 0."""
    params = {"w": np.ones(4, np.float16)}
    sess = ax.TrainingSession(ax.build_optimizer_model(ax.AdaMax(["w"], 0.01), params))
    for _ in range(3):
        sess.step({"w_grad": np.array([0, 1, -1, 0.5], np.float16)})
    w = sess.parameters()["w"]
    assert np.isfinite(w).all() and w[0] == 1


def test_mixed_float32_float16_groups():
    dtypes = {"conv1.weight": np.float16, "fc1.bias": np.float16, "bn.beta": np.float16}
    params = make_params(dtypes)
    groups = [
        {
            "params": ["conv1.weight", "fc1.weight"],
            "lr": schedules.CosineDecayLR(0.002, 0.03, 10),
            "weight_decay": 0.02,
            "grad_centralization": True,
        },
        {"params": ["fc1.bias", "bn.gamma"], "weight_decay": schedules.WarmUpLR(0.1, 5)},
        {"params": ["conv2.weight", "bn.beta"], "lr": 0.003},
    ]
    ref_groups = [dict(g) for g in groups]
    ref_groups[0]["lr"] = schedule("CosineDecayLR", min_lr=0.002, max_lr=0.03, decay_steps=10)
    ref_groups[1]["weight_decay"] = schedule("WarmUpLR", learning_rate=0.1, warmup_steps=5)
    opt = ax.AdaMax(groups, learning_rate=0.01, loss_scale=16.0)
    ref = NumpyAdaMax.from_groups(params, ref_groups, learning_rate=0.01, loss_scale=16.0)
    sess = run(opt, ref, params, scale=16.0)
    for k, v in sess.parameters().items():
        assert v.dtype == params[k].dtype
    assert_matches(sess, ref)


def test_per_group_lr_tables():
    params = make_params()
    groups = [
        {"params": ["fc1.weight", "fc1.bias"], "lr": table(0.02, 0.9)},
        {"params": ["conv1.weight", "conv2.weight"], "lr": np.linspace(0.001, 0.01, TABLE_LEN)},
        {"params": ["bn.gamma", "bn.beta"], "lr": [0.005] * 20 + [0.0005] * 20},
    ]
    opt = ax.AdaMax(groups)
    ref = NumpyAdaMax.from_groups(params, groups)
    sess = run(opt, ref, params, steps=TABLE_LEN)
    assert_matches(sess, ref, exact=True)
    assert sess.contract.tables == {"0": TABLE_LEN, "1": TABLE_LEN, "2": TABLE_LEN}
    with pytest.raises(ax.LearningRateTableExhausted, match="global_step 40"):
        sess.step({f"{k}_grad": v for k, v in grads_for(params, TABLE_LEN).items()})
    assert_matches(sess, ref, exact=True)  # untouched


def test_set_learning_rate_of_one_group():
    params = make_params()
    groups = [
        {"params": ["fc1.weight", "fc1.bias", "conv1.weight"], "lr": 0.01},
        {"params": ["conv2.weight", "bn.gamma", "bn.beta"], "lr": 0.002},
    ]
    opt = ax.AdaMax(groups)
    ref = NumpyAdaMax.from_groups(params, groups)
    sess = ax.TrainingSession(ax.build_optimizer_model(opt, params))
    for step in range(STEPS):
        if step == 10:
            sess.set_learning_rate(0.03, group=1)
            for k in ("conv2.weight", "bn.gamma", "bn.beta"):
                ref.cfg[k]["lr"] = 0.03
        g = grads_for(params, step)
        sess.step({f"{k}_grad": v for k, v in g.items()})
        ref.update(g)
    assert sess.learning_rates == {0: pytest.approx(0.01), 1: pytest.approx(0.03)}
    assert_matches(sess, ref, exact=True)


def test_float64_parameters_use_the_float32_kernel():
    """MindSpore 2.10 runs ApplyAdaMax in float32 for float64 parameters too (weight decay and
    unscaling stay float64); the state keeps the parameter dtype."""
    params = make_params(dict.fromkeys(make_params(), np.float64))
    kwargs = {"learning_rate": table(0.02), "weight_decay": 0.05, "loss_scale": 8.0}
    opt = ax.AdaMax(list(params), **kwargs)
    ref = NumpyAdaMax(params, **kwargs)
    sess = run(opt, ref, params, scale=8.0)
    assert all(a.dtype == np.float64 for a in sess.state()["m"].values())
    assert_matches(sess, ref, exact=True)
