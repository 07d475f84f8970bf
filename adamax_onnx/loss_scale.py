"""Loss-scale managers with MindSpore's semantics, for ``build_training_model(loss_scale_manager=)``.

These are specifications, like :class:`adamax_onnx.AdaMax`: they validate their arguments as
MindSpore 2.10's ``mindspore.amp`` classes do and say how the training graph scales the loss
gradient. The scale itself lives in the graph (see :mod:`passes.nonfinite`):

* :class:`DynamicLossScaleManager` -> ``nn.TrainOneStepWithLossScaleCell`` with
  ``nn.DynamicLossScaleUpdateCell``: the loss gradient is seeded with the current scale (float32
  graph state ``adamax.loss_scale``), gradients are multiplied by ``1/scale``, a step whose
  gradients hold NaN/Inf is skipped (parameters and optimizer state unchanged), the scale is
  divided by ``scale_factor`` (not below 1) on overflow and multiplied by it once
  ``scale_window`` steps have passed since the last overflow or increase.
* :class:`FixedLossScaleManager` -> with ``drop_overflow_update=True``,
  ``TrainOneStepWithLossScaleCell`` with a constant scale (gradients unscaled in the graph,
  overflowing steps skipped); with ``False``, ``TrainOneStepCell(sens=loss_scale)``: the seed is
  the scale and the optimizer's own ``loss_scale`` divides it out (set them equal, as MindSpore
  documents).

As in MindSpore, the optimizer's ``loss_scale`` still applies on top of a manager's scale (it
divides the gradients and multiplies the weight decay), so keep it at 1.0 with a dynamic manager.
MindSpore's Python-side ``bad_step_max`` (a RuntimeError after 1000 consecutive overflows) belongs
to ``DynamicLossScaleManager.update_loss_scale``, which graph-mode training does not call; it is
not reproduced.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import onnx

from .checkparam import check_int_above_zero, check_real_number, is_less
from .passes.names import OVERFLOW, LossScaleSpec

if TYPE_CHECKING:
    from .passes.nonfinite import GuardNonFinite

__all__ = [
    "LossScaleManager",
    "DynamicLossScaleManager",
    "FixedLossScaleManager",
    "OverflowGuard",
    "guard_for",
    "apply_guard",
]


class LossScaleManager:
    """Base class of the loss-scale managers (MindSpore ``amp.LossScaleManager``)."""

    def get_loss_scale(self) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def get_drop_overflow_update(self) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def spec(self) -> LossScaleSpec:  # pragma: no cover - abstract
        """How the graph applies this manager (see :class:`passes.nonfinite.LossScaleSpec`)."""
        raise NotImplementedError

    def describe(self) -> dict:
        """A JSON-able description (recorded in the model contract and checkpoint identity)."""
        return {"manager": type(self).__name__, **self.spec().__dict__}


class DynamicLossScaleManager(LossScaleManager):
    """MindSpore ``amp.DynamicLossScaleManager(init_loss_scale, scale_factor, scale_window)``.

    Args:
        init_loss_scale: initial scale, >= 1 (default ``2**24``).
        scale_factor: > 0; the scale is divided by it on overflow and multiplied by it after
            ``scale_window`` clean steps (default 2).
        scale_window: positive int (default 2000).

    Raises:
        ValueError, TypeError: where MindSpore 2.10 raises them.

    Example:
        >>> mgr = DynamicLossScaleManager(2**12, 2, 1000)
        >>> model = build_training_model(inference, opt, loss_scale_manager=mgr)
    """

    def __init__(
        self, init_loss_scale: float = 2**24, scale_factor: float = 2, scale_window: int = 2000
    ) -> None:
        owner = "DynamicLossScaleManager"
        if is_less(init_loss_scale, 1.0, "init_loss_scale", owner):
            raise ValueError(
                f"The argument 'init_loss_scale' must be > 1, but got {init_loss_scale}"
            )
        check_int_above_zero(scale_window, "scale_window", owner)
        if not is_less(0, scale_factor, "scale_factor", owner):  # scale_factor <= 0
            raise ValueError(f"The argument 'scale_factor' must be > 0, but got {scale_factor}")
        # Beyond MindSpore (which accepts them and then trains on garbage): the graph keeps the
        # scale in float32, so it must be a finite real number there.
        check_real_number(init_loss_scale, "init_loss_scale", owner, fits_float32=True)
        check_real_number(scale_factor, "scale_factor", owner, fits_float32=True)
        self.loss_scale = float(init_loss_scale)
        self.scale_factor = float(scale_factor)
        self.scale_window = int(scale_window)

    def get_loss_scale(self) -> float:
        """The initial loss scale (the current one is ``TrainingSession.loss_scale``)."""
        return self.loss_scale

    def get_drop_overflow_update(self) -> bool:
        """Always True, as in MindSpore: an overflowing step is skipped."""
        return True

    def spec(self) -> LossScaleSpec:
        return LossScaleSpec(
            init=self.loss_scale,
            dynamic=True,
            scale_factor=self.scale_factor,
            scale_window=self.scale_window,
            unscale=True,
        )

    def __repr__(self) -> str:
        return (
            f"DynamicLossScaleManager(init_loss_scale={self.loss_scale}, "
            f"scale_factor={self.scale_factor}, scale_window={self.scale_window})"
        )


class FixedLossScaleManager(LossScaleManager):
    """MindSpore ``amp.FixedLossScaleManager(loss_scale, drop_overflow_update)``.

    Args:
        loss_scale: the constant scale, >= 1 (default 128.0).
        drop_overflow_update: skip a step whose gradients overflow (default True); with False,
            the optimizer's ``loss_scale`` must divide the scale out (set it to the same value).
    """

    def __init__(self, loss_scale: float = 128.0, drop_overflow_update: bool = True) -> None:
        owner = "FixedLossScaleManager"
        if is_less(loss_scale, 1, "loss_scale", owner):
            raise ValueError(f"The argument 'loss_scale' must be >= 1, but got {loss_scale}")
        check_real_number(loss_scale, "loss_scale", owner)
        self.loss_scale = float(loss_scale)
        self.drop_overflow_update = bool(drop_overflow_update)

    def get_loss_scale(self) -> float:
        return self.loss_scale

    def get_drop_overflow_update(self) -> bool:
        return self.drop_overflow_update

    def spec(self) -> LossScaleSpec:
        return LossScaleSpec(init=self.loss_scale, dynamic=False, unscale=self.drop_overflow_update)

    def __repr__(self) -> str:
        return (
            f"FixedLossScaleManager(loss_scale={self.loss_scale}, "
            f"drop_overflow_update={self.drop_overflow_update})"
        )


class OverflowGuard:
    """What :func:`guard_for`'s pass adds to a graph; records it in the model's contract."""

    def __init__(self, skip: bool, manager: LossScaleManager | None, extra_state: list[str]):
        self.skip = skip
        self.manager = manager
        self.extra_state = extra_state

    def annotate(self, contract: Any) -> None:
        """Set ``overflow``/``extra_state`` and record the options in ``hyper`` (identity)."""
        if self.skip:
            contract.overflow = OVERFLOW
            contract.hyper["skip_nonfinite"] = True
        if self.manager is not None:
            contract.hyper["loss_scale_manager"] = self.manager.describe()
        contract.extra_state = list(self.extra_state)


def guard_for(
    params: list[str],
    loss: str | None,
    skip_nonfinite: bool,
    manager: LossScaleManager | None,
) -> tuple[GuardNonFinite, OverflowGuard]:
    """The :class:`passes.nonfinite.GuardNonFinite` pass the options ask for (a no-op by
    default), and the :class:`OverflowGuard` that records it in the contract.

    Raises:
        TypeError: ``skip_nonfinite`` is not a bool, or ``manager`` is not a LossScaleManager.
    """
    if not isinstance(skip_nonfinite, bool):
        raise TypeError(
            f"skip_nonfinite must be a bool, got {type(skip_nonfinite).__name__} "
            f"({skip_nonfinite!r})"
        )
    if manager is not None and not isinstance(manager, LossScaleManager):
        raise TypeError(
            "loss_scale_manager must be an adamax_onnx.DynamicLossScaleManager or "
            f"FixedLossScaleManager, got {type(manager).__name__}"
        )
    if manager is not None and loss is None:
        raise TypeError(
            "loss_scale_manager needs a training model (an optimizer model has no loss)"
        )
    skip = skip_nonfinite or (manager is not None and manager.get_drop_overflow_update())
    spec = manager.spec() if manager is not None else None
    from .passes.nonfinite import GuardNonFinite  # onnx_ir loads with the first build

    guard = GuardNonFinite(params, skip=skip, loss=loss, loss_scale=spec)
    return guard, OverflowGuard(skip, manager, guard.state_inputs())


def apply_guard(
    model: onnx.ModelProto,
    params: list[str],
    loss: str | None,
    skip_nonfinite: bool,
    manager: LossScaleManager | None,
) -> tuple[onnx.ModelProto, OverflowGuard]:
    """:func:`guard_for`'s pass applied to ``model`` (a new ModelProto; ``model`` is left as it
    was). The build runs the pass as a step of its pipeline instead, on its own copy.

    Raises:
        TypeError: as :func:`guard_for`.
    """
    guard, record = guard_for(params, loss, skip_nonfinite, manager)
    return guard(model).model, record
