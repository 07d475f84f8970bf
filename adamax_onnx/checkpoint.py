"""Checkpoint files: an open format, written atomically, verified on load, never pickled.

A checkpoint is one ``.npz`` archive (a zip of ``.npy`` arrays, readable by numpy and by any
zip + npy reader). Array ``i`` is stored as ``a<i>``; the entry ``__meta__`` is a UTF-8 JSON
document (as a uint8 array) holding the format version, the model's identity, the tensor
names, and the SHA-256 of every array's bytes. ``save_checkpoint("dir/")`` writes
``dir/checkpoint.npz``; a path ending in ``.npz`` is used as is.

Writing goes through :func:`adamax_onnx.atomic.write_atomically`: a temporary file in the same
folder, flushed, fsync'ed and renamed over the target, then the folder fsync'ed: a crash leaves
either the old or the new checkpoint. A crash mid-write can leave a ``.checkpoint-<pid>-*.tmp``
file behind; the next write in that folder removes those whose process is gone.

Reading checks, before returning anything: the zip structure (a truncated file has no central
directory), each member's CRC, the JSON metadata's shape, the format tag, that every listed
tensor is present, and each tensor's SHA-256. ``np.load(allow_pickle=False)``: never unpickles.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import write_atomically
from .errors import CheckpointError
from .feeds import TensorSpec

__all__ = [
    "checkpoint_file",
    "write_checkpoint",
    "read_checkpoint",
    "model_identity",
    "check_restorable",
    "FORMAT",
]

FORMAT = "adamax-onnx-checkpoint/1"
FILE_NAME = "checkpoint.npz"


def checkpoint_file(path: str | os.PathLike) -> Path:
    """The file a checkpoint path refers to (``dir/`` -> ``dir/checkpoint.npz``)."""
    p = Path(path)
    if p.suffix == ".npz":
        return p
    return p / FILE_NAME


def _digest(arr: np.ndarray) -> str:
    return hashlib.sha256(np.asarray(arr, order="C").tobytes()).hexdigest()


def write_checkpoint(
    path: str | os.PathLike, arrays: Mapping[str, np.ndarray], meta: Mapping
) -> Path:
    """Atomically write ``arrays`` (name -> array) with ``meta`` (JSON-able) to ``path``."""
    target = checkpoint_file(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    names = list(arrays)
    doc = dict(meta)
    doc.update(
        format=FORMAT,
        tensors=[
            {"name": n, "key": f"a{i}", "sha256": _digest(arrays[n])} for i, n in enumerate(names)
        ],
    )
    payload = {f"a{i}": np.asarray(arrays[n], order="C") for i, n in enumerate(names)}
    payload["__meta__"] = np.frombuffer(json.dumps(doc, sort_keys=True).encode("utf-8"), np.uint8)
    write_atomically(target, lambda fh: np.savez(fh, **payload))
    return target


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict]:
    """Read and verify a checkpoint: returns ``(arrays, meta)``.

    Raises:
        CheckpointError: missing, truncated, corrupted (checksum), or not an adamax-onnx checkpoint.
    """
    target = checkpoint_file(path)
    if not target.is_file():
        raise CheckpointError(f"checkpoint {str(target)!r} does not exist")
    try:
        data = target.read_bytes()
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            if "__meta__" not in npz.files:
                raise CheckpointError(
                    f"{str(target)!r} is not an adamax-onnx checkpoint (no __meta__ entry)"
                )
            meta = json.loads(npz["__meta__"].tobytes().decode("utf-8"))
            if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
                raise CheckpointError(f"{str(target)!r} has format {found!r}, expected {FORMAT!r}")
            tensors = meta.get("tensors")
            if not isinstance(tensors, list) or not all(
                isinstance(t, dict)
                and isinstance(t.get("name"), str)
                and isinstance(t.get("key"), str)
                and isinstance(t.get("sha256"), str)
                for t in tensors
            ):
                raise CheckpointError(f"checkpoint {str(target)!r} has malformed metadata")
            arrays = {}
            for t in tensors:
                if t["key"] not in npz.files:
                    raise CheckpointError(
                        f"checkpoint {str(target)!r} is incomplete: tensor {t['name']!r} is missing"
                    )
                arr = npz[t["key"]]
                if _digest(arr) != t["sha256"]:
                    raise CheckpointError(
                        f"checkpoint {str(target)!r} is corrupted: tensor {t['name']!r} fails "
                        "its checksum"
                    )
                arrays[t["name"]] = arr
    except CheckpointError:
        raise
    except (
        zipfile.BadZipFile,
        zlib.error,
        OSError,
        ValueError,
        KeyError,
        TypeError,
        EOFError,
        UnicodeDecodeError,
    ) as exc:
        raise CheckpointError(
            f"checkpoint {str(target)!r} is truncated or corrupted: {type(exc).__name__}: {exc}"
        ) from exc
    return arrays, meta


# -- a session's checkpoint -------------------------------------------------------------------
def model_identity(contract: Any, specs: Mapping[str, TensorSpec]) -> str:
    """A fingerprint of a model's trainable interface: its kind, each parameter's name, shape
    and type (``specs``), the hyper-parameters and the groups of its ``contract``."""
    doc = {
        "kind": contract.kind,
        "params": [[n, list(specs[n].dims or ()), specs[n].ort_type] for n in contract.params],
        "hyper": contract.hyper,
        "groups": contract.groups,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def check_restorable(
    path: str | os.PathLike,
    arrays: Mapping[str, np.ndarray],
    meta: Mapping,
    identity: str,
    params: list[str],
    specs: Mapping[str, TensorSpec],
    step_tensor: str,
) -> None:
    """Refuse a checkpoint read from ``path`` that cannot restore a session whose tensors are
    ``specs`` (by name) and whose :func:`model_identity` is ``identity``.

    Raises:
        CheckpointError: another model (its parameters are named when they differ), other
            tensor names, a tensor of another dtype or shape, or a metadata step that
            disagrees with the ``step_tensor`` it holds.
    """
    if meta.get("identity") != identity:
        theirs = meta.get("params")
        detail = (
            f"its parameters are {theirs}, this model's are {params}"
            if theirs != params
            else "same parameter names, but shapes, dtypes or optimizer settings differ"
        )
        raise CheckpointError(f"checkpoint {str(path)!r} belongs to another model: {detail}")
    if set(arrays) != set(specs):
        raise CheckpointError(
            f"checkpoint {str(path)!r} holds tensors {sorted(set(arrays) ^ set(specs))} that do "
            "not match this model"
        )
    for name, spec in specs.items():
        got = arrays[name]
        if not spec.fits(got.dtype, got.shape):
            raise CheckpointError(
                f"checkpoint tensor {name!r} is {got.dtype}{list(got.shape)}, this model "
                f"needs {spec}"
            )
    if meta.get("global_step") != int(arrays[step_tensor]):
        raise CheckpointError(
            f"checkpoint {str(path)!r} is inconsistent: its metadata says step "
            f"{meta.get('global_step')!r} but its global_step tensor holds "
            f"{int(arrays[step_tensor])}"
        )
