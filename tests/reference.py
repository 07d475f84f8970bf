"""Independent numpy reference of MindSpore nn.AdaMax, written from its formula and source order.

Nothing here imports adamax_onnx: the tests compare the ONNX graphs against this.

What it models (MindSpore 2.10, ``nn/optim/adamax.py`` + ``nn/optim/optimizer.py`` + the CPU
``ApplyAdaMax`` kernel):

* Gradient stages in the parameter's dtype, one rounding per op: weight decay
  ``AddN(w * cast(wd * loss_scale), g)``, gradient centralization (groups that ask, rank >= 2
  and ``shape[1] % 16 == 0``), unscaling ``g * cast(1 / loss_scale)``.
* ``lr = lr(global_step)`` before the increment; ``beta1_power *= beta1`` (float32).
* The kernel in float32 (a float16 or float64 parameter's var, m, v and grad are cast to
  float32 and the results cast back): ``m = b1*m + (1-b1)*g``, ``v = max(b2*v, |g|)``,
  ``w = w - lr/(1-beta1_power) * m/(v+eps)``.
* A fixed lr next to a dynamic one (grouped): MindSpore's ``_ConvertToCell`` uses
  ``float32(lr + 1.0 - 1.0)``.

Schedules are given as plain callables ``step -> value``; :func:`schedule` builds the six
MindSpore ones from their ``construct`` formulas in numpy float32, except for the transcendental
functions (``Pow``, ``Sin``): see :func:`pow32`.
"""

from __future__ import annotations

import math

import numpy as np

f32 = np.float32


def _dynamic(lr) -> bool:
    return callable(lr) or isinstance(lr, (list, tuple, np.ndarray))


