"""The stages of MindSpore's ``nn.AdaMax`` update, each a function that emits its ONNX nodes.

In MindSpore's order (``nn.AdaMax.construct``), for one parameter ``w`` with gradient ``g``::

    g = g + (weight_decay * loss_scale) * w      # decay_weight       (decayed parameters)
    g = g - mean(g, axes 1..n-1)                  # centralize_gradient (rank>=2, dim1 % 16 == 0)
    g = g * (1 / loss_scale)                      # unscale_gradient   (loss_scale != 1)
    lr = lr(global_step)                          # learning_rate      (per group)
    global_step += 1; beta1_power *= beta1        # advance_step       (once)
    m = beta1 * m + (1 - beta1) * g               # apply_adamax       (per parameter or bucket)
    v = max(beta2 * v, |g|)
    w = w - lr / (1 - beta1_power) * (m / (v + eps))

Each function appends ``onnx_ir`` nodes to a :class:`StageBuilder` and returns the values it
computes (named readably: ``fc1.weight.adamax.m``); where and how the result is rounded for a
float16, bfloat16 or float64 parameter is :class:`~.precision.Precision`'s business.
:class:`~.adamax.AdaMaxPass` chains them; ``tests/passes/test_adamax_stages.py`` runs each
alone against numpy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_ir as ir
from onnx import TensorProto

from ..schedules import is_schedule
from .contract import (
    BETA1_POWER,
    GLOBAL_STEP,
    lr_current_name,
    lr_input_name,
    m_name,
    updated,
    v_name,
    weight_decay_current_name,
)
from .irbuild import IRBuilder, sorted_attributes
from .precision import Precision

__all__ = [
    "StageBuilder",
    "StateInputs",
    "StepTensors",
    "KernelInputs",
    "Hyper",
    "advance_step",
    "learning_rate",
    "weight_decay",
    "decay_weight",
    "centralize_gradient",
    "unscale_gradient",
    "apply_adamax",
    "apply_adamax_buckets",
    "pack_buckets",
]

_F32 = np.float32
#: ``(beta1, beta2, eps)`` as float32.
Hyper = tuple[np.float32, np.float32, np.float32]


class StageBuilder(IRBuilder):
    """:class:`~.irbuild.IRBuilder` with what the update also needs: unshared named initializers
    (a learning-rate table) and nodes of several outputs (a bucket's Split)."""

    def tensor(self, value: np.ndarray, name: str) -> ir.Value:
        """A named (unshared) initializer, e.g. a learning-rate table."""
        return self.initializer(np.asarray(value), self.unique(name))

    def op_multi(
        self,
        op_type: str,
        inputs: Sequence[ir.Value],
        outputs: Sequence[str],
        name: str,
        **attrs,
    ) -> list[ir.Value]:
        """Append one node whose outputs get the exact names ``outputs`` (reserved or made
        unique beforehand); returns them."""
        node = ir.Node(
            "",
            op_type,
            list(inputs),
            attributes=sorted_attributes(attrs),
            num_outputs=len(outputs),
            name=self.unique(f"{name}/{op_type}"),
        )
        for value, out in zip(node.outputs, outputs, strict=True):
            value.name = out
        self.nodes.append(node)
        return list(node.outputs)


class StateInputs:
    """The graph inputs (with initial values) and outputs the update adds, in the order added.

    :meth:`attach` puts them on the graph once the builder's nodes are in it.
    """

    def __init__(self, g: StageBuilder) -> None:
        self.g = g
        self.inputs: list[ir.Value] = []
        self.outputs: list[tuple[str, int, list]] = []

    def state(
        self, name: str, elem: int, dims: list, init: np.ndarray, carried: bool = True
    ) -> ir.Value:
        """Input ``name`` with initial value ``init``; ``carried`` ones also get an output
        ``name.updated``."""
        self.g.reserve(name)
        value = ir.Value(
            name=name,
            type=ir.TensorType(ir.DataType(elem)),
            shape=ir.Shape(dims),
            const_value=ir.Tensor(init, name=name),
        )
        self.inputs.append(value)
        if carried:
            self.output(updated(name), elem, dims)
        return value

    def output(self, name: str, elem: int, dims: list) -> str:
        """Declare graph output ``name`` (its exact name is reserved; a node of the builder
        produces it)."""
        self.g.reserve(name)
        self.outputs.append((name, elem, dims))
        return name

    def attach(self, graph: ir.Graph) -> None:
        """Add the inputs, their initial values as initializers (after the builder's constants),
        and the declared outputs, typed and shaped as declared."""
        for value in self.inputs:
            graph.register_initializer(value)
        graph.inputs.extend(self.inputs)
        produced = {v.name: v for node in self.g.nodes for v in node.outputs}
        for name, elem, dims in self.outputs:
            value = produced[name]
            value.type, value.shape = ir.TensorType(ir.DataType(elem)), ir.Shape(dims)
            graph.outputs.append(value)


@dataclass(frozen=True)
class StepTensors:
    """``step``: int64 global step before the increment; ``step_f``: it as float32 (what
    schedules read); ``bias_correction``: ``1 - beta1_power`` after its update."""

    step: ir.Value
    step_f: ir.Value
    bias_correction: ir.Value


def advance_step(g: StageBuilder, state: StateInputs, beta1: np.float32) -> StepTensors:
    """``global_step += 1`` and ``beta1_power *= beta1`` (float32), shared by all parameters."""
    step = state.state(GLOBAL_STEP, TensorProto.INT64, [], np.array(0, np.int64))
    b1p = state.state(BETA1_POWER, TensorProto.FLOAT, [], np.array(1.0, _F32))
    step_f = g.op("Cast", [step], "adamax.global_step_float", to=TensorProto.FLOAT)
    one_i64 = g.const(1, np.int64, "adamax.one_i64")
    g.op("Add", [step, one_i64], "adamax.global_step", output=updated(GLOBAL_STEP))
    beta1_c = g.const(beta1, _F32, "adamax.beta1")
    b1p_next = g.op("Mul", [b1p, beta1_c], "adamax.beta1_power", output=updated(BETA1_POWER))
    one = g.const(1.0, _F32, "adamax.one")
    bias = g.op("Sub", [one, b1p_next], "adamax.one_minus_beta1_power")
    return StepTensors(step, step_f, bias)


def learning_rate(
    g: StageBuilder,
    state: StateInputs,
    lr: Any,
    group: int,
    step: StepTensors,
    convert_fixed: bool,
) -> ir.Value:
    """The learning rate of ``group`` at the current step, float32, also as ``lr_current``.

    ``lr``: a schedule (emitted on ``step.step_f``), a float32 1-D table (Gather at
    ``step.step``), or a float, which becomes input ``adamax.lr.group<g>`` with that default so
    it can change without a rebuild. ``convert_fixed``: another group's lr is dynamic, so
    MindSpore wraps a fixed lr in ``_ConvertToCell``, which returns ``lr + 1.0 - 1.0`` in
    float32 (rounding it to a multiple of 2**-23; bit-for-bit checked against MindSpore 2.10).
    """
    prefix = f"adamax.group{group}"
    if is_schedule(lr):
        lr_t = lr.emit(g, step.step_f, f"{prefix}.lr")
    elif isinstance(lr, np.ndarray):
        table = g.tensor(lr.astype(_F32), f"{prefix}.lr_table")
        lr_t = g.op("Gather", [table, step.step], f"{prefix}.lr", axis=0)
    else:
        default = np.array(lr, _F32)
        lr_t = state.state(lr_input_name(group), TensorProto.FLOAT, [], default, carried=False)
        if convert_fixed:
            one = g.const(1.0, _F32, "adamax.one")
            lr_t = g.op("Add", [lr_t, one], f"{prefix}.lr_plus_one")
            lr_t = g.op("Sub", [lr_t, one], f"{prefix}.lr_converted")
    # A named copy, so a runtime can read the lr by evaluating only its subgraph.
    g.reserve(lr_current_name(group))
    g.op("Identity", [lr_t], f"{prefix}.lr_current", output=lr_current_name(group))
    return lr_t


def weight_decay(
    g: StageBuilder, wd: Any, group: int, step: StepTensors, loss_scale: float
) -> ir.Value | None:
    """``weight_decay * loss_scale`` of ``group`` as a float32 scalar; None when 0.

    A schedule is emitted on ``step.step_f``, published as ``weight_decay_current`` and
    multiplied in float32 on the graph (MindSpore's ``_WrappedWeightDecay``); a fixed decay is
    multiplied in Python (double) and stored as float32, as MindSpore does.
    """
    prefix = f"adamax.group{group}"
    if not is_schedule(wd):
        return g.const(wd * loss_scale, _F32, f"{prefix}.weight_decay_scaled") if wd > 0 else None
    wd_t = wd.emit(g, step.step_f, f"{prefix}.weight_decay")
    current = g.reserve(weight_decay_current_name(group))
    g.op("Identity", [wd_t], f"{prefix}.weight_decay_current", output=current)
    if loss_scale == 1.0:
        return wd_t
    scale = g.const(loss_scale, _F32, "adamax.loss_scale")
    return g.op("Mul", [wd_t, scale], f"{prefix}.weight_decay_scaled")


def decay_weight(
    g: StageBuilder, prec: Precision, w: ir.Value, grad: ir.Value, wd: ir.Value
) -> ir.Value:
    """``grad + w * wd``: MindSpore's ``Mul`` then ``AddN``, each rounded to the parameter dtype.

    ``wd`` is the float32 scalar of :func:`weight_decay`, cast to the parameter dtype."""
    wd_p = prec.scalar(g, wd, "weight_decay")
    decay = prec.round(g, g.op("Mul", [w, wd_p], f"{prec.prefix}.decay"), "decay")
    decayed = g.op("Add", [decay, grad], f"{prec.prefix}.grad_decayed")
    return prec.round(g, decayed, "grad_decayed")


def centralize_gradient(g: StageBuilder, prec: Precision, grad: ir.Value, rank: int) -> ir.Value:
    """``grad - mean(grad, axes 1..rank-1)``, each op rounded to the parameter dtype.

    Applies only where MindSpore's ``_gradients_centralization`` does (the caller checks: rank
    >= 2 and ``shape[1] % 16 == 0``)."""
    axes = list(range(1, rank))
    mean = g.op("ReduceMean", [grad], f"{prec.prefix}.grad_mean", axes=axes, keepdims=1)
    mean = prec.round(g, mean, "grad_mean")
    centered = g.op("Sub", [grad, mean], f"{prec.prefix}.grad_centralized")
    return prec.round(g, centered, "grad_gc")


def unscale_gradient(
    g: StageBuilder, prec: Precision, grad: ir.Value, loss_scale: float
) -> ir.Value:
    """``grad * (1 / loss_scale)``: the float32 reciprocal cast to the parameter dtype."""
    inverse = prec.const(g, _F32(1.0 / loss_scale), "reciprocal_loss_scale")
    unscaled = g.op("Mul", [grad, inverse], f"{prec.prefix}.grad_unscaled")
    return prec.round(g, unscaled, "grad_unscaled")


def apply_adamax(
    g: StageBuilder,
    prefix: str,
    w: ir.Value,
    m: ir.Value,
    v: ir.Value,
    grad: ir.Value,
    lr: ir.Value,
    hyper: Hyper,
    outputs: tuple[str | None, str | None, str | None] = (None, None, None),
) -> tuple[ir.Value, ir.Value, ir.Value]:
    """MindSpore's ApplyAdaMax in float32: 10 elementwise nodes, in MindSpore's order.

    ``m' = beta1*m + (1-beta1)*g``, ``v' = max(beta2*v, |g|)``,
    ``w' = w - lr * (m' / (v' + eps))`` with ``lr`` already divided by ``1 - beta1_power``.
    Rewriting ``m'`` as ``m + (1-beta1)*(g-m)`` would also take 3 nodes, so nothing is gained
    by departing from MindSpore's rounding. ``outputs``: exact names for m', v', w' (graph
    outputs), or None. Returns m', v', w'.
    """
    beta1, beta2, eps = hyper

    def const(value: float, label: str) -> ir.Value:
        return g.const(np.asarray(value, _F32), _F32, f"adamax.{label}")

    m_b = g.op("Mul", [m, const(beta1, "beta1")], f"{prefix}.m_decayed")
    g_b = g.op("Mul", [grad, const(_F32(1.0) - beta1, "one_minus_beta1")], f"{prefix}.g_scaled")
    m_next = g.op("Add", [m_b, g_b], f"{prefix}.m", output=outputs[0])
    v_b = g.op("Mul", [v, const(beta2, "beta2")], f"{prefix}.v_decayed")
    g_abs = g.op("Abs", [grad], f"{prefix}.grad_abs")
    v_next = g.op("Max", [v_b, g_abs], f"{prefix}.v", output=outputs[1])
    denom = g.op("Add", [v_next, const(eps, "eps")], f"{prefix}.v_eps")
    ratio = g.op("Div", [m_next, denom], f"{prefix}.m_over_v")
    delta = g.op("Mul", [lr, ratio], f"{prefix}.delta")
    w_next = g.op("Sub", [w, delta], f"{prefix}.update", output=outputs[2])
    return m_next, v_next, w_next


@dataclass(frozen=True)
class KernelInputs:
    """One float32 parameter as ApplyAdaMax reads it: its name, shape, element count, and the
    tensors w, m, v, grad."""

    param: str
    dims: list
    numel: int
    w: ir.Value
    m: ir.Value
    v: ir.Value
    grad: ir.Value

    def targets(self) -> tuple[str, str, str]:
        """The state names m', v', w' update, in :func:`apply_adamax`'s order."""
        return m_name(self.param), v_name(self.param), self.param


def pack_buckets(members: list[KernelInputs], bucket_size: int) -> list[list[KernelInputs]]:
    """Consecutive members, at most ``bucket_size`` elements per bucket (one may be alone)."""
    buckets: list[list[KernelInputs]] = [[]]
    filled = 0
    for member in members:
        if buckets[-1] and filled + member.numel > bucket_size:
            buckets.append([])
            filled = 0
        buckets[-1].append(member)
        filled += member.numel
    return buckets


def apply_adamax_buckets(
    g: StageBuilder,
    group: int,
    members: list[KernelInputs],
    lr: ir.Value,
    hyper: Hyper,
    bucket_size: int,
) -> None:
    """:func:`apply_adamax` for small float32 parameters of one group, in flat buckets.

    Each bucket concatenates the flattened w, m, v and gradient of its members (in optimizer
    order), runs :func:`apply_adamax` once and splits w', m', v' back into ``<name>.updated``:
    the same elementwise float32 ops on the same values, so the same bits. A bucket of one
    parameter is updated on its own, as without bucketing.
    """
    flat_shape = g.const(np.array([-1], np.int64), np.int64, "adamax.flat_shape")
    for bi, bucket in enumerate(pack_buckets(members, bucket_size)):
        if len(bucket) == 1:
            k = bucket[0]
            outputs = tuple(updated(t) for t in k.targets())
            apply_adamax(g, f"{k.param}.adamax", k.w, k.m, k.v, k.grad, lr, hyper, outputs)
            continue
        prefix = f"adamax.group{group}.bucket{bi}"
        flat = []
        for label in ("w", "m", "v", "grad"):
            parts = []
            for k in bucket:
                t = getattr(k, label)
                if len(k.dims) != 1:  # Reshape of an input aliases its buffer: no copy
                    t = g.op("Reshape", [t, flat_shape], f"{k.param}.adamax.{label}_flat")
                parts.append(t)
            flat.append(g.op("Concat", parts, f"{prefix}.{label}", axis=0))
        results = apply_adamax(g, prefix, *flat, lr, hyper)
        sizes = g.const(np.array([k.numel for k in bucket], np.int64), np.int64, f"{prefix}.sizes")
        for slot, (result, label) in enumerate(zip(results, ("m", "v", "w"), strict=True)):
            _split_back(g, bucket, slot, result, sizes, f"{prefix}.{label}_split", label)


def _split_back(
    g: StageBuilder,
    bucket: list[KernelInputs],
    slot: int,
    result: ir.Value,
    sizes: ir.Value,
    name: str,
    label: str,
) -> None:
    """Split one flat result of a bucket (``slot`` of m', v', w') into ``<target>.updated``."""
    targets = [updated(k.targets()[slot]) for k in bucket]
    # Reserved graph outputs keep their exact names.
    names = [
        t if len(k.dims) == 1 else g.unique(f"{k.param}.adamax.{label}_flat_next")
        for k, t in zip(bucket, targets, strict=True)
    ]
    pieces = g.op_multi("Split", [result, sizes], names, name, axis=0)
    for k, piece, target in zip(bucket, pieces, targets, strict=True):
        if len(k.dims) != 1:
            shape = g.const(np.array(k.dims, np.int64), np.int64, f"{k.param}.adamax.shape")
            g.op("Reshape", [piece, shape], f"{k.param}.adamax.{label}_unflat", output=target)
