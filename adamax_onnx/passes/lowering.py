"""Lowering pass: rewrite the training-build ops of a gradient graph into standard ONNX ops.

onnxruntime-training's gradient builder emits ops that only the training build runs: most in
the ``com.microsoft`` domain (``ReluGrad``, ``ConvGrad``, ...), two even in the default domain
without an ONNX schema (``MaxPoolGrad``, ``AveragePoolGrad``). :class:`LowerToStandard` replaces
each of them, node by node, with standard ONNX ops computing the same numbers, so the training
model runs on stock onnxruntime, other execution providers and ``onnx.reference``.

One rule per op type (see :data:`RULES`); each rule writes exactly the outputs of the node it
replaces, so consumers are untouched. A rule follows the formula of onnxruntime-training
1.19.2's CPU kernel, in the same order of operations where that is free (e.g. ``Scale`` with
``scale_down`` multiplies by ``1/scale`` as the kernel does). Rules that need sizes the kernel
took from the graph's shape information (``MaxPoolGrad``'s output, ``AveragePoolGrad``'s and
``ConvGrad``'s spatial sizes) read them from ONNX shape inference; the batch dimension stays
symbolic.

Ops without a rule, or attributes a rule does not cover, raise :class:`UnloweredOpsError`
naming every such node; nothing is left half-lowered silently.

The rules need default-domain opset >= 13 (``ReduceSum`` with an ``axes`` input) and, for the
scatter-based rules (``GatherGrad``, ``MaxPoolGrad``), opset >= 16 (``reduction="add"``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, defs, helper

from .base import GraphPass, PassResult
from .builder import GraphBuilder

__all__ = [
    "LowerToStandard",
    "UnloweredOpsError",
    "RULES",
    "COVERAGE_RULES",
    "lowered_op_types",
    "nonstandard_nodes",
]

_STANDARD_DOMAINS = ("", "ai.onnx")
_MIN_OPSET = 13


class UnloweredOpsError(RuntimeError):
    """Some nodes could not be lowered; ``nodes`` lists ``(op_type, node_name, reason)``."""

    def __init__(self, nodes: Sequence[tuple[str, str, str]]):
        self.nodes = list(nodes)
        lines = [f"{op} (node {name!r}): {why}" for op, name, why in self.nodes]
        super().__init__(
            "the training graph holds op(s) that have no standard-ONNX lowering: "
            + "; ".join(lines)
        )


class _Unsupported(Exception):
    """Raised by a rule for a variant of its op it does not lower (message: the reason)."""


def _is_standard(node: onnx.NodeProto, opset: int) -> bool:
    if node.domain not in _STANDARD_DOMAINS:
        return False
    try:
        defs.get_schema(node.op_type, opset, "")
    except defs.SchemaError:
        return False
    return True


def _default_opset(model: onnx.ModelProto) -> int:
    for o in model.opset_import:
        if o.domain in _STANDARD_DOMAINS:
            return o.version
    return 1


def nonstandard_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Nodes of the main graph that are not standard ONNX ops at the model's opset."""
    opset = _default_opset(model)
    return [n for n in model.graph.node if not _is_standard(n, opset)]


# ---------------------------------------------------------------------------------------------
# Rule context: shape/type facts about the graph, plus emission helpers.
# ---------------------------------------------------------------------------------------------


@dataclass
class _TensorInfo:
    elem_type: int | None
    dims: list[int | str | None] | None  # None: rank unknown


