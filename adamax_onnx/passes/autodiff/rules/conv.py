"""Gradients of convolution, pooling, padding and resizing.

Conv, ConvTranspose, MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool, Pad (constant,
edge, reflect, wrap), Resize (nearest and linear).

Geometry (window pads, output sizes, ConvTranspose output_padding) is resolved at build time
from static spatial sizes; the batch dim stays symbolic. With stride 1 (and no ceil_mode) the
geometry does not depend on the spatial sizes, so those may be symbolic too.

Conv: dX is a Conv of dY with the flipped, transposed kernel at stride 1 (onnxruntime's Conv
is faster than its ConvTranspose), else a ConvTranspose; dW is one product per kernel tap of
a strided slice of X with dY (Gemm; batched MatMul per group; Mul + ReduceSum when depthwise),
or for kernels of more than 32 taps one Conv with dY as the kernel.

Ties in max pooling: the gradient goes to the one position the forward kernel reports (its
Indices output, the first maximum of the window, as torch's max_pool does); GlobalMaxPool gives
it to the first maximum of each plane (ArgMax), like torch's adaptive_max_pool.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from ..errors import Unsupported
from ..registry import rule

_INT64_MIN = int(np.iinfo(np.int64).min)
_INT64_MAX = int(np.iinfo(np.int64).max)
#: Kernels with more taps get dW from one Conv with dY as the kernel (fewer nodes).
_MAX_TAPS = 32
#: Below this many (output x input) channels per group, the per-tap products are Gemms too thin
#: to pay off and the one-Conv form is faster too: the digits CNN (1->8->16 channels, 3x3) steps
#: in 0.66 vs 0.84 ms at batch 32 and 15.2 vs 19.1 ms at 1347; resnet18 (64-512 channels) is
#: faster per tap (about 430 vs 480-530 ms at batch 8, 64x64).
_MIN_CHANNEL_PRODUCT = 1024
#: Batch size assumed for cost estimates when the batch dim is symbolic.
_BATCH_GUESS = 16

# -- geometry ---------------------------------------------------------------------------------


def _spatial(ctx, v, n_sp):
    """The spatial dims (after N, C) of ``v``: ints, or None where not static."""
    dims = ctx.dims(v)
    if dims is None:
        return [None] * n_sp
    return [d if isinstance(d, int) else None for d in dims[2:]]


def _window_pads(ctx, spatial, kernel_eff, strides, n_sp):
    """Begin/end pads of a conv/pool window, resolving ``auto_pad`` (static sizes if needed)."""
    auto_pad = ctx.attr("auto_pad", "NOTSET") or "NOTSET"
    if auto_pad == "NOTSET":
        pads = [int(p) for p in ctx.attr("pads", [0] * (2 * n_sp))]
        return pads[:n_sp], pads[n_sp:]
    if auto_pad == "VALID":
        return [0] * n_sp, [0] * n_sp
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begins, ends = [], []
        for size, k, s in zip(spatial, kernel_eff, strides, strict=True):
            if s == 1:
                total = k - 1
            elif size is None:
                raise Unsupported(f"auto_pad={auto_pad} with stride {s} needs static spatial sizes")
            else:
                total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            small, large = total // 2, total - total // 2
            begins.append(small if auto_pad == "SAME_UPPER" else large)
            ends.append(large if auto_pad == "SAME_UPPER" else small)
        return begins, ends
    raise Unsupported(f"auto_pad={auto_pad!r} is not supported")


def _out_size(size, b, e, k_eff, s, ceil):
    """Output positions of a window op (torch's and ONNX's rule for ceil_mode)."""
    span = size + b + e - k_eff
    if not ceil:
        return span // s + 1
    o = -(-span // s) + 1
    if (o - 1) * s >= size + b:  # the last window must start inside the input or begin pad
        o -= 1
    return o


def _transposed_geometry(size, out, k_eff, s, b):
    """(pad_begin, pad_end, output_padding) of a ConvTranspose giving back ``size`` positions.

    The full transposed output has ``s * (out - 1) + k_eff`` positions; the gradient of the
    unpadded input is its slice ``[b, b + size)``, past its end zeros. ``size``/``out`` may be
    None when the stride is 1 and the forward drops nothing: then the result is (b, e, 0).
    """
    full = s * (out - 1) + k_eff
    if full >= b + size:
        return b, full - b - size, 0
    return b, 0, b + size - full


def _back_geometry(ctx, spatial, out_sp, kernel_eff, strides, begins, ends, ceil=False):
    """ConvTranspose pads and output_padding to map a window op's output back to its input."""
    pb, pe, op = [], [], []
    for h, o, k, s, b, e in zip(spatial, out_sp, kernel_eff, strides, begins, ends, strict=True):
        if h is None or o is None:
            if s != 1 or ceil:
                raise Unsupported("strides > 1 (or ceil_mode) need static spatial sizes")
            g = (b, e, 0)  # stride 1: out = h + b + e - k + 1, the full output is h + b + e
        else:
            g = _transposed_geometry(h, o, k, s, b)
        pb.append(g[0])
        pe.append(g[1])
        op.append(g[2])
    return pb + pe, op


