"""Reverse-mode automatic differentiation over standard ONNX (see :mod:`.engine`).

``differentiate(model, loss, params)`` adds ``p_grad`` outputs (to an ``onnx_ir.Model`` in place,
or to a copy of a ``ModelProto``); :class:`AutodiffBuilder` is the same as a
:class:`passes.gradients.GradientBuilder` that also builds in place; the rules live in :mod:`.rules`, one small
function per op, registered in the table of :mod:`.registry`.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import onnx

from .errors import GradientBuildError, Unsupported

if TYPE_CHECKING:
    import onnx_ir as ir

# The engine and the rules import onnx_ir (and through it sympy, ~0.25 s): they load on first
# use, so that ``import adamax_onnx`` stays fast for a device that only runs training models.
_LAZY = {
    "MIN_OPSET": ".engine",
    "differentiate": ".engine",
    "RULES": ".registry",
    "find_rule": ".registry",
    "rule": ".registry",
    "supported_ops": ".registry",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AutodiffBuilder",
    "GradientBuildError",
    "MIN_OPSET",
    "RULES",
    "Unsupported",
    "differentiate",
    "find_rule",
    "rule",
    "supported_ops",
]


class AutodiffBuilder:
    """The default gradient builder: :func:`differentiate`, standard ONNX ops only."""

    def build(self, model: onnx.ModelProto, loss: str, params: Sequence[str]) -> onnx.ModelProto:
        """A new model: ``model`` with the ``p_grad`` outputs (``model`` stays as it is)."""
        from .engine import differentiate

        return differentiate(model, loss, params)

    def build_in_place(self, model: ir.Model, loss: str, params: Sequence[str]) -> None:
        """Add the ``p_grad`` outputs to ``model`` itself."""
        from .engine import differentiate

        differentiate(model, loss, params)
