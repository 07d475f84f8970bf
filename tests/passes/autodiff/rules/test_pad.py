"""Gradient rules of adamax_onnx/passes/autodiff/rules/pad.py against torch autograd and
central differences."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from onnx.reference.ops.op_pad import Pad_18 as _RefPad

from tests.gradcheck import check_op, with_reference_ops

R = np.random.default_rng(0)


def _r(*shape):
    return R.standard_normal(shape)


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
    with_reference_ops(monkeypatch, Pad)


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
