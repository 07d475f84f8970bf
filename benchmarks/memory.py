"""Peak resident memory of a TrainingSession against parameter + gradient + state bytes.

Each case runs in a fresh subprocess (``python -m benchmarks.memory CASE``) so that nothing else
of the suite is resident. The probe builds the model, lets the garbage collector run, resets the
kernel's peak-RSS counter (``/proc/self/clear_refs``), then creates the ``TrainingSession``, binds
or feeds the inputs and runs a few steps. ``session_peak`` is the peak RSS in that phase minus
the RSS just before it: everything the session itself costs (its model copy inside
onnxruntime, the two ping-pong sets of parameters and state, onnxruntime's arena for gradients,
activations and update temporaries). Gradients of the optimizer case are user-owned OrtValues
allocated before the measured phase; they are counted in the reference bytes all the same.

glibc's malloc is pinned to a fixed mmap threshold (``MALLOC_ENV``): with its default dynamic
threshold, buffers of up to 32 MiB freed while the model is built stay in the heap and are
reused by the session without raising RSS, so the probe would undercount (seen: a 64-2048-2048
MLP "peaked" below its own parameter + state bytes).
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys

import numpy as np

#: Large buffers always mmap'ed, so that freed memory leaves RSS and reused memory is counted.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}

CASES = {
    "optimizer 1 x 16M": "opt16m",
    "optimizer 1 x 16M, chunk_size=0": "opt16m_unchunked",
    "optimizer 2000 x 1K": "opt2000",
    "optimizer 2000 x 1K, bucket_size=0": "opt2000_unbucketed",
    "training MLP 64-2048-2048-10, batch 64": "mlp_wide",
}


def _rss_mb() -> tuple[float, float]:
    """(current RSS, peak RSS since the last reset) in MiB."""
    cur = peak = 0.0
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                cur = int(line.split()[1]) / 1024
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1]) / 1024
    return cur, peak


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def probe(case: str) -> dict:
    import onnxruntime as ort

    import adamax_onnx as ax

    from .common import ort_options

    rng = np.random.default_rng(0)
    feeds = None
    session: dict = {}
    if case.startswith("opt"):
        shapes = [(16 * 2**20,)] if case.startswith("opt16m") else [(1024,)] * 2000
        params = {f"p{i}": rng.standard_normal(s, dtype=np.float32) for i, s in enumerate(shapes)}
        build = {"bucket_size": 0} if case.endswith("unbucketed") else {}
        session = {"chunk_size": 0} if case.endswith("unchunked") else {}
        model = ax.build_optimizer_model(ax.AdaMax(list(params)), params, **build)
        grads = {
            f"{k}_grad": ort.OrtValue.ortvalue_from_numpy(
                rng.standard_normal(v.shape, dtype=np.float32)
            )
            for k, v in params.items()
        }
        param_bytes = sum(v.nbytes for v in params.values())
        activation_bytes = 0  # an optimizer model has no forward pass
        del params
    else:
        from adamax_onnx.models.mlp import build_mlp

        inference = build_mlp(hidden=(2048, 2048))
        names = ax.trainable_params(inference)
        param_bytes = sum(
            int(np.prod(i.dims)) * 4 for i in inference.graph.initializer if i.name in names
        )
        model = ax.build_training_model(inference, ax.AdaMax(names), loss="cross_entropy")
        del inference
        grads = None
        # Upper estimate of activation bytes: per layer output, the pre-activation, the
        # activation and the gradient of each, float32, at batch 64.
        widths = [64, 2048, 2048, 10]
        activation_bytes = 64 * sum(widths) * 4 * 3
        feeds = {
            "input": rng.random((64, 64), dtype=np.float32),
            "labels": rng.integers(0, 10, 64).astype(np.int64),
        }
    gc.collect()
    before, _ = _rss_mb()
    exact = _reset_peak()
    # Optimizer models as in the timing section: no graph optimizations (they change nothing
    # there, and onnxruntime's set-up time grows faster than linearly with the node count).
    sess = ax.TrainingSession(
        model, sess_options=ort_options(1, optimize=feeds is not None), **session
    )
    created, _ = _rss_mb()
    if grads is not None:
        sess.bind_inputs(grads)
    for _ in range(3):
        sess.step(feeds)
    after, peak = _rss_mb()
    reference = 4 * param_bytes / 2**20  # parameters + gradients + m + v
    return {
        "param_mb": round(param_bytes / 2**20, 2),
        "params_grads_state_mb": round(reference, 2),
        "activations_mb": round(activation_bytes / 2**20, 2),
        "rss_before_session_mb": round(before, 1),
        "session_created_delta_mb": round(created - before, 1),
        "session_steady_delta_mb": round(after - before, 1),
        "session_peak_delta_mb": round(peak - before, 1),
        "peak_over_reference": round((peak - before) / reference, 3),
        "steady_over_reference": round((after - before) / reference, 3),
        "peak_reset_exact": exact,
    }


def run(threads: int, quick: bool, log=print) -> list[dict]:
    records = []
    for label, case in CASES.items():
        if quick and case.startswith("opt2000"):
            continue
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks.memory", case],
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, **MALLOC_ENV},
        )
        if proc.returncode != 0:
            raise RuntimeError(f"memory probe {case!r} failed:\n{proc.stderr[-2000:]}")
        rec = {"case": label, **json.loads(proc.stdout.strip().splitlines()[-1])}
        records.append(rec)
        log(
            f"  {label:<40} params+grads+state {rec['params_grads_state_mb']:.1f} MiB, "
            f"session peak +{rec['session_peak_delta_mb']:.1f} MiB "
            f"({rec['peak_over_reference']:.2f}x), steady +{rec['session_steady_delta_mb']:.1f} MiB"
        )
    return records


if __name__ == "__main__":
    print(json.dumps(probe(sys.argv[1])))
