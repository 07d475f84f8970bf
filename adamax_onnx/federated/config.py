"""Run configuration of the federated apps: keys, defaults and checks (no Flower import).

Flower passes a flat ``run_config`` (``flwr run --run-config "key=value ..."`` or the app's
``[tool.flwr.app.config]``) to both apps; :func:`read_config` turns it into a
:class:`RunSettings`, naming the key at fault when a value is unusable.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ..errors import FederatedError

__all__ = ["RunSettings", "read_config", "parse_faults", "DEFAULTS"]


@dataclass(frozen=True)
class RunSettings:
    """Settings of one federated run (the ``run_config`` keys, with ``-`` for ``_``)."""

    train_model: str = ""  # the built training model (.onnx), on every device and the server
    data_dir: str = ""  # client-<partition-id>.npz per device; test.npz for the server
    state_dir: str = ""  # per-client optimizer checkpoints (default: <data-dir>/state)
    results: str = ""  # JSON with the per-round history, written by the server (optional)
    num_server_rounds: int = 10
    local_epochs: int = 5
    batch_size: int = 16
    strategy: str = "fedavg"
    server_lr: float = 0.05  # eta of FedAdam/FedYogi/FedAdagrad (ignored by FedAvg)
    server_tau: float = 1e-3  # tau of FedAdam/FedYogi/FedAdagrad
    fraction_train: float = 1.0
    fraction_evaluate: float = 1.0
    min_nodes: int = 2  # nodes sampled at least / required online
    min_valid_replies: int = 1
    round_timeout: float = 300.0  # seconds the server waits for replies in a round
    threads: int = 1  # onnxruntime intra-op threads per client session
    seed: int = 0
    fault_injection: str = ""  # testing only, see parse_faults
    faults: dict[int, list[tuple[str, int | None]]] = field(default_factory=dict)

    def state_path(self) -> Path:
        return Path(self.state_dir) if self.state_dir else Path(self.data_dir) / "state"


DEFAULTS = {f.name.replace("_", "-"): f.default for f in fields(RunSettings) if f.name != "faults"}


def parse_faults(spec: str) -> dict[int, list[tuple[str, int | None]]]:
    """Parse ``fault-injection`` (for tests and demos of the failure handling).

    ``"crash:2,nan:5@3,sleep:7@2"``: client 2 raises in its train handler every round, client
    5 replies with NaN parameters in round 3, client 7 sleeps ``round-timeout`` + 5 s in round 2
    (a node that drops out mid-round), ``exit:4`` ends client 4's process abruptly.
    """
    kinds = ("crash", "nan", "inf", "sleep", "exit")
    out: dict[int, list[tuple[str, int | None]]] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        try:
            kind, rest = item.split(":", 1)
            who, _, rnd = rest.partition("@")
            entry = (kind.strip(), int(rnd) if rnd else None)
            client = int(who)
        except ValueError:
            raise FederatedError(
                f"fault-injection item {item!r} is not KIND:CLIENT[@ROUND], e.g. 'nan:3@2'"
            ) from None
        if entry[0] not in kinds:
            raise FederatedError(f"fault-injection kind {entry[0]!r} is not one of {kinds}")
        out.setdefault(client, []).append(entry)
    return out


def read_config(run_config: Mapping[str, Any]) -> RunSettings:
    """Settings from a Flower ``run_config`` (unknown keys are an error, to catch typos)."""
    known = {f.name.replace("_", "-"): f for f in fields(RunSettings) if f.name != "faults"}
    unknown = sorted(k for k in run_config if k not in known)
    if unknown:
        raise FederatedError(f"unknown run-config key(s) {unknown}; known keys: {sorted(known)}")
    values: dict[str, Any] = {}
    for key, value in run_config.items():
        f = known[key]
        want = type(f.default)
        try:
            if want is bool:
                values[f.name] = bool(value)
            elif want is int:
                if isinstance(value, float) and not value.is_integer():
                    raise ValueError
                values[f.name] = int(value)
            else:
                values[f.name] = want(value)
        except (TypeError, ValueError):
            raise FederatedError(
                f"run-config {key!r} must be a {want.__name__}, got {value!r}"
            ) from None
    s = RunSettings(**values)
    for key in ("num_server_rounds", "local_epochs", "batch_size", "min_nodes", "threads"):
        if getattr(s, key) < 1:
            raise FederatedError(f"run-config {key.replace('_', '-')!r} must be >= 1")
    for key in ("fraction_train", "fraction_evaluate"):
        if not 0.0 <= getattr(s, key) <= 1.0:
            raise FederatedError(f"run-config {key.replace('_', '-')!r} must be in [0, 1]")
    if s.round_timeout <= 0:
        raise FederatedError("run-config 'round-timeout' must be > 0")
    if not s.train_model:
        raise FederatedError("run-config 'train-model' (the built training model file) is required")
    if not s.data_dir:
        raise FederatedError("run-config 'data-dir' (folder of client-<id>.npz files) is required")
    return replace(s, faults=parse_faults(s.fault_injection))
