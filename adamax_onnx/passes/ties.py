"""Tied tensors: find initializers that training would corrupt by sharing, and untie them.

Exporters rewrite what training needs. ``torch.onnx.export`` (TorchScript) merges
initializers of equal value: in a freshly initialised CNN ``bn1.running_var`` is all ones like
``bn1.weight``, so the graph holds ``bn1.running_var = Identity(bn1.weight)``; a fresh
transformer ties every LayerNorm weight to the first one. The dynamo exporter's optimizer
makes two LayerNorms read one initializer. Trained as exported, one update then moves all the
tensors of a tie together (and a running statistic moves with the weight it aliases), which is
not the model the user had.

:func:`find_ties` lists three kinds of tie (:class:`Tie`), each naming the shared initializer
(``source``) and the tensor or use that shares it (``tensor``):

* ``"alias"``: ``tensor = Identity(source)`` (also through a chain of Identity nodes), where
  ``source`` is a float initializer. ``detail`` says where the alias goes, e.g. "a
  BatchNormalization running statistic".
* ``"frozen_slot"``: ``source`` is read directly by a slot that is never trained (a
  BatchNormalization running mean or variance, a Clip bound, a Pad value, Resize scales) *and*
  by a slot that is trained. ``tensor`` is the name of the copy made for the frozen use.
* ``"shared_norm"``: ``source`` is the scale, bias or running statistic of two or more
  normalization nodes (BatchNormalization, LayerNormalization, GroupNormalization,
  InstanceNormalization, RMSNormalization). The first node keeps it; ``tensor`` is the copy
  made for each later node.

:class:`UntieTensors` makes every tie a separate initializer holding a copy of the value (an
alias keeps its own name, so ``bn1.running_var`` becomes an initializer again), except ties
whose ``source`` or ``tensor`` is in ``keep`` (weight tying the user means, e.g. an embedding
shared with the LM head, is not an alias: it is one initializer read by two ordinary nodes and
never reported). Ties inside subgraphs are not rewritten (their Identity nodes read outer
values by name and stay as they are).

:class:`RetieFoldedCopies` does the opposite for the one tie constant folding breaks: a copy
(often transposed) that an exporter folded out of a weight also used under its own name reads
that weight again.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir
from onnx_ir.passes import PassResult

from .infra import BuildPass, to_ir
from .names import KEEP_TIES_KEY, is_generated_name

__all__ = [
    "Tie",
    "find_ties",
    "UntieTensors",
    "NORMALIZATION_OPS",
    "NEVER_TRAINED_SLOTS",
    "KEEP_TIES_KEY",
    "RetieFoldedCopies",
    "is_generated_name",
]

_FLOATS = {ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE, ir.DataType.BFLOAT16}

#: Normalization ops and the input slots that hold per-layer tensors (scale, bias, statistics).
NORMALIZATION_OPS = {
    "BatchNormalization": {1, 2, 3, 4},
    "LayerNormalization": {1, 2},
    "GroupNormalization": {1, 2},
    "InstanceNormalization": {1, 2},
    "RMSNormalization": {1},
}

#: Float input slots that are read but never trained: (op_type) -> {input index: what}.
NEVER_TRAINED_SLOTS = {
    "BatchNormalization": {3: "running mean", 4: "running variance"},
    "Clip": {1: "min bound", 2: "max bound"},
    "Pad": {2: "constant value"},
    "Resize": {1: "roi", 2: "scales"},
}


@dataclass(frozen=True)
class Tie:
    """One tie: ``tensor`` shares the value of initializer ``source`` (see the module doc)."""

    kind: str  # "alias", "frozen_slot" or "shared_norm"
    tensor: str
    source: str
    detail: str

    def describe(self) -> str:
        if self.kind == "alias":
            return f"{self.tensor!r} = Identity({self.source!r}) ({self.detail})"
        if self.kind == "folded_copy":
            return f"{self.tensor!r} = {self.detail} of {self.source!r}"
        if self.kind == "frozen_slot":
            return f"{self.source!r} is also the {self.detail} (copy: {self.tensor!r})"
        return f"{self.source!r} is shared by {self.detail} (copy: {self.tensor!r})"


def _node_label(node: ir.Node, index: int) -> str:
    out = node.outputs[0].name if node.outputs else None
    return node.name or out or f"#{index}"


def _slot_use(node: ir.Node, slot: int) -> str:
    what = NEVER_TRAINED_SLOTS.get(node.op_type, {}).get(slot)
    if what:
        return (
            f"{what} of {node.op_type} {node.name!r}" if node.name else f"{what} of {node.op_type}"
        )
    return f"input {slot} of {node.op_type} {node.name!r}"


def _is_identity(node: ir.Node | None) -> bool:
    return node is not None and node.op_type == "Identity" and node.domain in ("", "ai.onnx")


def _plan(graph: ir.Graph) -> list[tuple[Tie, list[tuple[ir.Node, int]]]]:
    """Every tie with the (node, input slot) uses a copy replaces (empty for aliases)."""
    inits = {n: v for n, v in graph.initializers.items() if v.const_value.dtype in _FLOATS}
    nodes = list(graph)
    order = {node: k for k, node in enumerate(nodes)}

    def consumers(v: ir.Value) -> list[tuple[ir.Node, int]]:
        """Main-graph readers of ``v``, in graph order."""
        uses = [(u.node, u.idx) for u in v.uses() if u.node in order]
        return sorted(uses, key=lambda u: (order[u[0]], u[1]))

    def root(v: ir.Value) -> ir.Value | None:
        """The float initializer ``v`` is an Identity chain of, else None."""
        seen = 0
        while v.name not in inits or inits[v.name] is not v:
            producer = v.producer()
            if not _is_identity(producer) or producer not in order:
                return None
            v = producer.inputs[0]
            seen += 1
            if v is None or seen > len(nodes):
                return None
        return v

    plan: list[tuple[Tie, list[tuple[ir.Node, int]]]] = []
    taken = set(inits) | {v.name for v in graph.inputs}
    taken |= {o.name for n in nodes for o in n.outputs if o.name}

    def fresh(base: str) -> str:
        cand, j = base, 1
        while cand in taken:
            j += 1
            cand = f"{base}.{j}"
        taken.add(cand)
        return cand

    # 1. Identity aliases of float initializers
    for n in nodes:
        out = n.outputs[0] if n.outputs else None
        if not _is_identity(n) or out is None or not out.name:
            continue
        src = root(n.inputs[0]) if n.inputs and n.inputs[0] is not None else None
        if src is None or out.is_graph_output():
            continue
        uses = [_slot_use(c, s) for c, s in consumers(out) if c.op_type != "Identity"]
        frozen = [u for u in uses if any(w in u for w in ("running", "bound", "value of Pad"))]
        detail = frozen[0] if frozen else (uses[0] if uses else "unused")
        plan.append((Tie("alias", out.name, src.name, detail), []))

    # Uses of each initializer after resolving aliases that stay (Identity chains are
    # rewritten away, so only direct uses count from here on).
    def direct_uses(v: ir.Value) -> list[tuple[ir.Node, int]]:
        return [(c, s) for c, s in consumers(v) if c.op_type != "Identity"]

    # 2. shared by several normalization layers
    for name, v in inits.items():
        norm_nodes: list[ir.Node] = []
        for c, s in direct_uses(v):
            if s in NORMALIZATION_OPS.get(c.op_type, set()) and c not in norm_nodes:
                norm_nodes.append(c)
        for c in norm_nodes[1:]:
            copy = fresh(f"{name}.untied.{_node_label(c, order[c])}")
            slots = [(c, s) for cc, s in direct_uses(v) if cc is c]
            others = ", ".join(repr(_node_label(x, order[x])) for x in norm_nodes)
            plan.append((Tie("shared_norm", copy, name, f"normalization nodes {others}"), slots))

    # 3. read by a never-trained slot and by a trained one
    claimed = {(id(c), s) for _, uses in plan for c, s in uses}
    for name, v in inits.items():
        uses = [(c, s) for c, s in direct_uses(v) if (id(c), s) not in claimed]
        frozen = [(c, s) for c, s in uses if s in NEVER_TRAINED_SLOTS.get(c.op_type, {})]
        if not frozen or len(frozen) == len(uses):
            continue
        for c, s in frozen:
            copy = fresh(f"{name}.untied.{_node_label(c, order[c])}.{s}")
            plan.append((Tie("frozen_slot", copy, name, _slot_use(c, s)), [(c, s)]))
    return plan


def find_ties(model: onnx.ModelProto | ir.Model) -> list[Tie]:
    """Every tie of ``model``'s main graph that training would corrupt (see the module doc)."""
    if isinstance(model, onnx.ModelProto):
        model = to_ir(model)
    return [tie for tie, _ in _plan(model.graph)]


