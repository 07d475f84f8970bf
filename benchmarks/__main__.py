"""``python -m benchmarks [--quick] [--threads N] [--only SECTION ...] [--out FILE]``.

Runs the suite in one process (memory probes in subprocesses), prints the tables and the issue's
targets with met / not met, and writes everything as JSON (default
``benchmarks/results/latest.json``). See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from . import gradients, memory, models, optimizer_step, training_step
from .common import environment, fmt_ms, fmt_ratio, ratio_target, set_threads, table

SECTIONS = ("optimizer", "feeds", "training", "memory", "gradients", "models")
DEFAULT_OUT = Path(__file__).parent / "results" / "latest.json"


def optimizer_table(records: list[dict]) -> str:
    rows = []
    for r in records:
        t = {k: v["median_ms"] for k, v in r["timings"].items()}
        ra = r["ratios"]
        rows.append(
            [
                r["set"],
                f"{r['elements']:,}",
                fmt_ms(t["adamax-onnx"]),
                fmt_ms(t["adamax-onnx chunk_size=0"]),
                fmt_ms(t["adamax-onnx bucket_size=0"]),
                fmt_ms(t["torch foreach=False"]),
                fmt_ms(t["torch foreach=True"]),
                fmt_ms(t["numpy"]),
                fmt_ms(r["floor_1t_ms"]),
                fmt_ms(r["floor_mt_ms"]),
                fmt_ratio(ra["adamax-onnx"]["vs_torch_foreach"]),
                fmt_ratio(ra["adamax-onnx chunk_size=0"]["vs_torch_foreach"]),
                fmt_ratio(ra["adamax-onnx"]["vs_floor_mt"]),
                fmt_ratio(ra["adamax-onnx chunk_size=0"]["vs_floor_mt"]),
            ]
        )
    headers = [
        "parameters",
        "elements",
        "onnx ms",
        "onnx chunk_size=0 ms",
        "onnx bucket_size=0 ms",
        "torch ms",
        "torch foreach ms",
        "numpy ms",
        "floor 1t ms",
        "floor mt ms",
        "onnx / torch-fe",
        "chunk_size=0 / torch-fe",
        "onnx / floor",
        "chunk_size=0 / floor",
    ]
    return table(headers, rows)


def training_table(records: list[dict]) -> str:
    rows = []
    for r in records:
        t = {k: v["median_ms"] for k, v in r["timings"].items()}
        q = r["ratios_vs_torch"]
        rows.append(
            [
                r["model"],
                str(r["batch"]),
                fmt_ms(t["adamax-onnx"]),
                fmt_ms(t["torch"]),
                fmt_ratio(q["adamax-onnx"]),
            ]
        )
    headers = ["model", "batch", "onnx ms", "torch ms", "onnx / torch"]
    return table(headers, rows)


def models_table(records: list[dict]) -> str:
    rows = []
    for r in records:
        if "error" in r:
            rows.append([r["model"], str(r["batch"]), "error", r["error"][:60], "", "", "", ""])
            continue
        t = {k: v["median_ms"] for k, v in r["timings"].items()}
        m = r["memory"]
        rows.append(
            [
                r["model"],
                str(r["batch"]),
                fmt_ms(t["adamax-onnx"]),
                fmt_ms(t["torch"]),
                fmt_ratio(r["ratio_vs_torch"]),
                str(m["onnx"].get("peak_delta_mb", m["onnx"].get("error"))),
                str(m["torch"].get("peak_delta_mb", m["torch"].get("error"))),
                fmt_ratio(r["memory_ratio"]) if "memory_ratio" in r else "",
            ]
        )
    headers = [
        "model",
        "batch",
        "onnx ms",
        "torch ms",
        "onnx / torch",
        "onnx peak +MiB",
        "torch peak +MiB",
        "memory ratio",
    ]
    return table(headers, rows)


def gradients_table(result: dict) -> str:
    out = []
    if isinstance(result.get("graph"), list):
        rows = [
            [
                r["model"],
                str(r["graphs"]["autodiff"]["nodes"]),
                str(r["graphs"]["ort-1.19.2"]["nodes"]),
                fmt_ratio(r["node_ratio"]),
                fmt_ms(r["timings"]["autodiff"]["median_ms"]),
                fmt_ms(r["timings"]["ort-1.19.2"]["median_ms"]),
                fmt_ratio(r["ratio_autodiff_vs_ort"]),
            ]
            for r in result["graph"]
        ]
        headers = [
            "model",
            "nodes autodiff",
            "nodes ort-1.19.2+lowering",
            "node ratio",
            "step autodiff ms",
            "step ort-1.19.2 ms",
            "step ratio",
        ]
        out.append(table(headers, rows))
    else:
        out.append(f"graph comparison: {result.get('graph')}")
    rows = [
        [str(r["layers"]), str(r["nodes"]), f"{r['build_s']:.3f}", f"{r['session_start_s']:.3f}"]
        for r in result.get("build", [])
    ]
    out.append(table(["transformer layers", "nodes", "build s", "session start s"], rows))
    return "\n\n".join(out)


def memory_table(records: list[dict]) -> str:
    rows = [
        [
            r["case"],
            f"{r['params_grads_state_mb']:.1f}",
            f"{r['session_created_delta_mb']:.1f}",
            f"{r['session_steady_delta_mb']:.1f}",
            f"{r['session_peak_delta_mb']:.1f}",
            fmt_ratio(r["peak_over_reference"]),
        ]
        for r in records
    ]
    headers = [
        "case",
        "params+grads+state MiB",
        "session created +MiB",
        "after steps +MiB",
        "peak +MiB",
        "peak / (p+g+s)",
    ]
    return table(headers, rows)


def targets(result: dict) -> list[tuple[str, str, bool | None]]:
    """The targets, evaluated on this run for the defaults: (target, measured, met).

    The ``chunk_size=0`` / ``bucket_size=0`` variants are in the tables only: they show what
    each default buys."""
    out: list[tuple[str, str, bool | None]] = []
    opt = {r["set"]: r for r in result.get("optimizer", [])}
    for variant in ("adamax-onnx",):
        for label in ("1 x 16M", "100 x 160K"):
            if label in opt:
                ra = opt[label]["ratios"][variant]
                what = f"{variant}, {label}:"
                out.append(ratio_target(what, ra["vs_torch_foreach"], 1.0, "torch foreach"))
                out.append(ratio_target(what, ra["vs_floor_mt"], 1.5, "multi-threaded floor"))
        if "2000 x 1K" in opt:
            ra = opt["2000 x 1K"]["ratios"][variant]
            what = f"{variant}, 2000 x 1K:"
            out.append(ratio_target(what, ra["vs_torch_foreach"], 1.0, "torch foreach"))
    out += optimizer_step.feeds_targets(result.get("feeds", []))
    for r in result.get("training", []):
        for variant in ("adamax-onnx",):
            what = f"{variant}, training step {r['model']} batch {r['batch']}:"
            out.append(ratio_target(what, r["ratios_vs_torch"][variant], 1.0, "torch"))
    for r in result.get("models", []):
        if "error" in r:
            out.append((f"training step {r['model']} batch {r['batch']}", r["error"], False))
            continue
        case = f"{r['model']} batch {r['batch']}:"
        out.append(ratio_target(f"training step {case}", r["ratio_vs_torch"], 1.0, "torch"))
        if "memory_ratio" in r:
            out.append(ratio_target(f"peak memory {case}", r["memory_ratio"], 1.5, "torch"))
    grads = result.get("gradients", {})
    for r in grads.get("graph", []) if isinstance(grads.get("graph"), list) else []:
        peer, what = "onnxruntime-training + lowering", f"gradient graph {r['model']}:"
        out.append(ratio_target(f"{what} nodes", r["node_ratio"], 1.0, peer))
        out.append(ratio_target(f"{what} step", r["ratio_autodiff_vs_ort"], 1.0, peer))
    for r in grads.get("build", []):
        if r["layers"] == 20:
            out.append(
                (
                    "build of a 20-layer transformer <= 0.5 s",
                    f"{r['build_s']} s",
                    r["build_s"] <= 0.5,
                )
            )
            out.append(
                (
                    "session start, 20-layer transformer <= 1 s",
                    f"{r['session_start_s']} s",
                    r["session_start_s"] <= 1.0,
                )
            )
    for r in result.get("memory", []):
        if "=0" in r["case"]:
            continue
        limit = 1.5 * r["params_grads_state_mb"] + r["activations_mb"]
        out.append(
            (
                f"memory, {r['case']}: session peak <= 1.5x (p+g+s) + activations",
                f"+{r['session_peak_delta_mb']:.1f} MiB vs limit {limit:.1f} MiB "
                f"({r['session_peak_delta_mb'] / limit:.2f}x the limit)",
                r["session_peak_delta_mb"] <= limit,
            )
        )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="fewer rounds (about a minute)")
    ap.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="threads for every contender"
    )
    ap.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON file to write")
    ap.add_argument(
        "--spin",
        action="store_true",
        help="let idle threads spin (both libraries' default) instead of sleeping",
    )
    args = ap.parse_args(argv)
    if args.spin and os.environ.get("ADAMAX_BENCH_SPIN") != "1":
        # OMP_WAIT_POLICY is read when torch starts: rerun with the environment set.
        env = dict(os.environ, ADAMAX_BENCH_SPIN="1")
        env.pop("OMP_WAIT_POLICY", None)
        os.execve(sys.executable, [sys.executable, "-m", "benchmarks", *sys.argv[1:]], env)
    if args.threads < 1:
        ap.error("--threads must be >= 1")
    set_threads(args.threads)
    result: dict = {
        "environment": environment(args.threads),
        "quick": args.quick,
        "idle_threads": "spin" if args.spin else "sleep",
    }
    start = time.perf_counter()
    runners = {
        "optimizer": optimizer_step.run,
        "feeds": optimizer_step.run_feeds,
        "training": training_step.run,
        "memory": memory.run,
        "gradients": gradients.run,
        "models": models.run,
    }
    for section in SECTIONS:
        if section in args.only:
            print(f"[{section}]", flush=True)
            t0 = time.perf_counter()
            result[section] = runners[section](args.threads, args.quick)
            print(f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
    result["seconds"] = round(time.perf_counter() - start, 1)
    try:
        result["environment"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover
        pass

    env = result["environment"]
    print(
        f"\n{env['cpu']}, {env['cores']} cores, {env['threads']} threads for every contender; "
        f"onnxruntime {env['onnxruntime']}, torch {env['torch']}, numpy {env['numpy']}; "
        "medians of interleaved rounds after warm-up"
    )
    if "optimizer" in result:
        print("\nOptimizer step (ms per step; floor = 28 B/param at the best measured bandwidth)")
        print(optimizer_table(result["optimizer"]))
    if "feeds" in result:
        print("\nNumpy gradients into a step (ms per step): step(feeds) vs binding them yourself")
        print(optimizer_step.feeds_table(result["feeds"]))
    if "training" in result:
        print("\nTraining step, end to end (ms per step)")
        print(training_table(result["training"]))
    if "memory" in result:
        print("\nMemory (RSS of the TrainingSession phase, 1 thread)")
        print(memory_table(result["memory"]))
    if "models" in result:
        print("\nReal exported models, training step (ms) and peak memory, vs PyTorch")
        print(models_table(result["models"]))
    if "gradients" in result:
        print("\nGradient graph (our autodiff vs onnxruntime-training 1.19.2) and build times")
        print(gradients_table(result["gradients"]))
    checks = targets(result)
    result["targets"] = [{"target": t, "measured": m, "met": ok} for t, m, ok in checks]
    print("\nTargets")
    for t, m, ok in checks:
        mark = "met" if ok else ("NOT met" if ok is False else "see note")
        print(f"  [{mark:>8}] {t}: {m}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwrote {args.out} ({result['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
