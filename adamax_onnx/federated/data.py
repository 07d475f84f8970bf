"""Per-client data for federated runs: a label-skewed (non-IID) split and its files.

A client reads only its own ``client-<partition-id>.npz`` (arrays ``x``, ``y``; the dataset
format of :mod:`adamax_onnx.training`), so a device needs no data-set library. ``test.npz`` is
the held-out set the server evaluates the global model on.
"""

from __future__ import annotations

import json
import os
from functools import partial
from pathlib import Path

import numpy as np

from ..atomic import write_atomically

__all__ = ["split_by_label", "write_partitions", "prepare_digits", "client_file", "TEST_FILE"]

TEST_FILE = "test.npz"


def client_file(data_dir: str | os.PathLike, partition_id: int) -> Path:
    """The data file of client ``partition_id`` in ``data_dir``."""
    return Path(data_dir) / f"client-{int(partition_id)}.npz"


def split_by_label(
    y: np.ndarray, num_clients: int, classes_per_client: int, seed: int = 0
) -> list[np.ndarray]:
    """Split sample indices so that each client sees only ``classes_per_client`` labels.

    Client ``i`` holds the labels ``(start_i + j) % K`` for ``j < classes_per_client``, with
    ``start_i = i * K // num_clients`` (``K`` = number of distinct labels); the samples of each
    label are shuffled and shared evenly among the clients that hold it. Deterministic for a
    given ``seed``.

    Raises:
        ValueError: bad counts, or a label no client would hold (the global model could
            never learn it).
    """
    y = np.asarray(y)
    labels = np.unique(y)
    k = len(labels)
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    if not 1 <= classes_per_client <= k:
        raise ValueError(f"classes_per_client must be in 1..{k} (labels present), got {classes_per_client}")
    held = [
        [labels[(i * k // num_clients + j) % k] for j in range(classes_per_client)]
        for i in range(num_clients)
    ]
    holders = {lab: [i for i in range(num_clients) if lab in held[i]] for lab in labels}
    orphans = [int(lab) for lab, h in holders.items() if not h]
    if orphans:
        raise ValueError(
            f"labels {orphans} would be held by no client with num_clients={num_clients} and "
            f"classes_per_client={classes_per_client}; raise classes_per_client"
        )
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for lab, h in holders.items():
        idx = rng.permutation(np.flatnonzero(y == lab))
        for client, chunk in zip(h, np.array_split(idx, len(h)), strict=True):
            parts[client].append(chunk)
    return [np.sort(np.concatenate(p)) for p in parts]


def write_partitions(
    out_dir: str | os.PathLike,
    x: np.ndarray,
    y: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    parts: list[np.ndarray],
) -> Path:
    """Write ``client-<i>.npz`` for each index array in ``parts``, ``test.npz`` and a summary
    ``split.json`` (labels and sample count per client); returns ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = []
    for i, idx in enumerate(parts):
        write_atomically(client_file(out, i), partial(np.savez, x=x[idx], y=y[idx]))
        summary.append({"client": i, "samples": int(len(idx)), "labels": sorted({int(v) for v in y[idx]})})
    write_atomically(out / TEST_FILE, partial(np.savez, x=x_test, y=y_test))
    text = json.dumps({"clients": summary, "test": int(len(y_test))}, indent=1).encode()
    write_atomically(out / "split.json", lambda fh: fh.write(text))
    return out


def prepare_digits(
    out_dir: str | os.PathLike,
    num_clients: int = 10,
    classes_per_client: int = 2,
    image: bool = False,
    seed: int = 0,
) -> Path:
    """scikit-learn's digits (via :func:`models.data.load_digits_split`), split by label.

    The 25% held-out part goes to ``test.npz`` untouched; the training part is split with
    :func:`split_by_label`. ``image=True`` writes [N, 1, 8, 8] inputs (the CNN layout).
    """
    from ..models.data import load_digits_split

    x, y, x_test, y_test = load_digits_split(seed=seed, image=image)
    parts = split_by_label(y, num_clients, classes_per_client, seed=seed)
    return write_partitions(out_dir, x, y, x_test, y_test, parts)
