"""Flower strategies for adamax-onnx models: Flower's own, wrapped to drop non-finite updates.

:class:`FiniteUpdates` wraps any message-based Flower strategy (``flwr.serverapp.strategy``).
Before the wrapped strategy aggregates a round, it removes every reply whose arrays or metrics
hold NaN/Inf and logs a WARNING naming the node, the round and the offending tensors. Replies
that carry an error (a ``ClientApp`` that raised, crashed or timed out) are already left out
and logged by Flower's strategies; a round with no usable reply keeps the previous global
model. Aggregated arrays are cast back to the dtypes the server sent (FedAdam/FedYogi compute
in float64), so the global model keeps the training model's parameter dtypes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from logging import WARNING
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp import strategy as flwr_strategy
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log

from ..errors import FederatedError
from .params import nonfinite_reason

__all__ = ["FiniteUpdates", "make_strategy", "STRATEGIES"]

#: Names accepted by :func:`make_strategy` and the Flower class each one builds.
STRATEGIES = {
    "fedavg": flwr_strategy.FedAvg,
    "fedadam": flwr_strategy.FedAdam,
    "fedyogi": flwr_strategy.FedYogi,
    "fedadagrad": flwr_strategy.FedAdagrad,
    "fedavgm": flwr_strategy.FedAvgM,
    "fedmedian": flwr_strategy.FedMedian,
}


class FiniteUpdates(Strategy):
    """Delegate to ``inner``, excluding replies with NaN/Inf before it aggregates.

    Args:
        inner: a message-based Flower strategy (FedAvg, FedAdam, FedYogi, ...).
        min_valid_replies: a training round with fewer usable replies than this keeps the
            previous global model (logged); default 1.

    Attributes:
        excluded: ``(round, node id, reason)`` of every update left out for NaN/Inf.
        replies: per round and phase (``"train"``/``"evaluate"``): messages ``sent``, replies
            ``ok`` (aggregated), ``error`` (the ClientApp raised or its process died),
            ``missing`` (no reply within the round timeout) and ``nonfinite`` (excluded here).
    """

    def __init__(self, inner: Strategy, min_valid_replies: int = 1) -> None:
        if not isinstance(inner, Strategy):
            raise FederatedError(
                f"inner must be a flwr.serverapp.strategy.Strategy, got {type(inner).__name__}"
            )
        if min_valid_replies < 1:
            raise FederatedError(f"min_valid_replies must be >= 1, got {min_valid_replies}")
        self.inner = inner
        self.min_valid_replies = int(min_valid_replies)
        self.excluded: list[tuple[int, int, str]] = []
        self.replies: dict[int, dict[str, dict[str, int]]] = {}
        self._dtypes: dict[str, np.dtype] = {}

    # -- the wrapped strategy's configuration, unchanged except for the dtypes it sent ----------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._dtypes = {name: np.dtype(a.numpy().dtype) for name, a in arrays.items()}
        sent = list(self.inner.configure_train(server_round, arrays, config, grid))
        self._count(server_round, "train")["sent"] = len(sent)
        return sent

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        sent = list(self.inner.configure_evaluate(server_round, arrays, config, grid))
        self._count(server_round, "evaluate")["sent"] = len(sent)
        return sent

    def _count(self, server_round: int, phase: str) -> dict[str, int]:
        per_round = self.replies.setdefault(server_round, {})
        return per_round.setdefault(
            phase, {"sent": 0, "ok": 0, "error": 0, "missing": 0, "nonfinite": 0}
        )

    def summary(self) -> None:
        log(20, "\t├──> FiniteUpdates: NaN/Inf updates excluded; min valid replies %d", self.min_valid_replies)
        self.inner.summary()

    # -- filtering ----------------------------------------------------------------------------
    def _finite(self, server_round: int, replies: Iterable[Message], phase: str) -> list[Message]:
        kept: list[Message] = []
        counts = self._count(server_round, phase)
        replies = list(replies)
        counts["missing"] = max(counts["sent"] - len(replies), 0)
        for msg in replies:
            if msg.has_error():  # the wrapped strategy logs and drops these itself
                counts["error"] += 1
                kept.append(msg)
                continue
            content = msg.content
            arrays: dict[str, Any] = {}
            for rec_name, record in content.array_records.items():
                arrays.update({f"{rec_name}/{k}": v.numpy() for k, v in record.items()})
            metrics: dict[str, Any] = {}
            for rec_name, record in content.metric_records.items():
                metrics.update({f"{rec_name}/{k}": v for k, v in record.items()})
            reason = nonfinite_reason(arrays, metrics)
            if reason is None:
                counts["ok"] += 1
                kept.append(msg)
                continue
            counts["nonfinite"] += 1
            node = int(msg.metadata.src_node_id)
            self.excluded.append((server_round, node, reason))
            log(
                WARNING,
                "round %d: excluding the %s reply of node %d from aggregation: %s",
                server_round,
                phase,
                node,
                reason,
            )
        if counts["missing"]:
            log(
                WARNING,
                "round %d: %d of %d %s messages got no reply within the round timeout",
                server_round,
                counts["missing"],
                counts["sent"],
                phase,
            )
        return kept

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        kept = self._finite(server_round, list(replies), "train")
        valid = sum(1 for m in kept if not m.has_error())
        if valid < self.min_valid_replies:
            log(
                WARNING,
                "round %d: %d usable train replies (< %d); the global model is left unchanged",
                server_round,
                valid,
                self.min_valid_replies,
            )
            # Error replies are still handed over so the wrapped strategy logs them.
            self.inner.aggregate_train(server_round, [m for m in kept if m.has_error()])
            return None, None
        arrays, metrics = self.inner.aggregate_train(server_round, kept)
        if arrays is not None and self._dtypes:
            arrays = ArrayRecord(
                {
                    name: Array(np.asarray(a.numpy(), dtype=self._dtypes.get(name, a.numpy().dtype)))
                    for name, a in arrays.items()
                }
            )
        return arrays, metrics

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return self.inner.aggregate_evaluate(
            server_round, self._finite(server_round, list(replies), "evaluate")
        )


def make_strategy(
    name: str = "fedavg",
    min_valid_replies: int = 1,
    **kwargs: Any,
) -> FiniteUpdates:
    """Flower strategy ``name`` (see :data:`STRATEGIES`) built with ``kwargs``, wrapped in
    :class:`FiniteUpdates`.

    Raises:
        FederatedError: an unknown strategy name.
    """
    key = name.lower()
    if key not in STRATEGIES:
        raise FederatedError(f"unknown strategy {name!r}; choose one of {sorted(STRATEGIES)}")
    cls: Callable[..., Strategy] = STRATEGIES[key]
    return FiniteUpdates(cls(**kwargs), min_valid_replies=min_valid_replies)
