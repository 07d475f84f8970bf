"""Gradient rules, one module per family of ops; importing this package registers them all."""

from . import conv, elementwise, indexing, linalg, reduce, rnn, shape, softmax  # noqa: F401
