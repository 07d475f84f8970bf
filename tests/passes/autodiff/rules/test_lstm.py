"""Gradient rule of adamax_onnx/passes/autodiff/rules/lstm.py against float64 central differences
and torch autograd of the ONNX definition (:mod:`tests.rnncheck`)."""

from __future__ import annotations

import pytest

from tests.gradcheck import check_graph, make_node
from tests.rnncheck import H, check_recurrent, recurrent_inputs, torch_rnn


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_lstm(direction):
    check_recurrent("LSTM", direction, 0, [0, 1, 2])


@pytest.mark.parametrize("outs", [[0], [1], [2], [1, 2]])
def test_lstm_output_subsets(outs):
    check_recurrent("LSTM", "forward", 0, outs)


@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
def test_lstm_peepholes(direction):
    check_recurrent("LSTM", direction, 0, [0, 1, 2], peep=True)


def test_lstm_peepholes_no_initial_state():
    check_recurrent("LSTM", "reverse", 0, [0], peep=True, h0=False, c0=False)


def test_lstm_no_optional_inputs_opset13():
    check_recurrent("LSTM", "bidirectional", 0, [0, 2], bias=False, h0=False, c0=False, opset=13)


def test_lstm_without_y_output():
    """Y is not an output of the node: the rule runs the op again to get the hidden states."""
    inputs, order = recurrent_inputs("LSTM", 1, 0)
    node = make_node("LSTM", order, ["", "yh", "yc"], hidden_size=H)

    def torch_fn(X, W, R, B, initial_h, initial_c):
        _, yh, yc = torch_rnn(
            "LSTM", X, W, R, B, initial_h, initial_c, direction="forward", layout=0
        )
        return yh, yc

    check_graph([node], inputs, ["yh", "yc"], torch_fn=torch_fn)
