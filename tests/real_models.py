"""Real torch models exported to ONNX, and their torch training references (whole-model checks).

Each :class:`Case` builds a small randomly initialised torch model (torchvision, transformers,
recurrent and convolutional classifiers; nothing is downloaded), whose output is ``[B, C]``
logits. :func:`export` writes it with ``torch.onnx.export`` (the TorchScript exporter,
``dynamo=False``, or the dynamo exporter) in a trainable form: eval mode (Dropout off,
BatchNorm on its running statistics), ``do_constant_folding=False``, parameters kept, dynamic
batch axis. :func:`perturb` first adds small random noise to every float parameter and buffer,
so that no two tensors are equal (the TorchScript exporter merges equal-valued initializers)
and initializers can be mapped back to torch parameters by value where names differ.

:func:`train_onnx` trains the export with ``adamax_onnx`` (cross-entropy, MindSpore AdaMax);
:func:`train_torch` runs the same steps in torch with :class:`tests.torch_adamax.TorchAdaMax`.
"""

from __future__ import annotations

import copy
import importlib.util
import io
import types
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from tests.torch_adamax import TorchAdaMax
from tests.torch_compat import bare_torchvision

OPSET = 18
LR = 1e-3


# -- optional model libraries ------------------------------------------------------------------
def import_torchvision_models() -> types.ModuleType:
    """``torchvision.models`` without torchvision's compiled ops (:func:`tests.torch_compat.bare_torchvision`)."""
    if not bare_torchvision():
        raise ImportError("torchvision is not installed")
    import torchvision.models as tvm

    return tvm


bare_torchvision()


# -- models -------------------------------------------------------------------------------------
class LogitsOf(nn.Module):
    """Wraps a transformers model: ``input_ids -> logits`` (a plain tensor output)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.inner(input_ids=input_ids).logits


class LastTokenLogits(nn.Module):
    """A transformers LM: ``input_ids -> logits of the last position`` ([B, vocab])."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.inner(input_ids=input_ids).logits[:, -1]


class RNNClassifier(nn.Module):
    """Embedding or Linear input -> LSTM/GRU (batch_first) -> last time step -> Linear."""

    def __init__(self, cell: str, layers: int, embed: bool, bidirectional: bool = False) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 12) if embed else nn.Linear(6, 12)
        rnn = {"lstm": nn.LSTM, "gru": nn.GRU}[cell]
        self.rnn = rnn(12, 16, num_layers=layers, batch_first=True, bidirectional=bidirectional)
        self.head = nn.Linear(16 * (2 if bidirectional else 1), 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.embed(x))
        return self.head(out[:, -1])


class SmallCNN(nn.Module):
    """Conv-BN-ReLU-MaxPool x2, global average pool, Linear.

    ``conv_bias``: the first Conv's bias. Before a train-mode BatchNorm its true gradient is
    zero, and AdaMax turns float noise there into updates of a fraction of lr (the trained
    models then differ for honest reasons): the train-mode case goes without it.
    """

    def __init__(self, conv_bias: bool = True) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=conv_bias),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


def _bert() -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=16,
        num_labels=10,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        attn_implementation="eager",
    )
    return LogitsOf(BertForSequenceClassification(cfg))


def _gpt2_config():
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=100,
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_positions=16,
        num_labels=10,
        pad_token_id=0,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        attn_implementation="eager",
    )


def _gpt2() -> nn.Module:
    from transformers import GPT2ForSequenceClassification

    return LogitsOf(GPT2ForSequenceClassification(_gpt2_config()))


def _gpt2_lm() -> nn.Module:
    """GPT2LMHeadModel: the LM head is tied to the token embedding (one parameter, two uses)."""
    from transformers import GPT2LMHeadModel

    return LastTokenLogits(GPT2LMHeadModel(_gpt2_config()))


def _mobilenet() -> nn.Module:
    return import_torchvision_models().mobilenet_v2(num_classes=10)


def _resnet() -> nn.Module:
    return import_torchvision_models().resnet18(num_classes=10)


def _vit() -> nn.Module:
    tvm = import_torchvision_models()
    return tvm.VisionTransformer(
        image_size=32,
        patch_size=8,
        num_layers=2,
        num_heads=2,
        hidden_dim=32,
        mlp_dim=64,
        num_classes=10,
    )


def _image(batch: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=gen)


def _tokens(batch: int, gen: torch.Generator) -> torch.Tensor:
    # ids 1..99: no pad token (GPT-2's classification head pools the last non-pad token)
    return torch.randint(1, 100, (batch, 8), generator=gen)


def _seq_ids(batch: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 50, (batch, 7), generator=gen)


