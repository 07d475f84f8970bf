"""StateBuffers: the device memory and the two IOBindings a :class:`TrainingSession` runs.

Parameters and optimizer state (the *state*) live in two preallocated sets of OrtValues on the
session's device. Two IOBindings are prepared once: A->B (inputs read from set A, the
``<name>.updated`` outputs written into set B) and B->A. A run copies in the fed inputs, runs
the current binding and, once it has succeeded, flips to the other one; neither set ever moves.
A failed run has written only into the *other* set, so the current values are untouched.

Besides the state it holds the *fixed* inputs (bound in both bindings, e.g. fixed learning
rates), host scalars for small outputs (the loss, the overflow flag), the packed copy of small
fed inputs and the inputs bound by :meth:`StateBuffers.bind_inputs`. It never validates a feed
(:mod:`.feeds` does) nor knows what a tensor means (:mod:`.runtime` does).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from .errors import FeedError, ModelError
from .feeds import ORT_TYPES, TensorSpec
from .passes.contract import updated

__all__ = ["StateBuffers"]

#: Fed arrays smaller than this are copied into buffers bound once; larger ones are bound in
#: place (a bind costs ~6 us, a 1 MiB copy ~50 us).
COPY_LIMIT = 1 << 20


def _host_copy(value: onnx.TensorProto | np.ndarray) -> np.ndarray:
    """A private C-ordered copy: on CPU an OrtValue wraps the numpy buffer it is given, and the
    two sets must never share memory (a run writes one while reading the other)."""
    arr = numpy_helper.to_array(value) if isinstance(value, onnx.TensorProto) else value
    return np.array(arr, order="C", copy=True)


class _PackedInputs:
    """Fed inputs of one static shape under 1 MiB, copied in by one ``np.concatenate`` per dtype.

    Each dtype's inputs share one host buffer; the OrtValue bound for each input (in both
    bindings) is a view of its part. A step copies every such array with a single C call
    instead of one ``OrtValue.update_inplace`` each (2,000 x 1K float32: about 1 ms instead of
    3), so ``step(feeds)`` costs no more than copying into buffers bound once oneself.

    Args:
        specs: the spec of every input a step takes.
        bindings: the IOBindings that read the inputs.
    """

    def __init__(self, specs: Sequence[TensorSpec], bindings: Sequence[ort.IOBinding]) -> None:
        packable = [
            s
            for s in specs
            if s.shape is not None
            and s.dtype is not None
            and 0 < int(np.prod(s.shape)) * s.dtype.itemsize < COPY_LIMIT
        ]
        self.others = [s.name for s in specs if s not in packable]
        self.groups: list[tuple[list[str], np.ndarray]] = []
        self._values: list[ort.OrtValue] = []  # a binding does not own the memory it reads
        for dtype in dict.fromkeys(s.dtype for s in packable):
            members = [s for s in packable if s.dtype == dtype]
            buffer = np.empty(sum(int(np.prod(s.shape)) for s in members), dtype)
            offset = 0
            for spec in members:
                size = int(np.prod(spec.shape))
                view = buffer[offset : offset + size].reshape(spec.shape)
                value = ort.OrtValue.ortvalue_from_numpy(view)  # wraps the view: no copy
                for binding in bindings:
                    binding.bind_ortvalue_input(spec.name, value)
                self._values.append(value)
                offset += size
            self.groups.append(([s.name for s in members], buffer))

    def copy(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Copy the packed inputs of ``arrays`` (validated: exact dtypes and shapes) in."""
        for names, buffer in self.groups:
            np.concatenate([arrays[n] for n in names], axis=None, out=buffer)


