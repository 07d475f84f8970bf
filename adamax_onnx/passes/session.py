"""The model a :class:`~adamax_onnx.TrainingSession` hands to onnxruntime: model in, model out.

A session binds parameters, optimizer state and fixed learning rates itself (IOBinding), so
the model it runs needs none of their initial values: :func:`without_initializers` drops them
without copying anything large (onnxruntime then keeps no third copy of the weights, and no
full-size serialized model exists even transiently). :func:`session_models` adds, on request,
the chunked form of the update (:class:`~.chunking.ChunkUpdates`), whose ``.updated`` outputs
are declared in chunk layout; :func:`chunk_layouts` reads that layout back, so the session
binds those outputs to its parameter-shaped buffers with the right shape.

No onnxruntime session is created here: should onnxruntime refuse the chunked model, the
caller falls back to the plain one (both are returned).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx

from ..errors import ModelError
from .chunking import ChunkUpdates
from .contract import Contract, updated

__all__ = ["without_initializers", "chunk_layouts", "session_models"]


def without_initializers(model: onnx.ModelProto, names: set[str]) -> onnx.ModelProto:
    """``model`` without the initializers in ``names`` (nothing large is copied).

    Only what onnxruntime reads is kept: opsets, functions, IR version and the graph's nodes,
    inputs, outputs, value_info and remaining initializers (metadata is left out).
    """
    light = onnx.ModelProto()
    light.ir_version = model.ir_version
    light.producer_name = model.producer_name
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    src, dst = model.graph, light.graph
    dst.name = src.name
    dst.node.extend(src.node)
    dst.input.extend(src.input)
    dst.output.extend(src.output)
    dst.value_info.extend(src.value_info)
    dst.initializer.extend(i for i in src.initializer if i.name not in names)
    dst.sparse_initializer.extend(src.sparse_initializer)
    return light


def chunk_layouts(model: onnx.ModelProto, state: Sequence[str]) -> dict[str, list[int]]:
    """State inputs whose ``.updated`` output has another static shape of the same size.

    Raises:
        ModelError: an ``.updated`` output holds another number of elements than its input.
    """
    shapes = {}
    for vi in list(model.graph.input) + list(model.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[vi.name] = [d.dim_value for d in dims]
    out = {}
    for name in state:
        src, dst = shapes.get(name), shapes.get(updated(name))
        if src is not None and dst is not None and src != dst:
            if int(np.prod(src)) != int(np.prod(dst)):
                raise ModelError(
                    f"output {updated(name)!r} has shape {dst}, input {name!r} has {src}: "
                    "not the same number of elements"
                )
            out[name] = dst
    return out


def session_models(
    model: onnx.ModelProto, contract: Contract, chunk_size: int
) -> tuple[onnx.ModelProto, onnx.ModelProto | None]:
    """``(plain, chunked)``: the model without the initial values of the inputs a session
    binds, and the same with large updates chunked (None when ``chunk_size`` is 0)."""
    always_bound = set(contract.state_inputs()) | set(contract.lr_inputs.values())
    plain = without_initializers(model, always_bound | set(contract.initial.values()))
    chunked = ChunkUpdates(contract.params, chunk_size)(plain).model if chunk_size else None
    return plain, chunked