class _Ctx:
    """What a rule may use: a GraphBuilder, inferred shapes/types, producers, the opset."""

    def __init__(self, model: onnx.ModelProto, g: GraphBuilder) -> None:
        self.g = g
        self.opset = _default_opset(model)
        self.info: dict[str, _TensorInfo] = {}
        try:
            inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
        except Exception:  # inference is best effort; rules report what they miss
            inferred = model
        graph = inferred.graph
        for vi in list(graph.value_info) + list(graph.input) + list(graph.output):
            t = vi.type.tensor_type
            dims = None
            if t.HasField("shape"):
                dims = [
                    d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                    for d in t.shape.dim
                ]
            self.info[vi.name] = _TensorInfo(t.elem_type or None, dims)
        for init in graph.initializer:
            self.info[init.name] = _TensorInfo(init.data_type, list(init.dims))
        self.producer = {o: n for n in model.graph.node for o in n.output if o}

    # -- facts -------------------------------------------------------------------------------
    def dims(self, name: str) -> list[int | str | None]:
        info = self.info.get(name)
        if info is None or info.dims is None:
            raise _Unsupported(f"the shape of tensor {name!r} is unknown")
        return info.dims

    def rank(self, name: str) -> int:
        return len(self.dims(name))

    def static_dims(self, name: str, axes: Sequence[int]) -> list[int]:
        dims = self.dims(name)
        out = []
        for a in axes:
            d = dims[a]
            if not isinstance(d, int) or d <= 0:
                raise _Unsupported(f"dimension {a} of tensor {name!r} is not a static size")
            out.append(d)
        return out

    def dtype(self, name: str) -> int:
        info = self.info.get(name)
        if info is None or not info.elem_type:
            raise _Unsupported(f"the element type of tensor {name!r} is unknown")
        return info.elem_type

    def np_dtype(self, name: str) -> np.dtype:
        return np.dtype(helper.tensor_dtype_to_np_dtype(self.dtype(name)))

    def need_opset(self, version: int, what: str) -> None:
        if self.opset < version:
            raise _Unsupported(
                f"{what} needs default-domain opset >= {version}, the model has {self.opset}"
            )

    # -- emission ----------------------------------------------------------------------------
    def op(
        self, op_type: str, inputs: Sequence[str], name: str, output: str | None = None, **attrs
    ) -> str:
        return self.g.op(op_type, inputs, name, output=output, **attrs)

    def const(self, value, dtype, name: str) -> str:
        return self.g.const(value, dtype=dtype, name=name)

    def i64(self, value, name: str = "const") -> str:
        return self.g.const(value, dtype=np.int64, name=name)

    def reduce_sum(
        self, x: str, axes: Sequence[int], name: str, keepdims: int = 1, output: str | None = None
    ) -> str:
        return self.op(
            "ReduceSum", [x, self.i64(list(axes), "axes")], name, output=output, keepdims=keepdims
        )

    def cast_to(self, x: str, like: str, name: str) -> str:
        """``x`` cast to ``like``'s element type (no node when the types already agree)."""
        if self.dtype(x) == self.dtype(like):
            return x
        return self.op("Cast", [x], name, to=self.dtype(like))


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _str(value, default: str) -> str:
    if value is None:
        return default
    return value.decode() if isinstance(value, bytes) else str(value)


def _only(node: onnx.NodeProto, allowed: dict[str, object]) -> dict:
    """Attributes of ``node``; raises for one whose value the rule does not handle."""
    attrs = _attrs(node)
    for key, value in attrs.items():
        if key in allowed and allowed[key] is not None and value != allowed[key]:
            raise _Unsupported(f"attribute {key}={value!r} is not supported")
    return attrs


# ---------------------------------------------------------------------------------------------
# Rules. Each takes (ctx, node), emits standard nodes that write node.output, returns nothing.
# ---------------------------------------------------------------------------------------------

Rule = Callable[[_Ctx, onnx.NodeProto], None]


def _relu_grad(ctx: _Ctx, node: onnx.NodeProto) -> None:
    """ReluGrad(dY, X) = dY where X > 0 else 0 (X may be Relu's input or output)."""
    dy, x = node.input[:2]
    base = node.name or node.output[0]
    zero = ctx.const(0, ctx.np_dtype(x), "zero")
    positive = ctx.op("Greater", [x, zero], f"{base}.positive")
    ctx.op("Where", [positive, dy, zero], base, output=node.output[0])


def _sigmoid_grad(ctx: _Ctx, node: onnx.NodeProto) -> None:
    """SigmoidGrad(dY, Y) = dY * Y * (1 - Y), Y = sigmoid(X)."""
    dy, y = node.input[:2]
    base = node.name or node.output[0]
    one = ctx.const(1, ctx.np_dtype(y), "one")
    one_minus = ctx.op("Sub", [one, y], f"{base}.one_minus_y")
    dy_y = ctx.op("Mul", [dy, y], f"{base}.dy_y")
    ctx.op("Mul", [dy_y, one_minus], base, output=node.output[0])


def _tanh_grad(ctx: _Ctx, node: onnx.NodeProto) -> None:
    """TanhGrad(dY, Y) = dY * (1 - Y * Y), Y = tanh(X)."""
    dy, y = node.input[:2]
    base = node.name or node.output[0]
    one = ctx.const(1, ctx.np_dtype(y), "one")
    y2 = ctx.op("Mul", [y, y], f"{base}.y_squared")
    one_minus = ctx.op("Sub", [one, y2], f"{base}.one_minus_y2")
    ctx.op("Mul", [dy, one_minus], base, output=node.output[0])


def _softmax_axes(ctx: _Ctx, node: onnx.NodeProto, y: str) -> list[int]:
    """Opset-13 forms reduce over ``axis`` alone; the legacy forms over ``axis`` .. last."""
    axis = int(_attrs(node).get("axis", -1 if node.op_type.endswith("_13") else 1))
    if node.op_type.endswith("_13"):
        return [axis]
    rank = ctx.rank(y)
    axis = axis + rank if axis < 0 else axis
    return list(range(axis, rank))


