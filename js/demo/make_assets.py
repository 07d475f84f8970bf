"""Assets of the browser demo (js/demo/): the digits MLP's training model, the data, and the
Python TrainingSession's run on the same batches for comparison.

    .venv/bin/python js/demo/make_assets.py          # writes js/demo/assets/

Files: ``mlp.train.onnx`` (``build_training_model`` with the defaults: cross-entropy, lr 0.01,
as the main job's ``adamax-onnx build``), ``digits.npz`` (``x_train``, ``y_train``, ``x_test``,
``y_test`` and ``order``: the batch order of each epoch, the one ``adamax_onnx.training.fit``
uses with seed 0), ``reference.json`` (Python's loss per step and held-out accuracy per epoch)
and ``python.ckpt.npz`` (Python's checkpoint after the first epoch).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import onnx  # noqa: E402

import adamax_onnx as ax  # noqa: E402
from adamax_onnx.models.data import load_digits_split  # noqa: E402
from adamax_onnx.models.mlp import build_mlp  # noqa: E402

EPOCHS, BATCH, LR = 10, 32, 0.01


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else Path(__file__).parent / "assets"
    out.mkdir(parents=True, exist_ok=True)
    xtr, ytr, xte, yte = load_digits_split()
    model = build_mlp()
    train = ax.build_training_model(model, ax.AdaMax(ax.trainable_params(model), learning_rate=LR))
    onnx.save(train, str(out / "mlp.train.onnx"))
    order = np.stack(
        [np.random.default_rng([0, e]).permutation(len(xtr)) for e in range(EPOCHS)]
    ).astype(np.int32)
    np.savez(out / "digits.npz", x_train=xtr, y_train=ytr, x_test=xte, y_test=yte, order=order)

    sess = ax.TrainingSession(train)
    losses, accuracy = [], []
    for epoch in range(EPOCHS):
        for start in range(0, len(xtr), BATCH):
            idx = order[epoch, start : start + BATCH]
            losses.append(sess.step({"input": xtr[idx], "labels": ytr[idx]}))
        (logits,) = sess.predict({"input": xte})
        accuracy.append(float((logits.argmax(axis=1) == yte).mean()))
        if epoch == 0:
            sess.save_checkpoint(out / "python.ckpt.npz")
    ref = {"epochs": EPOCHS, "batch_size": BATCH, "losses": losses, "accuracy": accuracy}
    (out / "reference.json").write_text(json.dumps(ref))
    print(f"demo assets in {out}: Python held-out accuracy {accuracy[0]:.3f} -> {accuracy[-1]:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
