"""Pass infrastructure: a pass maps a ModelProto to a new ModelProto and says if it changed it.

In the spirit of ``onnx_ir.passes``: one concern per pass, ``modified`` reported truthfully,
passes composed by :class:`Sequential` rather than by hand-written glue. Passes never mutate
their input model and never run an inference session.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

__all__ = ["PassResult", "GraphPass", "Sequential"]


@dataclass(frozen=True)
class PassResult:
    model: onnx.ModelProto
    modified: bool


class GraphPass:
    """Base class: subclasses implement :meth:`call` on a private copy of the model."""

    def call(self, model: onnx.ModelProto) -> PassResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, model: onnx.ModelProto) -> PassResult:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        return self.call(copy)


class Sequential(GraphPass):
    """Run passes in order; modified if any of them modified the model."""

    def __init__(self, *passes: GraphPass) -> None:
        self.passes = passes

    def call(self, model: onnx.ModelProto) -> PassResult:
        modified = False
        for p in self.passes:
            result = p.call(model)
            model, modified = result.model, modified or result.modified
        return PassResult(model, modified)
