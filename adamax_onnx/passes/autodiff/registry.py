"""The table of gradient rules: (domain, op type, opset range) -> vector-Jacobian product.

A rule is a function ``rule(ctx, dys) -> input gradients``: ``ctx`` is a
:class:`~passes.autodiff.context.GradContext` for one forward node (its inputs, outputs,
attributes, the opset, and helpers that emit standard ONNX ops), ``dys`` holds the gradient of
the loss with respect to each output of the node (``None`` where none flows). It returns one
entry per input (a shorter sequence means ``None`` for the rest): the gradient with respect to
that input, or ``None`` for inputs that are not differentiable (indices, shapes, bounds) or
that need none (``ctx.needs(i)`` is False). Rules read the forward tensors they need
(``ctx.x(i)``, ``ctx.y(i)``) instead of recomputing them.

Rules register themselves with :func:`rule`::

    @rule("Tanh")
    def tanh(ctx, dys):
        (dy,), y = dys, ctx.y(0)
        return [ctx.op("Mul", dy, ctx.op("Sub", ctx.scalar(1.0, y), ctx.op("Mul", y, y)))]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import onnx_ir as ir

    from .context import GradContext

__all__ = ["Rule", "RULES", "rule", "find_rule", "supported_ops", "ZERO_GRADIENT_OPS"]

RuleFn = Callable[["GradContext", Sequence["ir.Value | None"]], Sequence["ir.Value | None"]]

#: Ops whose float outputs have a zero (or undefined) derivative everywhere: nothing flows
#: back through them, so they cut the gradient path instead of needing a rule.
ZERO_GRADIENT_OPS = frozenset(
    {
        ("", "Shape"),
        ("", "Size"),
        ("", "Floor"),
        ("", "Ceil"),
        ("", "Round"),
        ("", "Sign"),
        ("", "EyeLike"),
        ("", "RandomNormalLike"),
        ("", "RandomUniformLike"),
        ("", "Bernoulli"),
        ("", "Multinomial"),
        ("", "ConstantOfShape"),
        ("", "Range"),
        ("", "OneHot"),
    }
)


@dataclass(frozen=True)
class Rule:
    domain: str
    op_type: str
    since: int
    until: int | None  # inclusive; None: still current
    fn: RuleFn

    def covers(self, opset: int) -> bool:
        return self.since <= opset and (self.until is None or opset <= self.until)


RULES: dict[tuple[str, str], list[Rule]] = {}


def rule(
    op_type: str, *, domain: str = "", since: int = 1, until: int | None = None
) -> Callable[[RuleFn], RuleFn]:
    """Register ``fn`` as the gradient of ``domain::op_type`` for opsets ``since..until``."""

    def register(fn: RuleFn) -> RuleFn:
        key = ("" if domain == "ai.onnx" else domain, op_type)
        RULES.setdefault(key, []).append(Rule(key[0], op_type, since, until, fn))
        return fn

    return register


def find_rule(domain: str, op_type: str, opset: int) -> Rule | None:
    """The rule for ``op_type`` at default-domain opset ``opset``, or None."""
    from . import rules  # noqa: F401  (registers every rule module)

    key = ("" if domain == "ai.onnx" else domain, op_type)
    for r in RULES.get(key, ()):
        if r.covers(opset):
            return r
    return None


def supported_ops() -> list[str]:
    """Op types with a gradient rule (``domain::op`` for non-default domains), sorted."""
    from . import rules  # noqa: F401

    return sorted(op if not dom else f"{dom}::{op}" for dom, op in RULES)