def _seq_feats(batch: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(batch, 7, 6, generator=gen)


@dataclass(frozen=True)
class Case:
    """A model of the suite: ``make()`` builds it, ``data(batch, gen)`` makes an input batch."""

    name: str
    make: Callable[[], nn.Module]
    data: Callable[[int, torch.Generator], torch.Tensor]
    input_name: str = "input"
    num_classes: int = 10
    needs: tuple[str, ...] = field(default=())  # importable modules it needs
    train_mode: bool = False  # exported and trained in train() mode (BatchNorm batch statistics)


CASES: dict[str, Case] = {
    c.name: c
    for c in [
        Case("small_cnn_bn", SmallCNN, _image),
        Case("small_cnn_bn_trainmode", lambda: SmallCNN(False), _image, train_mode=True),
        Case("lstm_embed_1layer", lambda: RNNClassifier("lstm", 1, True), _seq_ids),
        Case("lstm_linear_2layer", lambda: RNNClassifier("lstm", 2, False), _seq_feats),
        Case("gru_embed_2layer", lambda: RNNClassifier("gru", 2, True), _seq_ids),
        Case("gru_linear_1layer", lambda: RNNClassifier("gru", 1, False), _seq_feats),
        Case("lstm_bidir_embed", lambda: RNNClassifier("lstm", 1, True, True), _seq_ids),
        Case("gru_bidir_linear_2layer", lambda: RNNClassifier("gru", 2, False, True), _seq_feats),
        Case("mobilenet_v2", _mobilenet, _image, needs=("torchvision", "PIL")),
        Case("resnet18", _resnet, _image, needs=("torchvision", "PIL")),
        Case("vit", _vit, _image, needs=("torchvision", "PIL")),
        Case("bert_seqcls", _bert, _tokens, "input_ids", needs=("transformers",)),
        Case("gpt2_seqcls", _gpt2, _tokens, "input_ids", needs=("transformers",)),
        Case("gpt2_lm_last", _gpt2_lm, _tokens, "input_ids", 100, needs=("transformers",)),
    ]
}


def missing_modules(case: Case) -> list[str]:
    return [m for m in case.needs if importlib.util.find_spec(m) is None]


# -- building, perturbing, exporting -------------------------------------------------------------
def perturb(model: nn.Module, seed: int = 0, scale: float = 0.02) -> None:
    """Add small random noise to every float parameter and buffer (no two tensors stay equal).

    BatchNorm running variances get a positive multiplicative perturbation.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if not t.is_floating_point():
                continue
            noise = torch.randn(t.shape, generator=gen, dtype=t.dtype)
            if name.endswith("running_var"):
                t.mul_(torch.exp(0.1 * noise))
            else:
                t.add_(scale * noise)


def build(case: Case, seed: int = 0) -> nn.Module:
    """The case's model, seeded, perturbed, in eval mode (float32)."""
    torch.manual_seed(seed)
    model = case.make().float().eval()
    perturb(model, seed)
    return model


def export(
    model: nn.Module, case: Case, example: torch.Tensor, exporter: str, opset: int = OPSET
) -> onnx.ModelProto:
    """``torch.onnx.export`` in a trainable form; ``exporter`` is "torchscript" or "dynamo".

    In train mode the tracing forward updates BatchNorm's running statistics, and the export
    holds the updated values: the buffers are put back, in the model and in the export.
    """
    saved = {n: b.detach().clone() for n, b in model.named_buffers()}
    model.train(case.train_mode)
    try:
        out = _export(model, case, example, exporter, opset)
        for init in out.graph.initializer:
            if init.name in saved and saved[init.name].is_floating_point():
                init.CopyFrom(numpy_helper.from_array(saved[init.name].numpy(), init.name))
        return out
    finally:
        with torch.no_grad():
            for n, b in model.named_buffers():
                b.copy_(saved[n])
        model.eval()


def _export(
    model: nn.Module, case: Case, example: torch.Tensor, exporter: str, opset: int
) -> onnx.ModelProto:
    mode = torch.onnx.TrainingMode.TRAINING if case.train_mode else torch.onnx.TrainingMode.EVAL
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "torchscript":
            torch.onnx.export(
                model,
                (example,),
                buf,
                dynamo=False,
                export_params=True,
                do_constant_folding=False,
                training=mode,
                opset_version=opset,
                input_names=[case.input_name],
                output_names=["logits"],
                dynamic_axes={case.input_name: {0: "batch"}, "logits": {0: "batch"}},
            )
            return onnx.load_from_string(buf.getvalue())
        if exporter == "dynamo":
            batch = torch.export.Dim("batch", min=1, max=1024)
            prog = torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                export_params=True,
                opset_version=opset,
                input_names=[case.input_name],
                output_names=["logits"],
                dynamic_shapes=({0: batch},),
                verbose=False,
                optimize=False,
            )
            return prog.model_proto
    raise ValueError(f"unknown exporter {exporter!r}")


