"""Cut a small model out of a built one: just the nodes that compute some named tensors.

Used by :mod:`adamax_onnx.lr_probe` to read a group's current learning rate or dynamic weight
decay without running a training step: the learning-rate / weight-decay subgraph depends only
on ``adamax.global_step`` and the fixed learning-rate inputs, so it can be evaluated alone with
the very same operators (and therefore the very same float32 results) as in training.
The cut itself is onnx_ir's extraction (``onnx_ir.convenience.extract``).
"""

from __future__ import annotations

from collections.abc import Sequence

import onnx
import onnx_ir as ir
from onnx import TensorProto

__all__ = ["extract_subgraph"]


def extract_subgraph(
    model: onnx.ModelProto,
    outputs: Sequence[str],
    allowed_inputs: Sequence[str],
    output_type: int = TensorProto.FLOAT,
) -> onnx.ModelProto:
    """A model computing ``outputs`` (scalars of ``output_type``) from ``allowed_inputs``.

    The nodes that produce ``outputs`` are kept in graph order with the initializers they
    read; the graph inputs among ``allowed_inputs`` become the new model's inputs, in the
    order given. ``model`` is not modified.

    Raises:
        ValueError: an output is not in the graph, or depends on a graph input that is not
            allowed (e.g. a parameter); the message names both.
    """
    source = ir.serde.deserialize_model(model)
    graph_inputs = {v.name for v in source.graph.inputs}
    inputs = [n for n in allowed_inputs if n in graph_inputs]
    try:
        graph = ir.convenience.extract(source.graph, inputs, list(outputs))
    except ValueError as exc:
        raise ValueError(
            f"cannot extract {list(outputs)} from inputs {sorted(inputs)} alone: {exc}"
        ) from exc
    graph.name = f"{source.graph.name}_probe"
    for value in graph.outputs:
        if value.type is None:
            value.type = ir.TensorType(ir.DataType(output_type))
        if value.shape is None:
            value.shape = ir.Shape([])
    probe = ir.Model(graph, ir_version=model.ir_version)
    return ir.serde.serialize_model(probe)
