"""Crash-safe checkpoints: SIGKILL a training process at random moments, then resume.

A child process trains a small MLP and writes a checkpoint after every step, forever. The test
kills it with SIGKILL after a random delay (so kills land during steps and during checkpoint
writes: a ``.checkpoint-*.tmp`` left behind shows a kill inside a write), then checks that the
latest checkpoint loads and equals, bit for bit, the state an uninterrupted in-process run has
after the same number of steps. Each trial resumes from the previous trial's checkpoint, and a
last child resumes and runs to the end: its final state must equal the uninterrupted run's.

Also: truncated, bit-flipped, foreign and non-checkpoint files give a CheckpointError and leave
the session untouched; loading never unpickles.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import adamax_onnx as ax
from adamax_onnx.checkpoint import checkpoint_file, read_checkpoint
from adamax_onnx.models.mlp import build_mlp
from tests.state import snapshot_bytes as snapshot

ROOT = Path(__file__).resolve().parents[2]
TRIALS = 30

CHILD = r"""
import sys
# onnxruntime-training imports torch (3 s) to probe ORTModule when torch is installed; the child
# only runs sessions, so make that probe fail fast and keep each trial short.
sys.modules["torch"] = None
import numpy as np
import onnxruntime as ort
import adamax_onnx as ax
from adamax_onnx.checkpoint import checkpoint_file

model, ckpt, total = sys.argv[1], sys.argv[2], int(sys.argv[3])
opts = ort.SessionOptions()
opts.intra_op_num_threads = opts.inter_op_num_threads = 1
opts.log_severity_level = 3
sess = ax.TrainingSession(model, sess_options=opts)
if checkpoint_file(ckpt).is_file():
    sess.load_checkpoint(ckpt)
print("ready", sess.global_step, flush=True)
while sess.global_step < total:
    rng = np.random.default_rng(sess.global_step)
    sess.step({"input": rng.standard_normal((16, 20)).astype(np.float32),
               "labels": rng.integers(0, 6, 16).astype(np.int64)})
    sess.save_checkpoint(ckpt)
