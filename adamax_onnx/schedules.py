"""Learning-rate and weight-decay schedules computed inside the ONNX training graph.

Each schedule is a small object that *emits itself* as an ONNX subgraph of the global step:
the training graph holds a float32 scalar ``global_step`` (0 on the first step, the value
*before* the increment, exactly what MindSpore casts to float32 and hands to its schedule
cells), and a schedule turns it into the current learning rate (or weight decay) with a few
standard ONNX operators (opset 17). No table is precomputed, so training can run for any number
of steps.

The six MindSpore 2.10 ``mindspore.nn`` schedules are reproduced with their constructor
arguments, their argument validation (same exception types, checked in the same order) and the
float32 order of operations of their ``construct`` (which is not always what their docstrings
say; each class documents the formula it really computes):

* :class:`ExponentialDecayLR`
* :class:`NaturalExpDecayLR`
* :class:`InverseDecayLR`
* :class:`CosineDecayLR`
* :class:`PolynomialDecayLR`
* :class:`WarmUpLR`

:class:`WeightDecaySchedule` is the same base class under the name MindSpore's ``AdaMax``
documentation uses for a dynamic weight decay.

Writing a custom schedule
-------------------------
Subclass :class:`LearningRateSchedule` and implement two methods:

``emit(self, g, step, name)``
    Append nodes to ``g`` (the build's :class:`passes.adamax_stages.StageBuilder`, whose tensors
    are ``onnx_ir`` values; :class:`passes.builder.GraphBuilder`'s are names, with the same
    methods) that compute the value from ``step``, a float32 scalar tensor (shape ``[]``)
    holding the global step, and return a float32 scalar tensor. Use
    ``g.const(value, np.float32, name)`` for constants and
    ``g.op(op_type, inputs, name, **attrs)`` for nodes; ``name`` is a readable
    prefix (for example ``"adamax.lr.group0"``) to build node names from. Only standard ONNX
    operators of opset 17 may be used.

``value(self, step) -> float``
    The same formula evaluated with numpy float32 arithmetic, for an integer step. The runtime
    uses it to report the current learning rate without running a session, so it should do
    the same float32 operations as the graph.

Example: a learning rate that is constant, then halved from a given step on::

    import numpy as np
    from adamax_onnx.schedules import LearningRateSchedule

    class ConstantThenHalve(LearningRateSchedule):
        '''lr = learning_rate if step < boundary else learning_rate * 0.5'''

        def __init__(self, learning_rate: float, boundary: int) -> None:
            self.learning_rate = learning_rate
            self.boundary = boundary

        def emit(self, g, step, name):
            lr = g.const(self.learning_rate, np.float32, f"{name}.learning_rate")
            half = g.const(np.float32(self.learning_rate) * np.float32(0.5), np.float32,
                           f"{name}.half_learning_rate")
            boundary = g.const(self.boundary, np.float32, f"{name}.boundary")
            before = g.op("Less", [step, boundary], f"{name}.before_boundary")
            return g.op("Where", [before, lr, half], name)

        def value(self, step):
            lr = np.float32(self.learning_rate)
            if np.float32(step) < np.float32(self.boundary):
                return float(lr)
            return float(lr * np.float32(0.5))

An instance is then passed wherever a learning rate (or weight decay) is accepted, e.g.
``AdaMax(params, learning_rate=ConstantThenHalve(1e-3, 1000))``.

(Over the usual 400 lines on purpose: six schedules, each documenting the float32 formula
MindSpore really computes next to the two places that compute it (graph and ``value``), and the
example above; the code itself is about 200 lines.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .checkparam import (
    check_bool,
    check_float_type,
    check_is_float,
    check_non_negative_float,
    check_positive_float,
    check_positive_int,
)

if TYPE_CHECKING:  # only for annotations: the builders live in the graph-pass package
    import onnx_ir as ir

    from .passes.adamax_stages import StageBuilder
    from .passes.builder import GraphBuilder

    #: The build's builder (tensors are onnx_ir values) or the protobuf one (names).
    Builder = StageBuilder | GraphBuilder
    Tensor = ir.Value | str

__all__ = [
    "is_schedule",
    "LearningRateSchedule",
    "WeightDecaySchedule",
    "ExponentialDecayLR",
    "NaturalExpDecayLR",
    "InverseDecayLR",
    "CosineDecayLR",
    "PolynomialDecayLR",
    "WarmUpLR",
]

_F32 = np.float32


# numpy's float32 power/sin dispatch at run time to SIMD kernels that round differently by CPU
# (AVX-512, AVX2, scalar: seen 2 ulps for power, 6 for a cosine schedule where 1 + sin cancels).
# value() computes them in double and rounds once: the correctly rounded float32, on every CPU,
# within the 1 ulp by which onnxruntime's and MindSpore's powf/sinf may stray from it.
def _pow32(base: np.float32, exponent: np.float32) -> np.float32:
    """float32 ``base ** exponent`` of float32 operands (base >= 0 here), rounded once."""
    try:
        result = math.pow(float(base), float(exponent))
    except OverflowError:
        result = math.inf
    with np.errstate(over="ignore"):
        return _F32(result)


def _sin32(x: np.float32) -> np.float32:
    """float32 ``sin(x)`` of a float32 ``x``, rounded once."""
    return _F32(math.sin(float(x)))


# -- base class ------------------------------------------------------------------------------
class LearningRateSchedule:
    """Base class of schedules that compute a float32 scalar from the global step in ONNX.

    Subclasses implement :meth:`emit` (the ONNX subgraph) and :meth:`value` (the same formula in
    numpy float32). See the module docstring for a complete example.
    """

    def emit(self, g: Builder, step: Tensor, name: str) -> Tensor:
        """Append the nodes computing the value at ``step``; return the output tensor.

        Args:
            g: builder collecting the nodes and constant initializers.
            step: the float32 scalar (shape ``[]``) tensor holding the global step, 0 on the
                first training step (the value before it is incremented).
            name: readable prefix for the created nodes and tensors (e.g. ``"adamax.lr.group0"``).

        Returns:
            A float32 scalar (shape ``[]``) tensor, as ``g.op`` returns it.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement emit()")

    def value(self, step: int) -> float:
        """The value at integer ``step``, computed with float32 arithmetic like the graph (the
        six MindSpore schedules compute ``Pow``/``Sin`` in double and round once)."""
        raise NotImplementedError(f"{type(self).__name__} must implement value()")

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


