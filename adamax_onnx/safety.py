"""Checks on untrusted inputs: model files with external data, dataset files, batch values.

Everything here runs *before* the file or batch is used, so a refused input never reaches
onnx's loader, numpy's unpickler or an onnxruntime kernel:

* :func:`load_model_file` reads an ONNX file whose tensors may live in external files, and
  refuses any external-data location that is absolute, climbs out of the model's folder
  (``..``, a symbolic link), is not a regular file, or is shorter than the bytes it should hold.
* :func:`check_in_memory_model` refuses a ModelProto that still refers to unloaded external
  data (it would be resolved against whatever the current folder is).
* :func:`check_dataset_file` checks that a dataset is an ``.npz`` archive of plain numeric
  ``.npy`` arrays (no pickled objects, consistent sizes) with ``x`` and ``y``.
* :func:`label_ranges` / :func:`check_batch_values`: onnxruntime's CPU
  ``SoftmaxCrossEntropyLoss`` reads out of bounds for a class label outside ``[0, C)`` and
  crashes the process (SIGFPE) on an empty batch; both are refused with a :class:`FeedError`.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

from .errors import DatasetError, FeedError, ModelError, UnsafePathError

__all__ = [
    "load_model_file",
    "check_external_data",
    "check_in_memory_model",
    "check_dataset_file",
    "label_ranges",
    "check_batch_values",
]

_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")


# -- models -------------------------------------------------------------------------------------
def _all_tensors(graph: onnx.GraphProto) -> Iterator[TensorProto]:
    """Every TensorProto of a graph: initializers, sparse ones, node attributes, subgraphs."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _all_tensors(attr.g)
            for sub in attr.graphs:
                yield from _all_tensors(sub)


def _external(tensor: TensorProto) -> dict[str, str] | None:
    if tensor.data_location != TensorProto.EXTERNAL:
        return None
    return {e.key: e.value for e in tensor.external_data}


def check_external_data(model: onnx.ModelProto, folder: str | os.PathLike, source: str) -> int:
    """Refuse external-data references of ``model`` that leave ``folder``; returns their count.

    Raises:
        UnsafePathError: a location is absolute, escapes ``folder`` (``..`` or a symbolic link
            pointing outside), is missing or not a regular file, or is too short for its
            offset and length.
    """
    root = Path(os.path.realpath(folder))
    count = 0
    for tensor in _all_tensors(model.graph):
        info = _external(tensor)
        if info is None:
            continue
        count += 1
        location = info.get("location", "")
        where = f"tensor {tensor.name!r} of {source}"
        if not location:
            raise UnsafePathError(f"{where} is marked external but names no location")
        if os.path.isabs(location) or location.startswith(("/", "\\")) or ":" in location:
            raise UnsafePathError(
                f"{where} stores its data at the absolute location {location!r}; external data "
                f"must be a relative path inside the model's folder {str(root)!r}"
            )
        resolved = Path(os.path.realpath(root / location))
        if resolved != root and root not in resolved.parents:
            raise UnsafePathError(
                f"{where} stores its data at {location!r}, which resolves to "
                f"{str(resolved)!r}, outside the model's folder {str(root)!r}; refused"
            )
        if not resolved.is_file():
            raise UnsafePathError(
                f"{where}: its external data file {location!r} does not exist or is not a "
                "regular file"
            )
        try:
            offset = int(info.get("offset", 0))
            length = int(info["length"]) if "length" in info else None
        except ValueError as exc:
            raise UnsafePathError(f"{where}: malformed external-data offset/length: {exc}") from exc
        size = resolved.stat().st_size
        if offset < 0 or (length is not None and length < 0):
            raise UnsafePathError(f"{where}: negative external-data offset or length")
        if offset > size or (length is not None and offset + length > size):
            raise UnsafePathError(
                f"{where}: external data file {location!r} holds {size} bytes, but the tensor "
                f"needs bytes {offset}..{offset + (length or 0)} (truncated file?)"
            )
    return count


def load_model_file(path: str | os.PathLike) -> onnx.ModelProto:
    """Load an ONNX file, checking its external data (if any) before reading it.

    Raises:
        ModelError: the file is missing or not a readable ONNX model.
        UnsafePathError: see :func:`check_external_data`.
    """
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"model file {str(p)!r} does not exist or is not a regular file")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError and friends: not one base class
        raise ModelError(f"model file {str(p)!r} is not a readable ONNX model: {exc}") from exc
    if check_external_data(model, p.parent, f"model file {str(p)!r}"):
        try:
            onnx.load_external_data_for_model(model, str(p.parent))
        except Exception as exc:
            raise UnsafePathError(
                f"model file {str(p)!r}: its external data could not be loaded: {exc}"
            ) from exc
    return model


def check_in_memory_model(model: onnx.ModelProto) -> None:
    """Refuse a ModelProto whose tensors still point at external files (not loaded).

    Such a model would have its data resolved against the current folder by whoever reads it;
    load it from its file (:func:`load_model_file`) so the folder is known and checked.
    """
    for tensor in _all_tensors(model.graph):
        info = _external(tensor)
        if info is not None:
            raise UnsafePathError(
                f"tensor {tensor.name!r} refers to external data {info.get('location', '')!r} "
                "that is not loaded; pass the model's file path instead, so that its folder is "
                "known and the location can be checked"
            )


