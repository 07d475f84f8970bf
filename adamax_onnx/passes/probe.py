"""Cut a small model out of a built one: just the nodes that compute some named tensors.

Used by the runtime to read a group's current learning rate or dynamic weight decay without
running a training step: the learning-rate / weight-decay subgraph depends only on
``adamax.global_step`` and the fixed learning-rate inputs, so it can be evaluated alone with
the very same operators (and therefore the very same float32 results) as in training.
"""

from __future__ import annotations

from collections.abc import Sequence

import onnx
from onnx import TensorProto, helper

__all__ = ["extract_subgraph"]


def extract_subgraph(
    model: onnx.ModelProto,
    outputs: Sequence[str],
    allowed_inputs: Sequence[str],
    output_type: int = TensorProto.FLOAT,
) -> onnx.ModelProto:
    """A model computing ``outputs`` (scalars of ``output_type``) from ``allowed_inputs``.

    Walks back from ``outputs`` through the nodes that produce them; initializers are copied,
    graph inputs must be among ``allowed_inputs`` (they become the new model's inputs, in the
    order given, when they are needed).

    Raises:
        ValueError: an output is produced by no node, or depends on a graph input that is not
            allowed (e.g. a parameter).
    """
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output if out}
    inits = {i.name: i for i in graph.initializer}
    graph_inputs = {i.name: i for i in graph.input}
    allowed = set(allowed_inputs)
    needed_nodes: list[onnx.NodeProto] = []
    seen_nodes: set[int] = set()
    needed_inits: dict[str, onnx.TensorProto] = {}
    needed_inputs: set[str] = set()
    stack = list(outputs)
    visited: set[str] = set()
    while stack:
        name = stack.pop()
        if not name or name in visited:
            continue
        visited.add(name)
        if name in graph_inputs:
            if name not in allowed:
                raise ValueError(
                    f"cannot extract {list(outputs)}: they depend on graph input {name!r}, "
                    f"which is not one of {sorted(allowed)}"
                )
            needed_inputs.add(name)
            continue
        if name in producer:
            node = producer[name]
            if id(node) not in seen_nodes:
                seen_nodes.add(id(node))
                needed_nodes.append(node)
                stack.extend(node.input)
            continue
        if name in inits:
            needed_inits[name] = inits[name]
            continue
        raise ValueError(f"cannot extract {list(outputs)}: no node produces {name!r}")
    order = {id(n): i for i, n in enumerate(graph.node)}
    needed_nodes.sort(key=lambda n: order[id(n)])  # graph order is a topological order
    inputs = [graph_inputs[n] for n in allowed_inputs if n in needed_inputs]
    sub = helper.make_graph(
        needed_nodes,
        f"{graph.name}_probe",
        inputs,
        [helper.make_tensor_value_info(o, output_type, []) for o in outputs],
        initializer=list(needed_inits.values()),
    )
    probe = helper.make_model(sub, opset_imports=list(model.opset_import))
    probe.ir_version = model.ir_version
    return probe