def is_schedule(obj: object) -> bool:
    """Whether ``obj`` is a schedule: anything with an ``emit`` method (duck-typed, so a
    schedule need not subclass :class:`LearningRateSchedule`)."""
    return callable(getattr(obj, "emit", None))


#: A dynamic weight decay is written exactly like a learning-rate schedule.
WeightDecaySchedule = LearningRateSchedule

#: The six MindSpore schedules declare their arguments as dataclass fields (in MindSpore's
#: order, with its defaults) and check them in ``__post_init__``, in MindSpore's order of
#: checks; equality stays identity (schedules are hashable) and ``repr`` is the base class's.
_schedule = dataclass(eq=False, repr=False)


@_schedule
class _DecaySchedule(LearningRateSchedule):
    """The arguments and checks the exponential, natural-exponential and inverse-time decays
    share (MindSpore's ``_check_inputs``)."""

    learning_rate: float
    decay_rate: float
    decay_steps: int
    is_stair: bool = False

    def __post_init__(self) -> None:
        prim = type(self).__name__
        check_positive_int(self.decay_steps, "decay_steps", prim)
        check_positive_float(self.learning_rate, "learning_rate", prim)
        check_is_float(self.learning_rate, "learning_rate", prim)
        check_positive_float(self.decay_rate, "decay_rate", prim)
        check_is_float(self.decay_rate, "decay_rate", prim)
        check_bool(self.is_stair, "is_stair", prim)