def map_params(model: onnx.ModelProto, torch_model: nn.Module) -> dict[str, str]:
    """ONNX initializer name -> torch parameter name, for every torch parameter.

    By name where the exporter kept it (and the values agree), else by exact value equality
    (unique after :func:`perturb`), also as the transpose of a 2-D parameter. Raises
    AssertionError when a parameter is found nowhere or in two initializers (a trained copy
    would diverge from torch).
    """
    params = {n: p.detach().numpy() for n, p in torch_model.named_parameters()}
    inits = {
        i.name: numpy_helper.to_array(i)
        for i in model.graph.initializer
        if i.data_type == onnx.TensorProto.FLOAT
    }
    # Constant nodes holding a parameter would be frozen copies: look there too.
    for node in model.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value" and a.t.data_type == onnx.TensorProto.FLOAT:
                    inits.setdefault(f"<Constant {node.output[0]}>", numpy_helper.to_array(a.t))

    def same(a: np.ndarray, b: np.ndarray) -> bool:
        return a.shape == b.shape and np.array_equal(a, b)

    found: dict[str, list[str]] = {n: [] for n in params}
    for iname, arr in inits.items():
        if iname in params and same(arr, params[iname]):
            found[iname].append(iname)
            continue
        for pname, p in params.items():
            if same(arr, p) or (p.ndim == 2 and same(arr, p.T)):
                found[pname].append(iname)
    problems = {p: f for p, f in found.items() if len(f) != 1}
    assert not problems, f"parameters not mapped to exactly one initializer: {problems}"
    out = {f[0]: p for p, f in found.items()}
    const = [i for i in out if i.startswith("<Constant")]
    assert not const, f"parameters exported as Constant nodes: {const}"
    transposed = [i for i, p in out.items() if inits[i].shape != params[p].shape]
    assert not transposed, f"parameters exported transposed: {transposed}"
    return out


# -- training ---------------------------------------------------------------------------------
def batches(case: Case, steps: int, batch: int, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        x = case.data(batch, gen)
        y = torch.randint(0, case.num_classes, (batch,), generator=gen)
        out.append((x, y))
    return out


def train_torch(model: nn.Module, data, lr: float = LR, train_mode: bool = False) -> list[float]:
    """``len(data)`` steps of mean cross-entropy + MindSpore AdaMax on ``model`` (in place);
    left in eval mode."""
    model.train(train_mode)
    opt = TorchAdaMax(model.parameters(), learning_rate=lr)
    losses = []
    for x, y in data:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    return losses


def torch_grads(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, train_mode: bool = False
) -> dict[str, np.ndarray]:
    """Gradients of the mean cross-entropy at the current parameters (float64 numpy arrays).

    ``model`` is left as it was: gradients cleared, buffers (BatchNorm's running statistics)
    restored, eval mode. A float64 copy of the model gives the float64 reference gradients.
    """
    saved = {n: b.detach().clone() for n, b in model.named_buffers()}
    model.train(train_mode)
    model.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(model(x), y).backward()
    grads = {n: p.grad.detach().double().numpy().copy() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    model.eval()
    with torch.no_grad():
        for n, b in model.named_buffers():
            b.copy_(saved[n])
    return grads


def torch_grads64(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, train_mode: bool = False
) -> dict[str, np.ndarray]:
    """:func:`torch_grads` of a float64 copy of ``model`` (the float32 model is untouched)."""
    model64 = copy.deepcopy(model).double()
    return torch_grads(model64, x.double() if x.is_floating_point() else x, y, train_mode)


def train_onnx(model: onnx.ModelProto, case: Case, names: list[str], data, lr: float = LR):
    """The same steps with adamax_onnx; returns (losses, session, first gradients).

    The first step's gradients are read back from AdaMax's first moment:
    ``m_1 = (1 - beta1) * g`` (one float32 rounding).
    """
    import adamax_onnx as ax

    opt = ax.AdaMax(names, learning_rate=lr)
    train = ax.build_training_model(model, opt, loss="cross_entropy", output="logits")
    sess = ax.TrainingSession(train)
    losses = []
    first: dict[str, np.ndarray] = {}
    for x, y in data:
        feeds = {case.input_name: x.numpy(), "labels": y.numpy().astype(np.int64)}
        losses.append(float(sess.step(feeds)))
        if not first:
            one_minus_beta1 = np.float32(1.0) - np.float32(0.9)
            first = {n: m / one_minus_beta1 for n, m in sess.state()["m"].items()}
    return losses, sess, first
