"""Gradient rules of shape and layout ops (adamax_onnx/passes/autodiff/rules/shape.py) against
float64 central differences and torch autograd, with a symbolic batch dim.

(Over 400 lines: the tests of the one rule module they mirror, for Reshape, Transpose, Expand,
Tile, Concat, Split, Slice and Trilu.)
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.gradcheck import check_op

RNG = np.random.default_rng(0)
I64_MAX = np.iinfo(np.int64).max


def rand(*shape):
    return RNG.standard_normal(shape)


def i64(*v):
    return np.array(v, dtype=np.int64)


# -- pure reshapes ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("opset", "shape", "attrs"),
    [(opset, shape, {}) for opset in (13, 17) for shape in ([0, -1], [-1, 4, 3], [4, 2, 3])]
    + [(17, [2, 12], {"allowzero": 1})],  # allowzero is opset 14
)
def test_reshape(opset, shape, attrs):
    x = rand(2, 3, 4)
    target = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    check_op(
        "Reshape",
        {"x": x},
        consts={"s": i64(*shape)},
        attrs=attrs,
        opset=opset,
        torch_fn=lambda x, s: x.reshape(target),
    )


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_flatten(axis):
    x = rand(2, 3, 4)
    a = axis % 3

    def ref(x):
        return x.reshape(int(np.prod(x.shape[:a])), -1)

    check_op("Flatten", {"x": x}, attrs={"axis": axis}, torch_fn=ref)


@pytest.mark.parametrize("opset", [13, 18])
def test_squeeze_unsqueeze(opset):
    x = rand(2, 1, 3, 1)
    check_op(
        "Squeeze",
        {"x": x},
        consts={"a": i64(1, -1)},
        opset=opset,
        torch_fn=lambda x, a: x.squeeze(-1).squeeze(1),
    )
    # Without axes the result's rank depends on the run-time batch: keep the batch static here.
    check_op("Squeeze", {"x": x}, opset=opset, batch=False, torch_fn=lambda x: x.squeeze())
    x = rand(2, 3)
    check_op(
        "Unsqueeze",
        {"x": x},
        consts={"a": i64(0, -1)},
        opset=opset,
        torch_fn=lambda x, a: x[None, :, :, None],
    )


@pytest.mark.parametrize("perm", [None, [1, 2, 0], [0, 2, 1], [0, 1, 2]])
def test_transpose(perm):
    x = rand(2, 3, 4)
    attrs = {} if perm is None else {"perm": perm}
    p = perm or [2, 1, 0]
    check_op("Transpose", {"x": x}, attrs=attrs, torch_fn=lambda x: x.permute(*p))


# -- Expand and Tile --------------------------------------------------------------------------
@pytest.mark.parametrize("batch", [True, False])
@pytest.mark.parametrize(
    ("xshape", "shape"),
    [
        ((3, 1), (2, 3, 4)),  # rank grows; x's (symbolic) first dim is not broadcast
        ((1, 3), (4, 1, 3)),  # x's (symbolic) first dim is 1 at run time: broadcast
        ((2, 3), (3,)),  # target of lower rank
        ((2, 1, 3), (1, 4, 1)),
        ((2, 3), (2, 3)),  # nothing broadcast
    ],
)
def test_expand(batch, xshape, shape):
    x = rand(*xshape)
    out = np.broadcast_shapes(xshape, shape)
    check_op(
        "Expand",
        {"x": x},
        consts={"s": i64(*shape)},
        batch=batch,
        torch_fn=lambda x, s: x.expand(*out),
    )


@pytest.mark.parametrize("const", [True, False])
@pytest.mark.parametrize("reps", [(2, 3), (1, 2), (3, 1), (1, 1)])
def test_tile(const, reps):
    x = rand(2, 3)
    r = i64(*reps)
    if const:
        check_op("Tile", {"x": x}, consts={"r": r}, torch_fn=lambda x, r: x.repeat(*reps))
    else:
        check_op("Tile", {"x": x, "r": r}, torch_fn=lambda x, r: x.repeat(*reps))


def test_tile_rank3():
    x = rand(2, 1, 3)
    check_op("Tile", {"x": x}, consts={"r": i64(2, 4, 1)}, torch_fn=lambda x, r: x.repeat(2, 4, 1))


# -- Concat and Split -------------------------------------------------------------------------
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_concat(axis):
    shapes = {
        0: [(2, 3), (1, 3), (3, 3)],
        1: [(2, 1), (2, 3), (2, 2)],
        -1: [(2, 1), (2, 3), (2, 2)],
    }
    a, b, c = (rand(*s) for s in shapes[axis])
    check_op(
        "Concat",
        {"a": a, "b": b, "c": c},
        attrs={"axis": axis},
        torch_fn=lambda a, b, c: torch.cat([a, b, c], dim=axis),
    )


def test_concat_partial_wrt():
    a, b = rand(2, 3), rand(2, 2)
    check_op(
        "Concat",
        {"a": a, "b": b},
        attrs={"axis": 1},
        wrt=["b"],
        torch_fn=lambda a, b: torch.cat([a, b], dim=1),
    )


@pytest.mark.parametrize("opset", [13, 18])
@pytest.mark.parametrize("loss_outputs", [None, [0, 2], [1]])
def test_split_sizes(opset, loss_outputs):
    x = rand(2, 6)
    check_op(
        "Split",
        {"x": x},
        consts={"s": i64(1, 2, 3)},
        attrs={"axis": 1},
        num_outputs=3,
        loss_outputs=loss_outputs,
        opset=opset,
        torch_fn=lambda x, s: tuple(
            x.split([1, 2, 3], dim=1)[k] for k in (loss_outputs or [0, 1, 2])
        ),
    )


@pytest.mark.parametrize("loss_outputs", [None, [0, 2], [2]])
def test_split_num_outputs_opset18(loss_outputs):
    x = rand(7, 2)  # uneven: 3, 3, 1 along the symbolic batch axis
    check_op(
        "Split",
        {"x": x},
        attrs={"axis": 0, "num_outputs": 3},
        num_outputs=3,
        loss_outputs=loss_outputs,
        opset=18,
        torch_fn=lambda x: tuple(x.split(3, dim=0)[k] for k in (loss_outputs or [0, 1, 2])),
    )


def test_split_default_even():
    x = rand(2, 4)
    check_op(
        "Split",
        {"x": x},
        attrs={"axis": -1},
        num_outputs=2,
        opset=13,
        torch_fn=lambda x: tuple(x.split(2, dim=-1)),
    )


# -- Slice ------------------------------------------------------------------------------------
def _torch_slice(x, starts, ends, axes, steps):
    """Slice by the ONNX rules, with torch ops (flip for negative steps)."""
    for s, e, a, st in zip(starts, ends, axes, steps, strict=True):
        d = x.shape[a]
        idx = list(range(d))[
            slice(
                int(s) if s > -I64_MAX else None,
                None if e >= I64_MAX or e <= -I64_MAX else int(e),
                int(st),
            )
        ]
        x = x.index_select(a, torch.tensor(idx, dtype=torch.long))
    return x


SLICES = [
    # starts, ends, axes, steps
    ([1], [3], [1], None),
    ([0, 1], [1, -1], [0, 2], None),
    ([-3], [I64_MAX], [-1], None),  # negative start, clamped end
    ([1, 0], [1000, 2], None, None),  # axes omitted, ends clamped
    ([-1], [-100], [0], None),  # empty
    ([0], [5], [2], [2]),
    ([-1], [-I64_MAX], [2], [-1]),  # reversed
    ([3, 2], [0, -5], [2, 1], [-2, -1]),
    ([1], [2], [0], [1]),  # unit steps given
]


@pytest.mark.parametrize("case", SLICES)
@pytest.mark.parametrize("runtime", [False, True])
def test_slice(case, runtime):
    starts, ends, axes, steps = case
    x = rand(3, 4, 5)
    names = {"st": i64(*starts), "en": i64(*ends)}
    order = ["x", "st", "en"]
    if axes is not None or steps is not None:
        names["ax"] = i64(*(axes if axes is not None else range(len(starts))))
        order.append("ax")
    if steps is not None:
        names["sp"] = i64(*steps)
        order.append("sp")
    ax = axes if axes is not None else list(range(len(starts)))
    sp = steps or [1] * len(starts)

    def ref(x, **_):
        return _torch_slice(x, starts, ends, [a % 3 for a in ax], sp)

    if runtime:
        check_op("Slice", {"x": x, **names}, order=order, torch_fn=ref)
    else:
        check_op("Slice", {"x": x}, consts=names, order=order, torch_fn=ref)


def test_slice_symbolic_axis_negative_start():
    """Pad amounts computed at run time on the symbolic batch axis."""
    x = rand(4, 3)
    check_op(
        "Slice",
        {"x": x},
        consts={"st": i64(-3), "en": i64(-1), "ax": i64(0)},
        torch_fn=lambda x, **_: x[-3:-1],
    )
    check_op(
        "Slice",
        {"x": x},
        consts={"st": i64(1), "en": i64(I64_MAX), "ax": i64(0)},
        torch_fn=lambda x, **_: x[1:],
    )
    check_op(
        "Slice",
        {"x": x},
        consts={"st": i64(7), "en": i64(9), "ax": i64(0)},
        torch_fn=lambda x, **_: x[7:9],
    )


# -- Trilu ------------------------------------------------------------------------------------
@pytest.mark.parametrize("upper", [0, 1])
@pytest.mark.parametrize("k", [None, 1, -1])
def test_trilu(upper, k):
    x = rand(2, 3, 4)
    fn = torch.triu if upper else torch.tril
    if k is None:
        check_op("Trilu", {"x": x}, attrs={"upper": upper}, torch_fn=lambda x: fn(x))
    else:
        check_op(
            "Trilu",
            {"x": x},
            consts={"k": i64(k).reshape(())},
            attrs={"upper": upper},
            torch_fn=lambda x, k: fn(x, int(k)),
        )


def test_expand_runtime_shape():
    """The target shape is an input: the result's dims are unknown until run time."""
    x = rand(3, 1)
    check_op("Expand", {"x": x, "s": i64(2, 1, 4)}, torch_fn=lambda x, s: x.expand(2, 3, 4))