class NumpyAdaMax:
    """params: {name: array}; per_param: optional {name: dict(lr=, wd=, decay=bool, gc=bool)}.

    ``lr``: float, table (list/array, indexed by step) or callable ``step -> lr``.
    ``wd``: float or callable ``step -> weight decay`` (a dynamic weight decay).
    Ungrouped (no ``per_param`` entry), names containing "beta"/"gamma" are not decayed.
    """

    def __init__(
        self,
        params,
        learning_rate=1e-3,
        beta1=0.9,
        beta2=0.999,
        eps=1e-8,
        weight_decay=0.0,
        loss_scale=1.0,
        per_param=None,
    ):
        self.w = {k: np.array(v) for k, v in params.items()}
        self.m = {k: np.zeros_like(v) for k, v in self.w.items()}
        self.v = {k: np.zeros_like(v) for k, v in self.w.items()}
        self.beta1, self.beta2, self.eps = f32(beta1), f32(beta2), f32(eps)
        self.loss_scale = float(loss_scale)
        self.beta1_power = f32(1.0)
        self.step = 0
        wd0 = weight_decay if callable(weight_decay) else float(weight_decay)
        default = dict(lr=learning_rate, wd=wd0, gc=False)
        self.cfg = {}
        for k in self.w:
            c = dict(default)
            c["decay"] = "beta" not in k and "gamma" not in k  # ungrouped MindSpore filter
            if per_param and k in per_param:
                c.update(per_param[k])
            self.cfg[k] = c

    @classmethod
    def from_groups(cls, params, groups, learning_rate=1e-3, weight_decay=0.0, **kwargs):
        """MindSpore group dicts (``params`` as names; ``lr``, ``weight_decay``,
        ``grad_centralization``); grouped parameters have no name filter: decayed when the
        group's weight decay is > 0 or dynamic."""
        per_param = {}
        for group in groups:
            if "order_params" in group:
                continue
            wd = group.get("weight_decay", weight_decay)
            wd = wd if callable(wd) else float(wd)
            for name in group["params"]:
                per_param[name] = dict(
                    lr=group.get("lr", learning_rate),
                    wd=wd,
                    decay=callable(wd) or wd > 0,
                    gc=bool(group.get("grad_centralization", False)),
                )
        return cls(
            params,
            learning_rate=learning_rate,
            weight_decay=weight_decay,
            per_param=per_param,
            **kwargs,
        )

    @property
    def converts_fixed_lr(self) -> bool:
        """MindSpore wraps fixed lrs in _ConvertToCell when any (group) lr is dynamic."""
        return any(_dynamic(c["lr"]) for c in self.cfg.values())

    def lr_at(self, lr, step):
        if callable(lr):
            return f32(lr(step))
        if isinstance(lr, (list, tuple, np.ndarray)):
            if step >= len(lr):
                raise IndexError("learning-rate table exhausted")
            return f32(np.asarray(lr, f32)[step])
        lr = f32(lr)
        if self.converts_fixed_lr:
            lr = f32(f32(lr + f32(1.0)) - f32(1.0))
        return lr

    def current(self):
        """{name: (lr, weight_decay)} for the next step, as MindSpore's get_lr would give."""
        out = {}
        for k, c in self.cfg.items():
            wd = c["wd"](self.step) if callable(c["wd"]) else c["wd"]
            out[k] = (float(self.lr_at(c["lr"], self.step)), float(f32(wd)))
        return out

    def update(self, grads):
        # Learning rates and weight decays are read at the current step, before the increment.
        step = self.step
        lrs = {k: self.lr_at(c["lr"], step) for k, c in self.cfg.items()}
        self.step += 1
        self.beta1_power = f32(self.beta1_power * self.beta1)
        for k, g in grads.items():
            w, c = self.w[k], self.cfg[k]
            dt = w.dtype
            g = np.array(g, dtype=dt)
            if c["decay"] and (callable(c["wd"]) or c["wd"] > 0):
                if callable(c["wd"]):  # _WrappedWeightDecay: float32 product on the graph
                    wd = f32(f32(c["wd"](step)) * f32(self.loss_scale))
                else:  # Python double product, stored as a float32 Tensor
                    wd = f32(c["wd"] * self.loss_scale)
                g = (w * wd.astype(dt)).astype(dt) + g  # Mul then AddN, each rounded to dt
            if c["gc"] and g.ndim >= 2 and g.shape[1] % 16 == 0:
                axes = tuple(range(1, g.ndim))
                g = g - g.mean(axis=axes, keepdims=True, dtype=np.float64).astype(dt)
            if self.loss_scale != 1.0:
                g = g * f32(1.0 / self.loss_scale).astype(dt)
            # ApplyAdaMax: MindSpore's CPU kernel computes in float32 for every parameter dtype.
            kt = np.float32
            g_k, m_k, v_k, w_k = (x.astype(kt) for x in (g, self.m[k], self.v[k], w))
            b1, b2, eps = (x.astype(kt) for x in (self.beta1, self.beta2, self.eps))
            m_new = m_k * b1 + g_k * (f32(1) - self.beta1).astype(kt)
            v_new = np.maximum(v_k * b2, np.abs(g_k))
            lr_t = f32(lrs[k] / (f32(1) - self.beta1_power)).astype(kt)
            w_new = w_k - lr_t * (m_new / (v_new + eps))
            self.w[k], self.m[k], self.v[k] = w_new.astype(dt), m_new.astype(dt), v_new.astype(dt)


# -- float32 transcendental functions, the same on every CPU ---------------------------------------
# numpy's float32 ``power``/``exp``/``sin``... are dispatched at run time to SIMD kernels (AVX-512,
# AVX2 or scalar libm) that round differently: on this project's AVX-512 CI machine ``np.power``
# results were up to 2 ulps, and a cosine schedule built on ``np.sin`` up to 6 ulps (1 + sin
# cancels), away from the scalar ones, so a reference built on them is not reproducible across
# machines. These compute in double with Python's ``math`` (libm's double pow/sin, < 1 ulp in
# double whichever build libm picks for the CPU) and round to float32 once: the correctly rounded
# float32 value except in vanishingly rare ties, hence CPU independent. MindSpore's and
# onnxruntime's float32 ``powf`` is not always correctly rounded, so a schedule value can be
# 1 ulp off MindSpore's (seen: NaturalExpDecayLR(0.1, 0.9, 4) at step 55, in
# tests/golden/schedules.json); the tests that compare with MindSpore say how they allow for it.
def pow32(base, exponent) -> np.float32:
    """float32 ``base ** exponent`` for float32 operands, via double and one rounding."""
    try:
        r = math.pow(float(base), float(exponent))
    except OverflowError:
        r = math.inf
    except ValueError:  # negative base, non-integer exponent (or 0 ** negative)
        r = math.nan if float(base) != 0 else math.inf
    with np.errstate(over="ignore", under="ignore"):
        return f32(r)


def sin32(x) -> np.float32:
    """float32 ``sin(x)`` for a float32 ``x``, via double and one rounding."""
    return f32(math.sin(float(x)))