# -- the six MindSpore schedules ---------------------------------------------------------------
class ExponentialDecayLR(_DecaySchedule):
    r"""MindSpore ``nn.ExponentialDecayLR``: exponential decay.

    .. math::
        p = \frac{step}{decay\_steps}, \quad p \leftarrow \lfloor p \rfloor \text{ if is\_stair}

        lr = learning\_rate \cdot decay\_rate^{p}

    Args:
        learning_rate: initial learning rate, a float > 0.
        decay_rate: decay rate, a float > 0.
        decay_steps: number of steps to decay over, an int >= 1.
        is_stair: decay once every ``decay_steps`` steps instead of continuously.

    Raises:
        TypeError: ``learning_rate`` or ``decay_rate`` is not a float, ``decay_steps`` is not an
            int, or ``is_stair`` is not a bool.
        ValueError: ``decay_steps`` < 1, or ``learning_rate``/``decay_rate`` <= 0 or not finite.
    """

    def emit(self, g: Builder, step: Tensor, name: str) -> Tensor:
        decay_steps = g.const(self.decay_steps, _F32, f"{name}.decay_steps")
        p = g.op("Div", [step, decay_steps], f"{name}.p")
        if self.is_stair:
            p = g.op("Floor", [p], f"{name}.p_floor")
        rate = g.const(self.decay_rate, _F32, f"{name}.decay_rate")
        factor = g.op("Pow", [rate, p], f"{name}.decay_factor")
        lr = g.const(self.learning_rate, _F32, f"{name}.learning_rate")
        return g.op("Mul", [lr, factor], name)

    def value(self, step: int) -> float:
        p = _F32(step) / _F32(self.decay_steps)
        if self.is_stair:
            p = np.floor(p)
        with np.errstate(over="ignore"):  # inf is the float32 result
            return float(_F32(self.learning_rate) * _pow32(_F32(self.decay_rate), p))


class NaturalExpDecayLR(_DecaySchedule):
    r"""MindSpore ``nn.NaturalExpDecayLR``: natural-exponential decay.

    What MindSpore 2.10 computes (its docstring says :math:`p = step / decay\_steps`, but its
    ``construct`` does not divide unless ``is_stair``):

    .. math::
        p = step, \quad p \leftarrow \lfloor step / decay\_steps \rfloor \cdot decay\_steps
        \text{ if is\_stair}

        lr = learning\_rate \cdot e^{-decay\_rate \cdot p}

    where :math:`e` is ``math.e`` rounded to float32 and the power is a float32 ``Pow`` (not
    ``Exp``), as in MindSpore.

    Args and Raises: as :class:`ExponentialDecayLR`.
    """

    def emit(self, g: Builder, step: Tensor, name: str) -> Tensor:
        p = step
        if self.is_stair:
            decay_steps = g.const(self.decay_steps, _F32, f"{name}.decay_steps")
            q = g.op("Div", [step, decay_steps], f"{name}.q")
            q = g.op("Floor", [q], f"{name}.q_floor")
            p = g.op("Mul", [q, decay_steps], f"{name}.p")
        neg_rate = g.const(-self.decay_rate, _F32, f"{name}.neg_decay_rate")
        exponent = g.op("Mul", [neg_rate, p], f"{name}.exponent")
        e = g.const(math.e, _F32, f"{name}.e")
        factor = g.op("Pow", [e, exponent], f"{name}.decay_factor")
        lr = g.const(self.learning_rate, _F32, f"{name}.learning_rate")
        return g.op("Mul", [lr, factor], name)

    def value(self, step: int) -> float:
        p = _F32(step)
        if self.is_stair:
            d = _F32(self.decay_steps)
            p = np.floor(p / d) * d
        exponent = _F32(-self.decay_rate) * p
        with np.errstate(over="ignore"):
            return float(_F32(self.learning_rate) * _pow32(_F32(math.e), exponent))