@pytest.mark.parametrize("opset", [21, 25])
def test_newest_opsets(opset):
    """Every rule of this family at the newest opsets onnxruntime runs."""
    x = rand(2, 3, 4)
    check_op(
        "Reshape",
        {"x": x},
        consts={"s": i64(0, -1)},
        opset=opset,
        torch_fn=lambda x, s: x.reshape(x.shape[0], -1),
    )
    check_op(
        "Flatten", {"x": x}, attrs={"axis": 2}, opset=opset, torch_fn=lambda x: x.reshape(-1, 4)
    )
    check_op(
        "Squeeze",
        {"x": rand(2, 1, 3)},
        consts={"a": i64(1)},
        opset=opset,
        torch_fn=lambda x, a: x.squeeze(1),
    )
    check_op(
        "Unsqueeze",
        {"x": x},
        consts={"a": i64(1)},
        opset=opset,
        torch_fn=lambda x, a: x.unsqueeze(1),
    )
    check_op(
        "Transpose",
        {"x": x},
        attrs={"perm": [2, 0, 1]},
        opset=opset,
        torch_fn=lambda x: x.permute(2, 0, 1),
    )
    check_op(
        "Expand",
        {"x": rand(3, 1)},
        consts={"s": i64(2, 3, 4)},
        opset=opset,
        torch_fn=lambda x, s: x.expand(2, 3, 4),
    )
    check_op(
        "Tile",
        {"x": x},
        consts={"r": i64(1, 2, 1)},
        opset=opset,
        torch_fn=lambda x, r: x.repeat(1, 2, 1),
    )
    check_op(
        "Concat",
        {"a": x, "b": rand(2, 1, 4)},
        attrs={"axis": 1},
        opset=opset,
        torch_fn=lambda a, b: torch.cat([a, b], 1),
    )
    check_op(
        "Split",
        {"x": x},
        attrs={"axis": 2, "num_outputs": 3},
        num_outputs=3,
        loss_outputs=[0, 2],
        opset=opset,
        torch_fn=lambda x: (x[:, :, :2], x[:, :, 3:]),
    )
    check_op(
        "Slice",
        {"x": x},
        consts={"a": i64(3), "b": i64(0), "c": i64(2), "d": i64(-2)},
        opset=opset,
        torch_fn=lambda x, **_: x[:, :, [3, 1]],
    )
    check_op(
        "Slice",
        {"x": x},
        consts={"a": i64(1), "b": i64(3), "c": i64(1)},
        opset=opset,
        torch_fn=lambda x, **_: x[:, 1:3],
    )
    check_op("Trilu", {"x": x}, attrs={"upper": 0}, opset=opset, torch_fn=torch.tril)