def _copy_of(value: ir.Value, name: str) -> ir.Value:
    """A new initializer value ``name`` holding a copy of ``value``'s tensor.

    A copy, not the same tensor object: a tensor read from a ModelProto is that proto's
    message, and serializing it under a second name would rename the caller's tensor.
    """
    tensor = ir.tensor(value.const_value.numpy().copy(), name=name)
    return ir.Value(name=name, type=value.type, shape=tensor.shape, const_value=tensor)


class UntieTensors(BuildPass):
    """Give every tie its own initializer (a copy of the shared value).

    Args:
        keep: names of tensors whose ties are kept (a tie is kept when its ``source`` or its
            ``tensor`` is listed).

    After the pass, :attr:`untied` lists the ties that were untied and :attr:`kept` those kept.
    """

    def __init__(self, keep: Iterable[str] = ()) -> None:
        self.keep = set(keep)
        self.untied: list[Tie] = []
        self.kept: list[Tie] = []

    def call(self, model: ir.Model) -> PassResult:
        graph = model.graph
        plan = _plan(graph)
        self.untied, self.kept = [], []
        aliases = {n.outputs[0].name: n for n in graph if _is_identity(n) and n.outputs[0].name}
        for tie, uses in plan:
            if tie.source in self.keep or tie.tensor in self.keep:
                self.kept.append(tie)
                continue
            self.untied.append(tie)
            copy = _copy_of(graph.initializers[tie.source], tie.tensor)
            if tie.kind == "alias":
                identity = aliases[tie.tensor]
                identity.outputs[0].replace_all_uses_with(copy)
                graph.remove(identity, safe=True)
            graph.register_initializer(copy)
            for node, slot in uses:
                node.replace_input_with(slot, copy)
        # An alias that was also declared as a graph input (initializers as inputs) keeps its
        # declaration; value_info of a former Identity output is harmless.
        return PassResult(model, bool(self.untied))


