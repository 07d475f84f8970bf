"""The Flower ``ClientApp``: one device training an adamax-onnx model on its own data.

Per training message the client

1. restores its session from its local checkpoint (``<state-dir>/run-<run id>/client-<id>.npz``:
   its last parameters and its AdaMax state ``m``, ``v``, ``beta1_power``, ``global_step``);
   without one (first round) it starts from the training model's initial state;
2. overwrites the parameters with the global ones received by name (shapes and dtypes checked;
   the optimizer state is kept: it never leaves the device);
3. trains ``local-epochs`` shuffled epochs on ``client-<id>.npz`` with the AdaMax graph;
4. writes its checkpoint (atomically) and replies with its parameters and ``num-examples``.

An evaluation message loads the global parameters and reports loss and accuracy on the local
data. The client runs whatever onnxruntime is installed: stock onnxruntime is enough for
training models built with ``portable=True`` (the default).

``client-id`` is the ``partition-id`` from the node config (Flower's Simulation Runtime sets
it; in deployment pass ``--node-config "partition-id=0"`` to ``flower-supernode``).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from ..errors import FederatedError
from ..runtime import TrainingSession
from ..training import batches, evaluate, load_dataset
from .config import RunSettings, read_config
from .data import client_file
from .params import check_parameters, from_record, to_record

__all__ = ["app", "LocalClient"]

_lock = threading.RLock()
_models: dict[str, bytes] = {}


def _model_bytes(path: str) -> bytes:
    """The training model file, read once per process (every client of a process shares it)."""
    with _lock:
        if path not in _models:
            p = Path(path)
            if not p.is_file():
                raise FederatedError(f"run-config 'train-model': file {path!r} does not exist")
            _models[path] = p.read_bytes()
        return _models[path]


class LocalClient:
    """One device's training state: a TrainingSession bound to a checkpoint file and data.

    Args:
        settings: the run settings.
        client_id: this device's partition id (selects ``client-<id>.npz``).
        run_id: Flower's run id (scopes the checkpoint to the run).
    """

    def __init__(self, settings: RunSettings, client_id: int, run_id: int = 0) -> None:
        self.settings = settings
        self.client_id = int(client_id)
        self.checkpoint = settings.state_path() / f"run-{run_id}" / f"client-{self.client_id}.npz"
        x, y = load_dataset(client_file(settings.data_dir, self.client_id))
        self.x, self.y = x, y
        self.session = self._restore()

    def _new_session(self) -> TrainingSession:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.settings.threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        return TrainingSession(_model_bytes(self.settings.train_model), sess_options=opts)

    def _restore(self) -> TrainingSession:
        sess = self._new_session()
        if self.checkpoint.exists():
            sess.load_checkpoint(self.checkpoint)
        return sess

    def load_global(self, arrays: ArrayRecord) -> None:
        """Set the session's parameters to the received global ones (state untouched)."""
        # Checked against the specs the session's own set_parameters checks (no host copy of
        # the parameters just to read their shapes); float64 from the server is cast.
        expected = self.session.parameter_specs
        values = check_parameters(from_record(arrays), expected, "global parameters", cast=True)
        self.session.set_parameters(values)

    def train(self, arrays: ArrayRecord, server_round: int) -> tuple[dict[str, np.ndarray], dict]:
        """Steps 1-4 of the module docstring; returns (parameters, metrics)."""
        if self.checkpoint.exists():
            # The checkpoint, not the live session, is the device's state: a round that failed
            # half-way must not leak its partial steps into the next one.
            self.session.load_checkpoint(self.checkpoint)
        else:
            self.session = self._new_session()
        self.load_global(arrays)
        data, label = self.session.contract.data_inputs[:2]
        losses: list[float] = []
        start = time.perf_counter()
        for epoch in range(self.settings.local_epochs):
            rng = np.random.default_rng([self.settings.seed, self.client_id, server_round, epoch])
            losses = [
                self.session.step({data: self.x[idx], label: self.y[idx]})
                for idx in batches(len(self.x), self.settings.batch_size, rng)
            ]
        self.session.save_checkpoint(self.checkpoint)
        metrics = {
            "num-examples": int(len(self.x)),
            "train-loss": float(np.mean(losses)) if losses else float("nan"),
            "train-seconds": time.perf_counter() - start,
        }
        return self.session.parameters(), metrics

    def evaluate(self, arrays: ArrayRecord) -> dict:
        self.load_global(arrays)
        result = evaluate(self.session, self.x, self.y)
        return {"num-examples": int(len(self.x)), **result}


_clients: dict[tuple[str, int, int], LocalClient] = {}


def _client(context: Context) -> LocalClient:
    settings = read_config(context.run_config)
    if "partition-id" not in context.node_config:
        raise FederatedError(
            "node config has no 'partition-id': start the SuperNode with "
            "--node-config \"partition-id=<n>\""
        )
    cid = int(context.node_config["partition-id"])
    key = (settings.train_model, cid, int(context.run_id))
    with _lock:
        if key not in _clients:
            _clients[key] = LocalClient(settings, cid, int(context.run_id))
        return _clients[key]


def _inject(
    client: LocalClient, server_round: int, params: dict[str, np.ndarray] | None = None
) -> None:
    """Faults from run-config 'fault-injection' (tests and demos of the failure handling).

    Called before training (``params`` None: crash, exit, sleep) and after it (nan, inf).
    """
    for kind, rnd in client.settings.faults.get(client.client_id, []):
        if rnd is not None and rnd != server_round:
            continue
        if params is None and kind == "crash":
            raise RuntimeError(f"client {client.client_id}: injected crash in round {server_round}")
        if params is None and kind == "exit":
            os._exit(3)
        if params is None and kind == "sleep":
            time.sleep(client.settings.round_timeout + 5.0)
        if params is not None and kind in ("nan", "inf"):
            first = next(iter(params))
            params[first] = params[first].copy()
            params[first].flat[0] = np.nan if kind == "nan" else np.inf


app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train locally from the global parameters; reply with parameters and example count."""
    client = _client(context)
    server_round = int(msg.content["config"].get("server-round", 0))
    _inject(client, server_round)
    params, metrics = client.train(msg.content["arrays"], server_round)
    _inject(client, server_round, params)
    content = RecordDict({"arrays": to_record(params), "metrics": MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate_global(msg: Message, context: Context) -> Message:
    """Loss and accuracy of the global parameters on this client's data."""
    metrics = _client(context).evaluate(msg.content["arrays"])
    return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)
