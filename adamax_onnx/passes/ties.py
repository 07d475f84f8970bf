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

import re
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .base import GraphPass, PassResult

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

# Names exporters give to tensors they made themselves (folded constants, transposed weights):
# torch.onnx's TorchScript exporter ("onnx::MatMul_595", "/layer/Constant_output_0") and its
# dynamo exporter ("val_68", "_val_3").
_GENERATED_NAME = re.compile(r"^(onnx::|/)|^_?val_\d+$|::")


def is_generated_name(name: str) -> bool:
    """True for a tensor name an exporter generated (``val_68``, ``onnx::MatMul_595``)."""
    return bool(_GENERATED_NAME.search(name))


#: ``metadata_props`` key of a JSON list of tensors whose ties are meant (written by
#: ``adamax_onnx.from_torch`` for a layer the module applies twice; the build keeps them).
KEEP_TIES_KEY = "adamax_onnx.keep_ties"

_FLOATS = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16}

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


def _node_label(node: onnx.NodeProto, index: int) -> str:
    return node.name or (node.output[0] if node.output and node.output[0] else f"#{index}")


def _slot_use(node: onnx.NodeProto, slot: int) -> str:
    what = NEVER_TRAINED_SLOTS.get(node.op_type, {}).get(slot)
    if what:
        return (
            f"{what} of {node.op_type} {node.name!r}" if node.name else f"{what} of {node.op_type}"
        )
    return f"input {slot} of {node.op_type} {node.name!r}"


def _plan(model: onnx.ModelProto) -> list[tuple[Tie, list[tuple[int, int]]]]:
    """Every tie with the (node index, input slot) uses a copy replaces (empty for aliases)."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer if i.data_type in _FLOATS}
    outputs = {o.name for o in graph.output}
    nodes = list(graph.node)
    producer = {o: k for k, n in enumerate(nodes) for o in n.output if o}
    consumers: dict[str, list[tuple[int, int]]] = {}
    for k, n in enumerate(nodes):
        for slot, name in enumerate(n.input):
            if name:
                consumers.setdefault(name, []).append((k, slot))

    def root(name: str) -> str | None:
        """The float initializer ``name`` is an Identity chain of, else None."""
        seen = 0
        while name not in inits:
            k = producer.get(name)
            if (
                k is None
                or nodes[k].op_type != "Identity"
                or nodes[k].domain not in ("", "ai.onnx")
            ):
                return None
            name = nodes[k].input[0]
            seen += 1
            if seen > len(nodes):
                return None
        return name

    plan: list[tuple[Tie, list[tuple[int, int]]]] = []
    taken = set(inits) | set(producer) | {i.name for i in graph.input}

    def fresh(base: str) -> str:
        cand, j = base, 1
        while cand in taken:
            j += 1
            cand = f"{base}.{j}"
        taken.add(cand)
        return cand

    # 1. Identity aliases of float initializers
    for n in nodes:
        if n.op_type != "Identity" or n.domain not in ("", "ai.onnx") or not n.output[0]:
            continue
        src = root(n.input[0])
        if src is None or n.output[0] in outputs:
            continue
        uses = [
            _slot_use(nodes[c], s)
            for c, s in consumers.get(n.output[0], [])
            if nodes[c].op_type != "Identity"
        ]
        frozen = [u for u in uses if any(w in u for w in ("running", "bound", "value of Pad"))]
        detail = frozen[0] if frozen else (uses[0] if uses else "unused")
        plan.append((Tie("alias", n.output[0], src, detail), []))

    # Uses of each initializer after resolving aliases that stay (Identity chains are
    # rewritten away, so only direct uses count from here on).
    def direct_uses(name: str) -> list[tuple[int, int]]:
        return [(c, s) for c, s in consumers.get(name, []) if nodes[c].op_type != "Identity"]

    # 2. shared by several normalization layers
    for name in inits:
        norm_nodes: list[int] = []
        for c, s in direct_uses(name):
            node = nodes[c]
            if s in NORMALIZATION_OPS.get(node.op_type, set()) and c not in norm_nodes:
                norm_nodes.append(c)
        for c in norm_nodes[1:]:
            label = _node_label(nodes[c], c)
            copy = fresh(f"{name}.untied.{label}")
            slots = [(c, s) for cc, s in direct_uses(name) if cc == c]
            others = ", ".join(repr(_node_label(nodes[x], x)) for x in norm_nodes)
            plan.append((Tie("shared_norm", copy, name, f"normalization nodes {others}"), slots))

    # 3. read by a never-trained slot and by a trained one
    claimed = {(c, s) for _, uses in plan for c, s in uses}
    for name in inits:
        uses = [u for u in direct_uses(name) if u not in claimed]
        frozen = [(c, s) for c, s in uses if s in NEVER_TRAINED_SLOTS.get(nodes[c].op_type, {})]
        if not frozen or len(frozen) == len(uses):
            continue
        for c, s in frozen:
            copy = fresh(f"{name}.untied.{_node_label(nodes[c], c)}.{s}")
            plan.append((Tie("frozen_slot", copy, name, _slot_use(nodes[c], s)), [(c, s)]))
    return plan


def find_ties(model: onnx.ModelProto) -> list[Tie]:
    """Every tie of ``model``'s main graph that training would corrupt (see the module doc)."""
    return [tie for tie, _ in _plan(model)]


