"""Shared helpers of the benchmark suite: threads, interleaved timing, environment, formatting.

Timing is interleaved: every round runs each contender once (``inner`` steps), in a rotating
order, so a burst of load from other processes hits all contenders alike; the figure reported
is the median over rounds after warm-up rounds, per step, in milliseconds.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Timing:
    """Per-step times (ms) of one contender over the measured rounds."""

    samples: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return float(np.median(self.samples)) if self.samples else float("nan")

    @property
    def best(self) -> float:
        return float(np.min(self.samples)) if self.samples else float("nan")

    def as_dict(self) -> dict:
        return {
            "median_ms": round(self.median, 4),
            "min_ms": round(self.best, 4),
            "samples_ms": [round(s, 4) for s in self.samples],
        }


def interleaved(
    contenders: Mapping[str, Callable[[], object]],
    rounds: int,
    warmup: int = 2,
    inner: int = 1,
) -> dict[str, Timing]:
    """Time each contender ``rounds`` times, interleaved, after ``warmup`` unrecorded rounds."""
    names = list(contenders)
    out = {n: Timing() for n in names}
    for r in range(warmup + rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            fn = contenders[name]
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            dt = (time.perf_counter() - t0) * 1e3 / inner
            if r >= warmup:
                out[name].samples.append(dt)
    return out


def set_threads(threads: int) -> None:
    """Use ``threads`` intra-op threads in torch (onnxruntime gets them per session)."""
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set once in this process
        pass


def ort_options(threads: int, optimize: bool = True):
    """Session options used for every onnxruntime contender: explicit, equal threads.

    ``optimize=False`` turns graph optimizations off: for the optimizer-only models they change
    nothing (the optimized graph has the same nodes; checked) but onnxruntime's session set-up
    grows faster than linearly with the node count (about 80 s for 20,000 update nodes here).
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    if os.environ.get("ADAMAX_BENCH_SPIN") != "1":
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return so


def environment(threads: int) -> dict:
    """What the figures were measured on."""
    import onnx
    import onnxruntime as ort
    import torch

    try:
        load = os.getloadavg()
    except OSError:  # pragma: no cover - not on Linux
        load = (float("nan"),) * 3
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:  # pragma: no cover
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads": threads,
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "onnx": onnx.__version__,
        "numpy": np.__version__,
        "torch": torch.__version__,
        "loadavg_at_start": [round(x, 2) for x in load],
    }


def fmt_ms(x: float) -> str:
    if x != x:  # NaN
        return "-"
    return f"{x:.3f}" if x < 1 else f"{x:.2f}" if x < 100 else f"{x:.1f}"


def fmt_ratio(x: float | None) -> str:
    return "-" if x is None or x != x else f"{x:.2f}x"


def ratio_target(what: str, ratio: float, limit: float, peer: str) -> tuple[str, str, bool]:
    """A target row ``(target, measured, met)``: ``what`` at most ``limit`` times ``peer``."""
    return (f"{what} <= {limit:.1f}x {peer}", fmt_ratio(ratio), ratio <= limit)


def table(headers: list[str], rows: list[list[str]]) -> str:
    """A GitHub-flavoured markdown table."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows
    ]
    return "\n".join([line, sep, *body])
