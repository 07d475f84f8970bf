"""Record MindSpore ``nn.AdaMax`` trajectories (parameters and moments) as golden data.

NEEDS MINDSPORE (2.10, CPU is enough); it is NOT run in CI and the test suite never imports
mindspore: ``tests/integration/test_mindspore_golden.py`` only reads the JSON written here
(``tests/golden/adamax_mindspore.json``) and replays the same gradients through
``adamax_onnx.build_optimizer_model``.

Run from the repository root with a Python that has mindspore installed, e.g.::

    PYTHONPATH=/tmp/np1_for_ms /tmp/msv/bin/python tests/golden/make_adamax_golden.py

(MindSpore 2.10's wheel needs numpy 1.x; ``/tmp/np1_for_ms`` holds one.)

For every configuration in :data:`CONFIGS` the optimizer is built on MindSpore ``Parameter``s
and called directly with fixed gradient tuples (``opt(grads)``, GRAPH_MODE, CPU), which runs
exactly its ``construct``: weight decay, gradient scaling, ``get_lr``, the ``global_step`` and
``beta1_power`` updates and the ``ApplyAdaMax`` CPU kernel. After the steps listed in
``RECORD_STEPS`` the parameters, ``moment1``/``moment2``, ``beta1_power`` and ``global_step``
are recorded.

Initial values and gradients are not random: they come from the integer hash in
:func:`hashed_values`, which the test reimplements, so only the configurations and the results
need to be stored. The SHA-256 of every gradient array is stored too, so the test can prove it
replays exactly the gradients MindSpore saw.

Configuration format (plain JSON, read by the test to build the same ``adamax_onnx.AdaMax``):

* ``params``: ordered ``{name: {"shape": [...], "dtype": "float32" | "float16"}}``.
* ``kwargs``: ``AdaMax`` keyword arguments; a learning rate or weight decay is a number,
  ``{"table": [...]}`` (a Python list) or ``{"schedule": <mindspore.nn class name>,
  "args": {...}}``.
* ``groups``: ``null`` (``params`` is the list of parameters) or a list of group dicts whose
  ``params``/``order_params`` hold names and whose ``lr``/``weight_decay`` use the forms above.
* ``grad_scale``: gradients are multiplied by it (as a loss-scaled network would produce them).
* ``zeros``: whether some gradient entries are exactly 0.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
from pathlib import Path

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn

OUT = Path(__file__).with_name("adamax_mindspore.json")
STEPS = 30
RECORD_STEPS = [1, 2, 3, 5, 8, 12, 16, 20, 25, 30]

# The parameter set most configurations use: "bn.gamma"/"bn.beta" exercise the ungrouped
# weight-decay name filter.
BASE = {
    "fc1.weight": {"shape": [8, 6], "dtype": "float32"},
    "fc1.bias": {"shape": [8], "dtype": "float32"},
    "bn.gamma": {"shape": [6], "dtype": "float32"},
    "bn.beta": {"shape": [6], "dtype": "float32"},
    "fc2.weight": {"shape": [3, 8], "dtype": "float32"},
}


def with_dtype(params: dict, dtypes: dict[str, str]) -> dict:
    return {k: {**v, "dtype": dtypes.get(k, v["dtype"])} for k, v in params.items()}


FP16 = with_dtype(BASE, dict.fromkeys(BASE, "float16"))
FP64 = with_dtype(BASE, dict.fromkeys(BASE, "float64"))
MIXED = with_dtype(BASE, {"fc1.weight": "float16", "bn.beta": "float16", "fc2.weight": "float16"})


def sched(name: str, **args) -> dict:
    return {"schedule": name, "args": args}


TABLE = {"table": [round(0.02 * 0.93**i, 6) for i in range(STEPS)]}
TABLE_B = {"table": [0.01 if i < 10 else (0.004 if i < 20 else 0.001) for i in range(STEPS)]}

CONFIGS: list[dict] = [
    {"name": "defaults", "params": BASE, "kwargs": {}},
    {
        "name": "hyperparameters",
        "params": BASE,
        "kwargs": {"learning_rate": 0.01, "beta1": 0.8, "beta2": 0.95, "eps": 1e-6},
    },
    {
        "name": "weight_decay_beta_gamma_names",
        "params": BASE,
        "kwargs": {"learning_rate": 0.01, "weight_decay": 0.05},
    },
    {
        "name": "weight_decay_loss_scale",
        "params": BASE,
        "kwargs": {"learning_rate": 0.01, "weight_decay": 0.05, "loss_scale": 128.0},
        "grad_scale": 128.0,
    },
    {
        "name": "int_arguments",
        "params": BASE,
        "kwargs": {"learning_rate": 1, "weight_decay": 1, "loss_scale": 8},
        "grad_scale": 8.0,
    },
    {"name": "lr_table", "params": BASE, "kwargs": {"learning_rate": TABLE}},
    {
        "name": "lr_cosine_decay",
        "params": BASE,
        "kwargs": {
            "learning_rate": sched("CosineDecayLR", min_lr=0.001, max_lr=0.02, decay_steps=12)
        },
    },
    {
        "name": "lr_warmup_weight_decay",
        "params": BASE,
        "kwargs": {
            "learning_rate": sched("WarmUpLR", learning_rate=0.02, warmup_steps=8),
            "weight_decay": 0.01,
        },
    },
    {
        "name": "groups",
        "params": BASE,
        "kwargs": {"learning_rate": 0.005, "loss_scale": 4.0},
        "grad_scale": 4.0,
        "groups": [
            {"params": ["fc1.weight", "bn.gamma"], "lr": 0.02, "weight_decay": 0.01},
            {"params": ["fc1.bias", "bn.beta"], "lr": TABLE, "weight_decay": 1},
            {"params": ["fc2.weight"]},
        ],
    },
    {
        "name": "groups_order_params_schedules",
        "params": BASE,
        "kwargs": {"learning_rate": TABLE_B, "weight_decay": 0.02},
        "groups": [
            {
                "params": ["fc2.weight", "bn.beta"],
                "lr": sched(
                    "InverseDecayLR",
                    learning_rate=0.02,
                    decay_rate=0.5,
                    decay_steps=4,
                    is_stair=True,
                ),
            },
            {
                "params": ["fc1.weight"],
                "lr": sched(
                    "PolynomialDecayLR",
                    learning_rate=0.02,
                    end_learning_rate=0.002,
                    decay_steps=7,
                    power=2.0,
                    update_decay_steps=True,
                ),
                "weight_decay": 0.0,
            },
            {"params": ["bn.gamma", "fc1.bias"]},
            {"order_params": ["bn.gamma", "fc1.weight", "fc1.bias", "fc2.weight", "bn.beta"]},
        ],
    },
    {
        "name": "dynamic_weight_decay",
        "params": BASE,
        "kwargs": {
            "learning_rate": 0.01,
            "weight_decay": sched(
                "ExponentialDecayLR",
                learning_rate=0.2,
                decay_rate=0.5,
                decay_steps=5,
                is_stair=True,
            ),
            "loss_scale": 2.0,
        },
        "grad_scale": 2.0,
    },
    {
        "name": "dynamic_weight_decay_groups",
        "params": BASE,
        "kwargs": {"learning_rate": 0.01},
        "groups": [
            {
                "params": ["fc1.weight", "bn.gamma"],
                "weight_decay": sched(
                    "NaturalExpDecayLR", learning_rate=0.1, decay_rate=0.1, decay_steps=4
                ),
            },
            {
                "params": ["fc1.bias", "fc2.weight"],
                "weight_decay": sched("WarmUpLR", learning_rate=0.3, warmup_steps=6),
                "lr": sched(
                    "ExponentialDecayLR", learning_rate=0.03, decay_rate=0.8, decay_steps=3
                ),
            },
            {"params": ["bn.beta"], "weight_decay": 0.05},
        ],
    },
    {
        # Only fixed learning rates: MindSpore keeps them as float32 Parameters, unrounded.
        "name": "groups_fixed_lrs",
        "params": BASE,
        "kwargs": {"learning_rate": 0.003, "weight_decay": 0.01},
        "groups": [
            {"params": ["fc1.weight", "bn.beta"], "lr": 1e-5},
            {"params": ["fc1.bias"], "lr": 0.0123, "weight_decay": 0.0},
            {"params": ["bn.gamma", "fc2.weight"]},
        ],
    },
    {
        # A fixed group lr next to a dynamic one: MindSpore's _ConvertToCell computes
        # lr + 1.0 - 1.0 in float32, so 1e-5 is used as 1.0013580322265625e-05.
        "name": "groups_tiny_fixed_lr_next_to_schedule",
        "params": BASE,
        "kwargs": {"learning_rate": 1e-5},
        "groups": [
            {"params": ["fc1.weight", "fc1.bias"]},
            {
                "params": ["bn.gamma", "bn.beta", "fc2.weight"],
                "lr": sched("WarmUpLR", learning_rate=0.01, warmup_steps=10),
            },
        ],
    },
    {"name": "fp16_defaults", "params": FP16, "kwargs": {"learning_rate": 0.01}},
    {
        "name": "fp16_weight_decay_loss_scale_eps",
        "params": FP16,
        "kwargs": {
            "learning_rate": 0.01,
            "weight_decay": 0.05,
            "loss_scale": 64.0,
            "eps": 1e-3,
            "beta1": 0.85,
        },
        "grad_scale": 64.0,
    },
    {"name": "fp16_lr_table", "params": FP16, "kwargs": {"learning_rate": TABLE}},
    {
        "name": "mixed_fp16_fp32_groups",
        "params": MIXED,
        "kwargs": {"learning_rate": 0.01, "loss_scale": 16.0},
        "grad_scale": 16.0,
        "groups": [
            {
                "params": ["fc1.weight", "fc1.bias"],
                "lr": sched("CosineDecayLR", min_lr=0.002, max_lr=0.03, decay_steps=10),
                "weight_decay": 0.02,
            },
            {
                "params": ["bn.gamma", "bn.beta"],
                "weight_decay": sched("WarmUpLR", learning_rate=0.1, warmup_steps=5),
            },
            {"params": ["fc2.weight"], "lr": 0.003},
        ],
    },
    {
        "name": "fp64_weight_decay_loss_scale_table",
        "params": FP64,
        "kwargs": {"learning_rate": TABLE, "weight_decay": 0.05, "loss_scale": 8.0},
        "grad_scale": 8.0,
    },
    {
        # eps = 1e-8 is 0 in float16: an entry whose gradients are all 0 becomes 0/0 = NaN.
        "name": "fp16_zero_gradient_eps_underflow",
        "params": {"w": {"shape": [6], "dtype": "float16"}},
        "kwargs": {"learning_rate": 0.01},
        "zeros": "first",
    },
    {
        # A NaN/Inf gradient is not skipped by plain AdaMax: it reaches m and the parameter.
        "name": "non_finite_gradient",
        "params": {"w": {"shape": [6], "dtype": "float32"}},
        "kwargs": {"learning_rate": 0.01},
        "non_finite": {"3": {"0": "nan", "1": "inf"}, "5": {"2": "-inf"}},
    },
]


# -- deterministic values (reimplemented in tests/integration/test_mindspore_golden.py) -----
def hashed_values(shape: list[int], salt: int, step: int) -> np.ndarray:
    """float64 values in [-8, 8] from an integer hash of (element index, salt, step)."""
    n = int(np.prod(shape, dtype=np.int64)) if shape else 1
    i = np.arange(n, dtype=np.int64)
    h = (i * 7919 + step * 104729 + salt * 1299709 + 17) % 65521
    val = (h - 32760).astype(np.float64) / 32760.0
    val = val * np.exp2((h % 7).astype(np.float64) - 3.0)
    return val.reshape(shape), h.reshape(shape)


def initial_value(index: int, spec: dict) -> np.ndarray:
    val, _ = hashed_values(spec["shape"], 1000 + index, 0)
    return (0.25 * val).astype(spec["dtype"])


def gradient(index: int, spec: dict, step: int, cfg: dict) -> np.ndarray:
    """Gradient of parameter ``index`` for 0-based ``step``."""
    val, h = hashed_values(spec["shape"], index, step + 1)
    zeros = cfg.get("zeros", "none" if spec["dtype"] == "float16" else "some")
    if zeros == "some":
        val = np.where(h % 23 == 0, 0.0, val)
    elif zeros == "first":
        val.reshape(-1)[0] = 0.0
    for pos, kind in cfg.get("non_finite", {}).get(str(step), {}).items():
        val.reshape(-1)[int(pos)] = float(kind)
    return (val * cfg.get("grad_scale", 1.0)).astype(spec["dtype"])


# -- MindSpore side ----------------------------------------------------------------------------
def ms_value(spec, parameters: dict):
    """A learning rate / weight decay spec as MindSpore takes it."""
    if isinstance(spec, dict) and "table" in spec:
        return list(spec["table"])
    if isinstance(spec, dict) and "schedule" in spec:
        return getattr(nn, spec["schedule"])(**spec["args"])
    return spec


def build_optimizer(cfg: dict, parameters: dict):
    kwargs = {k: ms_value(v, parameters) for k, v in cfg["kwargs"].items()}
    if cfg.get("groups") is None:
        return nn.AdaMax(list(parameters.values()), **kwargs)
    groups = []
    for group in cfg["groups"]:
        g = {}
        for key, value in group.items():
            if key in ("params", "order_params"):
                g[key] = [parameters[n] for n in value]
            else:
                g[key] = ms_value(value, parameters)
        groups.append(g)
    return nn.AdaMax(groups, **kwargs)


def b64(arr: np.ndarray) -> str:
    return base64.b64encode(
        np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes()
    ).decode()


def run_config(cfg: dict) -> dict:
    specs = cfg["params"]
    names = list(specs)
    parameters = {
        n: Parameter(Tensor(initial_value(i, specs[n])), name=n) for i, n in enumerate(names)
    }
    opt = build_optimizer(cfg, parameters)
    order = [p.name for p in opt._parameters]
    grad_sha = hashlib.sha256()
    records = []
    for step in range(STEPS):
        grads = {n: gradient(i, specs[n], step, cfg) for i, n in enumerate(names)}
        for n in names:
            grad_sha.update(np.ascontiguousarray(grads[n]).tobytes())
        opt(tuple(Tensor(grads[n]) for n in order))
        if step + 1 in RECORD_STEPS:
            rec = {
                "step": step + 1,
                "global_step": int(opt.global_step.asnumpy().reshape(-1)[0]),
                "beta1_power": float(opt.beta1_power.asnumpy().reshape(-1)[0]),
                "w": {},
                "m": {},
                "v": {},
            }
            for i, p in enumerate(opt._parameters):
                rec["w"][p.name] = b64(p.asnumpy())
                rec["m"][p.name] = b64(opt.moment1[i].asnumpy())
                rec["v"][p.name] = b64(opt.moment2[i].asnumpy())
                assert opt.moment1[i].asnumpy().dtype == np.dtype(specs[p.name]["dtype"])
            records.append(rec)
    return {**cfg, "order": order, "grad_sha256": grad_sha.hexdigest(), "records": records}


def main() -> int:
    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    out = {
        "mindspore_version": ms.__version__,
        "numpy_version": np.__version__,
        "steps": STEPS,
        "record_steps": RECORD_STEPS,
        "encoding": "arrays are base64 of little-endian raw bytes of the parameter's dtype",
        "configs": [],
    }
    for cfg in CONFIGS:
        print(f"running {cfg['name']}", file=sys.stderr)
        out["configs"].append(run_config(cfg))
    # No sort_keys: the order of "params" is the order of the parameters (and of the hash salts).
    OUT.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
