"""``ax.from_torch``: exports that train like the torch module, with no hand edits.

Freshly initialised modules (equal-valued tensors, which torch's exporter would merge): the
export keeps every parameter and buffer under its torch name, returns exactly the parameters
that require grad, has dynamic batch (and sequence) axes, and 12 steps of MindSpore AdaMax on
it match the same steps in torch within 1e-5 relative; frozen tensors stay bit-identical.
"""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import helper, numpy_helper
from torch import nn

import adamax_onnx as ax
from tests.passes.test_ties import FreshCNN
from tests.real_models import RNNClassifier
from tests.tiny_gpt2 import Logits, tiny_gpt2_lm
from tests.torch_adamax import TorchAdaMax
from tests.torch_compat import transformers_available

STEPS = 12
RTOL = 1e-5
LR = 1e-3


def _train(module, model, names, data, input_name, flatten=False, **build):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # nothing left to untie or report
        train = ax.build_training_model(model, ax.AdaMax(names, learning_rate=LR), **build)
    sess = ax.TrainingSession(train)
    losses = [float(sess.step({input_name: x.numpy(), "labels": y.numpy()})) for x, y in data]
    params = [p for n, p in module.named_parameters() if n in set(names)]
    opt = TorchAdaMax(params, learning_rate=LR)
    ref = []
    for x, y in data:
        opt.zero_grad()
        out = module(x)
        loss = (
            F.cross_entropy(out.flatten(0, 1), y.flatten()) if flatten else F.cross_entropy(out, y)
        )
        loss.backward()
        opt.step()
        ref.append(loss.item())
    np.testing.assert_allclose(losses, ref, rtol=RTOL, atol=0)
    assert losses[0] != losses[-1]
    return sess


def _images(batch=5, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(batch, 3, 8, 8, generator=gen), torch.randint(0, 5, (batch,), generator=gen))
        for _ in range(STEPS)
    ]


