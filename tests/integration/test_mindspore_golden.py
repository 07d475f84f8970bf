"""The optimizer graph replays MindSpore 2.10's own ``nn.AdaMax`` trajectories.

``tests/golden/adamax_mindspore.json`` was written by ``tests/golden/make_adamax_golden.py``,
which ran ``mindspore.nn.AdaMax`` (GRAPH_MODE, CPU, ApplyAdaMax CPU kernel) for 30 steps on
fixed gradients. Here the same configuration is built with ``adamax_onnx.AdaMax`` and
``build_optimizer_model``, the same gradients (regenerated from the integer hash below, checked
against the recorded SHA-256) are fed to onnxruntime, and parameters, moments, ``beta1_power``
and ``global_step`` are compared with what MindSpore recorded. mindspore is not needed here.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

import adamax_onnx as ax
from adamax_onnx import schedules
from tests.reference import NumpyAdaMax, schedule, ulps

GOLDEN = json.loads((Path(__file__).parents[1] / "golden" / "adamax_mindspore.json").read_text())
CONFIGS = {c["name"]: c for c in GOLDEN["configs"]}

# Largest difference allowed, in units in the last place of the parameter's dtype: MindSpore and
# the graph agree bit for bit on every recorded value.
MAX_ULPS = 0


# -- the generator's deterministic values (same integer hash as make_adamax_golden.py) ----------
def hashed_values(shape, salt, step):
    n = int(np.prod(shape, dtype=np.int64)) if shape else 1
    i = np.arange(n, dtype=np.int64)
    h = (i * 7919 + step * 104729 + salt * 1299709 + 17) % 65521
    val = (h - 32760).astype(np.float64) / 32760.0
    val = np.ldexp(val, (h % 7) - 3)  # val * 2**k, exact (an exp2 call need not be)
    return val.reshape(shape), h.reshape(shape)


def initial_value(index, spec):
    val, _ = hashed_values(spec["shape"], 1000 + index, 0)
    return (0.25 * val).astype(spec["dtype"])


def gradient(index, spec, step, cfg):
    val, h = hashed_values(spec["shape"], index, step + 1)
    zeros = cfg.get("zeros", "none" if spec["dtype"] == "float16" else "some")
    if zeros == "some":
        val = np.where(h % 23 == 0, 0.0, val)
    elif zeros == "first":
        val.reshape(-1)[0] = 0.0
    for pos, kind in cfg.get("non_finite", {}).get(str(step), {}).items():
        val.reshape(-1)[int(pos)] = float(kind)
    return (val * cfg.get("grad_scale", 1.0)).astype(spec["dtype"])


def decode(text, dtype):
    return np.frombuffer(base64.b64decode(text), dtype=np.dtype(dtype).newbyteorder("<"))


def our_value(spec):
    """A learning-rate / weight-decay spec of the golden file as adamax_onnx takes it."""
    if isinstance(spec, dict) and "table" in spec:
        return list(spec["table"])
    if isinstance(spec, dict) and "schedule" in spec:
        return getattr(schedules, spec["schedule"])(**spec["args"])
    return spec


def build(cfg):
    kwargs = {k: our_value(v) for k, v in cfg["kwargs"].items()}
    names = list(cfg["params"])
    if cfg.get("groups") is None:
        params = names
    else:
        params = [
            {k: (v if k in ("params", "order_params") else our_value(v)) for k, v in g.items()}
            for g in cfg["groups"]
        ]
    opt = ax.AdaMax(params, **kwargs)
    init = {n: initial_value(i, cfg["params"][n]) for i, n in enumerate(names)}
    return opt, ax.TrainingSession(ax.build_optimizer_model(opt, init))


def replay(cfg):
    """Run the config; return {(step, kind, name): (ours, mindspore)} and scalar checks."""
    opt, sess = build(cfg)
    assert opt.param_names == cfg["order"], "state order must follow MindSpore's optimizer order"
    assert sess.contract.params == cfg["order"]
    names = list(cfg["params"])
    records = {r["step"]: r for r in cfg["records"]}
    sha = hashlib.sha256()
    pairs = {}
    nan_seen = {n: np.zeros(cfg["params"][n]["shape"], bool) for n in names}
    for step in range(GOLDEN["steps"]):
        grads = {n: gradient(i, cfg["params"][n], step, cfg) for i, n in enumerate(names)}
        for n in names:
            sha.update(np.ascontiguousarray(grads[n]).tobytes())
            nan_seen[n] |= np.isnan(grads[n])
        sess.step({f"{n}_grad": g for n, g in grads.items()})
        rec = records.get(step + 1)
        if rec is None:
            continue
        state = sess.state()
        assert state["global_step"] == rec["global_step"] == step + 1
        assert np.float32(state["beta1_power"]) == np.float32(rec["beta1_power"])
        ours = {"w": sess.parameters(), "m": state["m"], "v": state["v"]}
        for kind in ("w", "m", "v"):
            for n in names:
                dtype = cfg["params"][n]["dtype"]
                theirs = decode(rec[kind][n], dtype).reshape(cfg["params"][n]["shape"])
                assert ours[kind][n].dtype == np.dtype(dtype), (kind, n)
                pairs[(step + 1, kind, n)] = (ours[kind][n], theirs, nan_seen[n].copy())
    assert sha.hexdigest() == cfg["grad_sha256"], "regenerated gradients differ from MindSpore's"
    return pairs


@pytest.mark.parametrize("name", list(CONFIGS))
def test_replays_mindspore_trajectory(name):
    cfg = CONFIGS[name]
    pairs = replay(cfg)
    worst = (0.0, None)
    for key, (ours, theirs, nan_seen) in pairs.items():
        d = ulps(ours, theirs)
        if key[1] == "v":
            # The one known difference: MindSpore's kernel takes std::max(beta2 * v, |g|), which
            # returns its first operand when |g| is NaN, so v stays finite; ONNX Max propagates
            # the NaN. Parameters and m are NaN in both from that step on.
            known = nan_seen & np.isnan(ours) & ~np.isnan(theirs)
            d[known] = 0
        if d.max(initial=0) > worst[0]:
            worst = (float(d.max()), key)
    assert worst[0] <= MAX_ULPS, f"{name}: {worst[0]} ulps at (step, state, parameter) {worst[1]}"


def test_nan_gradient_difference_is_only_in_v():
    """The documented v difference really happens, and only where a NaN gradient arrived."""
    pairs = replay(CONFIGS["non_finite_gradient"])
    ours, theirs, nan_seen = pairs[(30, "v", "w")]
    assert nan_seen.any()
    assert np.array_equal(np.isnan(ours), nan_seen)
    assert not np.isnan(theirs).any()  # an Inf gradient does make v inf, in both
    w_ours, w_theirs, _ = pairs[(30, "w", "w")]
    assert np.isnan(w_ours).any() and np.array_equal(np.isnan(w_ours), np.isnan(w_theirs))


def ref_value(spec):
    if isinstance(spec, dict) and "table" in spec:
        return list(spec["table"])
    if isinstance(spec, dict) and "schedule" in spec:
        return schedule(spec["schedule"], **spec["args"])
    return spec


@pytest.mark.parametrize("name", list(CONFIGS))
def test_numpy_reference_replays_mindspore_trajectory(name):
    """The numpy reference the other parity tests rely on reproduces MindSpore too."""
    cfg = CONFIGS[name]
    names = list(cfg["params"])
    init = {n: initial_value(i, cfg["params"][n]) for i, n in enumerate(names)}
    kwargs = {k: ref_value(v) for k, v in cfg["kwargs"].items()}
    if cfg.get("groups") is None:
        ref = NumpyAdaMax(init, **kwargs)
    else:
        groups = [
            {k: (v if k in ("params", "order_params") else ref_value(v)) for k, v in g.items()}
            for g in cfg["groups"]
        ]
        ref = NumpyAdaMax.from_groups(init, groups, **kwargs)
    records = {r["step"]: r for r in cfg["records"]}
    worst = (0.0, None)
    with np.errstate(invalid="ignore", over="ignore"):
        for step in range(GOLDEN["steps"]):
            ref.update({n: gradient(i, cfg["params"][n], step, cfg) for i, n in enumerate(names)})
            rec = records.get(step + 1)
            if rec is None:
                continue
            assert np.float32(rec["beta1_power"]) == ref.beta1_power
            for kind, ours in (("w", ref.w), ("m", ref.m), ("v", ref.v)):
                for n in names:
                    spec = cfg["params"][n]
                    theirs = decode(rec[kind][n], spec["dtype"]).reshape(spec["shape"])
                    d = ulps(ours[n], theirs)
                    if kind == "v":  # numpy's maximum propagates NaN, like ONNX Max
                        d[np.isnan(ours[n]) & ~np.isnan(theirs)] = 0
                    if d.max(initial=0) > worst[0]:
                        worst = (float(d.max()), (step + 1, kind, n))
    # Exact, and the same on every CPU: the reference's schedules take their Pow/Sin from
    # Python's math in double, rounded once to float32 (tests/reference.py: pow32, sin32), not
    # from numpy's float32 power/sin, whose SIMD kernels round differently on AVX-512, AVX2 and
    # scalar machines (they moved dynamic_weight_decay_groups' weights by 32 ulps, and
    # lr_cosine_decay's by 4, on an AVX-512 CPU). At every step these configurations use,
    # MindSpore's float32 powf/sinf equal those correctly rounded values.
    assert worst[0] <= MAX_ULPS, f"{name}: {worst[0]} ulps at {worst[1]}"
