"""One self-contained trainable ONNX file, in the ONNX IR's training form (``training_info``).

:func:`export_trainable_model` writes a built training model, or the live state of a
:class:`~adamax_onnx.TrainingSession`, as a single ModelProto laid out as the ONNX IR
specification gives for training:

* ``graph`` is the original inference graph. Its initializers hold the current parameters
  *and* the optimizer state (``p.adamax.m``, ``p.adamax.v``, ``adamax.global_step``, ...), so
  any inference runtime runs the file as an ordinary model (it ignores ``training_info``).
* ``training_info[0].algorithm`` is the training step: the training graph, which per the IR
  is evaluated as the concatenation of ``graph`` and ``algorithm``. It reads the inference
  graph's inputs (the batch) and initializers (parameters, state) by name; its own inputs are
  the label and the overridable learning rates (with defaults); the tensors it computes that
  share a name with the inference graph are renamed ``training/<name>`` to keep the combined
  graph in SSA form.
* ``training_info[0].update_binding`` maps every parameter and state tensor to the algorithm
  output holding its next value (``<name>.updated``).

The ``adamax_onnx.contract`` metadata travels along, so :func:`training_model_from_trainable`
(used by ``TrainingSession("model.onnx")``) turns the file back into the one-run-per-step
training model, with the stored state as the initial values: training resumes exactly.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .api import load_model
from .atomic import save_model_atomically
from .errors import ModelError
from .passes.contract import (
    INFERENCE_GRAPH_KEY,
    attach_initial_values,
    detach_initial_values,
    initial_values,
    read_contract,
    updated,
)
from .passes.inference import embed_inference_graph, extract_inference_model

__all__ = ["export_trainable_model", "training_model_from_trainable", "is_trainable_file"]

#: Prefix of algorithm tensors renamed because the inference graph defines the same name.
RENAME_PREFIX = "training/"


def is_trainable_file(model: onnx.ModelProto) -> bool:
    """True for a model in the training_info form written by :func:`export_trainable_model`."""
    return len(model.training_info) > 0


def _state_names(graph: onnx.GraphProto) -> list[str]:
    """Inputs carried from step to step: those with an ``<input>.updated`` output."""
    outputs = {o.name for o in graph.output}
    return [i.name for i in graph.input if updated(i.name) in outputs]


@runtime_checkable
class _LiveSession(Protocol):
    """What this module reads of a :class:`~adamax_onnx.TrainingSession` (which imports this
    module: the dependency stays one-way)."""

    model: onnx.ModelProto

    def state_tensors(self) -> dict[str, np.ndarray]: ...


def _training_model_and_values(source: Any) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """The built training model and the current value of every state and learning-rate input."""
    if isinstance(source, _LiveSession):
        # The session's live buffers: parameters, optimizer state, learning rates.
        return source.model, source.state_tensors()
    model = load_model(source)
    if is_trainable_file(model):
        model = training_model_from_trainable(model)
    return model, {n: numpy_helper.to_array(t) for n, t in initial_values(model).items()}


def export_trainable_model(training_model_or_session: Any, path: str | os.PathLike) -> Path:
    """Write ``training_model_or_session`` as one ONNX file in the ``training_info`` form.

    Args:
        training_model_or_session: a :class:`TrainingSession` (its current parameters, state
            and learning rates are written), or a model built by ``build_training_model``
            (ModelProto or path; its initial values are written).
        path: the .onnx file to write (atomically: a temporary file, then a rename).

    Returns:
        The path written.

    Raises:
        ModelError: the model is not an adamax-onnx training model (an optimizer-only model has
            no inference graph to put first).
    """
    train, values = _training_model_and_values(training_model_or_session)
    contract = read_contract(train)
    if contract is None or contract.kind != "training":
        kind = "no adamax-onnx contract" if contract is None else f"kind {contract.kind!r}"
        raise ModelError(
            f"export_trainable_model needs a training model built by build_training_model "
            f"({kind}); an optimizer-only model has no inference graph"
        )
    model = _to_trainable(train, values)
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ModelError(f"the trainable model is not valid ONNX: {exc}") from exc
    return save_model_atomically(model, path)


def _to_trainable(train: onnx.ModelProto, values: Mapping[str, np.ndarray]) -> onnx.ModelProto:
    # The algorithm below reads state and learning-rate inputs as inputs with defaults.
    defaults_form = onnx.ModelProto()
    defaults_form.CopyFrom(train)
    train = attach_initial_values(defaults_form)
    graph = train.graph
    state = _state_names(graph)
    contract = read_contract(train)
    assert contract is not None
    live = [*contract.params, *contract.extra_state]  # + BatchNorm running statistics
    inference = extract_inference_model(train, {p: values[p] for p in live if p in values})
    main = inference.graph
    main_inits = {i.name: i for i in main.initializer}
    # Optimizer state joins the parameters as initializers of the inference graph.
    for name in state:
        arr = np.asarray(values[name])
        tensor = numpy_helper.from_array(arr, name)
        if name in main_inits:
            main_inits[name].CopyFrom(tensor)
        else:
            main.initializer.append(tensor)
    main_defined = {i.name for i in main.input} | {i.name for i in main.initializer}
    main_defined |= {o for n in main.node for o in n.output}
    main_values = {i.name: i for i in main.initializer}

    # Algorithm initializers: the inference graph's own (same name and value) are shared,
    # state and parameters come from the inference graph, the rest stay (renamed on a clash).
    rename: dict[str, str] = {}
    taken = set(main_defined) | {o for n in graph.node for o in n.output}
    taken |= {i.name for i in graph.initializer} | {i.name for i in graph.input}

    def fresh(name: str) -> str:
        candidate, k = f"{RENAME_PREFIX}{name}", 0
        while candidate in taken:
            k += 1
            candidate = f"{RENAME_PREFIX}{name}_{k}"
        taken.add(candidate)
        return candidate

    alg_inits = []
    for init in graph.initializer:
        if init.name in state:
            continue
        tensor = onnx.TensorProto()
        tensor.CopyFrom(init)
        if init.name in values:  # an overridable input (learning rate): its current value
            tensor.CopyFrom(numpy_helper.from_array(np.asarray(values[init.name]), init.name))
        if init.name in main_defined:
            shared = main_values.get(init.name)
            if shared is not None and shared.SerializeToString() == tensor.SerializeToString():
                continue
            rename[init.name] = fresh(init.name)
            tensor.name = rename[init.name]
        alg_inits.append(tensor)
    for node in graph.node:
        for out in node.output:
            if out and out in main_defined:
                rename[out] = fresh(out)

    def r(name: str) -> str:
        return rename.get(name, name)

    nodes = []
    for node in graph.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.input[:] = [r(i) for i in node.input]
        copy.output[:] = [r(o) for o in node.output]
        nodes.append(copy)
    main_inputs = {i.name for i in main.input}
    alg_inputs = [i for i in graph.input if i.name not in main_inputs and i.name not in state]
    model_outputs = set(contract.model_outputs)
    alg_outputs = []
    for out in graph.output:
        if out.name in model_outputs:
            continue  # the inference graph computes these
        vi = onnx.ValueInfoProto()
        vi.CopyFrom(out)
        vi.name = r(out.name)
        alg_outputs.append(vi)
    value_info = []
    for vi in graph.value_info:
        copy = onnx.ValueInfoProto()
        copy.CopyFrom(vi)
        copy.name = r(vi.name)
        value_info.append(copy)
    algorithm = helper.make_graph(
        nodes,
        "adamax_training_step",
        alg_inputs,
        alg_outputs,
        initializer=alg_inits,
        value_info=value_info,
    )
    info = onnx.TrainingInfoProto()
    info.algorithm.CopyFrom(algorithm)
    for name in state:
        binding = info.update_binding.add()
        binding.key, binding.value = name, r(updated(name))

    opsets = {o.domain: o.version for o in inference.opset_import}
    for o in train.opset_import:
        opsets[o.domain] = max(opsets.get(o.domain, 0), o.version)
    model = helper.make_model(
        main,
        opset_imports=[helper.make_opsetid(d, v) for d, v in sorted(opsets.items())],
        ir_version=max(train.ir_version, inference.ir_version, 7),
        producer_name=train.producer_name or "adamax-onnx",
        doc_string="adamax-onnx trainable model: graph = inference, training_info[0] = AdaMax step",
    )
    model.training_info.append(info)
    for prop in train.metadata_props:
        if prop.key != INFERENCE_GRAPH_KEY:
            model.metadata_props.add(key=prop.key, value=prop.value)
    return model


def training_model_from_trainable(model: onnx.ModelProto) -> onnx.ModelProto:
    """The one-run-per-step training model of a file written by :func:`export_trainable_model`.

    Parameters and state become required graph inputs whose ``<input>.initial`` initializers
    hold the stored values (so a :class:`TrainingSession` resumes where the file was written),
    as :func:`~adamax_onnx.build_training_model` lays them out; the inference graph is
    embedded for ``predict``/``export_inference_model``.

    Raises:
        ModelError: no ``training_info``, or no adamax-onnx contract in the metadata.
    """
    if not is_trainable_file(model):
        raise ModelError("the model has no training_info: it is not a trainable model file")
    if read_contract(model) is None:
        raise ModelError(
            "the model's training_info was not written by adamax-onnx (no "
            "'adamax_onnx.contract' metadata)"
        )
    main = model.graph
    info = model.training_info[0]
    alg = info.algorithm
    main_inits = {i.name: i for i in main.initializer}
    bound = [b.key for b in info.update_binding]
    missing = [k for k in bound if k not in main_inits]
    if missing:
        raise ModelError(f"update_binding keys {missing} are not initializers of the graph")
    inputs = [i for i in main.input if i.name not in main_inits]
    inputs += [
        helper.make_tensor_value_info(k, main_inits[k].data_type, list(main_inits[k].dims))
        for k in bound
    ]
    inputs += list(alg.input)
    graph = helper.make_graph(
        list(alg.node),
        "adamax_training",
        inputs,
        list(alg.output),
        initializer=list(main.initializer) + list(alg.initializer),
        value_info=list(alg.value_info),
    )
    train = helper.make_model(
        graph,
        opset_imports=list(model.opset_import),
        ir_version=model.ir_version,
        producer_name=model.producer_name,
    )
    for prop in model.metadata_props:
        train.metadata_props.add(key=prop.key, value=prop.value)
    inference = onnx.ModelProto()
    inference.CopyFrom(model)
    inference.ClearField("training_info")
    embed_inference_graph(train, inference)
    return detach_initial_values(train)
