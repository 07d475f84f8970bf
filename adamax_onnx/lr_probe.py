"""The learning rate and weight decay each group uses at a step, read from the model itself.

MindSpore's ``get_lr`` / ``get_lr_parameter`` / ``get_weight_decay``. The learning-rate and
dynamic weight-decay subgraph of a built model depends only on ``adamax.global_step`` and the
fixed learning-rate inputs, so :class:`LearningRateProbe` cuts it out once
(:func:`~adamax_onnx.passes.probe.extract_subgraph`) and runs it alone in a tiny CPU session:
the values are the training graph's own float32 results, and no training step runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
import onnxruntime as ort

from .errors import LearningRateTableExhausted, ModelError
from .passes.contract import (
    GLOBAL_STEP,
    Contract,
    lr_current_name,
    weight_decay_current_name,
)

__all__ = ["LearningRateProbe", "groups_of"]


class LearningRateProbe:
    """Evaluates a built model's per-group learning rates and weight decays at any step.

    Args:
        model: the built training or optimizer model.
        contract: its contract.

    Raises:
        ModelError: the model does not name its current learning rates (built by an older
            adamax-onnx).
    """

    def __init__(self, model: onnx.ModelProto, contract: Contract) -> None:
        self.contract = contract
        produced = {o for n in model.graph.node for o in n.output}
        groups = range(len(contract.groups))
        names = [lr_current_name(g) for g in groups]
        if not set(names) <= produced:
            raise ModelError(
                "this model does not name its current learning rates "
                "(built by an older adamax-onnx); rebuild it to use get_lr"
            )
        names += [n for n in map(weight_decay_current_name, groups) if n in produced]
        allowed = [GLOBAL_STEP, *contract.lr_inputs.values()]
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self._session = ort.InferenceSession(
            _extract_subgraph(model, names, allowed).SerializeToString(),
            options,
            providers=["CPUExecutionProvider"],
        )
        self._names = names
        self._inputs = [i.name for i in self._session.get_inputs()]

    def values(self, step: int, lr_inputs: Mapping[str, np.ndarray]) -> dict[str, float]:
        """Every probed tensor (``lr_current_name(g)``, ``weight_decay_current_name(g)``) at
        ``step``, with the fixed learning rates ``lr_inputs`` (input name -> value).

        Raises:
            LearningRateTableExhausted: a learning-rate table has no entry for ``step``.
        """
        limit = self.contract.table_limit
        if limit is not None and step >= limit:
            raise LearningRateTableExhausted(
                f"global_step {step} is past the end of the learning-rate table (length {limit})"
            )
        feeds = {n: lr_inputs[n] for n in self._inputs if n != GLOBAL_STEP}
        if GLOBAL_STEP in self._inputs:
            feeds[GLOBAL_STEP] = np.array(step, np.int64)
        results = self._session.run(self._names, feeds)
        return {n: float(v) for n, v in zip(self._names, results, strict=True)}

    def learning_rates(self, step: int, lr_inputs: Mapping[str, np.ndarray]) -> dict[int, float]:
        """The learning rate of each group at ``step``, by group index."""
        values = self.values(step, lr_inputs)
        return {g: values[lr_current_name(g)] for g in range(len(self.contract.groups))}

    def weight_decays(self, step: int, lr_inputs: Mapping[str, np.ndarray]) -> dict[int, float]:
        """The weight decay of each group at ``step`` (a constant one from the contract)."""
        values = self.values(step, lr_inputs)
        out: dict[int, float] = {}
        for g, grp in enumerate(self.contract.groups):
            name = weight_decay_current_name(g)
            out[g] = values[name] if name in values else float(grp["weight_decay"])
        return out


def groups_of(contract: Contract, params: Sequence[str]) -> list[int]:
    """The group index of each parameter name in ``params``.

    Raises:
        ModelError: a name is not an optimizer parameter (named in the message).
    """
    group_of = {p: g for g, grp in enumerate(contract.groups) for p in grp["params"]}
    unknown = [n for n in params if n not in group_of]
    if unknown:
        raise ModelError(
            f"get_lr_parameter: {unknown} are not optimizer parameters; they are {contract.params}"
        )
    return [group_of[n] for n in params]


def _extract_subgraph(model, names, allowed):
    # onnx_ir loads on first use, not with ``import adamax_onnx``.
    from .passes.probe import extract_subgraph

    return extract_subgraph(model, names, allowed)
