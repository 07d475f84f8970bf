"""Passes written on ``onnx.ModelProto``: a pass maps a ModelProto to a new one and says if it
changed it.

Called, a :class:`GraphPass` works on a copy (the input is never mutated); :meth:`call` edits
the model it is given. The build runs such passes as proto steps of its pipeline
(:class:`passes.infra.ProtoStep`, on the pipeline's own copy); passes on ``onnx_ir`` derive
from :class:`passes.infra.BuildPass` instead. Passes never run an inference session.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

__all__ = ["PassResult", "GraphPass"]


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
