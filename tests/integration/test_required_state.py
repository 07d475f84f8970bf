"""The built training model's state inputs are required: no runner can silently drop fed state.

Runtimes may hide or ignore an input that has an initializer of its own name (onnxruntime's
JavaScript bindings do: node ignores the fed value, web refuses it at the second step). So a
built model has no such defaults: every state and learning-rate input is required, and its
initial value is the unused initializer ``<input>.initial`` named in the contract.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import adamax_onnx as ax
from adamax_onnx.cli import main as cli_main
from adamax_onnx.models.mlp import build_mlp
from adamax_onnx.passes.contract import (
    attach_initial_values,
    initial_name,
    initial_values,
    read_contract,
    updated,
)

FEATURES, CLASSES = 12, 5


def _mlp():
    return build_mlp(in_features=FEATURES, hidden=(16,), num_classes=CLASSES, seed=1)


def _batch(step: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(step)
    return {
        "input": rng.standard_normal((8, FEATURES)).astype(np.float32),
        "labels": rng.integers(0, CLASSES, 8).astype(np.int64),
    }


@pytest.fixture(scope="module")
def train():
    m = _mlp()
    opt = ax.AdaMax(ax.trainable_params(m), learning_rate=0.01)
    return ax.build_training_model(m, opt, loss_scale_manager=ax.DynamicLossScaleManager(2.0**8))


def _session(model):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def test_state_and_lr_inputs_have_no_defaults(train):
    onnx.checker.check_model(train, full_check=True)
    contract = read_contract(train)
    carried = contract.state_inputs() + list(contract.lr_inputs.values())
    assert "adamax.loss_scale" in carried and "adamax.lr.group0" in carried
    inits = {i.name for i in train.graph.initializer}
    inputs = {i.name for i in train.graph.input}
    assert set(carried) <= inputs
    assert not inputs & inits  # no graph input has a default
    assert contract.initial == {n: initial_name(n) for n in carried}
    assert set(contract.initial.values()) <= inits
    read_by_nodes = {i for n in train.graph.node for i in n.input}
    assert not read_by_nodes & set(contract.initial.values())
    values = initial_values(train)
    assert int(numpy_helper.to_array(values["adamax.global_step"])) == 0
    assert float(numpy_helper.to_array(values["adamax.beta1_power"])) == 1.0
    assert float(numpy_helper.to_array(values["adamax.lr.group0"])) == np.float32(0.01)
    assert float(numpy_helper.to_array(values["adamax.loss_scale"])) == 2.0**8


def test_a_runner_that_does_not_feed_state_gets_an_error(train):
    sess = _session(train)
    with pytest.raises(ValueError, match="Required inputs"):
        sess.run(None, _batch(0))
    # The initial values are not inputs: feeding one by that name is refused too.
    feeds = {n: numpy_helper.to_array(t) for n, t in initial_values(train).items()}
    feeds.update(_batch(0))
    feeds[initial_name("adamax.global_step")] = feeds.pop("adamax.global_step")
    with pytest.raises(Exception, match="adamax.global_step"):
        sess.run(None, feeds)
    # ... even next to every required input
    feeds["adamax.global_step"] = feeds[initial_name("adamax.global_step")]
    with pytest.raises(Exception, match=r"Invalid input name: adamax\.global_step\.initial"):
        sess.run(None, feeds)


def test_the_literal_recipe_trains_like_training_session(train):
    ref = ax.TrainingSession(train)
    sess = _session(train)
    values = {n: numpy_helper.to_array(t) for n, t in initial_values(train).items()}
    carried = [n for n in values if updated(n) in {o.name for o in train.graph.output}]
    fetch = ["loss"] + [updated(n) for n in carried]
    for step in range(4):
        want = ref.step(_batch(step))
        out = sess.run(fetch, {**values, **_batch(step)})
        assert out[0] == np.float32(want)
        values.update(zip(carried, out[1:], strict=True))
    assert int(values["adamax.global_step"]) == 4
    for name, value in ref.parameters().items():
        np.testing.assert_array_equal(values[name], value, err_msg=name)


def test_models_with_defaults_still_load(train, tmp_path):
    """Models written before this form (inputs with defaults) train the same."""
    legacy = onnx.ModelProto()
    legacy.CopyFrom(train)
    attach_initial_values(legacy)
    assert read_contract(legacy).initial == {} and read_contract(legacy).format == 1
    assert read_contract(train).format == 2
    assert {i.name for i in legacy.graph.input} & {i.name for i in legacy.graph.initializer}
    a, b = ax.TrainingSession(train), ax.TrainingSession(legacy)
    for step in range(3):
        assert a.step(_batch(step)) == b.step(_batch(step))
    for name, value in a.parameters().items():
        np.testing.assert_array_equal(b.parameters()[name], value, err_msg=name)
    # the trainable file of either resumes to the required-input form
    path = ax.export_trainable_model(b, tmp_path / "legacy.onnx")
    resumed = ax.TrainingSession(str(path))
    assert read_contract(resumed.model).initial
    assert resumed.step(_batch(3)) == a.step(_batch(3))


def test_cli_build_writes_the_required_form(tmp_path):
    onnx.save(_mlp(), str(tmp_path / "mlp.onnx"))
    out = tmp_path / "train.onnx"
    assert cli_main(["build", str(tmp_path / "mlp.onnx"), "-o", str(out), "--lr", "0.01"]) in (
        0,
        None,
    )
    model = onnx.load(str(out))
    inputs = {i.name for i in model.graph.input}
    assert not inputs & {i.name for i in model.graph.initializer}
    assert "adamax.global_step" in read_contract(model).initial
