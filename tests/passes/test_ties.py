"""Tied tensors (adamax_onnx/passes/ties.py): detection, untying with a warning, keep_ties, and training.

Real ``torch.onnx.export`` output of freshly initialised models (no perturbation: equal values
are what makes the exporters merge tensors): every tie the pass finds is listed here, and after
untying the model trains like torch (MindSpore AdaMax written in torch, 12 steps, 1e-5
relative) with its frozen tensors bit-identical.
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
from torch import nn

import adamax_onnx as ax
from adamax_onnx.passes.ties import RetieFoldedCopies, UntieTensors, find_ties
from tests.tiny_gpt2 import Logits, tiny_gpt2_lm
from tests.torch_adamax import TorchAdaMax
from tests.torch_compat import transformers_available

STEPS = 12
RTOL = 1e-5
LR = 1e-3


class FreshCNN(nn.Module):
    """Conv-BN-ReLU x2 (fresh BatchNorm: weight 1, bias 0, running var 1, running mean 0)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        h = F.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 2)
        h = torch.relu(self.bn2(self.conv2(h)))
        return self.fc(h.mean(dim=(2, 3)))


def _torchscript(module, example, fold: bool, input_name="input"):
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (example,),
            buf,
            dynamo=False,
            do_constant_folding=fold,
            input_names=[input_name],
            output_names=["logits"],
            dynamic_axes={input_name: {0: "batch"}, "logits": {0: "batch"}},
        )
    return onnx.load_from_string(buf.getvalue())


def _ties(model):
    return sorted((t.kind, t.tensor, t.source) for t in find_ties(model))


def _train_both(module, model, names, data, input_name="input", **build):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train = ax.build_training_model(model, ax.AdaMax(names, learning_rate=LR), **build)
    sess = ax.TrainingSession(train)
    losses = [float(sess.step({input_name: x.numpy(), "labels": y.numpy()})) for x, y in data]
    opt = TorchAdaMax(module.parameters(), learning_rate=LR)
    ref = []
    for x, y in data:
        opt.zero_grad()
        loss = F.cross_entropy(module(x), y)
        loss.backward()
        opt.step()
        ref.append(loss.item())
    return losses, ref, sess, [str(w.message) for w in caught if w.category is UserWarning]


def _image_data(classes=5, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(4, 3, 8, 8, generator=gen), torch.randint(0, classes, (4,), generator=gen))
        for _ in range(STEPS)
    ]


def test_fresh_cnn_torchscript_ties_untied_trains_like_torch(tmp_path):
    torch.manual_seed(0)
    cnn = FreshCNN().eval()
    data = _image_data()
    model = _torchscript(cnn, data[0][0], fold=False)
    assert _ties(model) == [
        ("alias", "bn1.running_mean", "bn1.bias"),
        ("alias", "bn1.running_var", "bn1.weight"),
        ("alias", "bn2.running_mean", "bn2.bias"),
        ("alias", "bn2.running_var", "bn2.weight"),
    ]
    names = ax.trainable_params(model)
    assert sorted(names) == sorted(n for n, _ in cnn.named_parameters())
    frozen_before = {n: b.detach().numpy().copy() for n, b in cnn.named_buffers() if "running" in n}

    losses, ref, sess, warned = _train_both(cnn, model, names, data)
    np.testing.assert_allclose(losses, ref, rtol=RTOL, atol=0)
    assert losses[0] != losses[-1]
    assert len(warned) == 1
    for name in ("bn1.running_var", "bn1.running_mean", "bn2.running_var", "bn2.running_mean"):
        assert repr(name) in warned[0]
    for n, p in cnn.named_parameters():
        np.testing.assert_allclose(sess.parameters()[n], p.detach().numpy(), rtol=1e-3, atol=1e-6)
    exported = onnx.load(str(sess.export_inference_model(tmp_path / "trained.onnx")))
    values = {i.name: numpy_helper.to_array(i) for i in exported.graph.initializer}
    for n, v in frozen_before.items():  # frozen running statistics: bit-identical
        assert values[n].tobytes() == v.astype(np.float32).tobytes(), n
    assert not any(n.op_type == "Identity" for n in exported.graph.node)


