"""Gradient rule of adamax_onnx/passes/autodiff/rules/gru.py against float64 central differences
and torch autograd of the ONNX definition (:mod:`tests.rnncheck`)."""

from __future__ import annotations

import pytest

from tests.rnncheck import check_recurrent


@pytest.mark.parametrize("lbr", [0, 1])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_gru(direction, lbr):
    check_recurrent("GRU", direction, 0, [0, 1], lbr=lbr)


@pytest.mark.parametrize("lbr", [0, 1])
def test_gru_subsets(lbr):
    check_recurrent("GRU", "reverse", 0, [1], lbr=lbr)
    check_recurrent("GRU", "forward", 0, [0], lbr=lbr, bias=False, h0=False, opset=22)
