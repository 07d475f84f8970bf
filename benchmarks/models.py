"""Training steps of real exported models: adamax-onnx against the same model in PyTorch.

The models come from the real-model test suite (``tests/real_models.py``: torchvision
mobilenet_v2 and resnet18 at 64x64, transformers BERT and GPT-2 tiny configs, an LSTM
classifier, a small CNN with BatchNorm), exported with ``torch.onnx.export`` (TorchScript, the
trainable options) and built with the defaults. One step is, on both sides, forward, mean
cross-entropy, backward and MindSpore's AdaMax (``tests/torch_adamax.py`` on the torch side),
same threads, same batch from host memory.

Peak memory: each (model, side) runs in a fresh subprocess (``python -m benchmarks.models
--probe CASE SIDE BATCH``): the model and its inputs are made, the kernel's peak-RSS counter is
reset, then the session is created (adamax-onnx) or the optimizer made (torch) and 3 steps run;
the figure is the peak RSS of that phase above the RSS before it.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys

from .common import interleaved, ort_options
from .memory import MALLOC_ENV, _reset_peak, _rss_mb

CASES = (
    "small_cnn_bn",
    "lstm_embed_1layer",
    "bert_seqcls",
    "gpt2_seqcls",
    "mobilenet_v2",
    "resnet18",
)
IMAGE = 64  # torchvision models at 64x64


def _setup(name: str, batch: int, threads: int):
    """(onnx step, torch step) closures for one case, same start and batch."""
    import copy

    import torch

    import adamax_onnx as ax
    from tests import real_models as rm

    torch.set_num_threads(threads)
    case = rm.CASES[name]
    gen = torch.Generator().manual_seed(0)
    if case.data is rm._image:
        x = torch.randn(batch, 3, IMAGE, IMAGE, generator=gen)
    else:
        x = case.data(batch, gen)
    y = torch.randint(0, case.num_classes, (batch,), generator=gen)
    net = rm.build(case)
    model = rm.export(copy.deepcopy(net), case, x[:2], "torchscript")
    names = list(rm.map_params(model, net))
    opt = ax.AdaMax(names, learning_rate=rm.LR)
    train = ax.build_training_model(model, opt, loss="cross_entropy", output="logits")
    return train, net, (x, y), case


def _onnx_step(train, case, xy, threads):
    import adamax_onnx as ax

    sess = ax.TrainingSession(train, sess_options=ort_options(threads))
    feeds = {case.input_name: xy[0].numpy(), "labels": xy[1].numpy()}
    return lambda: sess.step(feeds)


def _torch_step(net, xy):
    import torch

    from tests.torch_adamax import TorchAdaMax

    opt = TorchAdaMax(net.parameters(), learning_rate=1e-3)
    x, y = xy

    def step():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        return loss.item()

    return step


def _probe(name: str, side: str, batch: int) -> dict:
    train, net, xy, case = _setup(name, batch, 1)
    gc.collect()
    before, _ = _rss_mb()
    reset = _reset_peak()
    step = _onnx_step(train, case, xy, 1) if side == "onnx" else _torch_step(net, xy)
    for _ in range(3):
        step()
    _, peak = _rss_mb()
    return {"peak_delta_mb": round(peak - before, 1), "peak_reset": reset}


def _memory(name: str, batch: int) -> dict:
    out = {}
    for side in ("onnx", "torch"):
        env = dict(os.environ, **MALLOC_ENV)
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks.models", "--probe", name, side, str(batch)],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
        if proc.returncode != 0:
            out[side] = {"error": proc.stderr.strip().splitlines()[-1:]}
        else:
            out[side] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def run(threads: int, quick: bool, log=print) -> list[dict]:
    records = []
    for name in CASES:
        for batch in (8,) if quick else (8, 32):
            try:
                train, net, xy, case = _setup(name, batch, threads)
            except Exception as exc:  # a model that does not build is a result too
                records.append({"model": name, "batch": batch, "error": str(exc)[:300]})
                log(f"  {name} batch {batch}: {str(exc)[:200]}")
                continue
            contenders = {
                "adamax-onnx": _onnx_step(train, case, xy, threads),
                "torch": _torch_step(net, xy),
            }
            t = interleaved(contenders, rounds=5 if quick else 9, inner=3)
            mem = _memory(name, batch)
            ratio = t["adamax-onnx"].median / t["torch"].median
            rec = {
                "model": name,
                "batch": batch,
                "timings": {k: v.as_dict() for k, v in t.items()},
                "ratio_vs_torch": round(ratio, 3),
                "memory": mem,
            }
            try:
                rec["memory_ratio"] = round(
                    mem["onnx"]["peak_delta_mb"] / max(mem["torch"]["peak_delta_mb"], 0.1), 2
                )
            except KeyError:
                pass
            records.append(rec)
            log(
                f"  {name} batch {batch}: onnx {t['adamax-onnx'].median:.2f} ms, torch "
                f"{t['torch'].median:.2f} ms ({ratio:.2f}x); peak +{mem['onnx'].get('peak_delta_mb')}"
                f" vs +{mem['torch'].get('peak_delta_mb')} MiB"
            )
    return records


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.models")
    ap.add_argument("--probe", nargs=3, metavar=("CASE", "SIDE", "BATCH"), required=True)
    args = ap.parse_args()
    name, side, batch = args.probe
    print(json.dumps(_probe(name, side, int(batch))))


if __name__ == "__main__":
    main()