class InverseDecayLR(_DecaySchedule):
    r"""MindSpore ``nn.InverseDecayLR``: inverse-time decay.

    .. math::
        p = \frac{step}{decay\_steps}, \quad p \leftarrow \lfloor p \rfloor \text{ if is\_stair}

        lr = \frac{learning\_rate}{1 + decay\_rate \cdot p}

    MindSpore's float32 division of the Python scalar ``learning_rate`` by a tensor is carried
    out as ``learning_rate * (1 / denominator)`` (bit-for-bit, checked against MindSpore 2.10 on
    CPU), so the graph computes a ``Reciprocal`` then a ``Mul``; a plain ``Div`` is 1 ulp off
    for about a third of the steps.

    Args and Raises: as :class:`ExponentialDecayLR`.
    """

    def emit(self, g: Builder, step: Tensor, name: str) -> Tensor:
        decay_steps = g.const(self.decay_steps, _F32, f"{name}.decay_steps")
        p = g.op("Div", [step, decay_steps], f"{name}.p")
        if self.is_stair:
            p = g.op("Floor", [p], f"{name}.p_floor")
        rate = g.const(self.decay_rate, _F32, f"{name}.decay_rate")
        scaled = g.op("Mul", [rate, p], f"{name}.rate_p")
        one = g.const(1.0, _F32, f"{name}.one")
        denominator = g.op("Add", [one, scaled], f"{name}.denominator")
        inverse = g.op("Reciprocal", [denominator], f"{name}.inverse_denominator")
        lr = g.const(self.learning_rate, _F32, f"{name}.learning_rate")
        return g.op("Mul", [lr, inverse], name)

    def value(self, step: int) -> float:
        p = _F32(step) / _F32(self.decay_steps)
        if self.is_stair:
            p = np.floor(p)
        denominator = _F32(1.0) + _F32(self.decay_rate) * p
        return float(_F32(self.learning_rate) * (_F32(1.0) / denominator))


@_schedule
class CosineDecayLR(LearningRateSchedule):
    r"""MindSpore ``nn.CosineDecayLR``: cosine decay from ``max_lr`` to ``min_lr``.

    MindSpore documents :math:`\cos(\pi \cdot p / decay\_steps)` but computes it as a sine,
    and clamps the step; in float32, in this order:

    .. math::
        p = \min(step, decay\_steps)

        lr = min\_lr + \delta \cdot \left(1 + \sin\left(\pi \cdot
        \left(\frac{p}{decay\_steps} + 0.5\right)\right)\right),
        \quad \delta = 0.5 \cdot (max\_lr - min\_lr)

    with :math:`\delta` computed in double precision, then rounded to float32.

    Args:
        min_lr: lower bound, a float >= 0.
        max_lr: upper bound (value at step 0), a float > ``min_lr``.
        decay_steps: number of steps to decay over, an int >= 1; the value stays at ``min_lr``
            afterwards.

    Raises:
        TypeError: ``min_lr`` or ``max_lr`` is not a float, or ``decay_steps`` is not an int.
        ValueError: ``min_lr`` < 0, ``max_lr`` <= 0, ``decay_steps`` < 1, a non-finite value,
            or ``min_lr >= max_lr``.
    """

    min_lr: float
    max_lr: float
    decay_steps: int

    def __post_init__(self) -> None:
        prim, min_lr, max_lr = "CosineDecayLR", self.min_lr, self.max_lr
        check_float_type(min_lr, "min_lr", prim)
        check_non_negative_float(min_lr, "min_lr", prim)
        check_positive_float(max_lr, "max_lr", prim)
        check_is_float(max_lr, "max_lr", prim)
        check_positive_int(self.decay_steps, "decay_steps", prim)
        if min_lr >= max_lr:
            raise ValueError(
                f"For '{prim}', 'max_lr' must be greater than 'min_lr', "
                f"but got max_lr={max_lr!r}, min_lr={min_lr!r}."
            )

    @property
    def _delta(self) -> float:
        return 0.5 * (self.max_lr - self.min_lr)  # double, as in MindSpore's __init__

    def emit(self, g: Builder, step: Tensor, name: str) -> Tensor:
        decay_steps = g.const(self.decay_steps, _F32, f"{name}.decay_steps")
        p = g.op("Min", [step, decay_steps], f"{name}.p")
        ratio = g.op("Div", [p, decay_steps], f"{name}.ratio")
        half = g.const(0.5, _F32, f"{name}.half")
        shifted = g.op("Add", [ratio, half], f"{name}.shifted")
        pi = g.const(math.pi, _F32, f"{name}.pi")
        angle = g.op("Mul", [pi, shifted], f"{name}.angle")
        sine = g.op("Sin", [angle], f"{name}.sin")
        one = g.const(1.0, _F32, f"{name}.one")
        factor = g.op("Add", [one, sine], f"{name}.factor")
        delta = g.const(self._delta, _F32, f"{name}.delta")
        scaled = g.op("Mul", [delta, factor], f"{name}.scaled")
        min_lr = g.const(self.min_lr, _F32, f"{name}.min_lr")
        return g.op("Add", [min_lr, scaled], name)

    def value(self, step: int) -> float:
        d = _F32(self.decay_steps)
        p = np.minimum(_F32(step), d)
        angle = _F32(math.pi) * (p / d + _F32(0.5))
        factor = _F32(1.0) + _sin32(angle)
        return float(_F32(self.min_lr) + _F32(self._delta) * factor)


