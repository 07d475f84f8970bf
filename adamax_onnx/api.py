"""Public graph-building API: from an inference model (or raw parameters) to a training model.

Each builder checks its arguments and runs one declared pipeline (:mod:`passes.pipeline`) on
one copy of the model: ``build_training_model`` = untie -> check parameters and record the
inference model -> loss -> sequences -> BatchNorm -> Dropout -> gradients -> AdaMax update ->
guard -> lowering -> chunking -> contract; ``build_optimizer_model`` = parameters and gradients
as inputs -> AdaMax update -> guard -> chunking -> contract. Both return an ordinary ONNX model
that passes ``onnx.checker.check_model(full_check=True)``; the roles of its inputs and outputs
are recorded as described in :mod:`passes.contract`.

(Over 400 lines: the docstrings of the two builders are the reference of every option.)
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import TensorProto, helper

from .errors import ModelError
from .loss_scale import LossScaleManager, guard_for
from .optimizer import AdaMax, decays
from .passes.builder import IR_VERSION, OPSET
from .passes.contract import Contract, grad_name, lr_input_name
from .passes.names import DEFAULT_BUCKET_SIZE, KEEP_TIES_KEY, LOSS_NAME, is_generated_name
from .safety import check_in_memory_model, load_model_file

if TYPE_CHECKING:
    from .passes.gradients import GradientBuilder

# The build pipeline (passes.pipeline) is imported on first use: it loads onnx_ir (and through
# it sympy), which ``import adamax_onnx`` does not need to run a training model.

__all__ = ["trainable_params", "build_training_model", "build_optimizer_model", "load_model"]

_FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16}

# Inputs that are never learned: (op_type, input index). BatchNormalization running statistics,
# shapes, sizes and bounds.
_FROZEN_SLOTS = {
    "BatchNormalization": {3, 4},
    "Reshape": {1},
    "Expand": {1},
    "Tile": {1},
    "Resize": {1, 2, 3},
    "Upsample": {1},
    "Pad": {1, 2, 3},
    "Clip": {1, 2},
    "Slice": {1, 2, 3, 4},
    "ConstantOfShape": {0},
    "Range": {0, 1, 2},
    "OneHot": {1, 2},
    "TopK": {1},
}


def load_model(model: onnx.ModelProto | str | Path | bytes) -> onnx.ModelProto:
    """Accept a ModelProto, a path or serialized bytes; errors name the file.

    External data is read only from inside the model file's folder, and an in-memory model
    must not refer to unloaded external data (:mod:`adamax_onnx.safety`).
    """
    if isinstance(model, onnx.ModelProto):
        check_in_memory_model(model)
        return model
    if isinstance(model, bytes):
        try:
            proto = onnx.load_from_string(model)
        except Exception as exc:
            raise ModelError(f"the given bytes are not a serialized ONNX model: {exc}") from exc
        check_in_memory_model(proto)
        return proto
    return load_model_file(model)


def untie(
    model: onnx.ModelProto, keep_ties: Iterable[str] | None = None, warn: bool = True
) -> onnx.ModelProto:
    """A copy of ``model`` with every tied tensor made a separate copy (:mod:`passes.ties`).

    Ties whose shared initializer or tied tensor is named in ``keep_ties`` stay. First, a copy an
    exporter folded out of a weight that is also used under its own name (the transposed
    embedding of a tied LM head) reads the weight again (:class:`RetieFoldedCopies`). With
    ``warn``, one ``UserWarning`` names every tensor re-tied, and one every tensor untied.
    """
    from .passes.infra import Pipeline
    from .passes.pipeline import Untie

    return Pipeline(Untie(_kept_ties(model, keep_ties), warn))(model)


def _kept_ties(model: onnx.ModelProto, keep_ties: Iterable[str] | None) -> set[str]:
    """``keep_ties`` and the ties from_torch found in the module itself (a layer applied twice)."""
    keep = set(keep_ties or ())
    meant = next((p.value for p in model.metadata_props if p.key == KEEP_TIES_KEY), None)
    return keep | set(json.loads(meant)) if meant else keep


def trainable_params(
    model: onnx.ModelProto | str | Path, keep_ties: Iterable[str] | None = None
) -> list[str]:
    """Names of the learnable float initializers of ``model``, in graph order.

    Counted after untying (:func:`untie`, as :func:`build_training_model` does): a tensor an
    exporter merged into another (``bn1.running_var = Identity(bn1.weight)``,
    ``ln_f.weight = Identity(ln_1.weight)``) is listed under its own name when it is learnable
    (and follows the initializers).

    Excluded: non-float initializers, scalars (rank 0: constants such as 0.5 or 1/sqrt(d)),
    BatchNormalization running statistics, tensors used only as shapes, bounds or sizes, and
    single-element tensors with an exporter-generated name (folded constants such as an
    attention scale ``val_68``). Larger tensors with an exporter-generated name are folded
    weights (a transposed weight, a BatchNorm folded into a Conv): they are listed, and a
    ``UserWarning`` says they cannot be mapped back to the original model's parameters.
    """
    model = untie(load_model(model), keep_ties, warn=False)
    graph = model.graph
    frozen: set[str] = set()
    used_as_data: set[str] = set()
    for node in graph.node:
        slots = _FROZEN_SLOTS.get(node.op_type, set())
        for idx, name in enumerate(node.input):
            (frozen if idx in slots else used_as_data).add(name)
    names: list[str] = []
    folded: list[str] = []
    for init in graph.initializer:
        if init.data_type not in _FLOAT_TYPES or len(init.dims) == 0:
            continue
        if init.name in frozen and init.name not in used_as_data:
            continue
        if init.name not in used_as_data:
            continue
        if is_generated_name(init.name):
            if int(np.prod(init.dims)) == 1:
                continue  # a folded constant (scale, epsilon), not a parameter
            folded.append(f"{init.name!r} {list(init.dims)}")
        names.append(init.name)
    if folded:
        warnings.warn(
            f"initializer(s) {', '.join(folded)} have exporter-generated names: weights the "
            "exporter folded (a transposed weight, a BatchNorm folded into a Conv, ...) that "
            "cannot be mapped back to the original model's parameters. They are trained under "
            "these names; export without constant folding (adamax_onnx.from_torch, or "
            "torch.onnx.export(..., do_constant_folding=False)) to train the original ones",
            UserWarning,
            stacklevel=2,
        )
    return names


def _check_params(model, optimizer: AdaMax) -> None:
    """Raise a ``ModelError`` for an optimizer parameter ``model`` (an ``onnx_ir.Model``) cannot
    train: not an initializer, not a float tensor, or read by no node."""
    inits = model.graph.initializers
    if not any(int(v.const_value.dtype) in _FLOAT_TYPES for v in inits.values()):
        raise ModelError("the model has no float initializers: there is nothing to train")
    missing = [n for n in optimizer.param_names if n not in inits]
    if missing:
        from .passes.infra import to_proto

        raise ModelError(
            f"parameter(s) {missing} are not initializers of the model; trainable ones are "
            f"{trainable_params(to_proto(model))}"
        )
    for n in optimizer.param_names:
        dtype = int(inits[n].const_value.dtype)
        if dtype not in _FLOAT_TYPES:
            raise ModelError(
                f"parameter {n!r} has type "
                f"{TensorProto.DataType.Name(dtype)}; only float tensors are trained"
            )
    # Readers in subgraphs count: onnx_ir records them as uses of the outer value.
    unused = [n for n in optimizer.param_names if not inits[n].uses()]
    if unused:
        # Caught here: the gradient builder's own message for it is a C++ assertion.
        raise ModelError(
            f"parameter(s) {unused} are not read by any node of the model, so the loss cannot "
            "depend on them; leave them out of the optimizer"
        )


def _describe(value) -> object:
    if isinstance(value, float):
        return value
    if isinstance(value, np.ndarray):
        return {"table": int(value.size)}
    return {"schedule": type(value).__name__}


def _contract(
    kind: str,
    optimizer: AdaMax,
    data_inputs: list[str],
    loss: str | None,
    model_inputs: list[str],
    model_outputs: list[str],
) -> Contract:
    groups: dict[int, dict] = {}
    for c in optimizer.param_configs:
        grp = groups.setdefault(
            c.group,
            {
                "lr": _describe(c.lr),
                "weight_decay": _describe(c.weight_decay),
                "grad_centralization": c.grad_centralization,
                "params": [],
                "decayed": [],
            },
        )
        grp["params"].append(c.name)
        if decays(c):
            grp["decayed"].append(c.name)
    return Contract(
        kind=kind,
        params=optimizer.param_names,
        data_inputs=data_inputs,
        loss=loss,
        model_inputs=model_inputs,
        model_outputs=model_outputs,
        lr_inputs={
            str(c.group): lr_input_name(c.group)
            for c in optimizer.param_configs
            if isinstance(c.lr, float)
        },
        tables={
            str(c.group): int(c.lr.size)
            for c in optimizer.param_configs
            if isinstance(c.lr, np.ndarray)
        },
        hyper={
            "beta1": optimizer.beta1,
            "beta2": optimizer.beta2,
            "eps": optimizer.eps,
            "loss_scale": optimizer.loss_scale,
        },
        groups=[groups[k] for k in sorted(groups)],
    )


def build_training_model(
    model: onnx.ModelProto | str | Path,
    optimizer: AdaMax,
    loss: str = "cross_entropy",
    label: str = "labels",
    output: str | None = None,
    gradient_builder: GradientBuilder | None = None,
    portable: bool = True,
    skip_nonfinite: bool = False,
    loss_scale_manager: LossScaleManager | None = None,
    bucket_size: int = DEFAULT_BUCKET_SIZE,
    chunk_size: int = 0,
    ignore_index: int | None = None,
    keep_ties: Iterable[str] | None = None,
    dropout_seed: int = 0,
    class_axis: int | None = None,
) -> onnx.ModelProto:
    """Build the one-run-per-step training model of ``model`` with ``optimizer``.

    Args:
        model: an inference model whose trained parameters are float initializers.
        optimizer: the :class:`AdaMax` specification; its parameters must be initializers of
            ``model``. Initializers not in the optimizer stay frozen.
        loss: ``"cross_entropy"`` (int64 class labels, mean), ``"mse"`` (mean), or the name of
            an existing scalar float output. Cross entropy reads ``[B, C]`` scores with ``[B]``
            labels, or ``[B, T, V]`` scores with ``[B, T]`` labels (token level: class axis
            last, like torch and Hugging Face; mean over the tokens whose label is not
            ``ignore_index``). A loss/output combination that could not run is a
            :class:`ModelError` here (output of unknown rank, rank < 2 or non-float type for
            cross entropy, non-float for mse, a named loss that is not a float scalar).
        label: name of the label input added for a built-in loss.
        output: the model output the loss reads (default: the only one).
        gradient_builder: the :class:`passes.gradients.GradientBuilder` that differentiates
            the loss; default :class:`passes.autodiff.AutodiffBuilder`, this library's
            reverse-mode autodiff over standard ONNX (:mod:`passes.autodiff`), which needs no
            onnxruntime-training. ``passes.gradients.OrtGradientBuilder()`` uses
            onnxruntime-training 1.19.2's C++ builder instead (in an environment that has it).
        skip_nonfinite: check every gradient for NaN/Inf in the same run; where one is found,
            every parameter and optimizer state output equals its input, and the bool output
            ``adamax.overflow`` (``TrainingSession.last_overflow``) is True. Default False:
            MindSpore's ``nn.AdaMax`` applies the update as computed.
        loss_scale_manager: a :class:`DynamicLossScaleManager` or :class:`FixedLossScaleManager`
            (MindSpore semantics, see :mod:`adamax_onnx.loss_scale`); the dynamic scale is
            graph state. A manager that drops overflowing updates implies ``skip_nonfinite``.
        portable: lower non-standard ops a gradient builder emitted (onnxruntime-training's
            ``com.microsoft`` ``ReluGrad``, ``ConvGrad``, ...) to standard ONNX ops
            (:mod:`passes.lowering`), so the model runs on stock onnxruntime, other providers
            and ``onnx.reference``. The default builder emits standard ONNX only, so this
            matters only with ``OrtGradientBuilder``; ``False`` then keeps its training-build
            form, which only onnxruntime-training runs.
        bucket_size: float32 parameters with fewer than ``bucket_size`` elements (default
            65,536) are updated together in flat buckets of at most that many elements
            (bit-identical results, far fewer nodes and a much faster session set-up with many
            parameters; see :class:`passes.adamax.AdaMaxPass` and ``benchmarks/README.md``).
            0: every parameter gets its own update nodes.
        chunk_size: 0 (default): the file keeps whole-tensor updates, and
            :class:`TrainingSession` chunks large ones itself when it runs on the CPU. N > 0:
            the update of each parameter of at least 8 chunks is written into the file as a
            ``Scan`` over chunks of about N elements (:class:`passes.chunking.ChunkUpdates`,
            bit-identical), its ``.updated`` outputs (parameter, m, v) in chunk layout
            ``[rows, chunk]``: another runtime must reshape them before feeding them back.
        ignore_index: cross entropy: the label value left out of the loss and of its mean.
            None (default): -100 (torch's default) for token-level scores (rank >= 3), none
            for ``[B, C]`` scores; an int applies to both.
        class_axis: cross entropy: the class axis of the scores. None (default): 1 for
            ``[B, C]``, the last for ``[B, T, V]``; scores of rank 4 and more must say it (1:
            ``[B, C, H, W]`` as torch and ONNX lay out images, -1: classes last).
        keep_ties: names of tensors whose ties are kept. By default every tie that training
            would corrupt is untied first (:mod:`passes.ties`: an Identity alias of an
            initializer, e.g. ``bn1.running_var = Identity(bn1.weight)`` from torch's
            TorchScript exporter; an initializer read by a never-trained slot, such as a
            BatchNorm running statistic, and by a trained one; one initializer serving two
            normalization layers), each becoming its own copy, with a ``UserWarning`` naming
            them. An initializer read by two ordinary nodes (an embedding shared with the LM
            head) is weight tying and is never untied.
        dropout_seed: initial value of the ``dropout.seed`` state of a model with Dropout in
            training mode (:mod:`passes.dropout`: a fresh mask every step, drawn from the seed,
            which each step advances; checkpointed like the optimizer state).

    Raises:
        GradientError: an op on the path from a trained parameter to the loss has no gradient
            rule (the message names the op, its domain, the node and the parameter, and says
            how to freeze what is upstream of it).
        LoweringError: ``portable=True`` and some op a custom builder emitted has no standard
            lowering (the message names each op type and node).
        onnx_ir.passes.PassError: any other failure of a build step (a bug): the message
            names the step and the steps before it.

    Returns:
        A valid ONNX model. Inputs: the model's inputs, the label, then parameters, optimizer
        state and fixed learning rates (required; initial values in ``<input>.initial``
        initializers, see :mod:`passes.contract`); outputs: ``loss``, the model's outputs,
        then the updated parameters and state. The loss gradient is seeded with ``loss_scale``, which the update
        divides back out.
    """
    from .passes import pipeline as steps

    model = load_model(model)
    if not isinstance(optimizer, AdaMax):
        raise TypeError(f"optimizer must be an adamax_onnx.AdaMax, got {type(optimizer).__name__}")
    chunker = steps.ChunkUpdates(optimizer.param_names, chunk_size)  # checks chunk_size up front
    builtin = loss in ("cross_entropy", "mse")
    loss_name = LOSS_NAME if builtin else loss
    record = steps.RecordInference(optimizer.param_names, lambda m: _check_params(m, optimizer))
    batchnorm = steps.DecomposeBatchNorm(optimizer.param_names)
    dropout = steps.SeededDropout(dropout_seed)
    # the guard's options are checked up front: their TypeError reaches the caller
    guard, overflow = guard_for(
        optimizer.param_names, loss_name, skip_nonfinite, loss_scale_manager
    )

    def contract() -> Contract:
        data_inputs = record.inputs + ([label] if builtin else [])
        c = _contract("training", optimizer, data_inputs, loss_name, record.inputs, record.outputs)
        overflow.annotate(c)
        # running statistics of BatchNorm in training mode, the Dropout seed: state of every step
        c.extra_state += batchnorm.running_stats + dropout.state
        return c

    pipeline = steps.training_pipeline(
        optimizer,
        untie=steps.Untie(_kept_ties(model, keep_ties)),
        record=record,
        attach_loss=steps.AttachLoss(
            loss, label=label, output=output, ignore_index=ignore_index, class_axis=class_axis
        ),
        batchnorm=batchnorm,
        dropout=dropout,
        loss_name=loss_name,
        gradient_builder=gradient_builder,
        update=steps.update_steps(
            optimizer,
            bucket_size,
            guard,
            steps.lowering_step(gradient_builder) if portable else None,
            chunker if chunk_size else None,
        ),
        # the inference graph as torch's eval() runs it
        finish=steps.Finish(contract, lambda: record.eval_model, record.values),
    )
    return pipeline(model)


def build_optimizer_model(
    optimizer: AdaMax,
    params: Mapping[str, np.ndarray],
    skip_nonfinite: bool = False,
    bucket_size: int = DEFAULT_BUCKET_SIZE,
    chunk_size: int = 0,
) -> onnx.ModelProto:
    """A standalone optimizer model: inputs ``p_grad`` (+ parameters and state), outputs updates.

    Like MindSpore's optimizer called alone, gradients are taken as given and divided by
    ``loss_scale``.

    Args:
        optimizer: the :class:`AdaMax` specification.
        params: initial value of every optimizer parameter, by name.
        skip_nonfinite: as in :func:`build_training_model`, over the given gradients.
        bucket_size, chunk_size: as in :func:`build_training_model`.
    """
    from .passes import pipeline as steps

    if not isinstance(optimizer, AdaMax):
        raise TypeError(f"optimizer must be an adamax_onnx.AdaMax, got {type(optimizer).__name__}")
    chunker = steps.ChunkUpdates(optimizer.param_names, chunk_size)  # checks chunk_size up front
    missing = [n for n in optimizer.param_names if n not in params]
    if missing:
        raise ModelError(f"no initial value given for parameter(s) {missing}")
    extra = [n for n in params if n not in set(optimizer.param_names)]
    if extra:
        raise ModelError(f"initial values given for {extra}, which are not optimizer parameters")
    inputs, outputs, nodes, values = [], [], [], {}
    for name in optimizer.param_names:
        arr = np.asarray(params[name])
        if arr.dtype not in (np.float16, np.float32, np.float64):
            raise ModelError(
                f"parameter {name!r} has dtype {arr.dtype}; only float tensors are trained"
            )
        elem = helper.np_dtype_to_tensor_dtype(arr.dtype)
        inputs.append(helper.make_tensor_value_info(name, elem, list(arr.shape)))
        inputs.append(helper.make_tensor_value_info(grad_name(name), elem, list(arr.shape)))
        values[name] = arr
    graph = helper.make_graph(nodes, "adamax_optimizer", inputs, outputs)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="adamax-onnx",
    )
    import onnx_ir as ir

    guard, overflow = guard_for(optimizer.param_names, None, skip_nonfinite, None)

    def contract() -> Contract:
        names = [grad_name(n) for n in optimizer.param_names]
        c = _contract("optimizer", optimizer, names, None, [], [])
        overflow.annotate(c)
        return c

    update = steps.update_steps(
        optimizer, bucket_size, guard, None, chunker if chunk_size else None
    )
    finish = steps.Finish(contract, values=lambda: {k: ir.tensor(v) for k, v in values.items()})
    return steps.optimizer_pipeline(update, finish)(model)
