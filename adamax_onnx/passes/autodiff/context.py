"""What a gradient rule sees of its forward node, and the helpers it emits ONNX ops with.

Every op a rule emits is a standard ONNX op valid at the model's default-domain opset
(``ctx.opset``, at least 13): helpers such as :meth:`GradContext.reduce`,
:meth:`GradContext.squeeze` and :meth:`GradContext.split` pick the attribute or input form the
opset needs. Names are readable: the nodes emitted for forward node ``fc1/Gemm`` are called
``fc1/Gemm/grad/<OpType>``, their outputs ``fc1/Gemm/grad/<OpType>_out``.

Shapes: :meth:`dims` gives what shape inference knew (ints, symbolic names or None); when a
rule needs a size that is not static it reads it at run time with :meth:`shape`, so the batch
and sequence dimensions stay symbolic.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx_ir as ir

from .errors import Unsupported

if TYPE_CHECKING:  # pragma: no cover
    from .emitter import Emitter

__all__ = ["GradContext", "Unsupported"]

Dim = int | str | None


class GradContext:
    """One forward node, seen by its gradient rule.

    Attributes:
        node: the forward ``ir.Node``.
        opset: the model's default-domain opset.
    """

    def __init__(self, emitter: Emitter, node: ir.Node, needs: Sequence[bool]) -> None:
        self._e = emitter
        self.node = node
        self.opset = emitter.opset
        self._needs = list(needs)
        self._prefix = f"{node.name or node.outputs[0].name or node.op_type}/grad"

    # -- the forward node --------------------------------------------------------------------
    @property
    def inputs(self) -> Sequence[ir.Value | None]:
        return self.node.inputs

    @property
    def outputs(self) -> Sequence[ir.Value]:
        return self.node.outputs

    def x(self, i: int) -> ir.Value | None:
        """Forward input ``i`` (None when absent or omitted)."""
        return self.node.inputs[i] if i < len(self.node.inputs) else None

    def y(self, i: int = 0) -> ir.Value | None:
        """Forward output ``i`` (None when absent or omitted)."""
        out = self.node.outputs[i] if i < len(self.node.outputs) else None
        return out if out is not None and out.name != "" else None

    def needs(self, i: int) -> bool:
        """Whether the loss gradient must flow into input ``i``."""
        return i < len(self._needs) and self._needs[i]

    def attr(self, name: str, default: Any = None) -> Any:
        """The attribute's Python value (int, float, str, list, tensor), or ``default``."""
        a = self.node.attributes.get(name)
        if a is None:
            return default
        value = a.value
        if isinstance(value, bytes):
            value = value.decode()
        if isinstance(value, Sequence) and not isinstance(value, str):
            value = list(value)
        return value

    def const_input(self, i: int) -> np.ndarray | None:
        """The value of input ``i`` when it is known at build time (initializer or Constant)."""
        v = self.x(i)
        if v is None:
            return None
        if v.const_value is not None:
            return v.const_value.numpy()
        prod = v.producer()
        if prod is not None and prod.op_type == "Constant" and prod.domain in ("", "ai.onnx"):
            a = prod.attributes.get("value")
            if a is not None:
                return a.value.numpy()
        return None

    def ints_input_or_attr(self, i: int, attr: str) -> list[int] | None:
        """Integers given as attribute ``attr`` (older opsets) or as constant input ``i``.

        Returns None when neither is present; raises :class:`Unsupported` when the input is
        present but only known at run time.
        """
        if attr in self.node.attributes:
            return [int(a) for a in self.attr(attr)]
        if self.x(i) is None:
            return None
        value = self.const_input(i)
        if value is None:
            raise Unsupported(f"input {i} ({attr}) is computed at run time; it must be a constant")
        return [int(a) for a in np.atleast_1d(value)]

    # -- facts about tensors -----------------------------------------------------------------
    def dims(self, v: ir.Value) -> list[Dim] | None:
        """Static dims of ``v`` as shape inference knew them (int, symbol or None), or None."""
        if v.shape is None:
            return None
        out: list[Dim] = []
        for d in v.shape.dims:
            if isinstance(d, int):
                out.append(d)
            else:
                out.append(getattr(d, "value", None))
        return out

    def static_shape(self, v: ir.Value) -> tuple[int, ...] | None:
        """``v``'s shape when every dim is a known integer, else None."""
        dims = self.dims(v)
        if dims is None or not all(isinstance(d, int) for d in dims):
            return None
        return tuple(dims)  # type: ignore[arg-type]

    def rank(self, v: ir.Value) -> int:
        """``v``'s rank; :class:`Unsupported` when shape inference could not tell it."""
        dims = self.dims(v)
        if dims is None:
            raise Unsupported(f"the rank of tensor {v.name!r} is unknown")
        return len(dims)

    def dtype(self, v: ir.Value) -> ir.DataType:
        if v.dtype is None:
            raise Unsupported(f"the element type of tensor {v.name!r} is unknown")
        return v.dtype

    def np_dtype(self, v: ir.Value) -> np.dtype:
        return self.dtype(v).numpy()

    # -- emission ----------------------------------------------------------------------------
    def op(self, op_type: str, *inputs: ir.Value | None, **attrs: Any) -> ir.Value:
        """Emit one standard op with a single output; returns that output."""
        return self._e.emit(self._prefix, op_type, inputs, attrs, 1)[0]

    def op_multi(
        self, op_type: str, *inputs: ir.Value | None, num_outputs: int, **attrs: Any
    ) -> list[ir.Value]:
        """Emit one standard op with ``num_outputs`` outputs."""
        return self._e.emit(self._prefix, op_type, inputs, attrs, num_outputs)

    def unique_name(self, name: str, *, in_node: bool = False) -> str:
        """``name`` (or ``name_k``), unique in the whole model, for what a rule builds itself
        (loop bodies); ``in_node``: under this node's gradient prefix, as :meth:`op` names."""
        return self._e.unique(f"{self._prefix}/{name}" if in_node else name)

    def const(self, value: Any, dtype: ir.DataType | ir.Value | np.dtype | type) -> ir.Value:
        """A constant (shared initializer) of ``dtype``, or of the element type of a Value."""
        if isinstance(dtype, ir.Value):
            np_dtype = self.np_dtype(dtype)
        elif isinstance(dtype, ir.DataType):
            np_dtype = dtype.numpy()
        else:
            np_dtype = np.dtype(dtype)
        return self._e.const(np.asarray(value, dtype=np_dtype))

    def scalar(self, value: float, like: ir.Value) -> ir.Value:
        """A 0-d constant of ``like``'s element type."""
        return self.const(value, like)

    def i64(self, values: int | Sequence[int]) -> ir.Value:
        """An int64 constant: 0-d for an int, 1-D for a sequence."""
        return self._e.const(np.asarray(values, dtype=np.int64))

    def shape(self, v: ir.Value, start: int | None = None, end: int | None = None) -> ir.Value:
        """``Shape(v)`` (optionally a slice of it), computed at run time; cached per value."""
        return self._e.shape(self._prefix, v, start, end)

    def shape_or_const(self, v: ir.Value) -> ir.Value:
        """``v``'s shape as an int64 tensor: a constant when static, else ``Shape(v)``."""
        static = self.static_shape(v)
        return self.i64(list(static)) if static is not None else self.shape(v)

    def cast_like(self, v: ir.Value, like: ir.Value) -> ir.Value:
        """``v`` cast to ``like``'s element type (no node when they already agree)."""
        if v.dtype is not None and v.dtype == like.dtype:
            return v
        return self.op("Cast", v, to=self.dtype(like))

    def zeros_like(self, v: ir.Value) -> ir.Value:
        """A tensor of zeros with ``v``'s shape and type."""
        return self.op("Expand", self.scalar(0.0, v), self.shape_or_const(v))

    # -- opset-dependent forms ---------------------------------------------------------------
    def reduce(
        self, op_type: str, x: ir.Value, axes: Sequence[int] | None, keepdims: bool = True
    ) -> ir.Value:
        """``op_type`` (ReduceSum, ReduceMean, ReduceMax, ...) over ``axes`` (None: all)."""
        input_form = op_type == "ReduceSum" or self.opset >= 18
        kd = int(bool(keepdims))
        if axes is None:
            return self.op(op_type, x, keepdims=kd)
        axes = [int(a) for a in axes]
        if not axes:
            return x
        if input_form:
            return self.op(op_type, x, self.i64(axes), keepdims=kd)
        return self.op(op_type, x, axes=axes, keepdims=kd)

    def reduce_sum(self, x: ir.Value, axes: Sequence[int] | None, keepdims: bool = True):
        return self.reduce("ReduceSum", x, axes, keepdims)

    def squeeze(self, x: ir.Value, axes: Sequence[int]) -> ir.Value:
        return self.op("Squeeze", x, self.i64(list(axes)))

    def unsqueeze(self, x: ir.Value, axes: Sequence[int]) -> ir.Value:
        return self.op("Unsqueeze", x, self.i64(list(axes)))

    def split(self, x: ir.Value, sizes: Sequence[int] | ir.Value, axis: int, n: int):
        """Split ``x`` along ``axis`` into ``n`` pieces of the given sizes (ints or a tensor)."""
        sizes_v = sizes if isinstance(sizes, ir.Value) else self.i64(list(sizes))
        return self.op_multi("Split", x, sizes_v, num_outputs=n, axis=axis)

    def reshape(self, x: ir.Value, shape: ir.Value | Sequence[int]) -> ir.Value:
        shape_v = shape if isinstance(shape, ir.Value) else self.i64(list(shape))
        return self.op("Reshape", x, shape_v)

    def sum_to(self, g: ir.Value, like: ir.Value, g_like: ir.Value | None = None) -> ir.Value:
        """Undo numpy broadcasting: sum ``g`` (the shape of a broadcast result) to ``like``'s.

        Leading axes that ``like`` lacks are summed away; axes where ``like`` has a static 1 are
        summed with keepdims. A symbolic dim of ``like`` that may be 1 at run time where ``g``'s
        is not (a different symbol, or a static size > 1) is decided at run time: the axes where
        the two shapes differ are summed. ``g_like``: a forward tensor of ``g``'s shape, when
        ``g`` itself carries no shape (default: the node's first output).
        """
        g_dims, x_dims = self.dims(g), self.dims(like)
        if g_dims is None:
            ref = g_like if g_like is not None else self.y(0)
            g_dims = self.dims(ref) if ref is not None else None
        if x_dims is None:
            raise Unsupported(f"the rank of tensor {like.name!r} is unknown")
        if g_dims is None:
            raise Unsupported(f"the rank of the gradient of {like.name!r} is unknown")
        lead = len(g_dims) - len(x_dims)
        if lead < 0:
            raise Unsupported(f"gradient of rank {len(g_dims)} for {like.name!r} of higher rank")
        axes = list(range(lead))
        for k, d in enumerate(x_dims):
            gd = g_dims[lead + k]
            if d == 1:
                if gd != 1:
                    axes.append(lead + k)
            elif not (isinstance(d, int) or gd == 1 or (d is not None and d == gd)):
                # Sum where like's shape (padded with leading 1s) and g's differ at run time.
                x_shape = self.shape(like)
                if lead:
                    x_shape = self.op("Concat", self.i64([1] * lead), x_shape, axis=0)
                differs = self.op("Not", self.op("Equal", x_shape, self.shape(g)))
                run_axes = self.reshape(self.op("NonZero", differs), [-1])
                summed = self.op("ReduceSum", g, run_axes, keepdims=1, noop_with_empty_axes=1)
                return self.reshape(summed, self.shape(like))
        if not axes:
            return g
        summed = self.reduce_sum(g, axes, keepdims=True)
        if lead == 0:
            return summed
        return self.reshape(summed, self.shape_or_const(like))
