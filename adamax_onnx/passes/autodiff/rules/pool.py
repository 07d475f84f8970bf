"""Gradients of MaxPool, AveragePool, GlobalAveragePool and GlobalMaxPool.

Ties in max pooling: the gradient goes to the one position the forward kernel reports (its
Indices output, the first maximum of the window, as torch's max_pool does); GlobalMaxPool gives
it to the first maximum of each plane (ArgMax), like torch's adaptive_max_pool. The window
geometry (:mod:`.window`) is resolved at build time from static spatial sizes.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from ..errors import Unsupported
from ..registry import rule
from .window import back_geometry, check_out, out_size, spatial_dims, window_pads


def _pool_geometry(ctx, x, n_sp, dilations):
    """(spatial, out_sp, kernel, kernel_eff, strides, begins, ends, ceil) of a pooling node."""
    kernel = [int(k) for k in ctx.attr("kernel_shape")]
    if len(kernel) != n_sp:
        raise Unsupported("kernel_shape does not match the input's rank")
    strides = [int(s) for s in ctx.attr("strides", [1] * n_sp)]
    ceil = bool(ctx.attr("ceil_mode", 0))
    kernel_eff = [(k - 1) * d + 1 for k, d in zip(kernel, dilations, strict=True)]
    spatial = spatial_dims(ctx, x, n_sp)
    begins, ends = window_pads(ctx, spatial, kernel_eff, strides, n_sp)
    out_sp = [
        None if h is None else out_size(h, bb, e, k, s, ceil)
        for h, bb, e, k, s in zip(spatial, begins, ends, kernel_eff, strides, strict=True)
    ]
    out_sp = check_out(ctx, ctx.y(0), out_sp, ceil)
    return spatial, out_sp, kernel, kernel_eff, strides, begins, ends, ceil


@rule("MaxPool", since=1)
def max_pool(ctx, dys):
    """dY scatter-added into zeros shaped like X, at the positions of the Indices output.

    The indices are the node's own second output (row-major), else those of an extra
    2-output MaxPool. Opset >= 16: one ScatterElements(reduction='add') on the flat tensor.
    Windows that do not overlap (stride >= dilated kernel) take a plain ScatterElements at any
    opset. Overlapping windows at opset 13-15: each dY value is routed to its window tap by a
    mask (tap table == index) and spread by a ConvTranspose with one-hot kernels (overlapping
    windows add up); float16 scatter-adds in float32 (onnxruntime's CPU kernel has no float16
    reduction).
    """
    dy = dys[0]
    if dy is None or not ctx.needs(0):
        return [None]
    x = ctx.x(0)
    rank = ctx.rank(x)
    n_sp = rank - 2
    dilations = [int(d) for d in ctx.attr("dilations", [1] * n_sp)]
    indices = ctx.y(1) if int(ctx.attr("storage_order", 0)) == 0 else None
    if indices is None:
        attrs = {
            k: ctx.attr(k)
            for k in ("auto_pad", "ceil_mode", "dilations", "kernel_shape", "pads", "strides")
            if ctx.attr(k) is not None
        }
        _, indices = ctx.op_multi("MaxPool", x, num_outputs=2, **attrs)
    kernel = [int(k) for k in ctx.attr("kernel_shape")]
    strides = [int(s) for s in ctx.attr("strides", [1] * n_sp)]
    overlap = any((k - 1) * d + 1 > s for k, d, s in zip(kernel, dilations, strides, strict=True))
    if not overlap or ctx.opset >= 16:
        # windows that do not overlap never share an index: a plain scatter is exact
        flat = ctx.i64([-1])
        x_shape = ctx.shape_or_const(x)
        numel = ctx.reduce("ReduceProd", x_shape, None, keepdims=True)
        fp16 = overlap and ctx.dtype(x) != ir.DataType.FLOAT and ctx.dtype(x) != ir.DataType.DOUBLE
        # onnxruntime's CPU ScatterElements adds in float and double only
        zero = ctx.const(0.0, np.float32) if fp16 else ctx.scalar(0.0, x)
        g = ctx.op("Cast", dy, to=ir.DataType.FLOAT) if fp16 else dy
        attrs = {"reduction": "add"} if overlap else {}
        scattered = ctx.op(
            "ScatterElements",
            ctx.op("Expand", zero, numel),
            ctx.reshape(indices, flat),
            ctx.reshape(g, flat),
            axis=0,
            **attrs,
        )
        if fp16:
            scattered = ctx.op("Cast", scattered, to=ctx.dtype(x))
        return [ctx.reshape(scattered, x_shape)]
    if ctx.dtype(x) == ir.DataType.DOUBLE:
        raise Unsupported("overlapping double MaxPool windows need opset >= 16 (ScatterElements)")
    spatial, out_sp, kernel, kernel_eff, strides, begins, ends, ceil = _pool_geometry(
        ctx, x, n_sp, dilations
    )
    if any(d is None for d in spatial) or any(o is None for o in out_sp):
        raise Unsupported("MaxPool's gradient at opset < 16 needs static spatial sizes")
    # taps[k, o...]: the position (in the H*W plane) read by tap k for output o, -1 in padding
    taps_n = int(np.prod(kernel))
    plane = int(np.prod(spatial))
    taps = np.full([taps_n, *out_sp], -1, dtype=np.int64)
    grid = np.indices(out_sp)  # [n_sp, *out_sp]
    for t, tap in enumerate(np.ndindex(*kernel)):
        pos = [grid[a] * strides[a] - begins[a] + tap[a] * dilations[a] for a in range(n_sp)]
        inside = np.logical_and.reduce(
            [(p >= 0) & (p < h) for p, h in zip(pos, spatial, strict=True)]
        )
        flat = np.ravel_multi_index(
            [np.clip(p, 0, h - 1) for p, h in zip(pos, spatial, strict=True)], spatial
        )
        taps[t] = np.where(inside, flat, -1)
    # flat planes [N*C, 1, L] (L output positions) against the table [K, L]
    positions = int(np.prod(out_sp))
    local = ctx.op("Mod", ctx.reshape(indices, [-1, 1, positions]), ctx.i64(plane))
    hit = ctx.op("Equal", local, ctx.i64(taps.reshape(taps_n, positions)))
    dy_planes = ctx.reshape(dy, [-1, 1, positions])
    routed = ctx.op("Where", hit, dy_planes, ctx.scalar(0.0, x))  # [N*C, K, L]
    planes = ctx.reshape(routed, [-1, taps_n, *out_sp])
    onehot = np.eye(taps_n).reshape([taps_n, 1, *kernel])
    pads, opad = back_geometry(ctx, spatial, out_sp, kernel_eff, strides, begins, ends, ceil)
    attrs = dict(strides=strides, dilations=dilations, pads=pads)
    if any(opad):
        attrs["output_padding"] = opad
    spread = ctx.op("ConvTranspose", planes, ctx.const(onehot, x), **attrs)
    return [ctx.reshape(spread, ctx.shape_or_const(x))]


@rule("AveragePool", since=1)
def average_pool(ctx, dys):
    """Each dY value, times 1/count of its window, spread over the window by a ConvTranspose
    with a kernel of ones over each (sample, channel) plane; counts are a build-time map."""
    (dy,) = dys
    x = ctx.x(0)
    rank = ctx.rank(x)
    n_sp = rank - 2
    dilations = [int(d) for d in ctx.attr("dilations", [1] * n_sp)]
    spatial, out_sp, kernel, kernel_eff, strides, begins, ends, ceil = _pool_geometry(
        ctx, x, n_sp, dilations
    )
    include_pad = int(ctx.attr("count_include_pad", 0))
    if any(d is None for d in spatial) or any(o is None for o in out_sp):
        raise Unsupported("AveragePool's gradient needs static spatial sizes")
    counts = np.ones(out_sp, dtype=np.int64)
    for axis, (h, o, k, s, bb, e, d) in enumerate(
        zip(spatial, out_sp, kernel, strides, begins, ends, dilations, strict=True)
    ):
        pos = (np.arange(o) * s - bb)[:, None] + d * np.arange(k)[None, :]
        lo, hi = (-bb, h + e) if include_pad else (0, h)
        per_axis = ((pos >= lo) & (pos < hi)).sum(axis=1)
        counts = counts * per_axis.reshape([-1 if i == axis else 1 for i in range(n_sp)])
    planes = ctx.reshape(dy, [-1, 1, *out_sp])
    if np.any(counts != counts.flat[0]):
        planes = ctx.op("Mul", planes, ctx.const((1.0 / counts)[None, None], x))
        scale = 1.0
    else:
        scale = 1.0 / float(counts.flat[0])
    window = ctx.const(np.full([1, 1, *kernel], scale), x)
    pads, opad = back_geometry(ctx, spatial, out_sp, kernel_eff, strides, begins, ends, ceil)
    attrs = dict(strides=strides, dilations=dilations, pads=pads)
    if any(opad):
        attrs["output_padding"] = opad
    spread = ctx.op("ConvTranspose", planes, window, **attrs)
    return [ctx.reshape(spread, ctx.shape_or_const(x))]


@rule("GlobalAveragePool", since=1)
def global_average_pool(ctx, dys):
    (dy,) = dys
    x = ctx.x(0)
    spatial = spatial_dims(ctx, x, ctx.rank(x) - 2)
    if all(d is not None for d in spatial):
        g = ctx.op("Mul", dy, ctx.scalar(1.0 / float(np.prod(spatial)), x))
    else:
        size = ctx.reduce("ReduceProd", ctx.shape(x, 2), None, keepdims=False)
        g = ctx.op("Div", dy, ctx.cast_like(size, x))
    return [ctx.op("Expand", g, ctx.shape_or_const(x))]


@rule("GlobalMaxPool", since=1)
def global_max_pool(ctx, dys):
    """dY goes to the first maximum of each plane (ArgMax), like torch's adaptive_max_pool."""
    (dy,) = dys
    x = ctx.x(0)
    flat = ctx.reshape(x, [0, 0, -1])
    first = ctx.op("ArgMax", flat, axis=2, keepdims=1)
    zeros = ctx.op("Expand", ctx.scalar(0.0, x), ctx.shape(flat))
    scattered = ctx.op("ScatterElements", zeros, first, ctx.reshape(dy, [0, 0, -1]), axis=2)
    return [ctx.reshape(scattered, ctx.shape_or_const(x))]
