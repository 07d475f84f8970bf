"""The gradient graph: our autodiff against onnxruntime-training 1.19.2's builder, build times.

Two parts:

* ``graph``: for the bundled MLP, CNN and transformer, the training model built with our
  autodiff (the default) and with ``OrtGradientBuilder`` (+ the lowering pass, the old default),
  compared by node count and by the time of a ``TrainingSession`` step, interleaved, in the
  same onnxruntime. Needs onnxruntime-training, so it runs in ``.venv-ortt``
  (``.venv-ortt/bin/python -m benchmarks --only gradients``); elsewhere it is reported as not
  run.
* ``build``: ``build_training_model`` of an N-layer transformer (d_model 64, 16 tokens) and the
  ``TrainingSession`` start-up on it, median of 3, with the default builder.
"""

from __future__ import annotations

import time

import numpy as np

from .common import interleaved, ort_options

LR = 1e-3
BATCH = 32


def _has_ort_builder() -> bool:
    try:
        from onnxruntime.capi import _pybind_state as C
    except ImportError:  # pragma: no cover
        return False
    return hasattr(C, "GradientGraphBuilder")


def _cases():
    from adamax_onnx.models.cnn import build_cnn
    from adamax_onnx.models.mlp import build_mlp
    from adamax_onnx.models.transformer import build_transformer

    rng = np.random.default_rng(0)
    return {
        "mlp": (build_mlp(), {"input": rng.random((BATCH, 64), dtype=np.float32)}, 10),
        "cnn": (build_cnn(), {"input": rng.random((BATCH, 1, 8, 8), dtype=np.float32)}, 10),
        "transformer": (
            build_transformer(),
            {"input_ids": rng.integers(0, 16, (BATCH, 8)).astype(np.int64)},
            4,
        ),
    }


def graph(threads: int, quick: bool, log=print) -> list[dict]:
    import adamax_onnx as ax
    from adamax_onnx.passes.autodiff import AutodiffBuilder
    from adamax_onnx.passes.gradients import OrtGradientBuilder

    records = []
    rng = np.random.default_rng(1)
    for name, (model, feeds, classes) in _cases().items():
        feeds = dict(feeds, labels=rng.integers(0, classes, BATCH).astype(np.int64))
        opt = ax.AdaMax(ax.trainable_params(model), learning_rate=LR)
        built, sessions, nodes = {}, {}, {}
        for label, builder in (
            ("autodiff", AutodiffBuilder()),
            ("ort-1.19.2", OrtGradientBuilder()),
        ):
            t0 = time.perf_counter()
            built[label] = ax.build_training_model(model, opt, gradient_builder=builder)
            build_s = time.perf_counter() - t0
            nodes[label] = {"nodes": len(built[label].graph.node), "build_s": round(build_s, 3)}
            sess = ax.TrainingSession(built[label], sess_options=ort_options(threads))
            sessions[label] = lambda s=sess, f=feeds: s.step(f)
        t = interleaved(sessions, rounds=7 if quick else 15, inner=20)
        ref = t["ort-1.19.2"].median
        rec = {
            "model": name,
            "batch": BATCH,
            "graphs": nodes,
            "timings": {k: v.as_dict() for k, v in t.items()},
            "ratio_autodiff_vs_ort": round(t["autodiff"].median / ref, 3),
            "node_ratio": round(nodes["autodiff"]["nodes"] / nodes["ort-1.19.2"]["nodes"], 3),
        }
        records.append(rec)
        log(
            f"  {name}: nodes {nodes['autodiff']['nodes']} vs {nodes['ort-1.19.2']['nodes']}, "
            f"step {t['autodiff'].median:.3f} vs {ref:.3f} ms"
        )
    return records


def build(threads: int, quick: bool, log=print) -> list[dict]:
    import adamax_onnx as ax
    from adamax_onnx.models.transformer import build_transformer

    records = []
    for layers in (2, 20) if quick else (2, 10, 20):
        model = build_transformer(num_layers=layers, d_model=64, d_ff=128, seq_len=16)
        opt = ax.AdaMax(ax.trainable_params(model), learning_rate=LR)
        builds, starts = [], []
        for _ in range(3):
            t0 = time.perf_counter()
            train = ax.build_training_model(model, opt)
            builds.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            ax.TrainingSession(train, sess_options=ort_options(threads))
            starts.append(time.perf_counter() - t0)
        rec = {
            "layers": layers,
            "nodes": len(train.graph.node),
            "build_s": round(float(np.median(builds)), 3),
            "session_start_s": round(float(np.median(starts)), 3),
        }
        records.append(rec)
        log(f"  transformer x{layers}: {rec}")
    return records


def run(threads: int, quick: bool, log=print) -> dict:
    out: dict = {"build": build(threads, quick, log)}
    if _has_ort_builder():
        out["graph"] = graph(threads, quick, log)
    else:
        out["graph"] = "not run: needs onnxruntime-training (.venv-ortt)"
        log("  graph comparison: not run here (needs .venv-ortt)")
    return out
