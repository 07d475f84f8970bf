"""MindSpore-style argument rules, in one place (after MindSpore 2.10's ``_checkparam.py``).

The optimizer (:mod:`.optimizer`), the schedules (:mod:`.schedules`), the per-step lists
(:mod:`.dynamic_lr`) and the loss-scale managers (:mod:`.loss_scale`) check their arguments
with these rules, so that each raises the exception type MindSpore raises for the same
argument, at the same point. Every message names the argument, and the class or function
(``prim``) when MindSpore's does.

MindSpore's modules word the same rule differently, and so do these messages: the optimizer's
rules (:func:`check_float`, :func:`check_positive`, ...) say "should be", the schedules' and
lists' (:func:`check_number` and its three short forms) "must be", and the loss-scale
managers use MindSpore's ``Validator.check_positive_int`` wording.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = [
    "check_type",
    "check_bool",
    "check_float_type",
    "check_is_float",
    "check_finite",
    "check_number",
    "check_positive_int",
    "check_positive_float",
    "check_non_negative_float",
    "check_float",
    "check_open_unit",
    "check_legal",
    "check_positive",
    "check_non_negative",
    "check_int_above_zero",
    "is_less",
    "check_real_number",
]


def _where(prim: str | None) -> str:
    return f"For '{prim}', the" if prim else "The"


# -- types -------------------------------------------------------------------------------------
def check_type(value: Any, arg: str, types: tuple[type, ...], prim: str | None = None) -> Any:
    """``value`` is an instance of one of ``types``; a bool only when bool is one of them."""
    if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
        names = ", ".join(t.__name__ for t in types)
        raise TypeError(
            f"{_where(prim)} type of '{arg}' must be one of ({names}), "
            f"but got {type(value).__name__}."
        )
    return value


def check_bool(value: Any, arg: str, prim: str | None = None) -> bool:
    if not isinstance(value, bool):
        raise TypeError(
            f"{_where(prim)} type of '{arg}' must be bool, but got {type(value).__name__}."
        )
    return value


def check_float_type(value: Any, arg: str, prim: str) -> float:
    """The bare ``isinstance(value, float)`` test some MindSpore schedules make first."""
    if not isinstance(value, float):
        raise TypeError(
            f"For '{prim}', the argument '{arg}' must be a float, but got {type(value).__name__}."
        )
    return value


def check_is_float(value: Any, arg: str, prim: str | None = None) -> float:
    """A float (not bool) that is finite."""
    if isinstance(value, float) and not isinstance(value, bool):
        check_finite(value, arg, prim)
        return value
    raise TypeError(
        f"{_where(prim)} type of '{arg}' must be float, but got {type(value).__name__}."
    )


# -- numbers (schedules and per-step lists) ------------------------------------------------------
def check_finite(value: Any, arg: str, prim: str | None = None) -> None:
    """ValueError for inf and nan."""
    # MindSpore tests with both math and numpy; either can itself raise on odd inputs (e.g. an
    # int too large for a float), and that exception then propagates unchanged, as there.
    if math.isinf(value) or math.isnan(value) or np.isinf(value) or np.isnan(value):
        raise ValueError(f"{_where(prim)} '{arg}' must be a finite number, but got {value!r}.")


def check_number(
    value: Any, kind: type, arg: str, prim: str | None = None, *, positive: bool
) -> Any:
    """``value`` must be an instance of ``kind`` (bool excluded), finite, and > 0 (or >= 0)."""
    if not isinstance(value, kind):
        raise TypeError(
            f"{_where(prim)} '{arg}' must be {kind.__name__}, but got {type(value).__name__}."
        )
    check_finite(value, arg, prim)
    relation = "> 0" if positive else ">= 0"
    ok = value > 0 if positive else value >= 0
    if isinstance(value, bool):
        raise TypeError(
            f"{_where(prim)} '{arg}' must be {kind.__name__} and {relation}, but got bool."
        )
    if not ok:
        raise ValueError(f"{_where(prim)} '{arg}' must be {relation}, but got {value!r}.")
    return value


def check_positive_int(value: Any, arg: str, prim: str | None = None) -> int:
    return check_number(value, int, arg, prim, positive=True)


def check_positive_float(value: Any, arg: str, prim: str | None = None) -> float:
    return check_number(value, float, arg, prim, positive=True)


def check_non_negative_float(value: Any, arg: str, prim: str | None = None) -> float:
    return check_number(value, float, arg, prim, positive=False)


# -- the optimizer's wording ("should be") ------------------------------------------------------
def check_float(value: Any, arg: str, prim: str) -> float:
    """A float; bool and int are rejected (TypeError)."""
    if isinstance(value, bool) or not isinstance(value, float):
        raise TypeError(
            f"For '{prim}', the type of '{arg}' should be 'float', "
            f"but got type '{type(value).__name__}' (value {value!r})."
        )
    return value


def check_open_unit(value: float, arg: str, prim: str) -> None:
    """0 < value < 1 (ValueError)."""
    if not (0.0 < value < 1.0):
        raise ValueError(f"For '{prim}', '{arg}' should be in range (0.0, 1.0), but got {value!r}.")


def check_legal(value: float, arg: str, prim: str) -> None:
    """Neither inf nor nan ("a legal value", ValueError)."""
    if math.isnan(value) or math.isinf(value):
        raise ValueError(f"For '{prim}', the '{arg}' must be a legal value, but got '{value}'.")


def check_positive(value: float, arg: str, prim: str) -> None:
    """Legal and > 0 (ValueError)."""
    check_legal(value, arg, prim)
    if not value > 0.0:
        raise ValueError(f"For '{prim}', '{arg}' should be greater than 0, but got {value!r}.")


def check_non_negative(value: float, arg: str, prim: str) -> None:
    """Legal and >= 0 (ValueError)."""
    check_legal(value, arg, prim)
    if not value >= 0.0:
        raise ValueError(
            f"For '{prim}', '{arg}' should be greater than or equal to 0, but got {value!r}."
        )


# -- the loss-scale managers' wording -----------------------------------------------------------
def check_int_above_zero(value: Any, arg: str, prim: str) -> int:
    """MindSpore ``Validator.check_positive_int``, in its words: int (not bool) and > 0."""
    if not isinstance(value, int):
        raise TypeError(f"For '{prim}', the '{arg}' must be int, but got '{type(value).__name__}'")
    if isinstance(value, bool) or value <= 0:
        kind = TypeError if isinstance(value, bool) else ValueError
        raise kind(
            f"For '{prim}', the '{arg}' must be int and must > 0, but got '{value}' with type "
            f"'{type(value).__name__}'."
        )
    return value


def is_less(value: Any, bound: float, arg: str, prim: str) -> bool:
    """``value < bound`` as Python evaluates it in MindSpore (TypeError for non-numbers)."""
    try:
        return bool(value < bound)
    except TypeError as exc:
        raise TypeError(
            f"For '{prim}', the argument '{arg}' must be a number, but got "
            f"'{type(value).__name__}'."
        ) from exc


def check_real_number(value: Any, arg: str, prim: str, *, fits_float32: bool = False) -> None:
    """A finite int or float (ValueError); with ``fits_float32``, one float32 can hold.

    Beyond MindSpore, which accepts NaN and inf loss scales and then trains on garbage."""
    ok = isinstance(value, (int, float)) and math.isfinite(float(value))
    if fits_float32:
        ok = ok and float(value) <= 3.4e38
    if not ok:
        what = "a finite number that fits float32" if fits_float32 else "a finite number"
        raise ValueError(f"For '{prim}', '{arg}' must be {what}, got {value!r}")