def _check_out(ctx, y, out_sp, ceil=False):
    """Cross-check computed output sizes with what shape inference says; fill unknowns.

    With ceil_mode, onnx's shape inference keeps a last window that would start in the end
    padding, which onnxruntime (like torch and onnx.reference) drops: the computed size wins.
    """
    inferred = _spatial(ctx, y, len(out_sp))
    res = []
    for mine, theirs in zip(out_sp, inferred, strict=True):
        if mine is not None and theirs is not None and mine != theirs and not ceil:
            raise Unsupported(f"output spatial size {theirs} differs from the computed {mine}")
        res.append(mine if mine is not None else theirs)
    return res


def _reduce_channels(ctx, dy, rank):
    """Bias gradient: dy summed over every axis but the channel axis."""
    return ctx.reduce_sum(dy, [0, *range(2, rank)], keepdims=False)


def _kernel_dims(ctx, w, n_sp):
    dims = ctx.dims(w)
    if dims is None or not all(isinstance(d, int) for d in dims):
        raise Unsupported("the weight's shape must be static")
    kernel = ctx.attr("kernel_shape")
    kernel = [int(k) for k in kernel] if kernel else list(dims[2:])
    if len(kernel) != n_sp:
        raise Unsupported("kernel_shape does not match the weight's rank")
    return dims, kernel