def _softmax_grad(ctx: _Ctx, node: onnx.NodeProto) -> None:
    """SoftmaxGrad(dY, Y) = (dY - sum(dY * Y, axis)) * Y."""
    dy, y = node.input[:2]
    base = node.name or node.output[0]
    axes = _softmax_axes(ctx, node, y)
    dot = ctx.reduce_sum(ctx.op("Mul", [dy, y], f"{base}.dy_y"), axes, f"{base}.dot")
    centered = ctx.op("Sub", [dy, dot], f"{base}.centered")
    ctx.op("Mul", [centered, y], base, output=node.output[0])


def _log_softmax_grad(ctx: _Ctx, node: onnx.NodeProto) -> None:
    """LogSoftmaxGrad(dY, Y) = dY - exp(Y) * sum(dY, axis), Y = log_softmax(X)."""
    dy, y = node.input[:2]
    base = node.name or node.output[0]
    axes = _softmax_axes(ctx, node, y)
    total = ctx.reduce_sum(dy, axes, f"{base}.sum_dy")
    prob = ctx.op("Exp", [y], f"{base}.prob")
    ctx.op(
        "Sub", [dy, ctx.op("Mul", [prob, total], f"{base}.prob_sum")], base, output=node.output[0]
    )


def _softmax_cross_entropy_loss_grad(ctx: _Ctx, node: onnx.NodeProto) -> None:
    """SoftmaxCrossEntropyLossGrad(dY, log_prob, label[, weight, ignore_index]).

    d_logits = (exp(log_prob) - onehot(label)) * f, where per sample ``f`` is dY (reduction
    none) or the scalar dY divided, for "mean", by the number (or total weight) of the
    samples not ignored; each sample is also scaled by its class weight, and ignored samples
    get 0. The class axis is 1 (logits [N, C, d1, ...], labels [N, d1, ...]).
    """
    attrs = _attrs(node)
    reduction = _str(attrs.get("reduction"), "mean")
    if reduction not in ("mean", "sum", "none"):
        raise _Unsupported(f"reduction={reduction!r} is not supported")
    dy, log_prob, label = node.input[:3]
    weight = node.input[3] if len(node.input) > 3 and node.input[3] else None
    ignore = node.input[4] if len(node.input) > 4 and node.input[4] else None
    if ignore is None and "ignore_index" in attrs:
        ignore = ctx.i64(int(attrs["ignore_index"]), "ignore_index")
    base = node.name or node.output[0]
    ft = ctx.np_dtype(log_prob)

    prob = ctx.op("Exp", [log_prob], f"{base}.prob")
    # A scalar depth (onnx.reference's OneHot does not take the 1-element form).
    num_classes = ctx.op(
        "Gather",
        [ctx.op("Shape", [log_prob], f"{base}.shape"), ctx.i64(1, "one64")],
        f"{base}.num_classes",
    )
    if ctx.dtype(label) != TensorProto.INT64:
        label = ctx.op("Cast", [label], f"{base}.label64", to=TensorProto.INT64)
    keep = None  # bool mask of the samples that count
    if ignore is not None:
        keep = ctx.op("Not", [ctx.op("Equal", [label, ignore], f"{base}.ignored")], f"{base}.kept")
        label = ctx.op("Where", [keep, label, ctx.i64(0, "zero64")], f"{base}.safe_label")
    onehot = ctx.op(
        "OneHot", [label, num_classes, ctx.const([0, 1], ft, "off_on")], f"{base}.onehot", axis=1
    )
    diff = ctx.op("Sub", [prob, onehot], f"{base}.prob_minus_onehot")

    # Per-sample factor (shape of label), or None for "every sample counts 1".
    per_sample = None
    if weight is not None:
        per_sample = ctx.op("Gather", [weight, label], f"{base}.sample_weight")
    if keep is not None:
        keep_f = ctx.op("Cast", [keep], f"{base}.kept_f", to=ctx.dtype(log_prob))
        per_sample = (
            keep_f
            if per_sample is None
            else ctx.op("Mul", [per_sample, keep_f], f"{base}.sample_weight_kept")
        )

    scaled_dy = dy
    if reduction == "mean":
        if per_sample is not None:
            # Empty axes: the sum over all samples (kept ones, weighted).
            denom = ctx.reduce_sum(per_sample, [], f"{base}.total_weight", keepdims=0)
        else:
            denom = ctx.op(
                "Cast",
                [ctx.op("Size", [label], f"{base}.count")],
                f"{base}.count_f",
                to=ctx.dtype(log_prob),
            )
        # The kernel leaves dY unscaled when nothing counts (denominator 0).
        zero = ctx.const(0, ft, "zero")
        is_zero = ctx.op("Equal", [denom, zero], f"{base}.denominator_is_zero")
        safe = ctx.op("Where", [is_zero, ctx.const(1, ft, "one"), denom], f"{base}.denominator")
        scaled_dy = ctx.op("Div", [dy, safe], f"{base}.dy_scaled")
    factor = scaled_dy
    if per_sample is not None:
        factor = ctx.op("Mul", [per_sample, scaled_dy], f"{base}.sample_factor")
    if reduction == "none" or per_sample is not None:
        factor = ctx.op("Unsqueeze", [factor, ctx.i64([1])], f"{base}.factor_per_class")
    ctx.op("Mul", [diff, factor], base, output=node.output[0])


