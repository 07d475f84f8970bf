"""Names, defaults and small specs the build and the runtime share, apart from the passes.

Kept in a module of their own, with no import of ``onnx_ir``: the public API and the runtime
read them without loading the passes (``import adamax_onnx`` stays fast).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "LOSS_NAME",
    "LOG_PROB_NAME",
    "SCORES_NAME",
    "DEFAULT_IGNORE_INDEX",
    "KEEP_TIES_KEY",
    "is_generated_name",
    "UniqueNames",
    "DEFAULT_BUCKET_SIZE",
    "DEFAULT_CHUNK_SIZE",
    "OVERFLOW",
    "LOSS_SCALE",
    "LOSS_SCALE_CUR_ITER",
    "LOSS_SCALE_LAST_OVERFLOW_ITER",
    "LossScaleSpec",
]

#: Float32 parameters with fewer elements are updated together in flat buckets
#: (:class:`passes.adamax.AdaMaxPass`).
DEFAULT_BUCKET_SIZE = 65536
#: Elements per chunk of the chunked update on the CPU (:class:`passes.chunking.ChunkUpdates`):
#: 512 KiB of float32 per tensor (measured best of 32K-256K, 1 x 16M).
DEFAULT_CHUNK_SIZE = 131072

#: bool scalar output: True when some gradient held NaN/Inf and the update was skipped.
OVERFLOW = "adamax.overflow"
#: float32 scalar state of a dynamic loss scale (MindSpore's ``scale_sense``).
LOSS_SCALE = "adamax.loss_scale"
#: int32 scalar state: ``DynamicLossScaleUpdateCell.cur_iter`` (starts at 1).
LOSS_SCALE_CUR_ITER = "adamax.loss_scale.cur_iter"
#: int32 scalar state: ``DynamicLossScaleUpdateCell.last_overflow_iter`` (starts at 0).
LOSS_SCALE_LAST_OVERFLOW_ITER = "adamax.loss_scale.last_overflow_iter"

LOSS_NAME = "loss"
LOG_PROB_NAME = "loss.log_prob"
SCORES_NAME = "loss.scores"
#: torch's and Hugging Face's ignore_index, the default of token-level cross entropy.
DEFAULT_IGNORE_INDEX = -100

#: ``metadata_props`` key of a JSON list of tensors whose ties are meant (written by
#: ``adamax_onnx.from_torch`` for a layer the module applies twice; the build keeps them).
KEEP_TIES_KEY = "adamax_onnx.keep_ties"

# Names exporters give to tensors they made themselves (folded constants, transposed weights):
# torch.onnx's TorchScript exporter ("onnx::MatMul_595", "/layer/Constant_output_0") and its
# dynamo exporter ("val_68", "_val_3").
_GENERATED_NAME = re.compile(r"^(onnx::|/)|^_?val_\d+$|::")


def is_generated_name(name: str) -> bool:
    """True for a tensor name an exporter generated (``val_68``, ``onnx::MatMul_595``)."""
    return bool(_GENERATED_NAME.search(name))


class UniqueNames:
    """The tensor names taken in a graph, and fresh readable ones derived from a wanted name.

    The base of every builder that adds nodes to a graph (:class:`passes.builder.GraphBuilder`
    on protobufs, :class:`passes.irbuild.IRBuilder` and the autodiff emitter on ``onnx_ir``).
    """

    def __init__(self, taken: Iterable[str] = ()) -> None:
        self._taken: set[str] = set(taken)

    def unique(self, name: str) -> str:
        """``name`` itself, or ``name_1``, ``name_2``... if it is already taken."""
        candidate, k = name, 0
        while candidate in self._taken:
            k += 1
            candidate = f"{name}_{k}"
        self._taken.add(candidate)
        return candidate

    def reserve(self, name: str) -> str:
        """Claim an exact name (a graph input/output); raises if it is already used."""
        if name in self._taken:
            raise ValueError(f"tensor name {name!r} is already used in the graph")
        self._taken.add(name)
        return name


@dataclass(frozen=True)
class LossScaleSpec:
    """How the loss gradient is scaled; MindSpore's loss-scale managers map onto this.

    Attributes:
        init: the (initial) loss scale, the seed of the loss gradient.
        dynamic: the scale is graph state updated each step (``DynamicLossScaleUpdateCell``).
        scale_factor: dynamic only: divide by it on overflow, multiply by it after
            ``scale_window`` clean steps.
        scale_window: dynamic only.
        unscale: multiply gradients by ``1/scale`` in the graph before the optimizer reads
            them (``TrainOneStepWithLossScaleCell``); False leaves it to the optimizer's own
            ``loss_scale`` (``TrainOneStepCell`` with ``sens``).
    """

    init: float
    dynamic: bool = False
    scale_factor: float = 2.0
    scale_window: int = 2000
    unscale: bool = True
