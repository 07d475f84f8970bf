"""Run pieces of adamax_onnx.federated inside the federated venv and write what they produced.

tests/federated/test_federated.py calls this in a separate process of the project's venv (Flower
1.42 + stock onnxruntime), as a device would run it. It computes, the test asserts:

    python tests/federated_runner.py roundtrip JOB.json OUT.npz
    python tests/federated_runner.py aggregate JOB.json OUT.npz

``roundtrip``: parameters through Flower's ``ArrayRecord`` and into a client's session, the
errors for mismatched parameters, and two local training rounds (checkpointed state).
``aggregate``: FiniteUpdates around Flower's FedAvg/FedAdam on hand-made reply messages.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def _flat(state: dict) -> list:
    """A state dict (nested m/v dicts) as a comparable list of (key, bytes)."""
    out = []
    for k, v in sorted(state.items()):
        if isinstance(v, dict):
            out += [(f"{k}/{n}", np.asarray(a).tobytes()) for n, a in sorted(v.items())]
        else:
            out.append((k, np.asarray(v).tobytes()))
    return out


def _errors(client, good: dict[str, np.ndarray]) -> dict[str, str]:
    from adamax_onnx.errors import FederatedError
    from adamax_onnx.federated.params import to_record

    first = next(iter(good))
    cases = {
        "missing": {k: v for k, v in good.items() if k != first},
        "unknown": {**good, "not.a.param": np.zeros(2, np.float32)},
        "shape": {**good, first: np.zeros((*good[first].shape, 1), np.float32)},
        "dtype": {**good, first: good[first].astype(np.int32)},
    }
    out = {}
    for name, values in cases.items():
        before = client.session.parameters()
        try:
            client.load_global(to_record(values))
            out[name] = "no error"
        except FederatedError as exc:
            out[name] = str(exc)
        after = client.session.parameters()
        out[name + ".unchanged"] = str(all(np.array_equal(before[k], after[k]) for k in before))
    return out


def roundtrip(job: dict, out: Path) -> None:
    from adamax_onnx.federated.client import LocalClient
    from adamax_onnx.federated.config import read_config
    from adamax_onnx.federated.params import from_record, to_record

    settings = read_config(job["run_config"])
    client = LocalClient(settings, 0, run_id=1)
    initial = client.session.parameters()
    state0 = client.session.state()
    # 1. ArrayRecord keeps names (in order), shapes, dtypes and values.
    back = from_record(to_record(initial))
    # 2. Global parameters (float64, as FedAdam produces) go into the session by name.
    rng = np.random.default_rng(0)
    glob = {k: (v + rng.standard_normal(v.shape)).astype(np.float64) for k, v in initial.items()}
    client.load_global(to_record(glob))
    loaded = client.session.parameters()
    state1 = client.session.state()
    errors = _errors(client, {k: v.astype(np.float32) for k, v in glob.items()})
    # 3. Two rounds of local training from the same global parameters.
    p1, m1 = client.train(to_record(initial), server_round=1)
    step1 = client.session.state()["global_step"]
    ckpt_exists = client.checkpoint.exists()
    fresh = LocalClient(settings, 0, run_id=1)  # a restarted device: state from the checkpoint
    step_fresh = fresh.session.state()["global_step"]
    p2, m2 = fresh.train(to_record(p1), server_round=2)
    step2 = fresh.session.state()["global_step"]
    ev = fresh.evaluate(to_record(p2))
    arrays = {}
    for k in initial:
        arrays[f"initial/{k}"] = initial[k]
        arrays[f"back/{k}"] = back[k]
        arrays[f"glob/{k}"] = glob[k]
        arrays[f"loaded/{k}"] = loaded[k]
        arrays[f"p1/{k}"] = p1[k]
        arrays[f"p2/{k}"] = p2[k]
    np.savez(out, **arrays)
    meta = {
        "names": list(initial),
        "back_names": list(back),
        "back_dtypes": {k: str(v.dtype) for k, v in back.items()},
        "loaded_dtypes": {k: str(v.dtype) for k, v in loaded.items()},
        "state_kept": _flat(state0) == _flat(state1),
        "errors": errors,
        "metrics1": m1,
        "metrics2": m2,
        "step1": step1,
        "step_fresh": step_fresh,
        "step2": step2,
        "checkpoint": ckpt_exists,
        "evaluate": ev,
        "samples": int(len(client.y)),
    }
    out.with_suffix(".json").write_text(json.dumps(meta))


def aggregate(job: dict, out: Path) -> None:
    from flwr.app import ConfigRecord, Error, Message, MetricRecord, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from adamax_onnx.federated.params import from_record, to_record
    from adamax_onnx.federated.strategy import make_strategy

    # What a ServerApp process has set when its strategy builds messages (run 1, SuperLink 1).
    TaskIdentity.run_id = 1
    TaskIdentity.node_id = 1
    TaskIdentity.task_id = 1
    inputs = np.load(job["inputs"])
    names = job["names"]
    glob = {n: inputs[f"global/{n}"] for n in names}
    results = {}
    meta = {}
    for strategy_name in ("fedavg", "fedadam"):
        kwargs = {"eta": 0.05, "tau": 1e-3, "beta_1": 0.9, "beta_2": 0.99} if strategy_name == "fedadam" else {}
        strat = make_strategy(strategy_name, **kwargs)
        strat._dtypes = {n: glob[n].dtype for n in names}
        if strategy_name == "fedadam":  # what configure_train records in a real round
            strat.inner.current_arrays = dict(glob)
        strat._count(1, "train")["sent"] = len(job["clients"]) + 1  # one node never replies
        replies = []
        for i, c in enumerate(job["clients"]):
            sent = Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=100 + i, message_type="train")
            if c.get("error"):
                replies.append(Message(Error(code=0, reason="client raised"), reply_to=sent))
                continue
            arrays = {n: inputs[f"client{i}/{n}"] for n in names}
            content = RecordDict(
                {"arrays": to_record(arrays), "metrics": MetricRecord({"num-examples": c["n"]})}
            )
            replies.append(Message(content, reply_to=sent))
        agg, _ = strat.aggregate_train(1, replies)
        for n, v in from_record(agg).items():
            results[f"{strategy_name}/{n}"] = v
        meta[strategy_name] = {
            "excluded": strat.excluded,
            "replies": strat.replies,
        }
    np.savez(out, **results)
    out.with_suffix(".json").write_text(json.dumps(meta))


if __name__ == "__main__":
    mode, job_path, out_path = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    {"roundtrip": roundtrip, "aggregate": aggregate}[mode](json.loads(job_path.read_text()), out_path)
