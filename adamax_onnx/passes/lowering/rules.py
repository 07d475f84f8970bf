"""Lowering rules of the activation, softmax, loss, scaling, matmul, layer-norm and gather
gradients, and the coverage rewrites of ``Sum`` and ``Size``: one function per op, each writing
exactly the outputs of the node it replaces (the table, :data:`RULES`, is in the package)."""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from .context import RuleContext, Unsupported, attributes, only_attributes, string_attr


def relu_grad(ctx: RuleContext, node: onnx.NodeProto) -> None:
    """ReluGrad(dY, X) = dY where X > 0 else 0 (X may be Relu's input or output)."""
    dy, x = node.input[:2]
    base = node.name or node.output[0]
    zero = ctx.const(0, ctx.np_dtype(x), "zero")
    positive = ctx.op("Greater", [x, zero], f"{base}.positive")
    ctx.op("Where", [positive, dy, zero], base, output=node.output[0])


def sigmoid_grad(ctx: RuleContext, node: onnx.NodeProto) -> None:
    """SigmoidGrad(dY, Y) = dY * Y * (1 - Y), Y = sigmoid(X)."""
    dy, y = node.input[:2]
    base = node.name or node.output[0]
    one = ctx.const(1, ctx.np_dtype(y), "one")
    one_minus = ctx.op("Sub", [one, y], f"{base}.one_minus_y")
    dy_y = ctx.op("Mul", [dy, y], f"{base}.dy_y")
    ctx.op("Mul", [dy_y, one_minus], base, output=node.output[0])


def tanh_grad(ctx: RuleContext, node: onnx.NodeProto) -> None:
    """TanhGrad(dY, Y) = dY * (1 - Y * Y), Y = tanh(X)."""
    dy, y = node.input[:2]
    base = node.name or node.output[0]
    one = ctx.const(1, ctx.np_dtype(y), "one")
    y2 = ctx.op("Mul", [y, y], f"{base}.y_squared")
    one_minus = ctx.op("Sub", [one, y2], f"{base}.one_minus_y2")
    ctx.op("Mul", [dy, one_minus], base, output=node.output[0])


def _softmax_axes(ctx: RuleContext, node: onnx.NodeProto, y: str) -> list[int]:
    """Opset-13 forms reduce over ``axis`` alone; the legacy forms over ``axis`` .. last."""
    axis = int(attributes(node).get("axis", -1 if node.op_type.endswith("_13") else 1))
    if node.op_type.endswith("_13"):
        return [axis]
    rank = ctx.rank(y)
    axis = axis + rank if axis < 0 else axis
    return list(range(axis, rank))


def softmax_grad(ctx: RuleContext, node: onnx.NodeProto) -> None:
    """SoftmaxGrad(dY, Y) = (dY - sum(dY * Y, axis)) * Y."""
    dy, y = node.input[:2]
    base = node.name or node.output[0]
    axes = _softmax_axes(ctx, node, y)
    dot = ctx.reduce_sum(ctx.op("Mul", [dy, y], f"{base}.dy_y"), axes, f"{base}.dot")
    centered = ctx.op("Sub", [dy, dot], f"{base}.centered")
    ctx.op("Mul", [centered, y], base, output=node.output[0])


def log_softmax_grad(ctx: RuleContext, node: onnx.NodeProto) -> None:
    """LogSoftmaxGrad(dY, Y) = dY - exp(Y) * sum(dY, axis), Y = log_softmax(X)."""
    dy, y = node.input[:2]
    base = node.name or node.output[0]
    axes = _softmax_axes(ctx, node, y)
    total = ctx.reduce_sum(dy, axes, f"{base}.sum_dy")
    prob = ctx.op("Exp", [y], f"{base}.prob")
    ctx.op(
        "Sub", [dy, ctx.op("Mul", [prob, total], f"{base}.prob_sum")], base, output=node.output[0]
    )


