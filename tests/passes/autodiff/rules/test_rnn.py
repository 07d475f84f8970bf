"""Gradient rule of adamax_onnx/passes/autodiff/rules/rnn.py against float64 central differences
and torch autograd of the ONNX definition (:mod:`tests.rnncheck`)."""

from __future__ import annotations

import pytest

from tests.rnncheck import check_recurrent


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_rnn(direction):
    check_recurrent("RNN", direction, 0, [0, 1])


def test_rnn_y_h_only_no_optional_inputs():
    check_recurrent("RNN", "forward", 0, [1], bias=False, h0=False, opset=13)
