"""MindSpore's ``mindspore.nn.dynamic_lr`` helpers: per-step learning-rate lists.

Each function returns a plain Python ``list`` of floats, one per training step, computed in
double precision exactly as MindSpore 2.10 computes it (same formula, same order of operations,
so the lists are bit-identical). Arguments are validated like MindSpore's, raising the same
exception types in the same order.

A list is used by passing it as the optimizer's learning rate; the training graph then looks it
up by ``global_step`` (a float32 table), and training cannot run past its end. For a learning
rate that is computed for any step, use the schedules of :mod:`adamax_onnx.schedules`.

In the formulas below, ``i`` is the step index (0-based) and
:math:`epoch = \\lfloor i / step\\_per\\_epoch \\rfloor`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from .checkparam import (
    check_bool,
    check_float_type,
    check_is_float,
    check_non_negative_float,
    check_positive_float,
    check_positive_int,
    check_type,
)

__all__ = [
    "piecewise_constant_lr",
    "exponential_decay_lr",
    "natural_exp_decay_lr",
    "inverse_decay_lr",
    "cosine_decay_lr",
    "polynomial_decay_lr",
    "warmup_lr",
]


def _epoch_of(i: int, step_per_epoch: int) -> int:
    """The epoch a step belongs to (true division, then floor, as MindSpore does)."""
    return math.floor(i / step_per_epoch)


def _check_decay_inputs(
    learning_rate: Any,
    decay_rate: Any,
    total_step: Any,
    step_per_epoch: Any,
    decay_epoch: Any,
    is_stair: Any,
) -> None:
    check_positive_int(total_step, "total_step")
    check_positive_int(step_per_epoch, "step_per_epoch")
    check_positive_int(decay_epoch, "decay_epoch")
    check_positive_float(learning_rate, "learning_rate")
    check_is_float(learning_rate, "learning_rate")
    check_positive_float(decay_rate, "decay_rate")
    check_is_float(decay_rate, "decay_rate")
    check_bool(is_stair, "is_stair")


def piecewise_constant_lr(milestone: Sequence[int], learning_rates: Sequence[float]) -> list[float]:
    r"""Piecewise-constant learning rates.

    With milestones :math:`M_1 \le \dots \le M_N` and rates :math:`x_1, \dots, x_N`, step ``i``
    gets :math:`x_t` for :math:`M_{t-1} \le i < M_t` (:math:`M_0 = 0`); the list has
    :math:`M_N` entries. Equal consecutive milestones are accepted (that rate gets no step).

    Args:
        milestone: list or tuple of ints > 0, non-decreasing.
        learning_rates: list or tuple of floats, as long as ``milestone``.

    Raises:
        TypeError: ``milestone``/``learning_rates`` is not a list or tuple, a milestone is not an
            int, or a rate is not a float.
        ValueError: the lengths differ, a milestone is <= 0 or smaller than the previous one,
            or a rate is not finite.
    """
    check_type(milestone, "milestone", (tuple, list))
    check_type(learning_rates, "learning_rates", (tuple, list))
    if len(milestone) != len(learning_rates):
        raise ValueError(
            "For 'piecewise_constant_lr', 'milestone' and 'learning_rates' must have the same "
            f"length, but got {len(milestone)} and {len(learning_rates)}."
        )
    out: list[float] = []
    previous = 0
    for k, (end, rate) in enumerate(zip(milestone, learning_rates, strict=True)):
        check_positive_int(end, f"milestone[{k}]")
        check_is_float(rate, f"learning_rates[{k}]")
        if end < previous:
            raise ValueError(
                f"For 'piecewise_constant_lr', milestone[{k}] must not be smaller than "
                f"milestone[{k - 1}], but got {end} < {previous}."
            )
        out.extend([rate] * (end - previous))
        previous = end
    return out


def exponential_decay_lr(
    learning_rate: float,
    decay_rate: float,
    total_step: int,
    step_per_epoch: int,
    decay_epoch: int,
    is_stair: bool = False,
) -> list[float]:
    r"""Exponential decay, per step.

    .. math::
        lr[i] = learning\_rate \cdot decay\_rate^{epoch / decay\_epoch}

    with the exponent floored to :math:`\lfloor epoch / decay\_epoch \rfloor` when
    ``is_stair``.

    Raises:
        TypeError: ``total_step``, ``step_per_epoch`` or ``decay_epoch`` is not an int,
            ``learning_rate`` or ``decay_rate`` is not a float, or ``is_stair`` is not a bool.
        ValueError: an int argument is < 1, or ``learning_rate``/``decay_rate`` is <= 0 or not
            finite.
    """
    _check_decay_inputs(
        learning_rate, decay_rate, total_step, step_per_epoch, decay_epoch, is_stair
    )
    out: list[float] = []
    for i in range(total_step):
        exponent = _epoch_of(i, step_per_epoch) / decay_epoch
        if is_stair:
            exponent = math.floor(exponent)
        out.append(learning_rate * decay_rate**exponent)
    return out


def natural_exp_decay_lr(
    learning_rate: float,
    decay_rate: float,
    total_step: int,
    step_per_epoch: int,
    decay_epoch: int,
    is_stair: bool = False,
) -> list[float]:
    r"""Natural-exponential decay, per step.

    .. math::
        lr[i] = learning\_rate \cdot e^{-decay\_rate \cdot x}

    where :math:`x = epoch` (not divided by ``decay_epoch``), or, when ``is_stair``,
    :math:`x = \lfloor epoch / decay\_epoch \rfloor \cdot decay\_epoch`.

    Raises: as :func:`exponential_decay_lr`.
    """
    _check_decay_inputs(
        learning_rate, decay_rate, total_step, step_per_epoch, decay_epoch, is_stair
    )
    out: list[float] = []
    for i in range(total_step):
        x = _epoch_of(i, step_per_epoch)
        if is_stair:
            x = math.floor(x / decay_epoch) * decay_epoch
        out.append(learning_rate * math.e ** (-decay_rate * x))
    return out


def inverse_decay_lr(
    learning_rate: float,
    decay_rate: float,
    total_step: int,
    step_per_epoch: int,
    decay_epoch: int,
    is_stair: bool = False,
) -> list[float]:
    r"""Inverse-time decay, per step.

    .. math::
        lr[i] = \frac{learning\_rate}{1 + decay\_rate \cdot epoch / decay\_epoch}

    or, when ``is_stair``,
    :math:`learning\_rate / (1 + decay\_rate \cdot \lfloor epoch / decay\_epoch \rfloor)`.

    Raises: as :func:`exponential_decay_lr`.
    """
    _check_decay_inputs(
        learning_rate, decay_rate, total_step, step_per_epoch, decay_epoch, is_stair
    )
    out: list[float] = []
    for i in range(total_step):
        epoch = _epoch_of(i, step_per_epoch)
        if is_stair:
            denominator = 1 + decay_rate * math.floor(epoch / decay_epoch)
        else:
            denominator = 1 + decay_rate * epoch / decay_epoch
        out.append(learning_rate / denominator)
    return out


def cosine_decay_lr(
    min_lr: float, max_lr: float, total_step: int, step_per_epoch: int, decay_epoch: int
) -> list[float]:
    r"""Cosine decay, per step.

    .. math::
        lr[i] = min\_lr + \delta \cdot (1 + \cos(\pi \cdot t / decay\_epoch)),
        \quad t = \min(epoch, decay\_epoch), \quad \delta = 0.5 \cdot (max\_lr - min\_lr)

    Raises:
        TypeError: ``min_lr`` or ``max_lr`` is not a float, or an int argument is not an int.
        ValueError: ``min_lr`` < 0, ``max_lr`` <= 0, an int argument < 1, a non-finite value,
            or ``min_lr >= max_lr``.
    """
    check_float_type(min_lr, "min_lr", "cosine_decay_lr")
    check_non_negative_float(min_lr, "min_lr")
    check_positive_float(max_lr, "max_lr")
    check_is_float(max_lr, "max_lr")
    check_positive_int(total_step, "total_step")
    check_positive_int(step_per_epoch, "step_per_epoch")
    check_positive_int(decay_epoch, "decay_epoch")
    if min_lr >= max_lr:
        raise ValueError(
            "For 'cosine_decay_lr', 'max_lr' must be greater than 'min_lr', "
            f"but got max_lr={max_lr!r}, min_lr={min_lr!r}."
        )
    delta = 0.5 * (max_lr - min_lr)
    out: list[float] = []
    for i in range(total_step):
        t = min(_epoch_of(i, step_per_epoch), decay_epoch)
        out.append(min_lr + delta * (1 + math.cos(math.pi * t / decay_epoch)))
    return out


def polynomial_decay_lr(
    learning_rate: float,
    end_learning_rate: float,
    total_step: int,
    step_per_epoch: int,
    decay_epoch: int,
    power: float,
    update_decay_epoch: bool = False,
) -> list[float]:
    r"""Polynomial decay, per step.

    .. math::
        lr[i] = (learning\_rate - end\_learning\_rate) \cdot (1 - t / D)^{power}
        + end\_learning\_rate

    with :math:`t = \min(epoch, decay\_epoch)` and :math:`D = decay\_epoch`, or, when
    ``update_decay_epoch``, :math:`t = epoch` (not clamped) and
    :math:`D = decay\_epoch \cdot \max(\lceil epoch / decay\_epoch \rceil, 1)`.

    Raises:
        TypeError: ``learning_rate``, ``end_learning_rate`` or ``power`` is not a float, an int
            argument is not an int, or ``update_decay_epoch`` is not a bool.
        ValueError: ``learning_rate`` or ``power`` <= 0, ``end_learning_rate`` < 0, an int
            argument < 1, or a non-finite value.
    """
    check_positive_float(learning_rate, "learning_rate")
    check_is_float(learning_rate, "learning_rate")
    check_float_type(end_learning_rate, "end_learning_rate", "polynomial_decay_lr")
    check_non_negative_float(end_learning_rate, "end_learning_rate")
    check_positive_float(power, "power")
    check_is_float(power, "power")
    check_positive_int(total_step, "total_step")
    check_positive_int(step_per_epoch, "step_per_epoch")
    check_positive_int(decay_epoch, "decay_epoch")
    check_bool(update_decay_epoch, "update_decay_epoch")

    delta = learning_rate - end_learning_rate
    out: list[float] = []
    for i in range(total_step):
        epoch = _epoch_of(i, step_per_epoch)
        if update_decay_epoch:
            horizon = decay_epoch * max(math.ceil(epoch / decay_epoch), 1)
            t = epoch
        else:
            horizon = decay_epoch
            t = min(decay_epoch, epoch)
        out.append(delta * (1 - t / horizon) ** power + end_learning_rate)
    return out


def warmup_lr(
    learning_rate: float, total_step: int, step_per_epoch: int, warmup_epoch: int
) -> list[float]:
    r"""Linear warm-up, per step.

    .. math::
        lr[i] = learning\_rate \cdot t / warmup\_epoch, \quad t = \min(epoch, warmup\_epoch)

    (the product is taken first, then divided). ``learning_rate == 0.0`` is accepted.

    Raises:
        TypeError: ``learning_rate`` is not a float, or an int argument is not an int.
        ValueError: ``learning_rate`` < 0 or not finite, or an int argument < 1.
    """
    check_float_type(learning_rate, "learning_rate", "warmup_lr")
    check_non_negative_float(learning_rate, "learning_rate")
    check_positive_int(warmup_epoch, "warmup_epoch")
    check_positive_int(total_step, "total_step")
    check_positive_int(step_per_epoch, "step_per_epoch")
    out: list[float] = []
    for i in range(total_step):
        t = min(warmup_epoch, _epoch_of(i, step_per_epoch))
        out.append(learning_rate * t / warmup_epoch)
    return out
