"""Importing transformers/torchvision model classes beside the CPU torch wheel (tests only).

The PyPI torchvision wheel is a CUDA build whose compiled ops do not load beside the CPU torch
(``operator torchvision::nms does not exist`` while ``torchvision/__init__`` registers their meta
kernels), and transformers imports ``torchvision.transforms`` when torchvision is installed. No
model class used in the tests needs those ops: :func:`bare_torchvision` puts ``torchvision`` in
``sys.modules`` as a bare package (its ``__init__`` skipped), after which ``torchvision.models``
and ``transformers`` import normally.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types


def bare_torchvision() -> bool:
    """Register ``torchvision`` without its ``__init__``; False when it is not installed."""
    if "torchvision" in sys.modules:
        return True
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return False
    pkg = types.ModuleType("torchvision")
    pkg.__path__ = [os.path.dirname(spec.origin)]
    pkg.__file__ = spec.origin
    pkg.__spec__ = spec
    sys.modules["torchvision"] = pkg
    return True


def transformers_available() -> bool:
    bare_torchvision()
    return importlib.util.find_spec("transformers") is not None