def test_fresh_cnn_trained_tied_diverges():
    """keep_ties keeps what the exporter did: then the model is not torch's (the reason to untie)."""
    torch.manual_seed(0)
    cnn = FreshCNN().eval()
    data = _image_data()
    model = _torchscript(cnn, data[0][0], fold=False)
    keep = ["bn1.weight", "bn1.bias", "bn2.running_var", "bn2.running_mean"]
    names = ax.trainable_params(model, keep_ties=keep)
    assert sorted(names) == sorted(n for n, _ in cnn.named_parameters())
    losses, ref, _, warned = _train_both(cnn, model, names, data, keep_ties=keep)
    assert warned == []
    assert np.max(np.abs(np.subtract(losses, ref)) / np.abs(ref)) > 1e-4


def test_default_torchscript_export_reports_folded_weights():
    """torch.onnx.export defaults fold BatchNorm into the Conv: the weights get generated names."""
    torch.manual_seed(0)
    model = _torchscript(FreshCNN().eval(), torch.randn(2, 3, 8, 8), fold=True)
    with pytest.warns(UserWarning, match=r"'onnx::Conv_\d+' \[6, 3, 3, 3\].*exporter-generated"):
        names = ax.trainable_params(model)
    assert "fc.weight" in names and not any(n.startswith("bn") for n in names)


def test_dynamo_transformer_shared_layernorm_and_folded_constants():
    torch.manual_seed(0)
    enc = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = torch.onnx.export(enc, (torch.randn(2, 5, 16),), dynamo=True, verbose=False)
    model = model.model_proto
    assert _ties(model) == [
        ("shared_norm", "norm1.bias.untied.node_layer_norm_1", "norm1.bias"),
        ("shared_norm", "norm1.weight.untied.node_layer_norm_1", "norm1.weight"),
    ]
    scalars = [
        i.name
        for i in model.graph.initializer
        if i.data_type == TensorProto.FLOAT and int(np.prod(i.dims)) == 1 and len(i.dims)
    ]
    assert scalars  # the folded attention scale, e.g. 'val_68' [1]
    with pytest.warns(UserWarning, match=r"'val_\d+' \[16, 48\].*cannot be mapped back"):
        names = ax.trainable_params(model)
    assert not set(scalars) & set(names)
    assert "norm1.weight.untied.node_layer_norm_1" in names
    with pytest.warns(UserWarning, match=r"untied 2 tensor.*'norm1\.weight' is shared by"):
        ax.build_training_model(model, ax.AdaMax(names), loss="mse")


# -- GPT-2, fresh init: 14 merged LayerNorm/bias tensors; the embedding/LM-head tie is kept ----
@pytest.mark.slow
@pytest.mark.skipif(not transformers_available(), reason="needs transformers")
def test_fresh_gpt2_aliases_untied_lm_head_tie_kept():
    lm = tiny_gpt2_lm(seed=0).eval()

    module = Logits(lm)
    gen = torch.Generator().manual_seed(2)
    data = [
        (torch.randint(0, 40, (2, 6), generator=gen), torch.randint(0, 40, (2, 6), generator=gen))
        for _ in range(STEPS)
    ]
    model = _torchscript(module, data[0][0], fold=False, input_name="input_ids")
    p = "inner.transformer."
    assert _ties(model) == sorted(
        ("alias", p + t, p + s)
        for t, s in [
            ("h.0.attn.c_proj.bias", "h.0.ln_1.bias"),
            ("h.0.ln_2.bias", "h.0.ln_1.bias"),
            ("h.0.ln_2.weight", "h.0.ln_1.weight"),
            ("h.0.mlp.c_proj.bias", "h.0.ln_1.bias"),
            ("h.1.attn.c_attn.bias", "h.0.attn.c_attn.bias"),
            ("h.1.attn.c_proj.bias", "h.0.ln_1.bias"),
            ("h.1.ln_1.bias", "h.0.ln_1.bias"),
            ("h.1.ln_1.weight", "h.0.ln_1.weight"),
            ("h.1.ln_2.bias", "h.0.ln_1.bias"),
            ("h.1.ln_2.weight", "h.0.ln_1.weight"),
            ("h.1.mlp.c_fc.bias", "h.0.mlp.c_fc.bias"),
            ("h.1.mlp.c_proj.bias", "h.0.ln_1.bias"),
            ("ln_f.bias", "h.0.ln_1.bias"),
            ("ln_f.weight", "h.0.ln_1.weight"),
        ]
    )
    names = ax.trainable_params(model)
    # named_parameters() lists the tied embedding/LM head once: wte stays one tensor
    assert sorted(names) == sorted(n for n, _ in module.named_parameters())

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train = ax.build_training_model(model, ax.AdaMax(names, learning_rate=LR))
    warned = [str(w.message) for w in caught if w.category is UserWarning]
    assert len(warned) == 1 and "untied 14 tensor(s)" in warned[0]
    assert "wte" not in warned[0]
    sess = ax.TrainingSession(train)
    losses = [float(sess.step({"input_ids": x.numpy(), "labels": y.numpy()})) for x, y in data]
    opt = TorchAdaMax(module.parameters(), learning_rate=LR)
    ref = []
    for x, y in data:
        opt.zero_grad()
        loss = F.cross_entropy(module(x).flatten(0, 1), y.flatten())
        loss.backward()
        opt.step()
        ref.append(loss.item())
    np.testing.assert_allclose(losses, ref, rtol=RTOL, atol=0)
    for n, t in module.named_parameters():
        np.testing.assert_allclose(sess.parameters()[n], t.detach().numpy(), rtol=1e-3, atol=1e-5)


