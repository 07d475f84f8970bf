"""Gradients of Conv and ConvTranspose.

dX of Conv is a Conv of dY with the flipped, transposed kernel at stride 1 (onnxruntime's Conv
is faster than its ConvTranspose), else a ConvTranspose; dW is one product per kernel tap of
a strided slice of X with dY (Gemm; batched MatMul per group; Mul + ReduceSum when depthwise),
or for kernels of more than 32 taps one Conv with dY as the kernel. ConvTranspose is the
adjoint of Conv: its dX is a Conv of dY, its dW the same correlation with the roles swapped.
The window geometry (:mod:`.window`) is resolved at build time from static spatial sizes.
"""

from __future__ import annotations

import numpy as np

from ..errors import Unsupported
from ..registry import rule
from .window import back_geometry, check_out, out_size, spatial_dims, window_pads

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
    spatial = spatial_dims(ctx, x, n_sp)
    begins, ends = window_pads(ctx, spatial, kernel_eff, strides, n_sp)
    out_sp = [
        None if h is None else out_size(h, bb, e, k, s, False)
        for h, bb, e, k, s in zip(spatial, begins, ends, kernel_eff, strides, strict=True)
    ]
    out_sp = check_out(ctx, ctx.y(0), out_sp)
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
        pads, opad = back_geometry(ctx, spatial, out_sp, kernel_eff, strides, begins, ends)
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
    spatial = spatial_dims(ctx, x, n_sp)
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
    y_spatial = check_out(ctx, ctx.y(0), y_spatial)
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
