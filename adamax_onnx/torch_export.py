"""``from_torch``: export a PyTorch module to ONNX the way training needs it.

torch is imported only inside :func:`from_torch`; the rest of adamax-onnx never needs it.
"""

from __future__ import annotations

import inspect
import io
import json
import re
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import onnx
from onnx import helper, numpy_helper

from .errors import ModelError
from .passes.names import KEEP_TIES_KEY

__all__ = ["from_torch"]

_SCOPE = re.compile(r"^/(.+)/Clip(?:_\d+)?$")


def from_torch(
    module: Any,
    example_inputs: Any,
    *,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
    mode: str = "eval",
    opset: int = 18,
    exporter: str = "torchscript",
) -> tuple[onnx.ModelProto, list[str]]:
    """Export ``module`` to an ONNX model that trains like the module, and its trained names.

    Exporter: torch's TorchScript exporter (``torch.onnx.export(..., dynamo=False)``) with
    ``do_constant_folding=False``. Measured on torch 2.13, it is the one that keeps a model
    trainable as it is: every parameter and buffer is an initializer under its
    ``named_parameters()`` / ``named_buffers()`` name, BatchNorm stays a BatchNormalization
    node (not folded into the Conv), LSTM/GRU stay LSTM/GRU nodes over the original weights,
    BatchNorm/Dropout follow ``training=TrainingMode.EVAL/TRAINING``, and ``dynamic_axes``
    names the batch and sequence axes. Its one defect, merging initializers of equal value
    into ``Identity`` aliases (``bn1.running_var = Identity(bn1.weight)`` in a fresh model), is
    undone here exactly: each alias is named after the torch tensor it stands for and becomes
    that tensor's own initializer again. Clip nodes that torch's hardtanh (``nn.ReLU6``,
    ``nn.Hardtanh``) became are written as ``Where(lo < x < hi, x, bound)``: the same values,
    and hardtanh's gradient, which is zero at the bounds (the Clip rule follows
    ``torch.clamp``, which passes it there; after a fresh BatchNorm exact zeros are common).

    ``exporter="dynamo"`` uses ``torch.onnx.export(..., dynamo=True, optimize=False)`` instead
    (eval mode only). Without its optimizer it keeps every name and merges nothing, and on the
    suite of ``tests/integration/test_from_torch_suite.py`` it trains like torch. It is not the
    default because in train mode it exports BatchNorm without ``training_mode`` (on running
    statistics: not torch's ``train()``), and with its default optimizer it folds BatchNorm
    into the Conv under the Conv's own name (undetectable), turns transposed weights into
    unnamed constants (``val_0``), makes two LayerNorms share one initializer and drops zero
    biases (a fresh BERT: 41 parameters become 28). Dynamic axes are ``torch.export.Dim.AUTO``, renamed as above.

    Args:
        module: a ``torch.nn.Module``.
        example_inputs: one tensor or a tuple of tensors (positional arguments of ``forward``).
        input_names: graph input names; default: the names of ``forward``'s parameters.
        output_names: graph output names; default ``["logits"]`` for one output, else
            ``output0``, ``output1``, ...
        dynamic_axes: as ``torch.onnx.export``'s; default: axis 0 of every input and output is
            ``"batch"``, and axis 1 of an integer input of rank >= 2 (token ids) is
            ``"sequence"``, as is axis 1 of an output of rank >= 3 with the same length.
        mode: ``"eval"`` (default; ``module.eval()``: BatchNorm on its running statistics,
            Dropout off) or ``"train"`` (``module.train()``: BatchNorm on batch statistics,
            Dropout on, trained as torch's ``train()`` by :func:`build_training_model`). The
            module's own mode and buffers are restored afterwards.
        opset: the ONNX opset (default 18).
        exporter: ``"torchscript"`` (default) or ``"dynamo"`` (eval mode only), see above.

    Returns:
        ``(model, names)``: the ONNX model, and the names of the module's parameters that
        require grad, in ``named_parameters()`` order (tied parameters once), ready for
        ``AdaMax(names)``. Parameters with ``requires_grad=False`` stay in the model, frozen.

    Raises:
        ImportError: torch is not installed.
        ModelError: a parameter or buffer the graph reads is not an initializer under its
            own name (the export cannot be trained as the module).
    """
    import torch

    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    if mode not in ("eval", "train"):
        raise ValueError(f"mode must be 'eval' or 'train', got {mode!r}")
    if exporter not in ("torchscript", "dynamo"):
        raise ValueError(f"exporter must be 'torchscript' or 'dynamo', got {exporter!r}")
    if exporter == "dynamo" and mode == "train":
        raise ValueError(
            "exporter='dynamo' exports BatchNorm in train mode without training_mode (on its "
            "running statistics, not as torch's train()): use the TorchScript exporter"
        )
    args = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    for k, a in enumerate(args):
        if not isinstance(a, torch.Tensor):
            raise TypeError(f"example_inputs[{k}] must be a torch.Tensor, got {type(a).__name__}")
    if input_names is None:
        params = [
            p.name
            for p in inspect.signature(module.forward).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        input_names = params[: len(args)] if len(params) >= len(args) else None
        if input_names is None:
            input_names = [f"input{k}" for k in range(len(args))]
    input_names = list(input_names)

    was_training = module.training
    saved = {n: b.detach().clone() for n, b in module.named_buffers()}
    try:
        module.train(mode == "train")
        with torch.no_grad():
            outs = module(*args)
        outs = outs if isinstance(outs, (tuple, list)) else (outs,)
        if output_names is None:
            output_names = (
                ["logits"] if len(outs) == 1 else [f"output{k}" for k in range(len(outs))]
            )
        output_names = list(output_names)
        if dynamic_axes is None:
            dynamic_axes = _default_axes(args, input_names, outs, output_names, torch)
        _restore(module, saved)
        if exporter == "dynamo":
            model = _dynamo_export(
                module, args, input_names, output_names, dynamic_axes, opset, torch
            )
    finally:
        _restore(module, saved)
        module.train(was_training)
    if exporter == "dynamo":
        return _finish(module, model, saved)
    try:
        module.train(mode == "train")
        buf = io.BytesIO()
        training = (
            torch.onnx.TrainingMode.TRAINING if mode == "train" else torch.onnx.TrainingMode.EVAL
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                args,
                buf,
                dynamo=False,
                export_params=True,
                do_constant_folding=False,
                keep_initializers_as_inputs=False,
                training=training,
                opset_version=opset,
                input_names=input_names,
                output_names=output_names,
                dynamic_axes={k: dict(v) for k, v in dynamic_axes.items()},
            )
    finally:
        _restore(module, saved)
        module.train(was_training)
    return _finish(module, onnx.load_from_string(buf.getvalue()), saved)


def _canonical_names(module: Any, model: onnx.ModelProto) -> None:
    """A tied parameter's initializer under the name ``named_parameters()`` gives it.

    ``named_parameters()`` lists a parameter shared by two modules once, under its first name
    (GPT-2: ``transformer.wte.weight``); the dynamo exporter may use another (``lm_head.weight``).
    """
    names: dict[int, list[str]] = {}
    for n, p in module.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(n)
    for n, b in module.named_buffers(remove_duplicate=False):
        names.setdefault(id(b), []).append(n)
    inits = {i.name: i for i in model.graph.initializer}
    rename = {}
    for aliases in names.values():
        canonical = aliases[0]
        if canonical in inits:
            continue
        present = [a for a in aliases[1:] if a in inits]
        if len(present) == 1:
            rename[present[0]] = canonical
    if not rename:
        return
    for name, target in rename.items():
        inits[name].name = target
    for node in model.graph.node:
        for k, name in enumerate(node.input):
            if name in rename:
                node.input[k] = rename[name]
    for vi in list(model.graph.input) + list(model.graph.value_info):
        if vi.name in rename:
            vi.name = rename[vi.name]


def _is_hardtanh(module: Any, node: onnx.NodeProto, torch: Any) -> bool:
    """True for a Clip node that torch's hardtanh (nn.ReLU6, nn.Hardtanh) was exported to."""
    if any("aten.hardtanh" in p.value for p in node.metadata_props):  # dynamo
        return True
    match = _SCOPE.match(node.name)  # TorchScript: "/features/features.1/conv/conv.0/Clip"
    if not match:
        return False
    # each scope is named relative to its parent's attribute: features.1 + conv.0 -> features.1.conv.0
    path, last = "", ""
    for seg in match.group(1).split("/"):
        if last and seg.startswith(last + "."):
            path = path[: len(path) - len(last)] + seg
        else:
            path = f"{path}.{seg}" if path else seg
        last = seg
    try:
        sub = module.get_submodule(path)
    except (AttributeError, ValueError):
        return False
    return isinstance(sub, torch.nn.Hardtanh)


def _hardtanh_as_where(module: Any, model: onnx.ModelProto, torch: Any) -> None:
    """Clip nodes from hardtanh become ``Where(lo < x < hi, x, Where(x <= lo, lo, hi))``.

    The same values, and torch's hardtanh gradient, which is zero at the bounds; the Clip
    gradient rule follows ``torch.clamp``, which passes it there. After a fresh BatchNorm
    exact zeros are common, so ReLU6 networks (mobilenet_v2) would train differently.
    """
    nodes = []
    for node in model.graph.node:
        if (
            node.op_type != "Clip"
            or node.domain not in ("", "ai.onnx")
            or len(node.input) != 3
            or not all(node.input)
            or not _is_hardtanh(module, node, torch)
        ):
            nodes.append(node)
            continue
        x, lo, hi = node.input
        base = node.name or node.output[0]
        out = {k: f"{base}/{k}" for k in ("above_lo", "below_hi", "inside", "at_lo", "bound")}
        nodes += [
            helper.make_node("Greater", [x, lo], [out["above_lo"]], name=out["above_lo"]),
            helper.make_node("Less", [x, hi], [out["below_hi"]], name=out["below_hi"]),
            helper.make_node(
                "And", [out["above_lo"], out["below_hi"]], [out["inside"]], name=out["inside"]
            ),
            helper.make_node("LessOrEqual", [x, lo], [out["at_lo"]], name=out["at_lo"]),
            helper.make_node("Where", [out["at_lo"], lo, hi], [out["bound"]], name=out["bound"]),
            helper.make_node(
                "Where", [out["inside"], x, out["bound"]], [node.output[0]], name=f"{base}/Where"
            ),
        ]
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def _finish(module: Any, model: onnx.ModelProto, saved: Mapping[str, Any]):
    import torch

    _canonical_names(module, model)
    _hardtanh_as_where(module, model, torch)
    # Tracing in training mode runs forward once, which moves BatchNorm's running statistics
    # before the exporter reads them: write back the module's values from before the export.
    for init in model.graph.initializer:
        if init.name in saved:
            value = saved[init.name].cpu().numpy()
            if list(value.shape) == list(init.dims):
                init.CopyFrom(numpy_helper.from_array(value.astype(init_dtype(init)), init.name))

    tensors = {n for n, _ in module.named_parameters()} | set(saved)
    # Exporter merges (Identity aliases named after a torch tensor) are undone; any other
    # sharing is the module's own (one layer applied twice) and is kept by the build.
    from .passes.ties import UntieTensors  # loads onnx_ir: on first use

    untier = UntieTensors()
    untier(model)
    keep = sorted(
        {t.source for t in untier.untied if not (t.kind == "alias" and t.tensor in tensors)}
    )
    model = UntieTensors(keep=keep)(model).model
    if keep:
        model.metadata_props.add(key=KEEP_TIES_KEY, value=json.dumps(keep))

    inits = {i.name for i in model.graph.initializer}
    read = {name for node in model.graph.node for name in node.input} | _subgraph_reads(model.graph)
    missing = sorted(n for n in tensors if n not in inits and n in read)
    if missing:  # pragma: no cover - the exporter options above keep every name
        raise ModelError(f"the export reads torch tensors {missing} under other names")
    names, unused = [], []
    for n, p in module.named_parameters():
        if not p.requires_grad:
            continue
        (names if n in inits and n in read else unused).append(n)
    if unused:
        warnings.warn(
            f"parameters {unused} are not read by the exported graph (unused by forward for "
            "these inputs) and are left out of the returned names",
            UserWarning,
            stacklevel=2,
        )
    # Value shapes for the gradient builder, which needs the rank of some tensors (the
    # TorchScript export of torchvision's ViT attention does not say it): best effort.
    try:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # the model stays as exported
        pass
    return model, names


def _dynamo_export(module, args, input_names, output_names, dynamic_axes, opset, torch):
    auto = torch.export.Dim.AUTO
    shapes = tuple(
        {axis: auto for axis in dynamic_axes.get(name, {})} or None
        for name, _ in zip(input_names, args, strict=False)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            args,
            dynamo=True,
            optimize=False,
            verbose=False,
            opset_version=opset,
            input_names=input_names,
            output_names=output_names,
            dynamic_shapes=shapes,
        )
    model = program.model_proto
    # Dim.AUTO gives dims torch's own names (s77): name them as dynamic_axes says, everywhere.
    rename: dict[str, str] = {}
    graph = model.graph
    for vi in list(graph.input) + list(graph.output):
        for axis, name in dynamic_axes.get(vi.name, {}).items():
            dims = vi.type.tensor_type.shape.dim
            if axis < len(dims) and dims[axis].dim_param:
                rename.setdefault(dims[axis].dim_param, name)
    for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
        for d in vi.type.tensor_type.shape.dim:
            if d.dim_param in rename:
                d.dim_param = rename[d.dim_param]
    return model


def init_dtype(init: onnx.TensorProto):
    return helper.tensor_dtype_to_np_dtype(init.data_type)


def _subgraph_reads(graph: onnx.GraphProto) -> set[str]:
    names: set[str] = set()
    for node in graph.node:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                names |= {i for n in sub.node for i in n.input} | _subgraph_reads(sub)
    return names


def _restore(module: Any, saved: Mapping[str, Any]) -> None:
    import torch

    with torch.no_grad():
        for n, b in module.named_buffers():
            if n in saved:
                b.copy_(saved[n])


def _default_axes(args, input_names, outs, output_names, torch) -> dict[str, dict[int, str]]:
    axes: dict[str, dict[int, str]] = {}
    seq_len = None
    for name, a in zip(input_names, args, strict=False):
        if a.dim() == 0:
            continue
        axes[name] = {0: "batch"}
        if a.dim() >= 2 and not a.is_floating_point() and not a.is_complex():
            axes[name][1] = "sequence"
            seq_len = a.shape[1]
    for name, o in zip(output_names, outs, strict=False):
        if not isinstance(o, torch.Tensor) or o.dim() == 0:
            continue
        axes[name] = {0: "batch"}
        if seq_len is not None and o.dim() >= 3 and o.shape[1] == seq_len:
            axes[name][1] = "sequence"
    return axes