def _scale(ctx: _Ctx, node: onnx.NodeProto) -> None:
    """Scale(X, scale) = X * scale, or X * (1 / scale) when ``scale_down`` (as the kernel)."""
    x, s = node.input[:2]
    base = node.name or node.output[0]
    factor = ctx.cast_to(s, x, f"{base}.scale_cast")
    if int(_attrs(node).get("scale_down", 0)):
        factor = ctx.op("Reciprocal", [factor], f"{base}.inverse_scale")
    ctx.op("Mul", [x, factor], base, output=node.output[0])


def _fused_matmul(ctx: _Ctx, node: onnx.NodeProto) -> None:
    """FusedMatMul(A, B) = alpha * op(A) @ op(B); op transposes the last two axes if asked."""
    attrs = _only(node, {"transBatchA": 0, "transBatchB": 0})
    a, b = node.input[:2]
    base = node.name or node.output[0]

    def maybe_t(name: str, flag: str) -> str:
        if not int(attrs.get(flag, 0)):
            return name
        rank = ctx.rank(name)
        if rank < 2:
            raise _Unsupported(f"{flag}=1 on rank-{rank} input {name!r}")
        perm = list(range(rank - 2)) + [rank - 1, rank - 2]
        return ctx.op("Transpose", [name], f"{base}.{flag}", perm=perm)

    a, b = maybe_t(a, "transA"), maybe_t(b, "transB")
    alpha = float(attrs.get("alpha", 1.0))
    if alpha == 1.0:
        ctx.op("MatMul", [a, b], base, output=node.output[0])
    else:
        prod = ctx.op("MatMul", [a, b], f"{base}.product")
        ctx.op(
            "Mul",
            [prod, ctx.const(alpha, ctx.np_dtype(node.input[0]), "alpha")],
            base,
            output=node.output[0],
        )


def _layer_norm_grad(ctx: _Ctx, node: onnx.NodeProto) -> None:
    """LayerNormalizationGrad(dY, X, scale, mean, inv_std) -> dX, dScale, dBias.

    With xhat = (X - mean) * inv_std, B = dY * scale * inv_std (the kernel's names):
    dX = B - mean(B) - xhat * mean(B * xhat) over the normalized axes;
    dScale = sum(dY * xhat), dBias = sum(dY) over the leading axes.
    """
    attrs = _attrs(node)
    dy, x, scale, mean, inv_std = node.input[:5]
    base = node.name or node.output[0]
    rank = ctx.rank(x)
    axis = int(attrs.get("axis", -1))
    axis = axis + rank if axis < 0 else axis
    norm_axes = list(range(axis, rank))
    lead_axes = list(range(axis))
    mean = ctx.cast_to(mean, x, f"{base}.mean_cast")
    inv_std = ctx.cast_to(inv_std, x, f"{base}.inv_std_cast")
    width = ctx.op(
        "Cast",
        [
            ctx.op(
                "ReduceProd",
                [
                    ctx.op(
                        "Slice",
                        [ctx.op("Shape", [x], f"{base}.x_shape"), ctx.i64([axis]), ctx.i64([rank])],
                        f"{base}.norm_shape",
                    )
                ],
                f"{base}.norm_size",
                keepdims=0,
            )
        ],
        f"{base}.norm_size_f",
        to=ctx.dtype(x),
    )

    xhat = ctx.op("Mul", [ctx.op("Sub", [x, mean], f"{base}.x_centered"), inv_std], f"{base}.xhat")
    b = ctx.op("Mul", [ctx.op("Mul", [dy, scale], f"{base}.dy_scale"), inv_std], f"{base}.B")
    if node.output[0]:
        c = ctx.op("Mul", [b, xhat], f"{base}.C")
        mean_b = ctx.op(
            "Div", [ctx.reduce_sum(b, norm_axes, f"{base}.sum_B"), width], f"{base}.mean_B"
        )
        mean_c = ctx.op(
            "Div", [ctx.reduce_sum(c, norm_axes, f"{base}.sum_C"), width], f"{base}.mean_C"
        )
        centered = ctx.op("Sub", [b, mean_b], f"{base}.B_centered")
        ctx.op(
            "Sub",
            [centered, ctx.op("Mul", [xhat, mean_c], f"{base}.xhat_mean_C")],
            f"{base}.dX",
            output=node.output[0],
        )
    if not lead_axes and any(node.output[1:3]):
        raise _Unsupported("axis=0 (no leading axes to sum the scale and bias gradients over)")
    if len(node.output) > 1 and node.output[1]:
        a = ctx.op("Mul", [dy, xhat], f"{base}.A")
        ctx.reduce_sum(a, lead_axes, f"{base}.dScale", keepdims=0, output=node.output[1])
    if len(node.output) > 2 and node.output[2]:
        ctx.reduce_sum(dy, lead_axes, f"{base}.dBias", keepdims=0, output=node.output[2])


