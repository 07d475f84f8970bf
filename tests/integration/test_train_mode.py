"""Training-mode semantics (torch's ``train()``): BatchNorm on batch statistics with running
statistics carried as state, updated in the same run with the node's momentum (torch's unbiased
variance), checkpointed, and written into the exported inference model (which runs as
``eval()``); Dropout with a fresh mask every step drawn from a seed kept as state, compared with
torch with the same masks, and absent from the exported inference model.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import adamax_onnx as ax
from adamax_onnx.passes.dropout import dropout_keep
from tests.passes.test_ties import FreshCNN
from tests.torch_adamax import TorchAdaMax

STEPS = 12
RTOL = 1e-5
LR = 1e-3


def _data(seed=1, batch=5):
    gen = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(batch, 3, 8, 8, generator=gen), torch.randint(0, 5, (batch,), generator=gen))
        for _ in range(STEPS)
    ]


def _cnn():
    torch.manual_seed(0)
    cnn = FreshCNN()
    # conv1.bias has a zero true gradient under a BatchNorm on batch statistics: AdaMax would
    # turn float noise into full-size steps (on both sides, differently), so it is frozen.
    cnn.conv1.bias.requires_grad_(False)
    return cnn


def test_batchnorm_training_mode_trains_like_torch_train(tmp_path):
    cnn = _cnn()
    model, names = ax.from_torch(cnn, torch.randn(2, 3, 8, 8), mode="train")
    train = ax.build_training_model(model, ax.AdaMax(names, learning_rate=LR))
    sess = ax.TrainingSession(train)
    stats = ["bn1.running_mean", "bn1.running_var", "bn2.running_mean", "bn2.running_var"]
    assert sess.contract.extra_state == stats
    assert {i.name for i in train.graph.input} >= set(stats)
    assert {o.name for o in train.graph.output} >= {f"{s}.updated" for s in stats}
    assert not any(n.op_type == "BatchNormalization" for n in train.graph.node)

    data = _data()
    losses = [float(sess.step({"x": x.numpy(), "labels": y.numpy()})) for x, y in data]
    cnn.train()
    opt = TorchAdaMax([p for p in cnn.parameters() if p.requires_grad], learning_rate=LR)
    ref = []
    for x, y in data:
        opt.zero_grad()
        loss = F.cross_entropy(cnn(x), y)
        loss.backward()
        opt.step()
        ref.append(loss.item())
    np.testing.assert_allclose(losses, ref, rtol=RTOL, atol=0)
    extra = sess.state()["extra"]
    buffers = dict(cnn.named_buffers())
    for s in stats:  # momentum 0.1 (ONNX 0.9), unbiased variance, 12 updates
        np.testing.assert_allclose(extra[s], buffers[s].numpy(), rtol=1e-5, atol=1e-6)
        assert not np.array_equal(extra[s], np.zeros_like(extra[s]) + (s.endswith("var")))

    # exported inference model: BatchNorm on the trained running statistics, as eval()
    cnn.eval()
    path = sess.export_inference_model(tmp_path / "trained.onnx")
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        want = cnn(x).numpy()
    (got,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"x": x.numpy()}
    )
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(sess.predict({"x": x.numpy()})[0], want, rtol=1e-4, atol=1e-5)

    # checkpoint and the one-file trainable form carry the running statistics
    sess.save_checkpoint(tmp_path / "ckpt")
    again = ax.TrainingSession(train)
    again.load_checkpoint(tmp_path / "ckpt")
    for s in stats:
        assert again.state()["extra"][s].tobytes() == extra[s].tobytes()
    ax.export_trainable_model(sess, tmp_path / "model.onnx")
    resumed = ax.TrainingSession(str(tmp_path / "model.onnx"))
    for s in stats:
        assert resumed.state()["extra"][s].tobytes() == extra[s].tobytes()
    x1, y1 = _data(seed=7)[0]
    assert float(resumed.step({"x": x1.numpy(), "labels": y1.numpy()})) == float(
        sess.step({"x": x1.numpy(), "labels": y1.numpy()})
    )


def _bn_graph(momentum=None, read_stats=False):
    attrs = {"training_mode": 1}
    if momentum is not None:
        attrs["momentum"] = momentum
    nodes = [
        helper.make_node(
            "BatchNormalization",
            ["x", "s", "b", "m", "v"],
            ["y", "rm", "rv"] if read_stats else ["y"],
            name="bn",
            **attrs,
        )
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])]
    if read_stats:
        nodes.append(helper.make_node("Add", ["y", "rm"], ["z"]))
        outputs = [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 3])]
    inits = {"s": np.ones(3), "b": np.zeros(3), "m": np.full(3, 0.5), "v": np.full(3, 2.0)}
    graph = helper.make_graph(
        nodes,
        "bn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        outputs,
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize("momentum", [None, 0.7])
def test_running_statistics_update(momentum):
    model = _bn_graph(momentum)
    sess = ax.TrainingSession(ax.build_training_model(model, ax.AdaMax(["s", "b"]), loss="mse"))
    rng = np.random.default_rng(0)
    m, v = np.full(3, 0.5), np.full(3, 2.0)
    keep = 0.9 if momentum is None else momentum
    for _ in range(3):
        x = rng.standard_normal((6, 3)).astype(np.float32)
        sess.step({"x": x, "labels": np.zeros_like(x)})
        m = keep * m + (1 - keep) * x.mean(0)
        v = keep * v + (1 - keep) * x.var(0, ddof=1)
    np.testing.assert_allclose(sess.state()["extra"]["m"], m, rtol=1e-5)
    np.testing.assert_allclose(sess.state()["extra"]["v"], v, rtol=1e-5)


def test_running_statistic_outputs_read_by_the_model_are_refused():
    with pytest.raises(ax.ModelError, match=r"running-statistic outputs \['rm'\]"):
        ax.build_training_model(_bn_graph(read_stats=True), ax.AdaMax(["s", "b"]), loss="mse")


# -- Dropout: a fresh mask every step from the seed state ------------------------------------
class DropMLP(nn.Module):
    """Linear-ReLU-Dropout-Linear-BatchNorm-Dropout-Linear; ``masks`` replaces torch's RNG."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 16)
        self.drop1 = nn.Dropout(0.3)
        self.fc2 = nn.Linear(16, 12)
        self.bn = nn.BatchNorm1d(12)
        self.drop2 = nn.Dropout(0.5)
        self.fc3 = nn.Linear(12, 4)
        self.masks = None  # (mask1, mask2) numpy bool arrays, or None: torch's own dropout

    def _drop(self, h, module, k):
        if self.masks is None or not self.training:
            return module(h)
        return h * torch.from_numpy(self.masks[k]).to(h.dtype) / (1.0 - module.p)

    def forward(self, x):
        h = self._drop(torch.relu(self.fc1(x)), self.drop1, 0)
        h = self._drop(self.bn(self.fc2(h)), self.drop2, 1)
        return self.fc3(h)


