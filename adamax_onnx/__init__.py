"""adamax-onnx: MindSpore-exact AdaMax training inside ONNX graphs, run by onnxruntime.

>>> import onnx, adamax_onnx as ax
>>> model = onnx.load("mlp.onnx")
>>> opt = ax.AdaMax(ax.trainable_params(model), learning_rate=1e-3)
>>> sess = ax.TrainingSession(ax.build_training_model(model, opt, loss="cross_entropy"))
>>> loss = sess.step({"input": x, "labels": y})

The submodules ``ax.schedules``, ``ax.dynamic_lr``, ``ax.loss_scale`` and ``ax.errors`` are
attributes of the package; ``ax.cli`` (the ``adamax-onnx`` command) is imported on first use.
``adamax_onnx.federated`` needs Flower and is imported explicitly.
"""

from typing import Any

from . import dynamic_lr, errors, loss_scale, schedules
from .api import build_optimizer_model, build_training_model, load_model, trainable_params
from .errors import (
    AdamaxOnnxError,
    CheckpointError,
    DatasetError,
    FeedError,
    GradientError,
    LearningRateTableExhausted,
    LoweringError,
    ModelError,
    UnsafePathError,
)
from .loss_scale import DynamicLossScaleManager, FixedLossScaleManager
from .optimizer import AdaMax, ParamConfig
from .runtime import TrainingSession
from .torch_export import from_torch
from .trainable import export_trainable_model

__version__ = "0.1.0"

__all__ = [
    "dynamic_lr",
    "errors",
    "loss_scale",
    "schedules",
    "AdaMax",
    "DynamicLossScaleManager",
    "FixedLossScaleManager",
    "ParamConfig",
    "TrainingSession",
    "build_optimizer_model",
    "build_training_model",
    "export_trainable_model",
    "from_torch",
    "load_model",
    "trainable_params",
    "AdamaxOnnxError",
    "CheckpointError",
    "DatasetError",
    "FeedError",
    "GradientError",
    "LearningRateTableExhausted",
    "LoweringError",
    "ModelError",
    "UnsafePathError",
]


def __getattr__(name: str) -> Any:
    # ``ax.cli`` on first use (PEP 562): the library does not need its command-line module.
    if name == "cli":
        import importlib

        return importlib.import_module(f"{__name__}.cli")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | {"cli"})