def _gather_grad(ctx: _Ctx, node: onnx.NodeProto) -> None:
    """GatherGrad(shape, indices, dY): zeros(shape) with dY scatter-added at the indices."""
    ctx.need_opset(16, "ScatterND with reduction='add'")
    shape, indices, dy = node.input[:3]
    base = node.name or node.output[0]
    rank = ctx.static_dims(shape, [0])[0]
    q = ctx.rank(indices)
    axis = int(_attrs(node).get("axis", 0))
    axis = axis + rank if axis < 0 else axis

    if ctx.dtype(indices) != TensorProto.INT64:
        indices = ctx.op("Cast", [indices], f"{base}.indices64", to=TensorProto.INT64)
    size = ctx.op("Gather", [shape, ctx.i64([axis])], f"{base}.axis_size")
    negative = ctx.op("Less", [indices, ctx.i64(0, "zero64")], f"{base}.negative")
    wrapped = ctx.op("Add", [indices, size], f"{base}.wrapped")
    indices = ctx.op("Where", [negative, wrapped, indices], f"{base}.indices_normalized")
    index_nd = ctx.op("Unsqueeze", [indices, ctx.i64([-1])], f"{base}.index_nd")

    if axis == 0:
        zeros = ctx.op(
            "ConstantOfShape",
            [shape],
            f"{base}.zeros",
            value=helper.make_tensor("zero", ctx.dtype(dy), [1], [0]),
        )
        ctx.op("ScatterND", [zeros, index_nd, dy], base, output=node.output[0], reduction="add")
        return
    # Move the gathered axis to the front, scatter along it, move it back.
    data_perm = [axis] + list(range(axis)) + list(range(axis + 1, rank))
    dy_perm = (
        list(range(axis, axis + q))
        + list(range(axis))
        + list(range(axis + q, axis + q + rank - axis - 1))
    )
    inverse = [data_perm.index(i) for i in range(rank)]
    moved_shape = ctx.op("Gather", [shape, ctx.i64(data_perm)], f"{base}.moved_shape")
    zeros = ctx.op(
        "ConstantOfShape",
        [moved_shape],
        f"{base}.zeros",
        value=helper.make_tensor("zero", ctx.dtype(dy), [1], [0]),
    )
    dy_moved = ctx.op("Transpose", [dy], f"{base}.dy_moved", perm=dy_perm)
    moved = ctx.op("ScatterND", [zeros, index_nd, dy_moved], f"{base}.scattered", reduction="add")
    ctx.op("Transpose", [moved], base, output=node.output[0], perm=inverse)


# -- convolution and pooling ------------------------------------------------------------------


def _window_pads(
    attrs: dict, spatial: Sequence[int], kernel_eff: Sequence[int], strides: Sequence[int]
) -> tuple[list[int], list[int]]:
    """Begin/end pads of a conv/pool window, resolving ``auto_pad`` with static sizes."""
    n = len(spatial)
    auto_pad = _str(attrs.get("auto_pad"), "NOTSET")
    if auto_pad == "NOTSET":
        pads = list(attrs.get("pads", [0] * (2 * n)))
        return pads[:n], pads[n:]
    if auto_pad == "VALID":
        return [0] * n, [0] * n
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begins, ends = [], []
        for size, k, s in zip(spatial, kernel_eff, strides, strict=True):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            small, large = total // 2, total - total // 2
            begins.append(small if auto_pad == "SAME_UPPER" else large)
            ends.append(large if auto_pad == "SAME_UPPER" else small)
        return begins, ends
    raise _Unsupported(f"auto_pad={auto_pad!r} is not supported")


