"""Gradient rules of passes/autodiff/rules/conv.py against torch autograd and central differences."""

from __future__ import annotations

import numpy as np
import pytest
import torch.nn.functional as F

from tests.gradcheck import check_op

R = np.random.default_rng(0)


def _r(*shape):
    return R.standard_normal(shape)


def _same_pads(size, k, s, upper=True):
    total = max((-(-size // s) - 1) * s + k - size, 0)
    small, large = total // 2, total - total // 2
    return (small, large) if upper else (large, small)


# -- Conv ---------------------------------------------------------------------------------------

CONV2D = [
    # name, x shape, w shape, attrs
    ("plain", (2, 3, 5, 5), (4, 3, 3, 3), {}),
    ("pads_strides", (2, 3, 6, 6), (4, 3, 3, 3), {"pads": [1, 0, 2, 1], "strides": [2, 2]}),
    ("dilations", (1, 2, 6, 5), (2, 2, 2, 3), {"dilations": [2, 1], "strides": [1, 2]}),
    ("groups", (2, 4, 5, 5), (6, 2, 3, 3), {"group": 2, "pads": [1, 1, 1, 1]}),
    ("depthwise", (2, 3, 6, 6), (3, 1, 3, 3), {"group": 3, "strides": [2, 2], "pads": [1] * 4}),
    ("same_upper", (1, 2, 6, 5), (3, 2, 3, 2), {"auto_pad": "SAME_UPPER", "strides": [2, 2]}),
    ("same_lower", (1, 2, 5, 6), (3, 2, 2, 3), {"auto_pad": "SAME_LOWER", "strides": [2, 1]}),
    ("valid", (1, 2, 5, 5), (3, 2, 2, 2), {"auto_pad": "VALID", "strides": [2, 2]}),
]


def _conv_torch(attrs, xs, ws):
    def fn(x, w, b=None):
        n = x.dim() - 2
        strides = attrs.get("strides", [1] * n)
        dil = attrs.get("dilations", [1] * n)
        k = list(w.shape[2:])
        keff = [(kk - 1) * d + 1 for kk, d in zip(k, dil, strict=True)]
        ap = attrs.get("auto_pad", "NOTSET")
        if ap == "NOTSET":
            p = attrs.get("pads", [0] * 2 * n)
            begins, ends = p[:n], p[n:]
        elif ap == "VALID":
            begins = ends = [0] * n
        else:
            pp = [
                _same_pads(sz, ke, s, ap == "SAME_UPPER")
                for sz, ke, s in zip(xs[2:], keff, strides, strict=True)
            ]
            begins, ends = [a for a, _ in pp], [b_ for _, b_ in pp]
        torch_pad = []
        for bb, ee in zip(reversed(begins), reversed(ends), strict=True):
            torch_pad += [bb, ee]
        x = F.pad(x, torch_pad)
        conv = F.conv1d if n == 1 else F.conv2d if n == 2 else F.conv3d
        return conv(x, w, b, stride=strides, dilation=dil, groups=attrs.get("group", 1))

    return fn


@pytest.mark.parametrize("name,xs,ws,attrs", CONV2D, ids=[c[0] for c in CONV2D])
def test_conv2d(name, xs, ws, attrs):
    check_op(
        "Conv",
        {"x": _r(*xs), "w": _r(*ws), "b": _r(ws[0])},
        attrs=attrs,
        torch_fn=_conv_torch(attrs, xs, ws),
    )


def test_conv1d_no_bias():
    attrs = {"pads": [2, 1], "strides": [2], "dilations": [2]}
    check_op(
        "Conv",
        {"x": _r(2, 3, 9), "w": _r(2, 3, 3)},
        attrs=attrs,
        torch_fn=_conv_torch(attrs, (2, 3, 9), (2, 3, 3)),
    )


def test_conv3d():
    attrs = {"pads": [1, 0, 0, 0, 1, 0], "strides": [2, 1, 1], "group": 2}
    check_op(
        "Conv",
        {"x": _r(1, 2, 4, 3, 3), "w": _r(2, 1, 2, 2, 2), "b": _r(2)},
        attrs=attrs,
        torch_fn=_conv_torch(attrs, (1, 2, 4, 3, 3), (2, 1, 2, 2, 2)),
    )
