"""What a lowering rule works with: shape and type facts about the graph, emission helpers,
attribute readers, and :class:`Unsupported` for a variant a rule does not lower."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import defs, helper

from ..builder import GraphBuilder

__all__ = [
    "MIN_OPSET",
    "STANDARD_DOMAINS",
    "Rule",
    "RuleContext",
    "Unsupported",
    "attributes",
    "default_opset",
    "is_standard",
    "only_attributes",
    "string_attr",
]

STANDARD_DOMAINS = ("", "ai.onnx")
#: The rules need ``ReduceSum`` with an ``axes`` input.
MIN_OPSET = 13


class Unsupported(Exception):
    """Raised by a rule for a variant of its op it does not lower (message: the reason)."""


def is_standard(node: onnx.NodeProto, opset: int) -> bool:
    if node.domain not in STANDARD_DOMAINS:
        return False
    try:
        defs.get_schema(node.op_type, opset, "")
    except defs.SchemaError:
        return False
    return True


def default_opset(model: onnx.ModelProto) -> int:
    for o in model.opset_import:
        if o.domain in STANDARD_DOMAINS:
            return o.version
    return 1


@dataclass
class TensorInfo:
    elem_type: int | None
    dims: list[int | str | None] | None  # None: rank unknown


class RuleContext:
    """What a rule may use: a GraphBuilder, inferred shapes/types, producers, the opset."""

    def __init__(self, model: onnx.ModelProto, g: GraphBuilder) -> None:
        self.g = g
        self.opset = default_opset(model)
        self.info: dict[str, TensorInfo] = {}
        try:
            inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
        except Exception:  # inference is best effort; rules report what they miss
            inferred = model
        graph = inferred.graph
        for vi in list(graph.value_info) + list(graph.input) + list(graph.output):
            t = vi.type.tensor_type
            dims = None
            if t.HasField("shape"):
                dims = [
                    d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                    for d in t.shape.dim
                ]
            self.info[vi.name] = TensorInfo(t.elem_type or None, dims)
        for init in graph.initializer:
            self.info[init.name] = TensorInfo(init.data_type, list(init.dims))
        self.producer = {o: n for n in model.graph.node for o in n.output if o}

    # -- facts -------------------------------------------------------------------------------
    def dims(self, name: str) -> list[int | str | None]:
        info = self.info.get(name)
        if info is None or info.dims is None:
            raise Unsupported(f"the shape of tensor {name!r} is unknown")
        return info.dims

    def rank(self, name: str) -> int:
        return len(self.dims(name))

    def static_dims(self, name: str, axes: Sequence[int]) -> list[int]:
        dims = self.dims(name)
        out = []
        for a in axes:
            d = dims[a]
            if not isinstance(d, int) or d <= 0:
                raise Unsupported(f"dimension {a} of tensor {name!r} is not a static size")
            out.append(d)
        return out

    def dtype(self, name: str) -> int:
        info = self.info.get(name)
        if info is None or not info.elem_type:
            raise Unsupported(f"the element type of tensor {name!r} is unknown")
        return info.elem_type

    def np_dtype(self, name: str) -> np.dtype:
        return np.dtype(helper.tensor_dtype_to_np_dtype(self.dtype(name)))

    def need_opset(self, version: int, what: str) -> None:
        if self.opset < version:
            raise Unsupported(
                f"{what} needs default-domain opset >= {version}, the model has {self.opset}"
            )

    # -- emission ----------------------------------------------------------------------------
    def op(
        self, op_type: str, inputs: Sequence[str], name: str, output: str | None = None, **attrs
    ) -> str:
        return self.g.op(op_type, inputs, name, output=output, **attrs)

    def const(self, value, dtype, name: str) -> str:
        return self.g.const(value, dtype=dtype, name=name)

    def i64(self, value, name: str = "const") -> str:
        return self.g.const(value, dtype=np.int64, name=name)

    def reduce_sum(
        self, x: str, axes: Sequence[int], name: str, keepdims: int = 1, output: str | None = None
    ) -> str:
        return self.op(
            "ReduceSum", [x, self.i64(list(axes), "axes")], name, output=output, keepdims=keepdims
        )

    def cast_to(self, x: str, like: str, name: str) -> str:
        """``x`` cast to ``like``'s element type (no node when the types already agree)."""
        if self.dtype(x) == self.dtype(like):
            return x
        return self.op("Cast", [x], name, to=self.dtype(like))


def attributes(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def string_attr(value, default: str) -> str:
    if value is None:
        return default
    return value.decode() if isinstance(value, bytes) else str(value)


def only_attributes(node: onnx.NodeProto, allowed: dict[str, object]) -> dict:
    """Attributes of ``node``; raises for one whose value the rule does not handle."""
    attrs = attributes(node)
    for key, value in attrs.items():
        if key in allowed and allowed[key] is not None and value != allowed[key]:
            raise Unsupported(f"attribute {key}={value!r} is not supported")
    return attrs


Rule = Callable[[RuleContext, onnx.NodeProto], None]