def _transposed_geometry(
    size: int, out: int, kernel_eff: int, stride: int, begin: int
) -> tuple[int, int, int]:
    """(pad_begin, pad_end, output_padding) of a ConvTranspose giving back ``size`` positions.

    The full transposed output has ``stride * (out - 1) + kernel_eff`` positions; the gradient
    of the unpadded input is its slice ``[begin, begin + size)``, past its end zeros.
    """
    full = stride * (out - 1) + kernel_eff
    if full >= begin + size:
        return begin, full - begin - size, 0
    return begin, 0, begin + size - full


def _conv_grad(ctx: _Ctx, node: onnx.NodeProto) -> None:
    """ConvGrad(dY, X, W) -> dX, dW, dB for Conv with pads/strides/dilations/groups.

    dX is ConvTranspose(dY, W). dW is one grouped Conv that correlates X with dY: X is laid
    out [Cin/G, G*N, ...] (batch = input channel in the group, channels = group x sample), dY
    [Cout, N, ...] is the kernel (G groups), strides and dilations swap roles; the result
    [Cin/G, Cout, k...] (cut to the kernel size) is transposed to W's layout. dB sums dY over
    every axis but the channel axis.
    """
    attrs = _attrs(node)
    dy, x, w = node.input[:3]
    base = node.name or node.output[0]
    rank = ctx.rank(x)
    n_sp = rank - 2
    x_dims = ctx.dims(x)
    w_spatial = ctx.static_dims(w, range(2, rank))
    kernel = list(attrs.get("kernel_shape", w_spatial))
    strides = list(attrs.get("strides", [1] * n_sp))
    dilations = list(attrs.get("dilations", [1] * n_sp))
    group = int(attrs.get("group", 1))
    kernel_eff = [(k - 1) * d + 1 for k, d in zip(kernel, dilations, strict=True)]
    spatial = ctx.static_dims(x, range(2, rank))
    begins, ends = _window_pads(attrs, spatial, kernel_eff, strides)
    out_sp = [
        (h + b + e - k) // s + 1
        for h, b, e, k, s in zip(spatial, begins, ends, kernel_eff, strides, strict=True)
    ]

    if node.output[0]:
        geo = [
            _transposed_geometry(h, o, k, s, b)
            for h, o, k, s, b in zip(spatial, out_sp, kernel_eff, strides, begins, strict=True)
        ]
        ctx.op(
            "ConvTranspose",
            [dy, w],
            f"{base}.dX",
            output=node.output[0],
            strides=strides,
            dilations=dilations,
            group=group,
            pads=[g[0] for g in geo] + [g[1] for g in geo],
            output_padding=[g[2] for g in geo],
        )
    if len(node.output) > 1 and node.output[1]:
        c_in = x_dims[1]
        if not isinstance(c_in, int):
            raise _Unsupported(f"the channel count of {x!r} is not static")
        cin_g = c_in // group
        # X [N, C, ...] -> [N, G, C/G, ...] -> [C/G, G, N, ...] -> [C/G, G*N, ...]
        x5 = ctx.op("Reshape", [x, ctx.i64([-1, group, cin_g, *spatial])], f"{base}.x_grouped")
        xt = ctx.op(
            "Transpose", [x5], f"{base}.x_by_channel", perm=[2, 1, 0] + list(range(3, rank + 1))
        )
        xt = ctx.op("Reshape", [xt, ctx.i64([cin_g, -1, *spatial])], f"{base}.x_batched")
        dyt = ctx.op("Transpose", [dy], f"{base}.dy_as_kernel", perm=[1, 0] + list(range(2, rank)))
        corr = ctx.op(
            "Conv",
            [xt, dyt],
            f"{base}.correlation",
            group=group,
            strides=dilations,
            dilations=strides,
            pads=begins + ends,
        )
        cut = ctx.op(
            "Slice",
            [corr, ctx.i64([0] * n_sp), ctx.i64(kernel), ctx.i64(list(range(2, rank)))],
            f"{base}.kernel_window",
        )
        ctx.op(
            "Transpose",
            [cut],
            f"{base}.dW",
            output=node.output[1],
            perm=[1, 0] + list(range(2, rank)),
        )
    if len(node.output) > 2 and node.output[2]:
        ctx.reduce_sum(
            dy, [0] + list(range(2, rank)), f"{base}.dB", keepdims=0, output=node.output[2]
        )


