"""Gradient rules, one module per family of ops; importing this package registers them all."""

from . import elementwise, linalg, reduce  # noqa: F401