def _weight_correlation(
    ctx, x, x_spatial, out_spatial, dy, w_dims, group, kernel, strides, dilations, pads
):
    """dW of Conv(x, W) given dy, laid out [Cout, Cin/G, k...]: one product per kernel tap.

    x is laid out [G, Cin/G, N, *spatial] (a block transpose), padded; each of the K kernel
    taps is a strided Slice of it, [G, Cin/G, N*L] (L output positions), and dW[..., tap] is
    dy [G, Cout/G, N*L] times that slice transposed (G = 1: a Gemm with transB; G > 1: a
    MatMul with dy transposed once). ``out_spatial``: dy's spatial sizes (None where not
    static: then every stride must be 1).
    """
    n_sp = len(kernel)
    rank = n_sp + 2
    cin_g, cout_g = w_dims[1], w_dims[0] // group  # dy has Cout = w_dims[0] channels
    depthwise = group > 1 and cin_g == 1
    if int(np.prod(kernel)) > _MAX_TAPS or (
        not depthwise and int(np.prod(kernel)) > 1 and cout_g * cin_g < _MIN_CHANNEL_PRODUCT
    ):
        return _weight_correlation_conv(
            ctx, x, x_spatial, dy, cin_g, group, kernel, strides, dilations, pads
        )
    if depthwise:  # no transposes: per tap, sum over N and L of X's slice times dY
        xt = x
        dy2 = dy if cout_g == 1 else ctx.reshape(dy, [0, group, cout_g, -1])
    elif group == 1:
        xt = ctx.op("Transpose", x, perm=[1, 0, *range(2, rank)])  # [Cin, N, *spatial]
        dy2 = ctx.reshape(ctx.op("Transpose", dy, perm=[1, 0, *range(2, rank)]), [0, -1])
    else:
        if all(d is not None for d in x_spatial):
            grouped = [0, group, cin_g, *x_spatial]
        else:
            grouped = ctx.op("Concat", ctx.i64([0, group, cin_g]), ctx.shape(x, 2), axis=0)
        x5 = ctx.reshape(x, grouped)  # [N, G, Cin/G, *spatial] -> [G, Cin/G, N, *spatial]
        xt = ctx.op("Transpose", x5, perm=[1, 2, 0, *range(3, rank + 1)])
        per_group = ctx.reshape(dy, [0, group, cout_g, -1])  # [N, G, Cout/G, L]
        moved = ctx.op("Transpose", per_group, perm=[1, 0, 3, 2])  # [G, N, L, Cout/G]
        dy2 = ctx.reshape(moved, [0, -1, cout_g])  # [G, N*L, Cout/G]
    lead = 2 if group == 1 or depthwise else 3  # axes before the spatial ones
    xt_rank = lead + n_sp
    sp_axes = list(range(lead, xt_rank))
    if any(pads):
        full = [0] * (2 * xt_rank)
        for k, a in enumerate(sp_axes):
            full[a], full[xt_rank + a] = pads[k], pads[n_sp + k]
        xt = ctx.op("Pad", xt, ctx.i64(full))
    k_eff = [(k - 1) * d + 1 for k, d in zip(kernel, dilations, strict=True)]
    # Small outputs with many channels (late CNN layers): stacking the taps' slices (im2col,
    # N*L*Cin*K values) and one Gemm costs less than interleaving K products (Cout*Cin*K).
    batch = ctx.dims(x)[0] if ctx.dims(x) and isinstance(ctx.dims(x)[0], int) else _BATCH_GUESS
    positions = int(np.prod(out_spatial)) if all(o is not None for o in out_spatial) else None
    im2col = group == 1 and positions is not None and batch * positions <= 2 * w_dims[0]
    parts = []
    for tap in np.ndindex(*kernel):
        starts, ends = [], []
        for k in range(n_sp):
            start = tap[k] * dilations[k]
            o = out_spatial[k]
            if o is not None:
                end = start + strides[k] * (o - 1) + 1
            elif strides[k] == 1:  # out = padded - k_eff + 1: stop k_eff - 1 - start early
                back = k_eff[k] - 1 - start
                end = -back if back else _INT64_MAX
            else:
                raise Unsupported("strides > 1 need static spatial sizes")
            starts.append(start)
            ends.append(end)
        # A 1x1 kernel at stride 1 reads all of x: no Slice (a full copy) for its one tap.
        whole = all(
            starts[k] == 0
            and strides[k] == 1
            and (
                ends[k] == _INT64_MAX
                or (x_spatial[k] is not None and ends[k] >= x_spatial[k] + pads[k] + pads[n_sp + k])
            )
            for k in range(n_sp)
        )
        if whole:
            cols = xt
        else:
            args = [xt, ctx.i64(starts), ctx.i64(ends), ctx.i64(sp_axes)]
            if any(s != 1 for s in strides):
                args.append(ctx.i64(strides))
            cols = ctx.op("Slice", *args)
        if im2col:  # [Cin, 1, N, *out]
            parts.append(ctx.unsqueeze(cols, [1]))
            continue
        if depthwise and cout_g == 1:  # [N, C, *out] * [N, C, *out] -> [C]
            part = ctx.reduce_sum(ctx.op("Mul", cols, dy2), [0, *range(2, rank)], False)
        elif depthwise:  # [N, C, 1, L] * [N, C, Cout/C, L] -> [C, Cout/C]
            prod = ctx.op("Mul", ctx.reshape(cols, [0, group, 1, -1]), dy2)
            part = ctx.reduce_sum(prod, [0, 3], False)
        elif group == 1:  # [Cout, N*L] x [Cin, N*L]^T -> [Cout, Cin]
            part = ctx.op("Gemm", dy2, ctx.reshape(cols, [cin_g, -1]), transB=1)
        else:  # [G, Cin/G, N*L] x [G, N*L, Cout/G] -> [G, Cin/G, Cout/G]
            part = ctx.op("MatMul", ctx.reshape(cols, [group, cin_g, -1]), dy2)
        parts.append(ctx.unsqueeze(part, [-1]))
    if im2col:  # [Cin, K, N, *out] -> [Cin*K, N*L]; [Cout, N*L] x [Cin*K, N*L]^T
        stacked = parts[0] if len(parts) == 1 else ctx.op("Concat", *parts, axis=1)
        cols = ctx.reshape(stacked, [cin_g * len(parts), -1])
        return ctx.reshape(ctx.op("Gemm", dy2, cols, transB=1), [-1, cin_g, *kernel])
    dw = parts[0] if len(parts) == 1 else ctx.op("Concat", *parts, axis=-1)
    if group > 1 and not depthwise:  # [G, Cin/G, Cout/G, K] -> [G, Cout/G, Cin/G, K]
        dw = ctx.op("Transpose", dw, perm=[0, 2, 1, 3])
    return ctx.reshape(dw, [-1, cin_g, *kernel])


def _weight_correlation_conv(ctx, x, x_spatial, dy, cin_g, group, kernel, strides, dilations, pads):
    """dW of Conv(x, W) given dy, laid out [Cout, Cin/G, k...], for kernels of many taps.

    One grouped Conv correlates x with dy: x is laid out [Cin/G, G*N, ...] (batch = input
    channel in the group, channels = group x sample), dy [Cout, N, ...] is the kernel (G
    groups), strides and dilations swap roles; the result [Cin/G, Cout, k'...] is cut to the
    kernel size and transposed to W's layout.
    """
    n_sp = len(kernel)
    rank = n_sp + 2
    perm_swap = [1, 0, *range(2, rank)]
    if group == 1:
        xt = ctx.op("Transpose", x, perm=perm_swap)
    else:
        if all(d is not None for d in x_spatial):
            grouped, batched = [-1, group, cin_g, *x_spatial], [cin_g, -1, *x_spatial]
        else:
            sp = ctx.shape(x, 2)
            grouped = ctx.op("Concat", ctx.i64([-1, group, cin_g]), sp, axis=0)
            batched = ctx.op("Concat", ctx.i64([cin_g, -1]), sp, axis=0)
        # [N, C, ...] -> [N, G, C/G, ...] -> [C/G, G, N, ...] -> [C/G, G*N, ...]
        x5 = ctx.reshape(x, grouped)
        xt = ctx.reshape(ctx.op("Transpose", x5, perm=[2, 1, 0, *range(3, rank + 1)]), batched)
    dyt = ctx.op("Transpose", dy, perm=perm_swap)
    corr = ctx.op(
        "Conv", xt, dyt, group=group, strides=list(dilations), dilations=list(strides), pads=pads
    )
    if not _fits(x_spatial, kernel, strides, dilations, pads):
        corr = ctx.op(
            "Slice",
            corr,
            ctx.i64([0] * n_sp),
            ctx.i64(list(kernel)),
            ctx.i64(list(range(2, rank))),
        )
    return ctx.op("Transpose", corr, perm=perm_swap)


