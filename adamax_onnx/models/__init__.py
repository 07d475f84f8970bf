"""Example ONNX inference models (built with onnx.helper + numpy, no torch) and data helpers.

The builders are exported lazily, so ``python -m adamax_onnx.models.mlp`` (etc.) does not import its own
module twice.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "build_cnn",
    "build_mlp",
    "build_transformer",
    "load_digits_split",
    "make_token_task",
    "save_npz",
]

_HOMES = {
    "build_cnn": "adamax_onnx.models.cnn",
    "build_mlp": "adamax_onnx.models.mlp",
    "build_transformer": "adamax_onnx.models.transformer",
    "load_digits_split": "adamax_onnx.models.data",
    "make_token_task": "adamax_onnx.models.data",
    "save_npz": "adamax_onnx.models.data",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
