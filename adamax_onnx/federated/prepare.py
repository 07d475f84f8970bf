"""``python -m adamax_onnx.federated.prepare``: the training model and the per-client data.

It needs scikit-learn (the digits data, the library's ``examples`` extra) and writes, into
``--out``:

* ``<model>.train.onnx`` - the MLP or CNN of :mod:`models` with a cross-entropy loss and the
  AdaMax update (standard ONNX ops only), so every device and the server run it on stock
  onnxruntime;
* ``data/client-<i>.npz`` - the digits training split, divided by label over ``--clients``
  clients (each holds ``--classes-per-client`` of the ten digits), ``data/test.npz`` (the
  held-out 25%) and ``data/split.json`` (labels and sample count per client).

    python -m adamax_onnx.federated.prepare --model mlp --out runs/federated-mlp
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from ..atomic import save_model_atomically
from ..errors import FederatedError

__all__ = ["build_model", "main"]

#: Local AdaMax learning rate of each example model (see the README's federated section).
DEFAULT_LR = {"mlp": 0.01, "cnn": 0.01}


def build_model(kind: str, out: str | Path, lr: float | None = None, seed: int = 0) -> Path:
    """Build and save the training model of the ``mlp`` or ``cnn`` example."""

    from .. import AdaMax, build_training_model, trainable_params

    if kind == "mlp":
        from ..models.mlp import build_mlp

        model = build_mlp(hidden=(128,), seed=seed)
    elif kind == "cnn":
        from ..models.cnn import build_cnn

        model = build_cnn(seed=seed)
    else:
        raise FederatedError(f"--model must be 'mlp' or 'cnn', got {kind!r}")
    opt = AdaMax(trainable_params(model), learning_rate=DEFAULT_LR[kind] if lr is None else lr)
    train = build_training_model(model, opt, loss="cross_entropy", label="labels")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_model_atomically(train, out)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m adamax_onnx.federated.prepare",
        description="Build the training model and the label-skewed client data of a federated run.",
    )
    p.add_argument("--model", choices=("mlp", "cnn"), default="mlp")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--clients", type=int, default=10, help="number of clients (default 10)")
    p.add_argument(
        "--classes-per-client", type=int, default=3, help="digits each client holds (default 3)"
    )
    p.add_argument("--lr", type=float, default=None, help="local AdaMax learning rate")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    from .data import prepare_digits

    out = Path(args.out)
    try:
        model = build_model(args.model, out / f"{args.model}.train.onnx", args.lr, args.seed)
        data = prepare_digits(
            out / "data", args.clients, args.classes_per_client, args.model == "cnn", args.seed
        )
    except (FederatedError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    split = json.loads((data / "split.json").read_text())
    print(f"training model: {model}")
    for c in split["clients"]:
        print(f"  client {c['client']}: {c['samples']:4d} samples, digits {c['labels']}")
    print(f"held-out: {split['test']} samples in {data / 'test.npz'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
