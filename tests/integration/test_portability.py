"""Built training models train on the newest stock onnxruntime, on ggml, and on onnx.reference.

The models of the three families are built here (main venv, our autodiff), saved, and trained
for STEPS steps by tests/stock_runner.py in the second virtual environment ``.venv-stock``
(stock onnxruntime 1.32, no adamax_onnx: a plain ``InferenceSession`` loop, as a deployment
with no Python package of ours would run it), made by scripts/stock_venv.sh. The reference is
this library's ``TrainingSession`` (IOBinding ping-pong) on the same batches; the gradients
themselves are checked against torch and float64 differences elsewhere
(tests/passes/test_gradients.py, tests/passes/autodiff/rules/test_*.py,
tests/integration/test_real_models.py).

If the stock venv cannot be made, the tests fail: nothing here is skipped.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator

import adamax_onnx as ax
from adamax_onnx.models.cnn import build_cnn
from adamax_onnx.models.mlp import build_mlp
from adamax_onnx.models.transformer import build_transformer
from adamax_onnx.passes.contract import initial_values, updated
from tests.venvs import venv_python

# Every test here trains in .venv-stock (made on first use): run by the all-tests command.
pytestmark = pytest.mark.venv

ROOT = Path(__file__).resolve().parents[2]
STEPS = 10
BATCH = 16
# Parameters agree to float32 rounding (thread counts and providers may order sums
# differently), so the bound is relative 1e-5 plus an absolute 1e-7.
RTOL, ATOL = 1e-5, 1e-7


def _static_batch(model: onnx.ModelProto) -> onnx.ModelProto:
    """Fix the batch dimension (a static-shape model is a case of its own)."""
    for vi in list(model.graph.input) + list(model.graph.output):
        vi.type.tensor_type.shape.dim[0].dim_value = BATCH
    return model


def _cases() -> dict[str, tuple[onnx.ModelProto, str, list[str] | None]]:
    """name -> (inference model, loss, frozen parameters)."""
    # attn.k.bias has an identically zero gradient (softmax ignores a shift that is the same
    # for every key), so any two runs compute rounding noise for it, and AdaMax, which divides
    # by max|g|, turns noise into full-size steps: it is frozen rather than compared.
    frozen_k_bias = ["attn.k.bias"]
    return {
        "mlp_relu_ce": (build_mlp(hidden=(32, 16)), "cross_entropy", None),
        "mlp_tanh_matmul_mse": (
            build_mlp(hidden=(16,), activation="tanh", use_matmul=True),
            "mse",
            None,
        ),
        "mlp_sigmoid_ce": (build_mlp(hidden=(16,), activation="sigmoid"), "cross_entropy", None),
        "cnn_max_bn_ce": (build_cnn(batchnorm=True), "cross_entropy", None),
        "cnn_avg_groups_stride_mse": (
            _static_batch(build_cnn(pool="avg", groups=2, stride=2, image_size=12)),
            "mse",
            None,
        ),
        "cnn_global_ce": (build_cnn(pool="global"), "cross_entropy", None),
        "transformer_erf_ce": (build_transformer(), "cross_entropy", frozen_k_bias),
        "transformer_tanh_mse": (build_transformer(gelu="tanh"), "mse", frozen_k_bias),
    }


def _batches(model: onnx.ModelProto, loss: str, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    inp = model.graph.input[0]
    dims = [d.dim_value or BATCH for d in inp.type.tensor_type.shape.dim]
    classes = model.graph.output[0].type.tensor_type.shape.dim[1].dim_value
    out = []
    for _ in range(STEPS):
        if inp.type.tensor_type.elem_type == onnx.TensorProto.INT64:
            x = rng.integers(0, 16, dims).astype(np.int64)
        else:
            x = rng.random(dims, dtype=np.float32)
        if loss == "cross_entropy":
            y = rng.integers(0, classes, BATCH).astype(np.int64)
        else:
            y = rng.standard_normal((BATCH, classes)).astype(np.float32)
        out.append({inp.name: x, "labels": y})
    return out


def _save_batches(path: Path, batches: list[dict]) -> None:
    np.savez(path, **{f"{i}/{k}": v for i, b in enumerate(batches) for k, v in b.items()})


@pytest.fixture(scope="session")
def stock_python() -> Path:
    """The interpreter of .venv-stock, created (or reused) by scripts/stock_venv.sh."""
    return venv_python("stock_venv.sh", ".venv-stock", "stock-onnxruntime", timeout=900)


def _run_stock(python: Path, cases: list[dict], workdir: Path) -> dict[str, dict]:
    job, result = workdir / "job.json", workdir / "result.json"
    job.write_text(json.dumps({"cases": cases}))
    proc = subprocess.run(
        [str(python), str(ROOT / "tests" / "stock_runner.py"), str(job), str(result)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=workdir,
    )
    assert proc.returncode == 0, f"stock runner failed:\n{proc.stdout}\n{proc.stderr}"
    return {r["name"]: r for r in json.loads(result.read_text())["results"]}


@pytest.fixture(scope="module")
def trained(stock_python, tmp_path_factory) -> dict:
    """Build every case, train it with TrainingSession here and in the stock venv (CPU + ggml)."""
    work = tmp_path_factory.mktemp("portability")
    jobs, refs, models = [], {}, {}
    for seed, (name, (model, loss, frozen)) in enumerate(_cases().items()):
        params = [p for p in ax.trainable_params(model) if p not in (frozen or [])]
        opt = ax.AdaMax(params, learning_rate=1e-2)
        portable = ax.build_training_model(model, opt, loss=loss)
        batches = _batches(model, loss, seed)
        sess = ax.TrainingSession(portable)
        ref_losses = [sess.step(b) for b in batches]
        refs[name] = (sess.parameters(), ref_losses)
        models[name] = portable
        onnx.save(portable, work / f"{name}.onnx")
        _save_batches(work / f"{name}.npz", batches)
        jobs.append(_job(work, name, name, "cpu"))
    # chunk_size: large-parameter outputs in chunk layout, which the runner reshapes back.
    model, loss, _ = _cases()["mlp_relu_ce"]
    chunked = ax.build_training_model(
        model,
        ax.AdaMax(ax.trainable_params(model), learning_rate=1e-2),
        loss=loss,
        bucket_size=0,
        chunk_size=32,
    )
    assert any(n.op_type == "Scan" for n in chunked.graph.node)
    onnx.save(chunked, work / "chunked.onnx")
    jobs.append(dict(_job(work, "chunked", "mlp_relu_ce", "cpu"), model=str(work / "chunked.onnx")))
    # A second execution provider: the ggml plugin (see test_ggml_provider).
    for name in ("mlp_relu_ce", "mlp_tanh_matmul_mse", "cnn_max_bn_ce"):
        jobs.append(_job(work, f"{name}@ggml", name, "ggml", {"weights": "f32"}))
    return {
        "stock": _run_stock(stock_python, jobs, work),
        "refs": refs,
        "models": models,
        "work": work,
    }


def _job(work: Path, name: str, case: str, provider: str, options: dict | None = None) -> dict:
    return {
        "name": name,
        "model": str(work / f"{case}.onnx"),
        "batches": str(work / f"{case}.npz"),
        "steps": STEPS,
        "provider": provider,
        "options": options or {},
        "out": str(work / f"{name}.out.npz"),
    }


def _final(trained: dict, name: str) -> dict[str, np.ndarray]:
    result = trained["stock"][name]
    assert "error" not in result, result["error"]
    return dict(np.load(trained["work"] / f"{name}.out.npz"))


@pytest.mark.parametrize("name", list(_cases()))
def test_stock_onnxruntime_trains_like_training_session(trained, name, record_property):
    result = trained["stock"][name]
    assert result["onnxruntime"] == "1.32.0"
    final = _final(trained, name)
    ref_params, ref_losses = trained["refs"][name]
    np.testing.assert_allclose(final["__losses__"], ref_losses, rtol=RTOL, atol=ATOL)
    assert len(final["__losses__"]) == STEPS >= 10
    worst_abs = max(float(np.max(np.abs(final[p] - w))) for p, w in ref_params.items())
    record_property("max_abs_param_diff", worst_abs)
    record_property("stock_seconds_per_step", result["seconds_per_step"])
    for p, want in ref_params.items():
        np.testing.assert_allclose(final[p], want, rtol=RTOL, atol=ATOL, err_msg=f"{name}: {p}")
    assert int(final["adamax.global_step"]) == STEPS


def test_stock_onnxruntime_trains_a_chunk_layout_model(trained):
    final = _final(trained, "chunked")
    ref_params, ref_losses = trained["refs"]["mlp_relu_ce"]
    np.testing.assert_allclose(final["__losses__"], ref_losses, rtol=RTOL, atol=ATOL)
    for p, want in ref_params.items():
        assert final[p].shape == want.shape
        np.testing.assert_allclose(final[p], want, rtol=RTOL, atol=ATOL, err_msg=p)
    # bit-identical to the default (bucketed) portable model run the same way
    for p, got in _final(trained, "mlp_relu_ce").items():
        np.testing.assert_array_equal(final[p], got, err_msg=p)


def test_ggml_provider(trained, record_property):
    """The ggml plugin EP of stock onnxruntime against the CPU provider, same model and batches.

    ggml 0.2.0 lacks SoftmaxCrossEntropyLoss/LogSoftmax/OneHot and every pooling op, and when
    it cannot take a whole graph it takes no node of it (its partial mode proposes one fused
    group that would form a cycle, which onnxruntime drops). So only the MSE MLP runs on ggml
    (every node); the cross-entropy MLP and the CNN fall back to the CPU provider entirely.
    """
    for name in ("mlp_relu_ce", "mlp_tanh_matmul_mse", "cnn_max_bn_ce"):
        result = trained["stock"][f"{name}@ggml"]
        record_property(
            f"{name}@ggml",
            json.dumps({k: result.get(k) for k in ("placement", "cpu_ops", "providers")}),
        )
        cpu, gg = _final(trained, name), _final(trained, f"{name}@ggml")
        assert result["providers"][0] == "ggml"
        if name == "mlp_tanh_matmul_mse":
            assert result["placement"].get("ggml", 0) >= 1
            assert result["cpu_ops"] == [], result["cpu_ops"]
        else:
            assert result["placement"].get("ggml", 0) == 0
        params = trained["refs"][name][0]
        worst = max(float(np.max(np.abs(gg[p] - cpu[p]))) for p in params)
        record_property(f"{name}@ggml max_abs_param_diff", worst)
        record_property(f"{name}@ggml seconds_per_step", result["seconds_per_step"])
        for p in params:
            np.testing.assert_allclose(gg[p], cpu[p], rtol=RTOL, atol=ATOL, err_msg=f"{name}: {p}")


def test_reference_evaluator_one_step_matches(trained):
    """onnx.reference (numpy, no onnxruntime) runs one training step like TrainingSession."""
    model = trained["models"]["mlp_relu_ce"]
    batch = _batches(build_mlp(hidden=(32, 16)), "cross_entropy", 0)[0]
    ref_sess = ax.TrainingSession(
        ax.build_training_model(
            build_mlp(hidden=(32, 16)),
            ax.AdaMax(ax.trainable_params(build_mlp(hidden=(32, 16))), learning_rate=1e-2),
        )
    )
    ref_loss = ref_sess.step(batch)
    ref_params = ref_sess.parameters()
    feeds = {n: numpy_helper.to_array(t) for n, t in initial_values(model).items()}
    feeds.update(batch)
    outputs = ["loss"] + [updated(p) for p in ref_params]
    got = ReferenceEvaluator(model).run(outputs, feeds)
    np.testing.assert_allclose(got[0], ref_loss, rtol=RTOL, atol=ATOL)
    for p, value in zip(ref_params, got[1:], strict=True):
        np.testing.assert_allclose(value, ref_params[p], rtol=RTOL, atol=ATOL, err_msg=p)


_SESSION_SCRIPT = """
import sys
import numpy as np
import onnxruntime
import adamax_onnx as ax
model, batches, steps, out = sys.argv[1], np.load(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
assert onnxruntime.__version__ == "1.32.0"
sess = ax.TrainingSession(model)
for i in range(steps):
    sess.step({k.split("/", 1)[1]: batches[k] for k in batches.files if k.startswith(f"{i}/")})
np.savez(out, **sess.parameters())
"""


def test_adamax_onnx_training_session_on_stock_onnxruntime(trained, stock_python, tmp_path):
    """The library's own TrainingSession (IOBinding ping-pong) on stock onnxruntime, as the
    README shows: a transformer and a trainable file (training_info form)."""
    name = "transformer_erf_ce"
    work = trained["work"]
    sess = ax.TrainingSession(trained["models"][name])
    trainable = ax.export_trainable_model(sess, tmp_path / "trainable.onnx")
    for model_path in (work / f"{name}.onnx", trainable):
        out = tmp_path / "params.npz"
        proc = subprocess.run(
            [
                str(stock_python),
                "-c",
                _SESSION_SCRIPT,
                str(model_path),
                str(work / f"{name}.npz"),
                str(STEPS),
                str(out),
            ],
            capture_output=True,
            text=True,
            timeout=300,
            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        got = dict(np.load(out))
        for p, want in trained["refs"][name][0].items():
            np.testing.assert_allclose(got[p], want, rtol=RTOL, atol=ATOL, err_msg=p)
