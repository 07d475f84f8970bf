"""Window geometry shared by the convolution and pooling rules.

Pads (``auto_pad`` resolved), output sizes (with ``ceil_mode``) and the ConvTranspose pads and
output_padding that map a window op's output back onto its input. Geometry is resolved at build
time from static spatial sizes; the batch dim stays symbolic. With stride 1 (and no ceil_mode)
it does not depend on the spatial sizes, so those may be symbolic too.
"""

from __future__ import annotations

import math

from ..errors import Unsupported

__all__ = ["back_geometry", "check_out", "out_size", "spatial_dims", "window_pads"]


def spatial_dims(ctx, v, n_sp):
    """The spatial dims (after N, C) of ``v``: ints, or None where not static."""
    dims = ctx.dims(v)
    if dims is None:
        return [None] * n_sp
    return [d if isinstance(d, int) else None for d in dims[2:]]


def window_pads(ctx, spatial, kernel_eff, strides, n_sp):
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


def out_size(size, b, e, k_eff, s, ceil):
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


def back_geometry(ctx, spatial, out_sp, kernel_eff, strides, begins, ends, ceil=False):
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


def check_out(ctx, y, out_sp, ceil=False):
    """Cross-check computed output sizes with what shape inference says; fill unknowns.

    With ceil_mode, onnx's shape inference keeps a last window that would start in the end
    padding, which onnxruntime (like torch and onnx.reference) drops: the computed size wins.
    """
    inferred = spatial_dims(ctx, y, len(out_sp))
    res = []
    for mine, theirs in zip(out_sp, inferred, strict=True):
        if mine is not None and theirs is not None and mine != theirs and not ceil:
            raise Unsupported(f"output spatial size {theirs} differs from the computed {mine}")
        res.append(mine if mine is not None else theirs)
    return res
