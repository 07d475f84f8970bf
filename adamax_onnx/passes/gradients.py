"""Gradient pass: add ``p_grad`` tensors for the trained parameters of a model with a loss.

The differentiation itself is delegated to a :class:`GradientBuilder`, a one-method interface.
The default, :class:`passes.autodiff.AutodiffBuilder`, is this project's reverse-mode autodiff
over standard ONNX (:mod:`passes.autodiff`): it needs nothing but ``onnx`` and ``onnx_ir``.
:class:`OrtGradientBuilder`, onnxruntime-training 1.19.2's C++ ``GradientGraphBuilder``, is an
optional second builder (a cross-check in tests; it needs the frozen training build, which
has no wheels for CPython 3.13+ and cannot share a venv with stock onnxruntime).

Guarantees afterwards: every trained parameter is a graph input (its initializer removed: the
caller re-attaches values), every ``p_grad`` is a graph output, the loss-gradient seed equals
``seed`` (the loss scale), and helper outputs the builder needed (``loss.log_prob``) are gone.
The autodiff builder emits standard ONNX only; onnxruntime-training's builder emits
``com.microsoft`` ops, which :mod:`passes.lowering` rewrites.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import onnx
import onnx_ir as ir
from onnx import helper, numpy_helper
from onnx_ir.passes import PassResult

from .autodiff import AutodiffBuilder
from .autodiff.errors import GradientBuildError
from .contract import grad_name
from .infra import BuildPass, Step
from .names import LOG_PROB_NAME

__all__ = [
    "AutodiffBuilder",
    "BuildGradients",
    "GradientBuildError",
    "GradientBuilder",
    "InPlaceGradientBuilder",
    "OrtGradientBuilder",
]

#: Highest IR version onnxruntime-training 1.19 reads.
_MAX_BUILDER_IR = 10


class GradientBuilder(Protocol):
    """Anything that turns (model, loss, parameters) into a model with ``p_grad`` outputs."""

    def build(
        self, model: onnx.ModelProto, loss: str, params: Sequence[str]
    ) -> onnx.ModelProto: ...


class OrtGradientBuilder:
    """onnxruntime-training's C++ gradient graph builder (``GradientGraphBuilder``)."""

    def build(self, model: onnx.ModelProto, loss: str, params: Sequence[str]) -> onnx.ModelProto:
        try:
            from onnxruntime.capi import _pybind_state as C
        except ImportError as exc:  # pragma: no cover - depends on the installed build
            raise GradientBuildError(
                "building gradients needs onnxruntime-training==1.19.2 (pip install "
                "'adamax-onnx[training]'); the stock onnxruntime has no gradient builder"
            ) from exc
        if not hasattr(C, "GradientGraphBuilder"):
            raise GradientBuildError(
                "the installed onnxruntime is the stock build, which has no gradient builder: "
                "install onnxruntime-training==1.19.2 in this environment to build training "
                "models (built models then run on stock onnxruntime)"
            )
        # The training build logs every graph transformer at INFO on its default logger.
        C.set_default_logger_severity(3)
        try:
            options = C.SessionOptions()
            options.log_severity_level = 3
            builder = C.GradientGraphBuilder(
                model.SerializeToString(), {loss}, set(params), loss, options
            )
            builder.build()
            return onnx.load_from_string(builder.get_model())
        except Exception as exc:  # the builder raises RuntimeError/Fail with C++ text
            text = str(exc)
            match = re.search(r"gradient builder has not been registered: (\w+)", text)
            op = match.group(1) if match else None
            short = text.strip().splitlines()[-1] if text.strip() else repr(exc)
            raise GradientBuildError(
                f"gradient builder failed{f' on op {op}' if op else ''}: {short}", op
            ) from exc


@runtime_checkable
class InPlaceGradientBuilder(GradientBuilder, Protocol):
    """A :class:`GradientBuilder` that also adds the ``p_grad`` outputs to an ``onnx_ir.Model``
    in place (:class:`BuildGradients` is then an ir step of the build: no copy of the model)."""

    def build_in_place(self, model: ir.Model, loss: str, params: Sequence[str]) -> None: ...


