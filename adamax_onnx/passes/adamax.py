"""AdaMax update pass: appends MindSpore ``nn.AdaMax``'s update for every parameter.

Input: a model whose graph has each trained parameter ``p`` as a graph input and a tensor
``p_grad`` holding its gradient (graph input or node output). Output: the same model with the
optimizer state as extra inputs and the updated parameters and state as outputs, named as in
:mod:`.contract`. Only standard ONNX ops are emitted. The pass edits an ``onnx_ir.Model`` in
place (a step of the build's pipeline); called on an ``onnx.ModelProto`` it returns a new one.

The update is the chain of stages of :mod:`.adamax_stages`, in MindSpore's order: per group
the learning rate and weight decay; per parameter decay, centralization and unscaling of the
gradient; then ApplyAdaMax, per parameter or per bucket of small float32 parameters. The
scalar ``lr / (1 - beta1_power)`` is computed once per group, not per parameter. This module
only decides which stages apply to which parameter and lays the tensors out (flat views,
buckets); the precision of each stage is :class:`.precision.Precision`'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
from onnx_ir.passes import PassResult

from ..schedules import is_schedule
from .adamax_stages import (
    Hyper,
    KernelInputs,
    StageBuilder,
    StateInputs,
    StepTensors,
    advance_step,
    apply_adamax,
    apply_adamax_buckets,
    centralize_gradient,
    decay_weight,
    learning_rate,
    unscale_gradient,
    weight_decay,
)
from .contract import grad_name, m_name, updated, v_name
from .infra import BuildPass
from .names import DEFAULT_BUCKET_SIZE
from .precision import FLOAT_TYPES, Precision

__all__ = ["AdaMaxPass", "DEFAULT_BUCKET_SIZE"]



def _spec(value: ir.Value) -> tuple[int, list]:
    """``(elem_type, dims)`` of a graph input: a dim is an int, a symbolic name or None."""
    elem = int(value.dtype) if value.dtype is not None else 0
    dims = (
        [] if value.shape is None else [d if isinstance(d, int) else d.value for d in value.shape]
    )
    return elem, dims


@dataclass(frozen=True)
class _GroupScalars:
    """Per group: ``lr / (1 - beta1_power)`` and ``weight_decay * loss_scale`` (None: none)."""

    lr: ir.Value
    weight_decay: ir.Value | None


@dataclass(frozen=True)
class _Layout:
    """How one parameter's update is laid out.

    ``centralized``: MindSpore centralizes its gradient (the group asks, rank >= 2 and
    ``shape[1] % 16 == 0``). ``flat``: a large float32 tensor whose last dims are 1 (a 1x1
    convolution's [O, I, 1, 1] weight) is updated as a flat view and reshaped back: onnxruntime's
    CPU broadcast of a scalar over such a shape runs per element (a Mul over [1280, 320, 1, 1]
    takes 4 ms against 0.045 ms over [1280, 320]); same elementwise ops, same bits.
    ``bucketed``: a small float32 parameter, updated in a bucket (flat there anyway).
    """

    numel: int
    rank: int
    centralized: bool
    flat: bool
    bucketed: bool

    @classmethod
    def of(cls, cfg: Any, dims: list, prec: Precision, bucket_size: int) -> _Layout:
        known = all(isinstance(d, int) for d in dims)
        numel, rank = (int(np.prod(dims)) if known else 0), len(dims)
        centralized = bool(
            cfg.grad_centralization and rank >= 2 and isinstance(dims[1], int) and dims[1] % 16 == 0
        )
        own_kernel = not prec.casts_kernel
        flat = own_kernel and numel >= bucket_size and rank > 1 and dims[-1] == 1
        bucketed = own_kernel and 0 < numel < bucket_size
        return cls(numel, rank, centralized, flat, bucketed)


class _FlatView:
    """Reshapes of one parameter's tensors to 1-D (``<p>.adamax.<label>_flat``)."""

    def __init__(self, g: StageBuilder, param: str, numel: int) -> None:
        self.g, self.param = g, param
        self.shape = g.const(np.array([numel], np.int64), np.int64, "adamax.flat")

    def __call__(self, value: ir.Value, label: str) -> ir.Value:
        return self.g.op("Reshape", [value, self.shape], f"{self.param}.adamax.{label}_flat")


def _apply_alone(
    g: StageBuilder,
    prec: Precision,
    k: KernelInputs,
    view: _FlatView | None,
    lr: ir.Value,
    hyper: Hyper,
) -> None:
    """ApplyAdaMax of one parameter, its results written to ``<state>.updated``: directly, or
    cast back to the parameter dtype, or reshaped back from a flat view."""
    targets = [updated(t) for t in k.targets()]
    direct = not (prec.casts_kernel or view)
    outputs = tuple(targets) if direct else (None, None, None)
    results = apply_adamax(g, prec.prefix, k.w, k.m, k.v, k.grad, lr, hyper, outputs)
    if direct:
        return
    shape = (
        g.const(np.array(k.dims, np.int64), np.int64, f"{k.param}.adamax.shape") if view else None
    )
    for result, target, label in zip(results, targets, ("m", "v", "w"), strict=True):
        if view:
            g.op("Reshape", [result, shape], f"{k.param}.adamax.{label}_shaped", output=target)
        else:
            prec.leave_kernel(g, result, label, target)


class AdaMaxPass(BuildPass):
    """Append the AdaMax update of ``optimizer`` (an :class:`adamax_onnx.AdaMax`) to a graph.

    Args:
        optimizer: the resolved optimizer specification (duck-typed: ``param_configs``,
            ``beta1``, ``beta2``, ``eps``, ``loss_scale``).
        drop_gradient_outputs: remove ``p_grad`` from the graph outputs (they stay computed).
        bucket_size: ``DEFAULT_BUCKET_SIZE`` (65,536) by default; 0 updates every parameter
            with its own nodes. A positive number packs float32 parameters with fewer elements
            than that, of one group, into flat buckets of at most ``bucket_size`` elements:
            their ApplyAdaMax stage then runs once per bucket (Concat of w, m, v and gradient,
            the same elementwise ops, Split back) instead of once per parameter. Results are
            bit-identical (the same elementwise float32 ops on the same values); it pays off
            when many small parameters make per-node overhead dominate (see
            ``benchmarks/README.md``).

    Guarantees afterwards: inputs ``p.adamax.m``/``p.adamax.v`` (parameter dtype and shape),
    ``adamax.global_step`` (int64 scalar), ``adamax.beta1_power`` (float32 scalar) and one
    ``adamax.lr.group<g>`` float32 scalar per group with a fixed learning rate, each with an
    initializer holding its initial value (zeros, 0, 1, the learning rate); outputs
    ``<input>.updated`` for every parameter and state input, of the input's shape (a later
    :class:`passes.chunking.ChunkUpdates` may put large ones in chunk layout). The graph's
    nodes, inputs, initializers and outputs come first, in their order; the update's follow.

    In a pipeline (:class:`passes.infra.Pipeline`) the pass is an in-place ``"ir"`` step on the
    pipeline's ``onnx_ir.Model``: list the instance itself, ``AdaMaxPass(optimizer,
    bucket_size=...)``, among the steps (no ``ProtoStep``), after the gradients. Called on an
    ``onnx.ModelProto`` (``AdaMaxPass(optimizer)(proto).model``) it returns a new
    ``ModelProto``, the input unchanged; its :meth:`call` given a ``ModelProto`` edits that proto
    (the form of a ``ProtoStep``, until the pipeline lists the pass as an ir step).
    """

    def __init__(
        self,
        optimizer: Any,
        drop_gradient_outputs: bool = True,
        bucket_size: int = DEFAULT_BUCKET_SIZE,
    ) -> None:
        if isinstance(bucket_size, bool) or not isinstance(bucket_size, int) or bucket_size < 0:
            raise ValueError(f"AdaMax pass: bucket_size must be an int >= 0, got {bucket_size!r}")
        self.opt = optimizer
        self.drop_gradient_outputs = drop_gradient_outputs
        self.bucket_size = bucket_size

    def call(self, model: ir.Model | onnx.ModelProto) -> PassResult:
        if isinstance(model, onnx.ModelProto):
            model.CopyFrom(self(model).model)
            return PassResult(model, True)
        graph = model.graph
        params = self._check_parameters(graph)
        g = StageBuilder(graph)
        state = StateInputs(g)
        f32 = np.float32
        hyper: Hyper = (f32(self.opt.beta1), f32(self.opt.beta2), f32(self.opt.eps))
        step = advance_step(g, state, hyper[0])
        scalars = self._group_scalars(g, state, step)
        pending: dict[int, list[KernelInputs]] = {}
        for cfg in self.opt.param_configs:
            w, grad = params[cfg.name]
            member = self._update(g, state, cfg, w, grad, scalars[cfg.group], hyper)
            if member is not None:
                pending.setdefault(cfg.group, []).append(member)
        for gi, members in pending.items():
            apply_adamax_buckets(g, gi, members, scalars[gi].lr, hyper, self.bucket_size)
        self._splice(graph, g, state)
        return PassResult(model, True)

    def _check_parameters(self, graph: ir.Graph) -> dict[str, tuple[ir.Value, ir.Value]]:
        """Each parameter's graph input and gradient value, by name."""
        inputs = {v.name: v for v in graph.inputs}
        produced = dict(inputs)
        produced.update((v.name, v) for node in graph for v in node.outputs)
        params = {}
        for cfg in self.opt.param_configs:
            if cfg.name not in inputs:
                raise ValueError(f"AdaMax pass: parameter {cfg.name!r} is not a graph input")
            if grad_name(cfg.name) not in produced:
                raise ValueError(
                    f"AdaMax pass: no gradient tensor {grad_name(cfg.name)!r} for parameter "
                    f"{cfg.name!r}"
                )
            if _spec(inputs[cfg.name])[0] not in FLOAT_TYPES:
                raise ValueError(f"AdaMax pass: parameter {cfg.name!r} is not a float tensor")
            params[cfg.name] = inputs[cfg.name], produced[grad_name(cfg.name)]
        return params

    def _group_scalars(
        self, g: StageBuilder, state: StateInputs, step: StepTensors
    ) -> dict[int, _GroupScalars]:
        """The learning-rate and weight-decay stages, once per group, in optimizer order."""
        configs = self.opt.param_configs
        convert = any(is_schedule(c.lr) or isinstance(c.lr, np.ndarray) for c in configs)
        scalars: dict[int, _GroupScalars] = {}
        for cfg in configs:
            gi = cfg.group
            if gi in scalars:
                continue
            lr = learning_rate(g, state, cfg.lr, gi, step, convert)
            lr = g.op("Div", [lr, step.bias_correction], f"adamax.group{gi}.lr_bias_corrected")
            wd = weight_decay(g, cfg.weight_decay, gi, step, float(self.opt.loss_scale))
            scalars[gi] = _GroupScalars(lr, wd)
        return scalars

    def _update(
        self,
        g: StageBuilder,
        state: StateInputs,
        cfg: Any,
        w: ir.Value,
        grad: ir.Value,
        scalars: _GroupScalars,
        hyper: Hyper,
    ) -> KernelInputs | None:
        """The gradient stages and ApplyAdaMax of one parameter; a small float32 parameter's
        kernel inputs are returned instead, for :func:`apply_adamax_buckets`."""
        p, (elem, dims) = cfg.name, _spec(w)
        prec = Precision(elem, f"{p}.adamax")
        layout = _Layout.of(cfg, dims, prec, self.bucket_size)
        zeros = np.zeros([d if isinstance(d, int) else 0 for d in dims], prec.np_dtype)
        m = state.state(m_name(p), elem, dims, zeros)
        v = state.state(v_name(p), elem, dims, zeros)
        view = _FlatView(g, p, layout.numel) if layout.flat else None
        w, grad = self._gradient(g, prec, cfg, layout, view, w, grad, scalars.weight_decay)
        w, grad, m_k, v_k = prec.enter_kernel(g, w, grad, m, v)
        if view:
            m_k, v_k = view(m, "m"), view(v, "v")
        state.output(updated(p), elem, dims)
        kernel = KernelInputs(p, dims, layout.numel, w, m_k, v_k, grad)
        if layout.bucketed:
            return kernel
        _apply_alone(g, prec, kernel, view, scalars.lr, hyper)
        return None

    def _gradient(
        self,
        g: StageBuilder,
        prec: Precision,
        cfg: Any,
        layout: _Layout,
        view: _FlatView | None,
        w: ir.Value,
        grad: ir.Value,
        wd: ir.Value | None,
    ) -> tuple[ir.Value, ir.Value]:
        """Decay, centralize, unscale: the parameter and its final gradient, in the stage
        dtype (flat views when ``view``)."""
        if view and not layout.centralized:
            w, grad = view(w, "w"), view(grad, "grad")
        w, grad = prec.enter_stages(g, w, grad)
        if cfg.decay and wd is not None:
            grad = decay_weight(g, prec, w, grad, wd)
        if layout.centralized:
            grad = centralize_gradient(g, prec, grad, layout.rank)
            if view:  # centralization needs the shape: flat views afterwards
                w, grad = view(w, "w"), view(grad, "grad")
        if self.opt.loss_scale != 1.0:
            grad = unscale_gradient(g, prec, grad, float(self.opt.loss_scale))
        return w, grad

    def _splice(self, graph: ir.Graph, g: StageBuilder, state: StateInputs) -> None:
        if self.drop_gradient_outputs:
            grads = {grad_name(c.name) for c in self.opt.param_configs}
            keep = [o for o in graph.outputs if o.name not in grads]
            for value in graph.outputs:
                if value.name in grads and not value.is_graph_input():
                    # the file states no type for a tensor that is no output (no value_info)
                    value.type = value.shape = None
            graph.outputs.clear()
            graph.outputs.extend(keep)
        graph.extend(g.nodes)
        state.attach(graph)