def softmax_cross_entropy_loss_grad(ctx: RuleContext, node: onnx.NodeProto) -> None:
    """SoftmaxCrossEntropyLossGrad(dY, log_prob, label[, weight, ignore_index]).

    d_logits = (exp(log_prob) - onehot(label)) * f, where per sample ``f`` is dY (reduction
    none) or the scalar dY divided, for "mean", by the number (or total weight) of the
    samples not ignored; each sample is also scaled by its class weight, and ignored samples
    get 0. The class axis is 1 (logits [N, C, d1, ...], labels [N, d1, ...]).
    """
    attrs = attributes(node)
    reduction = string_attr(attrs.get("reduction"), "mean")
    if reduction not in ("mean", "sum", "none"):
        raise Unsupported(f"reduction={reduction!r} is not supported")
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


def scale(ctx: RuleContext, node: onnx.NodeProto) -> None:
    """Scale(X, scale) = X * scale, or X * (1 / scale) when ``scale_down`` (as the kernel)."""
    x, s = node.input[:2]
    base = node.name or node.output[0]
    factor = ctx.cast_to(s, x, f"{base}.scale_cast")
    if int(attributes(node).get("scale_down", 0)):
        factor = ctx.op("Reciprocal", [factor], f"{base}.inverse_scale")
    ctx.op("Mul", [x, factor], base, output=node.output[0])


def fused_matmul(ctx: RuleContext, node: onnx.NodeProto) -> None:
    """FusedMatMul(A, B) = alpha * op(A) @ op(B); op transposes the last two axes if asked."""
    attrs = only_attributes(node, {"transBatchA": 0, "transBatchB": 0})
    a, b = node.input[:2]
    base = node.name or node.output[0]

    def maybe_t(name: str, flag: str) -> str:
        if not int(attrs.get(flag, 0)):
            return name
        rank = ctx.rank(name)
        if rank < 2:
            raise Unsupported(f"{flag}=1 on rank-{rank} input {name!r}")
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


def layer_norm_grad(ctx: RuleContext, node: onnx.NodeProto) -> None:
    """LayerNormalizationGrad(dY, X, scale, mean, inv_std) -> dX, dScale, dBias.

    With xhat = (X - mean) * inv_std, B = dY * scale * inv_std (the kernel's names):
    dX = B - mean(B) - xhat * mean(B * xhat) over the normalized axes;
    dScale = sum(dY * xhat), dBias = sum(dY) over the leading axes.
    """
    attrs = attributes(node)
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
        raise Unsupported("axis=0 (no leading axes to sum the scale and bias gradients over)")
    if len(node.output) > 1 and node.output[1]:
        a = ctx.op("Mul", [dy, xhat], f"{base}.A")
        ctx.reduce_sum(a, lead_axes, f"{base}.dScale", keepdims=0, output=node.output[1])
    if len(node.output) > 2 and node.output[2]:
        ctx.reduce_sum(dy, lead_axes, f"{base}.dBias", keepdims=0, output=node.output[2])


def gather_grad(ctx: RuleContext, node: onnx.NodeProto) -> None:
    """GatherGrad(shape, indices, dY): zeros(shape) with dY scatter-added at the indices."""
    ctx.need_opset(16, "ScatterND with reduction='add'")
    shape, indices, dy = node.input[:3]
    base = node.name or node.output[0]
    rank = ctx.static_dims(shape, [0])[0]
    q = ctx.rank(indices)
    axis = int(attributes(node).get("axis", 0))
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


def sum_as_adds(ctx: RuleContext, node: onnx.NodeProto) -> None:
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


def size_as_shape_product(ctx: RuleContext, node: onnx.NodeProto) -> None:
    """Size(X) = product of Shape(X), an int64 scalar."""
    base = node.name or node.output[0]
    shape = ctx.op("Shape", [node.input[0]], f"{base}.shape")
    ctx.op("ReduceProd", [shape], base, output=node.output[0], keepdims=0)
