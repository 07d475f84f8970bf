"""The Flower ``ServerApp``: Flower's strategy over the named parameters of a training model.

The server reads the training model only for its initial parameters and to evaluate the global
model centrally on the held-out ``<data-dir>/test.npz`` after every round. Aggregation is the
chosen Flower strategy (``strategy`` = fedavg, fedadam, fedyogi, ...) wrapped by
:class:`~.strategy.FiniteUpdates`. With ``results`` set, the per-round history is written as
JSON: held-out loss/accuracy, the clients' aggregated metrics, excluded updates, wall time.
"""

from __future__ import annotations

import json
import time
from logging import INFO
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.supercore import log

from ..atomic import write_atomically
from ..errors import FederatedError
from ..runtime import TrainingSession
from ..training import evaluate, load_dataset
from .config import RunSettings, read_config
from .data import TEST_FILE
from .params import check_parameters, from_record, to_record
from .strategy import FiniteUpdates, make_strategy

__all__ = ["app", "build_strategy", "run_server"]

_SERVER_OPT = ("fedadam", "fedyogi", "fedadagrad")


def build_strategy(s: RunSettings) -> FiniteUpdates:
    """The strategy the run settings ask for, wrapped to drop non-finite updates."""
    kwargs: dict[str, Any] = {
        "fraction_train": s.fraction_train,
        "fraction_evaluate": s.fraction_evaluate,
        "min_train_nodes": s.min_nodes,
        "min_evaluate_nodes": s.min_nodes if s.fraction_evaluate > 0 else 0,
        "min_available_nodes": s.min_nodes,
    }
    if s.strategy.lower() in _SERVER_OPT:
        kwargs.update(eta=s.server_lr, tau=s.server_tau)
        if s.strategy.lower() != "fedadagrad":
            kwargs.update(beta_1=0.9, beta_2=0.99)
    return make_strategy(s.strategy, min_valid_replies=s.min_valid_replies, **kwargs)


def _jsonable(record: MetricRecord | None) -> dict[str, Any]:
    return {k: (v if isinstance(v, list) else float(v)) for k, v in (record or {}).items()}


def run_server(grid: Grid, settings: RunSettings) -> dict[str, Any]:
    """Run the federation on ``grid``; returns (and writes to ``results``) the history."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    model = Path(settings.train_model)
    if not model.is_file():
        raise FederatedError(f"run-config 'train-model': file {str(model)!r} does not exist")
    sess = TrainingSession(model, sess_options=opts)
    initial = sess.parameters()
    x_test, y_test = load_dataset(Path(settings.data_dir) / TEST_FILE)
    history: dict[str, Any] = {"settings": {k: v for k, v in settings.__dict__.items() if k != "faults"}}
    rounds: list[dict[str, Any]] = []
    t0 = time.perf_counter()

    def central(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        values = check_parameters(from_record(arrays), initial, "global parameters", cast=True)
        sess.set_parameters(values)
        metrics = evaluate(sess, x_test, y_test)
        rounds.append({"round": server_round, "seconds": time.perf_counter() - t0, **metrics})
        log(INFO, "round %d: held-out %s", server_round, {k: round(v, 4) for k, v in metrics.items()})
        return MetricRecord(metrics)

    strategy = build_strategy(settings)
    result = strategy.start(
        grid=grid,
        initial_arrays=to_record(initial),
        num_rounds=settings.num_server_rounds,
        timeout=settings.round_timeout,
        train_config=ConfigRecord({"local-epochs": settings.local_epochs}),
        evaluate_fn=central,
    )
    for entry in rounds:
        r = entry["round"]
        entry["clients_train"] = _jsonable(result.train_metrics_clientapp.get(r))
        entry["clients_evaluate"] = _jsonable(result.evaluate_metrics_clientapp.get(r))
        entry["replies"] = strategy.replies.get(r, {})
        entry["train_replies"] = entry["replies"].get("train", {}).get("ok", 0)
    history["rounds"] = rounds
    history["failed"] = [
        {"round": r, "phase": phase, "count": c["error"] + c["missing"], **c}
        for r, phases in sorted(strategy.replies.items())
        for phase, c in phases.items()
        if c["error"] or c["missing"]
    ]
    history["excluded"] = [
        {"round": r, "node": n, "reason": why} for r, n, why in strategy.excluded
    ]
    history["wall_seconds"] = time.perf_counter() - t0
    final = from_record(result.arrays) if result.arrays is not None else initial
    history["final_parameters"] = {
        k: {"shape": list(v.shape), "dtype": str(v.dtype), "finite": bool(np.isfinite(v).all())}
        for k, v in final.items()
    }
    if settings.results:
        text = json.dumps(history, indent=1).encode()
        write_atomically(Path(settings.results), lambda fh: fh.write(text))
    return history


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Flower entry point: settings from the run config, then :func:`run_server`."""
    run_server(grid, read_config(context.run_config))
