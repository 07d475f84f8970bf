"""``adamax-onnx build --config`` (adamax_onnx/cli/config.py): parameter groups with schedules
and tables from JSON/TOML.

The model the CLI writes must train exactly like one built through the Python API with the
same arguments (same losses and parameters, bit for bit, over 30 steps).
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

import adamax_onnx as ax
from adamax_onnx import dynamic_lr, schedules
from adamax_onnx.cli import main
from adamax_onnx.models.mlp import build_mlp

STEPS = 30

CONFIG = {
    "learning_rate": {"schedule": "WarmUpLR", "learning_rate": 0.01, "warmup_steps": 5},
    "weight_decay": 0.001,
    "loss_scale": 4,
    "groups": [
        {
            "params": ["fc1.weight"],
            "lr": {"schedule": "CosineDecayLR", "min_lr": 0, "max_lr": 0.02, "decay_steps": 12},
            "weight_decay": {
                "schedule": "ExponentialDecayLR",
                "learning_rate": 0.01,
                "decay_rate": 0.5,
                "decay_steps": 4,
                "is_stair": True,
            },
            "grad_centralization": True,
        },
        {
            "params": ["fc1.bias", "fc2.bias"],
            "lr": {
                "dynamic_lr": "cosine_decay_lr",
                "min_lr": 0.001,
                "max_lr": 0.01,
                "total_step": 40,
                "step_per_epoch": 4,
                "decay_epoch": 5,
            },
            "weight_decay": 0,
        },
        {"params": ["fc2.weight"], "lr": [0.005] * 20 + [0.001] * 20},
        {"order_params": ["fc2.weight", "fc1.weight", "fc2.bias", "fc1.bias"]},
    ],
}

TOML = """
learning_rate = {schedule = "WarmUpLR", learning_rate = 0.01, warmup_steps = 5}
weight_decay = 0.001
loss_scale = 4

[[groups]]
params = ["fc1.weight"]
lr = {schedule = "CosineDecayLR", min_lr = 0, max_lr = 0.02, decay_steps = 12}
weight_decay = {schedule = "ExponentialDecayLR", learning_rate = 0.01, decay_rate = 0.5, \
decay_steps = 4, is_stair = true}
grad_centralization = true

[[groups]]
params = ["fc1.bias", "fc2.bias"]
lr = {dynamic_lr = "cosine_decay_lr", min_lr = 0.001, max_lr = 0.01, total_step = 40, \
step_per_epoch = 4, decay_epoch = 5}
weight_decay = 0

[[groups]]
params = ["fc2.weight"]
lr = {table = [TABLE]}

