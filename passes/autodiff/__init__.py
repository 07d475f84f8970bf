"""Reverse-mode automatic differentiation over standard ONNX (see :mod:`.engine`).

``differentiate(model, loss, params)`` adds ``p_grad`` outputs; :class:`AutodiffBuilder` is the
same as a :class:`passes.gradients.GradientBuilder`; the rules live in :mod:`.rules`, one small
function per op, registered in the table of :mod:`.registry`.
"""

from __future__ import annotations

from collections.abc import Sequence

import onnx

from .engine import MIN_OPSET, differentiate
from .errors import GradientBuildError, Unsupported
from .registry import RULES, find_rule, rule, supported_ops

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
        return differentiate(model, loss, params)
