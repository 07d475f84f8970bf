"""Wrong feeds to ``TrainingSession.step`` (and ``predict``): a clear error, nothing changed.

Every bad feed must raise :class:`adamax_onnx.FeedError` naming the input at fault and what was
expected, before anything runs; afterwards parameters and optimizer state are bit-identical,
and the next good step gives exactly what a fresh session's first step gives.
"""

from __future__ import annotations

import numpy as np
import pytest

import adamax_onnx as ax
from adamax_onnx.models.mlp import build_mlp
from tests.state import snapshot_bytes as snapshot

N, FEATURES, CLASSES = 4, 12, 5


@pytest.fixture(scope="module")
def train_model():
    m = build_mlp(in_features=FEATURES, hidden=(16,), num_classes=CLASSES, seed=1)
    return ax.build_training_model(m, ax.AdaMax(ax.trainable_params(m), learning_rate=0.01))


@pytest.fixture(scope="module")
def mse_model():
    m = build_mlp(in_features=FEATURES, hidden=(), num_classes=3, seed=2)
    return ax.build_training_model(m, ax.AdaMax(ax.trainable_params(m)), loss="mse")


def good(n: int = N) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "input": rng.standard_normal((n, FEATURES)).astype(np.float32),
        "labels": rng.integers(0, CLASSES, n).astype(np.int64),
    }


def with_(**changes) -> dict:
    feeds = good()
    for k, v in changes.items():
        if v is _DROP:
            feeds.pop(k)
        else:
            feeds[k] = v
    return feeds


_DROP = object()
x, y = good()["input"], good()["labels"]

# case -> (feeds, words the message must contain)
BAD_FEEDS = {
    "missing_labels": (with_(labels=_DROP), ["missing", "'labels'", "'input'"]),
    "missing_input": (with_(input=_DROP), ["missing", "'input'"]),
    "empty_dict": ({}, ["missing", "'input'", "'labels'"]),
    "extra_input": (with_(weights=np.ones(N, np.float32)), ["unexpected", "'weights'"]),
    "misnamed_input": (
        {"inputs": x, "labels": y},
        ["missing input(s) ['input']", "unexpected input(s) ['inputs']"],
    ),
    "misnamed_label": ({"input": x, "label": y}, ["'labels'", "'label'"]),
    "parameter_as_feed": (with_(**{"fc1.weight": np.zeros((16, 12), np.float32)}), ["fc1.weight"]),
    "state_as_feed": (with_(**{"adamax.global_step": np.array(5)}), ["adamax.global_step"]),
    "input_float64": (with_(input=x.astype(np.float64)), ["'input'", "float64", "float32"]),
    "input_float16": (with_(input=x.astype(np.float16)), ["'input'", "float16", "float32"]),
    "input_int": (with_(input=x.astype(np.int64)), ["'input'", "int64", "float32"]),
    "input_big_endian": (with_(input=x.astype(">f4")), ["'input'", "float32"]),
    "labels_int32": (with_(labels=y.astype(np.int32)), ["'labels'", "int32", "int64"]),
    "labels_float": (with_(labels=y.astype(np.float32)), ["'labels'", "float32", "int64"]),
    "input_list": (with_(input=x.tolist()), ["'input'", "numpy array", "list"]),
    "input_none": (with_(input=None), ["'input'", "NoneType"]),
    "input_scalar": (with_(input=np.float32(1.0)), ["'input'", "numpy array"]),
    "input_rank1": (with_(input=x[0]), ["'input'", "rank 2"]),
    "input_rank3": (with_(input=x[None]), ["'input'", "rank 2"]),
    "input_wrong_features": (with_(input=x[:, :11].copy()), ["'input'", "axis 1 must be 12"]),
    "input_transposed": (with_(input=x.T.copy()), ["'input'", "axis 1 must be 12"]),
    "labels_2d": (with_(labels=y[:, None]), ["'labels'", "rank 1"]),
    "batch_mismatch": (with_(labels=y[:3].copy()), ["'labels'", "'input'", "N="]),
    "empty_batch": (
        {"input": np.zeros((0, FEATURES), np.float32), "labels": np.zeros(0, np.int64)},
        ["'input'", "empty"],
    ),
    "label_too_big": (with_(labels=np.array([0, 1, 2, CLASSES])), ["'labels'", "[0, 5)", "5"]),
    "label_negative": (with_(labels=np.array([0, -1, 2, 3])), ["'labels'", "-1", "[0, 5)"]),
    "label_huge": (with_(labels=np.array([0, 1, 2, 2**40])), ["'labels'", "[0, 5)"]),
}


def test_counts():
    # The figure reported in the issue note.
    assert len(BAD_FEEDS) >= 25