class BuildGradients(BuildPass):
    """Differentiate ``loss`` with respect to ``params`` using ``builder``.

    With a builder that builds in place (:class:`InPlaceGradientBuilder`, as the default
    :class:`AutodiffBuilder`), an in-place pass on an ``onnx_ir.Model`` (:attr:`form` "ir");
    with any other (:class:`OrtGradientBuilder`), a pass on ``onnx.ModelProto`` that returns
    the builder's new model (:attr:`form` "proto"). Called on a ``ModelProto``, either works on
    a copy and returns a new ``ModelProto``.

    Args:
        loss: name of the scalar loss output.
        params: parameter (initializer) names to differentiate.
        seed: value of d(loss)/d(loss); the loss scale (gradients come out multiplied by it).
        builder: a :class:`GradientBuilder` (default :class:`AutodiffBuilder`).
    """

    def __init__(
        self,
        loss: str,
        params: Sequence[str],
        seed: float = 1.0,
        builder: GradientBuilder | None = None,
    ) -> None:
        self.loss, self.params, self.seed = loss, list(params), float(seed)
        self.builder = builder or AutodiffBuilder()
        self.form = "ir" if isinstance(self.builder, InPlaceGradientBuilder) else "proto"

    @property
    def in_place(self) -> bool:
        return self.form == "ir"

    def __call__(self, model, /) -> PassResult:
        if self.form == "proto" and isinstance(model, onnx.ModelProto):
            copy = onnx.ModelProto()
            copy.CopyFrom(model)
            return Step.__call__(self, copy)
        return super().__call__(model)

    def call(self, model: ir.Model | onnx.ModelProto) -> PassResult:
        if isinstance(model, onnx.ModelProto):
            return self._call_proto(model)
        if self.form != "ir":
            raise TypeError(
                f"gradient builder {type(self.builder).__name__} works on onnx.ModelProto: "
                "call BuildGradients with a ModelProto"
            )
        graph = model.graph
        for p in self.params:  # trained parameters become inputs; Finish re-attaches values
            value = graph.initializers.pop(p, None)
            if value is None:
                continue  # an input already
            tensor, value.const_value = value.const_value, None
            if not value.is_graph_input():
                value.type = ir.TensorType(tensor.dtype)
                value.shape = ir.Shape(tensor.shape.numpy())
                graph.inputs.append(value)
        self.builder.build_in_place(model, self.loss, self.params)
        graph = model.graph  # a new one where the builder upgraded an old opset
        self._check_built({o.name for n in graph for o in n.outputs})
        seed = graph.initializers.get(grad_name(self.loss))
        if seed is not None:
            seed.const_value = ir.tensor(
                np.full_like(seed.const_value.numpy(), self.seed), name=seed.name
            )
        for out in [o for o in graph.outputs if o.name == LOG_PROB_NAME]:
            graph.outputs.remove(out)
            out.type = out.shape = None  # an intermediate again, with no stated facts
        used = {n.domain for n in graph}
        for domain in [d for d in model.opset_imports if d not in used | {"", "ai.onnx"}]:
            del model.opset_imports[domain]
        return PassResult(model, True)

    def _check_built(self, produced: set[str]) -> None:
        missing = [p for p in self.params if grad_name(p) not in produced]
        if missing:
            raise GradientBuildError(
                f"the loss {self.loss!r} does not depend on parameter(s) {missing}: no gradient "
                "was built for them; leave them out of the optimizer to keep them frozen"
            )

    def _call_proto(self, model: onnx.ModelProto) -> PassResult:
        graph = model.graph
        inits = {i.name: i for i in graph.initializer}
        keep = [i for i in graph.initializer if i.name not in set(self.params)]
        existing_inputs = {i.name for i in graph.input}
        for p in self.params:
            if p in existing_inputs:
                continue
            init = inits[p]
            graph.input.append(helper.make_tensor_value_info(p, init.data_type, list(init.dims)))
        del graph.initializer[:]
        graph.initializer.extend(keep)
        if isinstance(self.builder, OrtGradientBuilder) and model.ir_version > _MAX_BUILDER_IR:
            model.ir_version = _MAX_BUILDER_IR
        out = self.builder.build(model, self.loss, self.params)
        self._check_built({o for n in out.graph.node for o in n.output})
        seed_name = grad_name(self.loss)
        for i, init in enumerate(out.graph.initializer):
            if init.name == seed_name:
                value = numpy_helper.to_array(init)
                out.graph.initializer[i].CopyFrom(
                    numpy_helper.from_array(np.full_like(value, self.seed), seed_name)
                )
        outputs = [o for o in out.graph.output if o.name != LOG_PROB_NAME]
        del out.graph.output[:]
        out.graph.output.extend(outputs)
        # Keep only the opset domains that are used (the builder declares many).
        used = {n.domain for n in out.graph.node}
        opsets = [o for o in out.opset_import if o.domain in used or o.domain in ("", "ai.onnx")]
        del out.opset_import[:]
        out.opset_import.extend(opsets)
        return PassResult(out, True)
