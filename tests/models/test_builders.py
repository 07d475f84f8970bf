"""Tests of the example model builders (models.mlp/cnn/transformer) and the data helpers.

Every model variant must pass the full ONNX checker, run in onnxruntime and match an
independent torch forward pass built from the model's own initializers.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import numpy_helper

from adamax_onnx.models.cnn import build_cnn
from adamax_onnx.models.data import load_digits_split, make_token_task, save_npz
from adamax_onnx.models.mlp import build_mlp
from adamax_onnx.models.transformer import build_transformer
from adamax_onnx.passes.builder import IR_VERSION, OPSET

RTOL = ATOL = 1e-5


# -- helpers --------------------------------------------------------------------------------
def params(model: onnx.ModelProto) -> dict[str, torch.Tensor]:
    return {
        i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in model.graph.initializer
    }


def run_ort(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(["logits"], feed)[0]


def check_common(model: onnx.ModelProto, input_name: str, elem_type: int, n_out: int) -> None:
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version == IR_VERSION
    assert [(o.domain, o.version) for o in model.opset_import] == [("", OPSET)]
    assert len(model.graph.value_info) == 0
    (inp,) = model.graph.input
    (out,) = model.graph.output
    assert inp.name == input_name and inp.type.tensor_type.elem_type == elem_type
    assert out.name == "logits" and out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert inp.type.tensor_type.shape.dim[0].dim_param == "N"
    out_dims = out.type.tensor_type.shape.dim
    assert out_dims[0].dim_param == "N" and out_dims[1].dim_value == n_out
    assert all(n.name for n in model.graph.node)
    assert len({n.name for n in model.graph.node}) == len(model.graph.node)
    for init in model.graph.initializer:
        assert init.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.INT64), init.name


def set_init(model: onnx.ModelProto, name: str, value: np.ndarray) -> None:
    for i, init in enumerate(model.graph.initializer):
        if init.name == name:
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(value, name))
            return
    raise KeyError(name)


# -- MLP ------------------------------------------------------------------------------------
def mlp_reference(model, x, activation, use_matmul):
    p = params(model)
    act = {"relu": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh}[activation]
    h = torch.from_numpy(x)
    k = 1
    while f"fc{k}.weight" in p:
        w = p[f"fc{k}.weight"]
        h = F.linear(h, w.T if use_matmul else w, p[f"fc{k}.bias"])
        if f"fc{k + 1}.weight" in p:
            h = act(h)
        k += 1
    return h.numpy()


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh"])
@pytest.mark.parametrize("use_matmul", [False, True])
@pytest.mark.parametrize("hidden", [(), (64,), (32, 16)])
def test_mlp_matches_torch(activation, use_matmul, hidden):
    model = build_mlp(
        in_features=64, hidden=hidden, num_classes=10, activation=activation, use_matmul=use_matmul
    )
    check_common(model, "input", onnx.TensorProto.FLOAT, 10)
    names = [i.name for i in model.graph.initializer]
    expected = [f"fc{k}.{s}" for k in range(1, len(hidden) + 2) for s in ("weight", "bias")]
    assert names == expected
    sizes = [64, *hidden, 10]
    for k in range(len(hidden) + 1):
        w = numpy_helper.to_array(model.graph.initializer[2 * k])
        fan_in, fan_out = sizes[k], sizes[k + 1]
        assert w.shape == ((fan_in, fan_out) if use_matmul else (fan_out, fan_in))
    ops = {n.op_type for n in model.graph.node}
    assert ("Gemm" in ops) != use_matmul
    x = np.random.default_rng(1).random((5, 64), dtype=np.float32)
    np.testing.assert_allclose(
        run_ort(model, {"input": x}),
        mlp_reference(model, x, activation, use_matmul),
        rtol=RTOL,
        atol=ATOL,
    )


def test_mlp_deterministic_and_seeded():
    a, b, c = build_mlp(seed=3), build_mlp(seed=3), build_mlp(seed=4)
    assert a.SerializeToString() == b.SerializeToString()
    wa = numpy_helper.to_array(a.graph.initializer[0])
    wc = numpy_helper.to_array(c.graph.initializer[0])
    assert not np.array_equal(wa, wc)
    assert 0.5 < wa.std() * math.sqrt(64 / 2) < 1.5  # He scaling


def test_mlp_rejects_bad_activation():
    with pytest.raises(ValueError):
        build_mlp(activation="gelu")


# -- CNN ------------------------------------------------------------------------------------
def cnn_reference(model, x, batchnorm, pool, groups, stride):
    p = params(model)
    h = F.conv2d(torch.from_numpy(x), p["conv1.weight"], p["conv1.bias"], padding=1)
    if batchnorm:
        h = F.batch_norm(
            h,
            p["bn1.running_mean"],
            p["bn1.running_var"],
            p["bn1.scale"],
            p["bn1.bias"],
            training=False,
            eps=1e-5,
        )
    h = torch.relu(h)
    pool2d = F.avg_pool2d if pool == "avg" else F.max_pool2d
    h = pool2d(h, 2)
    h = F.conv2d(h, p["conv2.weight"], p["conv2.bias"], padding=1, stride=stride, groups=groups)
    h = torch.relu(h)
    h = h.mean(dim=(2, 3)) if pool == "global" else pool2d(h, 2).flatten(1)
    h = torch.relu(F.linear(h, p["fc1.weight"], p["fc1.bias"]))
    return F.linear(h, p["fc2.weight"], p["fc2.bias"]).numpy()


CNN_VARIANTS = [
    dict(),
    dict(batchnorm=True),
    dict(pool="avg"),
    dict(pool="global"),
    dict(groups=2),
    dict(stride=2),
    dict(batchnorm=True, pool="avg", groups=2, stride=2),
    dict(batchnorm=True, pool="global", groups=4, stride=2),
    dict(pool="global", stride=3),
]


@pytest.mark.parametrize("variant", CNN_VARIANTS, ids=lambda v: "-".join(map(str, v.values())))
def test_cnn_matches_torch(variant):
    kw = dict(batchnorm=False, pool="max", groups=1, stride=1) | variant
    model = build_cnn(in_channels=1, image_size=8, num_classes=10, **kw)
    check_common(model, "input", onnx.TensorProto.FLOAT, 10)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims[1:]] == [1, 8, 8]
    names = {i.name for i in model.graph.initializer}
    assert {"conv1.weight", "conv1.bias", "conv2.weight", "fc1.weight", "fc2.bias"} <= names
    bn_names = {"bn1.scale", "bn1.bias", "bn1.running_mean", "bn1.running_var"}
    assert (bn_names <= names) == kw["batchnorm"]
    assert numpy_helper.to_array(
        next(i for i in model.graph.initializer if i.name == "conv2.weight")
    ).shape == (16, 8 // kw["groups"], 3, 3)
    ops = [n.op_type for n in model.graph.node]
    if kw["pool"] == "global":
        assert "GlobalAveragePool" in ops and "Flatten" in ops
    else:
        assert "Reshape" in ops
        assert ("AveragePool" in ops) == (kw["pool"] == "avg")
    if kw["batchnorm"]:
        # non-trivial running statistics so the BatchNormalization is really checked
        rng = np.random.default_rng(7)
        set_init(model, "bn1.running_mean", rng.normal(0, 0.3, 8).astype(np.float32))
        set_init(model, "bn1.running_var", rng.uniform(0.5, 2.0, 8).astype(np.float32))
        set_init(model, "bn1.scale", rng.uniform(0.5, 1.5, 8).astype(np.float32))
        set_init(model, "bn1.bias", rng.normal(0, 0.2, 8).astype(np.float32))
    x = np.random.default_rng(2).random((4, 1, 8, 8), dtype=np.float32)
    np.testing.assert_allclose(
        run_ort(model, {"input": x}), cnn_reference(model, x, **kw), rtol=RTOL, atol=ATOL
    )


def test_cnn_other_shapes_and_errors():
    model = build_cnn(in_channels=3, image_size=12, num_classes=5)
    x = np.random.default_rng(0).random((2, 3, 12, 12), dtype=np.float32)
    ref = cnn_reference(model, x, batchnorm=False, pool="max", groups=1, stride=1)
    np.testing.assert_allclose(run_ort(model, {"input": x}), ref, rtol=RTOL, atol=ATOL)
    with pytest.raises(ValueError):
        build_cnn(groups=3)
    with pytest.raises(ValueError):
        build_cnn(pool="median")
    with pytest.raises(ValueError):
        build_cnn(image_size=2)


# -- transformer ----------------------------------------------------------------------------
def transformer_reference(model, ids, num_heads, gelu):
    p = params(model)
    d = p["embed.weight"].shape[1]
    dh = d // num_heads
    x = F.embedding(torch.from_numpy(ids), p["embed.weight"]) + p["pos.weight"]
    n, t, _ = x.shape

    def lin(h, name):
        return h @ p[f"{name}.weight"] + p[f"{name}.bias"]

    def split(h):
        return h.reshape(n, t, num_heads, dh).transpose(1, 2)

    h = F.layer_norm(x, (d,), p["ln1.weight"], p["ln1.bias"], eps=1e-5)
    q, k, v = (split(lin(h, f"attn.{s}")) for s in ("q", "k", "v"))
    a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dh), dim=-1)
    c = (a @ v).transpose(1, 2).reshape(n, t, d)
    x = x + lin(c, "attn.out")
    h = F.layer_norm(x, (d,), p["ln2.weight"], p["ln2.bias"], eps=1e-5)
    h = F.gelu(lin(h, "ff1"), approximate="none" if gelu == "erf" else "tanh")
    x = x + lin(h, "ff2")
    return lin(x.mean(dim=1), "head").numpy()


TRANSFORMER_PARAMS = [
    "embed.weight",
    "pos.weight",
    "ln1.weight",
    "ln1.bias",
    "attn.q.weight",
    "attn.q.bias",
    "attn.k.weight",
    "attn.k.bias",
    "attn.v.weight",
    "attn.v.bias",
    "attn.out.weight",
    "attn.out.bias",
    "ln2.weight",
    "ln2.bias",
    "ff1.weight",
    "ff1.bias",
    "ff2.weight",
    "ff2.bias",
    "head.weight",
    "head.bias",
]


@pytest.mark.parametrize("gelu", ["erf", "tanh"])
@pytest.mark.parametrize(
    "sizes",
    [
        dict(),
        dict(vocab_size=10, seq_len=5, d_model=12, num_heads=3, d_ff=24, num_classes=3),
        dict(d_model=8, num_heads=1),
    ],
    ids=["default", "odd", "one_head"],
)
def test_transformer_matches_torch(gelu, sizes):
    kw = dict(vocab_size=16, seq_len=8, d_model=16, num_heads=2, d_ff=32, num_classes=4) | sizes
    model = build_transformer(gelu=gelu, seed=1, **kw)
    check_common(model, "input_ids", onnx.TensorProto.INT64, kw["num_classes"])
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[1].dim_value == kw["seq_len"]
    rank_ge1 = [i.name for i in model.graph.initializer if i.data_type == 1 and len(i.dims) > 0]
    assert rank_ge1 == TRANSFORMER_PARAMS
    shapes = {i.name: tuple(i.dims) for i in model.graph.initializer}
    d = kw["d_model"]
    assert shapes["embed.weight"] == (kw["vocab_size"], d)
    assert shapes["pos.weight"] == (kw["seq_len"], d)
    assert shapes["attn.q.weight"] == (d, d)
    assert shapes["ff1.weight"] == (d, kw["d_ff"])
    assert shapes["head.weight"] == (d, kw["num_classes"])
    for node in model.graph.node:
        if node.op_type == "LayerNormalization":
            assert len(node.output) == 3 and all(node.output)
    ops = {n.op_type for n in model.graph.node}
    assert ("Erf" in ops) == (gelu == "erf") and ("Tanh" in ops) == (gelu == "tanh")
    # non-trivial LayerNorm affine parameters
    rng = np.random.default_rng(5)
    for name in ("ln1.weight", "ln2.weight"):
        set_init(model, name, rng.uniform(0.5, 1.5, d).astype(np.float32))
    for name in ("ln1.bias", "ln2.bias"):
        set_init(model, name, rng.normal(0, 0.2, d).astype(np.float32))
    ids = np.random.default_rng(3).integers(0, kw["vocab_size"], (6, kw["seq_len"]))
    np.testing.assert_allclose(
        run_ort(model, {"input_ids": ids}),
        transformer_reference(model, ids, kw["num_heads"], gelu),
        rtol=RTOL,
        atol=ATOL,
    )


def test_transformer_errors():
    with pytest.raises(ValueError):
        build_transformer(d_model=10, num_heads=3)
    with pytest.raises(ValueError):
        build_transformer(gelu="relu")


# -- command lines --------------------------------------------------------------------------
def test_model_mains_write_models(tmp_path):
    from adamax_onnx.models import cnn, mlp, transformer

    mlp.main(["--out", str(tmp_path / "m.onnx"), "--hidden", "8", "4", "--use-matmul"])
    cnn.main(["--out", str(tmp_path / "c.onnx"), "--batchnorm", "--pool", "global"])
    transformer.main(["--out", str(tmp_path / "t.onnx"), "--gelu", "tanh"])
    for name in ("m", "c", "t"):
        onnx.checker.check_model(onnx.load(str(tmp_path / f"{name}.onnx")), full_check=True)
    m = onnx.load(str(tmp_path / "m.onnx"))
    assert [i.name for i in m.graph.initializer][-2:] == ["fc3.weight", "fc3.bias"]


# -- data -----------------------------------------------------------------------------------
def test_load_digits_split():
    x_train, y_train, x_test, y_test = load_digits_split(seed=0)
    assert x_train.dtype == np.float32 and x_test.dtype == np.float32
    assert y_train.dtype == np.int64 and y_test.dtype == np.int64
    assert x_train.shape[1:] == (64,) and x_test.shape[1:] == (64,)
    assert len(x_train) + len(x_test) == 1797 and len(x_train) == len(y_train)
    assert abs(len(x_test) / 1797 - 0.25) < 0.01
    assert x_train.min() >= 0.0 and x_train.max() <= 1.0 and x_train.max() > 0.9
    assert set(y_train.tolist()) == set(y_test.tolist()) == set(range(10))
    again = load_digits_split(seed=0)
    for a, b in zip((x_train, y_train, x_test, y_test), again, strict=True):
        np.testing.assert_array_equal(a, b)
    other = load_digits_split(seed=1)
    assert not np.array_equal(other[1], y_train)
    xi_train, yi_train, xi_test, _ = load_digits_split(seed=0, image=True)
    assert xi_train.shape[1:] == (1, 8, 8) and xi_test.shape[1:] == (1, 8, 8)
    np.testing.assert_array_equal(xi_train.reshape(len(xi_train), -1), x_train)
    np.testing.assert_array_equal(yi_train, y_train)


def test_make_token_task():
    ids, labels = make_token_task(n=300, seq_len=8, vocab_size=16, num_classes=4, seed=0)
    assert ids.shape == (300, 8) and ids.dtype == np.int64
    assert labels.shape == (300,) and labels.dtype == np.int64
    assert ids.min() >= 0 and ids.max() < 16
    assert set(labels.tolist()) == {0, 1, 2, 3}
    assert np.bincount(labels).min() > 30  # roughly balanced
    counts = np.stack([np.bincount(r // 4, minlength=4) for r in ids])
    np.testing.assert_array_equal(counts.argmax(axis=1), labels)
    assert ((counts == counts.max(axis=1, keepdims=True)).sum(axis=1) == 1).all()  # no ties
    again = make_token_task(n=300, seq_len=8, vocab_size=16, num_classes=4, seed=0)
    np.testing.assert_array_equal(again[0], ids)
    np.testing.assert_array_equal(again[1], labels)
    assert not np.array_equal(make_token_task(n=300, seed=1)[0], ids)


def test_save_npz_and_data_main(tmp_path, capsys):
    from adamax_onnx.models import data

    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    y = np.array([0, 1, 2], dtype=np.int64)
    path = save_npz(tmp_path / "a", x, y)
    assert path.name == "a.npz"
    with np.load(path, allow_pickle=False) as f:
        assert sorted(f.files) == ["x", "y"]
        np.testing.assert_array_equal(f["x"], x)
        np.testing.assert_array_equal(f["y"], y)

    data.main(["--out", str(tmp_path / "digits"), "--image"])
    with np.load(tmp_path / "digits_train.npz", allow_pickle=False) as f:
        assert f["x"].shape[1:] == (1, 8, 8) and f["x"].dtype == np.float32
        assert f["y"].dtype == np.int64
    with np.load(tmp_path / "digits_test.npz", allow_pickle=False) as f:
        assert len(f["x"]) == len(f["y"]) == 450
    data.main(["--out", str(tmp_path / "tok"), "--task", "tokens", "--n", "100"])
    with np.load(tmp_path / "tok_train.npz", allow_pickle=False) as f:
        assert f["x"].shape == (75, 8) and f["x"].dtype == np.int64
    capsys.readouterr()