def test_dropout_training_mode_masks_from_the_seed(tmp_path):
    torch.manual_seed(0)
    net = DropMLP()
    net.fc2.bias.requires_grad_(False)  # zero true gradient under BatchNorm (see _cnn)
    model, names = ax.from_torch(net, torch.randn(4, 6), mode="train")
    assert sum(n.op_type == "Dropout" for n in model.graph.node) == 2
    train = ax.build_training_model(model, ax.AdaMax(names, learning_rate=LR), dropout_seed=5)
    assert not any(n.op_type == "Dropout" for n in train.graph.node)
    sess = ax.TrainingSession(train)
    assert sess.contract.extra_state[-1] == "dropout.seed"
    gen = torch.Generator().manual_seed(2)
    batch = 8
    data = [
        (torch.randn(batch, 6, generator=gen), torch.randint(0, 4, (batch,), generator=gen))
        for _ in range(STEPS)
    ]
    losses = [float(sess.step({"x": x.numpy(), "labels": y.numpy()})) for x, y in data]
    assert int(sess.state()["extra"]["dropout.seed"]) == 5 + STEPS

    net.train()
    opt = TorchAdaMax([p for p in net.parameters() if p.requires_grad], learning_rate=LR)
    ref = []
    for step, (x, y) in enumerate(data):
        seed = 5 + step
        net.masks = (
            dropout_keep((batch, 16), 0.3, seed, node=0),
            dropout_keep((batch, 12), 0.5, seed, node=1),
        )
        opt.zero_grad()
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        ref.append(loss.item())
    np.testing.assert_allclose(losses, ref, rtol=RTOL, atol=0)

    # the exported inference model has no Dropout and runs as eval()
    net.eval()
    path = sess.export_inference_model(tmp_path / "trained.onnx")
    exported = onnx.load(str(path))
    assert not any(n.op_type == "Dropout" for n in exported.graph.node)
    x = torch.randn(5, 6)
    (got,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"x": x.numpy()}
    )
    with torch.no_grad():
        np.testing.assert_allclose(got, net(x).numpy(), rtol=1e-4, atol=1e-5)