@pytest.mark.parametrize("case", sorted(BAD_FEEDS))
def test_bad_feed_is_refused_before_running_and_changes_nothing(train_model, case):
    feeds, words = BAD_FEEDS[case]
    sess = ax.TrainingSession(train_model)
    sess.step(good())  # non-trivial state: m, v, beta1_power, global_step have moved
    before = snapshot(sess)
    with pytest.raises(ax.FeedError) as info:
        sess.step(feeds)
    message = str(info.value)
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    assert "\n" not in message
    assert snapshot(sess) == before
    assert sess.global_step == 1


def test_feeds_not_a_mapping(train_model):
    sess = ax.TrainingSession(train_model)
    with pytest.raises(ax.FeedError, match="dict of input name"):
        sess.step([x, y])
    with pytest.raises(ax.FeedError, match="dict"):
        sess.step(x)


def test_next_good_step_after_every_error_matches_a_fresh_session(train_model):
    sess = ax.TrainingSession(train_model)
    for feeds, _ in BAD_FEEDS.values():
        with pytest.raises(ax.FeedError):
            sess.step(feeds)
    fresh = ax.TrainingSession(train_model)
    assert sess.step(good()) == fresh.step(good())
    assert snapshot(sess) == snapshot(fresh)


def test_non_contiguous_input_is_accepted_and_equal_to_its_copy(train_model):
    a, b = ax.TrainingSession(train_model), ax.TrainingSession(train_model)
    wide = np.repeat(good()["input"], 2, axis=1)
    strided = wide[:, ::2]
    assert not strided.flags["C_CONTIGUOUS"]
    assert a.step({"input": strided, "labels": y}) == b.step(
        {"input": np.ascontiguousarray(strided), "labels": y}
    )
    assert snapshot(a) == snapshot(b)


def test_feeds_are_not_modified_and_not_retained(train_model):
    sess = ax.TrainingSession(train_model)
    feeds = good()
    copy = {k: v.copy() for k, v in feeds.items()}
    sess.step(feeds)
    for k in feeds:
        np.testing.assert_array_equal(feeds[k], copy[k])
    # Overwriting the caller's arrays after the step does not affect the next one.
    other = ax.TrainingSession(train_model)
    other.step(good())
    feeds["input"][:] = np.nan
    assert sess.step(good()) == other.step(good())


def test_mse_label_shape_and_dtype(mse_model):
    sess = ax.TrainingSession(mse_model)
    ok = {"input": x, "labels": np.zeros((N, 3), np.float32)}
    sess.step(ok)
    before = snapshot(sess)
    for bad, word in [
        ({"input": x, "labels": np.zeros((N, 4), np.float32)}, "axis 1 must be 3"),
        ({"input": x, "labels": np.zeros((N, 3), np.float64)}, "float64"),
        ({"input": x, "labels": np.zeros(N, np.float32)}, "rank 2"),
    ]:
        with pytest.raises(ax.FeedError, match=word):
            sess.step(bad)
    assert snapshot(sess) == before


def test_optimizer_model_gradient_feeds():
    params = {"w": np.ones((2, 3), np.float32)}
    sess = ax.TrainingSession(ax.build_optimizer_model(ax.AdaMax(["w"]), params))
    before = snapshot(sess)
    for bad, word in [
        ({}, "w_grad"),
        ({"w": np.ones((2, 3), np.float32)}, "w_grad"),
        ({"w_grad": np.ones((3, 2), np.float32)}, "axis 0 must be 2"),
        ({"w_grad": np.ones((2, 3), np.float64)}, "float64"),
    ]:
        with pytest.raises(ax.FeedError, match=word):
            sess.step(bad)
    assert snapshot(sess) == before


def test_gradient_feeds_of_any_layout_or_array_subclass_train_alike():
    # Arrays of exactly the expected static shape and dtype take the validator's one-comparison
    # path; a strided view, a read-only array and an ndarray subclass must give the same step.
    params = {"w": np.ones((2, 3), np.float32), "b": np.ones(3, np.float32)}
    model = ax.build_optimizer_model(ax.AdaMax(["w", "b"], learning_rate=0.1), params)
    rng = np.random.default_rng(3)
    grads = [
        {"w_grad": rng.standard_normal((2, 3)).astype(np.float32), "b_grad": np.ones(3, "f4")}
        for _ in range(3)
    ]

    class Sub(np.ndarray):
        pass

    def variants(g):
        wide = np.repeat(g["w_grad"], 2, axis=1)
        frozen = g["b_grad"].copy()
        frozen.flags.writeable = False
        yield g
        yield {"w_grad": wide[:, ::2], "b_grad": frozen}
        yield {"w_grad": g["w_grad"].view(Sub), "b_grad": g["b_grad"]}

    runs = []
    for k in range(3):
        sess = ax.TrainingSession(model)
        for g in grads:
            sess.step(list(variants(g))[k])
        runs.append(snapshot(sess))
    assert runs[0] == runs[1] == runs[2]
    with pytest.raises(ax.FeedError, match="'w_grad' has dtype >f4"):
        sess.step({"w_grad": grads[0]["w_grad"].astype(">f4"), "b_grad": grads[0]["b_grad"]})


