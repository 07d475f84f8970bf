"""Check a gradient rule against two independent references.

:func:`check_op` builds a one-op (or few-op) ONNX graph, reduces its outputs to a scalar loss
``sum_k sum(out_k * W_k)`` with fixed random weights ``W_k`` (so every output element gets a
different upstream gradient), differentiates it with :func:`passes.autodiff.differentiate` and
runs the gradient graph in onnxruntime in float32. The result is compared with

* float64 central differences of the same graph evaluated by ``onnx.reference`` (numpy, so
  independent of onnxruntime and of our rules), and
* optionally PyTorch autograd of a torch function written from the op's definition (float64).

The first input is given a symbolic batch dimension ``N`` unless ``batch=False``, so rules are
exercised with the shapes they meet in exported models.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import onnx.reference
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from adamax_onnx.passes.autodiff import differentiate

__all__ = [
    "away",
    "check_float_type",
    "check_graph",
    "check_op",
    "float_type_cases",
    "positive",
    "run_gradients",
    "symbolic_vs_static",
    "with_reference_ops",
]

_FLOATS = (np.float16, np.float32, np.float64)
_RNG = np.random.default_rng(1234)


def away(shape, lo: float = 0.2, hi: float = 1.5, rng=None) -> np.ndarray:
    """Random values with |x| in [lo, hi] (away from the kinks at 0)."""
    rng = _RNG if rng is None else rng
    mag = rng.uniform(lo, hi, size=shape)
    return np.asarray(mag * rng.choice([-1.0, 1.0], size=shape))


def positive(shape, lo: float = 0.3, hi: float = 2.0, rng=None) -> np.ndarray:
    """Random values in [lo, hi]."""
    rng = _RNG if rng is None else rng
    return np.asarray(rng.uniform(lo, hi, size=shape))


def _vi(name: str, arr: np.ndarray, dtype, batch: bool) -> onnx.ValueInfoProto:
    dims: list[Any] = list(arr.shape)
    if batch and dims:
        dims[0] = "N"
    return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), dims)


def _cast(arr: np.ndarray, dtype) -> np.ndarray:
    return arr.astype(dtype) if arr.dtype in _FLOATS else arr


def _graph(
    nodes: Sequence[onnx.NodeProto],
    inputs: Mapping[str, np.ndarray],
    consts: Mapping[str, np.ndarray],
    outputs: Sequence[str],
    weights: Mapping[str, np.ndarray] | None,
    dtype,
    opset: int,
    batch: bool,
) -> onnx.ModelProto:
    first = next(iter(inputs), None)
    g_inputs = [
        _vi(k, v, dtype if v.dtype in _FLOATS else v.dtype, batch and k == first)
        for k, v in inputs.items()
    ]
    inits = [numpy_helper.from_array(_cast(v, dtype), k) for k, v in consts.items()]
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    nodes = list(nodes)
    g_outputs = []
    # the loss reads outputs of known rank (exporters record it; onnx's shape inference loses
    # it through some function ops, e.g. GroupNormalization-21's Reshape to Shape(X))
    ranked = []
    if weights is None:
        g_outputs = [helper.make_tensor_value_info(o, elem, None) for o in outputs]
    else:
        terms = []
        for k, o in enumerate(outputs):
            w = f"loss.w{k}"
            ranked.append(helper.make_tensor_value_info(o, elem, [None] * weights[o].ndim))
            inits.append(numpy_helper.from_array(weights[o].astype(dtype), w))
            nodes.append(helper.make_node("Mul", [o, w], [f"loss.t{k}"]))
            nodes.append(helper.make_node("ReduceSum", [f"loss.t{k}"], [f"loss.s{k}"], keepdims=0))
            terms.append(f"loss.s{k}")
        nodes.append(helper.make_node("Sum", terms, ["loss"]))
        g_outputs = [helper.make_tensor_value_info("loss", elem, [])]
    graph = helper.make_graph(nodes, "gradcheck", g_inputs, g_outputs, inits, value_info=ranked)
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8
    )


def with_reference_ops(monkeypatch, *ops: type) -> None:
    """Evaluate the central differences with ``onnx.reference`` plus ``ops`` (kernels fixed
    where onnx.reference differs from onnxruntime), for the rest of the test."""
    evaluator = functools.partial(onnx.reference.ReferenceEvaluator, new_ops=list(ops))
    monkeypatch.setattr(sys.modules[__name__], "ReferenceEvaluator", evaluator)


def run_gradients(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray], wrt: Sequence[str]):
    """Differentiate ``model``'s ``loss`` w.r.t. ``wrt`` and run it in onnxruntime."""
    grad_model = differentiate(model, "loss", list(wrt))
    onnx.checker.check_model(grad_model, full_check=True)
    sess = ort.InferenceSession(
        grad_model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    names = [f"{w}_grad" for w in wrt]
    return dict(zip(wrt, sess.run(names, dict(feeds)), strict=True)), grad_model


def _central_differences(
    model: onnx.ModelProto, feeds: dict[str, np.ndarray], wrt: Sequence[str], eps: float
) -> dict[str, np.ndarray]:
    ref = ReferenceEvaluator(model)
    consts = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    out = {}
    for name in wrt:
        in_feeds = name in feeds
        base = (feeds[name] if in_feeds else consts[name]).astype(np.float64)
        grad = np.zeros_like(base)
        for idx in np.ndindex(base.shape):
            vals = []
            for sign in (1.0, -1.0):
                x = base.copy()
                x[idx] += sign * eps
                if in_feeds:
                    f = dict(feeds)
                    f[name] = x
                    vals.append(float(ref.run(["loss"], f)[0]))
                else:
                    m = onnx.ModelProto()
                    m.CopyFrom(model)
                    for i, init in enumerate(m.graph.initializer):
                        if init.name == name:
                            m.graph.initializer[i].CopyFrom(numpy_helper.from_array(x, name))
                    vals.append(float(ReferenceEvaluator(m).run(["loss"], feeds)[0]))
            grad[idx] = (vals[0] - vals[1]) / (2 * eps)
        out[name] = grad
    return out


def check_graph(
    nodes: Sequence[onnx.NodeProto],
    inputs: Mapping[str, np.ndarray],
    outputs: Sequence[str],
    *,
    consts: Mapping[str, np.ndarray] | None = None,
    wrt: Sequence[str] | None = None,
    torch_fn: Callable[..., Any] | None = None,
    opset: int = 17,
    batch: bool = True,
    rtol: float = 1e-4,
    atol: float = 1e-5,
    fd_rtol: float = 2e-3,
    fd_atol: float = 1e-4,
    fd_eps: float = 1e-6,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Check d(loss)/d(wrt) of a small graph; see the module docstring. Returns our gradients.

    Args:
        nodes: the forward nodes; ``inputs`` are graph inputs (the first with a symbolic batch
            dim), ``consts`` initializers (axes, shapes, indices: what must be constant).
        outputs: the forward outputs the loss reads (float tensors).
        wrt: tensors to differentiate with respect to (default: every float input).
        torch_fn: ``torch_fn(**tensors) -> output or tuple of outputs`` (same order as
            ``outputs``), given float64 torch tensors for every input and const by name.
    """
    consts = dict(consts or {})
    inputs = dict(inputs)
    if wrt is None:
        wrt = [k for k, v in inputs.items() if v.dtype in _FLOATS]
    rng = np.random.default_rng(seed)
    fwd32 = _graph(nodes, inputs, consts, outputs, None, np.float32, opset, batch)
    sess = ort.InferenceSession(fwd32.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds32 = {k: _cast(v, np.float32) for k, v in inputs.items()}
    outs = dict(zip(outputs, sess.run(list(outputs), feeds32), strict=True))
    weights = {o: rng.standard_normal(np.shape(v)).astype(np.float64) for o, v in outs.items()}

    loss32 = _graph(nodes, inputs, consts, outputs, weights, np.float32, opset, batch)
    ours, _ = run_gradients(loss32, feeds32, wrt)

    loss64 = _graph(nodes, inputs, consts, outputs, weights, np.float64, opset, batch)
    feeds64 = {k: _cast(v, np.float64) for k, v in inputs.items()}
    fd = _central_differences(loss64, feeds64, wrt, fd_eps)
    for name in wrt:
        scale = max(1.0, float(np.abs(fd[name]).max()))
        np.testing.assert_allclose(
            ours[name], fd[name], rtol=fd_rtol, atol=fd_atol * scale,
            err_msg=f"d loss / d {name}: ours vs float64 central differences",
        )

    if torch_fn is not None:
        import torch

        tensors = {}
        for k, v in {**inputs, **consts}.items():
            t = torch.tensor(_cast(v, np.float64))
            if k in wrt:
                t.requires_grad_(True)
            tensors[k] = t
        res = torch_fn(**tensors)
        res = res if isinstance(res, tuple) else (res,)
        loss = sum((r * torch.tensor(weights[o])).sum() for r, o in zip(res, outputs, strict=True))
        loss.backward()
        for name in wrt:
            ref = tensors[name].grad
            ref = np.zeros(inputs.get(name, consts.get(name)).shape) if ref is None else ref.numpy()
            scale = max(1.0, float(np.abs(ref).max()))
            np.testing.assert_allclose(
                ours[name], ref, rtol=rtol, atol=atol * scale,
                err_msg=f"d loss / d {name}: ours vs torch autograd",
            )
    return ours


def check_op(
    op_type: str,
    inputs: Mapping[str, np.ndarray],
    *,
    attrs: Mapping[str, Any] | None = None,
    consts: Mapping[str, np.ndarray] | None = None,
    order: Sequence[str] | None = None,
    num_outputs: int = 1,
    loss_outputs: Sequence[int] | None = None,
    **kwargs: Any,
) -> dict[str, np.ndarray]:
    """:func:`check_graph` for one node of ``op_type``.

    Args:
        inputs, consts: as in :func:`check_graph`; the node's inputs are ``order`` (default:
            the keys of ``inputs`` then ``consts``), ``""`` for an omitted optional input.
        num_outputs: outputs the node declares; ``loss_outputs`` those the loss reads
            (default: all).
    """
    consts = dict(consts or {})
    names = list(order) if order is not None else [*inputs, *consts]
    outs = [f"y{k}" for k in range(num_outputs)]
    node = helper.make_node(op_type, names, outs, name=f"{op_type}_node", **dict(attrs or {}))
    read = [outs[k] for k in (loss_outputs if loss_outputs is not None else range(num_outputs))]
    return check_graph([node], inputs, read, consts=consts, **kwargs)


# Re-exported for tests that build several nodes by hand.
make_node = helper.make_node
FLOAT = TensorProto.FLOAT


def symbolic_vs_static(node: onnx.NodeProto, x: np.ndarray, consts: Mapping, opset: int = 17):
    """Gradients of ``sum(node(x, consts) ** 2)`` with x's dims all symbolic but the channels
    (axis 1) equal those with x's dims static."""
    results = []
    for dims in (list(x.shape), ["N", x.shape[1], *[f"s{i}" for i in range(x.ndim - 2)]]):
        nodes = [
            node,
            helper.make_node("Mul", ["y", "y"], ["sq"]),
            helper.make_node("ReduceSum", ["sq"], ["loss"], keepdims=0),
        ]
        graph = helper.make_graph(
            nodes,
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
            [helper.make_tensor_value_info("loss", TensorProto.FLOAT, [])],
            [numpy_helper.from_array(v.astype(np.float32), k) for k, v in consts.items()],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        wrt = ["x", *[k for k, v in consts.items() if v.dtype.kind == "f"]]
        grads, _ = run_gradients(model, {"x": x.astype(np.float32)}, wrt)
        results.append(grads)
    for k in results[0]:
        np.testing.assert_allclose(results[1][k], results[0][k], rtol=1e-5, atol=1e-5)


def float_type_cases(cases: Sequence[tuple], no_double: Sequence[str] = ()) -> list:
    """pytest params ``(*case, dtype)`` for float64 and float16, less the ops in ``no_double``
    (onnxruntime's CPU provider has no double kernel for them: the forward cannot run)."""
    return [
        pytest.param(*case, dtype, id=f"{case[0]}-{name}")
        for case in cases
        for dtype, name in ((np.float64, "double"), (np.float16, "half"))
        if not (dtype == np.float64 and case[0] in no_double)
    ]


def check_float_type(
    op: str,
    xs: Sequence[np.ndarray],
    fn: Callable,
    dtype,
    consts: Mapping[str, float] | None = None,
    rng=None,
) -> None:
    """The gradient graph of ``op`` with inputs ``a`` (, ``b``) and ``consts`` of element type
    ``dtype`` runs in onnxruntime (the constants it emits follow the element type) and its
    gradients match torch autograd of ``fn`` in float64 (1e-9 for float64, 2e-2 for float16)."""
    import torch

    rng = _RNG if rng is None else rng
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    names = ["a", "b"][: len(xs)]
    inputs = [helper.make_tensor_value_info(n, elem, ["N", 3]) for n in names]
    consts = dict(consts or {})
    inits = [numpy_helper.from_array(np.array(v, dtype), k) for k, v in consts.items()]
    w = rng.standard_normal((2, 3))
    inits.append(numpy_helper.from_array(w.astype(dtype), "w"))
    nodes = [
        make_node(op, [*names, *consts], ["y"]),
        make_node("Mul", ["y", "w"], ["t"]),
        make_node("ReduceSum", ["t"], ["loss"], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "typed", inputs, [helper.make_tensor_value_info("loss", elem, [])], inits
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    grad_model = differentiate(model, "loss", names)
    onnx.checker.check_model(grad_model, full_check=True)
    sess = ort.InferenceSession(grad_model.SerializeToString(), providers=["CPUExecutionProvider"])
    xs = [x.astype(dtype) for x in xs]
    ours = sess.run([f"{n}_grad" for n in names], dict(zip(names, xs, strict=True)))
    ts = [torch.tensor(x.astype(np.float64), requires_grad=True) for x in xs]
    (fn(*ts) * torch.tensor(w.astype(dtype).astype(np.float64))).sum().backward()
    tol = 1e-9 if dtype == np.float64 else 2e-2
    for g, t in zip(ours, ts, strict=True):
        assert g.dtype == dtype
        np.testing.assert_allclose(g.astype(np.float64), t.grad.numpy(), rtol=tol, atol=tol)
