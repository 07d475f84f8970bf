"""Token-level cross entropy ([B, T, V] scores, [B, T] labels) and build-time loss checks.

The built-in ``loss="cross_entropy"`` on ``[B, T, V]`` logits must equal torch's
``F.cross_entropy(logits.flatten(0, 1), labels.flatten())`` (class axis last, ignore_index -100,
mean over the tokens that count), step after step under MindSpore's AdaMax; ``[B, C]`` scores
keep today's graph exactly; every loss/output combination that could not run is refused when
the model is built.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

import adamax_onnx as ax
from adamax_onnx.models.mlp import build_mlp
from tests.tiny_gpt2 import Logits, tiny_gpt2_lm
from tests.torch_adamax import TorchAdaMax
from tests.torch_compat import transformers_available

V, D = 11, 6
STEPS = 12
RTOL = 1e-5


def _lm(rank: int = 3, dtype=TensorProto.FLOAT, out_shape=None, seed: int = 0):
    """ids [batch, seq] -> Gather(E) -> MatMul(W) + b -> logits [batch, seq, V]."""
    rng = np.random.default_rng(seed)
    values = {
        "E": rng.standard_normal((V, D)).astype(np.float32),
        "W": (0.3 * rng.standard_normal((D, V))).astype(np.float32),
        "b": (0.1 * rng.standard_normal(V)).astype(np.float32),
    }
    nodes = [
        helper.make_node("Gather", ["E", "ids"], ["h"]),
        helper.make_node("MatMul", ["h", "W"], ["hw"]),
        helper.make_node("Add", ["hw", "b"], ["logits"]),
    ]
    ids_shape = ["batch", "seq"] if rank == 3 else ["batch"]
    shape = out_shape if out_shape is not None else [*ids_shape, V]
    graph = helper.make_graph(
        nodes,
        "lm",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ids_shape)],
        [helper.make_tensor_value_info("logits", dtype, shape)],
        [numpy_helper.from_array(v, k) for k, v in values.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), values


def _torch_lm_losses(values, batches, lr):
    params = [torch.nn.Parameter(torch.tensor(values[k])) for k in ("E", "W", "b")]
    opt = TorchAdaMax(params, learning_rate=lr)
    losses = []
    for ids, labels in batches:
        opt.zero_grad()
        logits = params[0][torch.tensor(ids)] @ params[1] + params[2]
        loss = F.cross_entropy(logits.flatten(0, 1), torch.tensor(labels).flatten())
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, [p.detach().numpy() for p in params]


def _batches(seed=1, batch=3, seq=5, ignore=-100, frac=0.3):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(STEPS):
        ids = rng.integers(0, V, (batch, seq))
        labels = rng.integers(0, V, (batch, seq))
        labels[rng.random((batch, seq)) < frac] = ignore
        labels[0, 0] = rng.integers(0, V)  # at least one token counts
        out.append((ids, labels))
    return out


@pytest.mark.parametrize("frac", [0.0, 0.3])
def test_token_level_cross_entropy_trains_like_torch(frac):
    model, values = _lm()
    lr = 1e-2
    train = ax.build_training_model(model, ax.AdaMax(["E", "W", "b"], learning_rate=lr))
    labels_in = next(i for i in train.graph.input if i.name == "labels")
    dims = [d.dim_param or d.dim_value for d in labels_in.type.tensor_type.shape.dim]
    assert dims == ["batch", "seq"]
    sess = ax.TrainingSession(train)
    data = _batches(frac=frac)
    losses = [float(sess.step({"ids": i, "labels": y})) for i, y in data]
    ref, ref_params = _torch_lm_losses(values, data, lr)
    np.testing.assert_allclose(losses, ref, rtol=RTOL, atol=0)
    for name, want in zip(("E", "W", "b"), ref_params, strict=True):
        np.testing.assert_allclose(sess.parameters()[name], want, rtol=1e-4, atol=1e-6)


def test_token_level_explicit_ignore_index():
    model, values = _lm()
    train = ax.build_training_model(model, ax.AdaMax(["E", "W", "b"]), ignore_index=7)
    sess = ax.TrainingSession(train)
    ids, labels = _batches(ignore=7, frac=0.4)[0]
    got = float(sess.step({"ids": ids, "labels": labels}))
    logits = torch.tensor(values["E"])[torch.tensor(ids)] @ torch.tensor(values["W"])
    logits = logits + torch.tensor(values["b"])
    want = F.cross_entropy(logits.flatten(0, 1), torch.tensor(labels).flatten(), ignore_index=7)
    np.testing.assert_allclose(got, want.item(), rtol=RTOL)


def _rank4(perm):
    """The LM with logits [batch, seq, V] reshaped to [batch, 1, seq, V], then transposed."""
    model, values = _lm()
    g = model.graph
    g.node[-1].output[0] = "logits3"
    g.initializer.append(numpy_helper.from_array(np.array([0, 1, -1, V], np.int64), "shape4"))
    g.node.append(helper.make_node("Reshape", ["logits3", "shape4"], ["logits4"]))
    g.node.append(helper.make_node("Transpose", ["logits4"], ["logits"], perm=perm))
    dims = [["b", 1, "s", V][i] for i in perm]
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, dims))
    return model, values


def _torch_rank4_loss(values, ids, labels):
    logits = torch.tensor(values["E"])[torch.tensor(ids)] @ torch.tensor(values["W"])
    logits = (logits + torch.tensor(values["b"]))[:, None]  # [b, 1, s, V]
    # torch's own layout for images: F.cross_entropy([B, C, H, W], [B, H, W])
    return F.cross_entropy(logits.permute(0, 3, 1, 2), torch.tensor(labels)[:, None, :]).item()


@pytest.mark.parametrize(
    ("perm", "class_axis"), [([0, 1, 2, 3], -1), ([0, 3, 1, 2], 1)], ids=["last", "axis1"]
)
def test_rank4_scores_with_class_axis(perm, class_axis):
    """[B, H, W, V] (class_axis=-1) or [B, V, H, W] (class_axis=1) with [B, H, W] labels."""
    model, values = _rank4(perm)
    train = ax.build_training_model(model, ax.AdaMax(["E", "W", "b"]), class_axis=class_axis)
    labels_in = next(i for i in train.graph.input if i.name == "labels")
    assert [d.dim_param or d.dim_value for d in labels_in.type.tensor_type.shape.dim] == [
        "b",
        1,
        "s",
    ]
    ids, labels = _batches()[0]
    got = float(ax.TrainingSession(train).step({"ids": ids, "labels": labels[:, None, :]}))
    np.testing.assert_allclose(got, _torch_rank4_loss(values, ids, labels), rtol=RTOL)


def test_rank4_scores_need_a_class_axis():
    model, _ = _rank4([0, 3, 1, 2])
    with pytest.raises(ax.ModelError, match="class axis is ambiguous; say class_axis=1"):
        _build(model)
    with pytest.raises(ax.ModelError, match="class_axis 0 is not a class axis"):
        _build(model, class_axis=0)


def test_class_scores_graph_unchanged():
    """[B, C] scores: no Transpose, no ignore_index, labels [N] (as before token-level CE)."""
    mlp = build_mlp(seed=0)
    train = ax.build_training_model(mlp, ax.AdaMax(ax.trainable_params(mlp)))
    sce = [n for n in train.graph.node if n.op_type == "SoftmaxCrossEntropyLoss"]
    assert len(sce) == 1
    assert [a.name for a in sce[0].attribute] == ["reduction"]
    assert sce[0].input[0] == "logits"
    assert not any(
        n.op_type == "Transpose" and n.output[0].startswith("loss") for n in train.graph.node
    )
    labels_in = next(i for i in train.graph.input if i.name == "labels")
    assert [d.dim_param or d.dim_value for d in labels_in.type.tensor_type.shape.dim] == ["N"]
    # an explicit ignore_index applies to [B, C] scores too
    train = ax.build_training_model(mlp, ax.AdaMax(ax.trainable_params(mlp)), ignore_index=-1)
    sce = next(n for n in train.graph.node if n.op_type == "SoftmaxCrossEntropyLoss")
    assert (
        helper.get_attribute_value(next(a for a in sce.attribute if a.name == "ignore_index")) == -1
    )


def test_token_level_feed_errors():
    model, _ = _lm()
    sess = ax.TrainingSession(ax.build_training_model(model, ax.AdaMax(["E", "W", "b"])))
    ids, labels = _batches()[0]
    with pytest.raises(ax.FeedError, match=r"'labels' has shape \[3\], expected rank 2"):
        sess.step({"ids": ids, "labels": labels[:, 0]})
    bad = labels.copy()
    bad[1, 2] = V
    with pytest.raises(ax.FeedError, match=r"class label 11 at index \[1, 2\].*ignore_index -100"):
        sess.step({"ids": ids, "labels": bad})


# -- build-time errors ------------------------------------------------------------------------
def _build(model, **kw):
    return ax.build_training_model(model, ax.AdaMax(["E", "W", "b"]), **kw)


def test_cross_entropy_on_rank1_output():
    model, _ = _lm(rank=2, out_shape=[V])
    with pytest.raises(ax.ModelError, match=r"'logits', which has type FLOAT, shape \[11\]"):
        _build(model)


def test_cross_entropy_on_unknown_rank_output():
    model, _ = _lm()
    model.graph.output[0].type.tensor_type.ClearField("shape")
    model.graph.input[0].type.tensor_type.ClearField("shape")  # nothing to infer from
    with pytest.raises(ax.ModelError, match="unknown shape.*give the output a shape"):
        _build(model)


def test_unknown_output_shape_is_inferred():
    model, _ = _lm()
    model.graph.output[0].type.tensor_type.ClearField("shape")
    train = _build(model)
    assert any(n.op_type == "Transpose" for n in train.graph.node)


def _int_output_model():
    model, _ = _lm()
    model.graph.node.append(helper.make_node("ArgMax", ["logits"], ["pred"], axis=-1))
    model.graph.node.append(helper.make_node("ReduceMax", ["logits"], ["top"], keepdims=0))
    model.graph.node.append(helper.make_node("Cast", ["top"], ["top_int"], to=TensorProto.INT64))
    model.graph.output.append(helper.make_tensor_value_info("pred", TensorProto.INT64, None))
    model.graph.output.append(helper.make_tensor_value_info("top_int", TensorProto.INT64, []))
    return model


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_builtin_loss_on_integer_output(loss):
    with pytest.raises(ax.ModelError, match=r"output 'pred', which has type INT64.*float scores"):
        _build(_int_output_model(), loss=loss, output="pred")


def test_named_loss_output_of_integer_type():
    with pytest.raises(ax.ModelError, match=r"'top_int' has type INT64.*float scalar"):
        _build(_int_output_model(), loss="top_int")


def test_bad_ignore_index():
    model, _ = _lm()
    with pytest.raises(ax.ModelError, match="ignore_index must be an int"):
        _build(model, ignore_index=1.5)


# -- GPT-2 (transformers) ---------------------------------------------------------------------
def _gpt2(seed=0):
    model = tiny_gpt2_lm(seed).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # distinct values: no merged initializers (see tests/passes/test_ties.py)
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=gen))
    return model


class _OwnLoss(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, labels):
        return self.inner(input_ids=input_ids, labels=labels).loss


def _export(module, args, names, output):
    buf = io.BytesIO()
    dyn = {n: {0: "batch", 1: "seq"} for n in names}
    if output == "logits":
        dyn[output] = {0: "batch", 1: "seq"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            buf,
            dynamo=False,
            do_constant_folding=False,
            opset_version=18,
            input_names=names,
            output_names=[output],
            dynamic_axes=dyn,
        )
    return onnx.load_from_string(buf.getvalue())


def _gpt2_data(seed=3, batch=2, seq=7):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(STEPS):
        ids = torch.randint(0, 40, (batch, seq), generator=gen)
        labels = torch.randint(0, 40, (batch, seq), generator=gen)
        labels[torch.rand(batch, seq, generator=gen) < 0.25] = -100
        labels[0, 1] = 5
        out.append((ids, labels))
    return out


@pytest.mark.slow
@pytest.mark.skipif(not transformers_available(), reason="needs transformers")
@pytest.mark.parametrize("own_loss", [False, True], ids=["token_ce", "own_loss"])
def test_gpt2_lm_trains_like_torch(own_loss):
    lm = _gpt2()
    wrapper = _OwnLoss(lm) if own_loss else Logits(lm)
    data = _gpt2_data()
    ids0, labels0 = data[0]
    if own_loss:
        model = _export(wrapper, (ids0, labels0), ["input_ids", "labels"], "loss")
    else:
        model = _export(wrapper, (ids0,), ["input_ids"], "logits")
    names = ax.trainable_params(model)
    torch_names = [n for n, _ in wrapper.named_parameters()]
    assert sorted(names) == sorted(torch_names)  # wte and the LM head: one tied tensor
    lr = 1e-3
    if own_loss:
        train = ax.build_training_model(model, ax.AdaMax(names, learning_rate=lr), loss="loss")
    else:
        train = ax.build_training_model(model, ax.AdaMax(names, learning_rate=lr))
    sess = ax.TrainingSession(train)
    losses = []
    for ids, labels in data:
        feeds = {"input_ids": ids.numpy(), "labels": labels.numpy()}
        losses.append(float(sess.step(feeds)))

    opt = TorchAdaMax(wrapper.parameters(), learning_rate=lr)
    ref = []
    for ids, labels in data:
        opt.zero_grad()
        if own_loss:
            loss = wrapper(ids, labels)
        else:
            # Hugging Face shifts inside its own loss; the built-in loss reads labels as given
            loss = F.cross_entropy(wrapper(ids).flatten(0, 1), labels.flatten())
        loss.backward()
        opt.step()
        ref.append(loss.item())
    np.testing.assert_allclose(losses, ref, rtol=RTOL, atol=0)
    assert losses[0] != losses[-1]
    trained = sess.parameters()
    for n, p in wrapper.named_parameters():
        np.testing.assert_allclose(trained[n], p.detach().numpy(), rtol=1e-3, atol=1e-5)


def test_cli_build_class_axis_and_ignore_index(tmp_path, capsys):
    from adamax_onnx.cli import main

    model, _ = _rank4([0, 3, 1, 2])
    onnx.save(model, tmp_path / "seg.onnx")
    args = ["build", str(tmp_path / "seg.onnx"), "-o", str(tmp_path / "train.onnx")]
    assert main(args) == 2
    assert "class_axis" in capsys.readouterr().err
    assert main([*args, "--class-axis", "1", "--ignore-index", "3"]) == 0
    train = onnx.load(tmp_path / "train.onnx")
    sce = next(n for n in train.graph.node if n.op_type == "SoftmaxCrossEntropyLoss")
    assert {a.name: helper.get_attribute_value(a) for a in sce.attribute}["ignore_index"] == 3