def test_predict_feeds_are_checked(train_model):
    sess = ax.TrainingSession(train_model)
    for bad, word in [
        ({}, "missing input"),
        ({"input": x, "labels": y}, r"unexpected input\(s\) \['labels'\]"),
        ({"input": x.astype(np.float64)}, "float64"),
        ({"input": x[0]}, "rank 2"),
        ({"input": x[:, :11].copy()}, "axis 1 must be 12"),  # the step's checks, one validator
        ([x], "dict of input name"),
    ]:
        with pytest.raises(ax.FeedError, match=word):
            sess.predict(bad)
    (out,) = sess.predict({"input": x})
    assert out.shape == (N, CLASSES)


@pytest.mark.parametrize(
    "sizes",
    [[4, 3, 4, 4, 2, 4], [30000, 4, 30000, 4, 4]],  # 30000 rows: 1.4 MiB, bound in place
    ids=["small", "large-small"],
)
def test_batch_sizes_changing_between_steps_train_like_a_plain_loop(train_model, sizes):
    """Fed arrays are copied into buffers bound once (a new batch size binds new ones), large
    ones are bound in place. The losses and parameters equal a plain onnxruntime loop over the
    same model (the README's recipe: start from the ``.initial`` values, feed every
    ``X.updated`` back as ``X``)."""
    import onnxruntime as ort
    from onnx import numpy_helper

    from adamax_onnx.passes.contract import read_contract

    sess = ax.TrainingSession(train_model)
    plain = ort.InferenceSession(
        train_model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    contract = read_contract(train_model)
    inits = {i.name: numpy_helper.to_array(i) for i in train_model.graph.initializer}
    state = {name: inits[initial] for name, initial in contract.initial.items()}
    outputs = [o.name for o in plain.get_outputs()]
    for step, n in enumerate(sizes):
        batch = good(n)
        batch["input"] = batch["input"] * (1 + step)  # a different batch every step
        got = sess.step(batch)
        out = dict(zip(outputs, plain.run(None, {**batch, **state}), strict=True))
        for name in state:  # a fixed learning rate is an input with no update
            state[name] = out.get(f"{name}.updated", state[name])
        np.testing.assert_allclose(got, out["loss"], rtol=1e-6, err_msg=f"step {step}")
    for p, value in sess.parameters().items():
        np.testing.assert_allclose(value, state[p], rtol=1e-6, atol=1e-7, err_msg=p)


def test_a_model_of_fixed_batch_size_trains_like_a_plain_loop():
    """A data input of one static shape is copied into a buffer bound once, the labels (still
    [N]) into their own; the label range is still checked, and the run equals a plain
    onnxruntime loop."""
    import onnxruntime as ort
    from onnx import numpy_helper

    from adamax_onnx.passes.contract import read_contract

    m = build_mlp(in_features=FEATURES, hidden=(16,), num_classes=CLASSES, seed=1)
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = N  # [N, 12] -> [4, 12]
    model = ax.build_training_model(m, ax.AdaMax(ax.trainable_params(m), learning_rate=0.01))
    sess = ax.TrainingSession(model)
    plain = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert plain.get_inputs()[0].shape == [N, FEATURES]
    contract = read_contract(model)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    state = {name: inits[initial] for name, initial in contract.initial.items()}
    outputs = [o.name for o in plain.get_outputs()]
    for step in range(4):
        batch = good()
        batch["input"] = batch["input"] * (1 + step)
        got = sess.step(batch)
        out = dict(zip(outputs, plain.run(None, {**batch, **state}), strict=True))
        for name in state:
            state[name] = out.get(f"{name}.updated", state[name])
        np.testing.assert_allclose(got, out["loss"], rtol=1e-6, err_msg=f"step {step}")
    before = snapshot(sess)
    with pytest.raises(ax.FeedError, match=r"'labels' holds class label 5"):
        sess.step(with_(labels=np.array([0, 1, 2, CLASSES])))
    with pytest.raises(ax.FeedError, match="axis 0 must be 4"):
        sess.step({"input": x[:3].copy(), "labels": y})
    assert snapshot(sess) == before
    for p, value in sess.parameters().items():
        np.testing.assert_allclose(value, state[p], rtol=1e-6, atol=1e-7, err_msg=p)
