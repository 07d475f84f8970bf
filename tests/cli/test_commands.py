"""The adamax-onnx command line, run in-process and as a real subprocess."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from adamax_onnx.cli import main
from adamax_onnx.models.data import load_digits_split, save_npz
from adamax_onnx.models.mlp import build_mlp


@pytest.fixture()
def workdir(tmp_path):
    onnx.save(build_mlp(), str(tmp_path / "mlp.onnx"))
    xtr, ytr, xte, yte = load_digits_split()
    save_npz(tmp_path / "train.npz", xtr, ytr)
    save_npz(tmp_path / "test.npz", xte, yte)
    return tmp_path


def test_build_train_evaluate_export(workdir, capsys):
    d = workdir
    assert main(["build", str(d / "mlp.onnx"), "-o", str(d / "train.onnx"), "--lr", "0.01"]) == 0
    assert (
        main(
            [
                "train",
                str(d / "train.onnx"),
                "--data",
                str(d / "train.npz"),
                "--val",
                str(d / "test.npz"),
                "--checkpoint",
                str(d / "ckpt"),
                "--epochs",
                "3",
                "--quiet",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "epoch 3/3" in out and "accuracy=" in out
    assert (
        main(
            [
                "export",
                str(d / "train.onnx"),
                "--checkpoint",
                str(d / "ckpt"),
                "-o",
                str(d / "trained.onnx"),
            ]
        )
        == 0
    )
    assert main(["evaluate", str(d / "trained.onnx"), "--data", str(d / "test.npz")]) == 0
    acc = float(capsys.readouterr().out.strip().split("accuracy=")[-1])
    assert acc > 0.85
    # The exported file is a plain inference model.
    xte = np.load(d / "test.npz")["x"]
    out = ort.InferenceSession(str(d / "trained.onnx")).run(None, {"input": xte})[0]
    assert out.shape == (len(xte), 10)


def test_training_resumes_from_its_checkpoint(workdir, capsys):
    d = workdir
    main(["build", str(d / "mlp.onnx"), "-o", str(d / "train.onnx")])
    args = [
        "train",
        str(d / "train.onnx"),
        "--data",
        str(d / "train.npz"),
        "--checkpoint",
        str(d / "ckpt"),
        "--quiet",
    ]
    main([*args, "--epochs", "1"])
    main([*args, "--epochs", "2"])
    assert "loaded checkpoint" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["build", "{d}/missing.onnx", "-o", "{d}/t.onnx"], "does not exist"),
        (["build", "{d}/mlp.onnx", "-o", "{d}/t.onnx", "--params", "fc7.weight"], "fc7.weight"),
        (["build", "{d}/mlp.onnx", "-o", "{d}/t.onnx", "--beta1", "1.5"], "beta1"),
        (
            ["train", "{d}/mlp.onnx", "--data", "{d}/train.npz", "--checkpoint", "{d}/c"],
            "not built by adamax-onnx",
        ),
        (["evaluate", "{d}/mlp.onnx", "--data", "{d}/nope.npz"], "nope.npz"),
    ],
)
def test_errors_are_one_line_without_traceback(workdir, argv, fragment):
    argv = [a.format(d=workdir) for a in argv]
    proc = subprocess.run(
        [sys.executable, "-m", "adamax_onnx.cli", *argv],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert fragment in lines[0] and "Traceback" not in proc.stderr


@pytest.mark.parametrize("command", ["build", "train", "evaluate", "export"])
def test_help_is_complete(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert "usage: adamax-onnx " + command in text and "--" in text


def test_build_layout_options_train_bit_identically(workdir, capsys):
    """--bucket-size/--chunk-size change the update graph, not the numbers."""
    import adamax_onnx as ax

    d = workdir
    variants = {
        "default": [],
        "chunked": ["--bucket-size", "0", "--chunk-size", "64"],
    }
    params = {}
    for name, flags in variants.items():
        out = d / f"{name}.onnx"
        assert main(["build", str(d / "mlp.onnx"), "-o", str(out), "--lr", "0.01", *flags]) == 0
        ops = {n.op_type for n in onnx.load(str(out)).graph.node}
        # default: small parameters packed into buckets (Concat); chunked: Scans, no buckets
        assert ("Scan" in ops, "Concat" in ops) == ((True, False) if flags else (False, True))
        ckpt = d / f"{name}.ckpt"
        args = ["train", str(out), "--data", str(d / "train.npz"), "--checkpoint", str(ckpt)]
        assert main([*args, "--epochs", "1", "--quiet"]) == 0
        sess = ax.TrainingSession(str(out))
        sess.load_checkpoint(ckpt)
        params[name] = sess.parameters()
    for k, w in params["default"].items():
        np.testing.assert_array_equal(params["chunked"][k], w, err_msg=k)
    capsys.readouterr()
    assert main(["build", str(d / "mlp.onnx"), "-o", str(d / "x.onnx"), "--chunk-size", "-1"]) == 2
    assert "chunk_size must be an int >= 0" in capsys.readouterr().err
