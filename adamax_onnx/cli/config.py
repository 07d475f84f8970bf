"""The config file of ``adamax-onnx build --config``: parameter groups and optimizer arguments.

JSON or TOML. Learning rates and weight decays may be numbers, per-step tables, or a schedule
or dynamic_lr function named with its arguments (see :func:`config_value`).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import AdamaxOnnxError

__all__ = ["config_value", "load_config"]

#: Schedule / dynamic_lr arguments that are counts; other int values in a config file are
#: read as floats (a config may say 0 for 0.0, while the schedules insist on float, as MindSpore).
_INT_ARGS = {
    "decay_steps",
    "warmup_steps",
    "total_step",
    "step_per_epoch",
    "decay_epoch",
    "warmup_epoch",
    "milestone",
}
_OPTIMIZER_KEYS = ("learning_rate", "weight_decay", "beta1", "beta2", "eps", "loss_scale")


def config_value(spec, where: str):
    """A learning rate or weight decay from a config file.

    A number; a list (a per-step table); ``{"table": [...]}``; ``{"schedule": "<class of
    adamax_onnx.schedules>", <its arguments>}``; or ``{"dynamic_lr": "<function of
    adamax_onnx.dynamic_lr>", <its arguments>}`` (a table computed by that function).
    """
    if not isinstance(spec, dict):
        return spec
    from .. import dynamic_lr, schedules

    kinds = [k for k in ("table", "schedule", "dynamic_lr") if k in spec]
    if len(kinds) != 1:
        raise AdamaxOnnxError(
            f"{where}: a dict must have exactly one of 'table', 'schedule' or 'dynamic_lr', "
            f"got keys {sorted(spec)}"
        )
    kind = kinds[0]
    args = {k: v for k, v in spec.items() if k != kind}
    if kind == "table":
        if args or not isinstance(spec["table"], list):
            raise AdamaxOnnxError(f"{where}: 'table' must be a list and the only key")
        return spec["table"]
    args = {k: float(v) if type(v) is int and k not in _INT_ARGS else v for k, v in args.items()}
    module, names = (
        (schedules, [n for n in schedules.__all__ if n.endswith("LR")])
        if kind == "schedule"
        else (dynamic_lr, list(dynamic_lr.__all__))
    )
    if spec[kind] not in names:
        raise AdamaxOnnxError(f"{where}: unknown {kind} {spec[kind]!r}; one of {names}")
    try:
        return getattr(module, spec[kind])(**args)
    except (TypeError, ValueError) as exc:
        raise AdamaxOnnxError(f"{where}: {spec[kind]}: {exc}") from exc


def load_config(path: str) -> tuple[list[dict] | None, dict]:
    """Parameter groups (or None) and optimizer arguments from a JSON or TOML config file.

    The file holds a list of groups, or a dict with an optional ``groups`` list and optional
    optimizer arguments (``learning_rate``, ``weight_decay``, ``beta1``, ``beta2``, ``eps``,
    ``loss_scale``), which take precedence over the command-line flags. Group keys are
    MindSpore's: ``params``, ``lr``, ``weight_decay``, ``grad_centralization``,
    ``order_params``; learning rates and weight decays take the forms of
    :func:`config_value`.
    """
    p = Path(path)
    if not p.is_file():
        raise AdamaxOnnxError(f"config file {path!r} does not exist")
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except ValueError as exc:
        kind = "TOML" if p.suffix == ".toml" else "JSON"
        raise AdamaxOnnxError(f"config file {path!r} is not valid {kind}: {exc}") from exc
    if isinstance(data, list):
        data = {"groups": data}
    if not isinstance(data, dict):
        raise AdamaxOnnxError(f"config file {path!r} must hold a dict or a list of groups")
    unknown = [k for k in data if k not in ("groups", *_OPTIMIZER_KEYS)]
    if unknown:
        raise AdamaxOnnxError(
            f"config file {path!r}: unknown key(s) {unknown}; allowed: "
            f"{['groups', *_OPTIMIZER_KEYS]}"
        )
    groups = data.get("groups")
    if groups is not None:
        if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
            raise AdamaxOnnxError(
                f"config file {path!r}: 'groups' must be a list of parameter-group dicts"
            )
        groups = [
            {
                k: config_value(v, f"config file {path!r}, group {i}, {k!r}")
                if k in ("lr", "weight_decay")
                else v
                for k, v in g.items()
            }
            for i, g in enumerate(groups)
        ]
    kwargs = {
        k: config_value(data[k], f"config file {path!r}, {k!r}")
        if k in _OPTIMIZER_KEYS[:2]
        else data[k]
        for k in _OPTIMIZER_KEYS
        if k in data
    }
    return groups, kwargs
