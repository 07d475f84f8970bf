"""The AdaMax optimizer specification: MindSpore ``nn.AdaMax`` arguments, validated and resolved.

:class:`AdaMax` holds no tensors and runs nothing. It checks its arguments exactly as MindSpore
2.10 does (same exception types, at the same points), resolves parameter groups and
``order_params``, and exposes the result as data: one :class:`ParamConfig` per parameter, in the
optimizer's order. The graph pass (:mod:`passes.adamax`) turns that data into ONNX.

A MindSpore ``Parameter`` is represented here by its name (``"fc1.weight"``), or by any object
with a ``name`` string attribute.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .checkparam import check_float, check_non_negative, check_open_unit, check_positive
from .schedules import is_schedule

__all__ = ["AdaMax", "ParamConfig", "LearningRate", "WeightDecay"]

_PRIM = "AdaMax"
_GROUP_KEYS = ("params", "lr", "weight_decay", "order_params", "grad_centralization")

#: A resolved learning rate: fixed float, per-step float32 table (1-D), or a schedule object.
LearningRate = float | np.ndarray | Any
#: A resolved weight decay (NOT yet multiplied by loss_scale): float or a schedule object.
WeightDecay = float | Any


def _param_name(p: Any) -> str | None:
    if isinstance(p, str):
        return p
    name = getattr(p, "name", None)
    return name if isinstance(name, str) else None


def _resolve_lr(value: Any, arg: str = "learning_rate") -> LearningRate:
    """MindSpore ``_preprocess_single_lr``: float/int, 0-d or 1-D tensor, iterable, or schedule."""
    if isinstance(value, (float, int)):  # bool included, as in MindSpore (float(True) == 1.0)
        value = float(value)
        check_non_negative(value, arg, _PRIM)
        return value
    if isinstance(value, (np.ndarray, np.generic)):
        arr = np.asarray(value)
        if arr.ndim == 0:
            lr = float(arr.astype(np.float32))
            check_non_negative(lr, arg, _PRIM)
            return lr
        if arr.ndim > 1:
            raise ValueError(
                f"For 'AdaMax', if '{arg}' is a tensor its dimension should be 0 or 1, "
                f"but got {arr.ndim}."
            )
        return _lr_table(arr, arg)
    if is_schedule(value):
        return value
    if isinstance(value, Iterable):
        # MindSpore: Tensor(np.array(list(lr)).astype(np.float32)); a string fails with ValueError.
        try:
            arr = np.array(list(value)).astype(np.float32)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"For 'AdaMax', '{arg}' could not be read as numbers: {exc}") from exc
        if arr.ndim != 1:
            raise ValueError(
                f"For 'AdaMax', a learning-rate table '{arg}' must be 1-D, but got shape {arr.shape}."
            )
        return _lr_table(arr, arg)
    raise TypeError(
        f"For 'AdaMax', the argument '{arg}' must be int, float, Tensor (numpy array), Iterable "
        f"or LearningRateSchedule, but got {type(value).__name__}."
    )


def _lr_table(arr: np.ndarray, arg: str) -> np.ndarray:
    table = np.array(arr, dtype=np.float32)  # a private copy, frozen below
    if table.size == 0:
        raise ValueError(f"For 'AdaMax', the learning-rate table '{arg}' must not be empty.")
    table.setflags(write=False)
    return table


def _resolve_weight_decay(value: Any, arg: str = "weight_decay") -> WeightDecay:
    """MindSpore ``_preprocess_weight_decay`` (the loss-scale product is applied by the pass)."""
    if isinstance(value, (float, int)):  # bool accepted, as in MindSpore
        value = float(value)
        check_non_negative(value, arg, _PRIM)
        return value
    if is_schedule(value):
        return value
    raise TypeError(
        f"For 'AdaMax', the argument '{arg}' must be int, float or a weight-decay schedule, "
        f"but got {type(value).__name__}."
    )


def _base_check(params: Any, arg: str) -> list:
    if params is None:
        raise ValueError(f"For 'AdaMax', the argument '{arg}' can not be None.")
    if isinstance(params, str) or not isinstance(params, Iterable):
        raise TypeError(
            f"For 'AdaMax', the argument '{arg}' must be an iterable of parameters, "
            f"but got {type(params).__name__}."
        )
    params = list(params)
    if not params:
        raise ValueError(f"For 'AdaMax', the argument '{arg}' must not be empty.")
    return params


def _check_no_duplicates(names: list[str]) -> None:
    seen: set[str] = set()
    for n in names:
        if n in seen:
            # MindSpore fails with a ValueError (its moment1.<name> clone already exists).
            raise ValueError(
                f"For 'AdaMax', the parameter {n!r} appears twice in 'params'; its state name "
                f"'{n}.adamax.m' would already exist."
            )
        seen.add(n)


@dataclass(frozen=True)
class ParamConfig:
    """Everything the update of one parameter needs, resolved.

    Attributes:
        name: parameter (initializer) name.
        group: index of its group (0 when not grouped).
        lr: fixed float, 1-D float32 table indexed by global_step, or a schedule object.
        weight_decay: float or schedule, not yet multiplied by loss_scale.
        decay: whether weight decay applies to this parameter (MindSpore's decay flag).
        grad_centralization: whether gradient centralization is requested for its group.
    """

    name: str
    group: int
    lr: LearningRate
    weight_decay: WeightDecay
    decay: bool
    grad_centralization: bool


class AdaMax:
    """MindSpore ``nn.AdaMax`` as an ONNX-graph optimizer specification.

    .. math::
        m_{t+1} = \\beta_1 m_t + (1-\\beta_1) g,\\quad
        v_{t+1} = \\max(\\beta_2 v_t, |g|),\\quad
        w \\leftarrow w - \\frac{l}{1-\\beta_1^{t+1}} \\frac{m_{t+1}}{v_{t+1}+\\epsilon}

    with, before that, MindSpore's gradient stages: weight decay
    ``g + weight_decay*loss_scale*w`` (ungrouped: only names without "beta"/"gamma"), gradient
    centralization (grouped, when requested), then ``g * (1/loss_scale)``.

    Args:
        params: parameter names (or objects with ``.name``), or a list of group dicts with keys
            ``params``, ``lr``, ``weight_decay``, ``grad_centralization``, ``order_params``.
        learning_rate: float/int >= 0, 0-d or 1-D numpy array, any iterable (a per-step table),
            or a schedule from :mod:`adamax_onnx.schedules`.
        beta1, beta2: floats in (0, 1).
        eps: float > 0.
        weight_decay: float/int >= 0, or a schedule (dynamic weight decay).
        loss_scale: float/int > 0.

    Raises:
        TypeError, ValueError, KeyError, RuntimeError: exactly where MindSpore 2.10 raises them.

    Example:
        >>> opt = AdaMax(["fc1.weight", "fc1.bias"], learning_rate=1e-3)
        >>> [p.name for p in opt.param_configs]
        ['fc1.weight', 'fc1.bias']
    """

    def __init__(
        self,
        params: Iterable[Any],
        learning_rate: Any = 0.001,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-08,
        weight_decay: Any = 0.0,
        loss_scale: float = 1.0,
    ) -> None:
        params = _base_check(params, "params")
        if not (
            all(_param_name(p) is not None for p in params)
            or all(isinstance(p, dict) for p in params)
        ):
            raise TypeError(
                "For 'AdaMax', all elements of the argument 'params' must be parameters (names) "
                "or dicts, please check the 'params'."
            )
        if isinstance(loss_scale, int):  # bool included, as in MindSpore
            loss_scale = float(loss_scale)
        check_float(loss_scale, "loss_scale", _PRIM)
        check_positive(loss_scale, "loss_scale", _PRIM)
        default_lr = _resolve_lr(learning_rate)
        self.is_group = isinstance(params[0], dict)
        configs = (
            self._group_configs(params, default_lr, weight_decay)
            if self.is_group
            else self._plain_configs(params, default_lr, weight_decay)
        )
        # MindSpore validates the optimizer-level weight decay even when every group sets its own.
        self.weight_decay = _resolve_weight_decay(weight_decay)
        self.beta1 = check_float(beta1, "beta1", _PRIM)
        self.beta2 = check_float(beta2, "beta2", _PRIM)
        self.eps = check_float(eps, "eps", _PRIM)
        check_open_unit(self.beta1, "beta1", _PRIM)
        check_open_unit(self.beta2, "beta2", _PRIM)
        check_positive(self.eps, "eps", _PRIM)
        if not self.is_group:
            # After the beta/eps checks, where MindSpore fails (cloning moment1.<name> twice).
            _check_no_duplicates([c.name for c in configs])
        self.loss_scale: float = loss_scale
        self.learning_rate = default_lr
        self.param_configs: tuple[ParamConfig, ...] = tuple(configs)

    # -- construction helpers ------------------------------------------------------------------
    @staticmethod
    def _plain_configs(params: list, lr: LearningRate, weight_decay: Any) -> list[ParamConfig]:
        wd = _resolve_weight_decay(weight_decay)
        names = [_param_name(p) for p in params]
        return [
            ParamConfig(
                name=n,
                group=0,
                lr=lr,
                weight_decay=wd,
                decay="beta" not in n and "gamma" not in n,
                grad_centralization=False,
            )
            for n in names
        ]

    @staticmethod
    def _group_configs(
        groups: list[dict], default_lr: LearningRate, weight_decay: Any
    ) -> list[ParamConfig]:
        # MindSpore _check_group_params: keys, order_params shape, element types.
        for group in groups:
            invalid = [k for k in group if k not in _GROUP_KEYS]
            if invalid:
                raise KeyError(
                    f"For 'AdaMax', the key in group params must be one of {list(_GROUP_KEYS)}, "
                    f"but got {invalid}."
                )
            if "order_params" in group:
                if len(group) > 1:
                    raise ValueError(
                        "For 'AdaMax', the order params dict in group parameters should only "
                        f"include the 'order_params' key, but got {list(group)}."
                    )
                if isinstance(group["order_params"], str) or not isinstance(
                    group["order_params"], Iterable
                ):
                    raise TypeError(
                        "For 'AdaMax', the value of 'order_params' in group parameters should be "
                        f"Iterable type, but got {type(group['order_params']).__name__}."
                    )
                continue
            if "params" not in group:
                raise KeyError(
                    f"For 'AdaMax', a parameter group has no 'params' key: {list(group)}."
                )
            members = _base_check(group["params"], "group `params`")
            for index, p in enumerate(members):
                if _param_name(p) is None:
                    raise TypeError(
                        "For 'AdaMax', the element in group parameters must be a parameter "
                        f"(name), but got {type(p).__name__} at index {index}."
                    )
        # MindSpore _parse_group_params: all 1-D lr tables must have one length.
        table_len = default_lr.size if isinstance(default_lr, np.ndarray) else 0
        group_lrs: dict[int, LearningRate] = {}
        for gi, group in enumerate(groups):
            if "lr" in group:
                lr = _resolve_lr(group["lr"], "lr")
                if isinstance(lr, np.ndarray):
                    if table_len == 0:
                        table_len = lr.size
                    elif lr.size != table_len:
                        raise ValueError(
                            "For 'AdaMax', the Tensor type dynamic learning rate in group must be "
                            "the same size as the argument 'learning_rate'."
                        )
                group_lrs[gi] = lr

        configs: list[ParamConfig] = []
        order: list[str] | None = None
        seen: set[str] = set()
        gidx = 0
        for gi, group in enumerate(groups):
            if "order_params" in group:
                order = [_param_name(p) for p in group["order_params"]]
                continue
            lr = group_lrs.get(gi, default_lr)
            wd = _resolve_weight_decay(group.get("weight_decay", weight_decay), "weight_decay")
            gc = group.get("grad_centralization", False)
            if not isinstance(gc, bool):
                raise TypeError(
                    "For 'AdaMax', the 'grad_centralization' must be bool type, "
                    f"but got {type(gc).__name__}."
                )
            # MindSpore: grouped parameters are decayed when the group's decay is > 0 or dynamic,
            # with no "beta"/"gamma" name filter.
            decay = is_schedule(wd) or wd > 0
            for p in group["params"]:
                name = _param_name(p)
                if name in seen:
                    raise RuntimeError(
                        f"For 'AdaMax', the {name} parameter already exists, it does not support "
                        "repeated setting. Please check whether the optimizer parameter has been "
                        "set multiple times."
                    )
                seen.add(name)
                configs.append(ParamConfig(name, gidx, lr, wd, decay, gc))
            gidx += 1
        if order:
            if len(order) != len(configs):
                raise ValueError(
                    "For 'AdaMax', the length of order parameters must be the same as the length "
                    f"of group parameters, but got order parameters' length {len(order)}, group "
                    f"parameters' length {len(configs)}."
                )
            by_name = {c.name: c for c in configs}
            missing = [n for n in order if n not in by_name]
            if missing:
                raise ValueError(
                    f"For 'AdaMax', 'order_params' holds {missing}, which are in no parameter group."
                )
            if len(set(order)) != len(order):
                raise ValueError("For 'AdaMax', 'order_params' holds a parameter twice.")
            configs = [by_name[n] for n in order]
        return configs

    # -- views ---------------------------------------------------------------------------------
    @property
    def param_names(self) -> list[str]:
        """Parameter names in the optimizer's order (the order of state inputs and outputs)."""
        return [c.name for c in self.param_configs]

    @property
    def exec_weight_decay(self) -> bool:
        """True when some parameter is decayed (MindSpore's ``exec_weight_decay``)."""
        return any(decays(c) for c in self.param_configs)

    def __repr__(self) -> str:
        return (
            f"AdaMax({len(self.param_configs)} params, beta1={self.beta1}, beta2={self.beta2}, "
            f"eps={self.eps}, loss_scale={self.loss_scale}, grouped={self.is_group})"
        )


def decays(c: ParamConfig) -> bool:
    """Whether the update of ``c`` adds ``weight_decay * loss_scale * w`` to its gradient."""
    return c.decay and (is_schedule(c.weight_decay) or c.weight_decay > 0)
