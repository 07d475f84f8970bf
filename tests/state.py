"""A session's parameters and optimizer state, read through the public API for comparisons."""

from __future__ import annotations

import numpy as np

import adamax_onnx as ax

__all__ = ["snapshot", "snapshot_bytes"]


def snapshot(sess: ax.TrainingSession) -> dict[str, np.ndarray]:
    """Every parameter and every piece of optimizer state, as arrays."""
    snap = {f"param:{k}": v for k, v in sess.parameters().items()}
    st = sess.state()
    snap["global_step"] = np.asarray(st["global_step"])
    snap["beta1_power"] = np.asarray(st["beta1_power"], np.float32)
    for k in st["m"]:
        snap[f"m:{k}"] = st["m"][k]
        snap[f"v:{k}"] = st["v"][k]
    for k, v in st.get("extra", {}).items():
        snap[f"extra:{k}"] = v
    return snap


def snapshot_bytes(sess: ax.TrainingSession) -> dict[str, bytes]:
    """:func:`snapshot` as raw bytes: two snapshots are ``==`` exactly when bit-identical."""
    return {k: np.ascontiguousarray(v).tobytes() for k, v in snapshot(sess).items()}
