"""Overflow guard pass: skip an update whose gradients hold NaN/Inf, and loss scaling as state.

(About 400 lines, one module: one pass whose stages below share one builder and one renaming
of the graph's tensors; each stage is a method.)

This is MindSpore's ``nn.TrainOneStepWithLossScaleCell`` expressed in the training graph, so a
step stays one ``run``:

1. the loss-gradient seed (``<loss>_grad``) becomes the loss scale (a constant, or the state
   input ``adamax.loss_scale`` for a dynamic scale), cast to the loss dtype;
2. every gradient is multiplied by ``Cast(Reciprocal(scale), grad dtype)`` before the optimizer
   reads it (``_grad_scale`` in MindSpore), when the scale is to be divided out here;
3. one all-finite flag is computed over every (unscaled) gradient of the same run;
4. every carried state output ``X.updated`` (parameters, ``m``, ``v``, ``global_step``,
   ``beta1_power``, and whatever other state the graph carries) becomes
   ``Where(all_finite, new X, X)``: on overflow all of them equal their inputs bit for bit;
5. the bool scalar output ``adamax.overflow`` reports it;
6. a dynamic scale is updated exactly as ``nn.DynamicLossScaleUpdateCell.construct`` does.

Without this pass (the default) a NaN/Inf gradient is applied as computed, as in ``nn.AdaMax``.
Only standard ONNX ops are emitted. The finiteness test is ``ReduceSum(g * 0) == 0``: ``x * 0``
is 0 for every finite ``x`` and NaN for NaN and +-Inf, and a sum of zeros is exactly 0, so it
cannot overflow (``ReduceSum(g)`` could) nor depend on the reduction order.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .base import GraphPass, PassResult
from .builder import GraphBuilder
from .contract import grad_name, updated

__all__ = [
    "GuardNonFinite",
    "LossScaleSpec",
    "OVERFLOW",
    "LOSS_SCALE",
    "LOSS_SCALE_CUR_ITER",
    "LOSS_SCALE_LAST_OVERFLOW_ITER",
]

#: bool scalar output: True when some gradient held NaN/Inf and the update was skipped.
OVERFLOW = "adamax.overflow"
#: float32 scalar state of a dynamic loss scale (MindSpore's ``scale_sense``).
LOSS_SCALE = "adamax.loss_scale"
#: int32 scalar state: ``DynamicLossScaleUpdateCell.cur_iter`` (starts at 1).
LOSS_SCALE_CUR_ITER = "adamax.loss_scale.cur_iter"
#: int32 scalar state: ``DynamicLossScaleUpdateCell.last_overflow_iter`` (starts at 0).
LOSS_SCALE_LAST_OVERFLOW_ITER = "adamax.loss_scale.last_overflow_iter"

_NATIVE = (TensorProto.FLOAT, TensorProto.DOUBLE)
#: Magnitudes that round to +-Inf in a narrow float type (round to nearest even): halfway
#: between its largest finite value and the next power of two.
_OVERFLOW_AT = {
    TensorProto.FLOAT16: 65520.0,
    TensorProto.BFLOAT16: float(np.float32((2 - 2**-8) * 2.0**127)),
}


@dataclass(frozen=True)
class LossScaleSpec:
    """How the loss gradient is scaled; MindSpore's loss-scale managers map onto this.

    Attributes:
        init: the (initial) loss scale, the seed of the loss gradient.
        dynamic: the scale is graph state updated each step (``DynamicLossScaleUpdateCell``).
        scale_factor: dynamic only: divide by it on overflow, multiply by it after
            ``scale_window`` clean steps.
        scale_window: dynamic only.
        unscale: multiply gradients by ``1/scale`` in the graph before the optimizer reads
            them (``TrainOneStepWithLossScaleCell``); False leaves it to the optimizer's own
            ``loss_scale`` (``TrainOneStepCell`` with ``sens``).
    """

    init: float
    dynamic: bool = False
    scale_factor: float = 2.0
    scale_window: int = 2000
    unscale: bool = True


class GuardNonFinite(GraphPass):
    """Apply loss scaling and/or skip non-finite updates in a graph built by the AdaMax pass.

    Args:
        params: the trained parameter names (their gradients are ``<p>_grad``).
        skip: add the all-finite check, the gating of every ``X.updated`` output and the
            ``adamax.overflow`` output.
        loss: name of the loss output whose gradient seed is replaced (needed with
            ``loss_scale``).
        loss_scale: a :class:`LossScaleSpec`, or None to leave the seed as it is.

    Guarantees afterwards: with ``skip``, every graph output ``X.updated`` whose ``X`` is a
    graph input (other than the loss-scale state) equals ``X`` when the bool output
    ``adamax.overflow`` is True; a dynamic scale adds the state inputs :data:`LOSS_SCALE`,
    :data:`LOSS_SCALE_CUR_ITER`, :data:`LOSS_SCALE_LAST_OVERFLOW_ITER` with defaults and
    ``.updated`` outputs (always updated).
    """

    def __init__(
        self,
        params: Sequence[str],
        skip: bool = True,
        loss: str | None = None,
        loss_scale: LossScaleSpec | None = None,
    ) -> None:
        self.params = list(params)
        self.skip = skip
        self.loss = loss
        self.loss_scale = loss_scale
        if loss_scale is not None and loss is None:
            raise ValueError("GuardNonFinite: a loss scale needs the name of the loss output")
        if loss_scale is not None and loss_scale.dynamic and not skip:
            raise ValueError("GuardNonFinite: a dynamic loss scale always skips overflowing steps")

    def state_inputs(self) -> list[str]:
        """The state inputs this pass adds (in binding order)."""
        if self.loss_scale is not None and self.loss_scale.dynamic:
            return [LOSS_SCALE, LOSS_SCALE_CUR_ITER, LOSS_SCALE_LAST_OVERFLOW_ITER]
        return []

    def call(self, model: onnx.ModelProto) -> PassResult:
        if not self.skip and self.loss_scale is None:
            return PassResult(model, False)
        graph = model.graph
        inputs = {i.name for i in graph.input}
        producers = {o: n for n in graph.node for o in n.output}
        elem = _elem_types(graph)
        shapes = {
            i.name: tuple(
                d.dim_value if d.HasField("dim_value") else -1 for d in i.type.tensor_type.shape.dim
            )
            for i in graph.input
        }
        for p in self.params:
            if grad_name(p) not in producers and grad_name(p) not in inputs:
                raise ValueError(f"GuardNonFinite: no gradient tensor {grad_name(p)!r} for {p!r}")
        taken = {vi.name for vi in list(graph.input) + list(graph.output) + list(graph.value_info)}
        taken |= {i.name for i in graph.initializer} | set(producers) | {n.name for n in graph.node}
        g = GraphBuilder(taken)
        new_inputs: list[onnx.ValueInfoProto] = []
        new_outputs: list[onnx.ValueInfoProto] = []
        defaults: list[onnx.TensorProto] = []
        f32 = np.float32

        def state(name: str, dtype: int, value: np.ndarray) -> str:
            g.reserve(name)
            g.reserve(updated(name))
            new_inputs.append(helper.make_tensor_value_info(name, dtype, []))
            new_outputs.append(helper.make_tensor_value_info(updated(name), dtype, []))
            defaults.append(numpy_helper.from_array(value, name))
            return name

        rewire: dict[str, str] = {}  # tensor -> the tensor its readers read instead
        spec = self.loss_scale
        scale = None
        if spec is not None:
            if spec.dynamic:
                scale = state(LOSS_SCALE, TensorProto.FLOAT, np.array(spec.init, f32))
                cur_iter = state(LOSS_SCALE_CUR_ITER, TensorProto.INT32, np.array(1, np.int32))
                last_iter = state(
                    LOSS_SCALE_LAST_OVERFLOW_ITER, TensorProto.INT32, np.array(0, np.int32)
                )
            else:
                scale = g.const(spec.init, f32, "adamax.loss_scale_value")
            self._seed_from(graph, g, scale)
            if spec.unscale:
                rewire.update(self._unscale(g, scale, elem))

        overflow = None
        if self.skip:
            finite = self._all_finite(g, elem, shapes)
            g.reserve(OVERFLOW)
            overflow = g.op("Not", [finite], "adamax.overflow", output=OVERFLOW)
            new_outputs.append(helper.make_tensor_value_info(OVERFLOW, TensorProto.BOOL, []))
            rewire.update(self._gate_state(graph, g, inputs, finite))

        # Rename in the existing nodes: consumers of raw gradients read the unscaled ones, and
        # producers/consumers of gated outputs use the candidate name.
        for node in graph.node:
            for i, name in enumerate(node.input):
                if name in rewire:
                    node.input[i] = rewire[name]
            for i, name in enumerate(node.output):
                if name in rewire and name.endswith(".updated"):
                    node.output[i] = rewire[name]

        if spec is not None and spec.dynamic:
            self._dynamic_update(g, spec, scale, cur_iter, last_iter, overflow)

        # New nodes sit between existing ones (the seed before the backward pass, the unscaling
        # between gradients and the update): restore a topological order.
        nodes = _toposort(list(graph.node) + g.nodes)
        del graph.node[:]
        graph.node.extend(nodes)
        graph.initializer.extend(g.initializers)
        graph.initializer.extend(defaults)
        graph.input.extend(new_inputs)
        graph.output.extend(new_outputs)
        return PassResult(model, True)

    # -- pieces ----------------------------------------------------------------------------------
    def _unscale(self, g: GraphBuilder, scale: str, elem: dict[str, int]) -> dict[str, str]:
        """``<p>_grad * Cast(1/scale)`` for every parameter: raw gradient -> unscaled one."""
        recip = g.op("Reciprocal", [scale], "adamax.loss_scale_reciprocal")
        recip_by_type: dict[int, str] = {TensorProto.FLOAT: recip}
        unscaled = {}
        for p in self.params:
            dt = elem.get(grad_name(p), TensorProto.FLOAT)
            if dt not in recip_by_type:
                recip_by_type[dt] = g.op(
                    "Cast", [recip], "adamax.loss_scale_reciprocal_cast", to=dt
                )
            unscaled[grad_name(p)] = g.op(
                "Mul", [grad_name(p), recip_by_type[dt]], f"{p}.grad_unscaled"
            )
        return unscaled

    def _all_finite(
        self, g: GraphBuilder, elem: dict[str, int], shapes: dict[str, tuple[int, ...]]
    ) -> str:
        """The bool scalar ``adamax.all_finite``: every (raw) gradient is finite."""
        sums = []
        zeros: dict[int, str] = {}
        for p in self.params:
            # The raw gradient: finite raw <=> finite unscaled (1/scale is in (0, 1]).
            t = grad_name(p)
            dt = elem.get(grad_name(p), TensorProto.FLOAT)
            limit = _OVERFLOW_AT.get(dt)
            if dt not in _NATIVE:
                t = g.op("Cast", [t], f"{p}.grad_float", to=TensorProto.FLOAT)
                dt = TensorProto.FLOAT
            if dt not in zeros:
                zeros[dt] = g.const(0, helper.tensor_dtype_to_np_dtype(dt), "adamax.zero")
            z = g.op("Mul", [t, zeros[dt]], f"{p}.grad_times_zero")
            s = g.op("ReduceSum", [z], f"{p}.grad_nonfinite_probe", keepdims=0)
            if dt != TensorProto.FLOAT:
                s = g.op("Cast", [s], f"{p}.grad_nonfinite_probe_float", to=TensorProto.FLOAT)
            if limit is not None and 0 not in shapes.get(p, ()):
                # onnxruntime's CPU provider computes float16 nodes in float32 and may never
                # round a gradient to float16: a value that would round to +-Inf there
                # counts as an overflow, as it does where float16 is computed natively.
                biggest = g.op(
                    "ReduceMax",
                    [g.op("Abs", [t], f"{p}.grad_abs_probe")],
                    f"{p}.grad_max_abs",
                    keepdims=0,
                )
                too_big = g.op(
                    "GreaterOrEqual",
                    [biggest, g.const(limit, np.float32, "adamax.narrow_float_overflow_at")],
                    f"{p}.grad_out_of_range",
                )
                s = g.op(
                    "Add",
                    [
                        s,
                        g.op(
                            "Cast",
                            [too_big],
                            f"{p}.grad_out_of_range_float",
                            to=TensorProto.FLOAT,
                        ),
                    ],
                    f"{p}.grad_overflow_probe",
                )
            sums.append(s)
        # A chain of Adds rather than one Sum: every execution provider has Add (the ggml
        # plugin has no Sum), and shape inference follows it without constants.
        total = sums[0]
        for k, s in enumerate(sums[1:], start=1):
            name = "adamax.nonfinite_probe" if k == len(sums) - 1 else f"adamax.probe_sum{k}"
            total = g.op("Add", [total, s], name)
        return g.op(
            "Equal", [total, g.const(0.0, np.float32, "adamax.zero_f32")], "adamax.all_finite"
        )

    def _gate_state(
        self, graph: onnx.GraphProto, g: GraphBuilder, inputs: set[str], finite: str
    ) -> dict[str, str]:
        """Every carried state output ``X.updated`` becomes ``Where(all_finite, new X, X)``;
        returns the renaming of the ``X.updated`` producers to their ``.candidate`` outputs."""
        renamed = {}
        own = set(self.state_inputs())
        for out in graph.output:
            name = out.name
            if not name.endswith(".updated"):
                continue
            source = name[: -len(".updated")]
            if source not in inputs or source in own:
                continue
            candidate = g.unique(f"{name}.candidate")
            renamed[name] = candidate
            g.op("Where", [finite, candidate, source], f"{source}.skip_if_overflow", output=name)
        return renamed

    def _seed_from(self, graph: onnx.GraphProto, g: GraphBuilder, scale: str) -> None:
        """Replace the constant seed ``<loss>_grad`` by ``ones_like(loss) * cast(scale)``."""
        seed = grad_name(self.loss)
        idx = next((i for i, t in enumerate(graph.initializer) if t.name == seed), None)
        if idx is None:
            raise ValueError(
                f"GuardNonFinite: the graph has no loss-gradient seed initializer {seed!r}"
            )
        init = graph.initializer[idx]
        dims = list(init.dims)
        dtype = init.data_type
        del graph.initializer[idx]
        cast = g.op("Cast", [scale], "adamax.loss_scale_seed", to=dtype)
        if dims:
            g.op(
                "Reshape",
                [cast, g.const(np.array(dims, np.int64), np.int64, "adamax.seed_shape")],
                "adamax.loss_scale_seed_shaped",
                output=seed,
            )
        else:
            g.nodes[-1].output[0] = seed

    @staticmethod
    def _dynamic_update(
        g: GraphBuilder,
        spec: LossScaleSpec,
        scale: str,
        cur_iter: str,
        last_iter: str,
        overflow: str,
    ) -> None:
        """``DynamicLossScaleUpdateCell.construct``, op for op (float32 scale, int32 iters)."""
        f32 = np.float32
        factor = g.const(spec.scale_factor, f32, "adamax.loss_scale_factor")
        recip_factor = g.op("Reciprocal", [factor], "adamax.loss_scale_factor_reciprocal")
        down = g.op(
            "Max",
            [
                g.op("Mul", [scale, recip_factor], "adamax.loss_scale_divided"),
                g.const(1.0, f32, "adamax.minimum_loss_scale"),
            ],
            "adamax.loss_scale_decreased",
        )
        on_overflow = g.op("Where", [overflow, down, scale], "adamax.loss_scale_on_overflow")
        window = g.const(spec.scale_window, np.int32, "adamax.loss_scale_window")
        since = g.op("Sub", [cur_iter, last_iter], "adamax.loss_scale_clean_steps")
        should_inc = g.op("LessOrEqual", [window, since], "adamax.loss_scale_should_inc")
        last_cond = g.op("Or", [overflow, should_inc], "adamax.loss_scale_reset_window")
        g.op(
            "Where",
            [last_cond, cur_iter, last_iter],
            "adamax.loss_scale_last_overflow_iter",
            output=updated(LOSS_SCALE_LAST_OVERFLOW_ITER),
        )
        inc_cond = g.op(
            "And",
            [should_inc, g.op("Not", [overflow], "adamax.loss_scale_no_overflow")],
            "adamax.loss_scale_increase",
        )
        up = g.op("Mul", [on_overflow, factor], "adamax.loss_scale_increased")
        g.op("Where", [inc_cond, up, on_overflow], "adamax.loss_scale", output=updated(LOSS_SCALE))
        g.op(
            "Add",
            [cur_iter, g.const(1, np.int32, "adamax.one_i32")],
            "adamax.loss_scale_cur_iter",
            output=updated(LOSS_SCALE_CUR_ITER),
        )


def _elem_types(graph: onnx.GraphProto) -> dict[str, int]:
    """Element type of every named tensor whose type is known without shape inference."""
    types: dict[str, int] = {}
    for vi in list(graph.value_info) + list(graph.output) + list(graph.input):
        if vi.type.HasField("tensor_type"):
            types[vi.name] = vi.type.tensor_type.elem_type
    for init in graph.initializer:
        types[init.name] = init.data_type
    # A parameter's gradient has the parameter's type.
    for name, t in list(types.items()):
        types.setdefault(grad_name(name), t)
    return types


def _toposort(nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """Stable topological order (Kahn): a node follows the producers of its inputs, and keeps
    its relative position otherwise. Subgraph inputs count as inputs of the node that holds it.
    """
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    deps: list[set[int]] = []
    for node in nodes:
        names = set(node.input)
        for attr in node.attribute:
            for sub in list(attr.g.node if attr.HasField("g") else []) + [
                n for gr in attr.graphs for n in gr.node
            ]:
                names.update(sub.input)
        deps.append({producer[n] for n in names if n in producer} - {len(deps)})
    users: dict[int, list[int]] = {i: [] for i in range(len(nodes))}
    for i, d in enumerate(deps):
        for j in d:
            users[j].append(i)
    pending = [len(d) for d in deps]
    ready = [i for i, c in enumerate(pending) if c == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for u in users[i]:
            pending[u] -= 1
            if pending[u] == 0:
                heapq.heappush(ready, u)
    if len(order) != len(nodes):
        raise ValueError("GuardNonFinite: the graph has a cycle")
    return [nodes[i] for i in order]
