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
from onnx import helper

from .base import GraphPass, PassResult
from .builder import GraphBuilder

__all__ = ["DecomposeBatchNorm", "BatchNormError", "to_eval_mode", "in_training_mode"]


class BatchNormError(ValueError):
    """A BatchNormalization node cannot be decomposed (names the node and the reason)."""


def _ranks(model: onnx.ModelProto) -> dict[str, int]:
    """Rank of every tensor whose shape ONNX shape inference knows."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # best effort; the caller reports an unknown rank
        inferred = model
    g = inferred.graph
    return {
        vi.name: len(vi.type.tensor_type.shape.dim)
        for vi in list(g.value_info) + list(g.input) + list(g.output)
        if vi.type.tensor_type.HasField("shape")
    }


class DecomposeBatchNorm(GraphPass):
    """Rewrite every inference-form ``BatchNormalization`` node into standard elementwise ops.

    Args:
        trainable: names that will be trained; a running mean or variance among them is an
            error (frozen running statistics are what makes the decomposition exact).

    Raises:
        BatchNormError: an input of unknown rank, a trained running statistic, or a node in
            training mode whose running statistics are not initializers of their own (or one
            whose running-statistic outputs are read by other nodes).

    After the pass, :attr:`running_stats` lists the running means and variances of nodes in
    training mode, which the pass made state inputs with ``<name>.updated`` outputs.
    """

    def __init__(self, trainable: Iterable[str] = ()) -> None:
        self.trainable = set(trainable)
        self.running_stats: list[str] = []

    def call(self, model: onnx.ModelProto) -> PassResult:
        graph = model.graph
        bns = [
            n
            for n in graph.node
            if n.op_type == "BatchNormalization" and n.domain in ("", "ai.onnx")
        ]
        if not bns:
            return PassResult(model, False)
        taken = {i.name for i in graph.input} | {i.name for i in graph.initializer}
        taken |= {o for n in graph.node for o in n.output} | {n.name for n in graph.node}
        g = GraphBuilder(taken)
        ranks = _ranks(model)
        self.running_stats = []
        self._state_outputs: list[onnx.ValueInfoProto] = []
        bn_ids = {id(n) for n in bns}
        new_nodes: list[onnx.NodeProto] = []
        for node in graph.node:
            if id(node) not in bn_ids:
                new_nodes.append(node)
                continue
            start = len(g.nodes)
            self._decompose(model, node, g, ranks)
            new_nodes.extend(g.nodes[start:])
        del graph.node[:]
        graph.node.extend(new_nodes)
        graph.initializer.extend(g.initializers)
        if self.running_stats:
            inits = {i.name: i for i in graph.initializer}
            declared = {i.name for i in graph.input}
            for name in self.running_stats:
                if name not in declared:
                    t = inits[name]
                    graph.input.append(helper.make_tensor_value_info(name, t.data_type, t.dims))
            graph.output.extend(self._state_outputs)
        return PassResult(model, True)

    def _decompose(
        self, model: onnx.ModelProto, node: onnx.NodeProto, g: GraphBuilder, ranks: dict
    ) -> None:
        label = node.name or node.output[0]
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        training = bool(int(attrs.get("training_mode", 0))) or any(node.output[1:3])
        x, scale, bias, mean, var = node.input[:5]
        trained_stats = [n for n in (mean, var) if n in self.trainable]
        if trained_stats:
            raise BatchNormError(
                f"{trained_stats} are running statistics of BatchNormalization node {label!r}; "
                "they are frozen during fine-tuning: leave them out of the optimizer"
            )
        rank = ranks.get(x)
        if rank is None or rank < 2:
            raise BatchNormError(
                f"the input {x!r} of BatchNormalization node {label!r} has unknown rank (or "
                "rank < 2); give the model input shapes"
            )
        epsilon = float(attrs.get("epsilon", 1e-5))
        if training:
            self._training(model, node, g, rank, label, epsilon, float(attrs.get("momentum", 0.9)))
            return
        per_channel = g.const(
            [-1] + [1] * (rank - 2), dtype=np.int64, name=f"{label}.channel_shape"
        )

        def channel(name: str, what: str) -> str:
            return g.op("Reshape", [name, per_channel], f"{label}.{what}")

        dtype = _elem_np_dtype(model, scale)
        eps = g.const(epsilon, dtype=dtype, name=f"{label}.epsilon")
        std = g.op(
            "Sqrt", [g.op("Add", [channel(var, "var"), eps], f"{label}.var_eps")], f"{label}.std"
        )
        inv_std = g.op("Reciprocal", [std], f"{label}.inv_std")
        new_scale = g.op("Mul", [channel(scale, "scale"), inv_std], f"{label}.new_scale")
        shift = g.op("Mul", [channel(mean, "mean"), new_scale], f"{label}.mean_scaled")
        new_bias = g.op("Sub", [channel(bias, "bias"), shift], f"{label}.new_bias")
        scaled = g.op("Mul", [x, new_scale], f"{label}.scaled")
        g.op("Add", [scaled, new_bias], label, output=node.output[0])

    def _training(
        self,
        model: onnx.ModelProto,
        node: onnx.NodeProto,
        g: GraphBuilder,
        rank: int,
        label: str,
        epsilon: float,
        momentum: float,
    ) -> None:
        x, scale, bias, mean, var = node.input[:5]
        inits = {i.name for i in model.graph.initializer}
        readers = {i for n in model.graph.node for i in n.input}
        bad = [n for n in (mean, var) if n not in inits or n in self.running_stats]
        if bad:
            raise BatchNormError(
                f"BatchNormalization node {label!r} is in training mode, but its running "
                f"statistics {bad} are not initializers of their own, so they cannot be "
                "updated as state"
            )
        read = [o for o in node.output[1:3] if o and o in readers]
        if read:
            raise BatchNormError(
                f"the running-statistic outputs {read} of BatchNormalization node {label!r} "
                "are read by other nodes; only the normalized output can be used"
            )
        dtype = _elem_np_dtype(model, scale)
        axes = g.const([0, *range(2, rank)], dtype=np.int64, name=f"{label}.stat_axes")
        per_channel = g.const(
            [-1] + [1] * (rank - 2), dtype=np.int64, name=f"{label}.channel_shape"
        )

        def channel(name: str, what: str) -> str:
            return g.op("Reshape", [name, per_channel], f"{label}.{what}")

        # ReduceMean takes its axes as an input from opset 18, as an attribute before.
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
        axis_list = [0, *range(2, rank)]

        def mean_over_batch(t: str, name: str) -> str:
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
        g.op("Add", [scaled, channel(bias, "bias")], label, output=node.output[0])

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
        n = g.op("Cast", [count], f"{label}.count_float", to=helper.np_dtype_to_tensor_dtype(dtype))
        one = g.const(1.0, dtype=dtype, name=f"{label}.one")
        correction = g.op(
            "Div", [n, g.op("Sub", [n, one], f"{label}.count_minus_1")], f"{label}.bessel"
        )
        for stat, batch, what, fix in (
            (mean, batch_mean, "mean", None),
            (var, batch_var, "var", correction),
        ):
            b = g.op("Reshape", [batch, flat], f"{label}.batch_{what}_flat")
            if fix is not None:
                b = g.op("Mul", [b, fix], f"{label}.batch_{what}_unbiased")
            new = g.op(
                "Add",
                [
                    g.op("Mul", [stat, mom], f"{label}.running_{what}_kept"),
                    g.op("Mul", [b, rest], f"{label}.running_{what}_new"),
                ],
                f"{stat}.updated",
                output=g.reserve(f"{stat}.updated"),
            )
            self.running_stats.append(stat)
            t = next(i for i in model.graph.initializer if i.name == stat)
            self._state_outputs.append(helper.make_tensor_value_info(new, t.data_type, t.dims))


def in_training_mode(model: onnx.ModelProto) -> bool:
    """True when a BatchNormalization or Dropout node of the main graph is in training mode."""
    consts = {i.name for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "BatchNormalization":
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            if int(attrs.get("training_mode", 0)) or any(node.output[1:3]):
                return True
        if node.op_type == "Dropout" and len(node.input) > 2 and node.input[2]:
            if node.input[2] not in consts or _truthy(model, node.input[2]):
                return True
    return False


def _truthy(model: onnx.ModelProto, name: str) -> bool:
    from onnx import numpy_helper

    for init in model.graph.initializer:
        if init.name == name:
            return bool(np.asarray(numpy_helper.to_array(init)).any())
    return True


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


def _elem_np_dtype(model: onnx.ModelProto, name: str) -> np.dtype:
    for init in model.graph.initializer:
        if init.name == name:
            return np.dtype(helper.tensor_dtype_to_np_dtype(init.data_type))
    for vi in model.graph.input:
        if vi.name == name:
            return np.dtype(helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type))
    return np.dtype(np.float32)