class StateBuffers:
    """Two sets of state OrtValues and the two IOBindings between them, prepared once.

    Args:
        session: the session to run; every state input ``x`` has an output ``x.updated``.
        state: the initial value of each state input, by name (TensorProto or array).
        fixed: inputs bound as they are in both bindings (fixed learning rates), by name.
        data_inputs: the spec of each input a run is fed, in order.
        outputs: outputs written into a preallocated host scalar each (of its declared type).
        layout: state inputs whose ``.updated`` output is declared in another shape of the
            same size (a chunk layout ``[rows, chunk]``): the buffer is bound with that shape.
        device, device_id: where the state and fixed values live (``"cpu"`` or ``"cuda"``).

    Attributes:
        session: what :meth:`run` runs the bindings with (the session, or a stand-in for it).

    Example:
        >>> buffers = StateBuffers(session, {"w": w0}, {}, [spec_of_x], ["loss"])
        >>> buffers.run({"x": x})
        >>> float(buffers.output("loss")), buffers.read("w")
    """

    def __init__(
        self,
        session: ort.InferenceSession,
        state: Mapping[str, onnx.TensorProto | np.ndarray],
        fixed: Mapping[str, onnx.TensorProto | np.ndarray],
        data_inputs: Sequence[TensorSpec],
        outputs: Sequence[str] = (),
        layout: Mapping[str, Sequence[int]] | None = None,
        device: str = "cpu",
        device_id: int = 0,
    ) -> None:
        self.session = session
        self._device, self._device_id = device, device_id
        self._sets: list[dict[str, ort.OrtValue]] = [{}, {}]
        for name, tensor in state.items():
            # At most two copies of a tensor exist at once (the bytes read from the model are
            # dropped before the second set is made): a lower peak while the session starts.
            first = _host_copy(tensor)
            second = first.copy()
            for values, arr in zip(self._sets, (first, second), strict=True):
                values[name] = ort.OrtValue.ortvalue_from_numpy(arr, device, device_id)
            del first, second
        self._fixed = {
            name: ort.OrtValue.ortvalue_from_numpy(_host_copy(v), device, device_id)
            for name, v in fixed.items()
        }
        # The only things that leave the device each run: preallocated host scalars.
        types = {o.name: o.type for o in session.get_outputs()}
        self._outputs = {
            name: ort.OrtValue.ortvalue_from_numpy(
                np.zeros((), ORT_TYPES.get(types[name], np.float32))
            )
            for name in outputs
        }
        self._layout = {name: tuple(shape) for name, shape in (layout or {}).items()}
        self._data_specs = {s.name: s for s in data_inputs}
        self._bindings = [self._prepare_binding(0), self._prepare_binding(1)]
        self._cur = 0
        # Inputs bound once with bind_inputs; the dict keeps the OrtValues alive, because a
        # binding does not own the memory it reads.
        self._bound: dict[str, ort.OrtValue] = {}
        self._feed_slots: dict[str, tuple[tuple[int, ...], ort.OrtValue]] = {}
        self._packed: _PackedInputs | None = None  # made by the first run that takes inputs

    def _prepare_binding(self, src: int) -> ort.IOBinding:
        binding = self.session.io_binding()
        for name, value in self._sets[src].items():
            binding.bind_ortvalue_input(name, value)
            target = self._sets[1 - src][name]
            if name in self._layout:
                binding.bind_output(
                    updated(name),
                    self._device,
                    self._device_id,
                    ORT_TYPES[target.data_type()],
                    list(self._layout[name]),
                    target.data_ptr(),
                )
            else:
                binding.bind_ortvalue_output(updated(name), target)
        for name, value in self._fixed.items():
            binding.bind_ortvalue_input(name, value)
        for name, value in self._outputs.items():
            binding.bind_ortvalue_output(name, value)
        return binding

    # -- what is held ------------------------------------------------------------------------
    @property
    def state_names(self) -> list[str]:
        """The state inputs, in the order given."""
        return list(self._sets[0])

    @property
    def fixed_names(self) -> list[str]:
        """The fixed inputs, in the order given."""
        return list(self._fixed)

    @property
    def bound(self) -> list[str]:
        """The data inputs bound with :meth:`bind_inputs`, which a run is no longer fed."""
        return list(self._bound)

    @property
    def layout(self) -> dict[str, list[int]]:
        """Each state input bound in a chunk layout, with that layout."""
        return {name: list(shape) for name, shape in self._layout.items()}

    def specs(self) -> dict[str, TensorSpec]:
        """The exact spec of every state and fixed value, by name (state first)."""
        return {n: TensorSpec.of_value(n, v) for n, v in {**self._sets[0], **self._fixed}.items()}

    def ortvalue(self, name: str) -> ort.OrtValue:
        """The current OrtValue of a state input, without a copy; valid until the next run.

        Raises:
            ModelError: ``name`` is not a state input.
        """
        current = self._sets[self._cur]
        if name not in current:
            raise ModelError(
                f"{name!r} is not a parameter or state tensor; they are {list(current)}"
            )
        return current[name]

    def _value(self, name: str) -> ort.OrtValue:
        value = self._sets[self._cur].get(name)
        if value is None:
            value = self._fixed.get(name)
        if value is None:
            raise ModelError(
                f"{name!r} is neither a state nor a fixed input; they are "
                f"{[*self._sets[0], *self._fixed]}"
            )
        return value

    def read(self, name: str) -> np.ndarray:
        """A host copy of the current value of a state or fixed input."""
        return self._value(name).numpy().copy()

    def write(self, name: str, arr: np.ndarray) -> None:
        """Overwrite a state input (in the current set) or a fixed input in place; ``arr`` must
        have its exact dtype and shape (the caller checks)."""
        self._value(name).update_inplace(np.asarray(arr, order="C"))

    def output(self, name: str) -> np.ndarray:
        """The host scalar ``name`` as the last successful run wrote it."""
        return self._outputs[name].numpy()

    # -- running -----------------------------------------------------------------------------
    def bind_inputs(self, values: Mapping[str, ort.OrtValue]) -> None:
        """Bind data inputs once for every later run; nothing is bound unless all are valid.

        Raises:
            FeedError: an unknown input name, not an OrtValue, or a wrong dtype or shape.
        """
        for name, value in values.items():
            if name not in self._data_specs:
                raise FeedError(
                    f"cannot bind {name!r}: the data inputs are {list(self._data_specs)}"
                )
            if not isinstance(value, ort.OrtValue):
                raise FeedError(
                    f"bind_inputs: {name!r} must be an onnxruntime.OrtValue, "
                    f"got {type(value).__name__}"
                )
            spec = self._data_specs[name]
            if not spec.fits(value.data_type(), value.shape()):
                raise FeedError(
                    f"bind_inputs: {name!r} is {value.data_type()}{list(value.shape())}, "
                    f"expected {spec.ort_type}{list(spec.dims or ())}"
                )
        for name, value in values.items():
            self._bound[name] = value
            self._feed_slots.pop(name, None)
            for binding in self._bindings:
                binding.bind_ortvalue_input(name, value)
        self._packed = None  # what a run is fed has changed: packed anew for it

    def run(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Copy in ``arrays`` (every unbound data input, validated: dtypes and shapes), run the
        current binding, then make the set it wrote current. Should the run raise, the current
        set is unchanged (and stays current)."""
        binding = self._bindings[self._cur]
        if self._packed is None:
            fed = [s for n, s in self._data_specs.items() if n not in self._bound]
            self._packed = _PackedInputs(fed, self._bindings)
        self._packed.copy(arrays)
        for name in self._packed.others:
            self._feed(binding, name, arrays[name])
        self.session.run_with_iobinding(binding)
        self._cur = 1 - self._cur

    def _feed(self, binding: ort.IOBinding, name: str, arr: np.ndarray) -> None:
        """Bind or copy one fed array that :class:`_PackedInputs` does not take (a dynamic
        shape, or 1 MiB and more).

        A fed array is copied into an OrtValue bound once in both bindings (0.7 us a tensor)
        rather than bound anew (6 us: 12 ms a step with 2,000 fed gradients); a new shape (a
        ragged last batch) binds a new buffer.
        """
        slots = self._feed_slots
        if arr.nbytes >= COPY_LIMIT:  # large: bound where it is (a copy would cost more)
            slots.pop(name, None)  # the other binding still holds the old slot: drop it
            binding.bind_cpu_input(name, np.ascontiguousarray(arr))
            return
        slot = slots.get(name)
        if slot is not None and slot[0] == arr.shape:
            slot[1].update_inplace(arr)
            return
        value = ort.OrtValue.ortvalue_from_numpy(np.array(arr, order="C", copy=True))
        slots[name] = (arr.shape, value)
        for b in self._bindings:
            b.bind_ortvalue_input(name, value)
