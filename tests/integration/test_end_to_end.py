"""End to end: inference model -> training model -> TrainingSession -> checkpoint -> export."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import adamax_onnx as ax
from adamax_onnx.models.cnn import build_cnn
from adamax_onnx.models.data import load_digits_split
from adamax_onnx.models.mlp import build_mlp
from adamax_onnx.training import evaluate, fit
from tests.reference import NumpyAdaMax

FAMILIES = {
    "mlp": (lambda: build_mlp(), False),
    "cnn": (lambda: build_cnn(), True),
}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request):
    build, image = FAMILIES[request.param]
    return request.param, build, load_digits_split(image=image)


def test_digits_accuracy_passes_90_percent(family, tmp_path):
    name, build, (xtr, ytr, xte, yte) = family
    model = build()
    opt = ax.AdaMax(ax.trainable_params(model), learning_rate=0.01)
    sess = ax.TrainingSession(ax.build_training_model(model, opt, loss="cross_entropy"))
    before = evaluate(sess, xte, yte)
    history = fit(sess, xtr, ytr, epochs=8, batch_size=32, seed=0)
    after = evaluate(sess, xte, yte)
    assert before["accuracy"] < 0.3
    assert after["accuracy"] > 0.90, f"{name}: {after}"
    assert history[-1].train_loss < history[0].train_loss / 2
    # Export: the original inference graph with the trained weights, runnable in onnxruntime.
    path = sess.export_inference_model(tmp_path / f"{name}.onnx")
    exported = onnx.load(str(path))
    onnx.checker.check_model(exported, full_check=True)
    assert [n.op_type for n in exported.graph.node] == [n.op_type for n in model.graph.node]
    params = sess.parameters()
    for init in exported.graph.initializer:
        if init.name in params:
            np.testing.assert_array_equal(onnx.numpy_helper.to_array(init), params[init.name])
    out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"input": xte}
    )[0]
    # Same graph and weights; only kernel choices differ (weights as inputs vs constants).
    np.testing.assert_allclose(out, sess.predict({"input": xte})[0], rtol=1e-5, atol=1e-5)
    assert float((out.argmax(1) == yte).mean()) == pytest.approx(after["accuracy"])


def test_training_step_matches_numpy_update_of_graph_gradients():
    """One fused step == numpy AdaMax applied to the gradients the gradient pass computes."""
    from adamax_onnx.passes.gradients import BuildGradients
    from adamax_onnx.passes.loss import AttachLoss

    model = build_mlp(hidden=(16,))
    # Dense random inputs: AdaMax maps a gradient of 1e-12 to a full +-lr step, so pixels that
    # are almost always 0 (digits) would turn rounding noise into sign flips.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 64)).astype(np.float32)
    y = rng.integers(0, 10, 32).astype(np.int64)
    names = ax.trainable_params(model)
    opt = ax.AdaMax(names, learning_rate=0.01, weight_decay=0.01, loss_scale=64.0)
    grad_model = BuildGradients("loss", names, seed=1.0)(
        AttachLoss("cross_entropy")(model).model
    ).model
    init = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    so = ort.SessionOptions()
    so.log_severity_level = 3
    gsess = ort.InferenceSession(
        grad_model.SerializeToString(), so, providers=["CPUExecutionProvider"]
    )
    ref = NumpyAdaMax(
        {n: init[n] for n in names}, learning_rate=0.01, weight_decay=0.01, loss_scale=64.0
    )
    sess = ax.TrainingSession(ax.build_training_model(model, opt))
    for _ in range(3):
        feeds = {"input": x, "labels": y, **ref.w}
        outs = dict(zip([o.name for o in gsess.get_outputs()], gsess.run(None, feeds), strict=True))
        # MindSpore's fixed loss scale: gradients arrive multiplied by loss_scale.
        ref.update({n: outs[f"{n}_grad"] * np.float32(64.0) for n in names})
        loss = sess.step({"input": x, "labels": y})
        np.testing.assert_allclose(loss, outs["loss"], rtol=1e-5)
    got = sess.parameters()
    for n in names:
        np.testing.assert_allclose(got[n], ref.w[n], rtol=2e-5, atol=2e-6, err_msg=n)


def test_checkpoint_resume_gives_the_same_trajectory(tmp_path):
    model = build_cnn()
    xtr, ytr, _, _ = load_digits_split(image=True)
    x, y = xtr[:256], ytr[:256]
    opt = ax.AdaMax(ax.trainable_params(model), learning_rate=[0.01] * 10 + [0.005] * 10)
    train = ax.build_training_model(model, opt)

    straight = ax.TrainingSession(train)
    fit(straight, x, y, epochs=2, batch_size=32, seed=3)

    first = ax.TrainingSession(train)
    fit(first, x, y, epochs=1, batch_size=32, seed=3, checkpoint=tmp_path / "ckpt")
    resumed = ax.TrainingSession(train)
    resumed.load_checkpoint(tmp_path / "ckpt")
    assert resumed.global_step == 8
    fit(resumed, x, y, epochs=2, batch_size=32, seed=3)

    a, b = straight.parameters(), resumed.parameters()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    sa, sb = straight.state(), resumed.state()
    assert sa["global_step"] == sb["global_step"] == 16
    assert sa["beta1_power"] == sb["beta1_power"]
    for k in a:
        np.testing.assert_array_equal(sa["m"][k], sb["m"][k])
        np.testing.assert_array_equal(sa["v"][k], sb["v"][k])


def test_checkpoint_of_another_model_is_refused_and_state_kept(tmp_path):
    mlp = build_mlp()
    other = build_mlp(hidden=(32,))
    s1 = ax.TrainingSession(ax.build_training_model(mlp, ax.AdaMax(ax.trainable_params(mlp))))
    s2 = ax.TrainingSession(ax.build_training_model(other, ax.AdaMax(ax.trainable_params(other))))
    s2.save_checkpoint(tmp_path / "other")
    before = s1.parameters()
    with pytest.raises(ax.CheckpointError, match="another model"):
        s1.load_checkpoint(tmp_path / "other")
    for k, v in s1.parameters().items():
        np.testing.assert_array_equal(v, before[k])


def test_mse_loss_and_frozen_parameters():
    model = build_mlp(in_features=4, hidden=(8,), num_classes=2)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype(np.float32)
    y = np.stack([x[:, 0] - x[:, 1], 0.5 * x[:, 2]], axis=1).astype(np.float32)
    # Train only the last layer: fc1 stays frozen (kept as a constant initializer).
    opt = ax.AdaMax(["fc2.weight", "fc2.bias"], learning_rate=0.02)
    train = ax.build_training_model(model, opt, loss="mse")
    sess = ax.TrainingSession(train)
    losses = [sess.step({"input": x, "labels": y}) for _ in range(150)]
    assert losses[-1] < losses[0] * 0.5
    init = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    pred = sess.predict({"input": x})[0]
    h = np.maximum(x @ init["fc1.weight"].T + init["fc1.bias"], 0)
    p = sess.parameters()
    np.testing.assert_allclose(pred, h @ p["fc2.weight"].T + p["fc2.bias"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(losses[-1], ((pred - y) ** 2).mean(), rtol=0.05)


def test_existing_scalar_output_as_loss():
    model = build_mlp(in_features=4, hidden=(), num_classes=1)
    with_loss = onnx.ModelProto()
    with_loss.CopyFrom(model)
    g = with_loss.graph
    g.node.append(onnx.helper.make_node("ReduceMean", ["logits"], ["score"], keepdims=0))
    g.output.append(onnx.helper.make_tensor_value_info("score", onnx.TensorProto.FLOAT, []))
    opt = ax.AdaMax(ax.trainable_params(with_loss), learning_rate=0.1)
    sess = ax.TrainingSession(ax.build_training_model(with_loss, opt, loss="score"))
    x = np.ones((4, 4), np.float32)
    first = sess.step({"input": x})
    second = sess.step({"input": x})
    assert second < first  # minimizing the mean output pushes it down


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"loss": "nope"}, "neither"),
        ({"loss": "mse", "output": "zzz"}, "not an output"),
        ({"label": "input"}, "already used"),
    ],
)
def test_bad_build_arguments_name_the_problem(kwargs, match):
    model = build_mlp()
    with pytest.raises(ax.ModelError, match=match):
        ax.build_training_model(model, ax.AdaMax(ax.trainable_params(model)), **kwargs)


def test_unknown_parameter_is_named():
    model = build_mlp()
    with pytest.raises(ax.ModelError, match="fc9.weight"):
        ax.build_training_model(model, ax.AdaMax(["fc1.weight", "fc9.weight"]))


def test_trainable_params_excludes_running_stats_and_constants():
    model = build_cnn(batchnorm=True)
    names = ax.trainable_params(model)
    assert "bn1.scale" in names and "bn1.bias" in names
    assert "bn1.running_mean" not in names and "bn1.running_var" not in names
    assert all(not n.startswith("shape") for n in names)
