"""Gradient of Resize (nearest and linear): the transposed interpolation matrices.

The matrices are built at build time from static sizes of the resized axes, with the source
coordinates computed in float32 as onnxruntime computes them.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import Unsupported
from ..registry import rule


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
