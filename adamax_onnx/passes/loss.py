"""Loss pass: attach a scalar training loss to an inference model.

``AttachLoss("cross_entropy", label="labels")`` adds an int64 label input and a mean
``SoftmaxCrossEntropyLoss`` over the model output:

* ``[B, C]`` scores, ``[B]`` labels: the class axis is 1, no ignore_index (unless one is given);
* ``[B, T, V]`` scores, ``[B, T]`` labels: token-level cross entropy with the class axis
  **last**, as torch's ``F.cross_entropy(logits.flatten(0, -2),
  labels.flatten())`` and Hugging Face compute it; labels equal to ``ignore_index`` (default
  -100) are left out, and the mean is over the tokens that count. The scores are transposed to
  ONNX's ``[B, V, T]`` layout (``loss.scores``) before the op;
* rank 4 and more (``[B, C, H, W]`` or ``[B, H, W, C]``): ``class_axis`` must say which.

``"mse"`` adds a float label input of the output's type and shape and the mean squared error (a
float16/bfloat16 output is cast to float32 first, as MindSpore's amp does, so the loss is always
float32 or float64); any other string names an existing scalar float output to use as the loss.
Afterwards the graph's first output is the scalar ``loss`` tensor and the model's own outputs
follow it, unchanged.

Every combination that could not run is refused here, at build time, with a ``ValueError``
naming the output, its type and shape: cross entropy on an output of unknown rank or rank < 2
or of a non-float type, mse on a non-float output, a named loss output that is not a float
scalar.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from .base import GraphPass, PassResult
from .builder import GraphBuilder

__all__ = ["AttachLoss", "LOSS_NAME", "LOG_PROB_NAME", "SCORES_NAME", "DEFAULT_IGNORE_INDEX"]

LOSS_NAME = "loss"
LOG_PROB_NAME = "loss.log_prob"
SCORES_NAME = "loss.scores"
#: torch's and Hugging Face's ignore_index, the default of token-level cross entropy.
DEFAULT_IGNORE_INDEX = -100

_FLOATS = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16)


def _dims(vi: onnx.ValueInfoProto) -> list | None:
    """Dims of a value info (int, str or None each), None when its rank is unknown."""
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]


def _describe(vi: onnx.ValueInfoProto) -> str:
    t = vi.type
    if not t.HasField("tensor_type"):
        return f"a non-tensor value ({t.WhichOneof('value')})"
    elem = TensorProto.DataType.Name(t.tensor_type.elem_type)
    dims = _dims(vi)
    shape = (
        "unknown shape" if dims is None else f"shape {[d if d is not None else '?' for d in dims]}"
    )
    return f"type {elem}, {shape}"


def _inferred(model: onnx.ModelProto, name: str, vi: onnx.ValueInfoProto) -> onnx.ValueInfoProto:
    """``vi`` completed by ONNX shape inference where its type or shape is missing."""
    t = vi.type.tensor_type
    if vi.type.HasField("tensor_type") and t.elem_type and t.HasField("shape"):
        return vi
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:
        return vi
    for cand in list(inferred.graph.output) + list(inferred.graph.value_info):
        if cand.name == name and cand.type.HasField("tensor_type"):
            out = onnx.ValueInfoProto()
            out.CopyFrom(vi)
            ct = cand.type.tensor_type
            if not t.elem_type and ct.elem_type:
                out.type.tensor_type.elem_type = ct.elem_type
            if not t.HasField("shape") and ct.HasField("shape"):
                out.type.tensor_type.shape.CopyFrom(ct.shape)
            return out
    return vi


class AttachLoss(GraphPass):
    """Attach ``loss`` ("cross_entropy", "mse" or an existing output name) to the graph.

    Args:
        loss: the loss kind, or the name of an existing scalar output.
        label: name of the label input to add (built-in losses only).
        output: which model output the loss reads; defaults to the only output.
        ignore_index: cross entropy only: the label value that is left out of the loss and of
            the mean. None (default): -100 for token-level scores (rank >= 3), none for
            ``[B, C]`` scores (which are built exactly as before); an int applies to both.
        class_axis: cross entropy only: the class axis of the scores. None (default): 1 for
            ``[B, C]``, the last for ``[B, T, V]``; rank 4 and more must say it (1 for torch's
            and ONNX's ``[B, C, H, W]``, -1 for classes last). Labels have the scores' shape
            without that axis.
    """

    def __init__(
        self,
        loss: str = "cross_entropy",
        label: str = "labels",
        output: str | None = None,
        ignore_index: int | None = None,
        class_axis: int | None = None,
    ):
        self.loss, self.label, self.output = loss, label, output
        self.ignore_index, self.class_axis = ignore_index, class_axis

    def _check_options(self) -> None:
        for name in ("class_axis", "ignore_index"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"{name} must be an int or None, got {value!r}")

    def call(self, model: onnx.ModelProto) -> PassResult:
        self._check_options()
        graph = model.graph
        outputs = {o.name: o for o in graph.output}
        if self.loss not in ("cross_entropy", "mse"):
            if self.loss not in outputs:
                raise ValueError(
                    f"loss {self.loss!r} is neither 'cross_entropy', 'mse' nor an output of the "
                    f"model (outputs: {sorted(outputs)})"
                )
            dims = outputs[self.loss].type.tensor_type.shape.dim
            if outputs[self.loss].type.tensor_type.HasField("shape") and (
                len(dims) > 1 or (len(dims) == 1 and dims[0].dim_value != 1)
            ):
                raise ValueError(
                    f"loss output {self.loss!r} must be a scalar, but its shape is "
                    f"{[d.dim_value or d.dim_param for d in dims]}"
                )
            vi = _inferred(model, self.loss, outputs[self.loss])
            elem = vi.type.tensor_type.elem_type if vi.type.HasField("tensor_type") else -1
            if elem and elem not in _FLOATS:
                raise ValueError(
                    f"loss output {self.loss!r} has {_describe(vi)}; a loss must be a float scalar"
                )
            rest = [o for o in graph.output if o.name != self.loss]
            del graph.output[:]
            graph.output.extend([outputs[self.loss], *rest])
            return PassResult(model, True)

        if self.output is None:
            if len(graph.output) != 1:
                raise ValueError(
                    f"the model has {len(graph.output)} outputs {sorted(outputs)}; "
                    "name the one the loss reads with output=..."
                )
            target = graph.output[0]
        elif self.output not in outputs:
            raise ValueError(
                f"output {self.output!r} is not an output of the model ({sorted(outputs)})"
            )
        else:
            target = outputs[self.output]
        taken = {i.name for i in graph.input} | set(outputs) | {i.name for i in graph.initializer}
        taken |= {o for n in graph.node for o in n.output}
        if self.label in taken:
            raise ValueError(f"label name {self.label!r} is already used in the model")
        g = GraphBuilder(taken)
        g.reserve(self.label)
        g.reserve(LOSS_NAME)
        target = _inferred(model, target.name, target)
        t = target.type.tensor_type
        dims = _dims(target)
        if not target.type.HasField("tensor_type") or t.elem_type not in _FLOATS:
            raise ValueError(
                f"loss {self.loss!r} reads output {target.name!r}, which has "
                f"{_describe(target)}; it needs float scores (float, double, float16, bfloat16)"
            )
        if self.loss == "cross_entropy" and (dims is None or len(dims) < 2):
            raise ValueError(
                f"loss 'cross_entropy' reads output {target.name!r}, which has "
                f"{_describe(target)}; it needs [B, C] scores (labels [B]) or [B, T, V] scores "
                "(labels [B, T], class axis last)"
                + (
                    ": give the output a shape (or the inputs, for shape inference)"
                    if dims is None
                    else ""
                )
            )
        logits = target.name
        loss_type = t.elem_type
        if t.elem_type in (TensorProto.FLOAT16, TensorProto.BFLOAT16):
            # As MindSpore's amp does: a half-precision network output is cast to float32 and
            # the loss is computed in float32 (the gradient builder also seeds in float32).
            logits = g.op("Cast", [target.name], "loss.output_float32", to=TensorProto.FLOAT)
            loss_type = TensorProto.FLOAT
        if self.loss == "cross_entropy":
            rank = len(dims)
            ignore = self.ignore_index
            attrs: dict = {"reduction": "mean"}
            axis = self.class_axis
            if axis is None:
                if rank > 3:
                    raise ValueError(
                        f"loss 'cross_entropy' reads output {target.name!r} of "
                        f"{_describe(target)}: with rank {rank} the class axis is ambiguous; "
                        "say class_axis=1 (torch's and ONNX's [B, C, H, W] layout, labels "
                        "[B, H, W]) or class_axis=-1 (classes last, labels [B, H, W])"
                    )
                axis = 1 if rank == 2 else rank - 1
            elif not -rank <= axis < rank or axis % rank == 0:
                raise ValueError(
                    f"class_axis {axis} is not a class axis of output {target.name!r} "
                    f"({_describe(target)}): it must be one of 1..{rank - 1} (or negative)"
                )
            axis %= rank
            label_dims = [
                d if d is not None else (f"{self.label}_dim{i}" if i else "N")
                for i, d in enumerate(dims)
                if i != axis
            ]
            value_info = []
            if rank > 2 and ignore is None:
                ignore = DEFAULT_IGNORE_INDEX
            if axis != 1:
                # class axis last (torch/HF token level) -> ONNX's class axis 1
                perm = [0, axis, *(i for i in range(1, rank) if i != axis)]
                logits = g.op("Transpose", [logits], SCORES_NAME, perm=perm)
                value_info.append(
                    helper.make_tensor_value_info(logits, loss_type, [dims[i] for i in perm])
                )
            if ignore is not None:
                attrs["ignore_index"] = int(ignore)
            label_vi = helper.make_tensor_value_info(self.label, TensorProto.INT64, label_dims)
            g.reserve(LOG_PROB_NAME)
            g.nodes.append(
                helper.make_node(
                    "SoftmaxCrossEntropyLoss",
                    [logits, self.label],
                    [LOSS_NAME, LOG_PROB_NAME],
                    name="loss/SoftmaxCrossEntropyLoss",
                    **attrs,
                )
            )
            graph.value_info.extend(value_info)
            extra = [helper.make_tensor_value_info(LOG_PROB_NAME, loss_type, None)]
        else:
            label_vi = onnx.ValueInfoProto()
            label_vi.CopyFrom(target)
            label_vi.name = self.label
            label = self.label
            if loss_type != t.elem_type:
                label = g.op("Cast", [self.label], "loss.label_float32", to=TensorProto.FLOAT)
            diff = g.op("Sub", [logits, label], "loss.diff")
            sq = g.op("Mul", [diff, diff], "loss.squared")
            g.op("ReduceMean", [sq], "loss", output=LOSS_NAME, keepdims=0)
            extra = []
        graph.input.append(label_vi)
        graph.node.extend(g.nodes)
        graph.initializer.extend(g.initializers)
        loss_vi = helper.make_tensor_value_info(LOSS_NAME, loss_type, [])
        rest = list(graph.output)
        del graph.output[:]
        graph.output.extend([loss_vi, *rest, *extra])
        return PassResult(model, True)
