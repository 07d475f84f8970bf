"""Small bundled data sets for the example models (no downloads).

* :func:`load_digits_split` - scikit-learn's 8x8 handwritten digits (1797 images, 10 classes,
  shipped with scikit-learn), scaled to [0, 1], split deterministically and stratified.
* :func:`make_token_task` - a synthetic, learnable sequence-classification task for the
  transformer: the label is the token group that occurs most often in the sequence.
* :func:`save_npz` - writes ``x`` and ``y`` arrays with ``np.savez`` (no pickle).

Command line: ``python -m adamax_onnx.models.data --out digits [--image]`` writes ``digits_train.npz`` and
``digits_test.npz``; ``--task tokens`` writes the token task instead.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["load_digits_split", "make_token_task", "save_npz", "main"]


def load_digits_split(
    seed: int = 0, test_fraction: float = 0.25, image: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The digits data set, split into train and test parts.

    Args:
        seed: seed of the (stratified, deterministic) shuffle split.
        test_fraction: fraction of the samples in the test part, in (0, 1).
        image: return x as [N, 1, 8, 8] (CNN layout) instead of [N, 64].

    Returns:
        ``(x_train, y_train, x_test, y_test)``; x float32 in [0, 1], y int64 in 0..9.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    digits = load_digits()
    x = (np.asarray(digits.data, dtype=np.float32) / np.float32(16.0)).astype(np.float32)
    y = np.asarray(digits.target, dtype=np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y
    )
    if image:
        x_train = x_train.reshape(-1, 1, 8, 8)
        x_test = x_test.reshape(-1, 1, 8, 8)
    return (
        np.ascontiguousarray(x_train, dtype=np.float32),
        np.ascontiguousarray(y_train, dtype=np.int64),
        np.ascontiguousarray(x_test, dtype=np.float32),
        np.ascontiguousarray(y_test, dtype=np.int64),
    )


def make_token_task(
    n: int = 512, seq_len: int = 8, vocab_size: int = 16, num_classes: int = 4, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic sequence-classification task.

    Token ``t`` belongs to group ``t * num_classes // vocab_size`` (contiguous, equal-sized
    groups); the label of a sequence is the group with the most tokens in it. Sequences with a
    tie for the most frequent group are redrawn, so every label is unambiguous. The task is
    solvable by a mean-pooling model (the label is the argmax of a linear function of the
    mean token one-hot).

    Args:
        n: number of sequences.
        seq_len: tokens per sequence.
        vocab_size: number of token ids (at least ``num_classes``).
        num_classes: number of groups / labels (at least 2).
        seed: seed of the deterministic ``np.random.default_rng`` generator.

    Returns:
        ``(ids, labels)``: ids int64 [n, seq_len] in 0..vocab_size-1, labels int64 [n].
    """
    if num_classes < 2 or vocab_size < num_classes:
        raise ValueError("need 2 <= num_classes <= vocab_size")
    if n < 0 or seq_len < 1:
        raise ValueError("need n >= 0 and seq_len >= 1")
    rng = np.random.default_rng(seed)
    group_of = np.arange(vocab_size, dtype=np.int64) * num_classes // vocab_size
    ids_parts: list[np.ndarray] = []
    label_parts: list[np.ndarray] = []
    have = 0
    while have < n:
        batch = max(2 * (n - have), 64)
        ids = rng.integers(0, vocab_size, size=(batch, seq_len), dtype=np.int64)
        counts = np.zeros((batch, num_classes), dtype=np.int64)
        np.add.at(counts, (np.arange(batch)[:, None], group_of[ids]), 1)
        top = counts.max(axis=1, keepdims=True)
        unique = (counts == top).sum(axis=1) == 1
        ids, counts = ids[unique], counts[unique]
        ids_parts.append(ids)
        label_parts.append(counts.argmax(axis=1).astype(np.int64))
        have += len(ids)
    ids = np.concatenate(ids_parts)[:n] if ids_parts else np.zeros((0, seq_len), np.int64)
    labels = np.concatenate(label_parts)[:n] if label_parts else np.zeros((0,), np.int64)
    return np.ascontiguousarray(ids, dtype=np.int64), np.ascontiguousarray(labels, dtype=np.int64)


def save_npz(path: str | Path, x: np.ndarray, y: np.ndarray) -> Path:
    """Write ``x`` and ``y`` to ``path`` with ``np.savez`` (plain arrays, no pickle).

    A missing ``.npz`` suffix is added; parent directories are created. Returns the path.
    """
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=np.asarray(x), y=np.asarray(y))
    return path


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point: write ``<out>_train.npz`` and ``<out>_test.npz``."""
    p = argparse.ArgumentParser(
        prog="python -m adamax_onnx.models.data",
        description="Write a train/test split of a bundled data set as <out>_train.npz and "
        "<out>_test.npz (arrays x and y).",
    )
    p.add_argument("--out", required=True, help="output prefix, e.g. 'digits' or 'data/digits'")
    p.add_argument(
        "--task",
        choices=("digits", "tokens"),
        default="digits",
        help="digits: scikit-learn 8x8 digits (default); tokens: synthetic token task",
    )
    p.add_argument(
        "--image", action="store_true", help="digits as [N, 1, 8, 8] (CNN) instead of [N, 64]"
    )
    p.add_argument("--seed", type=int, default=0, help="split / generation seed (default 0)")
    p.add_argument(
        "--test-fraction", type=float, default=0.25, help="fraction held out (default 0.25)"
    )
    p.add_argument("--n", type=int, default=512, help="tokens task: sequences (default 512)")
    p.add_argument("--seq-len", type=int, default=8, help="tokens task: length (default 8)")
    p.add_argument("--vocab-size", type=int, default=16, help="tokens task: vocab (default 16)")
    p.add_argument("--num-classes", type=int, default=4, help="tokens task: classes (default 4)")
    args = p.parse_args(argv)
    if args.task == "digits":
        x_train, y_train, x_test, y_test = load_digits_split(
            seed=args.seed, test_fraction=args.test_fraction, image=args.image
        )
    else:
        if not 0.0 < args.test_fraction < 1.0:
            p.error("--test-fraction must be in (0, 1)")
        ids, labels = make_token_task(
            n=args.n,
            seq_len=args.seq_len,
            vocab_size=args.vocab_size,
            num_classes=args.num_classes,
            seed=args.seed,
        )
        n_test = int(round(len(ids) * args.test_fraction))
        x_train, y_train = ids[n_test:], labels[n_test:]
        x_test, y_test = ids[:n_test], labels[:n_test]
    for part, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        path = save_npz(f"{args.out}_{part}.npz", x, y)
        print(f"wrote {path}: x {x.dtype} {list(x.shape)}, y {y.dtype} {list(y.shape)}")


if __name__ == "__main__":
    main()
