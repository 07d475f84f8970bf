"""Every exception class adamax-onnx raises on purpose.

Each derives from a built-in type that matches MindSpore's choice where MindSpore defines one
(``TypeError``/``ValueError``/``RuntimeError``/``KeyError``), so code written for MindSpore's
argument errors keeps working, and from :class:`AdamaxOnnxError` so callers can catch ours alone.
Messages name the argument, parameter, op, input or file at fault.
"""

from __future__ import annotations


class AdamaxOnnxError(Exception):
    """Base class of all adamax-onnx errors."""


class ModelError(AdamaxOnnxError, ValueError):
    """The ONNX model cannot be used as given (missing parameter, wrong loss output, ...)."""


class GradientError(AdamaxOnnxError, RuntimeError):
    """The gradient builder could not differentiate the model (names the op when it can)."""


class LoweringError(AdamaxOnnxError, RuntimeError):
    """A non-standard op in the training graph has no standard-ONNX lowering."""


class FeedError(AdamaxOnnxError, ValueError):
    """A training-step input is missing, unexpected, or has the wrong shape or type."""


class DatasetError(FeedError):
    """A dataset file is missing, of the wrong format, or holds arrays that cannot be used."""


class LearningRateTableExhausted(AdamaxOnnxError, RuntimeError):
    """global_step has reached the end of a learning-rate (or weight-decay) table.

    MindSpore raises a RuntimeError from its Gather index check in this case; we raise before
    the step runs, so parameters and optimizer state are untouched.
    """


class CheckpointError(AdamaxOnnxError, ValueError):
    """A checkpoint is missing, truncated, corrupted, or belongs to another model."""


class UnsafePathError(AdamaxOnnxError, ValueError):
    """A file refers to a location outside the folder it may read from."""


class FederatedError(AdamaxOnnxError, ValueError):
    """A federated update or configuration cannot be used (wrong parameters, bad run config)."""
