"""Helpers for the passes on ``onnx_ir``: readable unique names, new nodes and constants, facts.

:class:`IRBuilder` is :class:`passes.builder.GraphBuilder` for an ``onnx_ir.Graph``: every node
and tensor it creates gets a readable name (``dropout.seed.updated``, ``bn1.new_scale``) that
no value or node of the graph (subgraphs included) already has. :func:`replace_node` puts the
nodes it built in the place of a node, outputs keeping their names, types and shapes.
:func:`constant` reads the value of an initializer or ``Constant`` output, :func:`taken_names`
lists every name in use, and :func:`inferred` gives every value with the type and shape ONNX
shape inference finds (the one way the passes read facts a model does not state; :func:`infer_types`
sets them on the model itself, for the gradient builder).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import onnx
import onnx_ir as ir
from onnx_ir.passes.common import ShapeInferencePass

from .names import UniqueNames

__all__ = [
    "IRBuilder",
    "taken_names",
    "constant",
    "replace_node",
    "default_opset",
    "inferred",
    "without_values",
    "infer_types",
    "sorted_attributes",
]


def sorted_attributes(attrs: dict) -> list[ir.Attr]:
    """Attributes from Python values, by name (the order ``onnx.helper.make_node`` writes)."""
    return ir.convenience.convert_attributes(dict(sorted(attrs.items())))


def taken_names(graph: ir.Graph) -> set[str]:
    """Names of every input, initializer, node output and node of ``graph`` and its subgraphs."""
    names = {v.name for v in graph.inputs if v.name} | set(graph.initializers)
    for node in ir.traversal.RecursiveGraphIterator(graph):
        if node.name:
            names.add(node.name)
        names.update(v.name for v in node.outputs if v.name)
    return names


def constant(value: ir.Value | None) -> np.ndarray | None:
    """The value of an initializer or ``Constant`` output, else None."""
    if value is None:
        return None
    tensor = ir.convenience.get_const_tensor(value)
    return None if tensor is None else tensor.numpy()


def inferred(model: ir.Model) -> dict[str, ir.Value]:
    """Every value of ``model``'s main graph by name, typed and shaped by ONNX shape inference
    (best effort, as far as it gets). The values belong to a copy: the model keeps only the
    facts it states, so the built file does not fill up with value_info."""
    copy = model.clone()  # nodes and values only: the tensors are shared
    ShapeInferencePass(check_type=False, strict_mode=False, data_prop=False)(copy)
    return ir.convenience.create_value_mapping(copy.graph)


def _serialize_without(model: ir.Model, left_out: Sequence[ir.Value]) -> onnx.ModelProto:
    """``model`` serialized without the initializers ``left_out`` (their tensors are not
    copied); ``model`` keeps them all, in their order."""
    inits = model.graph.initializers
    values = list(inits.values())
    for value in left_out:
        inits.pop(value.name)  # for the time of the serialization: their nodes still read them
    try:
        return ir.serde.serialize_model(model)
    finally:
        inits.clear()
        for value in values:
            inits.add(value)


def without_values(model: ir.Model) -> onnx.ModelProto:
    """``model`` as a ``ModelProto`` whose initializers keep their name, type and dims but no
    values (none is copied): the form :func:`passes.inference.embed_inference_graph` stores.
    ``model`` is left as it was."""
    values = list(model.graph.initializers.values())
    proto = _serialize_without(model, values)
    for v in values:
        tensor = v.const_value
        proto.graph.initializer.add(
            name=v.name, data_type=int(tensor.dtype), dims=tensor.shape.numpy()
        )
    return proto


#: Initializers over this size that are not integer tensors are given to shape inference as
#: inputs of their type and shape, without their values: weights, never read for a shape.
_SHAPE_DATA_LIMIT = 1000


def infer_types(model: ir.Model) -> None:
    """Set on every node output (and subgraph input/output) of ``model`` the type and shape
    ONNX shape inference finds, in place (best effort: strict mode off; with data propagation,
    which finds more static sizes, or without it where it fails on an export; unchanged where
    both fail). No weight is copied: inference runs on a proto of the graph in which float
    initializers over 1 KB are inputs of their type and shape (integer tensors, which may hold
    shapes, and small ones keep their values)."""
    graph = model.graph
    weights = [
        v
        for v in graph.initializers.values()
        if v.const_value is not None
        and v.const_value.nbytes > _SHAPE_DATA_LIMIT
        and not v.const_value.dtype.is_integer()
    ]
    proto = _serialize_without(model, weights)
    inputs = {v.name for v in graph.inputs}
    for v in weights:
        if v.name not in inputs:
            tensor = v.const_value
            proto.graph.input.append(
                onnx.helper.make_tensor_value_info(v.name, int(tensor.dtype), tensor.shape.numpy())
            )
    for data_prop in (True, False):
        try:
            result = onnx.shape_inference.infer_shapes(
                proto, strict_mode=False, data_prop=data_prop
            )
        except Exception:
            continue
        _set_types(graph, result.graph, proto.graph, main=True)
        return


def _set_types(
    graph: ir.Graph, inferred: onnx.GraphProto, stated: onnx.GraphProto, main: bool
) -> None:
    """Types and shapes of ``inferred`` onto ``graph`` where they differ from ``stated`` (the
    graph as serialized for inference: what its values state already)."""

    def facts(proto: onnx.GraphProto) -> dict[str, onnx.TypeProto]:
        found = {vi.name: vi.type for vi in proto.value_info}
        found.update((vi.name, vi.type) for vi in proto.output)
        if not main:  # a subgraph's inputs are inferred from its node's inputs
            found.update((vi.name, vi.type) for vi in proto.input)
        return found

    new, old = facts(inferred), facts(stated)
    values = [out for node in graph for out in node.outputs] + list(graph.outputs)
    if not main:
        values += graph.inputs
    for value in values:
        fact = new.get(value.name)
        if fact is not None and fact != old.get(value.name):
            value.type = ir.serde.deserialize_type_proto_for_type(fact)
            value.shape = ir.serde.deserialize_type_proto_for_shape(fact)
    for node, node_new, node_old in zip(graph, inferred.node, stated.node, strict=True):
        for attr in node.attributes.values():
            if attr.type not in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS):
                continue
            a = next(a for a in node_new.attribute if a.name == attr.name)
            b = next(b for b in node_old.attribute if b.name == attr.name)
            if attr.type == ir.AttributeType.GRAPH:
                _set_types(attr.value, a.g, b.g, main=False)
            else:
                for sub, sub_new, sub_old in zip(attr.value, a.graphs, b.graphs, strict=True):
                    _set_types(sub, sub_new, sub_old, main=False)


def default_opset(model: ir.Model, missing: int = 0) -> int:
    """The model's default-domain opset version (``missing`` when it declares none)."""
    return model.opset_imports.get("", model.opset_imports.get("ai.onnx", missing))


