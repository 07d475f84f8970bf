"""Gradients of elementwise ops (numpy broadcasting undone with ``ctx.sum_to``)."""

from __future__ import annotations

from ..registry import rule


@rule("Add")
def add(ctx, dys):
    (dy,) = dys
    a, b = ctx.x(0), ctx.x(1)
    return [
        ctx.sum_to(dy, a) if ctx.needs(0) else None,
        ctx.sum_to(dy, b) if ctx.needs(1) else None,
    ]


@rule("Sub")
def sub(ctx, dys):
    (dy,) = dys
    a, b = ctx.x(0), ctx.x(1)
    return [
        ctx.sum_to(dy, a) if ctx.needs(0) else None,
        ctx.sum_to(ctx.op("Neg", dy), b) if ctx.needs(1) else None,
    ]


@rule("Mul")
def mul(ctx, dys):
    (dy,) = dys
    a, b = ctx.x(0), ctx.x(1)
    return [
        ctx.sum_to(ctx.op("Mul", dy, b), a) if ctx.needs(0) else None,
        ctx.sum_to(ctx.op("Mul", dy, a), b) if ctx.needs(1) else None,
    ]


@rule("Relu")
def relu(ctx, dys):
    (dy,) = dys
    y = ctx.y(0)
    return [ctx.op("Where", ctx.op("Greater", y, ctx.scalar(0.0, y)), dy, ctx.scalar(0.0, y))]


@rule("Identity")
def identity(ctx, dys):
    return [dys[0]]


@rule("Sum")
def sum_(ctx, dys):
    (dy,) = dys
    return [
        ctx.sum_to(dy, x) if x is not None and ctx.needs(i) else None
        for i, x in enumerate(ctx.inputs)
    ]
