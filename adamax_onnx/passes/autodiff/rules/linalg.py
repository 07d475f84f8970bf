"""Gradients of matrix products: MatMul, Gemm, Einsum."""

from __future__ import annotations

from ..errors import Unsupported
from ..registry import rule


def _swap_last(ctx, v, rank):
    """``v`` with its last two axes swapped."""
    perm = [*range(rank - 2), rank - 1, rank - 2]
    return ctx.op("Transpose", v, perm=perm)


def _sum_leading(ctx, g, axes, lead):
    """ReduceSum ``g`` over ``axes`` (sorted), dropping the first ``lead`` axes and keeping the
    others (size 1): numpy broadcasting undone for an operand with ``lead`` fewer axes."""
    if not axes:
        return g
    if all(a < lead for a in axes):
        return ctx.reduce_sum(g, axes, keepdims=False)
    g = ctx.reduce_sum(g, axes, keepdims=True)
    return ctx.squeeze(g, list(range(lead))) if lead else g


def _broadcast_axes(x_dims, others_dims, out_rank):
    """Axes of a broadcast result (rank ``out_rank``) to sum for operand dims ``x_dims``.

    ``others_dims``: the dims of the other operands (same alignment, to the right). An axis is
    summed when ``x`` lacks it, or has a static 1 where some other operand does not (a symbolic
    dim is taken as not broadcast, as :meth:`GradContext.sum_to` does).
    """
    lead = out_rank - len(x_dims)
    axes = list(range(lead))
    for k, d in enumerate(x_dims):
        if d != 1:
            continue
        pos = lead + k
        for od in others_dims:
            j = pos - (out_rank - len(od))
            if j >= 0 and od[j] != 1:
                axes.append(pos)
                break
    return axes, lead


def _dims(ctx, v):
    dims = ctx.dims(v)
    if dims is None:
        raise Unsupported(f"the rank of tensor {v.name!r} is unknown")
    return dims


@rule("MatMul")
def matmul(ctx, dys):
    """Y = A @ B with numpy semantics: 1-D operands, batch dims broadcast."""
    (dy,) = dys
    a, b = ctx.x(0), ctx.x(1)
    a_dims, b_dims = _dims(ctx, a), _dims(ctx, b)
    ra, rb = len(a_dims), len(b_dims)
    if ra == 0 or rb == 0:
        raise Unsupported("MatMul of a 0-d tensor")
    da = db = None
    need_a, need_b = ctx.needs(0), ctx.needs(1)
    if ra == 1 and rb == 1:  # dot product: dy is a scalar
        da = ctx.op("Mul", dy, b) if need_a else None
        db = ctx.op("Mul", dy, a) if need_b else None
        return [da, db]
    if ra == 1:  # [K] @ [..., K, N] -> [..., N]
        if need_a:
            if rb == 2:
                da = ctx.op("MatMul", b, dy)
            else:
                t = ctx.op("MatMul", b, ctx.unsqueeze(dy, [-1]))  # [..., K, 1]
                da = ctx.reduce_sum(t, [*range(rb - 2), rb - 1], keepdims=False)
        if need_b:  # outer product, batch dims are B's own
            db = ctx.op("Mul", ctx.unsqueeze(a, [1]), ctx.unsqueeze(dy, [-2]))
        return [da, db]
    if rb == 1:  # [..., M, K] @ [K] -> [..., M]
        if need_a:
            da = ctx.op("Mul", ctx.unsqueeze(dy, [-1]), b)
        if need_b:
            if ra == 2:
                db = ctx.op("MatMul", dy, a)
            else:
                flat_a = ctx.op("Flatten", a, axis=ra - 1)  # [B*M, K]
                db = ctx.op("MatMul", ctx.reshape(dy, [-1]), flat_a)
        return [da, db]

    # Both at least 2-D: batch dims broadcast.
    out_rank = max(ra, rb)
    if need_a:
        if ra == 2 and rb == 2:
            da = ctx.op("Gemm", dy, b, transB=1)
        else:
            t = ctx.op("MatMul", dy, _swap_last(ctx, b, rb))  # [batch..., M, K]
            axes, lead = _broadcast_axes(a_dims[:-2], [b_dims[:-2]], out_rank - 2)
            da = _sum_leading(ctx, t, axes, lead)
    if need_b:
        if rb == 2 and ra == 2:
            db = ctx.op("Gemm", a, dy, transA=1)
        elif rb == 2:
            # Linear layer over a batch: one [K, B*M] @ [B*M, N] product, no batched sum.
            flat_a = ctx.op("Flatten", a, axis=ra - 1)
            flat_dy = ctx.op("Flatten", dy, axis=ra - 1)
            db = ctx.op("Gemm", flat_a, flat_dy, transA=1)
        else:
            t = ctx.op("MatMul", _swap_last(ctx, a, ra), dy)  # [batch..., K, N]
            axes, lead = _broadcast_axes(b_dims[:-2], [a_dims[:-2]], out_rank - 2)
            db = _sum_leading(ctx, t, axes, lead)
    return [da, db]


