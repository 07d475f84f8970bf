"""Gradient rules of adamax_onnx/passes/autodiff/rules/conv.py against torch autograd and central differences."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from onnx.reference import ReferenceEvaluator
from onnx.reference.ops.op_conv_transpose import ConvTranspose as _RefConvTranspose
from onnx.reference.ops.op_pad import Pad_18 as _RefPad

import tests.gradcheck
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


class Pad(_RefPad):
    """onnx.reference's Pad, with negative pads (crops) as onnxruntime runs them."""

    op_domain = ""

    def _run(self, data, pads, constant_value=None, axes=None, mode=None):
        rank = data.ndim
        axes = range(rank) if axes is None else [int(a) % rank for a in axes]
        n = len(pads) // 2
        crop = [slice(None)] * rank
        kept = []
        for a, b_, e in zip(axes, pads[:n], pads[n:], strict=True):
            crop[a] = slice(max(-b_, 0), data.shape[a] - max(-e, 0))
            kept.append((max(b_, 0), max(e, 0)))
        kept = np.array([k[0] for k in kept] + [k[1] for k in kept], dtype=np.int64)
        return super()._run(data[tuple(crop)], kept, constant_value, list(axes), mode)


@pytest.fixture
def fixed_reference(monkeypatch):
    monkeypatch.setattr(
        tests.gradcheck,
        "ReferenceEvaluator",
        functools.partial(ReferenceEvaluator, new_ops=[ConvTranspose, Pad]),
    )


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


# -- MaxPool ------------------------------------------------------------------------------------


def _max_pool_torch(attrs, n=2):
    def fn(x):
        k = attrs["kernel_shape"]
        p = attrs.get("pads", [0] * 2 * n)
        tp = []
        for i in reversed(range(n)):
            tp += [p[i], p[n + i]]
        if attrs.get("ceil_mode"):  # symmetric pads only
            return F.max_pool2d(
                x,
                k,
                attrs.get("strides", [1] * n),
                p[:n],
                attrs.get("dilations", [1] * n),
                ceil_mode=True,
            )
        x = F.pad(x, tp, value=-float("inf"))
        return F.max_pool2d(x, k, attrs.get("strides", [1] * n), 0, attrs.get("dilations", [1] * n))

    return fn