print("done", sess.global_step, flush=True)
"""


def batch(step: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(step)  # the same rule as the child's
    return {
        "input": rng.standard_normal((16, 20)).astype(np.float32),
        "labels": rng.integers(0, 6, 16).astype(np.int64),
    }


def options() -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return opts


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    m = build_mlp(in_features=20, hidden=(64, 32), num_classes=6, seed=5)
    opt = ax.AdaMax(ax.trainable_params(m), learning_rate=3e-3, weight_decay=1e-4)
    path = tmp_path_factory.mktemp("model") / "train.onnx"
    onnx.save(ax.build_training_model(m, opt), str(path))
    return path


def spawn(model_path: Path, ckpt: Path, total: int) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(model_path), str(ckpt), str(total)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=ROOT,
        text=True,
    )


def reference_states(model_path: Path, steps: set[int]) -> dict[int, dict[str, bytes]]:
    """The uninterrupted run, in this process: the state after each step in ``steps``."""
    sess = ax.TrainingSession(model_path, sess_options=options())
    want = {0: snapshot(sess)} if 0 in steps else {}
    for step in range(max(steps)):
        sess.step(batch(step))
        if step + 1 in steps:
            want[step + 1] = snapshot(sess)
    return want


@pytest.mark.slow
def test_sigkill_during_training_and_checkpointing(model_path, tmp_path):
    rng = random.Random(20261125)
    ckpt = tmp_path / "ckpt"
    seen: list[int] = []  # global_step of the latest checkpoint after each kill
    snaps: dict[int, dict[str, bytes]] = {}  # global_step -> state loaded from the checkpoint
    mid_write = 0
    started = time.monotonic()
    for _ in range(TRIALS):
        child = spawn(model_path, ckpt, total=10**9)
        line = child.stdout.readline()
        assert line.startswith("ready"), (line, child.stderr.read())
        # Kill somewhere within the next ~25 steps+checkpoints (or right away).
        time.sleep(rng.uniform(0.0, 0.12))
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
        assert child.returncode == -signal.SIGKILL
        mid_write += any(ckpt.glob(f".checkpoint-{child.pid}-*.tmp"))  # its own temp file
        if not checkpoint_file(ckpt).is_file():
            seen.append(0)  # killed before the first checkpoint was complete
            continue
        # The latest checkpoint always loads into a fresh session.
        sess = ax.TrainingSession(model_path, sess_options=options())
        sess.load_checkpoint(ckpt)
        seen.append(sess.global_step)
        snaps[sess.global_step] = snapshot(sess)
    assert seen == sorted(seen), "a checkpoint went backwards"
    assert seen[-1] > 0

    # Resume once more and run to the end without a kill.
    total = seen[-1] + 15
    child = spawn(model_path, ckpt, total=total)
    out, err = child.communicate(timeout=120)
    assert child.returncode == 0, err
    assert out.splitlines()[-1] == f"done {total}"
    final = ax.TrainingSession(model_path, sess_options=options())
    final.load_checkpoint(ckpt)
    snaps[total] = snapshot(final)
    # No temp file survives a completed write (stale ones from killed writers are removed).
    assert not list(ckpt.glob(".checkpoint-*.tmp"))

    reference = reference_states(model_path, set(snaps))
    for step, snap in snaps.items():
        assert snap == reference[step], f"checkpoint at step {step} differs from the reference"

    elapsed = time.monotonic() - started
    report = {
        "trials": TRIALS,
        "distinct_checkpoint_steps": len(set(seen)),
        "kills_inside_a_checkpoint_write": mid_write,
        "final_step": total,
        "seconds": round(elapsed, 1),
    }
    print("checkpoint crash trials:", json.dumps(report))
    assert len(set(seen)) >= TRIALS // 2  # the kills did land at many different moments


# -- damaged and foreign files ------------------------------------------------------------------
@pytest.fixture
def trained(model_path, tmp_path):
    sess = ax.TrainingSession(model_path, sess_options=options())
    for step in range(3):
        sess.step(batch(step))
    path = sess.save_checkpoint(tmp_path / "good")
    return sess, path


def refused(sess: ax.TrainingSession, path, match: str) -> None:
    before = snapshot(sess)
    with pytest.raises(ax.CheckpointError, match=match):
        sess.load_checkpoint(path)
    assert snapshot(sess) == before


@pytest.mark.parametrize("keep", [0, 10, 100, 0.5, 0.9, -22, -1])
def test_truncated_checkpoint_is_refused(trained, tmp_path, keep):
    sess, path = trained
    data = path.read_bytes()
    cut = int(len(data) * keep) if isinstance(keep, float) else keep % len(data)
    bad = tmp_path / "cut.npz"
    bad.write_bytes(data[:cut])
    refused(sess, bad, "truncated or corrupted|not an adamax-onnx")


def test_every_flipped_byte_region_is_detected(trained, tmp_path):
    """Flip one byte at 64 positions spread over the file: never a silently different model."""
    sess, path = trained
    data = path.read_bytes()
    detected = 0
    for i, pos in enumerate(np.linspace(0, len(data) - 1, 64).astype(int)):
        bad = tmp_path / f"flip{i}.npz"
        flipped = bytearray(data)
        flipped[pos] ^= 0xFF
        bad.write_bytes(bytes(flipped))
        before = snapshot(sess)
        try:
            sess.load_checkpoint(bad)
        except ax.CheckpointError:
            detected += 1
        # Refused, or (a flip in bytes nobody reads) loaded: either way the very same state.
        assert snapshot(sess) == before
    print(f"byte flips detected: {detected}/64")
    assert detected >= 60


def test_checksum_catches_a_consistent_zip_with_altered_values(trained, tmp_path):
    sess, path = trained
    bad = tmp_path / "altered.npz"
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    meta = json.loads(arrays["__meta__"].tobytes())
    key = next(t["key"] for t in meta["tensors"] if t["name"] == "fc1.weight")
    arrays[key] = arrays[key] + np.float32(1e-3)
    np.savez(bad, **arrays)  # a valid zip whose CRCs match the new bytes
    refused(sess, bad, "fails its checksum")


def test_foreign_and_non_checkpoint_files(trained, tmp_path, model_path):
    sess, _ = trained
    other_model = build_mlp(in_features=20, hidden=(8,), num_classes=6, seed=5)
    other = ax.TrainingSession(
        ax.build_training_model(other_model, ax.AdaMax(ax.trainable_params(other_model)))
    )
    foreign = other.save_checkpoint(tmp_path / "foreign")
    refused(sess, foreign, "belongs to another model")
    same_arch_other_opt = ax.TrainingSession(
        ax.build_training_model(
            build_mlp(in_features=20, hidden=(64, 32), num_classes=6, seed=5),
            ax.AdaMax(
                ax.trainable_params(build_mlp(in_features=20, hidden=(64, 32), num_classes=6)),
                learning_rate=3e-3,
                beta1=0.5,
            ),
        )
    )
    refused(sess, same_arch_other_opt.save_checkpoint(tmp_path / "beta"), "another model")

    plain = tmp_path / "plain.npz"
    np.savez(plain, x=np.zeros(3))
    refused(sess, plain, "no __meta__")
    text = tmp_path / "text.npz"
    text.write_text("not a checkpoint")
    refused(sess, text, "truncated or corrupted")
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    refused(sess, empty, "truncated or corrupted")
    refused(sess, model_path, "does not exist|truncated or corrupted")  # an .onnx file
    refused(sess, tmp_path / "missing.npz", "does not exist")
    # A pickled object array is refused, not unpickled.
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, __meta__=np.array([{"format": "x"}], dtype=object))
    refused(sess, pickled, "truncated or corrupted")


def test_tampered_metadata_is_refused(trained, tmp_path):
    sess, path = trained
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    meta = json.loads(arrays["__meta__"].tobytes())

    def write(name: str, doc) -> Path:
        out = tmp_path / name
        payload = dict(arrays)
        payload["__meta__"] = np.frombuffer(json.dumps(doc).encode(), np.uint8)
        np.savez(out, **payload)
        return out

    refused(sess, write("fmt.npz", {**meta, "format": "other/9"}), "has format")
    refused(sess, write("list.npz", [1, 2]), "has format")
    refused(sess, write("tensors.npz", {**meta, "tensors": "x"}), "malformed metadata")
    dropped = {**meta, "tensors": meta["tensors"][1:]}
    refused(sess, write("dropped.npz", dropped), "do not match this model")
    missing_key = {**meta, "tensors": [*meta["tensors"][:-1], {**meta["tensors"][-1], "key": "zz"}]}
    refused(sess, write("missingkey.npz", missing_key), "incomplete")
    refused(sess, write("step.npz", {**meta, "global_step": 99}), "inconsistent")
    # A tensor replaced by a float64 copy with a matching checksum: refused for its dtype.
    key = next(t for t in meta["tensors"] if t["name"] == "fc1.bias")
    wide = arrays[key["key"]].astype(np.float64)
    doc = {
        **meta,
        "tensors": [
            {**t, "sha256": __import__("hashlib").sha256(wide.tobytes()).hexdigest()}
            if t is key
            else t
            for t in meta["tensors"]
        ],
    }
    arrays_wide = dict(arrays)
    arrays_wide[key["key"]] = wide
    out = tmp_path / "wide.npz"
    arrays_wide["__meta__"] = np.frombuffer(json.dumps(doc).encode(), np.uint8)
    np.savez(out, **arrays_wide)
    refused(sess, out, "float64")


def test_checkpoint_write_is_atomic_when_the_writer_fails(trained, tmp_path, monkeypatch):
    """An exception in the middle of a write leaves the previous checkpoint and no temp file."""
    sess, path = trained
    good = path.read_bytes()
    sess.step(batch(3))

    def boom(*args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        sess.save_checkpoint(path)
    monkeypatch.undo()
    assert path.read_bytes() == good
    assert not list(path.parent.glob(".checkpoint-*.tmp"))
    arrays, meta = read_checkpoint(path)
    assert meta["global_step"] == 3
    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() is None