@_schedule
class PolynomialDecayLR(LearningRateSchedule):
    r"""MindSpore ``nn.PolynomialDecayLR``: polynomial decay to ``end_learning_rate``.

    Without ``update_decay_steps`` the step is clamped:

    .. math::
        s = \min(step, decay\_steps), \quad D = decay\_steps

    With ``update_decay_steps`` the step is *not* clamped (MindSpore's docstring says it is) and
    the horizon grows in multiples of ``decay_steps``:

    .. math::
        s = step, \quad D = decay\_steps \cdot \max(\lceil step / decay\_steps \rceil, 1)

    so the value reaches ``end_learning_rate`` at every multiple of ``decay_steps`` and jumps
    back up on the next step. Then, in float32:

    .. math::
        lr = (learning\_rate - end\_learning\_rate) \cdot (1 - s / D)^{power}
        + end\_learning\_rate

    with the difference computed in double precision, then rounded to float32.

    Args:
        learning_rate: initial learning rate, a float > 0.
        end_learning_rate: final learning rate, a float >= 0.
        decay_steps: number of steps to decay over, an int >= 1.
        power: exponent of the polynomial, a float > 0.
        update_decay_steps: restart the decay every ``decay_steps`` steps (see above).

    Raises:
        TypeError: ``learning_rate``, ``end_learning_rate`` or ``power`` is not a float,
            ``decay_steps`` is not an int, or ``update_decay_steps`` is not a bool.
        ValueError: ``learning_rate`` or ``power`` <= 0, ``end_learning_rate`` < 0,
            ``decay_steps`` < 1, or a non-finite value.
    """

    learning_rate: float
    end_learning_rate: float
    decay_steps: int
    power: float
    update_decay_steps: bool = False

    def __post_init__(self) -> None:
        prim = "PolynomialDecayLR"
        # MindSpore checks learning_rate without naming the class in the message.
        check_positive_float(self.learning_rate, "learning_rate")
        check_is_float(self.learning_rate, "learning_rate")
        check_float_type(self.end_learning_rate, "end_learning_rate", prim)
        check_non_negative_float(self.end_learning_rate, "end_learning_rate", prim)
        check_positive_int(self.decay_steps, "decay_steps", prim)
        check_bool(self.update_decay_steps, "update_decay_steps", prim)
        check_positive_float(self.power, "power", prim)
        check_is_float(self.power, "power", prim)

    @property
    def _diff(self) -> float:
        return self.learning_rate - self.end_learning_rate  # double, as in MindSpore's __init__

    def emit(self, g: Builder, step: Tensor, name: str) -> Tensor:
        decay_steps = g.const(self.decay_steps, _F32, f"{name}.decay_steps")
        s = step
        horizon = decay_steps
        if self.update_decay_steps:
            cycles = g.op("Div", [step, decay_steps], f"{name}.cycles")
            cycles = g.op("Ceil", [cycles], f"{name}.cycles_ceil")
            one = g.const(1.0, _F32, f"{name}.one")
            cycles = g.op("Max", [cycles, one], f"{name}.cycles_at_least_1")
            horizon = g.op("Mul", [decay_steps, cycles], f"{name}.horizon")
        else:
            s = g.op("Min", [step, decay_steps], f"{name}.clamped_step")
        p = g.op("Div", [s, horizon], f"{name}.p")
        one = g.const(1.0, _F32, f"{name}.one")
        base = g.op("Sub", [one, p], f"{name}.remaining")
        power = g.const(self.power, _F32, f"{name}.power")
        factor = g.op("Pow", [base, power], f"{name}.factor")
        diff = g.const(self._diff, _F32, f"{name}.diff_learning_rate")
        scaled = g.op("Mul", [diff, factor], f"{name}.scaled")
        end = g.const(self.end_learning_rate, _F32, f"{name}.end_learning_rate")
        return g.op("Add", [scaled, end], name)

    def value(self, step: int) -> float:
        d = _F32(self.decay_steps)
        s = _F32(step)
        if self.update_decay_steps:
            horizon = d * np.maximum(np.ceil(s / d), _F32(1.0))
        else:
            s = np.minimum(s, d)
            horizon = d
        factor = _pow32(_F32(1.0) - s / horizon, _F32(self.power))
        return float(_F32(self._diff) * factor + _F32(self.end_learning_rate))


