"""One way to write a file so that a crash leaves either the old file or the new one.

The bytes go to a temporary file in the target's folder (``.<stem>-<pid>-*.tmp``), which is
flushed, fsync'ed and renamed over the target; then the folder is fsync'ed so the rename itself
is durable. A writer killed mid-write leaves its temporary file behind; the next write to the
same folder removes those of processes that no longer run. Every file the library writes
(checkpoints, exported inference and trainable models, built training models) goes through
:func:`write_atomically`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

import onnx

__all__ = ["write_atomically", "save_model_atomically"]


def _remove_stale_temps(folder: Path, stem: str) -> None:
    """Delete ``.<stem>-<pid>-*.tmp`` files of writers that no longer run."""
    for tmp in folder.glob(f".{stem}-*.tmp"):
        pid_text = tmp.name[len(stem) + 2 :].split("-", 1)[0]
        if not pid_text.isdigit() or int(pid_text) == os.getpid():
            continue
        try:
            os.kill(int(pid_text), 0)
            continue  # still running: maybe writing right now
        except ProcessLookupError:
            pass
        except PermissionError:
            continue  # alive, owned by someone else
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass


def write_atomically(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(fh)`` on a temporary file and move it over ``path`` durably."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    stem = target.stem
    _remove_stale_temps(target.parent, stem)
    fd, tmp = tempfile.mkstemp(prefix=f".{stem}-{os.getpid()}-", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return target


def save_model_atomically(model: onnx.ModelProto, path: str | os.PathLike) -> Path:
    """``onnx.save`` (one self-contained file) through :func:`write_atomically`."""
    return write_atomically(path, lambda fh: fh.write(model.SerializeToString()))