MAXPOOL = [
    ("disjoint", {"kernel_shape": [2, 2], "strides": [2, 3], "pads": [0, 1, 1, 1]}),
    ("overlap", {"kernel_shape": [3, 3], "strides": [1, 1]}),
    ("pads_strides", {"kernel_shape": [3, 2], "strides": [2, 2], "pads": [1, 0, 1, 1]}),
    ("dilations", {"kernel_shape": [2, 2], "dilations": [2, 1], "strides": [1, 2]}),
    ("ceil", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1}),
    ("same_upper", {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"}),
]


@pytest.mark.parametrize("outputs,opset", [(1, 17), (2, 13)])
@pytest.mark.parametrize("name,attrs", MAXPOOL, ids=[c[0] for c in MAXPOOL])
def test_max_pool(name, attrs, outputs, opset):
    tfn = None
    if attrs.get("auto_pad") is None:
        tfn = _max_pool_torch(attrs)
    check_op(
        "MaxPool",
        {"x": _r(1, 2, 6, 5)},
        attrs=attrs,
        num_outputs=outputs,
        loss_outputs=[0],
        opset=opset,
        torch_fn=tfn,
    )


@pytest.mark.parametrize("opset", [13, 17])
def test_max_pool_storage_order(opset):
    attrs = {"kernel_shape": [2, 2], "strides": [1, 1], "storage_order": 1}
    check_op(
        "MaxPool",
        {"x": _r(1, 2, 4, 5)},
        attrs=attrs,
        num_outputs=2,
        loss_outputs=[0],
        opset=opset,
        torch_fn=_max_pool_torch(attrs),
    )


def test_max_pool1d():
    attrs = {"kernel_shape": [3], "strides": [2], "pads": [1, 1]}
    check_op(
        "MaxPool",
        {"x": _r(2, 2, 7)},
        attrs=attrs,
        opset=13,
        torch_fn=lambda x: F.max_pool1d(x, 3, 2, 1),
    )


# -- AveragePool ----------------------------------------------------------------------------------


AVGPOOL = [
    ("plain", {"kernel_shape": [3, 3], "strides": [1, 1]}),
    (
        "pads_incl",
        {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "count_include_pad": 1},
    ),
    ("pads_excl", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    (
        "ceil_excl",
        {"kernel_shape": [2, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1},
    ),
    (
        "ceil_incl",
        {
            "kernel_shape": [3, 3],
            "strides": [2, 2],
            "pads": [1, 1, 1, 1],
            "ceil_mode": 1,
            "count_include_pad": 1,
        },
    ),
    ("asym_excl", {"kernel_shape": [2, 3], "strides": [1, 2], "pads": [0, 1, 1, 2]}),
    (
        "asym_incl",
        {"kernel_shape": [2, 3], "strides": [1, 2], "pads": [0, 1, 1, 2], "count_include_pad": 1},
    ),
    ("same_lower", {"kernel_shape": [3, 2], "strides": [2, 2], "auto_pad": "SAME_LOWER"}),
]


def _avg_pool_torch(attrs):
    k, s = attrs["kernel_shape"], attrs.get("strides", [1, 1])
    p = attrs.get("pads", [0] * 4)
    incl = bool(attrs.get("count_include_pad", 0))
    if p[:2] == p[2:]:
        return lambda x: F.avg_pool2d(x, k, s, p[:2], bool(attrs.get("ceil_mode")), incl)
    tp = [p[1], p[3], p[0], p[2]]

    def fn(x):
        xp = F.pad(x, tp)
        if incl:
            return F.avg_pool2d(xp, k, s)
        ones = F.pad(x.detach() * 0 + 1, tp)
        return F.avg_pool2d(xp, k, s) / F.avg_pool2d(ones, k, s)

    return fn


@pytest.mark.parametrize("name,attrs", AVGPOOL, ids=[c[0] for c in AVGPOOL])
def test_average_pool(name, attrs):
    tfn = None if "auto_pad" in attrs else _avg_pool_torch(attrs)
    check_op("AveragePool", {"x": _r(1, 2, 6, 5)}, attrs=attrs, torch_fn=tfn)


def test_average_pool_dilations_opset19():
    attrs = {"kernel_shape": [2, 2], "strides": [1, 2], "dilations": [2, 2], "pads": [1, 0, 0, 1]}
    check_op("AveragePool", {"x": _r(1, 2, 5, 6)}, attrs=attrs, opset=19)


def test_global_pools():
    check_op(
        "GlobalAveragePool",
        {"x": _r(2, 2, 3, 4)},
        torch_fn=lambda x: x.mean(dim=(2, 3), keepdim=True),
    )
    check_op("GlobalMaxPool", {"x": _r(2, 2, 3, 4)}, torch_fn=lambda x: F.adaptive_max_pool2d(x, 1))


# -- Pad ------------------------------------------------------------------------------------------


def _torch_pads(begins, ends):
    tp = []
    for b_, e in zip(reversed(begins), reversed(ends), strict=True):
        tp += [b_, e]
    return tp


@pytest.mark.parametrize(
    "pads",
    [[0, 0, 1, 2, 0, 0, 2, 1], [0, 1, 1, -1, 0, 0, -2, 2]],
    ids=["positive", "negative"],
)
@pytest.mark.parametrize("opset", [13, 18])
def test_pad_constant(pads, opset, fixed_reference):
    tp = _torch_pads(pads[:4], pads[4:])

    def fn(x, c, pads):
        return F.pad(x, tp) + c * (1 - F.pad(torch.ones_like(x), tp))

    check_op(
        "Pad",
        {"x": _r(2, 2, 3, 4), "c": np.array(0.7)},
        consts={"pads": np.array(pads, dtype=np.int64)},
        order=["x", "pads", "c"],
        opset=opset,
        torch_fn=fn,
    )


def test_pad_constant_axes_opset18(fixed_reference):
    check_op(
        "Pad",
        {"x": _r(2, 2, 3, 4)},
        consts={"pads": np.array([1, -1, 2, 1], dtype=np.int64), "axes": np.array([-1, 2])},
        order=["x", "pads", "", "axes"],
        opset=18,
        torch_fn=lambda x, pads, axes: F.pad(x, [1, 2, -1, 1]),
    )


def test_pad_runtime_pads():
    check_op(
        "Pad",
        {"x": _r(2, 3, 4), "pads": np.array([0, 1, 0, 0, 1, 2], dtype=np.int64)},
        wrt=["x"],
        torch_fn=lambda x, pads: F.pad(x, [0, 2, 1, 1]),
    )


@pytest.mark.parametrize(
    "mode,torch_mode,opset",
    [("edge", "replicate", 13), ("reflect", "reflect", 18), ("wrap", "circular", 19)],
)
def test_pad_modes(mode, torch_mode, opset):
    begins, ends = [0, 0, 2, 1], [0, 0, 1, 3]
    tp = _torch_pads(begins[2:], ends[2:])
    check_op(
        "Pad",
        {"x": _r(2, 2, 4, 5)},
        attrs={"mode": mode},
        consts={"pads": np.array(begins + ends, dtype=np.int64)},
        opset=opset,
        torch_fn=lambda x, pads: F.pad(x, tp, mode=torch_mode),
    )


# -- Resize ---------------------------------------------------------------------------------------

NEAREST = {
    "mode": "nearest",
    "coordinate_transformation_mode": "asymmetric",
    "nearest_mode": "floor",
}


def _resize(x_shape, attrs, scales=None, sizes=None, opset=13, torch_fn=None, axes=None):
    consts = {"roi": np.zeros(0), "scales": np.array(scales or [], dtype=np.float32)}
    order = ["x", "roi", "scales"]
    if sizes is not None:
        consts["sizes"] = np.array(sizes, dtype=np.int64)
        order.append("sizes")
    if axes is not None:
        attrs = {**attrs, "axes": axes}
    check_op(
        "Resize",
        {"x": _r(*x_shape)},
        attrs=attrs,
        consts=consts,
        order=order,
        opset=opset,
        torch_fn=torch_fn,
        wrt=["x"],
    )


def test_resize_nearest_up_and_down():
    _resize(
        (2, 2, 3, 4),
        NEAREST,
        scales=[1, 1, 2, 2],
        torch_fn=lambda x, **_: F.interpolate(x, scale_factor=2, mode="nearest"),
    )
    _resize(
        (1, 2, 6, 5),
        NEAREST,
        sizes=[4, 3],
        axes=[2, 3],
        opset=18,
        torch_fn=lambda x, **_: F.interpolate(x, size=(4, 3), mode="nearest"),
    )


@pytest.mark.parametrize(
    "ctm,align", [("half_pixel", False), ("pytorch_half_pixel", False), ("align_corners", True)]
)
def test_resize_bilinear(ctm, align):
    attrs = {"mode": "linear", "coordinate_transformation_mode": ctm}
    _resize(
        (2, 2, 3, 4),
        attrs,
        scales=[1, 1, 2, 1.5],
        torch_fn=lambda x, **_: F.interpolate(
            x, scale_factor=(2, 1.5), mode="bilinear", align_corners=align
        ),
    )
    _resize(
        (1, 2, 5, 6),
        attrs,
        sizes=[3, 4],
        axes=[2, 3],
        opset=18,
        torch_fn=lambda x, **_: F.interpolate(x, size=(3, 4), mode="bilinear", align_corners=align),
    )


def test_resize_linear_1d_opset18_axes():
    attrs = {"mode": "linear", "coordinate_transformation_mode": "half_pixel"}
    _resize(
        (2, 3, 5),
        attrs,
        scales=[1.6],
        axes=[2],
        opset=18,
        torch_fn=lambda x, **_: F.interpolate(x, scale_factor=1.6, mode="linear"),
    )


@pytest.mark.parametrize(
    "mode,ctm,nearest_mode,opset",
    [
        ("nearest", "half_pixel", "round_prefer_floor", 19),
        ("nearest", "pytorch_half_pixel", "ceil", 18),
        ("nearest", "align_corners", "round_prefer_ceil", 13),
        ("linear", "half_pixel_symmetric", "floor", 19),
        ("linear", "asymmetric", "floor", 18),
    ],
)
def test_resize_modes(mode, ctm, nearest_mode, opset):
    attrs = {"mode": mode, "coordinate_transformation_mode": ctm, "nearest_mode": nearest_mode}
    if opset >= 18:
        _resize((1, 2, 3, 5), attrs, scales=[2.0, 0.6], axes=[2, 3], opset=opset)
    else:
        _resize((1, 2, 3, 5), attrs, scales=[1, 1, 2.0, 0.6], opset=opset)


@pytest.mark.parametrize("opset", [13, 17])
def test_resize_runtime_sizes(opset):
    """torch's export of F.interpolate(size=...): sizes = Concat(Shape(x)[:2], (h, w))."""
    from onnx import helper

    from tests.gradcheck import check_graph

    if opset >= 15:
        head = [helper.make_node("Shape", ["x"], ["nc"], end=2)]
    else:
        head = [
            helper.make_node("Shape", ["x"], ["shp"]),
            helper.make_node("Slice", ["shp", "zero", "two"], ["nc"]),
        ]
    nodes = [
        *head,
        helper.make_node("Concat", ["nc", "hw"], ["sizes"], axis=0),
        helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], **NEAREST),
    ]
    check_graph(
        nodes,
        {"x": _r(2, 2, 3, 4)},
        ["y"],
        consts={"hw": np.array([5, 6]), "zero": np.array([0]), "two": np.array([2])},
        opset=opset,
        torch_fn=lambda x, **_: F.interpolate(x, size=(5, 6), mode="nearest"),
    )


def test_resize_cubic_is_unsupported():
    from adamax_onnx.passes.autodiff.errors import GradientBuildError

    with pytest.raises(GradientBuildError, match="cubic"):
        _resize((1, 1, 3, 3), {"mode": "cubic"}, scales=[1, 1, 2, 2])


# -- symbolic spatial sizes -----------------------------------------------------------------------


def _symbolic_vs_static(node, x, consts, opset=17):
    """Gradients with x's dims all symbolic but the channels equal those with static dims."""
    import onnx
    from onnx import helper, numpy_helper

    from tests.gradcheck import run_gradients

    results = []
    for dims in (list(x.shape), ["N", x.shape[1], *[f"s{i}" for i in range(x.ndim - 2)]]):
        nodes = [
            node,
            helper.make_node("Mul", ["y", "y"], ["sq"]),
            helper.make_node("ReduceSum", ["sq"], ["loss"], keepdims=0),
        ]
        graph = helper.make_graph(
            nodes,
            "g",
            [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, dims)],
            [helper.make_tensor_value_info("loss", onnx.TensorProto.FLOAT, [])],
            [numpy_helper.from_array(v.astype(np.float32), k) for k, v in consts.items()],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        wrt = ["x", *[k for k, v in consts.items() if v.dtype.kind == "f"]]
        grads, _ = run_gradients(model, {"x": x.astype(np.float32)}, wrt)
        results.append(grads)
    for k in results[0]:
        np.testing.assert_allclose(results[1][k], results[0][k], rtol=1e-5, atol=1e-5)


def test_symbolic_spatial_stride1():
    from onnx import helper

    x = _r(2, 4, 5, 6)
    conv = helper.make_node("Conv", ["x", "w", "b"], ["y"], group=2, auto_pad="SAME_LOWER")
    _symbolic_vs_static(conv, x, {"w": _r(6, 2, 3, 2), "b": _r(6)})
    conv = helper.make_node("Conv", ["x", "w"], ["y"], dilations=[2, 1], pads=[1, 2, 0, 1])
    _symbolic_vs_static(conv, x, {"w": _r(3, 4, 2, 3)})
    convt = helper.make_node("ConvTranspose", ["x", "w"], ["y"], group=2, pads=[1, 0, 0, 1])
    _symbolic_vs_static(convt, x, {"w": _r(4, 3, 3, 2)})
    pool = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 1])
    _symbolic_vs_static(pool, x, {})
    _symbolic_vs_static(helper.make_node("GlobalAveragePool", ["x"], ["y"]), x, {})
    _symbolic_vs_static(helper.make_node("GlobalMaxPool", ["x"], ["y"]), x, {})


