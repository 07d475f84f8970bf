"""The naming and metadata contract between built training graphs and whoever runs them.

A training (or optimizer) model built by adamax-onnx is an ordinary ONNX model. Its inputs are
the batch, the parameters and the optimizer state; its outputs are the loss, the updated
parameters and the updated state. The names follow the fixed scheme below, and a JSON document
under the model's ``metadata_props`` key :data:`METADATA_KEY` records the roles, so a runtime
(ours, or anyone's plain ``InferenceSession``) can bind every tensor without guessing.

Names for a parameter ``p``:

=================  ==============================  ====================================
role               input                           output
=================  ==============================  ====================================
parameter          ``p``                           ``p.updated``
first moment       ``p.adamax.m``                  ``p.adamax.m.updated``
infinity norm      ``p.adamax.v``                  ``p.adamax.v.updated``
global step        ``adamax.global_step`` (int64)  ``adamax.global_step.updated``
beta1 power        ``adamax.beta1_power`` (f32)    ``adamax.beta1_power.updated``
fixed lr, group g  ``adamax.lr.group<g>`` (f32)    (none: fed every step)
gradient           ``p_grad`` (optimizer model)    --
=================  ==============================  ====================================

Every state and learning-rate input is a plain required input: it has no initializer of its
own name, because runtimes treat an input with an initializer as an optional one they may
hide or ignore (onnxruntime's JavaScript bindings do: the fed state is dropped and every step
restarts from the defaults). Its initial value is the initializer ``<input>.initial``
(:func:`initial_name`), which no node reads; the contract's ``initial`` maps each such input to
it. A runner starts from those values, feeds every input ``X`` that has an output ``X.updated``
back each step, and feeds the learning-rate inputs their current value.
:func:`detach_initial_values` turns a model whose inputs have defaults into this form and
:func:`attach_initial_values` back (for code that wants inputs with defaults).

Two internal float32 scalars per group are named too, so a runtime can evaluate them alone
(:func:`lr_current_name`, :func:`weight_decay_current_name`): ``adamax.group<g>.lr.current``,
the learning rate the group uses at the current step whatever its form, and
``adamax.group<g>.weight_decay.current``, a dynamic weight decay (before the loss scale).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import onnx

__all__ = [
    "METADATA_KEY",
    "INFERENCE_GRAPH_KEY",
    "GLOBAL_STEP",
    "BETA1_POWER",
    "Contract",
    "updated",
    "m_name",
    "v_name",
    "grad_name",
    "lr_input_name",
    "lr_current_name",
    "weight_decay_current_name",
    "read_contract",
    "write_contract",
    "INITIAL_SUFFIX",
    "initial_name",
    "initial_values",
    "detach_initial_values",
    "attach_initial_values",
]

METADATA_KEY = "adamax_onnx.contract"
INFERENCE_GRAPH_KEY = "adamax_onnx.inference_graph"
GLOBAL_STEP = "adamax.global_step"
BETA1_POWER = "adamax.beta1_power"
#: 2: state and learning-rate inputs are required, initial values in ``<input>.initial``
#: (:attr:`Contract.initial`). 1: the same inputs carried their initial values as defaults;
#: still read (an older adamax-onnx refuses format 2 with a clear error instead of misreading).
FORMAT_VERSION = 2
READ_FORMATS = (1, 2)
INITIAL_SUFFIX = ".initial"


def updated(name: str) -> str:
    """Output name carrying the next value of state input ``name``."""
    return f"{name}.updated"


def initial_name(name: str) -> str:
    """Initializer holding the initial value of the required state or lr input ``name``."""
    return f"{name}{INITIAL_SUFFIX}"


def m_name(param: str) -> str:
    return f"{param}.adamax.m"


def v_name(param: str) -> str:
    return f"{param}.adamax.v"


def grad_name(param: str) -> str:
    return f"{param}_grad"


def lr_input_name(group: int) -> str:
    return f"adamax.lr.group{group}"


def lr_current_name(group: int) -> str:
    """Internal float32 scalar: the learning rate group ``group`` uses at this step (any form)."""
    return f"adamax.group{group}.lr.current"


def weight_decay_current_name(group: int) -> str:
    """Internal float32 scalar: a dynamic weight decay at this step (before the loss scale)."""
    return f"adamax.group{group}.weight_decay.current"


@dataclass
class Contract:
    """Roles of a built model's inputs and outputs (stored as JSON in its metadata).

    Attributes:
        kind: ``"training"`` (forward + gradients + update) or ``"optimizer"`` (update only).
        params: trained parameter names, in the optimizer's order.
        data_inputs: batch inputs a step must be fed (``input``, ``labels``; gradients for an
            optimizer model).
        loss: name of the scalar loss output (training models).
        model_inputs / model_outputs: the inference model's own inputs and outputs.
        lr_inputs: overridable fixed learning-rate inputs, by group index.
        tables: per group, the length of its learning-rate table (the step must stay below it).
        hyper: optimizer hyperparameters, for the record and for checkpoint identity.
        groups: per group, a readable description of its learning rate and weight decay.
        overflow: name of the bool output that is True when a step was skipped because a
            gradient held NaN/Inf (models built with ``skip_nonfinite``), else None.
        extra_state: further carried state inputs (a dynamic loss scale), bound like the rest.
        initial: state or learning-rate input -> the initializer holding its initial value
            (``<input>.initial``, read by no node); empty for a model whose inputs carry
            their initial values as defaults (built by adamax-onnx before 0.2).
    """

    kind: str
    params: list[str]
    data_inputs: list[str]
    loss: str | None = None
    model_inputs: list[str] = field(default_factory=list)
    model_outputs: list[str] = field(default_factory=list)
    lr_inputs: dict[str, str] = field(default_factory=dict)
    tables: dict[str, int] = field(default_factory=dict)
    hyper: dict = field(default_factory=dict)
    groups: list[dict] = field(default_factory=list)
    overflow: str | None = None
    extra_state: list[str] = field(default_factory=list)
    initial: dict[str, str] = field(default_factory=dict)
    format: int = FORMAT_VERSION

    def state_inputs(self) -> list[str]:
        """Every input that carries state between steps, in a fixed order."""
        names = list(self.params)
        for p in self.params:
            names += [m_name(p), v_name(p)]
        return names + [GLOBAL_STEP, BETA1_POWER] + list(self.extra_state)

    @property
    def table_limit(self) -> int | None:
        """The smallest learning-rate table length, or None when no table is used."""
        return min(self.tables.values()) if self.tables else None


def write_contract(model: onnx.ModelProto, contract: Contract) -> None:
    """Store ``contract`` in ``model.metadata_props`` (replacing an older one)."""
    _set_meta(model, METADATA_KEY, json.dumps(asdict(contract), sort_keys=True))


def read_contract(model: onnx.ModelProto) -> Contract | None:
    """The contract stored in ``model``, or None for a model adamax-onnx did not build."""
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            data = json.loads(prop.value)
            if data.get("format") not in READ_FORMATS:
                raise ValueError(
                    f"model metadata {METADATA_KEY!r} has format {data.get('format')!r}; "
                    f"this adamax-onnx reads formats {list(READ_FORMATS)}"
                )
            return Contract(**data)
    return None


def initial_values(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """Initial value of every state and learning-rate input of a built model, by input name.

    Reads ``<input>.initial`` initializers (the contract's ``initial``), or, for a model whose
    inputs have defaults, the initializer of the input's own name.
    """
    contract = read_contract(model)
    if contract is None:
        raise ValueError("the model has no adamax_onnx.contract metadata")
    inits = {i.name: i for i in model.graph.initializer}
    out = {}
    for name in contract.state_inputs() + list(contract.lr_inputs.values()):
        source = contract.initial.get(name, name)
        if source in inits:
            out[name] = inits[source]
    return out


def detach_initial_values(model: onnx.ModelProto) -> onnx.ModelProto:
    """Make every state and learning-rate input required; keep its default as ``<input>.initial``.

    In place (and returned). The initializer of each such input is renamed
    :func:`initial_name` and recorded in the contract's ``initial``; nothing reads it.
    """
    contract = read_contract(model)
    if contract is None:
        raise ValueError("the model has no adamax_onnx.contract metadata")
    names = contract.state_inputs() + list(contract.lr_inputs.values())
    inputs = {i.name for i in model.graph.input}
    taken = {i.name for i in model.graph.initializer} | inputs
    taken |= {o for n in model.graph.node for o in n.output}
    by_name = {i.name: i for i in model.graph.initializer}
    for name in names:
        if name not in by_name or name not in inputs:
            continue
        target = initial_name(name)
        if target in taken:
            raise ValueError(f"cannot keep the initial value of {name!r}: {target!r} is taken")
        by_name[name].name = target
        contract.initial[name] = target
    contract.format = FORMAT_VERSION
    write_contract(model, contract)
    return model


def attach_initial_values(model: onnx.ModelProto) -> onnx.ModelProto:
    """The inverse of :func:`detach_initial_values`: inputs get their initial values as defaults.

    In place (and returned).
    """
    contract = read_contract(model)
    if contract is None or not contract.initial:
        return model
    sources = {v: k for k, v in contract.initial.items()}
    for init in model.graph.initializer:
        if init.name in sources:
            init.name = sources[init.name]
    contract.initial = {}
    contract.format = 1  # the form with defaults
    write_contract(model, contract)
    return model


def _set_meta(model: onnx.ModelProto, key: str, value: str) -> None:
    for prop in model.metadata_props:
        if prop.key == key:
            prop.value = value
            return
    entry = model.metadata_props.add()
    entry.key, entry.value = key, value