def _max_pool_grad(ctx: _Ctx, node: onnx.NodeProto) -> None:
    """MaxPoolGrad(dY, Indices): dY scatter-added into zeros shaped like MaxPool's input.

    Indices are MaxPool's flat positions into its whole input tensor, as the kernel reads them.
    """
    ctx.need_opset(16, "ScatterElements with reduction='add'")
    dy, indices = node.input[:2]
    base = node.name or node.output[0]
    pool = ctx.producer.get(indices)
    if pool is None or pool.op_type != "MaxPool":
        raise _Unsupported(f"its Indices input {indices!r} does not come from a MaxPool node")
    x = pool.input[0]
    x_shape = ctx.op("Shape", [x], f"{base}.x_shape")
    numel = ctx.op("ReduceProd", [x_shape], f"{base}.x_size", keepdims=1)
    zeros = ctx.op(
        "ConstantOfShape",
        [numel],
        f"{base}.zeros",
        value=helper.make_tensor("zero", ctx.dtype(dy), [1], [0]),
    )
    flat = ctx.i64([-1], "flat")
    scattered = ctx.op(
        "ScatterElements",
        [
            zeros,
            ctx.op("Reshape", [indices, flat], f"{base}.indices_flat"),
            ctx.op("Reshape", [dy, flat], f"{base}.dy_flat"),
        ],
        f"{base}.scattered",
        axis=0,
        reduction="add",
    )
    ctx.op("Reshape", [scattered, x_shape], base, output=node.output[0])


def _average_pool_grad(ctx: _Ctx, node: onnx.NodeProto) -> None:
    """AveragePoolGrad(dY): each dY value, times 1/count of its window, spread over the window.

    The count is the window size (``count_include_pad=1``) or the number of its positions
    inside the input, a static map computed here; the spreading is a ConvTranspose with a
    kernel of ones over each (sample, channel) plane.
    """
    attrs = _attrs(node)
    if any(d != 1 for d in attrs.get("dilations", [])):
        raise _Unsupported("dilations are not supported")
    dy = node.input[0]
    dx = node.output[0]
    base = node.name or dx
    rank = ctx.rank(dx)
    n_sp = rank - 2
    channels, *spatial = ctx.static_dims(dx, range(1, rank))
    kernel = list(attrs["kernel_shape"])
    strides = list(attrs.get("strides", [1] * n_sp))
    begins, ends = _window_pads(attrs, spatial, kernel, strides)
    ceil = int(attrs.get("ceil_mode", 0))
    rounding = math.ceil if ceil else math.floor
    out_sp = []
    for h, b, e, k, s in zip(spatial, begins, ends, kernel, strides, strict=True):
        o = int(rounding((h + b + e - k) / s)) + 1
        if ceil and (o - 1) * s >= h + b:  # the last window must start inside the input
            o -= 1
        out_sp.append(o)
    include_pad = int(attrs.get("count_include_pad", 0))
    counts = np.ones(out_sp, dtype=np.int64)
    for axis, (h, o, k, s, b) in enumerate(
        zip(spatial, out_sp, kernel, strides, begins, strict=True)
    ):
        start = np.arange(o) * s - b
        inside = np.minimum(start + k, h) - np.maximum(start, 0)
        per_axis = np.full(o, k) if include_pad else inside
        counts = counts * per_axis.reshape([-1 if i == axis else 1 for i in range(n_sp)])
    ft = ctx.np_dtype(dy)
    inverse = (ft.type(1) / counts.astype(ft)).astype(ft)
    scaled = ctx.op(
        "Mul",
        [dy, ctx.const(inverse.reshape([1, 1, *out_sp]), ft, f"{base}.inverse_count")],
        f"{base}.dy_scaled",
    )
    planes = ctx.op("Reshape", [scaled, ctx.i64([-1, 1, *out_sp])], f"{base}.dy_planes")
    ones = ctx.const(np.ones([1, 1, *kernel]), ft, f"{base}.window")
    geo = [
        _transposed_geometry(h, o, k, s, b)
        for h, o, k, s, b in zip(spatial, out_sp, kernel, strides, begins, strict=True)
    ]
    spread = ctx.op(
        "ConvTranspose",
        [planes, ones],
        f"{base}.spread",
        strides=strides,
        pads=[g[0] for g in geo] + [g[1] for g in geo],
        output_padding=[g[2] for g in geo],
    )
    ctx.op("Reshape", [spread, ctx.i64([-1, channels, *spatial])], base, output=dx)


#: ``(domain, op_type) -> rule``. The table in docs/README lists the same ops.
RULES: dict[tuple[str, str], Rule] = {
    ("com.microsoft", "SoftmaxCrossEntropyLossGrad"): _softmax_cross_entropy_loss_grad,
    ("com.microsoft", "ReluGrad"): _relu_grad,
    ("com.microsoft", "SigmoidGrad"): _sigmoid_grad,
    ("com.microsoft", "TanhGrad"): _tanh_grad,
    ("com.microsoft", "SoftmaxGrad_13"): _softmax_grad,
    ("com.microsoft", "SoftmaxGrad"): _softmax_grad,
    ("com.microsoft", "LogSoftmaxGrad_13"): _log_softmax_grad,
    ("com.microsoft", "LogSoftmaxGrad"): _log_softmax_grad,
    ("com.microsoft", "Scale"): _scale,
    ("com.microsoft", "FusedMatMul"): _fused_matmul,
    ("com.microsoft", "TransposeMatMul"): _fused_matmul,
    ("com.microsoft", "LayerNormalizationGrad"): _layer_norm_grad,
    ("com.microsoft", "GatherGrad"): _gather_grad,
    ("com.microsoft", "ConvGrad"): _conv_grad,
    ("", "MaxPoolGrad"): _max_pool_grad,
    ("", "AveragePoolGrad"): _average_pool_grad,
}


