"""What a tensor handed to a session must be, checked in one place.

:class:`TensorSpec` is one tensor's contract (numpy dtype and dims, fixed or symbolic), read
once from an onnxruntime input or a session buffer. :class:`FeedValidator` checks a whole feed
dict against the specs of the inputs it expects: names (missing, unexpected, bound), types,
ranks, fixed and symbolic dims, empty batches and class-label ranges (:mod:`.safety`), and
raises a :class:`~adamax_onnx.FeedError` naming the input before anything runs. Every spec is
built once; the common case (numpy arrays of exactly the expected static shape, as gradients
are) is checked by one comparison per tensor, and anything else takes the detailed path that
finds and words the error.

``TrainingSession.step`` and ``predict`` use :class:`FeedValidator`; ``set_parameters``,
``load_checkpoint``, ``bind_inputs`` and the federated client check tensors against the
session's :class:`TensorSpec`\\s.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import FeedError
from .safety import check_batch_values

__all__ = ["ORT_TYPES", "TensorSpec", "FeedValidator"]

#: onnxruntime type strings -> numpy dtypes (types numpy lacks, e.g. bfloat16, are not checked).
ORT_TYPES = {
    "tensor(float)": np.dtype(np.float32),
    "tensor(float16)": np.dtype(np.float16),
    "tensor(double)": np.dtype(np.float64),
    "tensor(int64)": np.dtype(np.int64),
    "tensor(int32)": np.dtype(np.int32),
    "tensor(int8)": np.dtype(np.int8),
    "tensor(uint8)": np.dtype(np.uint8),
    "tensor(bool)": np.dtype(np.bool_),
}


@dataclass(frozen=True)
class TensorSpec:
    """One tensor's contract.

    Attributes:
        name: the input or tensor name.
        ort_type: onnxruntime's type string, e.g. ``"tensor(float)"``.
        dtype: the numpy dtype of ``ort_type``, or None when numpy has none (not checked).
        dims: per axis an int (fixed), a str (symbolic, equal across inputs) or None (any);
            None when even the rank is unknown.
    """

    name: str
    ort_type: str
    dtype: np.dtype | None
    dims: tuple[int | str | None, ...] | None

    @classmethod
    def of(cls, name: str, ort_type: str, dims: Sequence[Any] | None) -> TensorSpec:
        fixed = (
            None if dims is None else tuple(d if isinstance(d, (int, str)) else None for d in dims)
        )
        return cls(name, ort_type, ORT_TYPES.get(ort_type), fixed)

    @classmethod
    def of_input(cls, node_arg: Any) -> TensorSpec:
        """The spec of an onnxruntime ``NodeArg`` (``session.get_inputs()``)."""
        return cls.of(node_arg.name, node_arg.type, node_arg.shape)

    @classmethod
    def of_value(cls, name: str, value: Any) -> TensorSpec:
        """The exact spec of an ``OrtValue`` (a session's parameter or state buffer)."""
        return cls.of(name, value.data_type(), value.shape())

    @property
    def shape(self) -> tuple[int, ...] | None:
        """The shape when every dim is fixed, else None."""
        if self.dims is None or not all(isinstance(d, int) for d in self.dims):
            return None
        return self.dims  # type: ignore[return-value]

    def __str__(self) -> str:
        kind = self.dtype.name if self.dtype is not None else self.ort_type
        return f"{kind}{list(self.dims) if self.dims is not None else '[...]'}"

    def fits(self, dtype: Any, shape: Sequence[int]) -> bool:
        """True when a tensor of ``dtype`` (numpy or onnxruntime type string) and ``shape``
        fits: same type, same rank, every fixed dim equal (symbolic ones are not compared)."""
        if dtype != (self.ort_type if isinstance(dtype, str) else self.dtype):
            return False
        if self.dims is None:
            return True
        return len(shape) == len(self.dims) and all(
            not isinstance(d, int) or d == g for d, g in zip(self.dims, shape, strict=True)
        )

    def problem(self, arr: Any, symbols: dict[str, tuple[int, str]]) -> str | None:
        """Why ``arr`` cannot be fed as this input (None: it can); records symbolic dims."""
        name, want = self.name, self.dtype
        if not isinstance(arr, np.ndarray):
            return (
                f"input {name!r} must be a numpy array of {np.dtype(want).name}, "
                f"got {type(arr).__name__}"
            )
        if want is not None and arr.dtype != want:
            return f"input {name!r} has dtype {arr.dtype}, expected {want.name} ({self.ort_type})"
        shape = None if self.dims is None else list(self.dims)
        if shape is not None and len(shape) != arr.ndim:
            return (
                f"input {name!r} has shape {list(arr.shape)}, expected rank {len(shape)} ({shape})"
            )
        for axis, (dim, got) in enumerate(zip(shape or [], arr.shape, strict=True)):
            if isinstance(dim, int) and dim != got:
                return (
                    f"input {name!r} has shape {list(arr.shape)}, expected {shape} "
                    f"(axis {axis} must be {dim})"
                )
            if isinstance(dim, str) and dim:
                if dim in symbols and symbols[dim][0] != got:
                    return (
                        f"input {name!r} has {dim}={got} on axis {axis}, but input "
                        f"{symbols[dim][1]!r} has {dim}={symbols[dim][0]}"
                    )
                symbols.setdefault(dim, (got, name))
        return None


class FeedValidator:
    """Checks feed dicts against the inputs a run takes; built once, called every run.

    Args:
        specs: the spec of every input the session has (by name).
        takes: the names a run takes, in order (the others must not be fed).
        who: the subject of "takes exactly", e.g. ``"a step"`` or ``"predict"``.
        label_ranges: class-label inputs to range-check (:func:`.safety.label_ranges`).
        refuse_empty: refuse an input with no elements (a training step needs an example).
        bound: inputs fed another way (``bind_inputs``): feeding them is its own error.

    Attributes:
        specs: the spec of each input taken, in the order of ``takes``.
    """

    def __init__(
        self,
        specs: Mapping[str, TensorSpec],
        takes: Sequence[str],
        who: str,
        label_ranges: Mapping[str, tuple[int, int | None]] | None = None,
        refuse_empty: bool = True,
        bound: Sequence[str] = (),
    ) -> None:
        self.takes = list(takes)
        self.who = who
        self.specs = [specs[n] for n in self.takes]
        self._names = frozenset(self.takes)
        self._bound = frozenset(bound)
        self._ranges = dict(label_ranges or {})
        self._refuse_empty = refuse_empty
        # Inputs one comparison checks: a static shape with no zero dim (never empty) and a
        # numpy dtype, no label range. name -> (dtype, shape).
        self._static = {
            s.name: (s.dtype, s.shape)
            for s in self.specs
            if s.shape is not None
            and s.dtype is not None
            and 0 not in s.shape
            and s.name not in self._ranges
        }

    def __call__(self, feeds: Any) -> dict[str, np.ndarray]:
        """``feeds`` checked, each array as given (the detailed path makes it C-contiguous).

        Raises:
            FeedError: not a dict; a bound, missing or unexpected name; a wrong type, rank or
                dim; an empty input; a class label out of range. The message names the input.
        """
        if type(feeds) is dict and len(feeds) == len(self._names) and feeds.keys() == self._names:
            static = self._static
            ndarray = np.ndarray
            for name, arr in feeds.items():
                want = static.get(name)
                if (
                    want is None
                    or type(arr) is not ndarray
                    or arr.dtype is not want[0]
                    or arr.shape != want[1]
                ):
                    break
            else:
                return feeds
        return self._check(feeds)

    def _check(self, feeds: Any) -> dict[str, np.ndarray]:
        if not isinstance(feeds, Mapping):
            raise FeedError(
                f"feeds must be a dict of input name -> array, got {type(feeds).__name__}"
            )
        bound = [n for n in feeds if n in self._bound]
        if bound:
            raise FeedError(
                f"input(s) {bound} are bound with bind_inputs; {self.who} takes only {self.takes}"
            )
        missing = [n for n in self.takes if n not in feeds]
        extra = [n for n in feeds if n not in self._names]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing input(s) {missing}")
            if extra:
                parts.append(f"unexpected input(s) {extra}")
            raise FeedError(f"{'; '.join(parts)}; {self.who} takes exactly {self.takes}")
        out: dict[str, np.ndarray] = {}
        symbols: dict[str, tuple[int, str]] = {}
        for spec in self.specs:
            arr = feeds[spec.name]
            problem = spec.problem(arr, symbols)
            if problem is not None:
                raise FeedError(problem)
            out[spec.name] = np.asarray(arr, order="C")
        check_batch_values(out, self._ranges, self._refuse_empty)
        return out
