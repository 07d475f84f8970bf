"""TrainingSession: one ``InferenceSession.run`` per training step, state kept on the device.

Parameters and optimizer state live on the session's device in two sets of buffers with two
IOBindings prepared once (:class:`.buffers.StateBuffers`): a step binds only the batch, runs one
binding and flips to the other, so per step only the batch goes in and the scalar loss comes
out; no parameter-sized host copy or allocation happens. A failed run writes only into the
*other* set, so the current parameters and state are untouched; feeds are validated
(:mod:`.feeds`) and learning-rate tables checked before anything runs.

This module is the public surface of a session (step, state, learning rates, checkpoints,
inference) over those buffers. It never edits graphs: the model it runs comes from
:mod:`.passes.session`, the inference model from :mod:`.passes.inference`; learning rates are
read by :mod:`.lr_probe`, checkpoints written and checked by :mod:`.checkpoint`, providers
checked and the onnxruntime session started by :mod:`.providers`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from .api import load_model
from .atomic import save_model_atomically
from .buffers import StateBuffers
from .checkpoint import check_restorable, model_identity, read_checkpoint, write_checkpoint
from .errors import LearningRateTableExhausted, ModelError
from .feeds import FeedValidator, TensorSpec
from .lr_probe import LearningRateProbe, groups_of
from .passes.contract import (
    BETA1_POWER,
    GLOBAL_STEP,
    Contract,
    initial_values,
    m_name,
    read_contract,
    v_name,
)
from .passes.inference import extract_inference_model
from .passes.names import LOSS_SCALE
from .providers import checked_providers, default_chunk_size, device_of, start_session
from .safety import label_ranges
from .trainable import is_trainable_file, training_model_from_trainable

__all__ = ["TrainingSession", "default_chunk_size"]


class TrainingSession:
    """Run a model built by :func:`build_training_model` or :func:`build_optimizer_model`.

    Args:
        model: the built model (ModelProto, path or bytes).
        providers: onnxruntime execution providers (default: CPU).
        sess_options: an ``onnxruntime.SessionOptions`` (threads, optimization level).
        chunk_size: the session runs the update of each float32 parameter of at least
            8 chunks as a ``Scan`` over cache-sized chunks of about this many elements
            (:class:`passes.chunking.ChunkUpdates`; bit-identical: w, m, v and the gradient
            are read once and the results written once, instead of ten whole-tensor passes;
            the model itself is not changed). None (default): 131,072 when every
            provider is the CPU provider, else 0 (off: on a GPU, whole-tensor kernels win).
            Should onnxruntime refuse the rewritten model, the session warns
            (``RuntimeWarning``) and runs the model as built.

    Example:
        >>> sess = TrainingSession(train_model)
        >>> loss = sess.step({"input": x, "labels": y})
    """

    def __init__(
        self,
        model: onnx.ModelProto | str | os.PathLike | bytes,
        providers: Sequence[Any] | None = None,
        sess_options: ort.SessionOptions | None = None,
        chunk_size: int | None = None,
    ) -> None:
        self.model = load_model(model)
        if is_trainable_file(self.model):  # a file written by export_trainable_model
            self.model = training_model_from_trainable(self.model)
        contract = read_contract(self.model)
        if contract is None:
            raise ModelError(
                "this model was not built by adamax-onnx (no 'adamax_onnx.contract' metadata); "
                "build it with build_training_model or build_optimizer_model"
            )
        self.contract: Contract = contract
        self.providers = checked_providers(providers)
        if sess_options is None:
            sess_options = ort.SessionOptions()
            # Silence ORT's per-initializer warnings (unused "<input>.initial" values of a
            # built model, defaults of inputs in older models).
            sess_options.log_severity_level = 3
        self._sess_options = sess_options
        if chunk_size is None:
            chunk_size = default_chunk_size(self.providers)
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 0:
            raise ValueError(f"chunk_size must be an int >= 0 or None, got {chunk_size!r}")
        self.chunk_size = chunk_size
        # Parameters, state and fixed learning rates are always bound (IOBinding): the session
        # gets the model without their initial values (passes.session).
        from .passes.session import chunk_layouts, session_models  # onnx_ir: on first use

        session, runnable = start_session(
            *session_models(self.model, contract, chunk_size), sess_options, self.providers
        )
        # Every input's spec, read once (NodeArg.type/.shape build new objects on each access).
        self._input_specs = {i.name: TensorSpec.of_input(i) for i in session.get_inputs()}
        # Class-label inputs whose values are range-checked before a step (safety.py).
        self._label_ranges = label_ranges(self.model, contract.data_inputs)
        defaults = initial_values(self.model)
        self._state_names = contract.state_inputs()
        missing = [n for n in self._state_names if n not in defaults]
        if missing:
            raise ModelError(f"built model lacks initial values for state input(s) {missing}")
        # Outputs of parameters updated chunk by chunk (chunk_size) are declared in chunk
        # layout [rows, chunk]: the same buffer is bound with that shape (no copy).
        layout = chunk_layouts(runnable, self._state_names)
        del runnable
        self._buffers = StateBuffers(
            session,
            {n: defaults[n] for n in self._state_names},
            {n: defaults[n] for n in contract.lr_inputs.values()},
            [self._input_specs[n] for n in contract.data_inputs],
            # host scalars: the loss, and (skip_nonfinite) whether the step was skipped
            [n for n in (contract.loss, contract.overflow) if n],
            layout,
            *device_of(self.providers),
        )
        self._global_step = int(numpy_helper.to_array(defaults[GLOBAL_STEP]))
        # name -> exact spec of every tensor carried between steps (set_parameters, checkpoints)
        self._state_specs = self._buffers.specs()
        self._predictor: tuple[ort.InferenceSession, FeedValidator, frozenset[str]] | None = None
        self._lr_probe: LearningRateProbe | None = None
        self._feeds = self._feed_validator()
        self.last_overflow = False

    @property
    def session(self) -> ort.InferenceSession:
        """The onnxruntime session a step runs (its two IOBindings are prepared once)."""
        return self._buffers.session

    @session.setter
    def session(self, session: ort.InferenceSession) -> None:
        self._buffers.session = session  # e.g. a proxy that counts runs

    # -- stepping ----------------------------------------------------------------------------
    def _feed_validator(self) -> FeedValidator:
        """The validator of a step's feeds: what a step takes changes only with bind_inputs."""
        return FeedValidator(
            self._input_specs,
            [n for n in self.contract.data_inputs if n not in self._buffers.bound],
            "a step",
            self._label_ranges,
            bound=self._buffers.bound,
        )

    def _check_tables(self) -> None:
        limit = self.contract.table_limit
        if limit is not None and self._global_step >= limit:
            raise LearningRateTableExhausted(
                f"global_step {self._global_step} is past the end of the learning-rate table "
                f"(length {limit}); parameters and state are unchanged. Use a longer table or a "
                "schedule from adamax_onnx.schedules"
            )

    def bind_inputs(self, values: Mapping[str, ort.OrtValue]) -> None:
        """Bind data inputs once for every later step (e.g. gradients already on the device).

        Each value must be an ``onnxruntime.OrtValue`` of the input's dtype and shape on the
        session's device. Steps then read it in place: nothing is copied per step, and writing
        into it (``OrtValue.update_inplace``) changes what the next step reads. A bound input is
        no longer passed to :meth:`step`; binding it again replaces it.

        Raises:
            FeedError: an unknown input name, not an OrtValue, or a wrong dtype or shape.
        """
        self._buffers.bind_inputs(values)
        self._feeds = self._feed_validator()  # what a step takes has changed

    def step(self, feeds: Mapping[str, np.ndarray] | None = None) -> float | None:
        """Run one training step; returns the (unscaled) loss, or None for an optimizer model.

        Raises:
            FeedError: a missing, extra, misnamed, wrongly typed or shaped input (nothing ran).
            LearningRateTableExhausted: the learning-rate table has no entry for this step.

        With ``skip_nonfinite``, :attr:`last_overflow` tells whether this step was skipped
        (a gradient held NaN/Inf: parameters, optimizer state and global_step are unchanged).
        """
        arrays = self._feeds({} if feeds is None else feeds)
        self._check_tables()
        buffers = self._buffers
        buffers.run(arrays)
        overflow = self.contract.overflow
        self.last_overflow = bool(buffers.output(overflow)) if overflow else False
        if not self.last_overflow:
            self._global_step += 1
        return float(buffers.output(self.contract.loss)) if self.contract.loss else None

    # -- state access ------------------------------------------------------------------------
    @property
    def global_step(self) -> int:
        return self._global_step

    @property
    def loss_scale(self) -> float | None:
        """The current dynamic loss scale (graph state), or None without a dynamic manager."""
        if LOSS_SCALE not in self._state_names:
            return None
        return float(self._buffers.read(LOSS_SCALE))

    def ortvalue(self, name: str) -> ort.OrtValue:
        """The OrtValue holding the current value of a parameter or state tensor, on the
        session's device, without a copy (e.g. to hand it to another library by DLPack).

        Valid until the next step: the session keeps two preallocated buffer sets, a step reads
        one and writes its results into the other, which becomes current; neither ever moves.
        Copy what must outlive the step (:meth:`parameters` and :meth:`state` do).

        Raises:
            ModelError: ``name`` is not a parameter or state tensor of this model.
        """
        return self._buffers.ortvalue(name)

    @property
    def chunk_layout(self) -> dict[str, list[int]]:
        """The state tensors whose update runs as a Scan over chunks (``chunk_size``), each with
        the ``[rows, chunk]`` layout its ``.updated`` output is declared in; empty when nothing
        is chunked. The session binds those outputs to its parameter-shaped buffers as is."""
        return self._buffers.layout

    def parameters(self) -> dict[str, np.ndarray]:
        """Current parameter values (host copies), by name."""
        return {p: self._buffers.read(p) for p in self.contract.params}

    def state(self) -> dict[str, Any]:
        """Optimizer state: ``global_step``, ``beta1_power``, and ``m``/``v`` per parameter.

        Models with extra carried state (a dynamic loss scale) add ``extra``: name -> array.
        """
        state = {
            "global_step": int(self._buffers.read(GLOBAL_STEP)),
            "beta1_power": float(self._buffers.read(BETA1_POWER)),
            "m": {p: self._buffers.read(m_name(p)) for p in self.contract.params},
            "v": {p: self._buffers.read(v_name(p)) for p in self.contract.params},
        }
        if self.contract.extra_state:
            state["extra"] = {n: self._buffers.read(n) for n in self.contract.extra_state}
        return state

    def set_parameters(self, values: Mapping[str, np.ndarray]) -> None:
        """Overwrite parameters in place (optimizer state is kept). Unknown names are an error."""
        unknown = [n for n in values if n not in self.contract.params]
        if unknown:
            raise ModelError(
                f"unknown parameter(s) {unknown}; parameters are {self.contract.params}"
            )
        checked = {name: np.asarray(arr) for name, arr in values.items()}
        for name, arr in checked.items():
            spec = self._state_specs[name]
            if not spec.fits(arr.dtype, arr.shape):
                raise ModelError(
                    f"parameter {name!r} must be {spec}, got {arr.dtype}{list(arr.shape)}"
                )
        for name, arr in checked.items():
            self._buffers.write(name, arr)

    @property
    def parameter_specs(self) -> dict[str, TensorSpec]:
        """Each parameter's dtype and shape (:class:`adamax_onnx.feeds.TensorSpec`), by name:
        what :meth:`set_parameters` accepts."""
        return {p: self._state_specs[p] for p in self.contract.params}

    @property
    def learning_rates(self) -> dict[int, float]:
        """Current fixed learning rate of each group that has one (overridable between steps)."""
        return {int(g): float(self._buffers.read(n)) for g, n in self.contract.lr_inputs.items()}

    def set_learning_rate(self, value: float, group: int | None = None) -> None:
        """Change a fixed learning rate between steps, without rebuilding the graph."""
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0:
            raise ValueError(f"learning rate must be a number >= 0, got {value!r}")
        groups = self.contract.lr_inputs
        targets = list(groups) if group is None else [str(group)]
        for g in targets:
            if g not in groups:
                raise ValueError(
                    f"group {g} has no fixed learning rate (fixed-lr groups: {sorted(groups)})"
                )
            self._buffers.write(groups[g], np.array(value, np.float32))

    # -- current learning rate / weight decay (MindSpore get_lr, get_weight_decay) ---------------
    def _probe(self) -> tuple[LearningRateProbe, int, dict[str, np.ndarray]]:
        """The probe (cut out once), the graph's global_step and the fixed learning rates."""
        if self._lr_probe is None:
            self._lr_probe = LearningRateProbe(self.model, self.contract)
        lrs = {n: self._buffers.read(n) for n in self._buffers.fixed_names}
        return self._lr_probe, int(self._buffers.read(GLOBAL_STEP)), lrs

    def get_lr(self) -> dict[int, float]:
        """The learning rate each group uses at the next step, by group index.

        Fixed, tabled and scheduled learning rates alike, evaluated at the current
        ``global_step`` exactly as the training graph will (a fixed lr next to a dynamic one
        includes MindSpore's float32 ``lr + 1 - 1``). Ungrouped models have one group, 0.

        Raises:
            LearningRateTableExhausted: a learning-rate table has no entry for this step.
        """
        probe, step, lrs = self._probe()
        return probe.learning_rates(step, lrs)

    def get_lr_parameter(self, param: str | Sequence[str]) -> float | list[float]:
        """The learning rate of a parameter's group (or a list, for a list of names)."""
        names = [param] if isinstance(param, str) else list(param)
        groups = groups_of(self.contract, names)
        lrs = self.get_lr()
        values = [lrs[g] for g in groups]
        return values[0] if isinstance(param, str) else values

    def get_weight_decay(self) -> dict[int, float]:
        """The weight decay of each group at the next step, by group index.

        Constant and dynamic (schedule) weight decays alike, as configured: unlike MindSpore's
        ``get_weight_decay`` the value is *not* multiplied by ``loss_scale`` (the graph does
        that when it applies it). Ungrouped, parameters named "beta"/"gamma" are still not
        decayed; a group's ``decayed`` list in the contract names the ones that are.
        """
        probe, step, lrs = self._probe()
        return probe.weight_decays(step, lrs)

    # -- checkpoints -------------------------------------------------------------------------
    def identity(self) -> str:
        """A fingerprint of the model's trainable interface: parameters, shapes, dtypes, hyper."""
        return model_identity(self.contract, self._state_specs)

    def state_tensors(self) -> dict[str, np.ndarray]:
        """Host copies of every tensor carried between steps, by graph input name: parameters,
        optimizer state and fixed learning rates (what a checkpoint holds)."""
        buffers = self._buffers
        return {n: buffers.read(n) for n in [*buffers.state_names, *buffers.fixed_names]}

    def save_checkpoint(self, path: str | os.PathLike) -> Path:
        """Write parameters and optimizer state atomically; returns the file written."""
        meta = {
            "identity": self.identity(),
            "params": self.contract.params,
            "global_step": self._global_step,
        }
        return write_checkpoint(path, self.state_tensors(), meta)

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        """Restore parameters and state; a checkpoint of another model is refused, state untouched."""
        arrays, meta = read_checkpoint(path)
        check_restorable(
            path,
            arrays,
            meta,
            self.identity(),
            self.contract.params,
            self._state_specs,
            GLOBAL_STEP,
        )
        buffers = self._buffers
        for name in [*buffers.state_names, *buffers.fixed_names]:
            buffers.write(name, arrays[name])
        self._global_step = int(arrays[GLOBAL_STEP])

    # -- inference ---------------------------------------------------------------------------
    def inference_model(self) -> onnx.ModelProto:
        """The original inference model with the current parameter values."""
        if self.contract.kind != "training":
            raise ModelError("an optimizer model has no inference graph to export")
        # with the running statistics of BatchNorm trained in training mode (extra state)
        extra = {n: self._buffers.read(n) for n in self.contract.extra_state}
        return extract_inference_model(self.model, {**extra, **self.parameters()})

    def export_inference_model(self, path: str | os.PathLike) -> Path:
        """Write the original inference graph with the trained weights to ``path``."""
        return save_model_atomically(self.inference_model(), path)

    def predict(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run the inference graph on the current parameters (no update); returns its outputs.

        Raises:
            FeedError: a missing, extra, wrongly typed or shaped input (as :meth:`step`).
        """
        if self._predictor is None:
            live = [*self.contract.params, *self.contract.extra_state]
            model = extract_inference_model(self.model, {}, params_as_inputs=live)
            predictor = ort.InferenceSession(
                model.SerializeToString(), sess_options=self._sess_options, providers=self.providers
            )
            specs = {i.name: TensorSpec.of_input(i) for i in predictor.get_inputs()}
            takes = self.contract.model_inputs
            validator = FeedValidator(specs, takes, "predict", refuse_empty=False)
            self._predictor = (predictor, validator, frozenset(specs))
        predictor, validate, inputs = self._predictor
        arrays = validate(feeds)
        binding = predictor.io_binding()
        for name in [*self.contract.params, *self.contract.extra_state]:
            if name in inputs:  # extra state the graph reads: running statistics
                binding.bind_ortvalue_input(name, self._buffers.ortvalue(name))
        for name, arr in arrays.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(arr))
        for out in self.contract.model_outputs:
            binding.bind_output(out, "cpu")
        predictor.run_with_iobinding(binding)
        return [o.numpy() for o in binding.get_outputs()]
