"""Lowering pass: rewrite the training-build ops of a gradient graph into standard ONNX ops.

onnxruntime-training's gradient builder emits ops that only the training build runs: most in
the ``com.microsoft`` domain (``ReluGrad``, ``ConvGrad``, ...), two even in the default domain
without an ONNX schema (``MaxPoolGrad``, ``AveragePoolGrad``). :class:`LowerToStandard` replaces
each of them, node by node, with standard ONNX ops computing the same numbers, so the training
model runs on stock onnxruntime, other execution providers and ``onnx.reference``.

One rule per op type (see :data:`RULES`); each rule writes exactly the outputs of the node it
replaces, so consumers are untouched. A rule follows the formula of onnxruntime-training
1.19.2's CPU kernel, in the same order of operations where that is free (e.g. ``Scale`` with
``scale_down`` multiplies by ``1/scale`` as the kernel does). Rules that need sizes the kernel
took from the graph's shape information (``MaxPoolGrad``'s output, ``AveragePoolGrad``'s and
``ConvGrad``'s spatial sizes) read them from ONNX shape inference; the batch dimension stays
symbolic.

Ops without a rule, or attributes a rule does not cover, raise :class:`UnloweredOpsError`
naming every such node; nothing is left half-lowered silently.

The rules need default-domain opset >= 13 (``ReduceSum`` with an ``axes`` input) and, for the
scatter-based rules (``GatherGrad``, ``MaxPoolGrad``), opset >= 16 (``reduction="add"``).
"""

from __future__ import annotations

from collections.abc import Sequence

import onnx

from ..base import GraphPass, PassResult
from ..builder import GraphBuilder
from . import conv, rules
from .context import (
    MIN_OPSET,
    STANDARD_DOMAINS,
    Rule,
    RuleContext,
    Unsupported,
    default_opset,
    is_standard,
)

__all__ = [
    "LowerToStandard",
    "UnloweredOpsError",
    "RULES",
    "COVERAGE_RULES",
    "lowered_op_types",
    "nonstandard_nodes",
]


class UnloweredOpsError(RuntimeError):
    """Some nodes could not be lowered; ``nodes`` lists ``(op_type, node_name, reason)``."""

    def __init__(self, nodes: Sequence[tuple[str, str, str]]):
        self.nodes = list(nodes)
        lines = [f"{op} (node {name!r}): {why}" for op, name, why in self.nodes]
        super().__init__(
            "the training graph holds op(s) that have no standard-ONNX lowering: "
            + "; ".join(lines)
        )


def nonstandard_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Nodes of the main graph that are not standard ONNX ops at the model's opset."""
    opset = default_opset(model)
    return [n for n in model.graph.node if not is_standard(n, opset)]


#: ``(domain, op_type) -> rule``. The table in docs/README lists the same ops.
RULES: dict[tuple[str, str], Rule] = {
    ("com.microsoft", "SoftmaxCrossEntropyLossGrad"): rules.softmax_cross_entropy_loss_grad,
    ("com.microsoft", "ReluGrad"): rules.relu_grad,
    ("com.microsoft", "SigmoidGrad"): rules.sigmoid_grad,
    ("com.microsoft", "TanhGrad"): rules.tanh_grad,
    ("com.microsoft", "SoftmaxGrad_13"): rules.softmax_grad,
    ("com.microsoft", "SoftmaxGrad"): rules.softmax_grad,
    ("com.microsoft", "LogSoftmaxGrad_13"): rules.log_softmax_grad,
    ("com.microsoft", "LogSoftmaxGrad"): rules.log_softmax_grad,
    ("com.microsoft", "Scale"): rules.scale,
    ("com.microsoft", "FusedMatMul"): rules.fused_matmul,
    ("com.microsoft", "TransposeMatMul"): rules.fused_matmul,
    ("com.microsoft", "LayerNormalizationGrad"): rules.layer_norm_grad,
    ("com.microsoft", "GatherGrad"): rules.gather_grad,
    ("com.microsoft", "ConvGrad"): conv.conv_grad,
    ("", "MaxPoolGrad"): conv.max_pool_grad,
    ("", "AveragePoolGrad"): conv.average_pool_grad,
}


#: Standard ops rewritten into more common standard ops (``coverage=True``): gradient graphs
#: accumulate with ``Sum`` and count with ``Size``, which some execution providers (the ggml
#: plugin, for one) lack, so one such node would send the whole graph back to the CPU provider.
COVERAGE_RULES: dict[tuple[str, str], Rule] = {
    ("", "Sum"): rules.sum_as_adds,
    ("", "Size"): rules.size_as_shape_product,
}


def lowered_op_types() -> list[str]:
    """``domain::op_type`` of every op the pass lowers."""
    return [f"{d or 'ai.onnx'}::{op}" for d, op in RULES]


class LowerToStandard(GraphPass):
    """Replace every non-standard node of the main graph by standard ONNX ops.

    Args:
        coverage: also rewrite ``Sum`` and ``Size`` (see :data:`COVERAGE_RULES`), in training
            graphs that held non-standard ops (graphs already standard are left untouched).

    Raises:
        UnloweredOpsError: listing each node that has no rule or whose variant its rule does
            not support (nothing is returned half-lowered).
    """

    def __init__(self, coverage: bool = True) -> None:
        self.coverage = coverage

    def call(self, model: onnx.ModelProto) -> PassResult:
        graph = model.graph
        opset = default_opset(model)
        todo = [n for n in graph.node if not is_standard(n, opset)]
        if not todo:
            return PassResult(model, False)
        failures: list[tuple[str, str, str]] = []
        if opset < MIN_OPSET:
            failures = [
                (
                    n.op_type,
                    n.name,
                    f"lowering needs default-domain opset >= {MIN_OPSET}, the model has {opset}",
                )
                for n in todo
            ]
            raise UnloweredOpsError(failures)
        taken = {i.name for i in graph.input} | {i.name for i in graph.initializer}
        taken |= {o for n in graph.node for o in n.output} | {n.name for n in graph.node}
        g = GraphBuilder(taken)
        ctx = RuleContext(model, g)
        new_nodes: list[onnx.NodeProto] = []
        for node in graph.node:
            if is_standard(node, opset):
                widen = COVERAGE_RULES.get((node.domain, node.op_type)) if self.coverage else None
                if widen is None:
                    new_nodes.append(node)
                else:
                    start = len(g.nodes)
                    widen(ctx, node)
                    new_nodes.extend(g.nodes[start:])
                continue
            rule = RULES.get((node.domain, node.op_type))
            if rule is None:
                domain = node.domain or "ai.onnx"
                failures.append(
                    (node.op_type, node.name, f"no lowering rule for {domain}::{node.op_type}")
                )
                continue
            start = len(g.nodes)
            try:
                rule(ctx, node)
            except Unsupported as exc:
                failures.append((node.op_type, node.name, str(exc)))
                del g.nodes[start:]
                continue
            new_nodes.extend(g.nodes[start:])
        if failures:
            raise UnloweredOpsError(failures)
        del graph.node[:]
        graph.node.extend(new_nodes)
        graph.initializer.extend(g.initializers)
        used = {n.domain for n in graph.node}
        keep = [o for o in model.opset_import if o.domain in STANDARD_DOMAINS or o.domain in used]
        del model.opset_import[:]
        model.opset_import.extend(keep)
        return PassResult(model, True)
