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

The pass edits an ``onnx_ir.Model`` in place (the region's nodes move into the Scan's body);
called with an ``onnx.ModelProto`` it returns a new one.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import onnx_ir as ir
from onnx_ir.passes import PassResult

from .contract import grad_name, m_name, updated, v_name
from .infra import BuildPass
from .irbuild import IRBuilder, inferred
from .names import DEFAULT_CHUNK_SIZE

__all__ = ["ChunkUpdates", "DEFAULT_CHUNK_SIZE", "chunk_length"]


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
#: Comparisons and logic: broadcast shape, bool output.
_BOOL_OUT = {"And", "Equal", "Greater", "IsInf", "IsNaN", "Less", "Not", "Or"}
#: Ops whose output has the broadcast shape of their inputs.
_BROADCASTING = _ELEMENTWISE | _BOOL_OUT

#: name -> (element type or 0, static dims or None)
_Shapes = dict[str, tuple[int, tuple[int, ...] | None]]


def chunk_length(numel: int, chunk_size: int) -> int:
    """A divisor of ``numel`` in ``[chunk_size/2, 2*chunk_size]`` leaving >= 8 chunks, or 0.

    Smaller parameters are left whole: their update is largely cache-resident already, and the
    Scan's per-iteration overhead would cost more than it saves (measured: 100 x 160K chunked
    into 8 x 20,480 got slower, 52 -> 74 ms).
    """
    if chunk_size <= 0 or numel < 8 * (chunk_size // 2 or 1):
        return 0
    lo, hi = max(1, chunk_size // 2), min(2 * chunk_size, numel // 8)
    down, up = range(min(chunk_size, hi), lo - 1, -1), range(chunk_size + 1, hi + 1)
    return next((d for d in itertools.chain(down, up) if numel % d == 0), 0)


def _static(value: ir.Value | None) -> tuple[int, ...] | None:
    """The value's dims when every one is known, else None."""
    if value is None or value.shape is None or not value.shape.is_static():
        return None
    return tuple(int(d) for d in value.shape)


def _static_shapes(model: ir.Model, known: _Shapes) -> _Shapes:
    """Element type and static dims of every value, by ONNX shape inference (on a copy that
    shares the tensors). ``known`` seeds shapes the graph does not declare (a gradient has its
    parameter's shape) and takes precedence."""
    out: _Shapes = dict(known)
    for name, value in inferred(model).items():
        elem = int(value.dtype) if value.dtype is not None else 0
        if value.shape is None:
            out.setdefault(name, (elem, None))
        elif out.get(name, (0, None))[1] is None:
            out[name] = (elem, _static(value))
    _propagate(model.graph, out)
    return out


def _propagate(graph: ir.Graph, shapes: _Shapes) -> None:
    """Fill in static shapes ONNX inference left unknown, where a batch dimension is dynamic
    upstream: elementwise ops of known-shape inputs, and full reductions to a scalar."""
    for node in graph:
        if node.domain not in ("", "ai.onnx") or len(node.outputs) != 1:
            continue
        out = node.outputs[0].name
        if shapes.get(out, (0, None))[1] is not None:
            continue
        attrs = {name: attr.value for name, attr in node.attributes.items()}
        ins = [shapes.get(i.name, (0, None)) for i in node.inputs if i is not None]
        elem = shapes.get(out, (0, None))[0]
        if node.op_type in _BROADCASTING and ins and all(d is not None for _, d in ins):
            dims = tuple(np.broadcast_shapes(*(d for _, d in ins)))
            if not elem:
                elem = ir.DataType.BOOL if node.op_type in _BOOL_OUT else ins[-1][0]
                elem = int(attrs.get("to", elem))
            shapes[out] = (elem, dims)
        elif (
            node.op_type.startswith("Reduce")
            and attrs.get("keepdims", 1) == 0
            and "axes" not in attrs
            and not attrs.get("noop_with_empty_axes", 0)
            and len([i for i in node.inputs if i is not None]) == 1
        ):
            shapes[out] = (elem or ins[0][0], ())


class ChunkUpdates(BuildPass):
    """Update each large parameter of ``params`` by a Scan over chunks of its elementwise region.

    An in-place pass on an ``onnx_ir.Model``: a pipeline runs it as an ir step, the last one
    that edits the update (after the AdaMax update, the non-finite guard and the lowering: the
    chunked regions include the guard's ``Where`` nodes). Called with an ``onnx.ModelProto``
    (the runtime, :func:`passes.session.session_models`, tests) it returns a new one and
    leaves the input as it was.

    Args:
        params: parameter names (graph inputs with ``.updated`` outputs).
        chunk_size: about this many elements per chunk: a divisor of the parameter's element
            count between half and twice it, leaving at least 8 chunks; a parameter without
            one, whose shape is not static, or whose update is not a closed elementwise region
            (e.g. already bucketed or chunked) is left as it is.

    Guarantees afterwards: the ``.updated`` outputs of every chunked parameter (parameter,
    ``m``, ``v``) are the outputs of one ``Scan``, declared ``[numel / chunk, chunk]``; the same
    nodes run on the same values in the same order, so every output is bit-identical.
    """

    def __init__(self, params: Sequence[str], chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 0:
            raise ValueError(f"ChunkUpdates: chunk_size must be an int >= 0, got {chunk_size!r}")
        self.params = list(params)
        self.chunk_size = chunk_size

    def call(self, model: ir.Model) -> PassResult:
        graph = model.graph
        inputs = {v.name: v for v in graph.inputs}
        static = {p: _static(inputs.get(p)) for p in self.params}
        candidates = []
        for p, full in static.items():
            chunk = chunk_length(int(np.prod(full)), self.chunk_size) if full else 0
            if chunk:
                candidates.append((p, full, chunk))
        if not candidates:
            return PassResult(model, False)

        # A gradient has its parameter's shape (the gradient builder's contract); ONNX shape
        # inference often cannot tell, because the batch dimension is dynamic upstream.
        # Every gradient is seeded, not only the candidates': the overflow guard reduces all of
        # them into the one flag whose shape the chunked regions need.
        known = {
            grad_name(p): (int(inputs[p].dtype or 0), full) for p, full in static.items() if full
        }
        shapes = _static_shapes(model, known)
        builder = IRBuilder(graph)
        modified = False
        for p, full, chunk in candidates:
            region = _region(graph, shapes, p, full)
            if region is not None:
                _scan(graph, builder, *region, p, full, chunk, shapes)
                modified = True
        return PassResult(model, modified)


def _targets(p: str, outputs: dict[str, ir.Value]) -> list[str]:
    return [updated(n) for n in (p, m_name(p), v_name(p)) if updated(n) in outputs]


def _region(
    graph: ir.Graph, shapes: _Shapes, p: str, full: tuple[int, ...]
) -> tuple[list[ir.Node], list[ir.Value]] | None:
    """The elementwise nodes computing ``p``'s updated tensors, in graph order, and the
    full-shape values they read from outside (the row inputs, sorted by name); None if there is no
    closed region."""
    outputs = {v.name: v for v in graph.outputs}

    def dims(value: ir.Value | None) -> tuple[int, ...] | None:
        return None if value is None else shapes.get(value.name, (0, None))[1]

    def eligible(node: ir.Node | None) -> bool:
        return (
            node is not None
            and node.graph is graph
            and node.domain in ("", "ai.onnx")
            and node.op_type in _ELEMENTWISE
            and len(node.outputs) == 1
            and dims(node.outputs[0]) == full
            and all(dims(i) in ((), full) for i in node.inputs)
        )

    targets = _targets(p, outputs)
    if not targets:
        return None
    region: set[ir.Node] = set()
    rows: list[ir.Value] = []
    seen: set[ir.Value] = set()
    stack = [outputs[t] for t in targets]
    while stack:
        value = stack.pop()
        if value in seen:
            continue
        seen.add(value)
        node = value.producer()
        if eligible(node):
            region.add(node)
            stack.extend(i for i in node.inputs if dims(i) == full)
        elif value.name in targets or dims(value) != full:
            return None  # a target not computed elementwise (bucketed, chunked, ...)
        else:
            rows.append(value)
    for n in region:
        o = n.outputs[0]
        if o.is_graph_output() and o.name not in targets:
            return None
        if any(use.node not in region for use in o.uses()):
            return None  # an intermediate is also read outside the region
    return [n for n in graph if n in region], sorted(rows, key=lambda v: v.name)


def _scan(
    graph: ir.Graph,
    builder: IRBuilder,
    region: list[ir.Node],
    rows: list[ir.Value],
    p: str,
    full: tuple[int, ...],
    chunk: int,
    shapes: _Shapes,
) -> None:
    """Move ``region`` into the body of a Scan over rows of ``chunk`` elements, put with the
    Reshapes of its row inputs where its last node was; the Scan's outputs take the place of
    the region's graph outputs (same names), declared in chunk layout."""
    produced = {n.outputs[0].name: n.outputs[0] for n in region}
    names = (updated(p), updated(m_name(p)), updated(v_name(p)))
    targets = [produced[t] for t in names if t in produced]
    prefix = f"{p}.adamax.chunks"
    numel = int(np.prod(full))
    rows_shape = builder.const(np.array([numel // chunk, chunk], np.int64), np.int64, prefix)
    row_names = [builder.unique(f"{r.name}.row") for r in rows]
    target_names = [builder.unique(f"{t.name}.row") for t in targets]
    builder.nodes = []
    reshaped = [builder.op("Reshape", [r, rows_shape], f"{r.name}.chunked") for r in rows]

    def row_type(name: str) -> ir.TensorType:
        return ir.TensorType(ir.DataType(shapes[name][0]))

    members = set(region)
    body_inputs = []
    for r, name in zip(rows, row_names, strict=True):
        inner = ir.Value(name=name, type=row_type(r.name), shape=ir.Shape([chunk]))
        for use in list(r.uses()):
            if use.node in members:
                use.node.replace_input_with(use.idx, inner)
        body_inputs.append(inner)
    results = [
        ir.Value(name=t.name, type=t.type, shape=ir.Shape([numel // chunk, chunk])) for t in targets
    ]
    for n in region:  # the body declares its rows only
        n.outputs[0].type = n.outputs[0].shape = None
    for t, name, result in zip(targets, target_names, results, strict=True):
        graph.outputs[graph.outputs.index(t)] = result
        t.name, t.type, t.shape = name, row_type(result.name), ir.Shape([chunk])
    graph.insert_after(region[-1], builder.nodes)
    graph.remove(region)
    body = ir.Graph(body_inputs, targets, nodes=region, name=f"{prefix}.body")
    scan = ir.Node(
        "",
        "Scan",
        reshaped,
        attributes=[ir.AttrGraph("body", body), ir.AttrInt64("num_scan_inputs", len(rows))],
        outputs=results,
        name=builder.unique(f"{prefix}/Scan"),
    )
    graph.insert_after(builder.nodes[-1], scan)
