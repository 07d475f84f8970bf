"""What ``pip install`` puts into site-packages: one top-level package, ``adamax_onnx``, with
its graph passes and example builders inside (no top-level ``passes``/``models`` that a user's
own folders or PyPI's ``models`` distribution would shadow, or be shadowed by)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: Subpackages the library imports at run time: each must be in the wheel.
SUBPACKAGES = [
    "adamax_onnx/passes",
    "adamax_onnx/passes/autodiff",
    "adamax_onnx/passes/autodiff/rules",
    "adamax_onnx/passes/lowering",
    "adamax_onnx/models",
    "adamax_onnx/cli",
    "adamax_onnx/federated",
]


def _has_build_backend() -> bool:
    try:
        import setuptools
    except ImportError:
        return False
    return int(setuptools.__version__.split(".")[0]) >= 77  # pyproject's build requirement


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps"]
    if _has_build_backend():  # else pip fetches setuptools into an isolated build env
        cmd.append("--no-build-isolation")
    proc = subprocess.run(
        [*cmd, str(ROOT), "-w", str(out)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    (path,) = out.glob("adamax_onnx-*.whl")
    return zipfile.ZipFile(path)


def test_one_top_level_package(wheel):
    names = wheel.namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"adamax_onnx"}
    (top_level,) = [n for n in names if n.endswith(".dist-info/top_level.txt")]
    assert wheel.read(top_level).decode().split() == ["adamax_onnx"]


def test_every_subpackage_is_installed(wheel):
    names = set(wheel.namelist())
    missing = [p for p in SUBPACKAGES if f"{p}/__init__.py" not in names]
    assert not missing, missing
    # Every module of the source tree is in the wheel (a new folder without __init__.py, or a
    # package-find pattern that misses it, would leave it out).
    sources = {
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "adamax_onnx").rglob("*.py")
        if "__pycache__" not in p.parts
    }
    assert sources - names == set()
