"""Execution providers for a :class:`TrainingSession`, and starting its onnxruntime session.

Which providers a session may use (onnxruntime itself only warns about an unknown one and
falls back to the CPU), the device they put the state on, the chunk size that suits them, and
the session start that falls back to the model as built should onnxruntime refuse the chunked
update. Nothing here reads or edits a graph.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import onnx
import onnxruntime as ort

from .errors import ModelError
from .passes.names import DEFAULT_CHUNK_SIZE

__all__ = ["checked_providers", "default_chunk_size", "device_of", "start_session"]


def _provider_names(providers: Sequence[Any]) -> list[str]:
    """Provider names of an onnxruntime ``providers`` list (names or (name, options) pairs)."""
    return [p[0] if isinstance(p, tuple) else p for p in providers]


def checked_providers(providers: Sequence[Any] | None) -> list[Any]:
    """``providers`` as a list (None or empty: the CPU provider).

    Raises:
        ModelError: a provider this onnxruntime build does not have.
    """
    checked = list(providers) if providers else ["CPUExecutionProvider"]
    available = ort.get_available_providers()
    unknown = [name for name in _provider_names(checked) if name not in available]
    if unknown:
        raise ModelError(
            f"execution provider(s) {unknown} are not available in this onnxruntime "
            f"build; available: {available}"
        )
    return checked


def device_of(providers: Sequence[Any]) -> tuple[str, int]:
    """The device (``"cpu"`` or ``"cuda"``) and device id the first provider runs on."""
    first = providers[0] if providers else "CPUExecutionProvider"
    name, opts = first if isinstance(first, tuple) else (first, {})
    if name == "CUDAExecutionProvider":
        return "cuda", int(opts.get("device_id", 0))
    return "cpu", 0


def default_chunk_size(providers: Sequence[Any]) -> int:
    """``DEFAULT_CHUNK_SIZE`` when every provider is onnxruntime's CPU provider, else 0.

    On the CPU a chunk stays in cache between the update's ten elementwise ops; on a GPU the
    whole-tensor kernels are already bandwidth-bound and a Scan would add per-chunk launches.
    """
    cpu_only = all(n == "CPUExecutionProvider" for n in _provider_names(providers))
    return DEFAULT_CHUNK_SIZE if cpu_only else 0


def start_session(
    plain: onnx.ModelProto,
    chunked: onnx.ModelProto | None,
    options: ort.SessionOptions,
    providers: list[Any],
) -> tuple[ort.InferenceSession, onnx.ModelProto]:
    """A session of ``chunked`` or, should onnxruntime refuse it (with a ``RuntimeWarning``),
    of ``plain``; returns the session and the model it runs. Call it from the constructor the
    user called: the warning points at the caller's caller."""
    try:
        model = chunked or plain
        return ort.InferenceSession(model.SerializeToString(), options, providers), model
    except Exception as exc:  # noqa: BLE001 - onnxruntime's errors derive from Exception
        if chunked is None:
            raise
        # A speed rewrite must never cost a user the session: run the model as built.
        warnings.warn(
            f"onnxruntime refused the chunked update ({exc}); running whole-tensor "
            "updates instead (TrainingSession(..., chunk_size=0) skips the attempt)",
            RuntimeWarning,
            stacklevel=3,
        )
        return ort.InferenceSession(plain.SerializeToString(), options, providers), plain
