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

import onnx_ir as ir
from onnx import TensorProto
from onnx_ir.passes import PassResult

from .infra import BuildPass
from .irbuild import IRBuilder, inferred, sorted_attributes
from .names import DEFAULT_IGNORE_INDEX, LOG_PROB_NAME, LOSS_NAME, SCORES_NAME

__all__ = ["AttachLoss", "LOSS_NAME", "LOG_PROB_NAME", "SCORES_NAME", "DEFAULT_IGNORE_INDEX"]

_FLOATS = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE, ir.DataType.BFLOAT16)


def _dims(v: ir.Value) -> list | None:
    """Dims of a value (int, str or None each), None when its rank is unknown."""
    if v.shape is None:
        return None
    return [d if isinstance(d, int) else d.value for d in v.shape]


def _describe(v: ir.Value) -> str:
    if v.type is not None and not isinstance(v.type, ir.TensorType):
        kind = ir.serde.serialize_type(v.type).WhichOneof("value")
        return f"a non-tensor value ({kind})"
    elem = TensorProto.DataType.Name(int(v.dtype) if v.dtype is not None else 0)
    dims = _dims(v)
    shape = (
        "unknown shape" if dims is None else f"shape {[d if d is not None else '?' for d in dims]}"
    )
    return f"type {elem}, {shape}"


def _completed(model: ir.Model, v: ir.Value) -> ir.Value:
    """A value standing for ``v``, its type or shape completed by ONNX shape inference where
    ``v`` does not state it (``v`` itself, when it states both)."""
    if isinstance(v.type, ir.TensorType) and v.dtype != ir.DataType.UNDEFINED:
        if v.shape is not None:
            return v
    if v.type is not None and not isinstance(v.type, ir.TensorType):
        return v
    found = inferred(model).get(v.name)
    if found is None or not isinstance(found.type, ir.TensorType):
        return v
    return ir.Value(
        name=v.name,
        type=v.type if v.dtype not in (None, ir.DataType.UNDEFINED) else found.type,
        shape=v.shape if v.shape is not None else found.shape,
    )


class AttachLoss(BuildPass):
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

    def call(self, model: ir.Model) -> PassResult:
        self._check_options()
        graph = model.graph
        outputs = {o.name: o for o in graph.outputs}
        if self.loss not in ("cross_entropy", "mse"):
            self._check_named_loss(model, outputs)
            rest = [o for o in graph.outputs if o.name != self.loss]
            graph.outputs[:] = [outputs[self.loss], *rest]
            return PassResult(model, True)
        target = self._target(outputs)
        taken = {v.name for v in graph.inputs} | set(outputs) | set(graph.initializers)
        taken |= {o.name for n in graph for o in n.outputs}
        if self.label in taken:
            raise ValueError(f"label name {self.label!r} is already used in the model")
        g = IRBuilder(graph)
        g.reserve(self.label)
        g.reserve(LOSS_NAME)
        target = _completed(model, target)
        dims = _dims(target)
        if not isinstance(target.type, ir.TensorType) or target.dtype not in _FLOATS:
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
        logits = outputs[target.name]
        loss_type = target.dtype
        if loss_type in (ir.DataType.FLOAT16, ir.DataType.BFLOAT16):
            # As MindSpore's amp does: a half-precision network output is cast to float32 and
            # the loss is computed in float32 (the gradient builder also seeds in float32).
            logits = g.op("Cast", [logits], "loss.output_float32", to=ir.DataType.FLOAT)
            loss_type = ir.DataType.FLOAT
        if self.loss == "cross_entropy":
            label, loss, extra = self._cross_entropy(g, target, logits, dims, loss_type)
        else:
            label, loss, extra = self._mse(g, target, logits, loss_type)
        graph.inputs.append(label)
        graph.extend(g.nodes)
        loss.type, loss.shape = ir.TensorType(loss_type), ir.Shape([])
        graph.outputs[:] = [loss, *graph.outputs, *extra]
        return PassResult(model, True)

    def _check_named_loss(self, model: ir.Model, outputs: dict[str, ir.Value]) -> None:
        if self.loss not in outputs:
            raise ValueError(
                f"loss {self.loss!r} is neither 'cross_entropy', 'mse' nor an output of the "
                f"model (outputs: {sorted(outputs)})"
            )
        dims = _dims(outputs[self.loss])
        if dims is not None and (len(dims) > 1 or (len(dims) == 1 and dims[0] != 1)):
            raise ValueError(
                f"loss output {self.loss!r} must be a scalar, but its shape is "
                f"{[d or '' for d in dims]}"
            )
        v = _completed(model, outputs[self.loss])
        if isinstance(v.type, ir.TensorType):
            elem = v.dtype
        else:
            elem = None if v.type is None else -1
        if elem not in (None, ir.DataType.UNDEFINED) and elem not in _FLOATS:
            raise ValueError(
                f"loss output {self.loss!r} has {_describe(v)}; a loss must be a float scalar"
            )

    def _target(self, outputs: dict[str, ir.Value]) -> ir.Value:
        if self.output is None:
            if len(outputs) != 1:
                raise ValueError(
                    f"the model has {len(outputs)} outputs {sorted(outputs)}; "
                    "name the one the loss reads with output=..."
                )
            return next(iter(outputs.values()))
        if self.output not in outputs:
            raise ValueError(
                f"output {self.output!r} is not an output of the model ({sorted(outputs)})"
            )
        return outputs[self.output]

    def _cross_entropy(self, g: IRBuilder, target: ir.Value, logits, dims, loss_type):
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
        if rank > 2 and ignore is None:
            ignore = DEFAULT_IGNORE_INDEX
        if axis != 1:
            # class axis last (torch/HF token level) -> ONNX's class axis 1
            perm = [0, axis, *(i for i in range(1, rank) if i != axis)]
            logits = g.op("Transpose", [logits], SCORES_NAME, perm=perm)
            logits.type, logits.shape = ir.TensorType(loss_type), ir.Shape([dims[i] for i in perm])
        if ignore is not None:
            attrs["ignore_index"] = int(ignore)
        label = ir.Value(
            name=self.label, type=ir.TensorType(ir.DataType.INT64), shape=ir.Shape(label_dims)
        )
        g.reserve(LOG_PROB_NAME)
        node = ir.Node(
            "",
            "SoftmaxCrossEntropyLoss",
            [logits, label],
            attributes=sorted_attributes(attrs),
            num_outputs=2,
            name="loss/SoftmaxCrossEntropyLoss",
        )
        loss, log_prob = node.outputs
        loss.name, log_prob.name = LOSS_NAME, LOG_PROB_NAME
        log_prob.type = ir.TensorType(loss_type)
        g.nodes.append(node)
        return label, loss, [log_prob]

    def _mse(self, g: IRBuilder, target: ir.Value, logits, loss_type):
        label = ir.Value(name=self.label, type=target.type, shape=target.shape)
        label_float = label
        if loss_type != target.dtype:
            label_float = g.op("Cast", [label], "loss.label_float32", to=ir.DataType.FLOAT)
        diff = g.op("Sub", [logits, label_float], "loss.diff")
        sq = g.op("Mul", [diff, diff], "loss.squared")
        loss = g.op("ReduceMean", [sq], "loss", output=LOSS_NAME, keepdims=0)
        return label, loss, []