def _sum_as_adds(ctx: _Ctx, node: onnx.NodeProto) -> None:
    """Sum(a, b, c, ...) = ((a + b) + c) + ..., the order in which the kernel accumulates."""
    base = node.name or node.output[0]
    if len(node.input) == 1:
        ctx.op("Identity", [node.input[0]], base, output=node.output[0])
        return
    acc = node.input[0]
    for i, term in enumerate(node.input[1:], start=1):
        last = i == len(node.input) - 1
        acc = ctx.op(
            "Add", [acc, term], f"{base}.partial{i}", output=node.output[0] if last else None
        )


def _size_as_shape_product(ctx: _Ctx, node: onnx.NodeProto) -> None:
    """Size(X) = product of Shape(X), an int64 scalar."""
    base = node.name or node.output[0]
    shape = ctx.op("Shape", [node.input[0]], f"{base}.shape")
    ctx.op("ReduceProd", [shape], base, output=node.output[0], keepdims=0)


#: Standard ops rewritten into more common standard ops (``coverage=True``): gradient graphs
#: accumulate with ``Sum`` and count with ``Size``, which some execution providers (the ggml
#: plugin, for one) lack, so one such node would send the whole graph back to the CPU provider.
COVERAGE_RULES: dict[tuple[str, str], Rule] = {
    ("", "Sum"): _sum_as_adds,
    ("", "Size"): _size_as_shape_product,
}


def lowered_op_types() -> list[str]:
    """``domain::op_type`` of every op the pass lowers."""
    return [f"{d or 'ai.onnx'}::{op}" for d, op in RULES]


class LowerToStandard(GraphPass):
    """Replace every non-standard node of the main graph by standard ONNX ops.

    Args:
        coverage: also rewrite ``Sum`` and ``Size`` (see :data:`COVERAGE_RULES`), in training
            graphs that held non-standard ops (graphs already standard are left untouched).

    Raises:
        UnloweredOpsError: listing each node that has no rule or whose variant its rule does
            not support (nothing is returned half-lowered).
    """

    def __init__(self, coverage: bool = True) -> None:
        self.coverage = coverage

    def call(self, model: onnx.ModelProto) -> PassResult:
        graph = model.graph
        opset = _default_opset(model)
        todo = [n for n in graph.node if not _is_standard(n, opset)]
        if not todo:
            return PassResult(model, False)
        failures: list[tuple[str, str, str]] = []
        if opset < _MIN_OPSET:
            failures = [
                (
                    n.op_type,
                    n.name,
                    f"lowering needs default-domain opset >= {_MIN_OPSET}, the model has {opset}",
                )
                for n in todo
            ]
            raise UnloweredOpsError(failures)
        taken = {i.name for i in graph.input} | {i.name for i in graph.initializer}
        taken |= {o for n in graph.node for o in n.output} | {n.name for n in graph.node}
        g = GraphBuilder(taken)
        ctx = _Ctx(model, g)
        new_nodes: list[onnx.NodeProto] = []
        for node in graph.node:
            if _is_standard(node, opset):
                widen = COVERAGE_RULES.get((node.domain, node.op_type)) if self.coverage else None
                if widen is None:
                    new_nodes.append(node)
                else:
                    start = len(g.nodes)
                    widen(ctx, node)
                    new_nodes.extend(g.nodes[start:])
                continue
            rule = RULES.get((node.domain, node.op_type))
            if rule is None:
                domain = node.domain or "ai.onnx"
                failures.append(
                    (node.op_type, node.name, f"no lowering rule for {domain}::{node.op_type}")
                )
                continue
            start = len(g.nodes)
            try:
                rule(ctx, node)
            except _Unsupported as exc:
                failures.append((node.op_type, node.name, str(exc)))
                del g.nodes[start:]
                continue
            new_nodes.extend(g.nodes[start:])
        if failures:
            raise UnloweredOpsError(failures)
        del graph.node[:]
        graph.node.extend(new_nodes)
        graph.initializer.extend(g.initializers)
        used = {n.domain for n in graph.node}
        keep = [o for o in model.opset_import if o.domain in _STANDARD_DOMAINS or o.domain in used]
        del model.opset_import[:]
        model.opset_import.extend(keep)
        return PassResult(model, True)
