"""Optimizer step alone: adamax-onnx vs torch.optim.Adamax vs numpy vs the bandwidth floor.

For each parameter set (one 16M tensor, 100 x 160K, 2,000 x 1K, the parameters of the models in
``adamax_onnx/models/``) it times, interleaved in one process:

* ``adamax-onnx``: ``build_optimizer_model`` + ``TrainingSession.step()`` with the defaults, the
  gradients bound once as OrtValues with ``TrainingSession.bind_inputs`` (they are "already on
  the device"), so a step is one ``run_with_iobinding``. The built graph packs parameters of
  fewer than 65,536 elements into flat buckets; the session runs the update of parameters of at
  least 8 x 65,536 elements as a Scan over chunks of 131,072 (CPU provider);
* ``adamax-onnx chunk_size=0`` / ``adamax-onnx bucket_size=0``: the same with one of the two
  turned off, to show what each buys (``VARIANTS``); all three are bit-identical;
* ``torch foreach=False`` / ``torch foreach=True``: ``torch.optim.Adamax.step()`` with ``.grad``
  already set (eps is added before the max there, which does not change the memory traffic);
* ``numpy``: a per-parameter loop of in-place numpy ufuncs with preallocated temporaries;
* the floor: 28 bytes per float32 parameter (read w, g, m, v; write w, m, v) at the best
  bandwidth measured in the same run over the same number of elements, single-threaded (numpy
  and torch copy, torch triad with 1 thread) and multi-threaded (torch copy and triad).

The ``feeds`` section (:func:`run_feeds`) times the ways to hand *numpy* gradients to a step:
``sess.step(feeds)`` (validated and copied by the session), bind-and-copy (the user's own
OrtValues bound once, ``update_inplace`` each, then ``sess.step()``), bound once (no copy: the
lower bound) and ``torch.optim.Adamax(foreach=True)``, on 2,000 x 1K and 1 x 16M.
"""

from __future__ import annotations

import time

import numpy as np

from .common import fmt_ms, fmt_ratio, interleaved, ort_options, ratio_target, table

#: adamax-onnx contenders: name -> (build_optimizer_model options, TrainingSession options).
VARIANTS = {
    "adamax-onnx": ({}, {}),
    "adamax-onnx chunk_size=0": ({}, {"chunk_size": 0}),
    "adamax-onnx bucket_size=0": ({"bucket_size": 0}, {}),
}
#: Bytes a float32 AdaMax update must move per parameter: read w, g, m, v; write w, m, v.
BYTES_PER_PARAM = 28

LR, BETA1, BETA2, EPS = 1e-3, 0.9, 0.999, 1e-8


def model_shapes() -> dict[str, list[tuple[int, ...]]]:
    """Trainable parameter shapes of the bundled models (default sizes)."""
    import adamax_onnx as ax
    from adamax_onnx.models.cnn import build_cnn
    from adamax_onnx.models.mlp import build_mlp
    from adamax_onnx.models.transformer import build_transformer

    out = {}
    for label, model in (
        ("mlp", build_mlp()),
        ("cnn", build_cnn()),
        ("transformer", build_transformer()),
    ):
        names = set(ax.trainable_params(model))
        out[label] = [tuple(i.dims) for i in model.graph.initializer if i.name in names]
    return out


def parameter_sets() -> dict[str, list[tuple[int, ...]]]:
    sets = {
        "1 x 16M": [(16 * 2**20,)],
        "100 x 160K": [(160 * 2**10,)] * 100,
        "2000 x 1K": [(2**10,)] * 2000,
    }
    for name, shapes in model_shapes().items():
        sets[f"{name} params"] = shapes
    return sets


# -- contenders ------------------------------------------------------------------------------
def _onnx_contender(params: dict, grads: dict, threads: int, build: dict, session: dict):
    import onnxruntime as ort

    import adamax_onnx as ax

    opt = ax.AdaMax(list(params), learning_rate=LR, beta1=BETA1, beta2=BETA2, eps=EPS)
    model = ax.build_optimizer_model(opt, params, **build)
    nodes = len(model.graph.node)
    t0 = time.perf_counter()
    sess = ax.TrainingSession(model, sess_options=ort_options(threads, optimize=False), **session)
    setup_s = time.perf_counter() - t0
    del model
    bound = {f"{k}_grad": ort.OrtValue.ortvalue_from_numpy(g) for k, g in grads.items()}
    sess.bind_inputs(bound)
    return sess.step, {"nodes": nodes, "setup_s": setup_s, "session": sess, "grads": bound}


def _torch_contender(params: dict, grads: dict, foreach: bool):
    import torch

    ps = []
    for k, w in params.items():
        p = torch.nn.Parameter(torch.from_numpy(w.copy()))
        p.grad = torch.from_numpy(grads[k])
        ps.append(p)
    opt = torch.optim.Adamax(ps, lr=LR, betas=(BETA1, BETA2), eps=EPS, foreach=foreach)
    return opt.step, {"keep": ps}