def test_cnn_with_batchnorm(tmp_path):
    torch.manual_seed(0)
    cnn = FreshCNN().eval()
    cnn.conv1.bias.requires_grad_(False)
    frozen = cnn.conv1.bias.detach().numpy().copy()
    model, names = ax.from_torch(cnn, torch.randn(2, 3, 8, 8))
    assert names == [n for n, p in cnn.named_parameters() if p.requires_grad]
    assert "conv1.bias" not in names
    inits = {i.name for i in model.graph.initializer}
    assert {n for n, _ in cnn.named_parameters()} <= inits
    assert {"bn1.running_mean", "bn1.running_var", "bn2.running_mean", "bn2.running_var"} <= inits
    assert not any(n.op_type == "Identity" for n in model.graph.node)
    assert [n.name for n in model.graph.input] == ["x"]  # forward's argument name
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch"
    assert sum(n.op_type == "BatchNormalization" for n in model.graph.node) == 2
    assert cnn.training is False

    sess = _train(cnn, model, names, _images(batch=5), "x")  # batch 5, exported with 2
    assert sess.parameters().get("conv1.bias") is None
    path = sess.export_inference_model(tmp_path / "trained.onnx")
    exported = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
    assert exported["conv1.bias"].tobytes() == frozen.tobytes()
    x = torch.randn(3, 3, 8, 8)
    (got,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"x": x.numpy()}
    )
    with torch.no_grad():
        np.testing.assert_allclose(got, cnn(x).numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_recurrent_classifier(cell):
    torch.manual_seed(0)
    rnn = RNNClassifier(cell, 2, True).eval()
    gen = torch.Generator().manual_seed(3)
    model, names = ax.from_torch(rnn, torch.randint(0, 50, (2, 7)))
    assert names == [n for n, _ in rnn.named_parameters()]
    dims = [d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "sequence"]
    data = [
        (torch.randint(0, 50, (3, 9), generator=gen), torch.randint(0, 10, (3,), generator=gen))
        for _ in range(STEPS)
    ]
    _train(rnn, model, names, data, "x")


class TwiceNorm(nn.Module):
    """One LayerNorm applied twice: a tie the module means (kept, no warning)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 8)
        self.norm = nn.LayerNorm(8)
        self.fc2 = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc2(self.norm(torch.relu(self.fc1(self.norm(x)))))


def test_layer_applied_twice_keeps_its_tie():
    torch.manual_seed(0)
    module = TwiceNorm().eval()
    model, names = ax.from_torch(module, torch.randn(2, 8))
    assert names == [n for n, _ in module.named_parameters()]
    lns = [n for n in model.graph.node if n.op_type == "LayerNormalization"]
    assert len(lns) == 2 and lns[0].input[1] == lns[1].input[1] == "norm.weight"
    gen = torch.Generator().manual_seed(4)
    data = [
        (torch.randn(4, 8, generator=gen), torch.randint(0, 4, (4,), generator=gen))
        for _ in range(STEPS)
    ]
    _train(module, model, names, data, "x")


@pytest.mark.slow
@pytest.mark.skipif(not transformers_available(), reason="needs transformers")
def test_gpt2_language_model_token_loss():
    lm = Logits(tiny_gpt2_lm(seed=0)).eval()
    model, names = ax.from_torch(lm, torch.randint(0, 40, (2, 6)))
    assert names == [n for n, _ in lm.named_parameters()]  # wte once: tied to the LM head
    out_dims = [
        d.dim_param or d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim
    ]
    assert out_dims == ["batch", "sequence", 40]
    gen = torch.Generator().manual_seed(5)
    data = []
    for _ in range(STEPS):  # batch 3, sequence 9: both differ from the example
        ids = torch.randint(0, 40, (3, 9), generator=gen)
        labels = torch.randint(0, 40, (3, 9), generator=gen)
        labels[:, :2] = -100
        data.append((ids, labels))
    _train(lm, model, names, data, "input_ids", flatten=True)


class DropNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.bn = nn.BatchNorm1d(6)
        self.drop = nn.Dropout(0.3)

    def forward(self, x):
        return self.drop(self.bn(self.fc(x)))


def test_mode_train_exports_training_behaviour_and_restores_the_module():
    torch.manual_seed(0)
    net = DropNet().eval()
    before = {n: b.clone() for n, b in net.named_buffers()}
    model, _ = ax.from_torch(net, torch.randn(4, 6), mode="train")
    bn = next(n for n in model.graph.node if n.op_type == "BatchNormalization")
    attrs = {a.name: helper.get_attribute_value(a) for a in bn.attribute}
    assert attrs.get("training_mode") == 1
    assert any(n.op_type == "Dropout" for n in model.graph.node)
    assert net.training is False
    for n, b in net.named_buffers():
        assert torch.equal(b, before[n]), n
    model, _ = ax.from_torch(net, torch.randn(4, 6))  # eval: no Dropout, BN on running stats
    assert not any(n.op_type == "Dropout" for n in model.graph.node)
    bn = next(n for n in model.graph.node if n.op_type == "BatchNormalization")
    assert not any(a.name == "training_mode" and a.i for a in bn.attribute)


def test_bad_arguments():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        ax.from_torch(object(), torch.zeros(1))
    with pytest.raises(ValueError, match="mode"):
        ax.from_torch(nn.Linear(2, 2), torch.zeros(1, 2), mode="inference")
    with pytest.raises(TypeError, match=r"example_inputs\[0\]"):
        ax.from_torch(nn.Linear(2, 2), [np.zeros((1, 2))])


def test_import_does_not_import_torch():
    code = "import sys, adamax_onnx; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.slow
@pytest.mark.skipif(not transformers_available(), reason="needs transformers")
def test_gpt2_with_its_own_loss():
    """Hugging Face computing its own loss from ``labels``: ``loss="loss"``; train mode with
    Dropout 0.1 gets the seed state."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(
        vocab_size=40,
        n_embd=16,
        n_layer=2,
        n_head=2,
        n_positions=16,
        attn_implementation="eager",
    )
    torch.manual_seed(0)

    class OwnLoss(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gpt = GPT2LMHeadModel(cfg)

        def forward(self, input_ids, labels):
            return self.gpt(input_ids=input_ids, labels=labels).loss

    module = OwnLoss().eval()
    ids = torch.randint(0, 40, (2, 6))
    model, names = ax.from_torch(module, (ids, ids), output_names=["loss"])
    dims = {i.name: [d.dim_param for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    assert dims == {"input_ids": ["batch", "sequence"], "labels": ["batch", "sequence"]}
    sess = ax.TrainingSession(
        ax.build_training_model(model, ax.AdaMax(names, learning_rate=LR), loss="loss")
    )
    opt = TorchAdaMax(module.parameters(), learning_rate=LR)
    gen = torch.Generator().manual_seed(1)
    losses, ref = [], []
    for _ in range(STEPS):
        x = torch.randint(0, 40, (3, 9), generator=gen)
        y = x.clone()
        y[:, :2] = -100
        losses.append(float(sess.step({"input_ids": x.numpy(), "labels": y.numpy()})))
        opt.zero_grad()
        loss = module(x, y)
        loss.backward()
        opt.step()
        ref.append(loss.item())
    np.testing.assert_allclose(losses, ref, rtol=RTOL, atol=0)

    model, names = ax.from_torch(module, (ids, ids), output_names=["loss"], mode="train")
    sess = ax.TrainingSession(ax.build_training_model(model, ax.AdaMax(names), loss="loss"))
    assert sess.contract.extra_state == ["dropout.seed"]
    feeds = {"input_ids": x.numpy(), "labels": y.numpy()}
    first, second = float(sess.step(feeds)), float(sess.step(feeds))
    assert np.isfinite([first, second]).all() and first != second


def test_dynamo_exporter_option():
    torch.manual_seed(0)
    cnn = FreshCNN().eval()
    model, names = ax.from_torch(cnn, torch.randn(2, 3, 8, 8), exporter="dynamo")
    assert names == [n for n, _ in cnn.named_parameters()]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert sum(n.op_type == "BatchNormalization" for n in model.graph.node) == 2
    _train(cnn, model, names, _images(batch=3), "x")
    with pytest.raises(ValueError, match="exporter='dynamo' exports BatchNorm in train mode"):
        ax.from_torch(cnn, torch.randn(2, 3, 8, 8), exporter="dynamo", mode="train")
    with pytest.raises(ValueError, match="exporter must be"):
        ax.from_torch(cnn, torch.randn(2, 3, 8, 8), exporter="jit")


class Relu6Net(nn.Module):
    """Conv-BN-ReLU6 (fresh BN: exact zeros meet the bound) and a torch.clamp."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(6)
        self.act = nn.ReLU6()
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        h = self.act(self.bn(self.conv(x)))
        return self.fc(torch.clamp(h.mean(dim=(2, 3)), -1.0, 1.0))


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_relu6_gradient_is_zero_at_the_bounds(exporter):
    torch.manual_seed(0)
    net = Relu6Net().eval()
    model, names = ax.from_torch(net, torch.randn(2, 3, 8, 8), exporter=exporter)
    assert sum(n.op_type == "Clip" for n in model.graph.node) == 1  # the clamp stays
    assert sum(n.op_type == "Where" for n in model.graph.node) == 2  # ReLU6: Where(Where)
    x = torch.randn(3, 3, 8, 8)
    (got,) = ort.InferenceSession(
        model.SerializeToString(), providers=["CPUExecutionProvider"]
    ).run(None, {"x": x.numpy()})
    with torch.no_grad():
        assert np.array_equal(got, net(x).numpy()) or np.allclose(got, net(x).numpy(), atol=1e-6)
    data = _images(batch=4)
    for x, _ in data:
        x[:, :, :4] = 0.0  # zero windows: conv (no bias) and fresh BN give exact zeros
    _train(net, model, names, data, "x")
