"""The extra virtual environments some tests run code in, made by their scripts/ script.

``.venv-stock`` (stock onnxruntime, no adamax-onnx; scripts/stock_venv.sh). The script is
idempotent; if it fails the calling test fails with its output: nothing is skipped. A module
that uses :func:`venv_python` is marked ``venv`` (tests/conftest.py checks it), so a plain
``pytest`` leaves it out and the all-tests command runs it.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def venv_python(script: str, venv: str, what: str, timeout: float) -> Path:
    """Run ``scripts/<script>`` and return the interpreter of ``<venv>``."""
    python = ROOT / venv / "bin" / "python"
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / script)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0 or not python.exists():
        pytest.fail(
            f"could not create the {what} venv {venv} "
            f"(exit {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        )
    return python
