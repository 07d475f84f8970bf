"""What the tests of the non-finite guard and of the loss scale share: state snapshots compared
bit for bit, a float16 model (loss in float32) and a small MLP with their batches, poisoned values.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import adamax_onnx as ax
from adamax_onnx.models.mlp import build_mlp
from tests.state import snapshot

__all__ = [
    "F16",
    "F32",
    "assert_bitwise_equal",
    "assert_same_up_to_fp16_rounding",
    "fp16_batch",
    "fp16_model",
    "mlp_batch",
    "mlp_session",
    "poison",
    "snapshot",
]

F16, F32 = np.float16, np.float32


def assert_bitwise_equal(a: dict[str, np.ndarray], b: dict[str, np.ndarray], skip=()) -> None:
    assert set(a) - set(skip) == set(b) - set(skip)
    for k in set(a) - set(skip):
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert a[k].tobytes() == b[k].tobytes(), f"{k} changed"


def assert_same_up_to_fp16_rounding(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    """Bitwise for every non-float16 array; float16 arrays within one unit in the last place.

    onnxruntime's CPU provider computes float16 nodes in float32 (it inserts Casts and removes
    back-to-back ones), so where a float16 value is rounded depends on the graph's shape: adding
    the guard's Where nodes can move a rounding and change a float16 result by one ulp.
    """
    assert set(a) == set(b)
    for k in a:
        if a[k].dtype != np.float16:
            assert a[k].tobytes() == b[k].tobytes(), f"{k} changed"
            continue
        x, y = a[k].astype(np.float32), b[k].astype(np.float32)
        ulp = np.spacing(np.maximum(np.abs(a[k]), np.abs(b[k]))).astype(np.float32)
        assert (np.abs(x - y) <= ulp).all(), f"{k}: more than one float16 ulp apart"


def fp16_model() -> onnx.ModelProto:
    """float16 parameters and activations; the loss is computed in float32 (as MindSpore's amp
    casts the network output to float32 before the loss)."""
    rng = np.random.default_rng(3)
    w = numpy_helper.from_array((rng.standard_normal((8, 4)) * 0.5).astype(F16), "fc.weight")
    b = numpy_helper.from_array(np.zeros(4, F16), "fc.bias")
    nodes = [
        helper.make_node("MatMul", ["input", "fc.weight"], ["h"]),
        helper.make_node("Add", ["h", "fc.bias"], ["out"]),
        helper.make_node("Cast", ["out"], ["out32"], to=TensorProto.FLOAT),
        helper.make_node("Sub", ["out32", "target"], ["diff"]),
        helper.make_node("Mul", ["diff", "diff"], ["sq"]),
        helper.make_node("ReduceMean", ["sq"], ["fp32_mse"], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "fp16_linear",
        [
            helper.make_tensor_value_info("input", TensorProto.FLOAT16, ["N", 8]),
            helper.make_tensor_value_info("target", TensorProto.FLOAT, ["N", 4]),
        ],
        [
            helper.make_tensor_value_info("fp32_mse", TensorProto.FLOAT, []),
            helper.make_tensor_value_info("out", TensorProto.FLOAT16, ["N", 4]),
        ],
        [w, b],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def fp16_batch(step: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(200 + step)
    return {
        "input": rng.standard_normal((6, 8)).astype(F16),
        "target": rng.standard_normal((6, 4)).astype(F32),
    }


def mlp_session(**kwargs) -> ax.TrainingSession:
    m = build_mlp(in_features=12, hidden=(16,), num_classes=5, seed=1)
    opt = ax.AdaMax(ax.trainable_params(m), learning_rate=0.01)
    return ax.TrainingSession(ax.build_training_model(m, opt, loss="cross_entropy", **kwargs))


def mlp_batch(step: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(300 + step)
    return {
        "input": rng.standard_normal((8, 12)).astype(F32),
        "labels": rng.integers(0, 5, 8).astype(np.int64),
    }


def poison(arr: np.ndarray, kind: str, index=0) -> np.ndarray:
    out = arr.copy()
    value = {"nan": np.nan, "+inf": np.inf, "-inf": -np.inf, "1e30": 1e30}[kind]
    with np.errstate(over="ignore"):
        out.flat[index] = value  # 1e30 becomes +inf in float16
    return out