# -- datasets -----------------------------------------------------------------------------------
def _describe_start(head: bytes) -> str:
    if head.startswith(_NPY_MAGIC):
        return "a single .npy array, not an .npz archive of arrays 'x' and 'y'"
    if head[:1] == b"\x80":
        return "a Python pickle (refused: loading it could run code)"
    if head.startswith(b"\x89HDF"):
        return "an HDF5 file"
    if not head:
        return "empty"
    return f"not an .npz archive (it starts with {head[:8]!r})"


def check_dataset_file(
    path: str | os.PathLike, required: Sequence[str] = ("x", "y")
) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    """Check that ``path`` is an ``.npz`` of plain numeric arrays holding ``required``.

    Reads only the zip directory and each array's ``.npy`` header (no array data, nothing
    unpickled). Returns ``name -> (dtype, shape)``.

    Raises:
        DatasetError: missing file, wrong format, pickled/object or non-numeric arrays, a
            member whose size disagrees with its header, or a required array missing.
    """
    p = Path(path)
    where = f"dataset file {str(p)!r}"
    if not p.is_file():
        raise DatasetError(f"{where} does not exist or is not a regular file")
    with open(p, "rb") as fh:
        head = fh.read(8)
    if not head.startswith(_ZIP_MAGICS):
        raise DatasetError(f"{where} is {_describe_start(head)}; expected an .npz archive")
    arrays: dict[str, tuple[np.dtype, tuple[int, ...]]] = {}
    try:
        with zipfile.ZipFile(p) as zf:
            for info in zf.infolist():
                name = info.filename
                if info.is_dir() or not name.endswith(".npy"):
                    raise DatasetError(f"{where} holds {name!r}, which is not an .npy array")
                key = name[: -len(".npy")]
                with zf.open(info) as member:
                    version = np.lib.format.read_magic(member)
                    if version == (1, 0):
                        shape, _, dtype = np.lib.format.read_array_header_1_0(member)
                    elif version == (2, 0):
                        shape, _, dtype = np.lib.format.read_array_header_2_0(member)
                    else:  # 3.0 exists only for structured dtypes with non-ASCII field names
                        raise DatasetError(
                            f"{where}: array {key!r} uses .npy format {version}; only plain "
                            "numeric arrays (format 1.0/2.0) are read"
                        )
                    header_len = member.tell()
                if dtype.hasobject or dtype.kind not in "biuf":
                    raise DatasetError(
                        f"{where}: array {key!r} has dtype {dtype}; only bool, integer and "
                        "float arrays are read (object arrays would need pickle)"
                    )
                expected = header_len + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
                if info.file_size != expected:
                    raise DatasetError(
                        f"{where}: array {key!r} declares shape {list(shape)} of {dtype} "
                        f"({expected} bytes with header) but its member holds "
                        f"{info.file_size} bytes"
                    )
                arrays[key] = (dtype, tuple(shape))
    except DatasetError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise DatasetError(f"{where} is not a readable .npz archive: {exc}") from exc
    missing = [k for k in required if k not in arrays]
    if missing:
        raise DatasetError(
            f"{where} lacks array(s) {missing}; it holds {sorted(arrays)} (expected "
            f"{list(required)})"
        )
    return arrays


# -- batch values -------------------------------------------------------------------------------
def label_ranges(
    model: onnx.ModelProto, data_inputs: Sequence[str]
) -> dict[str, tuple[int, int | None]]:
    """Label inputs of ``SoftmaxCrossEntropyLoss`` nodes: ``name -> (classes, ignore_index)``.

    Only inputs fed by the caller are listed, and only where the number of classes (axis 1 of
    the scores) is known from the graph's declared shapes.
    """
    shapes: dict[str, list] = {}
    for vi in list(model.graph.value_info) + list(model.graph.output) + list(model.graph.input):
        dims = vi.type.tensor_type.shape.dim
        shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    ranges: dict[str, tuple[int, int | None]] = {}
    for node in model.graph.node:
        if node.op_type != "SoftmaxCrossEntropyLoss" or len(node.input) < 2:
            continue
        label = node.input[1]
        scores = shapes.get(node.input[0], [])
        if label not in data_inputs or len(scores) < 2 or not scores[1]:
            continue
        ignore = next((a.i for a in node.attribute if a.name == "ignore_index"), None)
        ranges[label] = (int(scores[1]), ignore)
    return ranges


def check_batch_values(
    arrays: Mapping[str, np.ndarray],
    ranges: Mapping[str, tuple[int, int | None]],
    refuse_empty: bool = True,
) -> None:
    """Refuse an empty batch (unless ``refuse_empty`` is False) and class labels outside
    ``[0, classes)``.

    Raises:
        FeedError: naming the input, the offending value and where it is.
    """
    for name, arr in arrays.items():
        if refuse_empty and arr.size == 0:
            raise FeedError(
                f"input {name!r} is empty (shape {list(arr.shape)}): a step needs at least one "
                "example"
            )
    for name, (classes, ignore) in ranges.items():
        if name not in arrays:
            continue
        labels = arrays[name]
        bad = (labels < 0) | (labels >= classes)
        if ignore is not None:
            bad &= labels != ignore
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            raise FeedError(
                f"input {name!r} holds class label {int(labels[where])} at index "
                f"{list(where)}; labels must be in [0, {classes})"
                + (f" or equal ignore_index {ignore}" if ignore is not None else "")
            )
