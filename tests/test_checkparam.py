"""The argument rules of adamax_onnx.checkparam, one by one: the exception type MindSpore 2.10's
``_checkparam`` raises for the same kind of value, and a message naming the argument and owner.

The public classes that use them are checked against recorded MindSpore outcomes in
test_optimizer.py, test_schedules.py, test_dynamic_lr.py and passes/test_nonfinite.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from adamax_onnx import checkparam as cp

NAN, INF = math.nan, math.inf

# (rule, value, extra args, expected exception or None)
CASES = [
    (cp.check_positive_int, 3, (), None),
    (cp.check_positive_int, 0, (), ValueError),
    (cp.check_positive_int, -2, (), ValueError),
    (cp.check_positive_int, True, (), TypeError),  # bool is not an int here
    (cp.check_positive_int, 2.0, (), TypeError),
    (cp.check_positive_float, 0.5, (), None),
    (cp.check_positive_float, 0.0, (), ValueError),
    (cp.check_positive_float, INF, (), ValueError),
    (cp.check_positive_float, 1, (), TypeError),
    (cp.check_non_negative_float, 0.0, (), None),
    (cp.check_non_negative_float, -1e-30, (), ValueError),
    (cp.check_non_negative_float, NAN, (), ValueError),
    (cp.check_is_float, 0.1, (), None),
    (cp.check_is_float, 1, (), TypeError),
    (cp.check_is_float, NAN, (), ValueError),
    (cp.check_is_float, np.float32(0.1), (), TypeError),  # not a Python float
    (cp.check_finite, 1e308, (), None),
    (cp.check_finite, -INF, (), ValueError),
    (cp.check_finite, np.float32(NAN), (), ValueError),
    (cp.check_float_type, 1, (), TypeError),
    (cp.check_float_type, -1.0, (), None),  # only the type is checked
    (cp.check_bool, False, (), None),
    (cp.check_bool, 0, (), TypeError),
    (cp.check_type, [1], ((list, tuple),), None),
    (cp.check_type, True, ((int,),), TypeError),
    (cp.check_type, True, ((int, bool),), None),
    (cp.check_float, 0.9, (), None),
    (cp.check_float, 1, (), TypeError),
    (cp.check_float, True, (), TypeError),
    (cp.check_open_unit, 0.5, (), None),
    (cp.check_open_unit, 0.0, (), ValueError),
    (cp.check_open_unit, 1.0, (), ValueError),
    (cp.check_open_unit, NAN, (), ValueError),
    (cp.check_legal, 1e300, (), None),
    (cp.check_legal, -INF, (), ValueError),
    (cp.check_positive, 1e-8, (), None),
    (cp.check_positive, 0.0, (), ValueError),
    (cp.check_positive, INF, (), ValueError),
    (cp.check_non_negative, 0.0, (), None),
    (cp.check_non_negative, -0.1, (), ValueError),
    (cp.check_non_negative, NAN, (), ValueError),
    (cp.check_int_above_zero, 5, (), None),
    (cp.check_int_above_zero, 0, (), ValueError),
    (cp.check_int_above_zero, True, (), TypeError),
    (cp.check_int_above_zero, 5.0, (), TypeError),
    (cp.check_real_number, 2**24, (), None),
    (cp.check_real_number, 1e39, (), None),  # a float64 number: fine without fits_float32
    (cp.check_real_number, NAN, (), ValueError),
    (cp.check_real_number, "8", (), ValueError),
]


def _call(rule, value, extra):
    """Every rule reads (value, argument name, [its extra arguments,] owner)."""
    return rule(value, "my_arg", *extra, "Owner")


@pytest.mark.parametrize(
    "rule,value,extra,expected",
    CASES,
    ids=[f"{r.__name__}-{v!r}" for r, v, _, _ in CASES],
)
def test_rule(rule, value, extra, expected):
    if expected is None:
        _call(rule, value, extra)
        return
    with pytest.raises(expected) as info:
        _call(rule, value, extra)
    assert "my_arg" in str(info.value)
    assert "Owner" in str(info.value)


def test_every_rule_is_covered():
    assert {r.__name__ for r, *_ in CASES} >= set(cp.__all__) - {"check_number", "is_less"}


def test_without_an_owner_the_message_starts_with_the_argument():
    with pytest.raises(ValueError, match=r"^The 'decay_steps' must be > 0, but got 0\.$"):
        cp.check_positive_int(0, "decay_steps")


def test_checks_return_the_value():
    assert cp.check_positive_int(7, "n") == 7
    assert cp.check_float(0.25, "beta1", "AdaMax") == 0.25


def test_fits_float32():
    cp.check_real_number(3.4e38, "scale", "Owner", fits_float32=True)
    with pytest.raises(ValueError, match="fits float32"):
        cp.check_real_number(1e39, "scale", "Owner", fits_float32=True)


@pytest.mark.parametrize(
    "value,bound,expected", [(0.5, 1.0, True), (1, 1, False), (2**24, 1.0, False)]
)
def test_is_less(value, bound, expected):
    assert cp.is_less(value, bound, "loss_scale", "Owner") is expected


def test_is_less_names_a_value_that_is_not_a_number():
    with pytest.raises(TypeError, match="'loss_scale' must be a number"):
        cp.is_less("16", 1.0, "loss_scale", "Owner")


def test_check_number_generic_kind():
    assert cp.check_number(0, int, "n", positive=False) == 0
    with pytest.raises(ValueError, match=">= 0"):
        cp.check_number(-1, int, "n", positive=False)
