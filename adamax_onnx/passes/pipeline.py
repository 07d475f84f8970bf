"""The two declared build pipelines: the training model and the standalone optimizer model.

:func:`training_pipeline` is what :func:`adamax_onnx.build_training_model` runs::

    untie -> check parameters -> record the inference model -> attach the loss
    -> split sequences -> decompose BatchNorm -> seeded Dropout -> gradients
    -> AdaMax update -> non-finite guard -> lowering -> chunking -> contract

one :class:`passes.infra.Pipeline` over one copy of the model. Each step declares the errors
that are the user's to fix (a ``ModelError``, ``GradientError`` or ``LoweringError``, message
unchanged); any other failure names the step.

Every step but :class:`Finish` is an in-place ``onnx_ir`` pass on one ``onnx_ir.Model``, read
from the input without copying its tensors; the trained parameters' values leave the graph at
the gradients and are written once, by :class:`Finish`, into the one ``ModelProto`` the graph
is serialized to. A gradient builder on ``ModelProto`` (onnxruntime-training's) runs as a proto
step (:class:`passes.infra.ProtoStep`: the graph is serialized before it and read back after
it), and the lowering of its ops after it; after the default builder, which emits standard ONNX
only, lowering just looks at the op types (:class:`LowerNonStandard`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence

import onnx
import onnx_ir as ir
from onnx_ir.passes import PassResult

from ..errors import GradientError, LoweringError, ModelError
from .adamax import AdaMaxPass
from .batchnorm import BatchNormError, DecomposeBatchNorm, to_eval_mode
from .builder import IR_VERSION
from .chunking import ChunkUpdates
from .contract import Contract, detach_initial_values, write_contract
from .dropout import DropoutError, SeededDropout
from .gradients import (
    BuildGradients,
    GradientBuilder,
    GradientBuildError,
    InPlaceGradientBuilder,
)
from .inference import embed_inference_graph
from .infra import BuildPass, Pipeline, ProtoStep, Step, Translate, to_ir, to_proto
from .irbuild import default_opset, without_values
from .loss import AttachLoss
from .lowering import LowerToStandard, UnloweredOpsError
from .lowering.context import is_standard
from .nonfinite import GuardNonFinite
from .sequences import SplitSequencesToSlices
from .ties import RetieFoldedCopies, UntieTensors

__all__ = ["training_pipeline", "optimizer_pipeline", "Untie", "RecordInference", "Finish"]


class Untie(BuildPass):
    """Re-tie folded copies, then untie what training would corrupt (:mod:`passes.ties`).

    With ``warn``, one ``UserWarning`` names every tensor re-tied, and one every tensor
    untied. After the step, :attr:`untied` and :attr:`retied` list them.
    """

    def __init__(self, keep: Iterable[str] = (), warn: bool = True) -> None:
        self.keep, self.warn = set(keep), warn

    def call(self, model: ir.Model) -> PassResult:
        retier, untier = RetieFoldedCopies(), UntieTensors(self.keep)
        modified = retier.call(model).modified
        modified = untier.call(model).modified or modified
        self.retied, self.untied = retier.retied, untier.untied
        if self.warn:
            _warn_ties(self.retied, self.untied)
        return PassResult(model, modified)


def _warn_ties(retied: list, untied: list) -> None:
    if retied:
        warnings.warn(
            f"re-tied {len(retied)} weight(s) the exporter had folded into a copy "
            "while the original is also used (trained as exported, the copies would drift "
            "apart): " + "; ".join(t.describe() for t in retied),
            UserWarning,
            stacklevel=2,
        )
    if untied:
        warnings.warn(
            f"untied {len(untied)} tensor(s) that share an initializer with another "
            "(exporters merge equal-valued tensors and fold them into one; trained as exported, "
            "one update would move all of them together): "
            + "; ".join(t.describe() for t in untied)
            + ". Each is now its own copy, trained or frozen on its own; pass keep_ties=[...] "
            "with a tensor's name to keep a tie you mean",
            UserWarning,
            stacklevel=2,
        )


class RecordInference(BuildPass):
    """Check the parameters and record the inference model the training model is built from.

    ``check`` raises a ``ModelError`` for parameters that cannot be trained. Afterwards
    :attr:`inputs` / :attr:`outputs` are the model's own inputs (parameters excluded) and
    outputs, :meth:`values` gives the parameters' initial values (:class:`BuildGradients`
    takes them out of the graph, :class:`Finish` puts them back) and :attr:`eval_model` is the
    model as torch's ``eval()`` runs it, without tensor values (all the export needs).
    """

    def __init__(self, params: Sequence[str], check: Callable[[ir.Model], object]) -> None:
        self.params, self.check = list(params), check

    def call(self, model: ir.Model) -> PassResult:
        self.check(model)
        graph = model.graph
        self.inputs = [v.name for v in graph.inputs if not v.is_initializer()]
        self.outputs = [v.name for v in graph.outputs]
        self._tensors = {p: graph.initializers[p].const_value for p in self.params}
        self.eval_model = to_eval_mode(without_values(model))
        return PassResult(model, False)

    def values(self) -> dict[str, ir.TensorProtocol]:
        """The parameters' initial values, by name."""
        return dict(self._tensors)


