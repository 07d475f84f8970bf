"""AdaMax update pass: appends MindSpore ``nn.AdaMax``'s update for every parameter.

Input: a model whose graph has each trained parameter ``p`` as a graph input and a tensor
``p_grad`` holding its gradient (graph input or node output). Output: the same model with the
optimizer state as extra inputs and the updated parameters and state as outputs, named as in
:mod:`passes.contract`. Only standard ONNX ops are emitted.

Stages per parameter, in MindSpore's order (``nn.AdaMax.construct``)::

    g = g + (weight_decay * loss_scale) * w      # decay_weight, when the parameter decays
    g = g - mean(g, axes 1..n-1)                  # gradients_centralization, rank>=2, dim1 % 16 == 0
    g = g * (1 / loss_scale)                      # scale_grad, when loss_scale != 1
    lr = lr(global_step)                          # get_lr, before the increment
    global_step += 1; beta1_power *= beta1
    m = beta1 * m + (1 - beta1) * g
    v = max(beta2 * v, |g|)
    w = w - lr / (1 - beta1_power) * (m / (v + eps))

The scalar ``lr / (1 - beta1_power)`` is computed once per group, not per parameter.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .base import GraphPass, PassResult
from .builder import GraphBuilder
from .contract import (
    BETA1_POWER,
    GLOBAL_STEP,
    grad_name,
    lr_current_name,
    lr_input_name,
    m_name,
    updated,
    v_name,
    weight_decay_current_name,
)

__all__ = ["AdaMaxPass", "tensor_specs"]

#: Float32 parameters with fewer elements are updated together in flat buckets by default.
DEFAULT_BUCKET_SIZE = 65536

_FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16)


def tensor_specs(graph: onnx.GraphProto) -> dict[str, tuple[int, list]]:
    """``name -> (elem_type, dims)`` for graph inputs, outputs, value_info and initializers."""
    specs: dict[str, tuple[int, list]] = {}
    for vi in list(graph.value_info) + list(graph.output) + list(graph.input):
        t = vi.type.tensor_type
        dims = [
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim
        ]
        specs[vi.name] = (t.elem_type, dims)
    for init in graph.initializer:
        specs[init.name] = (init.data_type, list(init.dims))
    return specs


def _is_schedule(obj: Any) -> bool:
    return callable(getattr(obj, "emit", None))


class AdaMaxPass(GraphPass):
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
    :class:`passes.chunking.ChunkUpdates` may put large ones in chunk layout).
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

    def call(self, model: onnx.ModelProto) -> PassResult:
        graph = model.graph
        specs = tensor_specs(graph)
        input_names = {i.name for i in graph.input}
        produced = {o for n in graph.node for o in n.output} | input_names
        for cfg in self.opt.param_configs:
            if cfg.name not in input_names:
                raise ValueError(f"AdaMax pass: parameter {cfg.name!r} is not a graph input")
            if grad_name(cfg.name) not in produced:
                raise ValueError(
                    f"AdaMax pass: no gradient tensor {grad_name(cfg.name)!r} for parameter "
                    f"{cfg.name!r}"
                )
            if specs[cfg.name][0] not in _FLOAT_TYPES:
                raise ValueError(f"AdaMax pass: parameter {cfg.name!r} is not a float tensor")

        taken = {vi.name for vi in list(graph.input) + list(graph.output) + list(graph.value_info)}
        taken |= {i.name for i in graph.initializer} | produced
        taken |= {n.name for n in graph.node}
        g = GraphBuilder(taken)
        new_inputs: list[onnx.ValueInfoProto] = []
        new_outputs: list[onnx.ValueInfoProto] = []
        defaults: list[onnx.TensorProto] = []

        def state_input(
            name: str, elem: int, dims: list, init: np.ndarray, carried: bool = True
        ) -> str:
            """A graph input with a default; ``carried`` ones also get an ``.updated`` output."""
            g.reserve(name)
            new_inputs.append(helper.make_tensor_value_info(name, elem, dims))
            defaults.append(numpy_helper.from_array(init, name))
            if carried:
                g.reserve(updated(name))
                new_outputs.append(helper.make_tensor_value_info(updated(name), elem, dims))
            return name

        f32 = np.float32
        beta1, beta2, eps = f32(self.opt.beta1), f32(self.opt.beta2), f32(self.opt.eps)
        loss_scale = float(self.opt.loss_scale)

        # -- shared state: global_step and beta1_power ------------------------------------------
        step = state_input(GLOBAL_STEP, TensorProto.INT64, [], np.array(0, np.int64))
        b1p = state_input(BETA1_POWER, TensorProto.FLOAT, [], np.array(1.0, f32))
        step_f = g.op("Cast", [step], "adamax.global_step_float", to=TensorProto.FLOAT)
        g.op(
            "Add",
            [step, g.const(1, np.int64, "adamax.one_i64")],
            "adamax.global_step",
            output=updated(GLOBAL_STEP),
        )
        b1p_next = g.op(
            "Mul",
            [b1p, g.const(beta1, f32, "adamax.beta1")],
            "adamax.beta1_power",
            output=updated(BETA1_POWER),
        )
        bias_corr = g.op(
            "Sub", [g.const(1.0, f32, "adamax.one"), b1p_next], "adamax.one_minus_beta1_power"
        )

        # -- per-group scalars: lr(step) / (1 - beta1_power), weight_decay(step) * loss_scale ---
        lr_scaled: dict[int, str] = {}
        wd_scaled: dict[int, str] = {}
        any_dynamic_lr = any(
            _is_schedule(c.lr) or isinstance(c.lr, np.ndarray) for c in self.opt.param_configs
        )
        for cfg in self.opt.param_configs:
            gi = cfg.group
            if gi in lr_scaled:
                continue
            prefix = f"adamax.group{gi}"
            lr = cfg.lr
            if _is_schedule(lr):
                lr_t = lr.emit(g, step_f, f"{prefix}.lr")
            elif isinstance(lr, np.ndarray):
                table = g.tensor(lr.astype(f32), f"{prefix}.lr_table")
                lr_t = g.op("Gather", [table, step], f"{prefix}.lr", axis=0)
            else:
                # A fixed lr is an input with a default, so it can change without a rebuild.
                lr_t = state_input(
                    lr_input_name(gi), TensorProto.FLOAT, [], np.array(lr, f32), carried=False
                )
                if any_dynamic_lr:
                    # MindSpore wraps a fixed group lr in _ConvertToCell when another group's lr
                    # is dynamic; it returns ``lr + 1.0 - 1.0`` in float32, which rounds the lr
                    # to a multiple of 2**-23 (bit-for-bit checked against MindSpore 2.10).
                    one_lr = g.const(1.0, f32, "adamax.one")
                    lr_t = g.op("Add", [lr_t, one_lr], f"{prefix}.lr_plus_one")
                    lr_t = g.op("Sub", [lr_t, one_lr], f"{prefix}.lr_converted")
            # Named copies of the lr in use and of a dynamic weight decay, so a runtime can read
            # them by evaluating only their subgraph (TrainingSession.get_lr).
            g.reserve(lr_current_name(gi))
            g.op("Identity", [lr_t], f"{prefix}.lr_current", output=lr_current_name(gi))
            lr_scaled[gi] = g.op("Div", [lr_t, bias_corr], f"{prefix}.lr_bias_corrected")
            wd = cfg.weight_decay
            if _is_schedule(wd):
                wd_t = wd.emit(g, step_f, f"{prefix}.weight_decay")
                g.reserve(weight_decay_current_name(gi))
                g.op(
                    "Identity",
                    [wd_t],
                    f"{prefix}.weight_decay_current",
                    output=weight_decay_current_name(gi),
                )
                if loss_scale != 1.0:
                    wd_t = g.op(
                        "Mul",
                        [wd_t, g.const(loss_scale, f32, "adamax.loss_scale")],
                        f"{prefix}.weight_decay_scaled",
                    )
                wd_scaled[gi] = wd_t
            elif wd > 0:
                # MindSpore multiplies in Python (double) and stores float32.
                wd_scaled[gi] = g.const(wd * loss_scale, f32, f"{prefix}.weight_decay_scaled")

        # -- per-parameter update --------------------------------------------------------------
        # Bucketed parameters, per group: (name, dims, numel, w, m, v, grad) in float32.
        pending: dict[int, list[tuple[str, list, int, str, str, str, str]]] = {}
        for cfg in self.opt.param_configs:
            p = cfg.name
            elem, dims = specs[p]
            np_dtype = helper.tensor_dtype_to_np_dtype(elem)
            shape = [d if isinstance(d, int) else 0 for d in dims]
            m = state_input(m_name(p), elem, dims, np.zeros(shape, np_dtype))
            v = state_input(v_name(p), elem, dims, np.zeros(shape, np_dtype))

            # float16/bfloat16 parameters: every stage is computed in float32 and rounded to the
            # parameter dtype by an explicit Cast pair exactly where MindSpore rounds (after each
            # weight-decay, centralization and unscaling op). Leaving the ops in float16 is not
            # enough: onnxruntime's CPU provider runs float16 Mul/Add in float32 and drops the
            # intermediate roundings, so results would depend on the execution provider.
            low = elem in (TensorProto.FLOAT16, TensorProto.BFLOAT16)
            s_dt = f32 if low else np_dtype  # the dtype the gradient stages compute in
            # MindSpore's ApplyAdaMax CPU kernel computes in float32 whatever the parameter dtype
            # (float16 and float64 parameters are cast; checked against MindSpore 2.10).
            k_elem = TensorProto.FLOAT
            cast_k = elem != TensorProto.FLOAT

            def c(value: float, label: str, _dt=s_dt, _low=low, _np=np_dtype) -> str:
                arr = np.asarray(value, f32)
                if _low:  # MindSpore casts the float32 scalar to the parameter dtype
                    arr = arr.astype(_np).astype(f32)
                return g.const(arr.astype(_dt), _dt, f"adamax.{label}")

            def scalar(name: str, label: str, _elem=elem, _p=p, _low=low) -> str:
                if _elem == TensorProto.FLOAT:
                    return name
                cast = g.op("Cast", [name], f"{_p}.adamax.{label}", to=_elem)
                if _low:
                    cast = g.op("Cast", [cast], f"{_p}.adamax.{label}_f32", to=TensorProto.FLOAT)
                return cast

            def rnd(name: str, label: str, _low=low, _elem=elem, _p=p) -> str:
                """Round a float32 stage result to the parameter dtype (low precision only)."""
                if not _low:
                    return name
                half = g.op("Cast", [name], f"{_p}.adamax.{label}_rounded", to=_elem)
                return g.op(
                    "Cast", [half], f"{_p}.adamax.{label}_rounded_f32", to=TensorProto.FLOAT
                )

            w_s, grad = p, grad_name(p)  # parameter and gradient in the stage dtype
            numel = int(np.prod(dims)) if all(isinstance(d, int) for d in dims) else 0
            centralized = (
                cfg.grad_centralization
                and len(dims) >= 2
                and isinstance(dims[1], int)
                and dims[1] % 16 == 0
            )
            # onnxruntime's CPU broadcast of a scalar over a tensor whose last dims are 1 (a
            # 1x1 convolution's [O, I, 1, 1] weight) runs per element: a Mul by a scalar over
            # [1280, 320, 1, 1] takes 4 ms against 0.045 ms over [1280, 320]. Such a
            # parameter is updated as a flat view (same elementwise ops, same bits) and its
            # updated tensors reshaped back; small ones are flat in their buckets anyway.
            flat = (
                elem == TensorProto.FLOAT
                and numel >= self.bucket_size
                and len(dims) > 1
                and dims[-1] == 1
            )
            flat_shape = (
                g.const(np.array([numel], np.int64), np.int64, "adamax.flat") if flat else ""
            )
            if flat and not centralized:
                w_s = g.op("Reshape", [p, flat_shape], f"{p}.adamax.w_flat")
                grad = g.op("Reshape", [grad, flat_shape], f"{p}.adamax.grad_flat")
            if low:
                w_s = g.op("Cast", [p], f"{p}.adamax.w_f32", to=k_elem)
                grad = g.op("Cast", [grad], f"{p}.adamax.grad_f32", to=k_elem)
            if cfg.decay and cfg.group in wd_scaled:
                decay = g.op(
                    "Mul",
                    [w_s, scalar(wd_scaled[cfg.group], "weight_decay")],
                    f"{p}.adamax.decay",
                )
                decay = rnd(decay, "decay")
                grad = rnd(g.op("Add", [decay, grad], f"{p}.adamax.grad_decayed"), "grad_decayed")
            if centralized:
                mean = g.op(
                    "ReduceMean",
                    [grad],
                    f"{p}.adamax.grad_mean",
                    axes=list(range(1, len(dims))),
                    keepdims=1,
                )
                mean = rnd(mean, "grad_mean")
                grad = rnd(g.op("Sub", [grad, mean], f"{p}.adamax.grad_centralized"), "grad_gc")
                if flat:
                    w_s = g.op("Reshape", [w_s, flat_shape], f"{p}.adamax.w_flat")
                    grad = g.op("Reshape", [grad, flat_shape], f"{p}.adamax.grad_flat")
            if loss_scale != 1.0:
                grad = g.op(
                    "Mul",
                    [grad, c(f32(1.0 / loss_scale), "reciprocal_loss_scale")],
                    f"{p}.adamax.grad_unscaled",
                )
                grad = rnd(grad, "grad_unscaled")
            # The ApplyAdaMax stage. For float16 (and bfloat16, float64) parameters MindSpore
            # runs its float32 kernel: var, m, v and grad are cast to float32, updated with
            # float32 scalars, and the three results cast back (bit-for-bit checked against
            # MindSpore 2.10 on CPU; the new parameter uses the unrounded float32 m and v).
            w_k, m_k, v_k = w_s, m, v
            if cast_k:
                if not low:
                    w_k = g.op("Cast", [p], f"{p}.adamax.w_f32", to=k_elem)
                    grad = g.op("Cast", [grad], f"{p}.adamax.grad_f32", to=k_elem)
                m_k = g.op("Cast", [m], f"{p}.adamax.m_f32", to=k_elem)
                v_k = g.op("Cast", [v], f"{p}.adamax.v_f32", to=k_elem)

            if flat:
                m_k = g.op("Reshape", [m, flat_shape], f"{p}.adamax.m_flat")
                v_k = g.op("Reshape", [v, flat_shape], f"{p}.adamax.v_flat")
            if not cast_k and 0 < numel < self.bucket_size:
                pending.setdefault(cfg.group, []).append((p, dims, numel, w_k, m_k, v_k, grad))
                g.reserve(updated(p))
                new_outputs.append(helper.make_tensor_value_info(updated(p), elem, dims))
                continue

            def out(name: str, _cast=cast_k or flat) -> dict:
                return {} if _cast else {"output": updated(name)}

            g.reserve(updated(p))
            m_next, v_next, w_next = _apply_adamax(
                g,
                f"{p}.adamax",
                w_k,
                m_k,
                v_k,
                grad,
                scalar(lr_scaled[cfg.group], "lr", k_elem),
                (beta1, beta2, eps),
                (out(m), out(v), out(p)),
            )
            if cast_k:
                for src, state, label in ((m_next, m, "m"), (v_next, v, "v"), (w_next, p, "w")):
                    g.op("Cast", [src], f"{p}.adamax.{label}_cast", to=elem, output=updated(state))
            elif flat:
                shape = g.const(np.array(dims, np.int64), np.int64, f"{p}.adamax.shape")
                for src, state, label in ((m_next, m, "m"), (v_next, v, "v"), (w_next, p, "w")):
                    g.op(
                        "Reshape", [src, shape], f"{p}.adamax.{label}_shaped", output=updated(state)
                    )
            new_outputs.append(helper.make_tensor_value_info(updated(p), elem, dims))

        for gi, members in pending.items():
            _emit_buckets(g, gi, members, lr_scaled[gi], (beta1, beta2, eps), self.bucket_size)
        # -- splice into the graph -------------------------------------------------------------
        if self.drop_gradient_outputs:
            grads = {grad_name(c.name) for c in self.opt.param_configs}
            keep = [o for o in graph.output if o.name not in grads]
            del graph.output[:]
            graph.output.extend(keep)
        graph.node.extend(g.nodes)
        graph.initializer.extend(g.initializers)
        graph.initializer.extend(defaults)
        graph.input.extend(new_inputs)
        graph.output.extend(new_outputs)
        return PassResult(model, True)


def _apply_adamax(
    g: GraphBuilder,
    prefix: str,
    w: str,
    m: str,
    v: str,
    grad: str,
    lr: str,
    hyper: tuple[np.float32, np.float32, np.float32],
    outs: tuple[dict, dict, dict],
) -> tuple[str, str, str]:
    """MindSpore's ApplyAdaMax stage in float32: 10 elementwise nodes, in MindSpore's order.

    ``m' = beta1*m + (1-beta1)*g``, ``v' = max(beta2*v, |g|)``,
    ``w' = w - lr * (m' / (v' + eps))`` with ``lr`` already divided by ``1 - beta1_power``.
    Rewriting ``m'`` as ``m + (1-beta1)*(g-m)`` would also take 3 nodes, so nothing is gained
    by departing from MindSpore's rounding. ``outs`` are the ``output=`` keywords of m', v', w'.
    """
    f32 = np.float32
    beta1, beta2, eps = hyper

    def kc(value: float, label: str) -> str:
        return g.const(np.asarray(value, f32), f32, f"adamax.{label}")

    m_b = g.op("Mul", [m, kc(beta1, "beta1")], f"{prefix}.m_decayed")
    g_b = g.op("Mul", [grad, kc(f32(1.0) - beta1, "one_minus_beta1")], f"{prefix}.g_scaled")
    m_next = g.op("Add", [m_b, g_b], f"{prefix}.m", **outs[0])
    v_b = g.op("Mul", [v, kc(beta2, "beta2")], f"{prefix}.v_decayed")
    g_abs = g.op("Abs", [grad], f"{prefix}.grad_abs")
    v_next = g.op("Max", [v_b, g_abs], f"{prefix}.v", **outs[1])
    denom = g.op("Add", [v_next, kc(eps, "eps")], f"{prefix}.v_eps")
    ratio = g.op("Div", [m_next, denom], f"{prefix}.m_over_v")
    delta = g.op("Mul", [lr, ratio], f"{prefix}.delta")
    w_next = g.op("Sub", [w, delta], f"{prefix}.update", **outs[2])
    return m_next, v_next, w_next


def _emit_buckets(
    g: GraphBuilder,
    group: int,
    members: list[tuple[str, list, int, str, str, str, str]],
    lr: str,
    hyper: tuple[np.float32, np.float32, np.float32],
    bucket_size: int,
) -> None:
    """ApplyAdaMax for small float32 parameters of one group, packed into flat buckets.

    Each bucket concatenates the flattened w, m, v and gradient of its members (in optimizer
    order), runs :func:`_apply_adamax` once and splits w', m', v' back into ``<name>.updated``.
    A bucket of one parameter is updated on its own, as without bucketing.
    """
    buckets: list[list] = [[]]
    filled = 0
    for member in members:
        if buckets[-1] and filled + member[2] > bucket_size:
            buckets.append([])
            filled = 0
        buckets[-1].append(member)
        filled += member[2]
    flat_shape = g.const(np.array([-1], np.int64), np.int64, "adamax.flat_shape")
    for bi, bucket in enumerate(buckets):
        if len(bucket) == 1:
            p, _, _, w, m, v, grad = bucket[0]
            _apply_adamax(
                g,
                f"{p}.adamax",
                w,
                m,
                v,
                grad,
                lr,
                hyper,
                tuple({"output": updated(n)} for n in (m_name(p), v_name(p), p)),
            )
            continue
        prefix = f"adamax.group{group}.bucket{bi}"
        flat = []
        for slot, label in ((3, "w"), (4, "m"), (5, "v"), (6, "grad")):
            parts = []
            for p, dims, _, *tensors in bucket:
                t = tensors[slot - 3]
                if len(dims) != 1:  # Reshape of an input aliases its buffer: no copy
                    t = g.op("Reshape", [t, flat_shape], f"{p}.adamax.{label}_flat")
                parts.append(t)
            flat.append(g.op("Concat", parts, f"{prefix}.{label}", axis=0))
        results = _apply_adamax(g, prefix, *flat, lr, hyper, ({}, {}, {}))
        sizes = g.const(np.array([b[2] for b in bucket], np.int64), np.int64, f"{prefix}.sizes")
        for result, label in zip(results, ("m", "v", "w"), strict=True):
            pieces = []  # reserved graph outputs keep their exact names (op_multi would rename)
            for p, dims, *_ in bucket:
                target = {"m": m_name(p), "v": v_name(p), "w": p}[label]
                pieces.append(
                    updated(target) if len(dims) == 1 else g.unique(f"{p}.adamax.{label}_flat_next")
                )
            g.nodes.append(
                helper.make_node(
                    "Split",
                    [result, sizes],
                    pieces,
                    name=g.unique(f"{prefix}.{label}_split/Split"),
                    axis=0,
                )
            )
            for (p, dims, *_), piece in zip(bucket, pieces, strict=True):
                if len(dims) != 1:
                    target = {"m": m_name(p), "v": v_name(p), "w": p}[label]
                    shape = g.const(np.array(dims, np.int64), np.int64, f"{p}.adamax.shape")
                    g.op(
                        "Reshape",
                        [piece, shape],
                        f"{p}.adamax.{label}_unflat",
                        output=updated(target),
                    )