def test_dropout_masks_are_fresh_deterministic_and_checkpointed(tmp_path):
    torch.manual_seed(0)
    model, names = ax.from_torch(DropMLP(), torch.randn(4, 6), mode="train")
    train = ax.build_training_model(model, ax.AdaMax(names), loss="mse", output="logits")
    rng = np.random.default_rng(0)
    data = [
        (rng.standard_normal((8, 6)).astype(np.float32), np.zeros((8, 4), np.float32))
        for _ in range(6)
    ]

    def run(sess, batches):
        return [float(sess.step({"x": x, "labels": y})) for x, y in batches]

    a, b = ax.TrainingSession(train), ax.TrainingSession(train)
    first = run(a, data[:3])
    a.save_checkpoint(tmp_path / "ckpt")
    rest = run(a, data[3:])
    assert run(b, data) == first + rest  # same seed, same masks
    c = ax.TrainingSession(train)
    c.load_checkpoint(tmp_path / "ckpt")
    assert run(c, data[3:]) == rest  # the seed is restored with the checkpoint
    # the same batch twice gives two different masks (a fresh mask every step)
    d = ax.TrainingSession(train)
    x, y = data[0]
    assert float(d.step({"x": x, "labels": y})) != float(d.step({"x": x, "labels": y}))
    # statistically: the keep rate is 1 - ratio, masks of consecutive seeds independent
    masks = [dropout_keep((400, 250), 0.3, s) for s in range(4)]
    for m in masks:
        assert abs(m.mean() - 0.7) < 0.005
    for m0, m1 in zip(masks, masks[1:], strict=False):
        assert abs((m0 == m1).mean() - 0.58) < 0.005


def test_dropout_training_mode_needs_opset_18():
    torch.manual_seed(0)
    net = DropMLP()
    model, names = ax.from_torch(net, torch.randn(4, 6), mode="train", opset=17)
    with pytest.raises(ax.ModelError, match=r"BitwiseXor \(opset 18\).*opset 17"):
        ax.build_training_model(model, ax.AdaMax(names))


def test_training_mode_model_is_standard_onnx():
    """Checker (full), and one step under onnx.reference equals TrainingSession's."""
    from onnx.reference import ReferenceEvaluator

    from adamax_onnx.passes.contract import initial_values

    torch.manual_seed(0)
    model, names = ax.from_torch(DropMLP(), torch.randn(4, 6), mode="train")
    train = ax.build_training_model(model, ax.AdaMax(names))
    onnx.checker.check_model(train, full_check=True)
    x = np.random.default_rng(0).standard_normal((8, 6)).astype(np.float32)
    y = np.arange(8, dtype=np.int64) % 4
    sess = ax.TrainingSession(train)
    loss = float(sess.step({"x": x, "labels": y}))
    init = {k: numpy_helper.to_array(v) for k, v in initial_values(train).items()}
    got = ReferenceEvaluator(train).run(
        ["loss", "bn.running_var.updated", "dropout.seed.updated"], {"x": x, "labels": y, **init}
    )
    np.testing.assert_allclose(got[0], loss, rtol=1e-6)
    np.testing.assert_allclose(got[1], sess.state()["extra"]["bn.running_var"], rtol=1e-6)
    assert int(got[2]) == 1
