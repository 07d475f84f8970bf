"""Errors of the gradient passes (kept apart so that every builder can raise them)."""

from __future__ import annotations

__all__ = ["GradientBuildError", "Unsupported"]


class GradientBuildError(RuntimeError):
    """Gradients could not be built; ``op_type`` is set when one op type is to blame."""

    def __init__(self, message: str, op_type: str | None = None):
        super().__init__(message)
        self.op_type = op_type


class Unsupported(Exception):
    """Raised by a gradient rule for a variant of its op it cannot differentiate.

    The message says what (an attribute value, an unknown rank, ...); the engine adds the op,
    the node and the trained parameter whose path reaches it.
    """