@_schedule
class WarmUpLR(LearningRateSchedule):
    r"""MindSpore ``nn.WarmUpLR``: linear warm-up, then constant.

    .. math::
        lr = learning\_rate \cdot \frac{\min(step, warmup\_steps)}{warmup\_steps}

    The value is 0 at step 0. Unlike its docstring ("must be greater than 0"), MindSpore
    accepts ``learning_rate == 0.0``.

    Args:
        learning_rate: the learning rate after warm-up, a float >= 0.
        warmup_steps: number of warm-up steps, an int >= 1.

    Raises:
        TypeError: ``learning_rate`` is not a float or ``warmup_steps`` is not an int.
        ValueError: ``learning_rate`` < 0 or not finite, or ``warmup_steps`` < 1.
    """

    learning_rate: float
    warmup_steps: int

    def __post_init__(self) -> None:
        prim = "WarmUpLR"
        check_float_type(self.learning_rate, "learning_rate", prim)
        check_non_negative_float(self.learning_rate, "learning_rate", prim)
        check_positive_int(self.warmup_steps, "warmup_steps", prim)

    def emit(self, g: Builder, step: Tensor, name: str) -> Tensor:
        warmup_steps = g.const(self.warmup_steps, _F32, f"{name}.warmup_steps")
        clamped = g.op("Min", [step, warmup_steps], f"{name}.clamped_step")
        percent = g.op("Div", [clamped, warmup_steps], f"{name}.warmup_percent")
        lr = g.const(self.learning_rate, _F32, f"{name}.learning_rate")
        return g.op("Mul", [lr, percent], name)

    def value(self, step: int) -> float:
        w = _F32(self.warmup_steps)
        percent = np.minimum(_F32(step), w) / w
        return float(_F32(self.learning_rate) * percent)
