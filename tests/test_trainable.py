"""export_trainable_model: one ONNX file in the IR's training_info form, and resuming from it.

The reference for "continues exactly" is the same session trained without interruption: the
resumed session must reach bit-identical parameters and optimizer state.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator

import adamax_onnx as ax
from adamax_onnx.models.cnn import build_cnn
from adamax_onnx.models.mlp import build_mlp
from adamax_onnx.models.transformer import build_transformer
from adamax_onnx.passes.contract import updated


def _batches(kind: str, n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        if kind == "cnn":
            x = rng.random((4, 1, 8, 8), dtype=np.float32)
        elif kind == "mlp":
            x = rng.random((4, 64), dtype=np.float32)
        else:
            x = rng.integers(0, 16, (4, 8)).astype(np.int64)
        classes = 4 if kind == "transformer" else 10
        key = "input_ids" if kind == "transformer" else "input"
        out.append({key: x, "labels": rng.integers(0, classes, 4).astype(np.int64)})
    return out


FAMILIES = {
    "mlp": lambda: build_mlp(hidden=(16,)),
    "cnn": lambda: build_cnn(batchnorm=True),
    "transformer": lambda: build_transformer(),
}


def _session(kind: str, portable: bool = True) -> ax.TrainingSession:
    m = FAMILIES[kind]()
    opt = ax.AdaMax(ax.trainable_params(m), learning_rate=1e-2)
    return ax.TrainingSession(ax.build_training_model(m, opt, portable=portable))


def _state(sess: ax.TrainingSession) -> dict[str, np.ndarray]:
    st = sess.state()
    flat = {f"m/{k}": v for k, v in st["m"].items()}
    flat.update({f"v/{k}": v for k, v in st["v"].items()})
    flat.update({k: np.asarray(st[k]) for k in ("global_step", "beta1_power")})
    flat.update({f"p/{k}": v for k, v in sess.parameters().items()})
    return flat


@pytest.mark.parametrize("kind", list(FAMILIES))
def test_round_trip_resumes_exactly(kind, tmp_path):
    batches = _batches(kind, 7)
    a = _session(kind)
    for b in batches[:3]:
        a.step(b)
    a.set_learning_rate(0.005)
    path = ax.export_trainable_model(a, tmp_path / "model.onnx")

    b_sess = ax.TrainingSession(str(path))
    assert b_sess.global_step == 3
    assert b_sess.learning_rates == a.learning_rates == {0: float(np.float32(0.005))}
    for key, value in _state(a).items():
        np.testing.assert_array_equal(_state(b_sess)[key], value, err_msg=key)
    losses_a = [a.step(b) for b in batches[3:]]
    losses_b = [b_sess.step(b) for b in batches[3:]]
    assert losses_a == losses_b
    for key, value in _state(a).items():
        np.testing.assert_array_equal(_state(b_sess)[key], value, err_msg=key)

    # Exporting again from the resumed session gives the same file contents as from the
    # uninterrupted one: the state continues exactly.
    again = onnx.load(str(ax.export_trainable_model(b_sess, tmp_path / "again.onnx")))
    direct = onnx.load(str(ax.export_trainable_model(a, tmp_path / "direct.onnx")))
    got = {i.name: numpy_helper.to_array(i) for i in again.graph.initializer}
    want = {i.name: numpy_helper.to_array(i) for i in direct.graph.initializer}
    assert got.keys() == want.keys()
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    assert int(got["adamax.global_step"]) == 7


def test_file_layout_follows_the_ir_training_form(tmp_path):
    sess = _session("cnn")
    sess.step(_batches("cnn", 1)[0])
    model = onnx.load(str(ax.export_trainable_model(sess, tmp_path / "cnn.onnx")))
    onnx.checker.check_model(model, full_check=True)
    assert len(model.training_info) == 1
    info = model.training_info[0]
    main_inits = {i.name for i in model.graph.initializer}
    alg_outputs = {o.name for o in info.algorithm.output}
    bindings = {b.key: b.value for b in info.update_binding}
    expected = set(sess.contract.state_inputs())
    assert set(bindings) == expected  # every parameter and state tensor
    assert set(bindings) <= main_inits  # ... is an initializer of the inference graph
    assert all(bindings[k] == updated(k) and bindings[k] in alg_outputs for k in bindings)
    # The main graph is the original inference graph (BatchNormalization and all).
    assert [n.op_type for n in model.graph.node] == [
        n.op_type for n in sess.inference_model().graph.node
    ]
    assert [o.name for o in model.graph.output] == ["logits"]
    # The combined graph (inference nodes, then algorithm nodes) is in SSA form.
    produced = [o for n in list(model.graph.node) + list(info.algorithm.node) for o in n.output]
    assert len(produced) == len(set(produced))
    defined = main_inits | {i.name for i in model.graph.input} | set(produced)
    defined |= {i.name for i in info.algorithm.input} | {i.name for i in info.algorithm.initializer}
    for node in info.algorithm.node:
        assert all(i == "" or i in defined for i in node.input), node.name


def test_any_inference_runtime_runs_the_file(tmp_path):
    sess = _session("mlp")
    batches = _batches("mlp", 2)
    for b in batches:
        sess.step(b)
    path = ax.export_trainable_model(sess, tmp_path / "mlp.onnx")
    x = batches[0]["input"]
    (want,) = sess.predict({"input": x})
    (ort_out,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"input": x}
    )
    (ref_out,) = ReferenceEvaluator(str(path)).run(None, {"input": x})
    # numpy, from the trained parameters: fc2(relu(fc1(x)))
    p = sess.parameters()
    h = np.maximum(x @ p["fc1.weight"].T + p["fc1.bias"], 0)
    numpy_out = h @ p["fc2.weight"].T + p["fc2.bias"]
    for got in (ort_out, ref_out, want):
        np.testing.assert_allclose(got, numpy_out, rtol=1e-5, atol=1e-5)


def test_export_from_a_built_model_and_from_a_non_portable_one(tmp_path):
    m = build_mlp(hidden=(16,))
    opt = ax.AdaMax(ax.trainable_params(m), learning_rate=1e-2)
    for portable in (True, False):
        built = ax.build_training_model(m, opt, portable=portable)
        path = ax.export_trainable_model(built, tmp_path / f"p{portable}.onnx")
        fresh = ax.TrainingSession(str(path))
        direct = ax.TrainingSession(built)
        b = _batches("mlp", 1)[0]
        assert fresh.global_step == 0
        assert fresh.step(b) == direct.step(b)
        for k, v in direct.parameters().items():
            np.testing.assert_array_equal(fresh.parameters()[k], v)


def test_optimizer_model_is_refused(tmp_path):
    opt = ax.AdaMax(["w"], learning_rate=1e-2)
    model = ax.build_optimizer_model(opt, {"w": np.ones(3, np.float32)})
    with pytest.raises(ax.ModelError, match="optimizer-only model has no inference graph"):
        ax.export_trainable_model(model, tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()