class UntieTensors(GraphPass):
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

    def call(self, model: onnx.ModelProto) -> PassResult:
        graph = model.graph
        plan = _plan(model)
        self.untied, self.kept = [], []
        if not plan:
            return PassResult(model, False)
        inits = {i.name: i for i in graph.initializer}
        nodes = list(graph.node)
        drop: set[int] = set()
        new_inits: list[onnx.TensorProto] = []
        for tie, uses in plan:
            if tie.source in self.keep or tie.tensor in self.keep:
                self.kept.append(tie)
                continue
            self.untied.append(tie)
            copy = onnx.TensorProto()
            copy.CopyFrom(inits[tie.source])
            copy.name = tie.tensor
            new_inits.append(copy)
            if tie.kind == "alias":
                drop.update(
                    k
                    for k, n in enumerate(nodes)
                    if n.op_type == "Identity" and n.output[0] == tie.tensor
                )
            for c, s in uses:
                nodes[c].input[s] = tie.tensor
        if not self.untied:
            return PassResult(model, False)
        kept_nodes = [n for k, n in enumerate(nodes) if k not in drop]
        del graph.node[:]
        graph.node.extend(kept_nodes)
        graph.initializer.extend(new_inits)
        # An alias that was also declared as a graph input (initializers as inputs) keeps its
        # declaration; value_info of a former Identity output is harmless.
        return PassResult(model, True)


def _subgraph_inputs(graph: onnx.GraphProto) -> set[str]:
    names: set[str] = set()
    for node in graph.node:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                names |= {i for n in sub.node for i in n.input} | _subgraph_inputs(sub)
    return names


class RetieFoldedCopies(GraphPass):
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

    def call(self, model: onnx.ModelProto) -> PassResult:
        graph = model.graph
        self.retied = []
        floats = [i for i in graph.initializer if i.data_type in _FLOATS and len(i.dims) == 2]
        named = [
            (i.name, numpy_helper.to_array(i)) for i in floats if not is_generated_name(i.name)
        ]
        in_subgraphs = _subgraph_inputs(graph)
        read = {name for n in graph.node for name in n.input}
        replace: dict[str, str] = {}
        new_nodes: list[onnx.NodeProto] = []
        taken = {i.name for i in graph.initializer} | {o for n in graph.node for o in n.output}
        for init in floats:
            if not is_generated_name(init.name) or init.name in in_subgraphs:
                continue
            arr = numpy_helper.to_array(init)
            if arr.size < 2 or arr.min() == arr.max():
                continue
            found = [
                (n, how)
                for n, a in named
                for how, view in (("copy", a), ("transposed copy", a.T))
                if view.shape == arr.shape and np.array_equal(view, arr)
            ]
            if len(found) != 1 or found[0][0] not in read:
                continue
            source, how = found[0]
            target = source
            if how == "transposed copy":
                target, k = f"{source}.transposed", 1
                while target in taken:
                    k += 1
                    target = f"{source}.transposed.{k}"
                taken.add(target)
                new_nodes.append(
                    helper.make_node(
                        "Transpose", [source], [target], name=f"{target}/Transpose", perm=[1, 0]
                    )
                )
            replace[init.name] = target
            self.retied.append(Tie("folded_copy", init.name, source, how))
        if not replace:
            return PassResult(model, False)
        for node in graph.node:
            for k, name in enumerate(node.input):
                if name in replace:
                    node.input[k] = replace[name]
        nodes = new_nodes + list(graph.node)
        del graph.node[:]
        graph.node.extend(nodes)
        kept = [i for i in graph.initializer if i.name not in replace]
        del graph.initializer[:]
        graph.initializer.extend(kept)
        return PassResult(model, True)
