"""Train adamax-onnx training models with nothing but stock onnxruntime, onnx and numpy.

Run by tests/integration/test_portability.py with the interpreter of the second virtual environment
(``.venv-stock``, made by scripts/stock_venv.sh), where onnxruntime is the ordinary package and
adamax_onnx is not importable: this is what a user's deployment does. The binding follows the
naming contract of adamax_onnx/passes/contract.py: every graph input ``X`` with an output ``X.updated`` is
state fed back each step (reshaped to the input's shape: chunk layout), its initial value the
initializer ``X.initial`` (the contract's ``initial`` map); the other inputs listed there (fixed
learning rates) are fed their initial value every step; the batch inputs and the loss output
are read from the ``adamax_onnx.contract`` metadata.

    python tests/stock_runner.py JOB.json RESULT.json

JOB: ``{"cases": [{"name", "model", "batches", "steps", "provider", "options", "out"}]}`` with
``batches`` an .npz of ``"<step>/<input>"`` arrays, ``provider`` ``"cpu"`` or ``"ggml"``. Each
case writes its final state (and ``__losses__``) to ``out`` (.npz); RESULT gets, per case, the
providers, the per-provider node counts from onnxruntime's profiler, the op types that ran on
the CPU provider, the step time, or the error text when the model did not load or run.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper


def _contract(model: onnx.ModelProto) -> dict:
    for prop in model.metadata_props:
        if prop.key == "adamax_onnx.contract":
            return json.loads(prop.value)
    raise ValueError("model has no adamax_onnx.contract metadata")


def _session(model: onnx.ModelProto, provider: str, options: dict, profile_dir: str):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.enable_profiling = True
    so.profile_file_prefix = os.path.join(profile_dir, "profile")
    if provider == "ggml":
        import onnxruntime_ggml

        onnxruntime_ggml.register()
        devices = [d for d in ort.get_ep_devices() if d.ep_name == onnxruntime_ggml.EP_NAME]
        if not devices:
            raise RuntimeError("the ggml provider registered no device")
        so.add_provider_for_devices(devices, {str(k): str(v) for k, v in options.items()})
        return ort.InferenceSession(model.SerializeToString(), so)
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _placement(profile_path: str) -> tuple[dict, list]:
    with open(profile_path) as fh:
        events = json.load(fh)
    per_node = {}
    for e in events:
        args = e.get("args", {})
        if e.get("cat") == "Node" and "provider" in args:
            per_node[e["name"].rsplit("_kernel_time", 1)[0]] = (args["provider"], args["op_name"])
    counts = Counter(p for p, _ in per_node.values())
    cpu_ops = sorted({op for p, op in per_node.values() if p == "CPUExecutionProvider"})
    return dict(counts), cpu_ops


def run_case(case: dict) -> dict:
    result: dict = {"name": case["name"], "onnxruntime": ort.__version__}
    model = onnx.load(case["model"])
    contract = _contract(model)
    outputs = {o.name for o in model.graph.output}
    state_names = [i.name for i in model.graph.input if f"{i.name}.updated" in outputs]
    inits = {i.name: i for i in model.graph.initializer}
    initial = {k: numpy_helper.to_array(inits[v]) for k, v in contract["initial"].items()}
    state = {n: initial[n] for n in state_names}
    fixed = {n: v for n, v in initial.items() if n not in state}  # learning rates
    # The built model has no defaults on these inputs (the ggml plugin 0.2.0 would treat an
    # input with an initializer as a constant and ignore the fed value): check it.
    graph_inputs = {i.name for i in model.graph.input}
    with_default = sorted(graph_inputs & set(inits) & set(initial))
    if with_default:
        raise ValueError(f"state inputs {with_default} have defaults: not the built form")
    batches = np.load(case["batches"])
    with tempfile.TemporaryDirectory() as profile_dir:
        try:
            sess = _session(
                model, case.get("provider", "cpu"), case.get("options", {}), profile_dir
            )
        except Exception as exc:  # reported to the test, which decides what it means
            result["error"] = f"{type(exc).__name__}: {exc}"
            return result
        result["providers"] = sess.get_providers()
        fetch = [contract["loss"]] + [f"{n}.updated" for n in state_names]
        losses = []
        start = time.perf_counter()
        for step in range(case["steps"]):
            feeds = {**state, **fixed}
            feeds.update({k: batches[f"{step}/{k}"] for k in contract["data_inputs"]})
            out = sess.run(fetch, feeds)
            losses.append(float(out[0]))
            # Outputs built with chunk_size are in chunk layout [rows, chunk]: same bytes, so a
            # reshape (a view) gives the next step's input.
            state = {
                n: v.reshape(state[n].shape) for n, v in zip(state_names, out[1:], strict=True)
            }
        result["seconds_per_step"] = (time.perf_counter() - start) / case["steps"]
        result["placement"], result["cpu_ops"] = _placement(sess.end_profiling())
    np.savez(case["out"], __losses__=np.array(losses), **state)
    result["losses"] = losses
    return result


def main(argv: list[str]) -> int:
    job_path, result_path = argv
    with open(job_path) as fh:
        job = json.load(fh)
    results = [run_case(case) for case in job["cases"]]
    with open(result_path, "w") as fh:
        json.dump({"results": results}, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