[[groups]]
order_params = ["fc2.weight", "fc1.weight", "fc2.bias", "fc1.bias"]
""".replace("TABLE", ", ".join(["0.005"] * 20 + ["0.001"] * 20))


def api_optimizer():
    """The same optimizer written with the Python API."""
    return ax.AdaMax(
        [
            {
                "params": ["fc1.weight"],
                "lr": schedules.CosineDecayLR(0.0, 0.02, 12),
                "weight_decay": schedules.ExponentialDecayLR(0.01, 0.5, 4, is_stair=True),
                "grad_centralization": True,
            },
            {
                "params": ["fc1.bias", "fc2.bias"],
                "lr": dynamic_lr.cosine_decay_lr(0.001, 0.01, 40, 4, 5),
                "weight_decay": 0,
            },
            {"params": ["fc2.weight"], "lr": [0.005] * 20 + [0.001] * 20},
            {"order_params": ["fc2.weight", "fc1.weight", "fc2.bias", "fc1.bias"]},
        ],
        learning_rate=schedules.WarmUpLR(0.01, 5),
        weight_decay=0.001,
        loss_scale=4,
    )


@pytest.fixture(scope="module")
def api_run():
    model = ax.build_training_model(build_mlp(), api_optimizer(), loss="cross_entropy")
    return model, train(model)


def train(model):
    sess = ax.TrainingSession(model)
    rng = np.random.default_rng(0)
    losses, lrs = [], []
    for _ in range(STEPS):
        lrs.append(sess.get_lr())
        x = rng.normal(size=(16, 64)).astype(np.float32)
        y = rng.integers(0, 10, size=16).astype(np.int64)
        losses.append(sess.step({"input": x, "labels": y}))
    return losses, lrs, sess.parameters(), sess.contract


@pytest.mark.parametrize("fmt", ["json", "toml"])
def test_build_config_with_schedules_and_tables(tmp_path, capsys, api_run, fmt):
    onnx.save(build_mlp(), str(tmp_path / "mlp.onnx"))
    cfg = tmp_path / f"groups.{fmt}"
    cfg.write_text(json.dumps(CONFIG) if fmt == "json" else TOML)
    out = tmp_path / "train.onnx"
    # The config's learning_rate/weight_decay/loss_scale win over these flags.
    argv = ["build", str(tmp_path / "mlp.onnx"), "-o", str(out), "--config", str(cfg)]
    assert main([*argv, "--lr", "0.5", "--weight-decay", "0.3"]) == 0
    assert "4 trained parameters" in capsys.readouterr().out
    api_model, (api_losses, api_lrs, api_params, api_contract) = api_run
    losses, lrs, params, contract = train(onnx.load(str(out)))
    assert contract.params == ["fc2.weight", "fc1.weight", "fc2.bias", "fc1.bias"]
    assert contract.groups == api_contract.groups and contract.hyper["loss_scale"] == 4.0
    assert lrs == api_lrs and losses == api_losses
    for k in params:
        np.testing.assert_array_equal(params[k], api_params[k])
    # The schedules really are in the graph: the cosine lr falls, the table steps down.
    assert lrs[0][0] == pytest.approx(0.02) and lrs[12][0] == 0.0
    assert lrs[19][2] == pytest.approx(0.005) and lrs[20][2] == pytest.approx(0.001)
    assert sum(n.op_type == "ReduceMean" for n in onnx.load(str(out)).graph.node) >= 1


@pytest.mark.parametrize(
    "config, message",
    [
        ({"groups": [{"params": ["fc1.weight"], "lr": {"schedule": "Nope"}}]}, "unknown schedule"),
        (
            {"learning_rate": {"schedule": "WarmUpLR", "learning_rate": 0.1}},
            "warmup_steps",
        ),
        (
            {"learning_rate": {"schedule": "WarmUpLR", "table": [0.1]}},
            "exactly one of",
        ),
        ({"learning_rat": 0.1}, "unknown key"),
        ({"groups": {"params": ["fc1.weight"]}}, "must be a list"),
        (
            {"groups": [{"params": ["fc1.weight"], "lr": {"dynamic_lr": "cosine_decay_lr"}}]},
            "cosine_decay_lr",
        ),
    ],
)
def test_bad_config_is_a_clear_error(tmp_path, capsys, config, message):
    onnx.save(build_mlp(), str(tmp_path / "mlp.onnx"))
    cfg = tmp_path / "bad.json"
    cfg.write_text(json.dumps(config))
    code = main(
        ["build", str(tmp_path / "mlp.onnx"), "-o", str(tmp_path / "o.onnx"), "--config", str(cfg)]
    )
    err = capsys.readouterr().err
    assert code == 2 and message in err
    assert not (tmp_path / "o.onnx").exists()


def test_config_without_groups_applies_to_all_params(tmp_path):
    onnx.save(build_mlp(), str(tmp_path / "mlp.onnx"))
    cfg = tmp_path / "opt.toml"
    cfg.write_text(
        'learning_rate = {schedule = "InverseDecayLR", learning_rate = 0.01, '
        "decay_rate = 0.5, decay_steps = 3, is_stair = true}\n"
    )
    out = tmp_path / "train.onnx"
    assert main(["build", str(tmp_path / "mlp.onnx"), "-o", str(out), "--config", str(cfg)]) == 0
    sess = ax.TrainingSession(str(out))
    assert sess.contract.params == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    assert sess.contract.groups[0]["lr"] == {"schedule": "InverseDecayLR"}
    assert sess.get_lr() == {0: pytest.approx(0.01)}
