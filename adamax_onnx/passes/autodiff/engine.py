"""Reverse-mode automatic differentiation over standard ONNX, on ``onnx_ir``.

:func:`differentiate` adds to a model the gradient of a scalar loss with respect to chosen
tensors (the trained parameters): for each parameter ``p`` an output ``p_grad``, computed by
standard ONNX ops only, seeded by an initializer ``<loss>_grad`` (1 by default; the caller may
change its value, e.g. to a loss scale).

How: a forward sweep marks the float tensors that depend on a parameter through
differentiable slots; a backward sweep keeps the nodes on a path from a parameter to the loss;
then, in reverse topological order, each kept node's rule (:mod:`passes.autodiff.registry`)
turns the gradients of its outputs into gradients of its inputs. Contributions to a tensor read
by several nodes are summed. Integer, bool, shape and index tensors are never differentiated;
branches that reach no parameter emit nothing; nodes a rule emitted but nothing reads are
removed at the end.

It works on an ``onnx_ir.Model`` in place: the rules read the types and shapes ONNX shape
inference finds (:func:`passes.irbuild.infer_types`, run on the graph without its weights),
and the intermediate values get back the facts the model stated once the gradients are built.

Guarantees afterwards: every parameter has a ``p_grad`` graph output of the parameter's type
and shape; the model's own inputs, outputs and nodes are unchanged (as are its tensors: none is
copied); every emitted op is in the default domain at the model's opset (at least 13); errors
are :class:`GradientBuildError` naming the op, the domain, the node and the parameter whose
path reaches it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import overload

import numpy as np
import onnx
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from ..irbuild import default_opset, infer_types
from .context import GradContext
from .emitter import Emitter, common_ops
from .errors import GradientBuildError, Unsupported
from .registry import ZERO_GRADIENT_OPS, find_rule

__all__ = ["differentiate", "MIN_OPSET", "FLOAT_TYPES"]

#: Lowest default-domain opset the rules emit for (Squeeze/Unsqueeze/ReduceSum axes as inputs).
MIN_OPSET = 13

FLOAT_TYPES = frozenset(
    {ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE, ir.DataType.BFLOAT16}
)


def _grad_name(name: str) -> str:
    return f"{name}_grad"


def _upgrade(model: ir.Model) -> None:
    """An opset below 13 upgraded to 13, in place (a whole-model round trip: a rare path)."""
    opset = default_opset(model, missing=1)
    if opset >= MIN_OPSET:
        return
    try:
        proto = onnx.version_converter.convert_version(ir.serde.serialize_model(model), MIN_OPSET)
    except Exception as exc:
        raise GradientBuildError(
            f"the model uses ONNX opset {opset}; gradients need opset >= {MIN_OPSET} and "
            f"the automatic upgrade failed ({str(exc).splitlines()[0] if str(exc) else exc})"
            f": re-export the model with opset_version >= {MIN_OPSET}"
        ) from exc
    converted = ir.serde.deserialize_model(proto)
    model.graph, model.ir_version = converted.graph, converted.ir_version


def _stated_types(graph: ir.Graph) -> dict[str, tuple]:
    """The type and shape the model itself states for each intermediate value of ``graph``."""
    return {
        out.name: (out.type, out.shape)
        for node in graph
        for out in node.outputs
        if out.name and not out.is_graph_output()
    }


def _restore_types(graph: ir.Graph, stated: dict[str, tuple]) -> None:
    """Intermediate values get back the facts of ``stated`` (new ones: none). The shapes
    inferred for the rules stay out of the result: thousands of value_info entries would slow
    every later step and say nothing the file needs."""
    for node in graph:
        for out in node.outputs:
            if not out.is_graph_output():
                out.type, out.shape = stated.get(out.name, (None, None))


@overload
def differentiate(model: ir.Model, loss: str, params: Sequence[str]) -> ir.Model: ...
@overload
def differentiate(model: onnx.ModelProto, loss: str, params: Sequence[str]) -> onnx.ModelProto: ...
def differentiate(model, loss, params):
    """Add ``p_grad`` outputs (d loss / d p) for every ``p`` in ``params``; see module doc.

    Args:
        model: an ``onnx_ir.Model``, changed in place and returned; or a ``ModelProto``, left
            as it is: a new ``ModelProto`` is returned. Its graph computes ``loss`` (a scalar
            float tensor, a graph output) from ``params`` (graph inputs or initializers).
        loss: name of the loss tensor.
        params: names of the tensors to differentiate with respect to.

    Raises:
        GradientBuildError: an op on the path has no rule (or a variant its rule cannot
            handle); the message names every such node and the parameter that reaches it.
    """
    if isinstance(model, onnx.ModelProto):
        from ..infra import to_ir, to_proto

        return to_proto(differentiate(to_ir(model), loss, params))
    stated = _stated_types(model.graph)
    _upgrade(model)
    # Shape facts are best effort (rules that need one say so).
    infer_types(model)
    try:
        _differentiate(model, loss, params)
    finally:
        _restore_types(model.graph, stated)
    return model


def _differentiate(ir_model: ir.Model, loss: str, params: Sequence[str]) -> None:
    graph = ir_model.graph
    opset = default_opset(ir_model, missing=1)

    values: dict[str, ir.Value] = {}
    for v in graph.inputs:
        values[v.name] = v
    for name, v in graph.initializers.items():
        values.setdefault(name, v)
    for node in graph:
        for out in node.outputs:
            if out.name:
                values[out.name] = out
    if loss not in values:
        raise GradientBuildError(f"the loss {loss!r} is not a tensor of the model")
    loss_value = values[loss]
    missing = [p for p in params if p not in values]
    if missing:
        raise GradientBuildError(f"parameter(s) {missing} are not tensors of the model")

    # Forward sweep: which float tensors depend on a parameter, and through which parameter.
    origin: dict[int, str] = {id(values[p]): p for p in params}
    order = list(graph)  # ONNX graphs are topologically sorted
    for node in order:
        key = (node.domain if node.domain != "ai.onnx" else "", node.op_type)
        if key in ZERO_GRADIENT_OPS:
            continue
        src = next((origin[id(v)] for v in node.inputs if v is not None and id(v) in origin), None)
        if src is None:
            continue
        for out in node.outputs:
            if out.dtype is None or out.dtype in FLOAT_TYPES:
                origin.setdefault(id(out), src)

    # Backward sweep: keep the tensors from which the loss is reached.
    live: set[int] = {id(loss_value)} if id(loss_value) in origin else set()
    live_nodes: list[ir.Node] = []
    for node in reversed(order):
        if not any(id(o) in live for o in node.outputs):
            continue
        live_nodes.append(node)
        for v in node.inputs:
            if v is not None and id(v) in origin:
                live.add(id(v))

    taken = set(values) | {n.name for n in graph if n.name}
    emitter = Emitter(graph, opset, taken)

    seed_array = np.ones((), dtype=(loss_value.dtype or ir.DataType.FLOAT).numpy())
    seed_name = emitter.unique(_grad_name(loss))
    seed = ir.Value(
        name=seed_name,
        shape=ir.Shape([]),
        type=ir.TensorType(ir.DataType.from_numpy(seed_array.dtype)),
        const_value=ir.tensor(seed_array, name=seed_name),
    )
    graph.register_initializer(seed)

    contributions: dict[int, list[ir.Value]] = {id(loss_value): [seed]}
    grads: dict[int, ir.Value] = {}

    def total(v: ir.Value) -> ir.Value | None:
        """The summed gradient of ``v`` (emits the Adds the first time)."""
        if id(v) in grads:
            return grads[id(v)]
        parts = contributions.get(id(v))
        if not parts:
            return None
        acc = parts[0]
        for part in parts[1:]:
            acc = emitter.emit(f"{v.name}/grad", "Add", [acc, part], {}, 1)[0]
        if acc.shape is None and v.shape is not None and acc is not seed:
            acc.shape = v.shape
        if acc.dtype is None and acc is not seed:
            acc.dtype = v.dtype
        grads[id(v)] = acc
        return acc

    failures: list[tuple[ir.Node, str]] = []
    for node in live_nodes:  # reverse topological order
        dys = [total(o) if id(o) in live else None for o in node.outputs]
        if all(d is None for d in dys):
            continue
        r = find_rule(node.domain, node.op_type, opset)
        if r is None:
            failures.append((node, "no gradient rule for this op"))
            continue
        needs = [v is not None and id(v) in live for v in node.inputs]
        ctx = GradContext(emitter, node, needs)
        try:
            dxs = list(r.fn(ctx, dys))
        except Unsupported as exc:
            failures.append((node, str(exc)))
            continue
        for v, dx in zip(node.inputs, dxs, strict=False):
            if v is None or dx is None or id(v) not in live:
                continue
            contributions.setdefault(id(v), []).append(dx)

    if failures:
        raise _failure(failures, origin)

    outputs: list[ir.Value] = []
    missing = []
    emitted = set(emitter.nodes)
    for p in params:
        pv = values[p]
        g = total(pv) if id(pv) in live else None
        if g is None:
            missing.append(p)
            continue
        if g.producer() not in emitted or any(g is o for o in outputs):
            g = emitter.emit(f"{p}/grad", "Identity", [g], {}, 1)[0]
        if _grad_name(p) in taken:
            raise GradientBuildError(f"the name {_grad_name(p)!r} is already used in the model")
        g.name = emitter.unique(_grad_name(p))
        g.dtype = pv.dtype
        g.shape = pv.shape
        outputs.append(g)
    if missing:
        raise GradientBuildError(
            f"the loss {loss!r} does not depend on parameter(s) {missing}: no gradient "
            "reaches them; leave them out of the optimizer to keep them frozen"
        )

    replaced: dict[int, ir.Value] = {}
    for node in common_ops(emitter, replaced):
        graph.append(node)
    graph.outputs.extend(replaced.get(id(o), o) for o in outputs)
    RemoveUnusedNodesPass()(ir_model)


def _failure(failures: list[tuple[ir.Node, str]], origin: dict[int, str]) -> GradientBuildError:
    lines = []
    for node, why in failures:
        param = next((origin[id(v)] for v in node.inputs if v is not None and id(v) in origin), "?")
        domain = node.domain or "ai.onnx"
        label = repr(node.name) if node.name else f"(unnamed, output {node.outputs[0].name!r})"
        lines.append(
            f"op {node.op_type} (domain {domain}, node {label}, reached from trained "
            f"parameter {param!r}): {why}"
        )
    ops = sorted({n.op_type for n, _ in failures})
    return GradientBuildError(
        "cannot differentiate the model: "
        + "; ".join(lines)
        + ". Freeze the parameters upstream of these nodes (leave them out of the optimizer), "
        "or replace the op in the model",
        ops[0] if len(ops) == 1 else None,
    )
