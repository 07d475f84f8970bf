"""End-to-end training step: adamax-onnx vs the same network in PyTorch with torch.optim.Adamax.

Networks: ``models.mlp.build_mlp()`` and ``models.cnn.build_cnn()`` at their default sizes, on
batches of scikit-learn's digits (64 rows, and the whole 1,347-row training split). The PyTorch
networks are built layer for layer with the same initial weights; both use cross-entropy (mean)
and AdaMax(lr=1e-3), the same number of threads, and take the batch from host memory each step.

The adamax-onnx contender is the default training model (gradients from our autodiff).
A PyTorch step is ``zero_grad(set_to_none=True)``, forward, loss, ``backward()``, ``step()``,
``loss.item()``. As a check that the two sides train the same network, both are run 20 steps
from the same start on the same batch and their losses recorded.
"""

from __future__ import annotations

import numpy as np

from .common import interleaved, ort_options

LR = 1e-3
CHECK_STEPS = 20


def _torch_net(kind: str, model):
    import torch
    from onnx import numpy_helper

    w = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in model.graph.initializer}
    nn = torch.nn
    if kind == "mlp":
        layers, i = [], 1
        while f"fc{i}.weight" in w:
            out_f, in_f = w[f"fc{i}.weight"].shape
            lin = nn.Linear(in_f, out_f)
            lin.weight.data.copy_(w[f"fc{i}.weight"])
            lin.bias.data.copy_(w[f"fc{i}.bias"])
            layers += [lin, nn.ReLU()]
            i += 1
        return nn.Sequential(*layers[:-1])
    c1, c2 = w["conv1.weight"], w["conv2.weight"]
    net = nn.Sequential(
        nn.Conv2d(c1.shape[1], c1.shape[0], 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(c2.shape[1], c2.shape[0], 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(w["fc1.weight"].shape[1], w["fc1.weight"].shape[0]),
        nn.ReLU(),
        nn.Linear(w["fc2.weight"].shape[1], w["fc2.weight"].shape[0]),
    )
    for idx, name in ((0, "conv1"), (3, "conv2"), (7, "fc1"), (9, "fc2")):
        net[idx].weight.data.copy_(w[f"{name}.weight"])
        net[idx].bias.data.copy_(w[f"{name}.bias"])
    return net


def _torch_step(net, x: np.ndarray, y: np.ndarray):
    import torch

    opt = torch.optim.Adamax(net.parameters(), lr=LR)
    crit = torch.nn.CrossEntropyLoss()
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        loss = crit(net(tx), ty)
        loss.backward()
        opt.step()
        return loss.item()

    return step


def _onnx_step(model, x: np.ndarray, y: np.ndarray, threads: int, **build):
    import adamax_onnx as ax

    opt = ax.AdaMax(ax.trainable_params(model), learning_rate=LR)
    train = ax.build_training_model(model, opt, loss="cross_entropy", label="labels", **build)
    sess = ax.TrainingSession(train, sess_options=ort_options(threads))
    feeds = {"input": x, "labels": y}
    return lambda: sess.step(feeds)


def run(threads: int, quick: bool, log=print) -> list[dict]:
    from adamax_onnx.models.cnn import build_cnn
    from adamax_onnx.models.data import load_digits_split
    from adamax_onnx.models.mlp import build_mlp

    x_flat, y, _, _ = load_digits_split()
    x_img = np.ascontiguousarray(x_flat.reshape(-1, 1, 8, 8))
    rounds = 7 if quick else 15
    records = []
    for kind, model, x_all in (("mlp", build_mlp(), x_flat), ("cnn", build_cnn(), x_img)):
        for batch in (64, len(y)):
            x = np.ascontiguousarray(x_all[:batch])
            yb = np.ascontiguousarray(y[:batch])
            contenders = {
                "adamax-onnx": _onnx_step(model, x, yb, threads),
                "torch": _torch_step(_torch_net(kind, model), x, yb),
            }
            inner = 20 if batch <= 64 else 3
            t = interleaved(contenders, rounds=rounds, inner=inner)
            # Same network, same start, same batch: the losses after CHECK_STEPS must agree.
            ours, theirs = (
                _onnx_step(model, x, yb, threads),
                _torch_step(_torch_net(kind, model), x, yb),
            )
            losses = [[ours() for _ in range(CHECK_STEPS)][-1]]
            losses.append([theirs() for _ in range(CHECK_STEPS)][-1])
            ref = t["torch"].median
            rec = {
                "model": kind,
                "batch": batch,
                "timings": {k: v.as_dict() for k, v in t.items()},
                "ratios_vs_torch": {k: round(v.median / ref, 3) for k, v in t.items()},
                f"loss_after_{CHECK_STEPS}_steps": {
                    "adamax-onnx": round(float(losses[0]), 6),
                    "torch": round(float(losses[1]), 6),
                },
            }
            records.append(rec)
            log(
                f"  {kind} batch {batch:<5} "
                + "  ".join(f"{k}={v.median:.3f}ms" for k, v in t.items())
                + f"  loss@{CHECK_STEPS}: {losses[0]:.5f} vs {losses[1]:.5f}"
            )
    return records
