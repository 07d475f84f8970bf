"""Gradient rules of adamax_onnx/passes/autodiff/rules/conv.py against torch autograd and
central differences."""

from __future__ import annotations

import numpy as np
import pytest
import torch.nn.functional as F
from onnx.reference.ops.op_conv_transpose import ConvTranspose as _RefConvTranspose

from tests.gradcheck import check_op, symbolic_vs_static, with_reference_ops

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
    (
        "dilated_depthwise_s1",
        (1, 3, 5, 5),
        (3, 1, 2, 2),
        {"group": 3, "dilations": [2, 2], "pads": [1, 0, 2, 1]},
    ),
    ("depthwise_x2", (1, 2, 5, 5), (4, 1, 3, 3), {"group": 2, "strides": [2, 2]}),
    ("im2col", (1, 2, 4, 4), (8, 2, 3, 3), {"strides": [2, 2]}),
    ("pads_past_kernel", (1, 2, 3, 3), (2, 2, 2, 2), {"pads": [2, 2, 1, 2]}),
    ("plain", (2, 2, 4, 4), (3, 2, 3, 3), {}),
    ("pads_strides", (1, 2, 6, 6), (3, 2, 3, 3), {"pads": [1, 0, 2, 1], "strides": [2, 2]}),
    ("dilations", (1, 2, 6, 5), (2, 2, 2, 3), {"dilations": [2, 1], "strides": [1, 2]}),
    ("groups", (1, 4, 5, 5), (4, 2, 3, 3), {"group": 2, "pads": [1, 1, 1, 1]}),
    ("depthwise", (2, 3, 5, 5), (3, 1, 3, 3), {"group": 3, "strides": [2, 2], "pads": [1] * 4}),
    ("same_upper", (1, 2, 6, 5), (3, 2, 3, 2), {"auto_pad": "SAME_UPPER", "strides": [2, 2]}),
    ("same_lower", (1, 2, 5, 6), (3, 2, 2, 3), {"auto_pad": "SAME_LOWER", "strides": [2, 1]}),
    ("valid", (1, 2, 5, 5), (3, 2, 2, 2), {"auto_pad": "VALID", "strides": [2, 2]}),
    # 1x1 (pointwise, mobilenet): the one tap reads all of x, no Slice; strided and grouped
    ("pointwise", (2, 3, 4, 5), (4, 3, 1, 1), {}),
    ("pointwise_strided", (2, 3, 5, 5), (4, 3, 1, 1), {"strides": [2, 2]}),
    ("pointwise_groups", (2, 4, 3, 3), (6, 2, 1, 1), {"group": 2}),
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


@pytest.fixture(params=["per_tap", "one_conv"])
def dw_form(request, monkeypatch):
    """Both forms of dW: per-tap products (many channels) and one Conv (few channels); the
    choice depends on the channel counts, so each test case is run through both."""
    from adamax_onnx.passes.autodiff.rules import conv

    monkeypatch.setattr(conv, "_MIN_CHANNEL_PRODUCT", 0 if request.param == "per_tap" else 10**9)
    return request.param


@pytest.mark.parametrize("name,xs,ws,attrs", CONV2D, ids=[c[0] for c in CONV2D])
def test_conv2d(name, xs, ws, attrs, dw_form):
    check_op(
        "Conv",
        {"x": _r(*xs), "w": _r(*ws), "b": _r(ws[0])},
        attrs=attrs,
        torch_fn=_conv_torch(attrs, xs, ws),
    )


def test_conv1d_no_bias(dw_form):
    attrs = {"pads": [2, 1], "strides": [2], "dilations": [2]}
    check_op(
        "Conv",
        {"x": _r(2, 3, 9), "w": _r(2, 3, 3)},
        attrs=attrs,
        torch_fn=_conv_torch(attrs, (2, 3, 9), (2, 3, 3)),
    )


def test_conv1d_long_kernel():
    # more than 32 taps: dW from one Conv with dY as the kernel
    attrs = {"group": 2, "pads": [3, 1], "strides": [2]}
    check_op(
        "Conv",
        {"x": _r(2, 2, 40), "w": _r(2, 1, 33)},
        attrs=attrs,
        torch_fn=_conv_torch(attrs, (2, 2, 40), (2, 1, 33)),
    )