@rule("Gemm")
def gemm(ctx, dys):
    """Y = alpha * op(A) @ op(B) + beta * C, op = transpose when transA/transB."""
    (dy,) = dys
    a, b, c = ctx.x(0), ctx.x(1), ctx.x(2)
    alpha, beta = float(ctx.attr("alpha", 1.0)), float(ctx.attr("beta", 1.0))
    ta, tb = int(ctx.attr("transA", 0)), int(ctx.attr("transB", 0))
    out = [None, None, None]
    if ctx.needs(0):
        # dA = alpha * dY @ op(B)^T, transposed back when transA.
        if ta:
            out[0] = ctx.op("Gemm", b, dy, alpha=alpha, transA=tb, transB=1)
        else:
            out[0] = ctx.op("Gemm", dy, b, alpha=alpha, transA=0, transB=1 - tb)
    if ctx.needs(1):
        if tb:
            out[1] = ctx.op("Gemm", dy, a, alpha=alpha, transA=1, transB=ta)
        else:
            out[1] = ctx.op("Gemm", a, dy, alpha=alpha, transA=1 - ta, transB=0)
    if c is not None and ctx.needs(2):
        # C broadcasts (unidirectionally) to Y [M, N]: scalar, [N], [1, N], [M, 1], [M, N].
        y = ctx.y(0)
        c_dims = _dims(ctx, c)
        y_dims = ctx.dims(y) if y is not None else None
        if y_dims is None:
            y_dims = [None, None]
        axes, lead = _broadcast_axes(c_dims, [y_dims], 2)
        g = _sum_leading(ctx, dy, axes, lead)
        out[2] = g if beta == 1.0 else ctx.op("Mul", g, ctx.scalar(beta, dy))
    return out


# -- Einsum ----------------------------------------------------------------------------------

_ELL = "..."


def _parse_einsum(equation):
    """(input terms, output term) of an equation; the implicit output made explicit."""
    eq = equation.replace(" ", "")
    if "->" in eq:
        lhs, rhs = eq.split("->")
    else:
        lhs, rhs = eq, None
    terms = lhs.split(",")
    for t in [*terms, rhs or ""]:
        letters = t.replace(_ELL, "", 1)
        if not all(ch.isalpha() for ch in letters) or _ELL in letters or "." in letters:
            raise Unsupported(f"cannot parse the einsum equation {equation!r}")
    if rhs is None:
        letters = [ch for t in terms for ch in t.replace(_ELL, "")]
        once = sorted(ch for ch in set(letters) if letters.count(ch) == 1)
        rhs = (_ELL if any(_ELL in t for t in terms) else "") + "".join(once)
    return terms, rhs


def _letters(term):
    return term.replace(_ELL, "")


@rule("Einsum")
def einsum(ctx, dys):
    """dX_i = Einsum(dY, X_j (j != i) -> X_i's subscripts).

    Indices of X_i found in no other operand nor in the output were summed by the forward:
    their gradient is broadcast back (Unsqueeze + Expand). Ellipsis dims that X_i lacks or
    broadcasts are summed. A repeated index within X_i (a diagonal) is not supported.
    """
    (dy,) = dys
    terms, rhs = _parse_einsum(ctx.attr("equation", ""))
    xs = [ctx.x(i) for i in range(len(terms))]
    if len(terms) != len(ctx.inputs) or any(x is None for x in xs):
        raise Unsupported("the einsum equation does not match the inputs")
    has_ell = [_ELL in t for t in terms]
    if any(has_ell) and _ELL not in rhs:
        raise Unsupported("an ellipsis in the inputs but not in the output")
    if any(_ELL in t and not t.startswith(_ELL) for t in [*terms, rhs]):
        raise Unsupported("an ellipsis that does not lead its subscripts")
    if len(set(_letters(rhs))) != len(_letters(rhs)):
        raise Unsupported("a repeated index in the output")
    dims = [_dims(ctx, x) if has_ell[i] else None for i, x in enumerate(xs)]
    ell_dims = []  # per operand: its ellipsis dims (empty when it has none)
    for i, t in enumerate(terms):
        if has_ell[i]:
            n = len(dims[i]) - len(_letters(t))
            if n < 0:
                raise Unsupported(f"operand {i} has fewer dims than einsum subscripts")
            ell_dims.append(dims[i][:n])
        else:
            ell_dims.append([])
    out_ell = max((len(e) for e in ell_dims), default=0)
    scalar_dy = rhs == ""

    grads = []
    for i, (x, term) in enumerate(zip(xs, terms, strict=True)):
        if not ctx.needs(i):
            grads.append(None)
            continue
        s = _letters(term)
        if len(set(s)) != len(s):
            raise Unsupported(f"the repeated index in {term!r} (a diagonal)")
        others = [j for j in range(len(terms)) if j != i]
        seen = set(_letters(rhs)) | {ch for j in others for ch in _letters(terms[j])}
        kept = "".join(ch for ch in s if ch in seen)
        missing = [ch for ch in s if ch not in seen]

        ins, subs = [], []
        if not scalar_dy:
            ins.append(dy)
            subs.append(rhs)
        for j in others:
            ins.append(xs[j])
            subs.append(terms[j])
        g_ell = any(_ELL in sub for sub in subs)
        g_term = (_ELL if g_ell else "") + kept
        if not ins:
            g = dy
        elif len(ins) == 1 and _letters(subs[0]) == kept and (_ELL in subs[0]) == g_ell:
            g = ins[0]
        elif (
            len(ins) == 1
            and not g_ell
            and sorted(_letters(subs[0])) == sorted(kept)
            and len(set(subs[0])) == len(subs[0])
        ):
            g = ctx.op("Transpose", ins[0], perm=[subs[0].index(ch) for ch in kept])
        else:
            g = ctx.op("Einsum", *ins, equation=",".join(subs) + "->" + g_term)
        if scalar_dy and ins:
            g = ctx.op("Mul", g, dy)

        if g_ell:
            # g's ellipsis is dY's (the broadcast of every operand's): sum it to X_i's.
            axes, lead = _broadcast_axes(ell_dims[i], [ell_dims[j] for j in others], out_ell)
            g = _sum_leading(ctx, g, axes, lead)
        if missing:
            e = len(ell_dims[i])
            g = ctx.unsqueeze(g, sorted(e + s.index(ch) for ch in missing))
            g = ctx.op("Expand", g, ctx.shape_or_const(x))
        grads.append(g)
    return grads
