"""Gradient rules of adamax_onnx/passes/autodiff/rules/resize.py against torch autograd and
central differences."""

from __future__ import annotations

import numpy as np
import pytest
import torch.nn.functional as F

from tests.gradcheck import check_op

R = np.random.default_rng(0)


def _r(*shape):
    return R.standard_normal(shape)


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
