"""Recover the inference model from a built training model.

At build time :func:`embed_inference_graph` stores the original inference graph, without its
initializer values, in the training model's metadata (base64 of a ``GraphProto``).
:func:`extract_inference_model` rebuilds the inference model from it, taking every initializer
value by name from a mapping (the trained parameters) or from the training model itself.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .contract import INFERENCE_GRAPH_KEY

__all__ = ["embed_inference_graph", "extract_inference_model"]


def embed_inference_graph(training: onnx.ModelProto, inference: onnx.ModelProto) -> None:
    """Record ``inference``'s graph (structure and initializer names, no values) in ``training``."""
    skeleton = onnx.GraphProto()
    skeleton.CopyFrom(inference.graph)
    for init in skeleton.initializer:  # keep name/type/dims, drop the values
        init.ClearField("raw_data")
        for f in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
            init.ClearField(f)
        init.ClearField("string_data")
    payload = {
        "graph": base64.b64encode(skeleton.SerializeToString()).decode("ascii"),
        "opset": [[o.domain, o.version] for o in inference.opset_import],
        "ir_version": inference.ir_version,
        "producer": inference.producer_name,
    }
    entry = next((p for p in training.metadata_props if p.key == INFERENCE_GRAPH_KEY), None)
    if entry is None:
        entry = training.metadata_props.add()
        entry.key = INFERENCE_GRAPH_KEY
    entry.value = json.dumps(payload)


def extract_inference_model(
    training: onnx.ModelProto,
    values: Mapping[str, np.ndarray],
    params_as_inputs: Sequence[str] = (),
) -> onnx.ModelProto:
    """The original inference model with initializers from ``values`` or from ``training``.

    Names in ``params_as_inputs`` become graph inputs instead (to bind live parameter buffers).

    Raises:
        ValueError: if ``training`` carries no inference graph or an initializer has no value.
    """
    entry = next((p for p in training.metadata_props if p.key == INFERENCE_GRAPH_KEY), None)
    if entry is None:
        raise ValueError("the model carries no inference graph (was it built by adamax-onnx?)")
    payload = json.loads(entry.value)
    graph = onnx.GraphProto()
    graph.ParseFromString(base64.b64decode(payload["graph"]))
    stored = {i.name: i for i in training.graph.initializer}
    as_inputs = set(params_as_inputs)
    for init in graph.initializer:
        if init.name in as_inputs:
            graph.input.append(
                helper.make_tensor_value_info(init.name, init.data_type, list(init.dims))
            )
    kept = [i for i in graph.initializer if i.name not in as_inputs]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    for i, init in enumerate(graph.initializer):
        if init.name in values:
            arr = np.asarray(values[init.name])
            expected = helper.tensor_dtype_to_np_dtype(init.data_type)
            if arr.dtype != expected or list(arr.shape) != list(init.dims):
                raise ValueError(
                    f"value for initializer {init.name!r} has {arr.dtype}{list(arr.shape)}, "
                    f"expected {expected}{list(init.dims)}"
                )
            graph.initializer[i].CopyFrom(numpy_helper.from_array(arr, init.name))
        elif init.name in stored:
            graph.initializer[i].CopyFrom(stored[init.name])
        else:
            raise ValueError(f"no value for initializer {init.name!r} of the inference graph")
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid(d, v) for d, v in payload["opset"]],
        ir_version=payload["ir_version"],
        producer_name=payload["producer"] or "adamax-onnx",
    )
    return model
