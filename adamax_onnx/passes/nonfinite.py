"""Overflow guard pass: skip an update whose gradients hold NaN/Inf, and loss scaling as state.

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

import numpy as np
import onnx_ir as ir
from onnx_ir.passes import PassResult

from .contract import grad_name, updated
from .infra import BuildPass
from .irbuild import IRBuilder
from .names import (
    LOSS_SCALE,
    LOSS_SCALE_CUR_ITER,
    LOSS_SCALE_LAST_OVERFLOW_ITER,
    OVERFLOW,
    LossScaleSpec,
)

__all__ = [
    "GuardNonFinite",
    "LossScaleSpec",
    "OVERFLOW",
    "LOSS_SCALE",
    "LOSS_SCALE_CUR_ITER",
    "LOSS_SCALE_LAST_OVERFLOW_ITER",
]

_FLOAT = ir.DataType.FLOAT
_NATIVE = (ir.DataType.FLOAT, ir.DataType.DOUBLE)
#: Magnitudes that round to +-Inf in a narrow float type (round to nearest even): halfway
#: between its largest finite value and the next power of two.
_OVERFLOW_AT = {
    ir.DataType.FLOAT16: 65520.0,
    ir.DataType.BFLOAT16: float(np.float32((2 - 2**-8) * 2.0**127)),
}


class GuardNonFinite(BuildPass):
    """Apply loss scaling and/or skip non-finite updates in a graph built by the AdaMax pass.

    An in-place pass on an ``onnx_ir.Model``. A pipeline runs it as an ir step right after the
    AdaMax update, ``GuardNonFinite(params, skip=..., loss=..., loss_scale=...)`` (what
    ``loss_scale.apply_guard`` makes of the user's options), and reads :meth:`state_inputs`
    afterwards for the contract (``loss_scale.OverflowGuard``). Called with an
    ``onnx.ModelProto`` (the runtime, ``apply_guard``, tests) it returns a new ``ModelProto``
    and leaves the input as it was.

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
    ``.updated`` outputs (always updated). Nodes are in topological order, and keep their
    relative order otherwise.
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

    def call(self, model: ir.Model) -> PassResult:
        if not self.skip and self.loss_scale is None:
            return PassResult(model, False)
        graph = model.graph
        values = ir.convenience.create_value_mapping(graph)
        grads = {}
        for p in self.params:
            if grad_name(p) not in values:
                raise ValueError(f"GuardNonFinite: no gradient tensor {grad_name(p)!r} for {p!r}")
            grads[p] = values[grad_name(p)]
        g = IRBuilder(graph)
        existing = list(graph)
        state: list[tuple[ir.Value, np.ndarray]] = []  # inputs added, with their defaults

        def state_input(name: str, value: np.ndarray) -> ir.Value:
            g.reserve(name)
            g.reserve(updated(name))
            dtype = ir.DataType.from_numpy(value.dtype)
            state.append(
                (ir.Value(name=name, type=ir.TensorType(dtype), shape=ir.Shape([])), value)
            )
            return state[-1][0]

        unscaled: dict[str, ir.Value] = {}  # parameter -> the gradient its readers read instead
        spec = self.loss_scale
        scale = None
        if spec is not None:
            if spec.dynamic:
                scale = state_input(LOSS_SCALE, np.array(spec.init, np.float32))
                cur_iter = state_input(LOSS_SCALE_CUR_ITER, np.array(1, np.int32))
                last_iter = state_input(LOSS_SCALE_LAST_OVERFLOW_ITER, np.array(0, np.int32))
            else:
                scale = g.const(spec.init, np.float32, "adamax.loss_scale_value")
            self._seed_from(graph, g, scale)
            if spec.unscale:
                unscaled = self._unscale(g, scale, grads, values)

        outputs: list[tuple[ir.Value, ir.DataType]] = []  # outputs added, with their types
        if self.skip:
            finite = self._all_finite(g, grads, values, graph)
            g.reserve(OVERFLOW)
            overflow = g.op("Not", [finite], "adamax.overflow", output=OVERFLOW)
            outputs.append((overflow, ir.DataType.BOOL))
            self._gate_state(graph, g, finite)

        # Readers of a raw gradient (the update, not the guard's own nodes) read it unscaled.
        own = set(g.nodes)
        for p, value in unscaled.items():
            for use in list(grads[p].uses()):
                if use.node not in own:
                    use.node.replace_input_with(use.idx, value)

        if spec is not None and spec.dynamic:
            new_state = self._dynamic_update(g, spec, scale, cur_iter, last_iter, overflow)
            outputs = [
                (out, value.dtype) for out, (value, _) in zip(new_state, state, strict=True)
            ] + outputs

        # New nodes sit between existing ones (the seed before the backward pass, the unscaling
        # between gradients and the update): restore a topological order.
        graph.remove(existing)
        graph.extend(_toposort(existing + g.nodes))
        for value, default in state:
            value.const_value = ir.tensor(default, name=value.name)
            graph.register_initializer(value)
            graph.inputs.append(value)
        for out, dtype in outputs:
            out.type, out.shape = ir.TensorType(dtype), ir.Shape([])
            graph.outputs.append(out)
        return PassResult(model, True)

    # -- stages ----------------------------------------------------------------------------------
    def _grad_type(self, p: str, grads: dict, values: dict) -> ir.DataType:
        """A gradient's element type: as declared, else its parameter's, else float32."""
        param = values.get(p)
        return grads[p].dtype or (param.dtype if param is not None else None) or _FLOAT

    def _unscale(
        self, g: IRBuilder, scale: ir.Value, grads: dict, values: dict
    ) -> dict[str, ir.Value]:
        """``<p>_grad * Cast(1/scale)`` for every parameter: parameter -> unscaled gradient."""
        recip = g.op("Reciprocal", [scale], "adamax.loss_scale_reciprocal")
        recip_by_type = {_FLOAT: recip}
        unscaled = {}
        for p in self.params:
            dt = self._grad_type(p, grads, values)
            if dt not in recip_by_type:
                recip_by_type[dt] = g.op(
                    "Cast", [recip], "adamax.loss_scale_reciprocal_cast", to=int(dt)
                )
            unscaled[p] = g.op("Mul", [grads[p], recip_by_type[dt]], f"{p}.grad_unscaled")
        return unscaled

    def _all_finite(self, g: IRBuilder, grads: dict, values: dict, graph: ir.Graph) -> ir.Value:
        """The bool scalar ``adamax.all_finite``: every (raw) gradient is finite."""
        inputs = {v.name: v for v in graph.inputs}
        sums = []
        zeros: dict[ir.DataType, ir.Value] = {}
        for p in self.params:
            # The raw gradient: finite raw <=> finite unscaled (1/scale is in (0, 1]).
            t = grads[p]
            dt = self._grad_type(p, grads, values)
            limit = _OVERFLOW_AT.get(dt)
            if dt not in _NATIVE:
                t = g.op("Cast", [t], f"{p}.grad_float", to=int(_FLOAT))
                dt = _FLOAT
            if dt not in zeros:
                zeros[dt] = g.const(0, dt.numpy(), "adamax.zero")
            z = g.op("Mul", [t, zeros[dt]], f"{p}.grad_times_zero")
            s = g.op("ReduceSum", [z], f"{p}.grad_nonfinite_probe", keepdims=0)
            if dt != _FLOAT:
                s = g.op("Cast", [s], f"{p}.grad_nonfinite_probe_float", to=int(_FLOAT))
            shape = inputs[p].shape if p in inputs else None
            if limit is not None and 0 not in tuple(shape or ()):
                # onnxruntime's CPU provider computes float16 nodes in float32 and may never
                # round a gradient to float16: a value that would round to +-Inf there
                # counts as an overflow, as it does where float16 is computed natively.
                abs_t = g.op("Abs", [t], f"{p}.grad_abs_probe")
                biggest = g.op("ReduceMax", [abs_t], f"{p}.grad_max_abs", keepdims=0)
                at = g.const(limit, np.float32, "adamax.narrow_float_overflow_at")
                too_big = g.op("GreaterOrEqual", [biggest, at], f"{p}.grad_out_of_range")
                big = g.op("Cast", [too_big], f"{p}.grad_out_of_range_float", to=int(_FLOAT))
                s = g.op("Add", [s, big], f"{p}.grad_overflow_probe")
            sums.append(s)
        # A chain of Adds rather than one Sum: every execution provider has Add (the ggml
        # plugin has no Sum), and shape inference follows it without constants.
        total = sums[0]
        for k, s in enumerate(sums[1:], start=1):
            name = "adamax.nonfinite_probe" if k == len(sums) - 1 else f"adamax.probe_sum{k}"
            total = g.op("Add", [total, s], name)
        zero = g.const(0.0, np.float32, "adamax.zero_f32")
        return g.op("Equal", [total, zero], "adamax.all_finite")

    def _gate_state(self, graph: ir.Graph, g: IRBuilder, finite: ir.Value) -> None:
        """Every carried state output ``X.updated`` becomes ``Where(all_finite, new X, X)``;
        the value it replaces, renamed ``X.updated.candidate``, keeps its readers."""
        inputs = {v.name: v for v in graph.inputs}
        own = set(self.state_inputs())
        for k, out in enumerate(list(graph.outputs)):
            name = out.name
            if not name.endswith(".updated"):
                continue
            source = name[: -len(".updated")]
            if source not in inputs or source in own:
                continue
            out.name = g.unique(f"{name}.candidate")
            gated = g.op(
                "Where", [finite, out, inputs[source]], f"{source}.skip_if_overflow", output=name
            )
            gated.type, gated.shape = out.type, out.shape
            out.type = out.shape = None  # an intermediate now: the model states no type for it
            graph.outputs[k] = gated

    def _seed_from(self, graph: ir.Graph, g: IRBuilder, scale: ir.Value) -> None:
        """Replace the constant seed ``<loss>_grad`` by ``ones_like(loss) * cast(scale)``."""
        name = grad_name(self.loss)
        seed = graph.initializers.get(name)
        if seed is None:
            raise ValueError(
                f"GuardNonFinite: the graph has no loss-gradient seed initializer {name!r}"
            )
        dims = list(seed.const_value.shape)
        del graph.initializers[name]
        new = g.op("Cast", [scale], "adamax.loss_scale_seed", to=int(seed.const_value.dtype))
        if dims:
            new = g.op(
                "Reshape",
                [new, g.const(np.array(dims, np.int64), np.int64, "adamax.seed_shape")],
                "adamax.loss_scale_seed_shaped",
                output=name,
            )
        ir.convenience.replace_all_uses_with(seed, new)
        new.name = name

    @staticmethod
    def _dynamic_update(
        g: IRBuilder,
        spec: LossScaleSpec,
        scale: ir.Value,
        cur_iter: ir.Value,
        last_iter: ir.Value,
        overflow: ir.Value,
    ) -> tuple[ir.Value, ir.Value, ir.Value]:
        """``DynamicLossScaleUpdateCell.construct``, op for op (float32 scale, int32 iters);
        returns the next scale, ``cur_iter`` and ``last_overflow_iter``."""
        f32 = np.float32
        factor = g.const(spec.scale_factor, f32, "adamax.loss_scale_factor")
        recip_factor = g.op("Reciprocal", [factor], "adamax.loss_scale_factor_reciprocal")
        divided = g.op("Mul", [scale, recip_factor], "adamax.loss_scale_divided")
        minimum = g.const(1.0, f32, "adamax.minimum_loss_scale")
        down = g.op("Max", [divided, minimum], "adamax.loss_scale_decreased")
        on_overflow = g.op("Where", [overflow, down, scale], "adamax.loss_scale_on_overflow")
        window = g.const(spec.scale_window, np.int32, "adamax.loss_scale_window")
        since = g.op("Sub", [cur_iter, last_iter], "adamax.loss_scale_clean_steps")
        should_inc = g.op("LessOrEqual", [window, since], "adamax.loss_scale_should_inc")
        last_cond = g.op("Or", [overflow, should_inc], "adamax.loss_scale_reset_window")
        new_last = g.op(
            "Where",
            [last_cond, cur_iter, last_iter],
            "adamax.loss_scale_last_overflow_iter",
            output=updated(LOSS_SCALE_LAST_OVERFLOW_ITER),
        )
        no_overflow = g.op("Not", [overflow], "adamax.loss_scale_no_overflow")
        inc_cond = g.op("And", [should_inc, no_overflow], "adamax.loss_scale_increase")
        up = g.op("Mul", [on_overflow, factor], "adamax.loss_scale_increased")
        new_scale = g.op(
            "Where", [inc_cond, up, on_overflow], "adamax.loss_scale", output=updated(LOSS_SCALE)
        )
        one = g.const(1, np.int32, "adamax.one_i32")
        new_iter = g.op(
            "Add",
            [cur_iter, one],
            "adamax.loss_scale_cur_iter",
            output=updated(LOSS_SCALE_CUR_ITER),
        )
        return new_scale, new_iter, new_last


def _toposort(nodes: list[ir.Node]) -> list[ir.Node]:
    """Stable topological order (Kahn): a node follows the producers of its inputs, and keeps
    its relative position otherwise. What a subgraph reads counts as read by its node."""
    producer = {id(o): i for i, n in enumerate(nodes) for o in n.outputs}
    deps: list[set[int]] = []
    for i, node in enumerate(nodes):
        read = list(node.inputs)
        for attr in node.attributes.values():
            subgraphs = {ir.AttributeType.GRAPH: [attr.value], ir.AttributeType.GRAPHS: attr.value}
            for sub in subgraphs.get(attr.type, []):
                read += [v for n in ir.traversal.RecursiveGraphIterator(sub) for v in n.inputs]
        deps.append({producer[id(v)] for v in read if v is not None and id(v) in producer} - {i})
    users: list[list[int]] = [[] for _ in nodes]
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
