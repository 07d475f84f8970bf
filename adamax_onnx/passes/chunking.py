"""Rewrite the elementwise update of large parameters into a ``Scan`` over cache-sized chunks.

A built update is a chain of elementwise nodes per parameter (MindSpore's ApplyAdaMax: 10 nodes,
plus weight decay, loss-scale and ``skip_nonfinite`` stages). On a large tensor each node is a
full pass over memory. :class:`ChunkUpdates` finds, for every parameter ``p``, the region of
elementwise nodes that computes ``p.updated``, ``p.adamax.m.updated`` and ``p.adamax.v.updated``
from tensors of ``p``'s shape and scalars, and replaces it by one ``Scan`` whose body is that
region on one ``[chunk]`` row: the intermediates stay in cache, and only the region's inputs
are read from memory and its outputs written. The same nodes in the same order run on the same
values, so results are bit-identical.

The Scan's outputs are the ``.updated`` graph outputs themselves, declared in chunk layout
``[numel / chunk, chunk]`` (the same bytes as the parameter's shape; reshaping them would cost a
copy). A runtime binds them to parameter-shaped buffers (``TrainingSession`` does) or reshapes
them before feeding them back.

:class:`adamax_onnx.TrainingSession` applies this pass to the model it runs on the CPU provider
(``chunk_size`` argument); the model file keeps the portable, parameter-shaped form.
``build_training_model(chunk_size=N)`` / ``build_optimizer_model(chunk_size=N)`` apply it last
instead, so that the file itself holds the Scans.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, shape_inference

from .base import GraphPass, PassResult
from .builder import GraphBuilder
from .contract import grad_name, m_name, updated, v_name

__all__ = ["ChunkUpdates", "DEFAULT_CHUNK_SIZE", "chunk_length"]

#: Elements per chunk: 512 KiB of float32 per tensor (measured best of 32K-256K, 1 x 16M).
DEFAULT_CHUNK_SIZE = 131072

#: Ops computed element by element (with scalar operands), safe to run row by row.
_ELEMENTWISE = {
    "Abs",
    "Add",
    "Cast",
    "Div",
    "Identity",
    "Max",
    "Min",
    "Mul",
    "Neg",
    "Sqrt",
    "Sub",
    "Where",
}


def chunk_length(numel: int, chunk_size: int) -> int:
    """A divisor of ``numel`` in ``[chunk_size/2, 2*chunk_size]`` leaving >= 8 chunks, or 0.

    Smaller parameters are left whole: their update is largely cache-resident already, and the
    Scan's per-iteration overhead would cost more than it saves (measured: 100 x 160K chunked
    into 8 x 20,480 got slower, 52 -> 74 ms).
    """
    if chunk_size <= 0 or numel < 8 * (chunk_size // 2 or 1):
        return 0
    lo, hi = max(1, chunk_size // 2), min(2 * chunk_size, numel // 8)
    for d in list(range(min(chunk_size, hi), lo - 1, -1)) + list(range(chunk_size + 1, hi + 1)):
        if numel % d == 0:
            return d
    return 0


def _static_shapes(
    model: onnx.ModelProto, known: dict[str, tuple[int, tuple[int, ...]]] | None = None
) -> dict[str, tuple[int, tuple[int, ...] | None]]:
    """name -> (elem type, static dims or None), by ONNX shape inference on a light copy.

    Initializers enter as inputs with their type only, so no tensor data is copied. ``known``
    seeds shapes the graph does not declare (a gradient has its parameter's shape).
    """
    light = onnx.ModelProto()
    light.ir_version = model.ir_version
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    g = light.graph
    g.node.extend(model.graph.node)
    g.input.extend(model.graph.input)
    g.output.extend(model.graph.output)
    g.value_info.extend(model.graph.value_info)
    declared = {vi.name for vi in model.graph.input}
    for init in model.graph.initializer:
        if init.name not in declared:
            g.input.append(helper.make_tensor_value_info(init.name, init.data_type, init.dims))
    try:
        inferred = shape_inference.infer_shapes(light, strict_mode=False).graph
    except Exception:  # noqa: BLE001 - an op onnx cannot infer: fall back to what is declared
        inferred = g
    out: dict[str, tuple[int, tuple[int, ...] | None]] = dict(known or {})
    for vi in list(inferred.input) + list(inferred.value_info) + list(inferred.output):
        tt = vi.type.tensor_type
        if not tt.HasField("shape"):
            out.setdefault(vi.name, (tt.elem_type, None))
            continue
        dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim)
        if out.get(vi.name, (0, None))[1] is None:
            out[vi.name] = (tt.elem_type, None if -1 in dims else dims)
    _propagate(model.graph.node, out)
    return out


#: Comparisons and logic: broadcast shape, bool output.
_BOOL_OUT = {"And", "Equal", "Greater", "IsInf", "IsNaN", "Less", "Not", "Or"}
#: Ops whose output has the broadcast shape of their inputs.
_BROADCASTING = _ELEMENTWISE | _BOOL_OUT


def _propagate(nodes, shapes: dict) -> None:
    """Fill in static shapes ONNX inference left unknown, where a batch dimension is dynamic
    upstream: elementwise ops of known-shape inputs, and full reductions to a scalar."""
    for node in nodes:
        if node.domain not in ("", "ai.onnx") or len(node.output) != 1:
            continue
        out = node.output[0]
        if shapes.get(out, (0, None))[1] is not None:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        ins = [shapes.get(i, (0, None)) for i in node.input if i]
        elem = shapes.get(out, (0, None))[0]
        if node.op_type in _BROADCASTING and ins and all(d is not None for _, d in ins):
            dims = tuple(np.broadcast_shapes(*(d for _, d in ins)))
            if not elem:
                elem = TensorProto.BOOL if node.op_type in _BOOL_OUT else ins[-1][0]
                elem = attrs.get("to", elem)
            shapes[out] = (elem, dims)
        elif (
            node.op_type.startswith("Reduce")
            and attrs.get("keepdims", 1) == 0
            and "axes" not in attrs
            and not attrs.get("noop_with_empty_axes", 0)
            and len([i for i in node.input if i]) == 1
        ):
            shapes[out] = (elem or ins[0][0], ())


class ChunkUpdates(GraphPass):
    """Update each large parameter of ``params`` by a Scan over chunks of its elementwise region.

    Args:
        params: parameter names (graph inputs with ``.updated`` outputs).
        chunk_size: about this many elements per chunk: a divisor of the parameter's element
            count between half and twice it, leaving at least 8 chunks; a parameter without
            one, whose shape is not static, or whose update is not a closed elementwise region
            (e.g. already bucketed or chunked) is left as it is.
    """

    def __init__(self, params: Sequence[str], chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 0:
            raise ValueError(f"ChunkUpdates: chunk_size must be an int >= 0, got {chunk_size!r}")
        self.params = list(params)
        self.chunk_size = chunk_size

    def call(self, model: onnx.ModelProto) -> PassResult:
        graph = model.graph
        inputs = {vi.name: vi for vi in graph.input}
        candidates = []
        for p in self.params:
            dims = inputs[p].type.tensor_type.shape.dim if p in inputs else []
            if not dims or not all(d.HasField("dim_value") for d in dims):
                continue
            numel = int(np.prod([d.dim_value for d in dims]))
            chunk = chunk_length(numel, self.chunk_size)
            if chunk:
                candidates.append((p, tuple(d.dim_value for d in dims), chunk))
        if not candidates:
            return PassResult(model, False)

        # A gradient has its parameter's shape (the gradient builder's contract); ONNX shape
        # inference often cannot tell, because the batch dimension is dynamic upstream.
        # Every gradient is seeded, not only the candidates': the overflow guard reduces all of
        # them into the one flag whose shape the chunked regions need.
        known = {}
        for p in self.params:
            dims = inputs[p].type.tensor_type.shape.dim if p in inputs else []
            if dims and all(d.HasField("dim_value") for d in dims):
                elem = inputs[p].type.tensor_type.elem_type
                known[grad_name(p)] = (elem, tuple(d.dim_value for d in dims))
        shapes = _static_shapes(model, known)
        taken = {n for node in graph.node for n in list(node.input) + list(node.output)}
        taken |= {vi.name for vi in list(graph.input) + list(graph.output)}
        taken |= {i.name for i in graph.initializer} | {n.name for n in graph.node}
        builder = GraphBuilder(taken)
        outputs = {o.name: o for o in graph.output}
        modified = False
        for p, full, chunk in candidates:
            nodes = list(graph.node)
            found = _region(nodes, outputs, shapes, p, full)
            if found is None:
                continue
            region, rows = found
            start = len(builder.nodes)
            _scan(builder, region, rows, p, full, chunk, shapes)
            scan_nodes = builder.nodes[start:]
            keep = [n for n in nodes if not any(n is r for r in region)]
            last = max(i for i, n in enumerate(nodes) if any(n is r for r in region))
            at = last - len(region) + 1  # position of the last region node among the kept
            del graph.node[:]
            graph.node.extend(keep[:at] + scan_nodes + keep[at:])
            internal = {o for n in region for o in n.output}
            kept_vi = [vi for vi in graph.value_info if vi.name not in internal]
            del graph.value_info[:]
            graph.value_info.extend(kept_vi)
            for name in _targets(p, outputs):
                vi = outputs[name]
                vi.CopyFrom(
                    helper.make_tensor_value_info(
                        name, vi.type.tensor_type.elem_type, [int(np.prod(full)) // chunk, chunk]
                    )
                )
            modified = True
        graph.initializer.extend(builder.initializers)
        return PassResult(model, modified)


def _targets(p: str, outputs: dict) -> list[str]:
    return [updated(n) for n in (p, m_name(p), v_name(p)) if updated(n) in outputs]


def _region(
    nodes: list[onnx.NodeProto],
    outputs: dict,
    shapes: dict,
    p: str,
    full: tuple[int, ...],
) -> tuple[list[onnx.NodeProto], list[str]] | None:
    """The elementwise nodes computing ``p``'s updated tensors, and the full-shape tensors they
    read from outside (the row inputs); None if there is no closed region."""
    producer = {o: n for n in nodes for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in nodes:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def dims(name: str) -> tuple[int, ...] | None:
        return shapes.get(name, (0, None))[1]

    def eligible(node: onnx.NodeProto | None) -> bool:
        return (
            node is not None
            and node.domain in ("", "ai.onnx")
            and node.op_type in _ELEMENTWISE
            and len(node.output) == 1
            and dims(node.output[0]) == full
            and all(i and dims(i) in ((), full) for i in node.input)
        )

    targets = _targets(p, outputs)
    if not targets:
        return None
    region: list[onnx.NodeProto] = []
    rows: list[str] = []
    seen: set[str] = set()
    stack = list(targets)
    while stack:
        t = stack.pop()
        if t in seen:
            continue
        seen.add(t)
        node = producer.get(t)
        if eligible(node):
            region.append(node)
            stack.extend(i for i in node.input if dims(i) == full)
        elif t in targets or dims(t) != full:
            return None  # a target not computed elementwise (bucketed, chunked, ...)
        else:
            rows.append(t)
    members = {id(n) for n in region}
    for n in region:
        o = n.output[0]
        if o in outputs and o not in targets:
            return None
        if any(id(c) not in members for c in consumers.get(o, [])):
            return None  # an intermediate is also read outside the region
    order = {id(n): i for i, n in enumerate(nodes)}
    region.sort(key=lambda n: order[id(n)])
    return region, sorted(rows)


def _scan(
    builder: GraphBuilder,
    region: list[onnx.NodeProto],
    rows: list[str],
    p: str,
    full: tuple[int, ...],
    chunk: int,
    shapes: dict,
) -> None:
    """Append to ``builder`` Reshapes of the row inputs and the Scan that replaces ``region``."""
    outputs = [n.output[0] for n in region]
    targets = [t for t in (updated(p), updated(m_name(p)), updated(v_name(p))) if t in outputs]
    prefix = f"{p}.adamax.chunks"
    numel = int(np.prod(full))
    rows_shape = builder.const(np.array([numel // chunk, chunk], np.int64), np.int64, prefix)
    renamed = {r: builder.unique(f"{r}.row") for r in rows}
    renamed.update({t: builder.unique(f"{t}.row") for t in targets})
    body_nodes = []
    for n in region:
        copy = onnx.NodeProto()
        copy.CopyFrom(n)
        copy.input[:] = [renamed.get(i, i) for i in n.input]
        copy.output[:] = [renamed.get(o, o) for o in n.output]
        body_nodes.append(copy)
    body = helper.make_graph(
        body_nodes,
        f"{prefix}.body",
        [helper.make_tensor_value_info(renamed[r], shapes[r][0], [chunk]) for r in rows],
        [helper.make_tensor_value_info(renamed[t], shapes[t][0], [chunk]) for t in targets],
    )
    reshaped = [builder.op("Reshape", [r, rows_shape], f"{r}.chunked") for r in rows]
    builder.nodes.append(
        helper.make_node(
            "Scan",
            reshaped,
            targets,
            name=builder.unique(f"{prefix}/Scan"),
            body=body,
            num_scan_inputs=len(reshaped),
        )
    )
