"""Argument values for the AdaMax argument-rule tests, shared by the MindSpore recorder
(make_mindspore_adamax_args.py) and tests/integration/test_bad_inputs.py.

Values are named by a string tag so a recorded case is plain JSON. Parameters are written as
``{"P": name}``; the recorder turns them into ``mindspore.Parameter`` objects and the tests into
names. numpy arrays and numpy scalars that are not Python floats stand for MindSpore Tensors
(adamax-onnx's convention), so the recorder converts them to ``mindspore.Tensor``.
"""

from __future__ import annotations

import math
import random
from decimal import Decimal
from fractions import Fraction

import numpy as np

f32 = np.float32


def _values() -> dict:
    return {
        # Python floats
        "f:0.0": 0.0,
        "f:-0.0": -0.0,
        "f:5e-324": 5e-324,
        "f:1e-8": 1e-8,
        "f:0.001": 0.001,
        "f:0.5": 0.5,
        "f:0.9": 0.9,
        "f:0.999": 0.999,
        "f:1-ulp": math.nextafter(1.0, 0.0),
        "f:1.0": 1.0,
        "f:1+ulp": math.nextafter(1.0, 2.0),
        "f:1.5": 1.5,
        "f:2.0": 2.0,
        "f:1e30": 1e30,
        "f:-0.1": -0.1,
        "f:-1.0": -1.0,
        "f:-1e30": -1e30,
        "f:inf": math.inf,
        "f:-inf": -math.inf,
        "f:nan": math.nan,
        "np64:0.5": np.float64(0.5),
        "np64:-0.5": np.float64(-0.5),
        "np64:nan": np.float64("nan"),
        # ints and bools
        "i:0": 0,
        "i:1": 1,
        "i:2": 2,
        "i:-1": -1,
        "i:big": 10**20,
        "b:True": True,
        "b:False": False,
        # numpy scalars that are not Python floats (Tensors in MindSpore terms)
        "np32:0.5": f32(0.5),
        "np32:-0.5": f32(-0.5),
        "np32:nan": f32("nan"),
        "np16:0.5": np.float16(0.5),
        "npi64:1": np.int64(1),
        "npi32:-1": np.int32(-1),
        # arrays (Tensors)
        "a0:0.1": np.array(0.1, f32),
        "a0:-0.1": np.array(-0.1, f32),
        "a0:nan": np.array(np.nan, f32),
        "a0:inf": np.array(np.inf, f32),
        "a1:[0.1,0.2]": np.array([0.1, 0.2], f32),
        "a1:[0.1]": np.array([0.1], f32),
        "a1:[]": np.array([], f32),
        "a1:[-1,0.1]": np.array([-1.0, 0.1], f32),
        "a1:[nan,0.1]": np.array([np.nan, 0.1], f32),
        "a1i:[1,2]": np.array([1, 2], np.int64),
        "a1f64:[0.1,0.2]": np.array([0.1, 0.2], np.float64),
        "a2:[[0.1]]": np.array([[0.1]], f32),
        "a2:2x2": np.full((2, 2), 0.1, f32),
        # other iterables
        "l:[0.1,0.2]": [0.1, 0.2],
        "l:[0.1]": [0.1],
        "l:[]": [],
        "l:[-1.0,0.1]": [-1.0, 0.1],
        "l:[nan]": [math.nan],
        "l:['a']": ["a"],
        "l:[0.1,'x']": [0.1, "x"],
        "l:[[0.1]]": [[0.1]],
        "l:ragged": [[0.1], [0.2, 0.3]],
        "l:[None]": [None],
        "t:(0.1,0.2)": (0.1, 0.2),
        "t:()": (),
        "range:3": range(3),
        "set:{0.5}": {0.5},
        # strings, bytes, mappings, other objects
        "s:0.1": "0.1",
        "s:abc": "abc",
        "s:": "",
        "bytes:x": b"x",
        "d:{}": {},
        "d:{a:1}": {"a": 1},
        "none": None,
        "obj": object(),
        "c:1+0j": complex(1, 0),
        "dec:0.5": Decimal("0.5"),
        "frac:1/2": Fraction(1, 2),
    }


#: tag -> value; a fresh dict per import (values are never mutated by the code under test).
VALUES = _values()
SCALAR_ARGS = ("learning_rate", "beta1", "beta2", "eps", "weight_decay", "loss_scale")


