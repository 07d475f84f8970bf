"""Parameters by name between a TrainingSession and Flower ``ArrayRecord``\\s, and checks.

An ``ArrayRecord`` keeps each array's name, shape and dtype, so the global model travels as
``{parameter name: array}`` exactly as :meth:`TrainingSession.parameters` returns it.
Flower is imported lazily: :func:`check_parameters` and :func:`nonfinite_reason` work on plain
dicts of numpy arrays.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import FederatedError

if TYPE_CHECKING:
    from flwr.app import ArrayRecord

__all__ = ["to_record", "from_record", "check_parameters", "nonfinite_reason"]


def to_record(values: Mapping[str, np.ndarray]) -> ArrayRecord:
    """An ``ArrayRecord`` holding ``values`` under their names (order kept)."""
    from flwr.app import Array, ArrayRecord

    return ArrayRecord({name: Array(np.ascontiguousarray(arr)) for name, arr in values.items()})


def from_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    """``{name: numpy array}`` of an ``ArrayRecord``."""
    return {name: array.numpy() for name, array in record.items()}


def check_parameters(
    values: Mapping[str, np.ndarray],
    expected: Mapping[str, np.ndarray],
    source: str = "received parameters",
    cast: bool = False,
) -> dict[str, np.ndarray]:
    """Check ``values`` against ``expected`` (names, shapes, dtypes); returns them in order.

    With ``cast=True`` a floating array of another float dtype (e.g. float64 from a server-side
    optimizer) is converted to the expected dtype; anything else that differs is an error.

    Raises:
        FederatedError: missing or unknown names, a shape or a dtype mismatch (names each).
    """
    missing = [n for n in expected if n not in values]
    unknown = [n for n in values if n not in expected]
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"missing {missing}")
        if unknown:
            parts.append(f"unknown {unknown}")
        raise FederatedError(
            f"{source} do not match the model: {'; '.join(parts)}; the model's parameters "
            f"are {list(expected)}"
        )
    out: dict[str, np.ndarray] = {}
    for name, ref in expected.items():
        arr = np.asarray(values[name])
        if arr.shape != ref.shape:
            raise FederatedError(
                f"{source}: parameter {name!r} has shape {list(arr.shape)}, the model needs "
                f"{list(ref.shape)}"
            )
        if arr.dtype != ref.dtype:
            floats = np.issubdtype(arr.dtype, np.floating) and np.issubdtype(ref.dtype, np.floating)
            if not (cast and floats):
                raise FederatedError(
                    f"{source}: parameter {name!r} is {arr.dtype}, the model needs {ref.dtype}"
                )
            arr = arr.astype(ref.dtype)
        out[name] = arr
    return out


def nonfinite_reason(values: Mapping[str, Any], metrics: Mapping[str, Any] | None = None) -> str | None:
    """Why an update cannot be aggregated (NaN/Inf in an array or metric), or None if finite."""
    bad = []
    for name, arr in values.items():
        a = np.asarray(arr)
        if not np.issubdtype(a.dtype, np.inexact):
            continue
        n_nan = int(np.isnan(a).sum())
        n_inf = int(np.isinf(a).sum())
        if n_nan or n_inf:
            bad.append(f"{name!r} has {n_nan} NaN and {n_inf} Inf of {a.size} values")
    for key, value in (metrics or {}).items():
        vals = value if isinstance(value, list) else [value]
        if any(isinstance(v, float) and not np.isfinite(v) for v in vals):
            bad.append(f"metric {key!r} is {value}")
    return "; ".join(bad) if bad else None