def test_symbolic_spatial_unsupported():
    from onnx import helper

    from adamax_onnx.passes.autodiff.errors import GradientBuildError

    conv = helper.make_node("Conv", ["x", "w"], ["y"], strides=[2, 2])
    with pytest.raises(GradientBuildError, match="static spatial sizes"):
        _symbolic_vs_static(conv, _r(1, 2, 5, 5), {"w": _r(2, 2, 3, 3)})


@pytest.mark.parametrize("opset", [13, 17])
@pytest.mark.parametrize("op", ["MaxPool", "AveragePool"])
def test_pool_ceil_last_window_in_pad(op, opset):
    """ceil_mode where onnx's shape inference keeps a window that onnxruntime (and torch) drop:
    6x5 input, kernel 2, stride 2, pads 1: onnx infers 4x4, onnxruntime computes 4x3."""
    import onnx
    from onnx import helper

    from tests.gradcheck import run_gradients

    attrs = {"kernel_shape": [2, 2], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1}
    nodes = [
        helper.make_node(op, ["x"], ["y"], **attrs),
        helper.make_node("Mul", ["y", "y"], ["sq"]),
        helper.make_node("ReduceSum", ["sq"], ["loss"], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 2, 6, 5])],
        [helper.make_tensor_value_info("loss", onnx.TensorProto.FLOAT, [])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    x = _r(2, 2, 6, 5)
    ours, _ = run_gradients(model, {"x": x.astype(np.float32)}, ["x"])
    t = torch.tensor(x, requires_grad=True)
    if op == "MaxPool":
        y = F.max_pool2d(t, 2, 2, 1, ceil_mode=True)
    else:
        y = F.avg_pool2d(t, 2, 2, 1, ceil_mode=True, count_include_pad=False)
    assert y.shape[2:] == (4, 3)
    (y * y).sum().backward()
    np.testing.assert_allclose(ours["x"], t.grad.numpy(), rtol=1e-4, atol=1e-5)


def test_max_pool_ceil_overlapping_opset13_matches_scatter():
    """The opset-13 tap-mask formulation with a window onnx's shape inference keeps and
    onnxruntime drops (6x6, kernel 3, stride 2, pads 2, ceil: onnx 5x5, onnxruntime 4x4) gives
    the opset-17 ScatterElements gradient."""
    import onnx
    from onnx import helper

    from tests.gradcheck import run_gradients

    x = _r(2, 2, 6, 6).astype(np.float32)
    res = []
    for opset in (13, 17):
        nodes = [
            helper.make_node(
                "MaxPool",
                ["x"],
                ["y"],
                kernel_shape=[3, 3],
                strides=[2, 2],
                pads=[2] * 4,
                ceil_mode=1,
            ),
            helper.make_node("Mul", ["y", "y"], ["sq"]),
            helper.make_node("ReduceSum", ["sq"], ["loss"], keepdims=0),
        ]
        graph = helper.make_graph(
            nodes,
            "g",
            [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 2, 6, 6])],
            [helper.make_tensor_value_info("loss", onnx.TensorProto.FLOAT, [])],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        res.append(run_gradients(model, {"x": x}, ["x"])[0]["x"])
    assert np.abs(res[1]).max() > 0
    np.testing.assert_allclose(res[0], res[1], rtol=1e-6, atol=1e-6)


