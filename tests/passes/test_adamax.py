"""passes.adamax.AdaMaxPass: in place on an ``onnx_ir`` model, a new ModelProto from a ModelProto,
a step of a pipeline; the update it appends, run by onnxruntime for a few steps, against the numpy
model of MindSpore 2.10's ``nn.AdaMax`` in ``tests/reference.py``; failures that name the
parameter.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import helper

import adamax_onnx as ax
from adamax_onnx.passes.adamax import AdaMaxPass
from adamax_onnx.passes.builder import IR_VERSION, OPSET
from adamax_onnx.passes.infra import Pipeline
from tests.reference import NumpyAdaMax

SHAPES = {"conv.weight": (4, 16, 3, 3), "fc.weight": (5, 32), "fc.bias": (5,), "bn.gamma": (8,)}
STEPS = 4


def gradient_model(params: dict[str, np.ndarray]) -> onnx.ModelProto:
    """No nodes: every parameter and its gradient ``<p>_grad`` are graph inputs."""
    inputs = []
    for name, value in params.items():
        elem = helper.np_dtype_to_tensor_dtype(value.dtype)
        for input_name in (name, f"{name}_grad"):
            inputs.append(helper.make_tensor_value_info(input_name, elem, value.shape))
    graph = helper.make_graph([], "gradients", inputs, [])
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION
    )


def make_params(dtype) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {k: (rng.normal(size=s) * 0.5).astype(dtype) for k, s in SHAPES.items()}


def gradients(params: dict[str, np.ndarray], step: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(100 + step)
    return {k: (rng.normal(size=v.shape) * 2.0).astype(v.dtype) for k, v in params.items()}


def train(model: onnx.ModelProto, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``STEPS`` updates in onnxruntime, each step's ``<input>.updated`` fed back as ``<input>``."""
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    state = dict(params)
    for step in range(STEPS):
        feeds = {**state, **{f"{k}_grad": g for k, g in gradients(params, step).items()}}
        results = dict(zip(names, session.run(None, feeds), strict=True))
        state.update({n.removesuffix(".updated"): v for n, v in results.items()})
    return state


def with_entry(entry: str, opt: ax.AdaMax, proto: onnx.ModelProto, **kw) -> onnx.ModelProto:
    """The pass as each caller uses it: in place on ``onnx_ir``, on a proto, in a pipeline."""
    if entry == "ir":
        model = ir.serde.deserialize_model(proto)
        result = AdaMaxPass(opt, **kw)(model)
        assert result.model is model and result.modified
        return ir.serde.serialize_model(model)
    if entry == "proto":
        return AdaMaxPass(opt, **kw)(proto).model
    return Pipeline(AdaMaxPass(opt, **kw))(proto)


@pytest.mark.parametrize("entry", ["ir", "proto", "pipeline"])
@pytest.mark.parametrize("bucket_size", [0, 1 << 16])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_update_matches_mindspore_reference(entry, bucket_size, dtype):
    params = make_params(dtype)
    groups = [
        {"params": ["conv.weight", "fc.weight"], "grad_centralization": True, "weight_decay": 0.01},
        {"params": ["fc.bias", "bn.gamma"], "lr": 0.02},
    ]
    opt = ax.AdaMax(groups, learning_rate=0.01, loss_scale=8.0)
    model = with_entry(entry, opt, gradient_model(params), bucket_size=bucket_size)
    got = train(model, params)
    ref = NumpyAdaMax.from_groups(params, groups, learning_rate=0.01, loss_scale=8.0)
    for step in range(STEPS):
        ref.update(gradients(params, step))  # the fed, scaled gradients: both unscale them
    tol = dict(rtol=2e-3, atol=2e-3) if dtype == np.float16 else dict(rtol=1e-5, atol=1e-6)
    for k in params:
        assert got[k].dtype == np.dtype(dtype)
        np.testing.assert_allclose(got[k], ref.w[k], err_msg=k, **tol)
        np.testing.assert_allclose(got[f"{k}.adamax.m"], ref.m[k], err_msg=k, **tol)
        np.testing.assert_allclose(got[f"{k}.adamax.v"], ref.v[k], err_msg=k, **tol)
    assert got["adamax.global_step"] == STEPS


def test_a_model_proto_is_left_unchanged():
    proto = gradient_model(make_params(np.float32))
    before = proto.SerializeToString()
    built = AdaMaxPass(ax.AdaMax(list(SHAPES)))(proto).model
    assert isinstance(built, onnx.ModelProto) and built is not proto
    assert proto.SerializeToString() == before
    assert "conv.weight.updated" in {o.name for o in built.graph.output}


def test_in_place_adds_state_inputs_and_updated_outputs():
    model = ir.serde.deserialize_model(gradient_model(make_params(np.float32)))
    AdaMaxPass(ax.AdaMax(list(SHAPES)))(model)
    inputs = {v.name: v for v in model.graph.inputs}
    m = inputs["fc.weight.adamax.m"]
    assert m.shape == ir.Shape([5, 32]) and m.dtype == ir.DataType.FLOAT
    assert m.const_value is not None and not m.const_value.numpy().any()  # starts at zeros
    assert {"adamax.global_step", "adamax.beta1_power", "adamax.lr.group0"} <= set(inputs)
    outputs = {v.name for v in model.graph.outputs}
    assert {"fc.weight.updated", "fc.weight.adamax.v.updated", "adamax.global_step.updated"} <= (
        outputs
    )


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda g: g.input.pop(0), "parameter 'conv.weight' is not a graph input"),
        (lambda g: g.input.pop(1), "no gradient tensor 'conv.weight_grad'"),
        (lambda g: g.input[0].type.tensor_type.__setattr__("elem_type", 7), "not a float tensor"),
    ],
    ids=["not-an-input", "no-gradient", "not-float"],
)
def test_failures_name_the_parameter(edit, message):
    proto = gradient_model(make_params(np.float32))
    edit(proto.graph)
    with pytest.raises(ValueError, match=message):
        AdaMaxPass(ax.AdaMax(list(SHAPES)))(proto)


@pytest.mark.parametrize("bucket_size", [-1, 1.5, True])
def test_bucket_size_is_checked(bucket_size):
    with pytest.raises(ValueError, match="bucket_size"):
        AdaMaxPass(ax.AdaMax(list(SHAPES)), bucket_size=bucket_size)
