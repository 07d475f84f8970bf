"""Where one parameter's AdaMax update computes, and where it rounds, by parameter dtype.

MindSpore 2.10 (CPU) runs the gradient stages of ``nn.AdaMax`` (weight decay, gradient
centralization, unscaling) in the parameter's dtype, one rounding per op, and its
``ApplyAdaMax`` kernel in float32 whatever the parameter dtype: a float16, bfloat16 or float64
parameter's var, m, v and gradient are cast to float32 and the three results cast back
(bit-for-bit checked against MindSpore 2.10).

The graph reproduces that as follows:

* float32: stages and kernel in float32;
* float64: stages in float64, kernel in float32 (cast in, cast back);
* float16, bfloat16: stages in float32, each op's result rounded to the parameter dtype by a
  Cast pair; kernel in float32 (cast in, cast back).

Low precision stages are not left in float16: onnxruntime's CPU provider runs float16
``Mul``/``Add`` in float32 and drops the intermediate roundings, so results would depend on the
execution provider. :class:`Precision` is the one place that knows this; the stages in
:mod:`.adamax_stages` only call it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
from onnx import TensorProto, helper

from .irbuild import IRBuilder

__all__ = ["Precision", "FLOAT_TYPES"]

#: Parameter dtypes the update supports.
FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16)

_LOW = (TensorProto.FLOAT16, TensorProto.BFLOAT16)
_F32 = TensorProto.FLOAT


@dataclass(frozen=True)
class Precision:
    """The precision plan of one parameter's update.

    Args:
        elem: the parameter's ONNX element type (one of :data:`FLOAT_TYPES`).
        prefix: the readable prefix of the nodes it adds (``"fc1.weight.adamax"``).
    """

    elem: int
    prefix: str

    @property
    def low(self) -> bool:
        """float16/bfloat16: stages in float32 with explicit rounding to the parameter dtype."""
        return self.elem in _LOW

    @property
    def np_dtype(self) -> np.dtype:
        """The parameter's numpy dtype (the dtype of its m and v)."""
        return helper.tensor_dtype_to_np_dtype(self.elem)

    @property
    def stage_dtype(self) -> np.dtype:
        """The numpy dtype the gradient stages compute in."""
        return np.dtype(np.float32) if self.low else self.np_dtype

    @property
    def casts_kernel(self) -> bool:
        """Whether ApplyAdaMax runs on float32 copies (every dtype but float32)."""
        return self.elem != _F32

    # -- gradient stages -----------------------------------------------------------------------
    def enter_stages(self, g: IRBuilder, w: ir.Value, grad: ir.Value) -> tuple[ir.Value, ir.Value]:
        """The parameter and its gradient in the stage dtype (float32 copies if low)."""
        if not self.low:
            return w, grad
        return self._cast(g, w, "w_f32", _F32), self._cast(g, grad, "grad_f32", _F32)

    def const(self, g: IRBuilder, value: float, label: str) -> ir.Value:
        """A float32 hyperparameter as MindSpore casts it to the parameter dtype, in the stage
        dtype (``adamax.<label>``, shared between parameters of one dtype)."""
        arr = np.asarray(value, np.float32)
        if self.low:
            arr = arr.astype(self.np_dtype).astype(np.float32)
        dt = self.stage_dtype
        return g.const(arr.astype(dt), dt, f"adamax.{label}")

    def scalar(self, g: IRBuilder, value: ir.Value, label: str) -> ir.Value:
        """A float32 graph scalar cast to the parameter dtype, in the stage dtype."""
        if self.elem == _F32:
            return value
        cast = self._cast(g, value, label, self.elem)
        return self._cast(g, cast, f"{label}_f32", _F32) if self.low else cast

    def round(self, g: IRBuilder, value: ir.Value, label: str) -> ir.Value:
        """Round a stage result to the parameter dtype (low precision only: a Cast pair)."""
        if not self.low:
            return value
        rounded = self._cast(g, value, f"{label}_rounded", self.elem)
        return self._cast(g, rounded, f"{label}_rounded_f32", _F32)

    # -- ApplyAdaMax ---------------------------------------------------------------------------
    def enter_kernel(
        self, g: IRBuilder, w: ir.Value, grad: ir.Value, m: ir.Value, v: ir.Value
    ) -> tuple[ir.Value, ir.Value, ir.Value, ir.Value]:
        """w, grad, m, v as the float32 kernel reads them (w and grad are float32 already when
        low: :meth:`enter_stages` cast them)."""
        if not self.casts_kernel:
            return w, grad, m, v
        if not self.low:
            w, grad = self._cast(g, w, "w_f32", _F32), self._cast(g, grad, "grad_f32", _F32)
        return w, grad, self._cast(g, m, "m_f32", _F32), self._cast(g, v, "v_f32", _F32)

    def leave_kernel(self, g: IRBuilder, result: ir.Value, label: str, output: str) -> ir.Value:
        """Cast a float32 kernel result back to the parameter dtype, as graph output ``output``."""
        return g.op("Cast", [result], f"{self.prefix}.{label}_cast", to=self.elem, output=output)

    def _cast(self, g: IRBuilder, value: ir.Value, label: str, to: int) -> ir.Value:
        return g.op("Cast", [value], f"{self.prefix}.{label}", to=to)
