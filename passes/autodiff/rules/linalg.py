"""Gradients of matrix products: MatMul, Gemm, Einsum."""

from __future__ import annotations

from ..registry import rule


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
        g = dy if beta == 1.0 else ctx.op("Mul", dy, ctx.scalar(beta, dy))
        out[2] = ctx.sum_to(g, c)
    return out
