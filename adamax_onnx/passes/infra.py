"""Pass infrastructure of the build, on ``onnx_ir.passes``: steps, adapters, one pipeline runner.

A build is a :class:`Pipeline`: a declared list of steps, each an ``onnx_ir`` pass
(:class:`onnx_ir.passes.PassBase`: ``call`` returns a ``PassResult``, ``requires``/``ensures``
check pre- and post-conditions, in-place or functional). Two forms of model flow through it:

* ``"ir"`` steps (:class:`BuildPass`) edit an ``onnx_ir.Model`` in place: values own their
  names, shapes and types, and ``onnx_ir``'s common passes (``RemoveUnusedNodesPass``, ...)
  apply as they are;
* ``"proto"`` steps (:class:`ProtoStep`) adapt a pass written on ``onnx.ModelProto``
  (:class:`passes.base.GraphPass`, or a function of a proto) and run it on the pipeline's own
  copy, with no copy of their own.

The runner deserializes the input once (``onnx_ir`` wraps the input's tensors, nothing is
copied), converts only where the form of consecutive steps changes, runs each run of steps of
one form under ``onnx_ir.passes.Sequential``, and serializes once at the end: the input model
is never modified, and its weights are copied once, at the first ir-to-proto conversion.

Errors are translated in one place: a step declares (:class:`Translate`) which of its
exceptions are the user's to fix and which public error (:mod:`adamax_onnx.errors`) each
becomes, message unchanged; such an error reaches the caller as it is. Any other failure is
``onnx_ir``'s ``PassError``, which names the step that failed and the steps before it.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import onnx
import onnx_ir as ir
from onnx_ir.passes import PassBase, PassError, PassResult, Sequential

from ..errors import AdamaxOnnxError

__all__ = ["Step", "BuildPass", "Translate", "ProtoStep", "Pipeline", "Form", "to_ir", "to_proto"]

Form = Literal["ir", "proto"]


@dataclass(frozen=True)
class Translate:
    """``error`` raised by a step becomes ``public`` (message from ``message``, default kept).

    ``public`` is an error of :mod:`adamax_onnx.errors`, or ``TypeError`` for the caller's
    arguments a step checks (it reaches the caller like the others).
    """

    error: type[Exception] | tuple[type[Exception], ...]
    public: type[Exception]
    message: Callable[[Exception], str] = str


class Step(PassBase):
    """What every step of a pipeline has: a form, declared translations, a readable name."""

    form: Form = "ir"
    translations: Sequence[Translate] = ()

    def __call__(self, model, /) -> PassResult:
        try:
            return super().__call__(model)
        except Exception as exc:
            for t in self.translations:
                if isinstance(exc, t.error):
                    public = t.public(t.message(exc))
                    public.step = repr(self)  # marks it for the runner: re-raised as it is
                    raise public from exc
            raise

    def __repr__(self) -> str:
        return type(self).__name__


class BuildPass(Step, ir.passes.InPlacePass):
    """An in-place pass on an ``onnx_ir.Model``.

    Called on an ``onnx.ModelProto`` (the form callers outside a pipeline use), it works on a
    converted copy and returns a new ``ModelProto``; the input stays unchanged.
    """

    def __call__(self, model, /) -> PassResult:
        if isinstance(model, onnx.ModelProto):
            result = super().__call__(to_ir(model))
            return PassResult(to_proto(result.model), result.modified)
        return super().__call__(model)


class ProtoStep(Step):
    """Adapter: a pass written on ``onnx.ModelProto`` as a step of a pipeline.

    Args:
        run: ``GraphPass.call`` (edits the proto it is given and returns it, no copy) or any
            function ``ModelProto -> PassResult``.
        name: the step's name in failures.
        in_place: whether ``run`` returns the proto it was given (False: a new one).
        translations: as :attr:`BuildPass.translations`.
    """

    form: Form = "proto"

    def __init__(
        self,
        run: Callable[[onnx.ModelProto], PassResult],
        name: str,
        in_place: bool = True,
        translations: Sequence[Translate] = (),
    ) -> None:
        self._run, self._name, self._in_place = run, name, in_place
        self.translations = translations

    @property
    def in_place(self) -> bool:
        return self._in_place

    @property
    def changes_input(self) -> bool:
        return True

    def call(self, model: onnx.ModelProto) -> PassResult:
        result = self._run(model)
        return PassResult(result.model, result.modified)

    def __repr__(self) -> str:
        return self._name


def to_ir(model: onnx.ModelProto) -> ir.Model:
    """``model`` as an ``onnx_ir.Model`` that shares (never modifies) its tensors."""
    return ir.serde.deserialize_model(model)


def to_proto(model: ir.Model) -> onnx.ModelProto:
    """A new ``ModelProto`` of ``model`` (tensors copied).

    Initializers get no ``value_info`` (onnx_ir writes one for each): the tensor states its
    type and shape, and a pass-through build leaves the file as it was.
    """
    proto = ir.serde.serialize_model(model)
    inits = {i.name for i in proto.graph.initializer}
    if any(vi.name in inits for vi in proto.graph.value_info):
        kept = [vi for vi in proto.graph.value_info if vi.name not in inits]
        del proto.graph.value_info[:]
        proto.graph.value_info.extend(kept)
    return proto


def _convert(model: ir.Model | onnx.ModelProto, form: Form) -> ir.Model | onnx.ModelProto:
    if form == "ir":
        return model if isinstance(model, ir.Model) else to_ir(model)
    return model if isinstance(model, onnx.ModelProto) else to_proto(model)


def _public_cause(exc: BaseException) -> BaseException | None:
    """The public error a failed step raised, through onnx_ir's wrapping, if it was one."""
    while isinstance(exc, (PassError, ir.passes.InvariantError)) and exc.__cause__ is not None:
        exc = exc.__cause__
    public = isinstance(exc, AdamaxOnnxError) or hasattr(exc, "step")
    return exc if public else None


class Pipeline:
    """Run ``steps`` in order on one copy of a model (see the module doc).

    Args:
        steps: ir steps (``form == "ir"``, any in-place ``onnx_ir`` pass) and proto steps
            (:class:`ProtoStep`), in the order they run.
    """

    def __init__(self, *steps: PassBase) -> None:
        self.steps = steps

    def __call__(self, model: onnx.ModelProto) -> onnx.ModelProto:
        """The model after every step; ``model`` itself is left unchanged."""
        # The steps create many small objects that die with the build (nodes, values, their
        # uses): Python's cyclic collector would rescan them hundreds of times, about half of
        # a 2,000-parameter build (2.1 -> 1.2 s). Paused for the build, as usual after it.
        enabled = gc.isenabled()
        gc.disable()
        try:
            return self._run(model)
        finally:
            if enabled:
                gc.enable()

    def _run(self, model: onnx.ModelProto) -> onnx.ModelProto:
        current: ir.Model | onnx.ModelProto = model
        for form, group in self._groups():
            current = _convert(current, form)
            if current is model:  # a proto step first: it edits the pipeline's own copy
                current = onnx.ModelProto()
                current.CopyFrom(model)
            try:
                current = Sequential(*group)(current).model
            except PassError as exc:
                public = _public_cause(exc)
                if public is not None:
                    raise public from public.__cause__
                raise
        return _convert(current, "proto")

    def _groups(self) -> list[tuple[Form, list[PassBase]]]:
        groups: list[tuple[Form, list[PassBase]]] = []
        for step in self.steps:
            form = getattr(step, "form", "ir")
            if groups and groups[-1][0] == form:
                groups[-1][1].append(step)
            else:
                groups.append((form, [step]))
        return groups