def _fits(spatial, kernel, strides, dilations, pads):
    """Whether the weight correlation is exactly the kernel's size (no Slice needed)."""
    n = len(kernel)
    for a, (h, k, s, d) in enumerate(zip(spatial, kernel, strides, dilations, strict=True)):
        if s == 1:  # (span - out) // d + 1 == k whatever the size
            continue
        if h is None:
            return False
        span = h + pads[a] + pads[n + a]
        out = (span - (k - 1) * d - 1) // s + 1  # the forward's output size
        if (span - (s * (out - 1) + 1)) // d + 1 != k:
            return False
    return True


def _flipped_weight(ctx, w, w_dims, group, n_sp):
    """W [Cout, Cin/G, k...] as the kernel of its transposed Conv: [Cin, Cout/G, k...] with
    every spatial axis reversed."""
    cout, cin_g = w_dims[0], w_dims[1]
    kernel = w_dims[2:]
    if group == 1:
        wt = ctx.op("Transpose", w, perm=[1, 0, *range(2, n_sp + 2)])
    else:
        w5 = ctx.reshape(w, [group, cout // group, cin_g, *kernel])
        wt = ctx.op("Transpose", w5, perm=[0, 2, 1, *range(3, n_sp + 3)])
        wt = ctx.reshape(wt, [group * cin_g, cout // group, *kernel])
    return ctx.op(
        "Slice",
        wt,
        ctx.i64([-1] * n_sp),
        ctx.i64([_INT64_MIN] * n_sp),
        ctx.i64(list(range(2, n_sp + 2))),
        ctx.i64([-1] * n_sp),
    )


# -- Conv -------------------------------------------------------------------------------------


def _conv_geometry(ctx, op: str):
    """(rank, spatial axes, W dims, kernel, strides, dilations, group, dilated kernel) of a
    Conv or ConvTranspose node (its X, W inputs 0 and 1)."""
    x, w = ctx.x(0), ctx.x(1)
    rank = ctx.rank(x) if ctx.dims(x) is not None else ctx.rank(w)
    n_sp = rank - 2
    if n_sp < 1:
        raise Unsupported(f"{op} needs at least one spatial axis")
    w_dims, kernel = _kernel_dims(ctx, w, n_sp)
    strides = [int(s) for s in ctx.attr("strides", [1] * n_sp)]
    dilations = [int(d) for d in ctx.attr("dilations", [1] * n_sp)]
    group = int(ctx.attr("group", 1))
    kernel_eff = [(k - 1) * d + 1 for k, d in zip(kernel, dilations, strict=True)]
    return rank, n_sp, w_dims, kernel, strides, dilations, group, kernel_eff


@rule("Conv", since=1)
def conv(ctx, dys):
    """Y = Conv(X, W) + B: dX = Conv (stride 1) or ConvTranspose of dY with W, dW = a
    correlation of X and dY, dB = dY summed over all but the channel axis."""
    (dy,) = dys
    x, w, b = ctx.x(0), ctx.x(1), ctx.x(2)
    rank, n_sp, w_dims, kernel, strides, dilations, group, kernel_eff = _conv_geometry(ctx, "Conv")
    spatial = _spatial(ctx, x, n_sp)
    begins, ends = _window_pads(ctx, spatial, kernel_eff, strides, n_sp)
    out_sp = [
        None if h is None else _out_size(h, bb, e, k, s, False)
        for h, bb, e, k, s in zip(spatial, begins, ends, kernel_eff, strides, strict=True)
    ]
    out_sp = _check_out(ctx, ctx.y(0), out_sp)
    out = [None, None, None]
    full_pads = [k - 1 - p for k, p in zip(kernel_eff * 2, begins + ends, strict=True)]
    if ctx.needs(0) and all(s == 1 for s in strides) and min(full_pads) >= 0:
        # stride 1: a full Conv of dY with the flipped, transposed kernel (onnxruntime runs
        # Conv faster than ConvTranspose)
        wf = _flipped_weight(ctx, w, w_dims, group, n_sp)
        out[0] = ctx.op(
            "Conv", dy, wf, kernel_shape=kernel, dilations=dilations, group=group, pads=full_pads
        )
    elif ctx.needs(0):
        pads, opad = _back_geometry(ctx, spatial, out_sp, kernel_eff, strides, begins, ends)
        attrs = dict(strides=strides, dilations=dilations, group=group, pads=pads)
        if any(opad):
            attrs["output_padding"] = opad
        out[0] = ctx.op("ConvTranspose", dy, w, kernel_shape=kernel, **attrs)
    if ctx.needs(1):
        out[1] = _weight_correlation(
            ctx,
            x,
            spatial,
            out_sp,
            dy,
            w_dims,
            group,
            kernel,
            strides,
            dilations,
            begins + ends,
        )
    if b is not None and ctx.needs(2):
        out[2] = _reduce_channels(ctx, dy, rank)
    return out


# -- ConvTranspose ----------------------------------------------------------------------------


@rule("ConvTranspose", since=1)
def conv_transpose(ctx, dys):
    """Y = ConvTranspose(X, W) + B, the adjoint of Conv(., W): dX = Conv(dY, W).

    dW is the weight correlation of that Conv with dY as its input and X as its output
    gradient. Pads from ``output_shape`` or ``auto_pad=SAME_*`` are supported when their total
    is even (the split is then the same under every convention).
    """
    (dy,) = dys
    x, w, b = ctx.x(0), ctx.x(1), ctx.x(2)
    rank, n_sp, w_dims, kernel, strides, dilations, group, kernel_eff = _conv_geometry(
        ctx, "ConvTranspose"
    )
    opad = [int(p) for p in ctx.attr("output_padding", [0] * n_sp)]
    if any(p >= s for p, s in zip(opad, strides, strict=True)):
        raise Unsupported("output_padding >= stride is not supported")
    spatial = _spatial(ctx, x, n_sp)
    auto_pad = ctx.attr("auto_pad", "NOTSET") or "NOTSET"
    output_shape = ctx.attr("output_shape")
    if output_shape or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        if any(h is None for h in spatial):
            raise Unsupported("output_shape/auto_pad=SAME need static spatial sizes")
        if output_shape:
            target = [int(o) for o in output_shape][-n_sp:]
        else:
            target = [h * s for h, s in zip(spatial, strides, strict=True)]
        begins = []
        for h, o, k, s, p in zip(spatial, target, kernel_eff, strides, opad, strict=True):
            total = s * (h - 1) + p + k - o
            if total < 0 or total % 2:
                raise Unsupported(f"the implied total padding {total} is odd or negative")
            begins.append(total // 2)
        ends = list(begins)
    elif auto_pad == "VALID":
        begins, ends = [0] * n_sp, [0] * n_sp
    elif auto_pad == "NOTSET":
        pads = [int(p) for p in ctx.attr("pads", [0] * (2 * n_sp))]
        begins, ends = pads[:n_sp], pads[n_sp:]
    else:
        raise Unsupported(f"auto_pad={auto_pad!r} is not supported")
    y_spatial = [
        None if h is None else s * (h - 1) + p + k - bb - e
        for h, s, p, k, bb, e in zip(spatial, strides, opad, kernel_eff, begins, ends, strict=True)
    ]
    y_spatial = _check_out(ctx, ctx.y(0), y_spatial)
    out = [None, None, None]
    attrs = dict(strides=strides, dilations=dilations, group=group, pads=begins + ends)
    if ctx.needs(0):
        out[0] = ctx.op("Conv", dy, w, kernel_shape=kernel, **attrs)
    if ctx.needs(1):
        out[1] = _weight_correlation(
            ctx,
            dy,
            y_spatial,
            spatial,
            x,
            w_dims,
            group,
            kernel,
            strides,
            dilations,
            begins + ends,
        )
    if b is not None and ctx.needs(2):
        out[2] = _reduce_channels(ctx, dy, rank)
    return out


# -- pooling ----------------------------------------------------------------------------------


def _pool_geometry(ctx, x, n_sp, dilations):
    """(spatial, out_sp, kernel, kernel_eff, strides, begins, ends, ceil) of a pooling node."""
    kernel = [int(k) for k in ctx.attr("kernel_shape")]
    if len(kernel) != n_sp:
        raise Unsupported("kernel_shape does not match the input's rank")
    strides = [int(s) for s in ctx.attr("strides", [1] * n_sp)]
    ceil = bool(ctx.attr("ceil_mode", 0))
    kernel_eff = [(k - 1) * d + 1 for k, d in zip(kernel, dilations, strict=True)]
    spatial = _spatial(ctx, x, n_sp)
    begins, ends = _window_pads(ctx, spatial, kernel_eff, strides, n_sp)
    out_sp = [
        None if h is None else _out_size(h, bb, e, k, s, ceil)
        for h, bb, e, k, s in zip(spatial, begins, ends, kernel_eff, strides, strict=True)
    ]
    out_sp = _check_out(ctx, ctx.y(0), out_sp, ceil)
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
    pads, opad = _back_geometry(ctx, spatial, out_sp, kernel_eff, strides, begins, ends, ceil)
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
    pads, opad = _back_geometry(ctx, spatial, out_sp, kernel_eff, strides, begins, ends, ceil)
    attrs = dict(strides=strides, dilations=dilations, pads=pads)
    if any(opad):
        attrs["output_padding"] = opad
    spread = ctx.op("ConvTranspose", planes, window, **attrs)
    return [ctx.reshape(spread, ctx.shape_or_const(x))]


@rule("GlobalAveragePool", since=1)
def global_average_pool(ctx, dys):
    (dy,) = dys
    x = ctx.x(0)
    spatial = _spatial(ctx, x, ctx.rank(x) - 2)
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


# -- Pad --------------------------------------------------------------------------------------


def _full_pads(ctx, rank):
    """Pads as (begins, ends) over every axis, from the pads (and opset-18 axes) inputs."""
    pads = ctx.const_input(1)
    if pads is None:
        raise Unsupported("the pads are computed at run time")
    pads = [int(p) for p in np.atleast_1d(pads)]
    axes = ctx.ints_input_or_attr(3, "axes") if ctx.opset >= 18 else None
    axes = list(range(rank)) if axes is None else [a % rank for a in axes]
    n = len(axes)
    begins, ends = [0] * rank, [0] * rank
    for a, b_, e in zip(axes, pads[:n], pads[n:], strict=True):
        begins[a], ends[a] = b_, e
    return begins, ends


def _slice(ctx, v, axis, start, end, step=1):
    args = [v, ctx.i64([start]), ctx.i64([end]), ctx.i64([axis])]
    if step != 1:
        args.append(ctx.i64([step]))
    return ctx.op("Slice", *args)


def _place(ctx, v, axis, rank, before, after):
    """Zero-pad ``v`` along ``axis`` (constant Pad)."""
    pads = [0] * (2 * rank)
    pads[axis], pads[rank + axis] = before, after
    return ctx.op("Pad", v, ctx.i64(pads))


@rule("Pad", since=13)
def pad(ctx, dys):
    """constant: dX = Pad(dY, -pads) (crops what was padded, zero-fills what was cropped).

    edge/reflect/wrap (static pads, static sizes of the padded axes, no negative pads): per
    axis, the centre of dY plus the padded margins folded back onto the input positions they
    copy (summed for edge, mirrored for reflect, shifted for wrap).
    """
    (dy,) = dys
    x = ctx.x(0)
    mode = ctx.attr("mode", "constant") or "constant"
    out = [None, None, None, None]
    if mode == "constant":
        pads_c = ctx.const_input(1)
        neg = (
            ctx.i64([-int(p) for p in np.atleast_1d(pads_c)])
            if pads_c is not None
            else (ctx.op("Neg", ctx.x(1)))
        )
        axes = ctx.x(3) if ctx.opset >= 18 else None
        dx = ctx.op("Pad", dy, neg, None, axes) if axes is not None else ctx.op("Pad", dy, neg)
        if ctx.needs(0):
            out[0] = dx
        c = ctx.x(2)
        if c is not None and ctx.needs(2):
            dc = ctx.op(
                "Sub", ctx.reduce_sum(dy, None, keepdims=False), ctx.reduce_sum(dx, None, False)
            )
            out[2] = ctx.reshape(dc, ctx.shape_or_const(c)) if ctx.rank(c) else dc
        return out
    if mode not in ("edge", "reflect", "wrap"):
        raise Unsupported(f"mode={mode!r} is not supported")
    if not ctx.needs(0):
        return out
    rank = ctx.rank(x)
    begins, ends = _full_pads(ctx, rank)
    dims = ctx.dims(x)
    g = dy
    for axis in range(rank):
        pb, pe = begins[axis], ends[axis]
        if pb == 0 and pe == 0:
            continue
        n = dims[axis]
        if not isinstance(n, int):
            raise Unsupported(f"mode={mode} needs static sizes of the padded axes")
        if pb < 0 or pe < 0:
            raise Unsupported(f"negative pads with mode={mode} are not supported")
        if mode == "reflect" and max(pb, pe) > n - 1 or mode == "wrap" and max(pb, pe) > n:
            raise Unsupported(f"pads larger than the input with mode={mode}")
        parts = [_slice(ctx, g, axis, pb, pb + n)]
        if mode == "edge":
            if pb:
                s = ctx.reduce_sum(_slice(ctx, g, axis, 0, pb), [axis], keepdims=True)
                parts.append(_place(ctx, s, axis, rank, 0, n - 1))
            if pe:
                s = ctx.reduce_sum(_slice(ctx, g, axis, pb + n, _INT64_MAX), [axis], True)
                parts.append(_place(ctx, s, axis, rank, n - 1, 0))
        elif mode == "reflect":
            if pb:
                s = _slice(ctx, g, axis, pb - 1, _INT64_MIN, -1)  # dY[pb-1 .. 0]
                parts.append(_place(ctx, s, axis, rank, 1, n - 1 - pb))
            if pe:
                s = _slice(ctx, g, axis, pb + n + pe - 1, pb + n - 1, -1)
                parts.append(_place(ctx, s, axis, rank, n - 1 - pe, 1))
        else:  # wrap
            if pb:
                parts.append(_place(ctx, _slice(ctx, g, axis, 0, pb), axis, rank, n - pb, 0))
            if pe:
                s = _slice(ctx, g, axis, pb + n, _INT64_MAX)
                parts.append(_place(ctx, s, axis, rank, 0, n - pe))
        g = parts[0] if len(parts) == 1 else ctx.op("Sum", *parts)
    out[0] = g
    return out


# -- Resize -----------------------------------------------------------------------------------


def _source_coords(ctm, n_in, n_out, scale):
    """Input coordinate of each output position, in float32 as onnxruntime computes it (so
    nearest rounds a coordinate on a boundary the same way)."""
    f = np.float32
    i = np.arange(n_out, dtype=f)
    s = f(scale)
    if ctm == "half_pixel":
        return (i + f(0.5)) / s - f(0.5)
    if ctm == "pytorch_half_pixel":
        return (i + f(0.5)) / s - f(0.5) if n_out > 1 else np.zeros(n_out, f)
    if ctm == "align_corners":
        if n_out == 1:
            return np.zeros(n_out, f)
        return i * f(n_in - 1) / f(n_out - 1)
    if ctm == "asymmetric":
        return i / s
    if ctm == "tf_half_pixel_for_nn":
        return (i + f(0.5)) / s
    if ctm == "half_pixel_symmetric":
        adjustment = f(n_out) / (s * f(n_in))
        offset = f(n_in) / f(2) * (f(1) - adjustment)
        return offset + (i + f(0.5)) / s - f(0.5)
    raise Unsupported(f"coordinate_transformation_mode={ctm!r} is not supported")


def _interpolation_matrix(mode, ctm, nearest_mode, n_in, n_out, scale):
    """M [n_out, n_in] with y = M @ x along one axis."""
    xo = _source_coords(ctm, n_in, n_out, scale).astype(np.float64)
    m = np.zeros((n_out, n_in))
    rows = np.arange(n_out)
    if mode == "nearest":
        if ctm == "half_pixel_symmetric":  # onnxruntime's rounding differs from the formula
            raise Unsupported("nearest with half_pixel_symmetric is not supported")
        rounding = {
            "round_prefer_floor": lambda c: np.ceil(c - 0.5),
            "round_prefer_ceil": lambda c: np.floor(c + 0.5),
            "floor": np.floor,
            "ceil": np.ceil,
        }.get(nearest_mode)
        if rounding is None:
            raise Unsupported(f"nearest_mode={nearest_mode!r} is not supported")
        idx = rounding(xo)  # on xo in float32, as the kernel computes it
        m[rows, np.clip(idx, 0, n_in - 1).astype(np.int64)] = 1.0
        return m
    xo = np.clip(xo, 0, n_in - 1)
    x0 = np.floor(xo).astype(np.int64)
    x1 = np.minimum(x0 + 1, n_in - 1)
    frac = xo - x0
    np.add.at(m, (rows, x0), 1.0 - frac)
    np.add.at(m, (rows, x1), frac)
    return m


def _const_ints(v):
    """A value's integers when it is a constant (initializer or Constant node), else None."""
    if v is None:
        return None
    if v.const_value is not None:
        return [int(a) for a in np.atleast_1d(v.const_value.numpy())]
    node = v.producer()
    if node is not None and node.op_type == "Constant" and "value" in node.attributes:
        return [int(a) for a in np.atleast_1d(node.attributes["value"].value.numpy())]
    return None


def _trace_sizes(v, x):
    """Entries of a run-time shape vector built from ``x``'s shape and constants.

    Each entry is an int (a constant), ``("x", axis)`` (``x``'s dim ``axis``) or None (not
    known). Follows Shape (start/end), Slice and Gather of it, Unsqueeze, Cast and Concat;
    None when ``v`` is made otherwise.
    """
    const = _const_ints(v)
    if const is not None:
        return const
    node = v.producer()
    if node is None or node.domain not in ("", "ai.onnx"):
        return None
    op, ins = node.op_type, node.inputs
    if op == "Shape" and ins[0] is x:
        rank = len(x.shape) if x.shape is not None else None
        if rank is None:
            return None
        start = node.attributes["start"].value if "start" in node.attributes else 0
        end = node.attributes["end"].value if "end" in node.attributes else rank
        return [("x", a) for a in range(rank)][slice(start, end)]
    if op in ("Cast", "Unsqueeze", "Identity"):  # a 0-d value becomes 1-D: same entries
        return _trace_sizes(ins[0], x)
    if op == "Concat":
        parts = [_trace_sizes(i, x) for i in ins]
        return None if any(p is None for p in parts) else [e for p in parts for e in p]
    if op in ("Slice", "Gather"):
        src = _trace_sizes(ins[0], x)
        if src is None:
            return None
        if op == "Gather":
            idx = _const_ints(ins[1])
            return None if idx is None else [src[i] for i in idx]
        starts, ends = _const_ints(ins[1]), _const_ints(ins[2])
        steps = _const_ints(ins[4]) if len(ins) > 4 else [1]
        if starts is None or ends is None or steps is None or len(starts) != 1:
            return None
        return src[slice(starts[0], ends[0], steps[0])]
    return None


@rule("Resize", since=13)
def resize(ctx, dys):
    """nearest/linear Resize is linear in X and separable: Y = M_h X M_w^T along the resized
    axes (the last two at most), with interpolation matrices built from static sizes, so
    dX = M_h^T dY M_w (one MatMul per resized axis)."""
    (dy,) = dys
    if not ctx.needs(0):
        return [None]
    x = ctx.x(0)
    mode = ctx.attr("mode", "nearest") or "nearest"
    ctm = ctx.attr("coordinate_transformation_mode", "half_pixel") or "half_pixel"
    nearest_mode = ctx.attr("nearest_mode", "round_prefer_floor") or "round_prefer_floor"
    if mode not in ("nearest", "linear"):
        raise Unsupported(f"mode={mode!r} is not supported (nearest and linear are)")
    if int(ctx.attr("antialias", 0)):
        raise Unsupported("antialias=1 is not supported")
    if (ctx.attr("keep_aspect_ratio_policy", "stretch") or "stretch") != "stretch":
        raise Unsupported("keep_aspect_ratio_policy other than 'stretch' is not supported")
    rank = ctx.rank(x)
    dims = ctx.dims(x)
    axes = ctx.attr("axes")
    axes = list(range(rank)) if axes is None else [int(a) % rank for a in axes]

    def given(i):
        """The constant's values; None when absent or empty; "runtime" when not constant."""
        if ctx.x(i) is None:
            return None
        v = ctx.const_input(i)
        if v is None:
            return "runtime"
        return None if v.size == 0 else [float(a) for a in v.reshape(-1)]

    scales_in, sizes_in = given(2), given(3)
    y_dims = ctx.dims(ctx.y(0))
    scales, outs = [1.0] * rank, list(dims)
    if scales_in == "runtime":
        raise Unsupported("the scales are computed at run time")
    if scales_in is not None:
        for a, s in zip(axes, scales_in, strict=True):
            scales[a] = s
            if s != 1.0:
                if not isinstance(dims[a], int):
                    raise Unsupported("resized axes must have static sizes")
                outs[a] = int(math.floor(dims[a] * s))
    elif sizes_in is not None:
        if sizes_in == "runtime":  # e.g. Concat(Shape(x)[:2], (h, w)), as torch exports
            traced = _trace_sizes(ctx.x(3), x)
            if traced is None or len(traced) != len(axes):
                traced = [None] * len(axes)
            sizes_in = [
                dims[a] if t == ("x", a) else t if isinstance(t, int) else (y_dims or dims)[a]
                for a, t in zip(axes, traced, strict=True)
            ]
        for a, o in zip(axes, sizes_in, strict=True):
            if o is not None and o == dims[a]:
                continue
            if not isinstance(dims[a], int) or o is None or isinstance(o, str):
                raise Unsupported("resized axes must have static sizes")
            outs[a], scales[a] = int(o), float(o) / dims[a]
    else:
        raise Unsupported("neither scales nor sizes is given")
    if y_dims is not None:
        for o, yd in zip(outs, y_dims, strict=True):
            if isinstance(o, int) and isinstance(yd, int) and o != yd:
                raise Unsupported(f"output size {yd} differs from the computed {o}")
    nn_shift = ctm == "tf_half_pixel_for_nn" and nearest_mode in ("ceil", "round_prefer_ceil")
    g = dy
    for a in range(rank):
        if scales[a] == 1.0 and outs[a] == dims[a] and not (mode == "nearest" and nn_shift):
            continue  # identity
        if not isinstance(dims[a], int):
            raise Unsupported("resized axes must have static sizes")
        m = _interpolation_matrix(mode, ctm, nearest_mode, dims[a], outs[a], scales[a])
        if m.shape[0] == m.shape[1] and np.array_equal(m, np.eye(m.shape[0])):
            continue
        if a == rank - 1:
            g = ctx.op("MatMul", g, ctx.const(m, x))
        elif a == rank - 2:
            g = ctx.op("MatMul", ctx.const(m.T, x), g)
        else:
            raise Unsupported("only the last two axes may be resized")
    return [g]