class RetieFoldedCopies(BuildPass):
    """Give back a tied weight the copy an exporter folded out of it.

    With constant folding, torch's TorchScript exporter turns ``x @ W.T`` into a MatMul with a
    new initializer holding ``W.T`` (``onnx::MatMul_553``). Where ``W`` is also read under its
    own name (GPT-2's embedding, shared with the LM head), the tie is broken: trained, the two
    copies drift apart. This pass finds every initializer with an exporter-generated name, of
    rank 2 and not constant-valued, that equals exactly one named initializer or its transpose,
    and reads that one instead (through a ``Transpose`` node). Ties inside subgraphs are left
    alone. After the pass, :attr:`retied` lists what was restored (kind ``"folded_copy"``).
    """

    def __init__(self) -> None:
        self.retied: list[Tie] = []

    def call(self, model: ir.Model) -> PassResult:
        graph = model.graph
        self.retied = []
        floats = [
            v
            for v in graph.initializers.values()
            if v.const_value.dtype in _FLOATS and len(v.const_value.shape) == 2
        ]
        named = [(v, v.const_value.numpy()) for v in floats if not is_generated_name(v.name)]
        taken = set(graph.initializers) | {o.name for n in graph for o in n.outputs if o.name}
        transposes: list[ir.Node] = []
        for init in floats:
            in_subgraph = any(u.node.graph is not graph for u in init.uses())
            if not is_generated_name(init.name) or in_subgraph:
                continue
            arr = init.const_value.numpy()
            if arr.size < 2 or arr.min() == arr.max():
                continue
            found = [
                (v, how)
                for v, a in named
                for how, view in (("copy", a), ("transposed copy", a.T))
                if view.shape == arr.shape and np.array_equal(view, arr)
            ]
            if len(found) != 1 or not any(u.node.graph is graph for u in found[0][0].uses()):
                continue
            source, how = found[0]
            target = source
            if how == "transposed copy":
                name, k = f"{source.name}.transposed", 1
                while name in taken:
                    k += 1
                    name = f"{source.name}.transposed.{k}"
                taken.add(name)
                node = ir.Node(
                    "",
                    "Transpose",
                    [source],
                    attributes=[ir.AttrInt64s("perm", [1, 0])],
                    name=f"{name}/Transpose",
                )
                node.outputs[0].name = name
                transposes.append(node)
                target = node.outputs[0]
            init.replace_all_uses_with(target)
            graph.initializers.pop(init.name)
            self.retied.append(Tie("folded_copy", init.name, source.name, how))
        if not self.retied:
            return PassResult(model, False)
        first = next(iter(graph), None)
        if first is None:
            graph.extend(transposes)
        else:
            graph.insert_before(first, transposes)
        return PassResult(model, True)