def _numpy_contender(params: dict, grads: dict):
    f32 = np.float32
    w = {k: v.copy() for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v_ = {k: np.zeros_like(v) for k, v in params.items()}
    tmp = {k: np.empty_like(v) for k, v in params.items()}
    state = {"beta1_power": f32(1.0)}
    b1, b2, c1, eps = f32(BETA1), f32(BETA2), f32(1 - BETA1), f32(EPS)

    def step() -> None:
        state["beta1_power"] = f32(state["beta1_power"] * b1)
        clr = f32(f32(LR) / (f32(1) - state["beta1_power"]))
        for k, g in grads.items():
            t, mk, vk = tmp[k], m[k], v_[k]
            np.multiply(mk, b1, out=mk)
            np.multiply(g, c1, out=t)
            np.add(mk, t, out=mk)
            np.multiply(vk, b2, out=vk)
            np.abs(g, out=t)
            np.maximum(vk, t, out=vk)
            np.add(vk, eps, out=t)
            np.divide(mk, t, out=t)
            np.multiply(t, clr, out=t)
            np.subtract(w[k], t, out=w[k])

    return step


def bandwidth(n: int, threads: int, rounds: int) -> dict:
    """Best streaming bandwidth (GB/s, bytes counted without write-allocate) over n float32."""
    import torch

    a = np.ones(n, np.float32)
    b = np.ones(n, np.float32)
    c = np.ones(n, np.float32)
    ta, tb, tc = (torch.from_numpy(x) for x in (a, b, c))
    results = {}

    def run(nthreads: int) -> dict:
        torch.set_num_threads(nthreads)
        inner = max(1, int(2e6 // n))
        t = interleaved(
            {
                "copy": lambda: ta.copy_(tb),
                "triad": lambda: torch.add(tb, tc, alpha=0.5, out=ta),
            },
            rounds=rounds,
            inner=inner,
        )
        return {
            "copy": 8 * n / (t["copy"].median * 1e6),
            "triad": 12 * n / (t["triad"].median * 1e6),
        }

    results["torch_1t"] = run(1)
    results[f"torch_{threads}t"] = run(threads)
    torch.set_num_threads(threads)
    inner = max(1, int(2e6 // n))
    t = interleaved({"copy": lambda: np.copyto(a, b)}, rounds=rounds, inner=inner)
    results["numpy_1t"] = {"copy": 8 * n / (t["copy"].median * 1e6)}
    single = max(*results["torch_1t"].values(), results["numpy_1t"]["copy"])
    multi = max(single, *results[f"torch_{threads}t"].values())
    return {
        "gbps": {k: {kk: round(vv, 2) for kk, vv in v.items()} for k, v in results.items()},
        "best_1t_gbps": round(single, 2),
        "best_mt_gbps": round(multi, 2),
    }


def run(threads: int, quick: bool, log=print) -> list[dict]:
    """Measure every parameter set; returns one record per set."""
    records = []
    rounds = 5 if quick else 9
    rng = np.random.default_rng(0)
    for label, shapes in parameter_sets().items():
        n = int(sum(int(np.prod(s)) for s in shapes))
        params = {f"p{i}": rng.standard_normal(s, dtype=np.float32) for i, s in enumerate(shapes)}
        grads = {k: rng.standard_normal(v.shape, dtype=np.float32) for k, v in params.items()}
        onnx = {
            name: _onnx_contender(params, grads, threads, build, session)
            for name, (build, session) in VARIANTS.items()
        }
        torch_step, torch_keep = _torch_contender(params, grads, foreach=False)
        torch_fe_step, torch_fe_keep = _torch_contender(params, grads, foreach=True)
        contenders = {
            **{name: step for name, (step, _) in onnx.items()},
            "torch foreach=False": torch_step,
            "torch foreach=True": torch_fe_step,
            "numpy": _numpy_contender(params, grads),
        }
        inner = max(1, int(2e6 // n))  # small sets: several steps per sample
        t = interleaved(contenders, rounds=rounds, inner=inner)
        bw = bandwidth(n, threads, rounds)
        floor_1t = BYTES_PER_PARAM * n / (bw["best_1t_gbps"] * 1e6)
        floor_mt = BYTES_PER_PARAM * n / (bw["best_mt_gbps"] * 1e6)
        fe = t["torch foreach=True"].median
        rec = {
            "set": label,
            "tensors": len(shapes),
            "elements": n,
            "timings": {k: v.as_dict() for k, v in t.items()},
            "nodes": {name: info["nodes"] for name, (_, info) in onnx.items()},
            "session_setup_s": {
                name: round(info["setup_s"], 3) for name, (_, info) in onnx.items()
            },
            "bandwidth": bw,
            "floor_1t_ms": round(floor_1t, 4),
            "floor_mt_ms": round(floor_mt, 4),
            "ratios": {
                k: {
                    "vs_torch_foreach": round(v.median / fe, 3),
                    "vs_floor_mt": round(v.median / floor_mt, 3),
                }
                for k, v in t.items()
            },
        }
        records.append(rec)
        log(
            f"  {label:<20} "
            + "  ".join(f"{k}={v.median:.2f}ms" for k, v in t.items())
            + f"  floor={floor_mt:.2f}ms"
        )
        del onnx, torch_keep, torch_fe_keep, contenders
    return records


# -- feeds: step(feeds) with numpy gradients against binding them yourself -------------------
#: Parameter sets of the feeds section: many small tensors (per-tensor Python cost) and one
#: large one (a tensor of 1 MiB or more is bound in place instead of copied).
FEED_SETS = {"2000 x 1K": [(2**10,)] * 2000, "1 x 16M": [(16 * 2**20,)]}
#: Contenders of the feeds section, in table order.
FEED_CONTENDERS = ("step(feeds)", "bind-and-copy", "bound once", "torch foreach=True")


def _feed_contenders(params: dict, grads: dict, threads: int) -> dict:
    """One step of each way to hand numpy gradients to the same optimizer model."""
    import onnxruntime as ort

    import adamax_onnx as ax

    opt = ax.AdaMax(list(params), learning_rate=LR, beta1=BETA1, beta2=BETA2, eps=EPS)
    model = ax.build_optimizer_model(opt, params)
    feeds = {f"{k}_grad": g for k, g in grads.items()}

    def session() -> ax.TrainingSession:
        return ax.TrainingSession(model, sess_options=ort_options(threads, optimize=False))

    fed = session()
    # The user's own buffers, bound once; each step copies the fresh numpy gradients in.
    copied, buffers = (
        session(),
        {k: ort.OrtValue.ortvalue_from_numpy(g.copy()) for k, g in feeds.items()},
    )
    copied.bind_inputs(buffers)
    bound, values = session(), {k: ort.OrtValue.ortvalue_from_numpy(g) for k, g in feeds.items()}
    bound.bind_inputs(values)

    def bind_and_copy() -> None:
        for name, g in feeds.items():
            buffers[name].update_inplace(g)
        copied.step()

    torch_step, keep = _torch_contender(params, grads, foreach=True)
    steps = {
        "step(feeds)": lambda: fed.step(feeds),
        "bind-and-copy": bind_and_copy,
        "bound once": bound.step,
        "torch foreach=True": torch_step,
    }
    return {"steps": steps, "keep": (fed, copied, bound, buffers, values, keep)}


def run_feeds(threads: int, quick: bool, log=print) -> list[dict]:
    """``TrainingSession.step(feeds)`` with numpy gradients against bind-and-copy (the user
    copies them into OrtValues bound once, then ``step()``), bound once (no copy at all) and
    ``torch.optim.Adamax(foreach=True)``, interleaved; one record per parameter set."""
    records = []
    rounds = 7 if quick else 15
    rng = np.random.default_rng(0)
    for label, shapes in FEED_SETS.items():
        n = int(sum(int(np.prod(s)) for s in shapes))
        params = {f"p{i}": rng.standard_normal(s, dtype=np.float32) for i, s in enumerate(shapes)}
        grads = {k: rng.standard_normal(v.shape, dtype=np.float32) for k, v in params.items()}
        contenders = _feed_contenders(params, grads, threads)
        t = interleaved(contenders["steps"], rounds=rounds)
        feeds_ms = t["step(feeds)"].median
        records.append(
            {
                "set": label,
                "tensors": len(shapes),
                "elements": n,
                "timings": {k: v.as_dict() for k, v in t.items()},
                "ratios": {
                    f"step(feeds) / {k}": round(feeds_ms / t[k].median, 3)
                    for k in FEED_CONTENDERS[1:]
                },
            }
        )
        log(f"  {label:<12} " + "  ".join(f"{k}={v.median:.2f}ms" for k, v in t.items()))
        del contenders
    return records


def feeds_table(records: list[dict]) -> str:
    """The feeds section as a markdown table (ms per step, ratios of medians)."""
    rows = []
    for r in records:
        t = {k: v["median_ms"] for k, v in r["timings"].items()}
        rows.append(
            [r["set"]]
            + [fmt_ms(t[k]) for k in FEED_CONTENDERS]
            + [fmt_ratio(r["ratios"][f"step(feeds) / {k}"]) for k in FEED_CONTENDERS[1:]]
        )
    headers = ["parameters", *(f"{k} ms" for k in FEED_CONTENDERS)]
    headers += [f"feeds / {k}" for k in FEED_CONTENDERS[1:]]
    return table(headers, rows)


def feeds_targets(records: list[dict]) -> list[tuple[str, str, bool]]:
    """The targets: step(feeds) <= 1.1x bind-and-copy and <= 1.0x torch foreach."""
    return [
        ratio_target(f"step(feeds), {r['set']}:", r["ratios"][f"step(feeds) / {peer}"], limit, peer)
        for r in records
        for peer, limit in (("bind-and-copy", 1.1), ("torch foreach=True", 1.0))
    ]

