"""Gradient rules, one module per family of ops; importing this package registers them all."""

from . import (  # noqa: F401
    activations,
    attention,
    conv,
    elementwise,
    gru,
    indexing,
    linalg,
    lstm,
    normalization,
    pad,
    pool,
    reduce,
    resize,
    rnn,
    shape,
    softmax,
)