def P(name: str) -> dict:
    return {"P": name}


#: params variants: tag -> JSON structure with {"P": name} for parameters.
PARAMS = {
    "one": [P("w")],
    "two": [P("w"), P("b")],
    "tuple": ("tuple", [P("w")]),
    "dup": [P("w"), P("w")],
    "empty": [],
    "none": None,
    "str": "w",
    "int": 3,
    "float": 1.5,
    "list_of_int": [3],
    "list_of_none": [None],
    "mixed": [P("w"), {"params": [P("b")]}],
    "group": [{"params": [P("w")]}],
    "groups": [{"params": [P("w")]}, {"params": [P("b")]}],
    "group_dup": [{"params": [P("w")]}, {"params": [P("w")]}],
    "group_dup_within": [{"params": [P("w"), P("w")]}],
    "group_bad_key": [{"params": [P("w")], "momentum": 0.9}],
    "group_no_params": [{"lr": 0.1}],
    "group_params_empty": [{"params": []}],
    "group_params_none": [{"params": None}],
    "group_params_str": [{"params": "w"}],
    "group_params_elem_int": [{"params": [3]}],
    "group_gc_true": [{"params": [P("w")], "grad_centralization": True}],
    "group_gc_int": [{"params": [P("w")], "grad_centralization": 1}],
    "group_gc_none": [{"params": [P("w")], "grad_centralization": None}],
    "order_ok": [{"params": [P("w"), P("b")]}, {"order_params": [P("b"), P("w")]}],
    "order_short": [{"params": [P("w"), P("b")]}, {"order_params": [P("w")]}],
    "order_unknown": [{"params": [P("w")]}, {"order_params": [P("b")]}],
    "order_extra_key": [{"params": [P("w")]}, {"order_params": [P("w")], "lr": 0.1}],
    "order_int": [{"params": [P("w")]}, {"order_params": 5}],
    "order_str": [{"params": [P("w")]}, {"order_params": "w"}],
}


def build_params(spec, param):
    """Turn a PARAMS structure into real arguments; ``param(name)`` makes a parameter."""
    if isinstance(spec, dict) and set(spec) == {"P"}:
        return param(spec["P"])
    if isinstance(spec, tuple) and spec and spec[0] == "tuple":
        return tuple(build_params(s, param) for s in spec[1])
    if isinstance(spec, list):
        return [build_params(s, param) for s in spec]
    if isinstance(spec, dict):
        return {k: build_params(v, param) for k, v in spec.items()}
    return spec


def cases(seed: int = 2026, random_cases: int = 1500) -> list[dict]:
    """The recorded cases: each is {"params": tag, "kwargs": {arg: value tag}, "group": {...}}.

    One bad value at a time for every scalar argument, every params variant, group-level lr
    and weight_decay values, then random combinations (several arguments bad at once, to pin
    down which check fires first).
    """
    out: list[dict] = []
    for arg in SCALAR_ARGS:
        for tag in VALUES:
            out.append({"params": "one", "kwargs": {arg: tag}, "group": {}})
    for ptag in PARAMS:
        out.append({"params": ptag, "kwargs": {}, "group": {}})
    for key in ("lr", "weight_decay"):
        for tag in VALUES:
            out.append({"params": "group", "kwargs": {}, "group": {key: tag}})
    rng = random.Random(seed)
    tags = list(VALUES)
    ptags = list(PARAMS)
    for _ in range(random_cases):
        kwargs = {a: rng.choice(tags) for a in SCALAR_ARGS if rng.random() < 0.5}
        group = {}
        ptag = rng.choice(["one", "two", "group", "groups", *ptags])
        if ptag in ("group", "groups") and rng.random() < 0.5:
            group = {k: rng.choice(tags) for k in ("lr", "weight_decay") if rng.random() < 0.6}
        out.append({"params": ptag, "kwargs": kwargs, "group": group})
    return out


def make_args(case: dict, param) -> tuple[object, dict]:
    """(params, kwargs) of a recorded case, with ``param(name)`` making parameters."""
    params = build_params(PARAMS[case["params"]], param)
    if case["group"] and isinstance(params, list):
        params = [dict(g) for g in params]
        for g in params:
            if "params" in g:
                g.update({k: VALUES[v] for k, v in case["group"].items()})
    kwargs = {k: VALUES[v] for k, v in case["kwargs"].items()}
    return params, kwargs
