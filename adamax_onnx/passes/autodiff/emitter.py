"""Emission of the gradient nodes: unique readable names, shared constants and shapes, and the
final rewrite of the emitted ops some execution providers lack (Sum, Size) into common ones.

:class:`Emitter` is what a rule's :class:`~.context.GradContext` writes through; the engine
(:mod:`.engine`) appends :func:`common_ops` of its nodes to the graph at the end.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from ..names import UniqueNames

__all__ = ["Emitter", "common_ops"]


class Emitter(UniqueNames):
    """Creates the gradient nodes and constants, with unique readable names."""

    def __init__(self, graph: ir.Graph, opset: int, taken: Iterable[str]) -> None:
        self.graph = graph
        self.opset = opset
        self.nodes: list[ir.Node] = []
        super().__init__(taken)
        self._consts: dict[tuple, ir.Value] = {}
        self._shapes: dict[tuple, ir.Value] = {}
        self._counter = itertools.count()

    def emit(
        self,
        prefix: str,
        op_type: str,
        inputs: Sequence[ir.Value | None],
        attrs: dict[str, Any],
        num_outputs: int,
    ) -> list[ir.Value]:
        attributes = [_attr(k, v) for k, v in attrs.items()]
        base = self.unique(f"{prefix}/{op_type}")
        node = ir.Node(
            "",
            op_type,
            list(inputs),
            attributes=attributes,
            num_outputs=num_outputs,
            name=base,
        )
        for k, out in enumerate(node.outputs):
            out.name = self.unique(f"{base}_out" if num_outputs == 1 else f"{base}_out{k}")
        self.nodes.append(node)
        return list(node.outputs)

    def const(self, array: np.ndarray) -> ir.Value:
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._consts:
            if array.size == 1:
                flat = array.reshape(-1)[0]
                label = f"{flat.item():g}".replace(".", "_").replace("-", "neg")
                name = self.unique(f"grad.const.{array.dtype.name}.{label}")
            else:
                name = self.unique(f"grad.const.{array.dtype.name}")
            tensor = ir.tensor(array, name=name)
            value = ir.Value(
                name=name,
                shape=ir.Shape(array.shape),
                type=ir.TensorType(tensor.dtype),
                const_value=tensor,
            )
            self.graph.register_initializer(value)
            self._consts[key] = value
        return self._consts[key]

    def shape(self, prefix: str, v: ir.Value, start: int | None, end: int | None) -> ir.Value:
        key = (id(v), start, end)
        if key not in self._shapes and self.opset < 15 and (start, end) != (None, None):
            # Shape's start/end attributes are opset 15: slice the whole shape instead.
            full = self.shape(prefix, v, None, None)
            ends = [end if end is not None else np.iinfo(np.int64).max]
            args = [np.asarray([start or 0]), np.asarray(ends), np.asarray([0])]
            bounds = [self.const(a.astype(np.int64)) for a in args]
            self._shapes[key] = self.emit(prefix, "Slice", [full, *bounds], {}, 1)[0]
        if key not in self._shapes:
            attrs: dict[str, Any] = {}
            if start is not None:
                attrs["start"] = start
            if end is not None:
                attrs["end"] = end
            self._shapes[key] = self.emit(prefix, "Shape", [v], attrs, 1)[0]
        return self._shapes[key]


def _attr(name: str, value: Any) -> ir.Attr:
    """An attribute from a Python value; the common kinds directly (onnx_ir's generic
    conversion checks protocols with isinstance, a third of the build time of a large model)."""
    if isinstance(value, bool):
        return ir.AttrInt64(name, int(value))
    if isinstance(value, int):  # ir.DataType is an int too (Cast's "to")
        return ir.AttrInt64(name, int(value))
    if isinstance(value, float):
        return ir.AttrFloat32(name, value)
    if isinstance(value, str):
        return ir.AttrString(name, value)
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, int) for v in value):
        return ir.AttrInt64s(name, [int(v) for v in value])
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, float) for v in value):
        return ir.AttrFloat32s(name, list(value))
    return ir.convenience.convert_attribute(name, value)


def common_ops(emitter: Emitter, replaced: dict[int, ir.Value]) -> list[ir.Node]:
    """The emitted nodes, with ``Sum`` as a chain of ``Add`` and ``Size`` as
    ``ReduceProd(Shape)``: standard too, but some execution providers (the ggml plugin, for one)
    lack them, and one such node sends a whole graph back to the CPU provider. ``replaced``
    receives ``id(old output) -> new output`` (the new one takes the old one's name and type)."""
    out: list[ir.Node] = []

    def take_over(old: ir.Value, new: ir.Value) -> None:
        ir.convenience.replace_all_uses_with(old, new)
        name, old.name = old.name, None
        new.name = name
        if old.dtype is not None:
            new.dtype = old.dtype
        if old.shape is not None:
            new.shape = old.shape
        replaced[id(old)] = new

    for node in emitter.nodes:
        kind = node.op_type if node.domain in ("", "ai.onnx") else None
        if kind == "Size":
            (x,), y = node.inputs, node.outputs[0]
            shape = ir.Node(
                "", "Shape", [x], num_outputs=1, name=emitter.unique(f"{node.name}/shape")
            )
            shape.outputs[0].name = emitter.unique(f"{node.name}/shape_out")
            prod = ir.Node(
                "",
                "ReduceProd",
                [shape.outputs[0]],
                attributes=[ir.AttrInt64("keepdims", 0)],
                num_outputs=1,
                name=emitter.unique(f"{node.name}/prod"),
            )
            take_over(y, prod.outputs[0])
            out += [shape, prod]
        elif kind == "Sum" and len(node.inputs) > 1:
            acc = node.inputs[0]
            for k, term in enumerate(node.inputs[1:], start=1):
                add = ir.Node(
                    "",
                    "Add",
                    [acc, term],
                    num_outputs=1,
                    name=emitter.unique(f"{node.name}/add{k}"),
                )
                add.outputs[0].name = emitter.unique(f"{node.name}/add{k}_out")
                out.append(add)
                acc = add.outputs[0]
            take_over(node.outputs[0], acc)
        else:
            out.append(node)
    return out