@pytest.mark.parametrize("group", [1, 2])
def test_conv3d(group, dw_form):
    attrs = {"pads": [1, 0, 0, 0, 1, 0], "strides": [2, 1, 1], "group": group}
    ws = (2, 2 // group, 2, 2, 2)
    check_op(
        "Conv",
        {"x": _r(1, 2, 4, 3, 3), "w": _r(*ws), "b": _r(2)},
        attrs=attrs,
        torch_fn=_conv_torch(attrs, (1, 2, 4, 3, 3), ws),
    )


# -- ConvTranspose ------------------------------------------------------------------------------


class ConvTranspose(_RefConvTranspose):
    """onnx.reference's ConvTranspose, fixed for group > 1 and output_shape (even padding)."""

    op_domain = ""

    def _run(
        self,
        x,
        w,
        b=None,
        auto_pad=None,
        dilations=None,
        group=None,
        kernel_shape=None,
        output_padding=None,
        output_shape=None,
        pads=None,
        strides=None,
    ):
        n = x.ndim - 2
        strides = strides or [1] * n
        dilations = dilations or [1] * n
        opad = output_padding or [0] * n
        if output_shape is not None:
            half = []
            for h, o, k, s, d, p in zip(
                x.shape[2:], output_shape[-n:], w.shape[2:], strides, dilations, opad, strict=True
            ):
                total = s * (h - 1) + p + (k - 1) * d + 1 - o
                assert total % 2 == 0
                half.append(total // 2)
            pads = half + half
        g = group or 1
        xs, ws = np.split(x, g, axis=1), np.split(w, g, axis=0)
        bs = np.split(b, g) if b is not None else [None] * g
        outs = [
            super(ConvTranspose, self)._run(
                xx,
                ww,
                bb,
                auto_pad,
                dilations,
                1,
                kernel_shape,
                output_padding,
                None,
                pads,
                strides,
            )[0]
            for xx, ww, bb in zip(xs, ws, bs, strict=True)
        ]
        return (np.concatenate(outs, axis=1),)


@pytest.fixture
def fixed_reference(monkeypatch):
    with_reference_ops(monkeypatch, ConvTranspose)


def _conv_t_torch(attrs, n):
    def fn(x, w, b=None):
        strides = attrs.get("strides", [1] * n)
        dil = attrs.get("dilations", [1] * n)
        opad = attrs.get("output_padding", [0] * n)
        p = attrs.get("pads", [0] * 2 * n)
        convt = F.conv_transpose1d if n == 1 else F.conv_transpose2d
        y = convt(
            x, w, b, stride=strides, output_padding=opad, groups=attrs.get("group", 1), dilation=dil
        )
        idx = [slice(None), slice(None)]
        for i in range(n):
            idx.append(slice(p[i], y.shape[2 + i] - p[n + i]))
        return y[tuple(idx)]

    return fn


CONVT = [
    ("plain", (2, 2, 3, 3), (2, 2, 2, 2), {}),
    (
        "strides_pads_opad",
        (1, 2, 3, 4),
        (2, 2, 3, 2),
        {"strides": [2, 3], "pads": [1, 0, 0, 1], "output_padding": [1, 2]},
    ),
    (
        "groups_dil",
        (1, 4, 3, 3),
        (4, 1, 2, 2),
        {"group": 2, "dilations": [2, 1], "strides": [2, 1]},
    ),
    ("depthwise", (1, 3, 3, 3), (3, 1, 2, 2), {"group": 3, "strides": [2, 2], "pads": [1] * 4}),
]


@pytest.mark.parametrize("name,xs,ws,attrs", CONVT, ids=[c[0] for c in CONVT])
def test_conv_transpose2d(name, xs, ws, attrs, fixed_reference):
    cout = ws[1] * attrs.get("group", 1)
    check_op(
        "ConvTranspose",
        {"x": _r(*xs), "w": _r(*ws), "b": _r(cout)},
        attrs=attrs,
        torch_fn=_conv_t_torch(attrs, 2),
    )


def test_conv_transpose1d_output_shape(fixed_reference):
    # output_shape 8 from in 4, stride 2, k 4: total padding 2*3 + 4 - 8 = 2 (even)
    attrs = {"strides": [2], "output_shape": [8]}
    check_op(
        "ConvTranspose",
        {"x": _r(2, 2, 4), "w": _r(2, 3, 4)},
        attrs=attrs,
        torch_fn=_conv_t_torch({"strides": [2], "pads": [1, 1]}, 1),
    )


def test_conv_transpose_same_upper(fixed_reference):
    # stride 2, kernel 4: total padding 2 * (3 - 1) + 4 - 2 * 3 = 2 (even), output 2 * 3
    attrs = {"strides": [2, 2], "auto_pad": "SAME_UPPER"}
    check_op(
        "ConvTranspose",
        {"x": _r(1, 2, 3, 3), "w": _r(2, 1, 4, 4)},
        attrs=attrs,
        torch_fn=_conv_t_torch({"strides": [2, 2], "pads": [1, 1, 1, 1]}, 2),
    )


def test_conv_transpose_odd_output_shape_is_unsupported():
    from adamax_onnx.passes.autodiff.errors import GradientBuildError

    with pytest.raises(GradientBuildError, match="odd"):
        check_op(
            "ConvTranspose",
            {"x": _r(1, 2, 4), "w": _r(2, 3, 3)},
            attrs={"strides": [2], "output_shape": [8]},
        )


# -- symbolic spatial sizes -----------------------------------------------------------------------


def test_symbolic_spatial_stride1():
    from onnx import helper

    x = _r(2, 4, 5, 6)
    conv = helper.make_node("Conv", ["x", "w", "b"], ["y"], group=2, auto_pad="SAME_LOWER")
    symbolic_vs_static(conv, x, {"w": _r(6, 2, 3, 2), "b": _r(6)})
    conv = helper.make_node("Conv", ["x", "w"], ["y"], dilations=[2, 1], pads=[1, 2, 0, 1])
    symbolic_vs_static(conv, x, {"w": _r(3, 4, 2, 3)})
    convt = helper.make_node("ConvTranspose", ["x", "w"], ["y"], group=2, pads=[1, 0, 0, 1])
    symbolic_vs_static(convt, x, {"w": _r(4, 3, 3, 2)})


def test_symbolic_spatial_unsupported():
    from onnx import helper

    from adamax_onnx.passes.autodiff.errors import GradientBuildError

    conv = helper.make_node("Conv", ["x", "w"], ["y"], strides=[2, 2])
    with pytest.raises(GradientBuildError, match="static spatial sizes"):
        symbolic_vs_static(conv, _r(1, 2, 5, 5), {"w": _r(2, 2, 3, 3)})