# -- hand-made graphs ---------------------------------------------------------------------------
def _bn_model(direct: bool):
    """x -> BN(scale=w, bias=b, mean=b or alias, var=w or alias) -> LN(w2, b2) -> LN(w2, b2)."""
    c = 4
    inits = {
        "w": np.ones(c, np.float32),
        "b": np.zeros(c, np.float32),
        "w2": np.full(c, 1.5, np.float32),
        "b2": np.full(c, 0.1, np.float32),
    }
    nodes = []
    mean, var = ("b", "w") if direct else ("bn.running_mean", "bn.running_var")
    if not direct:
        nodes += [
            helper.make_node("Identity", ["b"], ["bn.running_mean"]),
            helper.make_node("Identity", ["w"], ["bn.var0"]),
            helper.make_node("Identity", ["bn.var0"], ["bn.running_var"]),
        ]
    nodes += [
        helper.make_node("BatchNormalization", ["x", "w", "b", mean, var], ["h"], name="bn"),
        helper.make_node("LayerNormalization", ["h", "w2", "b2"], ["h2"], name="ln1"),
        helper.make_node("LayerNormalization", ["h2", "w2", "b2"], ["y"], name="ln2"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", c])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", c])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_frozen_slot_and_shared_norm_direct():
    model = _bn_model(direct=True)
    assert _ties(model) == [
        ("frozen_slot", "b.untied.bn.3", "b"),
        ("frozen_slot", "w.untied.bn.4", "w"),
        ("shared_norm", "b2.untied.ln2", "b2"),
        ("shared_norm", "w2.untied.ln2", "w2"),
    ]
    untier = UntieTensors()
    out = untier(model).model
    assert find_ties(out) == []
    bn = next(n for n in out.graph.node if n.op_type == "BatchNormalization")
    assert list(bn.input) == ["x", "w", "b", "b.untied.bn.3", "w.untied.bn.4"]
    ln2 = next(n for n in out.graph.node if n.name == "ln2")
    assert list(ln2.input) == ["h2", "w2.untied.ln2", "b2.untied.ln2"]
    assert ax.trainable_params(model) == ["w", "b", "w2", "b2", "w2.untied.ln2", "b2.untied.ln2"]
    # same outputs before and after
    import onnxruntime as ort

    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    run = [
        ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            None, {"x": x}
        )[0]
        for m in (model, out)
    ]
    np.testing.assert_array_equal(*run)


def test_identity_chain_aliases_and_keep():
    model = _bn_model(direct=False)
    ties = _ties(model)
    assert ("alias", "bn.running_mean", "b") in ties
    assert ("alias", "bn.running_var", "w") in ties
    assert ("alias", "bn.var0", "w") in ties
    detail = {t.tensor: t.detail for t in find_ties(model)}
    assert detail["bn.running_var"] == "running variance of BatchNormalization 'bn'"
    out = UntieTensors()(model).model
    assert not any(n.op_type == "Identity" for n in out.graph.node)
    inits = {i.name for i in out.graph.initializer}
    assert {"bn.running_mean", "bn.running_var"} <= inits
    untier = UntieTensors(keep=["w2", "bn.running_mean"])
    kept = untier(model).model
    assert {t.tensor for t in untier.kept} == {"bn.running_mean", "w2.untied.ln2"}
    assert any(n.output[0] == "bn.running_mean" for n in kept.graph.node)


