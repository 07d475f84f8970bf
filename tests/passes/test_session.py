"""``adamax_onnx.passes.session``: the model a TrainingSession hands to onnxruntime.

Checked against the built model itself: what is dropped is exactly the initial values of the
inputs a session binds, nothing else changes, and the chunk layout is read from the declared
outputs.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import adamax_onnx as ax
from adamax_onnx.passes.contract import read_contract
from adamax_onnx.passes.session import chunk_layouts, session_models, without_initializers
from tests.reference import random_params as _params


def _built(shapes, **build):
    params = _params(shapes)
    return ax.build_optimizer_model(ax.AdaMax(list(params), learning_rate=0.01), params, **build)


def test_without_initializers_drops_only_the_named_ones_and_leaves_the_model_alone():
    model = _built([(4, 3), (5,)])
    before = model.SerializeToString()
    names = {i.name for i in model.graph.initializer}
    drop = {n for n in names if n.startswith("p0")}
    light = without_initializers(model, drop)
    assert model.SerializeToString() == before  # the input model is not modified
    assert {i.name for i in light.graph.initializer} == names - drop
    assert light.graph.node == model.graph.node
    assert light.graph.input == model.graph.input and light.graph.output == model.graph.output
    assert list(light.opset_import) == list(model.opset_import)
    assert not light.metadata_props  # what onnxruntime does not read is left out


def test_session_models_drop_every_initial_value_a_session_binds():
    model = _built([(64, 32), (5,)], bucket_size=0)
    contract = read_contract(model)
    plain, chunked = session_models(model, contract, 64)
    bound = set(contract.state_inputs()) | set(contract.initial.values())
    assert not bound & {i.name for i in plain.graph.initializer}
    assert chunked is not None and sum(n.op_type == "Scan" for n in chunked.graph.node) == 1
    assert chunk_layouts(chunked, contract.state_inputs()) == {
        n: [32, 64] for n in ("p0", "p0.adamax.m", "p0.adamax.v")
    }
    assert chunk_layouts(plain, contract.state_inputs()) == {}
    plain_again, none = session_models(model, contract, 0)
    assert none is None and plain_again.SerializeToString() == plain.SerializeToString()


def test_chunk_layouts_refuse_an_output_of_another_size():
    model = _built([(4, 3)], bucket_size=0)
    out = next(o for o in model.graph.output if o.name == "p0.updated")
    out.type.tensor_type.shape.dim[0].dim_value = 5  # 15 elements for an input of 12
    with pytest.raises(ax.ModelError, match=r"'p0.updated' has shape \[5, 3\], input 'p0'"):
        chunk_layouts(model, ["p0"])


def test_the_light_model_computes_what_the_built_one_does():
    import onnxruntime as ort
    from onnx import numpy_helper

    model = _built([(4, 3)], bucket_size=0)
    contract = read_contract(model)
    plain, _ = session_models(model, contract, 0)
    onnx.checker.check_model(plain)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    feeds = {name: inits[initial] for name, initial in contract.initial.items()}
    feeds["p0_grad"] = np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3)
    runs = [
        ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        for m in (model, plain)
    ]
    built, light = (r.run(None, feeds) for r in runs)
    for a, b in zip(built, light, strict=True):
        np.testing.assert_array_equal(a, b)