def ulps(a, b):
    """Distance in units in the last place (NaN == NaN counts as equal; NaN vs number: inf).

    ``a`` and ``b``: arrays (or scalars) of one float dtype; the result has their shape."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype, (a.dtype, b.dtype)
    both_nan = np.isnan(a) & np.isnan(b)
    if a.dtype.itemsize == 8:  # float64: relative to the spacing at the larger magnitude
        with np.errstate(invalid="ignore"):
            d = np.abs(a - b) / np.spacing(np.maximum(np.abs(a), np.abs(b)))
        d = np.where(np.isnan(a) ^ np.isnan(b), np.inf, d)
        return np.where(both_nan | (a == b), 0.0, d)
    itype = {2: np.int16, 4: np.int32}[a.dtype.itemsize]
    ia = a.view(itype).astype(np.int64)
    ib = b.view(itype).astype(np.int64)
    # Map the sign-magnitude bit patterns onto a monotonic integer line.
    top = np.int64(1) << (8 * a.dtype.itemsize - 1)
    ia = np.where(ia < 0, -top - ia, ia)
    ib = np.where(ib < 0, -top - ib, ib)
    d = np.abs(ia - ib).astype(np.float64)
    d = np.where(np.isnan(a) ^ np.isnan(b), np.inf, d)
    return np.where(both_nan, 0.0, d)


# -- the six MindSpore LearningRateSchedule cells, from their construct(), in numpy float32 -----
def schedule(name: str, **a):
    """A callable ``step -> float32`` computing MindSpore ``nn.<name>(**a)(step)``."""

    def p_of(step):
        return f32(step) / f32(a["decay_steps"])

    if name == "ExponentialDecayLR":

        def fn(step):
            p = p_of(step)
            if a.get("is_stair"):
                p = np.floor(p)
            return f32(f32(a["learning_rate"]) * pow32(f32(a["decay_rate"]), p))

    elif name == "NaturalExpDecayLR":

        def fn(step):
            p = f32(step)
            if a.get("is_stair"):
                p = f32(np.floor(p / f32(a["decay_steps"])) * f32(a["decay_steps"]))
            return f32(f32(a["learning_rate"]) * pow32(f32(math.e), f32(-a["decay_rate"]) * p))

    elif name == "InverseDecayLR":

        def fn(step):
            p = p_of(step)
            if a.get("is_stair"):
                p = np.floor(p)
            den = f32(1.0) + f32(a["decay_rate"]) * p
            return f32(f32(a["learning_rate"]) * (f32(1.0) / den))

    elif name == "CosineDecayLR":

        def fn(step):
            d = f32(a["decay_steps"])
            p = min(f32(step), d)
            delta = f32(0.5 * (a["max_lr"] - a["min_lr"]))
            angle = f32(math.pi) * (p / d + f32(0.5))
            return f32(f32(a["min_lr"]) + delta * (f32(1.0) + sin32(angle)))

    elif name == "PolynomialDecayLR":

        def fn(step):
            d = f32(a["decay_steps"])
            s = f32(step)
            if a.get("update_decay_steps"):
                horizon = d * max(np.ceil(s / d), f32(1.0))
            else:
                s, horizon = min(s, d), d
            factor = pow32(f32(1.0) - s / horizon, f32(a["power"]))
            diff = f32(a["learning_rate"] - a["end_learning_rate"])
            return f32(diff * factor + f32(a["end_learning_rate"]))

    elif name == "WarmUpLR":

        def fn(step):
            w = f32(a["warmup_steps"])
            return f32(f32(a["learning_rate"]) * (min(f32(step), w) / w))

    else:
        raise ValueError(f"unknown schedule {name}")
    return fn


def random_params(shapes, dtype=np.float32, seed=0) -> dict[str, np.ndarray]:
    """``p0, p1, ...``: standard-normal parameters of the given shapes (the tests' fixtures)."""
    rng = np.random.default_rng(seed)
    return {f"p{i}": rng.standard_normal(s).astype(dtype) for i, s in enumerate(shapes)}


def random_grads(params, step) -> dict[str, np.ndarray]:
    """``<name>_grad`` feeds of an optimizer model for ``step``, in each parameter's dtype."""
    rng = np.random.default_rng(100 + step)
    return {f"{k}_grad": rng.standard_normal(v.shape).astype(v.dtype) for k, v in params.items()}