def test_weight_tying_between_ordinary_nodes_is_not_a_tie():
    """An embedding read by Gather and (transposed) by the LM head MatMul: one tensor, kept."""
    e = np.random.default_rng(0).standard_normal((7, 3)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["E", "ids"], ["h"]),
            helper.make_node("Transpose", ["E"], ["Et"], perm=[1, 0]),
            helper.make_node("MatMul", ["h", "Et"], ["logits"]),
        ],
        "tied",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["B", "T"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", "T", 7])],
        [numpy_helper.from_array(e, "E")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    assert find_ties(model) == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ax.build_training_model(model, ax.AdaMax(["E"]))


# -- copies folded out of a tied weight (torch.onnx.export defaults) -----------------------------
def _folded_lm(copy_name="onnx::MatMul_9", constant=False, twin=False):
    """Gather(E) -> MatMul(copy of E.T): the LM head as constant folding leaves it."""
    rng = np.random.default_rng(0)
    e = np.ones((7, 3), np.float32) if constant else rng.standard_normal((7, 3)).astype(np.float32)
    inits = [numpy_helper.from_array(e, "E"), numpy_helper.from_array(e.T.copy(), copy_name)]
    if twin:
        inits.append(numpy_helper.from_array(e.copy(), "F"))
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["E", "ids"], ["h"]),
            helper.make_node("MatMul", ["h", copy_name], ["logits"]),
        ],
        "folded",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["B", "T"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", "T", 7])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_folded_transposed_copy_is_retied():
    retier = RetieFoldedCopies()
    out = retier(_folded_lm()).model
    assert [(t.kind, t.tensor, t.source, t.detail) for t in retier.retied] == [
        ("folded_copy", "onnx::MatMul_9", "E", "transposed copy")
    ]
    assert {i.name for i in out.graph.initializer} == {"E"}
    assert ax.trainable_params(_folded_lm()) == ["E"]
    with pytest.warns(UserWarning, match=r"re-tied 1 .*'onnx::MatMul_9' = transposed copy of 'E'"):
        ax.build_training_model(_folded_lm(), ax.AdaMax(["E"]))
    # not re-tied: a name that is no exporter's, a constant value, two candidates
    for model in (_folded_lm("head.weight"), _folded_lm(constant=True), _folded_lm(twin=True)):
        assert not RetieFoldedCopies()(model).modified


@pytest.mark.slow
@pytest.mark.skipif(not transformers_available(), reason="needs transformers")
def test_gpt2_default_export_trains_like_torch():
    """torch.onnx.export defaults (constant folding): the LM head becomes a folded copy of the
    embedding and 14 fresh LayerNorm/bias tensors become aliases; both are repaired."""
    module = Logits(tiny_gpt2_lm(seed=0)).eval()
    gen = torch.Generator().manual_seed(3)
    data = [
        (torch.randint(0, 40, (2, 6), generator=gen), torch.randint(0, 40, (2, 6), generator=gen))
        for _ in range(STEPS)
    ]
    model = _torchscript(module, data[0][0], fold=True, input_name="input_ids")
    names = ax.trainable_params(model)
    assert sorted(names) == sorted(n for n, _ in module.named_parameters())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train = ax.build_training_model(model, ax.AdaMax(names, learning_rate=LR))
    warned = " ".join(str(w.message) for w in caught if w.category is UserWarning)
    assert "transposed copy of 'inner.transformer.wte.weight'" in warned
    assert "untied 14 tensor(s)" in warned
    sess = ax.TrainingSession(train)
    losses = [float(sess.step({"input_ids": x.numpy(), "labels": y.numpy()})) for x, y in data]
    opt = TorchAdaMax(module.parameters(), learning_rate=LR)
    ref = []
    for x, y in data:
        opt.zero_grad()
        loss = F.cross_entropy(module(x).flatten(0, 1), y.flatten())
        loss.backward()
        opt.step()
        ref.append(loss.item())
    np.testing.assert_allclose(losses, ref, rtol=RTOL, atol=0)