def replace_node(graph: ir.Graph, node: ir.Node, new_nodes: Sequence[ir.Node], outputs) -> None:
    """Put ``new_nodes`` where ``node`` is; ``outputs[k]`` (or None) takes its output ``k``'s
    place: readers, graph outputs, name, type and shape."""
    pairs = [(old, new) for old, new in zip(node.outputs, outputs, strict=True) if new is not None]
    for old, new in pairs:
        new.type = old.type if old.type is not None else new.type
        new.shape = old.shape if old.shape is not None else new.shape
    ir.convenience.replace_all_uses_with(
        [o for o, _ in pairs], [n for _, n in pairs], replace_graph_outputs=True
    )
    graph.insert_before(node, new_nodes)
    graph.remove(node, safe=True)
    for old, new in pairs:
        new.name = old.name


class IRBuilder(UniqueNames):
    """Collects new nodes (in :attr:`nodes`) and registers constant initializers on ``graph``.

    Args:
        graph: the graph the constants are registered on; its names are never reused.
        taken: further names to avoid (default: :func:`taken_names` of ``graph``).
    """

    def __init__(self, graph: ir.Graph, taken: Iterable[str] | None = None) -> None:
        self.graph = graph
        self.nodes: list[ir.Node] = []
        super().__init__(taken_names(graph) if taken is None else taken)
        self._consts: dict[tuple, ir.Value] = {}

    def const(self, value, dtype=np.float32, name: str = "const") -> ir.Value:
        """A constant initializer; identical constants (value, dtype, shape) are shared."""
        arr = np.asarray(value, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._consts:
            self._consts[key] = self.initializer(arr, self.unique(name))
        return self._consts[key]

    def initializer(self, arr: np.ndarray, name: str) -> ir.Value:
        """Register ``arr`` as the initializer ``name`` (an exact name) and return its value."""
        tensor = ir.tensor(arr, name=name)
        value = ir.Value(
            name=name, type=ir.TensorType(tensor.dtype), shape=tensor.shape, const_value=tensor
        )
        self.graph.register_initializer(value)
        return value

    def op(
        self,
        op_type: str,
        inputs: Sequence[ir.Value | None],
        name: str,
        *,
        output: str | None = None,
        **attrs,
    ) -> ir.Value:
        """Append one single-output node; returns its output.

        ``name`` is the readable base of both the node and its output; ``output`` gives an
        exact output name (reserved beforehand, or the name of a value it replaces).
        """
        out = output if output is not None else self.unique(name)
        node = ir.Node(
            "",
            op_type,
            list(inputs),
            attributes=sorted_attributes(attrs),
            name=self.unique(f"{name}/{op_type}"),
        )
        node.outputs[0].name = out
        self.nodes.append(node)
        return node.outputs[0]
