"""Federated training on Flower (adamax_onnx.federated).

Flower 1.42 lives in the project's one venv (stock onnxruntime, protobuf 6.33; scripts/setup.sh
--test installs it). The training model is built by the same ``prepare`` command a user runs;
everything Flower-side runs in separate processes (tests/federated_runner.py or the real
``simulate`` / ``deploy`` commands), as the devices of a real federation would, and is checked
here against numpy references written from the formulas (weighted mean, FedAdam's update) and
against the recorded run histories. Nothing here is skipped.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from adamax_onnx.errors import FederatedError
from adamax_onnx.federated.config import parse_faults, read_config
from adamax_onnx.federated.data import split_by_label
from adamax_onnx.federated.params import check_parameters, nonfinite_reason

ROOT = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- no Flower needed
def test_split_by_label_is_a_partition_with_few_labels_per_client():
    y = np.repeat(np.arange(10), 30)
    parts = split_by_label(y, num_clients=10, classes_per_client=3, seed=1)
    allidx = np.concatenate(parts)
    assert sorted(allidx.tolist()) == list(range(len(y)))  # every sample exactly once
    for i, p in enumerate(parts):
        labels = set(y[p].tolist())
        assert labels == {(i + j) % 10 for j in range(3)}, (i, labels)
    # each label's samples are shared evenly among its 3 holders
    assert all(abs(len(p) - 30) <= 1 for p in parts)


def test_split_by_label_refuses_labels_no_client_holds():
    y = np.repeat(np.arange(10), 5)
    with pytest.raises(ValueError, match="held by no client"):
        split_by_label(y, num_clients=2, classes_per_client=2)
    with pytest.raises(ValueError, match="classes_per_client"):
        split_by_label(y, num_clients=2, classes_per_client=11)


def test_check_parameters_names_the_parameter_at_fault():
    expected = {"w": np.zeros((2, 3), np.float32), "b": np.zeros(3, np.float32)}
    with pytest.raises(FederatedError, match=r"missing \['b'\]"):
        check_parameters({"w": expected["w"]}, expected)
    with pytest.raises(FederatedError, match=r"unknown \['z'\]"):
        check_parameters({**expected, "z": expected["b"]}, expected)
    with pytest.raises(FederatedError, match=r"'w' has shape \[3, 2\]"):
        check_parameters({**expected, "w": np.zeros((3, 2), np.float32)}, expected)
    with pytest.raises(FederatedError, match=r"'b' is float64"):
        check_parameters({**expected, "b": np.zeros(3)}, expected)
    got = check_parameters({**expected, "b": np.full(3, 0.1)}, expected, cast=True)
    assert got["b"].dtype == np.float32 and got["b"][0] == np.float32(0.1)
    assert list(got) == ["w", "b"]


def test_nonfinite_reason_counts_nan_and_inf():
    assert nonfinite_reason({"w": np.ones(3, np.float32)}, {"loss": 0.5}) is None
    why = nonfinite_reason({"w": np.array([np.nan, np.inf, 1, np.nan], np.float32)})
    assert why == "'w' has 2 NaN and 1 Inf of 4 values"
    assert "metric 'loss'" in nonfinite_reason({}, {"loss": float("nan")})
    assert nonfinite_reason({"step": np.array([5], np.int64)}) is None


def test_read_config_checks_keys_and_types():
    base = {"train-model": "m.onnx", "data-dir": "d"}
    s = read_config({**base, "local-epochs": 3, "server-lr": 1})
    assert s.local_epochs == 3 and s.server_lr == 1.0 and s.strategy == "fedavg"
    with pytest.raises(FederatedError, match="unknown run-config key"):
        read_config({**base, "local-epoch": 3})
    with pytest.raises(FederatedError, match="'batch-size' must be a int"):
        read_config({**base, "batch-size": 2.5})
    with pytest.raises(FederatedError, match="'local-epochs' must be >= 1"):
        read_config({**base, "local-epochs": 0})
    with pytest.raises(FederatedError, match="'train-model'"):
        read_config({"data-dir": "d"})
    assert parse_faults("crash:2, nan:5@3") == {2: [("crash", None)], 5: [("nan", 3)]}
    with pytest.raises(FederatedError, match="fault-injection"):
        parse_faults("boom:1")


# --------------------------------------------------------------------------- the interpreter
@pytest.fixture(scope="session")
def fed_python() -> Path:
    """The interpreter the Flower processes run in: this venv's (Flower is installed here)."""
    import flwr  # noqa: F401  (fails the tests, naming flwr, where it is missing)

    return Path(sys.executable)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """MLP training model + digits split over 3 clients, by the user's prepare command."""
    out = tmp_path_factory.mktemp("fed-prepared")
    proc = subprocess.run(
        [sys.executable, "-m", "adamax_onnx.federated.prepare", "--model", "mlp", "--out",
         str(out), "--clients", "3", "--classes-per-client", "4"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def _runner(python: Path, mode: str, job: dict, work: Path) -> tuple[dict, dict]:
    job_path, out = work / f"{mode}.json", work / f"{mode}-out.npz"
    job_path.write_text(json.dumps(job))
    proc = subprocess.run(
        [str(python), str(ROOT / "tests" / "federated_runner.py"), mode, str(job_path), str(out)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert proc.returncode == 0, f"federated runner failed:\n{proc.stdout}\n{proc.stderr}"
    arrays = dict(np.load(out))
    return arrays, json.loads(out.with_suffix(".json").read_text())


def test_client_parameter_round_trip_and_local_state(fed_python, prepared, tmp_path):
    job = {"run_config": {
        "train-model": str(prepared / "mlp.train.onnx"), "data-dir": str(prepared / "data"),
        "state-dir": str(tmp_path / "state"), "local-epochs": 2, "batch-size": 16,
    }}
    a, m = _runner(fed_python, "roundtrip", job, tmp_path)
    names = m["names"]
    assert names == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    # ArrayRecord round trip: names in order, shapes, dtypes, values exact.
    assert m["back_names"] == names
    for n in names:
        assert a[f"back/{n}"].dtype == a[f"initial/{n}"].dtype == np.float32
        np.testing.assert_array_equal(a[f"back/{n}"], a[f"initial/{n}"])
        # float64 global parameters (FedAdam) land in the session rounded to float32
        assert m["loaded_dtypes"][n] == "float32"
        np.testing.assert_array_equal(a[f"loaded/{n}"], a[f"glob/{n}"].astype(np.float32))
    assert m["state_kept"], "loading global parameters must not touch the optimizer state"
    err = m["errors"]
    assert "missing ['fc1.weight']" in err["missing"]
    assert "unknown ['not.a.param']" in err["unknown"]
    assert "'fc1.weight' has shape [128, 64, 1], the model needs [128, 64]" in err["shape"]
    assert "'fc1.weight' is int32" in err["dtype"]
    assert all(err[f"{k}.unchanged"] == "True" for k in ("missing", "unknown", "shape", "dtype"))
    # Local training: steps = epochs * ceil(samples / batch); the AdaMax state survives in the
    # checkpoint, so a restarted client continues at the same global_step.
    steps = 2 * math.ceil(m["samples"] / 16)
    assert m["checkpoint"] and m["step1"] == steps and m["step_fresh"] == steps
    assert m["step2"] == 2 * steps
    assert m["metrics1"]["num-examples"] == m["samples"]
    assert m["metrics2"]["train-loss"] < m["metrics1"]["train-loss"]
    for n in names:
        assert np.isfinite(a[f"p2/{n}"]).all()
        assert not np.array_equal(a[f"p1/{n}"], a[f"initial/{n}"])
    assert 0.0 <= m["evaluate"]["accuracy"] <= 1.0 and m["evaluate"]["num-examples"] == m["samples"]


def test_strategy_excludes_nonfinite_and_failed_replies(fed_python, tmp_path):
    rng = np.random.default_rng(3)
    shapes = {"w": (4, 3), "b": (3,)}
    glob = {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}
    clients = [{"n": 10}, {"n": 30}, {"n": 20, "nan": True}, {"n": 5, "error": True}, {"n": 15}]
    inputs = {f"global/{n}": v for n, v in glob.items()}
    for i, c in enumerate(clients):
        for n, s in shapes.items():
            v = rng.standard_normal(s).astype(np.float32)
            if c.get("nan") and n == "b":
                v[1] = np.nan
            inputs[f"client{i}/{n}"] = v
    np.savez(tmp_path / "inputs.npz", **inputs)
    a, m = _runner(
        fed_python, "aggregate",
        {"inputs": str(tmp_path / "inputs.npz"), "names": list(shapes), "clients": clients},
        tmp_path,
    )
    good = [i for i, c in enumerate(clients) if not c.get("nan") and not c.get("error")]
    weights = np.array([clients[i]["n"] for i in good], np.float64)
    weights /= weights.sum()
    for n in shapes:
        avg = sum(w * inputs[f"client{i}/{n}"].astype(np.float64) for w, i in zip(weights, good, strict=True))
        got = a[f"fedavg/{n}"]
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, avg, rtol=1e-6, atol=1e-7)
        # FedAdam, round 1, from its formula: m = (1-b1) d, v = (1-b2) d^2,
        # x + eta * sqrt(1 - b2^2) / (1 - b1^2) * m / (sqrt(v) + tau).
        d = avg - glob[n].astype(np.float64)
        mt, vt = 0.1 * d, 0.01 * d * d
        eta = 0.05 * np.sqrt(1 - 0.99**2) / (1 - 0.9**2)
        ref = glob[n] + eta * mt / (np.sqrt(vt) + 1e-3)
        assert a[f"fedadam/{n}"].dtype == np.float32
        np.testing.assert_allclose(a[f"fedadam/{n}"], ref, rtol=1e-5, atol=1e-6)
    for strat in ("fedavg", "fedadam"):
        (rnd, node, why), = m[strat]["excluded"]
        assert (rnd, node) == (1, 102) and why == "'arrays/b' has 1 NaN and 0 Inf of 3 values"
        counts = m[strat]["replies"]["1"]["train"]
        assert counts == {"sent": 6, "ok": 3, "error": 1, "missing": 1, "nonfinite": 1}


def _command(
    python: Path, module: str, prepared: Path, work: Path, args: list[str], timeout: float
) -> subprocess.CompletedProcess:
    """``python -m adamax_onnx.federated.<module>`` on the prepared MLP model and data."""
    model, data = str(prepared / "mlp.train.onnx"), str(prepared / "data")
    return subprocess.run(
        [str(python), "-m", f"adamax_onnx.federated.{module}", "--train-model", model,
         "--data-dir", data, "--work", str(work), *args, "--quiet"],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT,
    )


@pytest.mark.slow  # Flower processes (10-60 s): run by the all-tests command
def test_simulation_survives_crash_and_nan_clients(fed_python, prepared, tmp_path):
    """3 virtual SuperNodes, 3 rounds: client 1 raises in round 2, client 2 sends NaN in round 3."""
    work = tmp_path / "sim"
    proc = _command(fed_python, "simulate", prepared, work, [
        "--clients", "3", "--rounds", "3", "--local-epochs", "2",
        "--faults", "crash:1@2,nan:2@3", "--round-timeout", "120",
    ], timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    h = json.loads((work / "results.json").read_text())
    rounds = {r["round"]: r for r in h["rounds"]}
    assert sorted(rounds) == [0, 1, 2, 3]
    assert rounds[1]["replies"]["train"] == {"sent": 3, "ok": 3, "error": 0, "missing": 0, "nonfinite": 0}
    assert rounds[2]["replies"]["train"]["error"] == 1 and rounds[2]["replies"]["train"]["ok"] == 2
    assert rounds[3]["replies"]["train"]["nonfinite"] == 1 and rounds[3]["replies"]["train"]["ok"] == 2
    (ex,) = h["excluded"]
    assert ex["round"] == 3 and "NaN" in ex["reason"]
    assert "excluding the train reply of node" in (work / "logs" / "flwr-run.log").read_text()
    assert all(p["finite"] and p["dtype"] == "float32" for p in h["final_parameters"].values())
    assert rounds[3]["accuracy"] > rounds[0]["accuracy"] + 0.3, h["rounds"]
    assert "3 clients, 3 rounds" in proc.stdout


@pytest.mark.slow  # Flower processes (10-60 s): run by the all-tests command
def test_simulation_fedadam_keeps_float32(fed_python, prepared, tmp_path):
    work = tmp_path / "sim"
    proc = _command(fed_python, "simulate", prepared, work, [
        "--clients", "3", "--rounds", "2", "--local-epochs", "1",
        "--strategy", "fedadam",
    ], timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    h = json.loads((work / "results.json").read_text())
    assert h["settings"]["strategy"] == "fedadam"
    assert [r["train_replies"] for r in h["rounds"]] == [0, 3, 3]
    assert all(p["dtype"] == "float32" for p in h["final_parameters"].values())
    assert h["rounds"][-1]["accuracy"] > h["rounds"][0]["accuracy"]


def test_simulate_refuses_missing_client_data(fed_python, prepared, tmp_path):
    proc = _command(fed_python, "simulate", prepared, tmp_path / "w", [
        "--clients", "5",
    ], timeout=120)
    assert proc.returncode == 2
    assert "no data for 2 of 5 clients" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow  # Flower processes (10-60 s): run by the all-tests command
def test_deployment_runtime_with_a_node_killed_mid_run(fed_python, prepared, tmp_path):
    """SuperLink + 3 SuperNode processes; SuperNode 2 is SIGKILLed as soon as it has trained
    once (its checkpoint appears), i.e. in round 1, before or while it replies."""
    work = tmp_path / "deploy"
    proc = _command(fed_python, "deploy", prepared, work, [
        "--nodes", "3", "--rounds", "2", "--local-epochs", "2",
        "--round-timeout", "10", "--kill-node", "2",
    ], timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    h = json.loads((work / "results.json").read_text())
    rounds = {r["round"]: r for r in h["rounds"]}
    assert sorted(rounds) == [0, 1, 2]
    assert rounds[1]["replies"]["train"]["sent"] == 3  # all three were alive at the start
    assert "killed supernode-2" in (work / "logs" / "killed.log").read_text()
    # the federation went on without the dead node, and learned from the other two
    assert rounds[2]["train_replies"] == 2
    assert h["failed"], "the dead node's missing reply must be recorded"
    assert rounds[2]["accuracy"] > rounds[0]["accuracy"] + 0.25, h["rounds"]
