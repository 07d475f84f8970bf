"""Sequence pass: ``SplitToSequence`` read by ``SequenceAt`` at constant positions -> ``Slice``.

torch's dynamo exporter writes ``x.split(n, dim)`` followed by indexing (GPT-2's
``q, k, v = qkv.split(n_embd, dim=2)``) as ``SplitToSequence(x, split)`` + ``SequenceAt(seq,
i)``. Sequence values are not tensors, so no gradient rule can see through them; each
``SequenceAt`` is the slice ``x[..., start:end, ...]`` along the split axis, which can.

Guarantees afterwards: every rewritten ``SequenceAt`` output is produced by a ``Slice`` (and a
``Squeeze`` where ``keepdims=0`` applies) with the same name and the same value; a
``SplitToSequence`` none of whose readers is left is removed. Sequences read any other way
(a run-time position, ``SequenceLength``, a loop) are left alone.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx_ir.passes import PassResult

from .infra import BuildPass
from .irbuild import IRBuilder, constant, replace_node

__all__ = ["SplitSequencesToSlices"]


def _bounds(split: np.ndarray | None, positions: list[np.ndarray | None]) -> list | None:
    """(start, end) along the split axis of each read chunk; None if one is run-time."""
    bounds = []
    for pos in positions:
        if pos is None or pos.size != 1:
            return None
        i = int(pos.reshape(-1)[0])
        if split is None or split.ndim == 0:
            size = 1 if split is None else int(split)
            if i < 0:
                return None  # needs the number of chunks, known only at run time
            bounds.append((i * size, (i + 1) * size))
        else:
            sizes = [int(s) for s in split.reshape(-1)]
            if not -len(sizes) <= i < len(sizes):
                return None
            i %= len(sizes)
            start = sum(sizes[:i])
            bounds.append((start, start + sizes[i]))
    return bounds


class SplitSequencesToSlices(BuildPass):
    """Rewrite ``SequenceAt(SplitToSequence(x, split), i)`` with constant ``split``/``i``."""

    def call(self, model: ir.Model) -> PassResult:
        graph = model.graph
        g = None
        modified = False
        for node in list(graph):
            if node.op_type != "SplitToSequence" or node.domain not in ("", "ai.onnx"):
                continue
            seq = node.outputs[0]
            uses = [use.node for use in seq.uses()]
            if seq.is_graph_output() or not uses or any(u.op_type != "SequenceAt" for u in uses):
                continue
            axis = node.attributes.get_int("axis", 0)
            keepdims = node.attributes.get_int("keepdims", 1)
            split_in = node.inputs[1] if len(node.inputs) > 1 else None
            split = constant(split_in)
            if split_in is not None and split is None:
                continue  # split sizes computed at run time
            bounds = _bounds(split, [constant(u.inputs[1]) for u in uses])
            if bounds is None:
                continue
            g = g or IRBuilder(graph)
            for use, (start, end) in zip(uses, bounds, strict=True):
                base = use.name or use.outputs[0].name
                before = len(g.nodes)
                ins = [
                    node.inputs[0],
                    g.const([start], np.int64, f"{base}.start"),
                    g.const([end], np.int64, f"{base}.end"),
                    g.const([axis], np.int64, f"{base}.axis"),
                ]
                out = g.op("Slice", ins, f"{base}/slice")
                if split is None and keepdims == 0:
                    out = g.op("Squeeze", [out, ins[3]], f"{base}/squeeze")
                replace_node(graph, use, g.nodes[before:], [out])
            graph.remove(node, safe=True)
            modified = True
        return PassResult(model, modified)
