"""Shared helpers for the model builders in :mod:`models`.

Deterministic parameter initialisation (He / Xavier / PyTorch-style bias), float32 and int64
initializer construction, and the final ``ModelProto`` assembly (opset, IR version, check).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..passes.builder import IR_VERSION, OPSET

__all__ = [
    "BATCH",
    "bias_init",
    "f32",
    "he_normal",
    "i64",
    "make_model",
    "xavier_uniform",
]

#: Name of the symbolic batch dimension of every model input and output.
BATCH = "N"


def he_normal(rng: np.random.Generator, shape: Sequence[int], fan_in: int) -> np.ndarray:
    """He (Kaiming) normal init, ``std = sqrt(2 / fan_in)``; suited to ReLU layers."""
    return (rng.standard_normal(tuple(shape)) * np.sqrt(2.0 / fan_in)).astype(np.float32)


def xavier_uniform(
    rng: np.random.Generator, shape: Sequence[int], fan_in: int, fan_out: int
) -> np.ndarray:
    """Xavier/Glorot uniform init, ``U(-a, a)`` with ``a = sqrt(6 / (fan_in + fan_out))``."""
    a = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-a, a, size=tuple(shape)).astype(np.float32)


def bias_init(rng: np.random.Generator, size: int, fan_in: int) -> np.ndarray:
    """PyTorch-style bias init, ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``."""
    bound = 1.0 / np.sqrt(fan_in)
    return rng.uniform(-bound, bound, size=(size,)).astype(np.float32)


def f32(name: str, value) -> TensorProto:
    """A float32 initializer (scalars become rank-0 tensors, i.e. non-trainable constants)."""
    return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name=name)


def i64(name: str, value) -> TensorProto:
    """An int64 initializer (shapes, axes)."""
    return numpy_helper.from_array(np.asarray(value, dtype=np.int64), name=name)


def make_model(
    name: str,
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    initializers: list[TensorProto],
    doc: str = "",
) -> onnx.ModelProto:
    """Assemble a graph into an opset-``OPSET``, IR-``IR_VERSION`` model and check it."""
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=initializers)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="adamax-onnx.models",
        doc_string=doc,
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model
