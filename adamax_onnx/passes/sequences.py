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
import onnx
from onnx import helper, numpy_helper

from .base import GraphPass, PassResult
from .builder import GraphBuilder

__all__ = ["SplitSequencesToSlices"]


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    out = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            for a in node.attribute:
                if a.name == "value":
                    out[node.output[0]] = numpy_helper.to_array(a.t)
    return out


class SplitSequencesToSlices(GraphPass):
    """Rewrite ``SequenceAt(SplitToSequence(x, split), i)`` with constant ``split``/``i``."""

    def call(self, model: onnx.ModelProto) -> PassResult:
        graph = model.graph
        consts = _constants(graph)
        readers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for name in node.input:
                readers.setdefault(name, []).append(node)
        outputs = {o.name for o in graph.output}
        taken = {n for node in graph.node for n in [*node.input, *node.output, node.name]}
        taken |= {i.name for i in graph.input} | {i.name for i in graph.initializer}
        g = GraphBuilder(taken)
        replace: dict[int, list[onnx.NodeProto]] = {}  # id(SequenceAt node) -> new nodes
        drop: set[int] = set()
        for node in graph.node:
            if node.op_type != "SplitToSequence" or node.domain not in ("", "ai.onnx"):
                continue
            seq = node.output[0]
            uses = readers.get(seq, [])
            if seq in outputs or not uses or any(u.op_type != "SequenceAt" for u in uses):
                continue
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            axis, keepdims = int(attrs.get("axis", 0)), int(attrs.get("keepdims", 1))
            split = consts.get(node.input[1]) if len(node.input) > 1 and node.input[1] else None
            if len(node.input) > 1 and node.input[1] and split is None:
                continue  # split sizes computed at run time
            bounds = {}
            for use in uses:
                pos = consts.get(use.input[1])
                if pos is None or pos.size != 1:
                    break
                i = int(pos.reshape(-1)[0])
                if split is None or split.ndim == 0:
                    size = 1 if split is None else int(split)
                    if i < 0:
                        break  # needs the number of chunks, known only at run time
                    bounds[id(use)] = (i * size, (i + 1) * size)
                else:
                    sizes = [int(s) for s in split.reshape(-1)]
                    if not -len(sizes) <= i < len(sizes):
                        break
                    i %= len(sizes)
                    start = sum(sizes[:i])
                    bounds[id(use)] = (start, start + sizes[i])
            else:
                squeeze = split is None and keepdims == 0
                for use in uses:
                    start, end = bounds[id(use)]
                    base = use.name or use.output[0]
                    before = len(g.nodes)
                    ins = [
                        node.input[0],
                        g.const([start], np.int64, f"{base}.start"),
                        g.const([end], np.int64, f"{base}.end"),
                        g.const([axis], np.int64, f"{base}.axis"),
                    ]
                    if squeeze:
                        sliced = g.op("Slice", ins, f"{base}/slice")
                        g.op("Squeeze", [sliced, ins[3]], f"{base}/squeeze", output=use.output[0])
                    else:
                        g.op("Slice", ins, f"{base}/slice", output=use.output[0])
                    replace[id(use)] = g.nodes[before:]
                drop.add(id(node))
        if not replace:
            return PassResult(model, False)
        new_nodes = []
        for node in graph.node:
            if id(node) in drop:
                continue
            new_nodes.extend(replace.get(id(node), [node]))
        del graph.node[:]
        graph.node.extend(new_nodes)
        graph.initializer.extend(g.initializers)
        return PassResult(model, True)
