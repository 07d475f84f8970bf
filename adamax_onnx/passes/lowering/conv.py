"""Lowering rules of ``ConvGrad``, ``MaxPoolGrad`` and ``AveragePoolGrad``: ConvTranspose and
grouped Conv with the window geometry resolved from static spatial sizes (shape inference);
the batch dimension stays symbolic."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import onnx
from onnx import helper

from .context import RuleContext, Unsupported, attributes, string_attr


def _window_pads(
    attrs: dict, spatial: Sequence[int], kernel_eff: Sequence[int], strides: Sequence[int]
) -> tuple[list[int], list[int]]:
    """Begin/end pads of a conv/pool window, resolving ``auto_pad`` with static sizes."""
    n = len(spatial)
    auto_pad = string_attr(attrs.get("auto_pad"), "NOTSET")
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
    raise Unsupported(f"auto_pad={auto_pad!r} is not supported")


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


def conv_grad(ctx: RuleContext, node: onnx.NodeProto) -> None:
    """ConvGrad(dY, X, W) -> dX, dW, dB for Conv with pads/strides/dilations/groups.

    dX is ConvTranspose(dY, W). dW is one grouped Conv that correlates X with dY: X is laid
    out [Cin/G, G*N, ...] (batch = input channel in the group, channels = group x sample), dY
    [Cout, N, ...] is the kernel (G groups), strides and dilations swap roles; the result
    [Cin/G, Cout, k...] (cut to the kernel size) is transposed to W's layout. dB sums dY over
    every axis but the channel axis.
    """
    attrs = attributes(node)
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
            raise Unsupported(f"the channel count of {x!r} is not static")
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


def max_pool_grad(ctx: RuleContext, node: onnx.NodeProto) -> None:
    """MaxPoolGrad(dY, Indices): dY scatter-added into zeros shaped like MaxPool's input.

    Indices are MaxPool's flat positions into its whole input tensor, as the kernel reads them.
    """
    ctx.need_opset(16, "ScatterElements with reduction='add'")
    dy, indices = node.input[:2]
    base = node.name or node.output[0]
    pool = ctx.producer.get(indices)
    if pool is None or pool.op_type != "MaxPool":
        raise Unsupported(f"its Indices input {indices!r} does not come from a MaxPool node")
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


def average_pool_grad(ctx: RuleContext, node: onnx.NodeProto) -> None:
    """AveragePoolGrad(dY): each dY value, times 1/count of its window, spread over the window.

    The count is the window size (``count_include_pad=1``) or the number of its positions
    inside the input, a static map computed here; the spreading is a ConvTranspose with a
    kernel of ones over each (sample, channel) plane.
    """
    attrs = attributes(node)
    if any(d != 1 for d in attrs.get("dilations", [])):
        raise Unsupported("dilations are not supported")
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
