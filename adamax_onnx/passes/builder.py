"""A small, name-aware helper for appending nodes and constants to an ONNX graph.

Every tensor and node it creates gets a readable, unique name under a prefix
(``fc1.weight.adamax.m_next``, not ``tmp_17``) so that built graphs read well in Netron.
It never runs anything: it only collects ``NodeProto``/``TensorProto`` objects that a pass
then adds to its graph.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .names import UniqueNames

__all__ = ["GraphBuilder", "OPSET", "IR_VERSION"]

#: Default ONNX opset of the graphs this project builds (LayerNormalization needs 17).
OPSET = 17
#: IR version written into built models: onnxruntime 1.19 (the training build) reads up to 10.
IR_VERSION = 8


class GraphBuilder(UniqueNames):
    """Collects nodes and constant initializers with unique readable names.

    Args:
        taken: names already used in the target graph; new names never collide with them.
    """

    def __init__(self, taken: Iterable[str] = ()) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        super().__init__(taken)
        self._consts: dict[tuple, str] = {}

    # -- names -------------------------------------------------------------------------------
    # -- constants ---------------------------------------------------------------------------
    def const(self, value, dtype=np.float32, name: str = "const") -> str:
        """A constant initializer; identical constants (same value, dtype, shape) are shared."""
        arr = np.asarray(value, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key in self._consts:
            return self._consts[key]
        out = self.unique(name)
        self.initializers.append(numpy_helper.from_array(arr, out))
        self._consts[key] = out
        return out

    def tensor(self, value: np.ndarray, name: str) -> str:
        """A named (unshared) initializer, e.g. a learning-rate table."""
        out = self.unique(name)
        self.initializers.append(numpy_helper.from_array(np.asarray(value), out))
        return out

    # -- nodes -------------------------------------------------------------------------------
    def op(
        self,
        op_type: str,
        inputs: Sequence[str],
        name: str,
        *,
        output: str | None = None,
        domain: str = "",
        **attrs,
    ) -> str:
        """Append one single-output node; returns its output name.

        ``name`` is the readable base for both node and output; ``output`` forces an exact
        output name (a graph output that was reserved beforehand).
        """
        out = output if output is not None else self.unique(name)
        node_name = self.unique(f"{name}/{op_type}")
        self.nodes.append(
            helper.make_node(op_type, list(inputs), [out], name=node_name, domain=domain, **attrs)
        )
        return out

    def op_multi(
        self,
        op_type: str,
        inputs: Sequence[str],
        outputs: Sequence[str],
        name: str,
        *,
        domain: str = "",
        **attrs,
    ) -> list[str]:
        """Append one node with several outputs (``""`` for an omitted optional output)."""
        outs = [self.unique(o) if o else "" for o in outputs]
        node_name = self.unique(f"{name}/{op_type}")
        self.nodes.append(
            helper.make_node(op_type, list(inputs), outs, name=node_name, domain=domain, **attrs)
        )
        return outs
