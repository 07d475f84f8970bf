"""``adamax_onnx.lr_probe`` and ``passes.probe``: a group's learning rate and weight decay read
from the built model alone, at any step, without a training step.

References are numpy float32 evaluations of the formulas (a table is its own reference); the
end-to-end comparisons against every MindSpore schedule are in
``integration/test_parity_schedules.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

import adamax_onnx as ax
from adamax_onnx.lr_probe import LearningRateProbe, groups_of
from adamax_onnx.passes.contract import GLOBAL_STEP, lr_current_name, read_contract
from adamax_onnx.passes.probe import extract_subgraph
from tests.reference import random_params as _params

TABLE = [0.01 * 0.9**i for i in range(6)]


def _model(**opt):
    params = _params([(4, 3), (5,)])
    groups = [{"params": ["p0"], "weight_decay": 0.1}, {"params": ["p1"], "lr": 0.02}]
    model = ax.build_optimizer_model(ax.AdaMax(groups, **opt), params)
    return model, read_contract(model)


def test_a_table_is_read_at_any_step_without_stepping():
    model, contract = _model(learning_rate=TABLE)
    probe = LearningRateProbe(model, contract)
    lrs = {n: np.array(0.02, np.float32) for n in contract.lr_inputs.values()}
    for step in (0, 3, 5, 2):  # any order: nothing is carried
        got = probe.learning_rates(step, lrs)
        assert got[0] == float(np.float32(TABLE[step]))
        # MindSpore adds 1 and subtracts 1 to a fixed lr next to a dynamic one (float32)
        assert got[1] == float(np.float32(np.float32(0.02) + np.float32(1)) - np.float32(1))
    assert probe.weight_decays(0, lrs) == {0: pytest.approx(0.1), 1: 0.0}
    with pytest.raises(ax.LearningRateTableExhausted, match="global_step 6.*length 6"):
        probe.learning_rates(6, lrs)


def test_the_fixed_learning_rates_fed_are_the_ones_reported():
    model, contract = _model(learning_rate=TABLE)
    probe = LearningRateProbe(model, contract)
    (name,) = contract.lr_inputs.values()
    for value in (0.5, 0.125):
        got = probe.learning_rates(1, {name: np.array(value, np.float32)})[1]
        assert got == float(np.float32(np.float32(value) + np.float32(1)) - np.float32(1))


def test_groups_of_names_unknown_parameters():
    _, contract = _model()
    assert groups_of(contract, ["p1", "p0", "p1"]) == [1, 0, 1]
    with pytest.raises(ax.ModelError, match=r"\['nope'\] are not optimizer parameters"):
        groups_of(contract, ["p0", "nope"])


def test_extract_subgraph_refuses_what_depends_on_other_inputs():
    model, _ = _model(learning_rate=TABLE)
    before = model.SerializeToString()
    probe = extract_subgraph(model, [lr_current_name(0)], [GLOBAL_STEP, "not-an-input"])
    assert model.SerializeToString() == before
    assert [i.name for i in probe.graph.input] == [GLOBAL_STEP]
    assert len(probe.graph.node) < len(model.graph.node) / 2
    with pytest.raises(ValueError, match=r"cannot extract \['p0.updated'\].*p0_grad"):
        extract_subgraph(model, ["p0.updated"], [GLOBAL_STEP])