class Finish(Step):
    """The last step: the contract, the inference graph, initial values, a valid model.

    Writes ``contract()`` and the graph of ``inference()`` (if any) into the metadata, adds
    ``values()`` (initial values of inputs) as initializers, stores every state input's initial
    value as ``<input>.initial`` (state and learning-rate inputs stay required: a runtime that
    hides inputs with defaults cannot silently drop the fed state; :mod:`passes.contract`), and
    checks the result with ``onnx.checker`` (full check) when every op is a registered one.
    """

    form = "proto"
    in_place = True
    changes_input = True

    def __init__(
        self,
        contract: Callable[[], Contract],
        inference: Callable[[], onnx.ModelProto | None] = lambda: None,
        values: Callable[[], Mapping[str, ir.TensorProtocol]] = dict,
    ) -> None:
        self.contract, self.inference, self.values = contract, inference, values

    def call(self, model: onnx.ModelProto) -> PassResult:
        write_contract(model, self.contract())
        inference = self.inference()
        if inference is not None:
            embed_inference_graph(model, inference)
        present = {i.name for i in model.graph.initializer}
        for name, tensor in self.values().items():
            if name not in present:  # written once, straight into the model
                init = model.graph.initializer.add()
                ir.serde.serialize_tensor_into(init, tensor)
                init.name = name
        detach_initial_values(model)
        model.ir_version = min(model.ir_version or IR_VERSION, 10)
        if not model.producer_name:
            model.producer_name = "adamax-onnx"
        # Training-build ops (OrtGradientBuilder with portable=False) are not in the ONNX
        # registry, so the checker can only vouch for graphs made of standard ops.
        if all(onnx.defs.has(n.op_type, n.domain) for n in model.graph.node):
            try:
                onnx.checker.check_model(model, full_check=True)
            except onnx.checker.ValidationError as exc:  # pragma: no cover - a bug in a pass
                raise ModelError(f"the built model is not valid ONNX: {exc}") from exc
        return PassResult(model, True)


def _translated(step: Step, error: type[Exception], public: type[Exception]) -> Step:
    step.translations = [Translate(error, public)]
    return step


def _lowering_failed(exc: Exception) -> str:
    return (
        f"{exc}. Build with portable=False to keep the onnxruntime-training form "
        "(it runs only on onnxruntime-training)"
    )


class LowerNonStandard(BuildPass):
    """:class:`passes.lowering.LowerToStandard` after the default gradient builder, which emits
    standard ONNX only: a look at the op types, and a round trip through a ``ModelProto`` (a
    copy of the model) only where the model itself holds a non-standard op."""

    translations = (Translate(UnloweredOpsError, LoweringError, _lowering_failed),)

    def call(self, model: ir.Model) -> PassResult:
        opset = default_opset(model, missing=1)
        kinds = {(n.domain, n.op_type): n for n in model.graph}
        if all(is_standard(n, opset) for n in kinds.values()):
            return PassResult(model, False)
        lowered = to_ir(LowerToStandard().call(to_proto(model)).model)
        model.graph = lowered.graph
        return PassResult(model, True)


def lowering_step(builder: GradientBuilder | None) -> Step:
    """The lowering of ``portable=True``: a proto step after a builder on ``ModelProto``
    (onnxruntime-training's, whose ``com.microsoft`` ops it rewrites), else
    :class:`LowerNonStandard`."""
    if builder is None or isinstance(builder, InPlaceGradientBuilder):
        return LowerNonStandard()
    return ProtoStep(
        LowerToStandard().call,
        "LowerToStandard",
        translations=[Translate(UnloweredOpsError, LoweringError, _lowering_failed)],
    )


def update_steps(
    optimizer,
    bucket_size: int,
    guard: GuardNonFinite,
    lowering: Step | None,
    chunker: ChunkUpdates | None,
) -> list[Step]:
    """AdaMax update, non-finite guard (:func:`adamax_onnx.loss_scale.guard_for`), lowering
    (:func:`lowering_step`, or None), chunking (or None)."""
    steps = [AdaMaxPass(optimizer, bucket_size=bucket_size), guard]
    if lowering is not None:
        steps.append(lowering)
    if chunker is not None:  # last: the chunked regions include the guard's Where nodes
        steps.append(chunker)
    return steps


def training_pipeline(
    optimizer,
    *,
    untie: Untie,
    record: RecordInference,
    attach_loss: AttachLoss,
    batchnorm: DecomposeBatchNorm,
    dropout: SeededDropout,
    loss_name: str,
    gradient_builder: GradientBuilder | None,
    update: list[Step],
    finish: Finish,
) -> Pipeline:
    """The steps of :func:`adamax_onnx.build_training_model`, in order (see the module doc)."""
    gradients = BuildGradients(
        loss_name, optimizer.param_names, seed=optimizer.loss_scale, builder=gradient_builder
    )
    if gradients.form == "proto":  # a builder on ModelProto (onnxruntime-training's)
        gradients = ProtoStep(gradients.call, "BuildGradients", in_place=False)
    return Pipeline(
        untie,
        record,
        _translated(attach_loss, ValueError, ModelError),
        SplitSequencesToSlices(),
        _translated(batchnorm, BatchNormError, ModelError),
        _translated(dropout, DropoutError, ModelError),
        _translated(gradients, GradientBuildError, GradientError),
        *update,
        finish,
    )


def optimizer_pipeline(update: list[Step], finish: Finish) -> Pipeline:
    """The steps of :func:`adamax_onnx.build_optimizer_model`: the update, then the contract."""
    return Pipeline(*update, finish)
