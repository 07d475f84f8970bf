"""adamax_onnx/atomic.py: every file the library writes is replaced atomically."""

from __future__ import annotations

import subprocess
import sys

import pytest

from adamax_onnx.atomic import write_atomically


def test_write_replaces_the_target_and_leaves_no_temp(tmp_path):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"old")
    write_atomically(target, lambda fh: fh.write(b"new"))
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_a_failing_writer_keeps_the_old_file(tmp_path):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"old")

    def boom(fh):
        fh.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_atomically(target, boom)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_temps_of_dead_writers_are_removed_by_the_next_write(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    stale = tmp_path / f".model-{int(dead.stdout)}-abc.tmp"
    stale.write_bytes(b"left by a killed writer")
    other = tmp_path / ".other-1-abc.tmp"  # another file's temp: not ours to remove
    other.write_bytes(b"x")
    write_atomically(tmp_path / "model.onnx", lambda fh: fh.write(b"new"))
    assert not stale.exists() and other.exists()
