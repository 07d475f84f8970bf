"""Record references with the Python TrainingSession for the JavaScript tests (js/test/).

    .venv/bin/python js/test/make_fixtures.py [OUT]      # default: js/test/fixtures

Per case ``<name>``: ``<name>.onnx`` (the built training model, default build),
``<name>.batches.npz`` (``<step>/<input>`` arrays), ``<name>.ref.npz`` (``__losses__``, the
overflow flags, and every carried tensor after the last step), ``<name>.ckpt.npz`` (a Python
checkpoint after ``ckpt_step`` steps) and ``<name>.trained.onnx`` (the exported inference model
after the last step). ``cases.json`` lists the cases with their steps and learning-rate changes;
``mlp.format1.onnx`` is the MLP in the form older versions wrote (state inputs with defaults).
Deterministic: the same models, batches and numbers on every run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import onnx  # noqa: E402
from onnx import helper, numpy_helper, version_converter  # noqa: E402

import adamax_onnx as ax  # noqa: E402
from adamax_onnx.models.cnn import build_cnn  # noqa: E402
from adamax_onnx.models.data import load_digits_split, make_token_task  # noqa: E402
from adamax_onnx.models.mlp import build_mlp  # noqa: E402
from adamax_onnx.models.transformer import build_transformer  # noqa: E402
from adamax_onnx.passes.contract import attach_initial_values  # noqa: E402
from adamax_onnx.schedules import CosineDecayLR  # noqa: E402


def _batches(x, y, steps, batch, seed):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        idx = rng.choice(len(x), batch, replace=False)
        out.append({"input": np.ascontiguousarray(x[idx]), "labels": y[idx]})
    return out


def cnn_bn_dropout_train_mode() -> onnx.ModelProto:
    """The CNN with BatchNormalization in training mode (running statistics are state) and a
    Dropout in training mode after its first ReLU (the int64 dropout.seed is state), opset 18."""
    m = version_converter.convert_version(build_cnn(batchnorm=True), 18)
    g = m.graph
    for node in g.node:
        if node.op_type == "BatchNormalization":
            node.attribute.append(helper.make_attribute("training_mode", 1))
    idx, relu = next((i, n) for i, n in enumerate(g.node) if n.op_type == "Relu")
    out = relu.output[0]
    relu.output[0] = f"{out}.pre_dropout"
    # ratio and training_mode as Constant nodes, as torch exports them (an initializer there
    # trips the inference export: the Dropout pass leaves no value for it in the training model)
    consts = [
        helper.make_node(
            "Constant",
            [],
            ["dropout.ratio"],
            value=numpy_helper.from_array(np.array(0.2, np.float32)),
        ),
        helper.make_node(
            "Constant", [], ["dropout.training"], value=numpy_helper.from_array(np.array(True))
        ),
        helper.make_node("Dropout", [relu.output[0], "dropout.ratio", "dropout.training"], [out]),
    ]
    for k, node in enumerate(consts):
        g.node.insert(idx + 1 + k, node)
    return m


def cases():
    xtr, ytr, _, _ = load_digits_split()
    xim, yim, _, _ = load_digits_split(image=True)
    tokens, tlabels = make_token_task(n=256)
    mlp = build_mlp(hidden=(32,))
    cnn = build_cnn()
    tr = build_transformer()
    frozen_tr = [p for p in ax.trainable_params(tr) if p != "attn.k.bias"]  # zero gradient
    yield dict(
        name="mlp",
        model=ax.build_training_model(mlp, ax.AdaMax(ax.trainable_params(mlp), learning_rate=0.01)),
        batches=_batches(xtr, ytr, 8, 32, 0),
        set_lr={4: 0.005},  # TrainingSession.set_learning_rate before step 4
    )
    yield dict(
        name="cnn",
        model=ax.build_training_model(cnn, ax.AdaMax(ax.trainable_params(cnn), learning_rate=0.01)),
        batches=_batches(xim, yim, 5, 16, 1),
    )
    bn = cnn_bn_dropout_train_mode()
    # conv1.bias feeds a BatchNorm in training mode: its gradient is identically zero, so its
    # AdaMax steps are rounding noise made full size (frozen, as attn.k.bias below)
    bn_params = [p for p in ax.trainable_params(bn) if p != "conv1.bias"]
    yield dict(
        name="cnn_bn_dropout",
        model=ax.build_training_model(bn, ax.AdaMax(bn_params, learning_rate=0.01)),
        batches=_batches(xim, yim, 5, 16, 6),
    )
    yield dict(
        name="transformer",
        model=ax.build_training_model(tr, ax.AdaMax(frozen_tr, learning_rate=0.01)),
        batches=_batches(tokens, tlabels, 5, 16, 2),
    )
    yield dict(
        name="mlp_table",
        model=ax.build_training_model(
            mlp,
            ax.AdaMax(
                ax.trainable_params(mlp),
                learning_rate=[0.02, 0.01, 0.01, 0.005, 0.005, 0.002],
                weight_decay=0.01,
            ),
        ),
        batches=_batches(xtr, ytr, 6, 32, 3),
    )
    yield dict(
        name="mlp_schedule",
        model=ax.build_training_model(
            mlp, ax.AdaMax(ax.trainable_params(mlp), learning_rate=CosineDecayLR(0.001, 0.02, 6))
        ),
        batches=_batches(xtr, ytr, 6, 32, 4),
    )
    rng = np.random.default_rng(7)
    mixed = {
        "w16": rng.standard_normal((4, 16)).astype(np.float16),
        "w32": rng.standard_normal((16,)).astype(np.float32),
    }
    yield dict(
        name="optimizer_mixed",  # build_optimizer_model: float16 and float32, gradients fed
        model=ax.build_optimizer_model(
            ax.AdaMax(list(mixed), learning_rate=0.01, weight_decay=0.01), mixed
        ),
        batches=[
            {f"{k}_grad": rng.standard_normal(v.shape).astype(v.dtype) for k, v in mixed.items()}
            for _ in range(6)
        ],
    )
    scale_batches = _batches(xtr, ytr, 7, 32, 5)
    scale_batches[3]["input"] = scale_batches[3]["input"].copy()
    scale_batches[3]["input"][0, 0] = np.nan  # an overflowing step: skipped, scale halved
    yield dict(
        name="mlp_loss_scale",
        model=ax.build_training_model(
            mlp,
            ax.AdaMax(ax.trainable_params(mlp), learning_rate=0.01),
            loss_scale_manager=ax.DynamicLossScaleManager(2.0**10, 2, scale_window=2),
        ),
        batches=scale_batches,
    )


def record(case, out: Path) -> dict:
    name = case["name"]
    onnx.save(case["model"], str(out / f"{name}.onnx"))
    sess = ax.TrainingSession(case["model"])
    training = sess.contract.kind == "training"
    first = sess.contract.data_inputs[0]  # the model's own input ("input", "input_ids")
    batches = case["batches"]
    if training:
        batches = [{first: b["input"], "labels": b["labels"]} for b in batches]
    np.savez(
        out / f"{name}.batches.npz",
        **{f"{i}/{k}": v for i, b in enumerate(batches) for k, v in b.items()},
    )
    losses, overflow = [], []
    ckpt_step = len(batches) // 2
    for i, b in enumerate(batches):
        if i in case.get("set_lr", {}):
            sess.set_learning_rate(case["set_lr"][i])
        if i == ckpt_step:
            sess.save_checkpoint(out / f"{name}.ckpt.npz")
        loss = sess.step(b)
        losses.append(np.nan if loss is None else loss)
        overflow.append(sess.last_overflow)
    np.savez(
        out / f"{name}.ref.npz",
        __losses__=np.array(losses, np.float64),
        __overflow__=np.array(overflow),
        **sess.state_tensors(),
    )
    if training:
        sess.export_inference_model(out / f"{name}.trained.onnx")
    return {
        "name": name,
        "kind": sess.contract.kind,
        "steps": len(batches),
        "ckpt_step": ckpt_step,
        "set_lr": {str(k): v for k, v in case.get("set_lr", {}).items()},
        "data_inputs": sess.contract.data_inputs,
        "loss_scale": sess.loss_scale,
    }


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else Path(__file__).parent / "fixtures"
    out.mkdir(parents=True, exist_ok=True)
    listed = [record(c, out) for c in cases()]
    # the MLP in the form older versions wrote (contract format 1: state inputs with defaults)
    legacy = attach_initial_values(onnx.load(str(out / "mlp.onnx")))
    onnx.save(legacy, str(out / "mlp.format1.onnx"))
    (out / "cases.json").write_text(json.dumps({"cases": listed}, indent=1))
    print(f"fixtures: {len(listed)} cases in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
