"""BatchNormalization decomposition: inference-form BN as standard elementwise ops.

onnxruntime-training's gradient builder has no gradient for ``BatchNormalization`` ("The
gradient builder has not been registered: BatchNormalization"). For fine-tuning with frozen
running statistics the inference form is an affine map per channel, so this pass rewrites

    Y = BatchNormalization(X, scale, B, mean, var, epsilon)

into the same computation onnxruntime's CPU kernel does, with every parameter reshaped to
``[C, 1, ..., 1]`` so it broadcasts over ``X [N, C, d1, ...]``::

    inv_std   = 1 / sqrt(var + epsilon)
    new_scale = scale * inv_std
    new_bias  = B - mean * new_scale
    Y         = X * new_scale + new_bias

``scale`` and ``B`` stay ordinary initializers, so they can be trained; ``mean`` and ``var``
are only read (they must not be trained: they are statistics, not parameters). Only the main
graph is rewritten; the original inference graph is kept elsewhere for export.

A node in **training mode** (``training_mode=1``, as torch exports a module in ``train()``)
normalizes with the statistics of the batch, as torch's ``train()`` does, and updates the
running statistics in the same run::

    mean_b = ReduceMean(X, all axes but 1)        var_b = ReduceMean((X - mean_b)^2, same axes)
    Y      = (X - mean_b) / sqrt(var_b + epsilon) * scale + B
    mean.updated = mean * momentum + mean_b * (1 - momentum)
    var.updated  = var * momentum + var_b * n/(n-1) * (1 - momentum)   # n = N*d1*...: unbiased

(``momentum`` is the node's attribute, default 0.9 = 1 - torch's 0.1; torch updates the
running variance with the unbiased batch variance, onnxruntime's kernel with the biased one.)
The running mean and variance become graph inputs (their initializer is the default) with the
outputs ``<mean>.updated`` and ``<var>.updated`` (:attr:`DecomposeBatchNorm.running_stats`):
state carried from step to step. :func:`to_eval_mode` gives the inference form of such a model
(BatchNorm on running statistics, Dropout off) for export.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx
import onnx_ir as ir
from onnx_ir.passes import PassResult

from .infra import BuildPass
from .irbuild import IRBuilder, default_opset, inferred, replace_node

__all__ = ["DecomposeBatchNorm", "BatchNormError", "to_eval_mode"]


class BatchNormError(ValueError):
    """A BatchNormalization node cannot be decomposed (names the node and the reason)."""


def _rank(x: ir.Value, facts: dict[str, ir.Value]) -> int | None:
    known = x if x.shape is not None else facts.get(x.name)
    return None if known is None or known.shape is None else len(known.shape)


def _np_dtype(v: ir.Value) -> np.dtype:
    return np.dtype(v.dtype.numpy()) if v.dtype is not None else np.dtype(np.float32)


class DecomposeBatchNorm(BuildPass):
    """Rewrite every inference-form ``BatchNormalization`` node into standard elementwise ops.

    Args:
        trainable: names that will be trained; a running mean or variance among them is an
            error (frozen running statistics are what makes the decomposition exact).

    Raises:
        BatchNormError: an input of unknown rank, a trained running statistic, or a node in
            training mode whose running statistics are not initializers of their own (or one
            whose running-statistic outputs are read by other nodes). Such outputs that are
            graph outputs take the updated running statistics (torch's: unbiased variance).

    After the pass, :attr:`running_stats` lists the running means and variances of nodes in
    training mode, which the pass made state inputs with ``<name>.updated`` outputs.
    """

    def __init__(self, trainable: Iterable[str] = ()) -> None:
        self.trainable = set(trainable)
        self.running_stats: list[str] = []

    def call(self, model: ir.Model) -> PassResult:
        graph = model.graph
        bns = [
            n for n in graph if n.op_type == "BatchNormalization" and n.domain in ("", "ai.onnx")
        ]
        self.running_stats = []
        if not bns:
            return PassResult(model, False)
        g = IRBuilder(graph)
        facts = inferred(model) if any(n.inputs[0].shape is None for n in bns) else {}
        state: list[tuple[ir.Value, ir.Value]] = []  # (running statistic, its next value)
        for node in bns:
            g.nodes = []
            outputs = self._decompose(model, node, g, _rank(node.inputs[0], facts), state)
            outputs = (outputs + [None] * len(node.outputs))[: len(node.outputs)]
            replace_node(graph, node, g.nodes, outputs)
        for stat, _ in state:
            if not stat.is_graph_input():
                graph.inputs.append(stat)
        graph.outputs.extend(new for _, new in state)
        return PassResult(model, True)

    def _decompose(
        self, model: ir.Model, node: ir.Node, g: IRBuilder, rank: int | None, state: list
    ) -> list[ir.Value | None]:
        """The values that take the place of ``node``'s outputs (None: an output not kept)."""
        label = node.name or node.outputs[0].name
        training = bool(node.attributes.get_int("training_mode", 0)) or any(
            o.name for o in node.outputs[1:3]
        )
        x, scale, bias, mean, var = node.inputs[:5]
        trained_stats = [v.name for v in (mean, var) if v.name in self.trainable]
        if trained_stats:
            raise BatchNormError(
                f"{trained_stats} are running statistics of BatchNormalization node {label!r}; "
                "they are frozen during fine-tuning: leave them out of the optimizer"
            )
        if rank is None or rank < 2:
            raise BatchNormError(
                f"the input {x.name!r} of BatchNormalization node {label!r} has unknown rank (or "
                "rank < 2); give the model input shapes"
            )
        epsilon = node.attributes.get_float("epsilon", 1e-5)
        if training:
            momentum = node.attributes.get_float("momentum", 0.9)
            return self._training(model, node, g, rank, label, epsilon, momentum, state)
        per_channel = g.const(
            [-1] + [1] * (rank - 2), dtype=np.int64, name=f"{label}.channel_shape"
        )

        def channel(v: ir.Value, what: str) -> ir.Value:
            return g.op("Reshape", [v, per_channel], f"{label}.{what}")

        eps = g.const(epsilon, dtype=_np_dtype(scale), name=f"{label}.epsilon")
        std = g.op(
            "Sqrt", [g.op("Add", [channel(var, "var"), eps], f"{label}.var_eps")], f"{label}.std"
        )
        inv_std = g.op("Reciprocal", [std], f"{label}.inv_std")
        new_scale = g.op("Mul", [channel(scale, "scale"), inv_std], f"{label}.new_scale")
        shift = g.op("Mul", [channel(mean, "mean"), new_scale], f"{label}.mean_scaled")
        new_bias = g.op("Sub", [channel(bias, "bias"), shift], f"{label}.new_bias")
        scaled = g.op("Mul", [x, new_scale], f"{label}.scaled")
        return [g.op("Add", [scaled, new_bias], label)]

    def _training(
        self,
        model: ir.Model,
        node: ir.Node,
        g: IRBuilder,
        rank: int,
        label: str,
        epsilon: float,
        momentum: float,
        state: list,
    ) -> list[ir.Value | None]:
        x, scale, bias, mean, var = node.inputs[:5]
        bad = [
            v.name for v in (mean, var) if not v.is_initializer() or v.name in self.running_stats
        ]
        if bad:
            raise BatchNormError(
                f"BatchNormalization node {label!r} is in training mode, but its running "
                f"statistics {bad} are not initializers of their own, so they cannot be "
                "updated as state"
            )
        dtype = _np_dtype(scale)
        axis_list = [0, *range(2, rank)]
        axes = g.const(axis_list, dtype=np.int64, name=f"{label}.stat_axes")
        per_channel = g.const(
            [-1] + [1] * (rank - 2), dtype=np.int64, name=f"{label}.channel_shape"
        )

        def channel(v: ir.Value, what: str) -> ir.Value:
            return g.op("Reshape", [v, per_channel], f"{label}.{what}")

        # ReduceMean takes its axes as an input from opset 18, as an attribute before.
        opset = default_opset(model, missing=1)

        def mean_over_batch(t: ir.Value, name: str) -> ir.Value:
            if opset >= 18:
                return g.op("ReduceMean", [t, axes], name, keepdims=1)
            return g.op("ReduceMean", [t], name, axes=axis_list, keepdims=1)

        batch_mean = mean_over_batch(x, f"{label}.batch_mean")
        centered = g.op("Sub", [x, batch_mean], f"{label}.centered")
        squared = g.op("Mul", [centered, centered], f"{label}.centered_sq")
        batch_var = mean_over_batch(squared, f"{label}.batch_var")
        eps = g.const(epsilon, dtype=dtype, name=f"{label}.epsilon")
        std = g.op("Sqrt", [g.op("Add", [batch_var, eps], f"{label}.var_eps")], f"{label}.std")
        normed = g.op("Div", [centered, std], f"{label}.normalized")
        scaled = g.op("Mul", [normed, channel(scale, "scale")], f"{label}.scaled")
        y = g.op("Add", [scaled, channel(bias, "bias")], label)

        # running statistics (no gradient flows here: nothing the loss reads depends on them)
        flat = g.const([-1], dtype=np.int64, name=f"{label}.flat")
        mom = g.const(momentum, dtype=dtype, name=f"{label}.momentum")
        rest = g.const(1.0 - momentum, dtype=dtype, name=f"{label}.one_minus_momentum")
        shape = g.op("Shape", [x], f"{label}.x_shape")
        count = g.op(
            "ReduceProd",
            [g.op("Gather", [shape, axes], f"{label}.stat_dims", axis=0)],
            f"{label}.count",
            keepdims=0,
        )
        n = g.op("Cast", [count], f"{label}.count_float", to=ir.DataType.from_numpy(dtype))
        one = g.const(1.0, dtype=dtype, name=f"{label}.one")
        correction = g.op(
            "Div", [n, g.op("Sub", [n, one], f"{label}.count_minus_1")], f"{label}.bessel"
        )
        read = [o.name for o in node.outputs[1:3] if o.uses()]
        if read:
            raise BatchNormError(
                f"the running-statistic outputs {read} of BatchNormalization node {label!r} "
                "are read by other nodes; only the normalized output can be used"
            )
        outputs: list[ir.Value | None] = [y]
        for k, stat, batch, what, fix in (
            (1, mean, batch_mean, "mean", None),
            (2, var, batch_var, "var", correction),
        ):
            b = g.op("Reshape", [batch, flat], f"{label}.batch_{what}_flat")
            if fix is not None:
                b = g.op("Mul", [b, fix], f"{label}.batch_{what}_unbiased")
            kept = g.op("Mul", [stat, mom], f"{label}.running_{what}_kept")
            added = g.op("Mul", [b, rest], f"{label}.running_{what}_new")
            name = g.reserve(f"{stat.name}.updated")
            new = g.op("Add", [kept, added], name, output=name)
            new.type, new.shape = ir.TensorType(stat.const_value.dtype), stat.const_value.shape
            self.running_stats.append(stat.name)
            state.append((stat, new))
            # A graph output of the node's own running statistic is this updated value (as torch
            # computes it; the ONNX definition has the biased batch variance); the state output
            # <stat>.updated is a graph output of its own.
            out = node.outputs[k] if len(node.outputs) > k else None
            kept = out is not None and out.is_graph_output()
            outputs.append(g.op("Identity", [new], f"{label}.running_{what}") if kept else None)
        return outputs


def to_eval_mode(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` as torch's ``eval()`` runs it: BatchNormalization on its running
    statistics (``training_mode`` 0, the running-statistic outputs dropped) and Dropout as the
    identity (its ``training_mode`` input removed). Other nodes are unchanged."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    read = {i for n in out.graph.node for i in n.input} | {o.name for o in out.graph.output}
    for node in out.graph.node:
        if node.op_type == "BatchNormalization":
            keep = [a for a in node.attribute if a.name != "training_mode"]
            del node.attribute[:]
            node.attribute.extend(keep)
            del node.output[1:]
        elif node.op_type == "Dropout":
            if len(node.output) > 1 and node.output[1] and node.output[1] in read:
                del node.input[2:]  # the mask is read: an inference-mode Dropout (all ones)
            else:  # absent: the identity
                node.op_type = "Identity"
                del node.input[1:]
                del node.output[1:]
                del node.attribute[:]
    # Initializers only the removed inputs read (a Dropout's ratio and training_mode) go too:
    # nothing else holds their values once the training graph has replaced the node.
    still = {i for n in out.graph.node for i in n.input} | {o.name for o in out.graph.output}
    keep = [i for i in out.graph.initializer if i.name in still or i.name not in read]
    del out.graph.initializer[:]
    out.graph.initializer.extend(keep)
    return out