# -- MaxPool windows that tile the input (2x2/2), and exact ties ----------------------------


@pytest.mark.parametrize("kernel", [[2, 2], [2, 3], [3, 1]])
def test_max_pool_tiled_windows(kernel):
    xs = (2, 3, 6, 6)
    attrs = {"kernel_shape": kernel, "strides": kernel}
    check_op(
        "MaxPool",
        {"x": _r(*xs)},
        attrs=attrs,
        torch_fn=lambda x: F.max_pool2d(x, kernel, kernel),
    )


def test_max_pool_tiled_ties_go_to_the_first_tap_like_torch():
    """Exact ties (repeated values, a window of equal values): only the first maximum in
    row-major window order gets dY, as torch's kernel picks it. Central differences are not
    defined at a tie, so torch alone is the reference here."""
    x = np.array(
        [[[[1.0, 1.0, 0.5, 2.0], [0.0, 1.0, 2.0, 2.0], [3.0, 3.0, 3.0, 3.0], [3.0, 3.0, 3.0, 3.0]]]]
    )
    x = np.concatenate([x, x[:, :, ::-1]], axis=1)  # two channels, the second mirrored
    check_op(
        "MaxPool",
        {"x": x},
        attrs={"kernel_shape": [2, 2], "strides": [2, 2]},
        torch_fn=lambda x: F.max_pool2d(x, 2, 2),
        fd_atol=1e9,
    )