@pytest.mark.parametrize("op", ["Add", "Mul"])
def test_sum_to_symbolic_dim_broadcast_at_run_time(op):
    """ctx.sum_to: x's symbolic batch dim is 1 at run time and broadcast against b's 4."""
    x, b = rand(1, 3), rand(4, 3)
    fn = (lambda x, b: x + b) if op == "Add" else (lambda x, b: x * b)
    check_op(op, {"x": x, "b": b}, torch_fn=fn)
    check_op(op, {"x": rand(2, 1, 3), "b": rand(4, 1)}, torch_fn=fn)


class _Fragment(torch.nn.Module):
    """Embedding, class token, positions, attention-like products: the shape and indexing ops
    of an exported transformer."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(11, 8)
        self.cls = torch.nn.Parameter(torch.randn(1, 1, 8))
        self.pos = torch.nn.Parameter(torch.randn(1, 16, 8))
        self.w = torch.nn.Parameter(torch.randn(8, 8))

    def forward(self, ids):
        h = self.emb(ids)
        b, t = ids.shape
        h = torch.cat([self.cls.expand(b, -1, -1), h], dim=1)
        h = h + self.pos[:, : t + 1]
        q, k = h.split(4, dim=-1)
        h = h + torch.tril(q @ k.transpose(1, 2)) @ h
        h = h.reshape(b, -1, 2, 4).permute(0, 2, 1, 3).reshape(b, -1, 8).repeat(1, 2, 1)
        top = h.flatten(1).topk(3, dim=-1).values
        z = (h @ self.w).cumsum(1)
        return z[:, 0] + z[:, -1] + top[:, 1:2] + h[:, 2, ::2].sum(-1, keepdim=True)


@pytest.mark.parametrize("opset", [14, 18])
def test_exported_transformer_fragment(opset):
    """torch.onnx.export (TorchScript) of _Fragment: every parameter's gradient equals torch's."""
    import io
    import warnings

    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    from adamax_onnx.passes.autodiff import differentiate

    torch.manual_seed(0)
    model = _Fragment().eval()
    ids = torch.tensor([[1, 4, 1, 7], [0, 10, 3, 3], [5, 5, 5, 2]])
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (ids,),
            buf,
            dynamo=False,
            do_constant_folding=False,
            opset_version=opset,
            input_names=["ids"],
            output_names=["out"],
            dynamic_axes={"ids": {0: "B", 1: "T"}},
        )
    proto = onnx.load_from_string(buf.getvalue())
    weights = RNG.standard_normal((3, 8)).astype(np.float32)
    g = proto.graph
    g.initializer.append(numpy_helper.from_array(weights, "loss.w"))
    g.node.extend(
        [
            helper.make_node("Mul", ["out", "loss.w"], ["loss.t"]),
            helper.make_node("ReduceSum", ["loss.t"], ["loss"], keepdims=0),
        ]
    )
    g.output.append(helper.make_tensor_value_info("loss", onnx.TensorProto.FLOAT, []))
    named = dict(model.named_parameters())
    params = [i.name for i in g.initializer if i.name in named]
    assert sorted(params) == sorted(named)
    grad_model = differentiate(proto, "loss", params)
    sess = ort.InferenceSession(grad_model.SerializeToString(), providers=["CPUExecutionProvider"])
    ours = sess.run([f"{p}_grad" for p in params], {"ids": ids.numpy()})
    (model(ids) * torch.tensor(weights)).sum().backward()
    for name, grad in zip(params, ours, strict=True):
        ref = named[name].grad.numpy()
        np.testing.assert_allclose(
            grad, ref, rtol=1e-4, atol=1e-5 * max(1, np.abs(ref).max()), err_msg=name
        )
