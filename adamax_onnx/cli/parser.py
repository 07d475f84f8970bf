"""The arguments of ``adamax-onnx`` and its subcommands (``--help`` text included)."""

from __future__ import annotations

import argparse

from .. import __version__
from ..passes.adamax import DEFAULT_BUCKET_SIZE
from .commands import cmd_build, cmd_evaluate, cmd_export, cmd_train

__all__ = ["build_parser"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adamax-onnx",
        description="Train ONNX models with MindSpore-exact AdaMax inside the ONNX graph.",
    )
    parser.add_argument("--version", action="version", version=f"adamax-onnx {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    b = sub.add_parser(
        "build",
        help="inference model + loss + optimizer -> training model",
        description="Build a training model (forward, loss, gradients and the "
        "AdaMax update in one ONNX graph) from an inference model.",
    )
    b.add_argument("model", help="inference ONNX model whose parameters are float initializers")
    b.add_argument("-o", "--out", required=True, help="where to write the training model")
    b.add_argument(
        "--loss",
        default="cross_entropy",
        help="'cross_entropy' (int64 labels), 'mse', or the name of a scalar output "
        "(default: cross_entropy)",
    )
    b.add_argument("--label", default="labels", help="name of the label input (default: labels)")
    b.add_argument(
        "--output", default=None, help="model output the loss reads (default: the only one)"
    )
    b.add_argument(
        "--params",
        default=None,
        help="comma-separated parameter names to train (default: all trainable)",
    )
    b.add_argument(
        "--config",
        default=None,
        help="JSON or TOML file with parameter groups: a list (or key 'groups') of "
        "dicts with MindSpore's keys params, lr, weight_decay, grad_centralization, "
        "order_params; lr/weight_decay: a number, a list (per-step table), "
        '{"schedule": "CosineDecayLR", <args>} or {"dynamic_lr": "cosine_decay_lr", <args>}. '
        "Top-level learning_rate, weight_decay, beta1, beta2, eps, loss_scale override the flags",
    )
    b.add_argument("--lr", type=float, default=1e-3, help="learning rate (default: 0.001)")
    b.add_argument("--beta1", type=float, default=0.9, help="default: 0.9")
    b.add_argument("--beta2", type=float, default=0.999, help="default: 0.999")
    b.add_argument("--eps", type=float, default=1e-8, help="default: 1e-8")
    b.add_argument("--weight-decay", type=float, default=0.0, help="default: 0.0")
    b.add_argument("--loss-scale", type=float, default=1.0, help="default: 1.0")
    b.add_argument(
        "--bucket-size",
        type=int,
        default=DEFAULT_BUCKET_SIZE,
        help="float32 parameters with fewer elements are updated together in flat buckets "
        f"(default: {DEFAULT_BUCKET_SIZE}; 0: each on its own)",
    )
    b.add_argument(
        "--chunk-size",
        type=int,
        default=0,
        help="write the update of parameters of >= 8 chunks into the file as a Scan over "
        "chunks of about this many elements, outputs in chunk layout (default: 0: the file "
        "keeps whole-tensor updates; 'train' chunks them on the CPU anyway)",
    )
    b.add_argument(
        "--ignore-index",
        type=int,
        default=None,
        help="cross entropy: label value left out of the loss (default: -100 for [B, T, V] "
        "scores, none for [B, C])",
    )
    b.add_argument(
        "--class-axis",
        type=int,
        default=None,
        help="cross entropy: class axis of the scores (default: 1 for [B, C], last for "
        "[B, T, V]; required for rank 4 and more)",
    )
    b.add_argument(
        "--keep-ties",
        default=None,
        help="comma-separated tensor names whose ties are kept (default: every tied tensor "
        "is untied into its own copy, with a warning)",
    )
    b.add_argument(
        "--dropout-seed",
        type=int,
        default=0,
        help="initial dropout.seed state of Dropout in training mode (default: 0)",
    )
    b.set_defaults(func=cmd_build)

    def runtime_args(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--providers",
            default="CPUExecutionProvider",
            help="comma-separated onnxruntime execution providers (default: CPUExecutionProvider)",
        )

    t = sub.add_parser(
        "train",
        help="training model + dataset -> checkpoint",
        description="Train a built training model on an .npz dataset (arrays x, "
        "y), with a progress bar and loss/accuracy per epoch. Resumes from "
        "--checkpoint when it exists.",
    )
    t.add_argument("model", help="training model written by 'adamax-onnx build'")
    t.add_argument("--data", required=True, help=".npz file with arrays x and y")
    t.add_argument("--val", default=None, help="optional .npz validation set, evaluated per epoch")
    t.add_argument("--checkpoint", required=True, help="checkpoint folder (or .npz file) to write")
    t.add_argument("--epochs", type=int, default=10, help="default: 10")
    t.add_argument("--batch-size", type=int, default=32, help="default: 32")
    t.add_argument("--seed", type=int, default=0, help="shuffling seed (default: 0)")
    t.add_argument(
        "--no-resume",
        dest="resume",
        action="store_false",
        help="start from the model's initial values even if the checkpoint exists",
    )
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    runtime_args(t)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser(
        "evaluate",
        help="loss/accuracy of a training model (+checkpoint) or an inference model on a dataset",
        description="Evaluate on an .npz dataset (arrays x, y).",
    )
    e.add_argument("model", help="training model (with --checkpoint) or inference model")
    e.add_argument("--data", required=True, help=".npz file with arrays x and y")
    e.add_argument("--checkpoint", default=None, help="checkpoint to load into a training model")
    runtime_args(e)
    e.set_defaults(func=cmd_evaluate)

    x = sub.add_parser(
        "export",
        help="checkpoint -> trained inference model",
        description="Write the original inference graph with the trained weights of a checkpoint.",
    )
    x.add_argument("model", help="training model written by 'adamax-onnx build'")
    x.add_argument("--checkpoint", required=True, help="checkpoint folder or .npz file")
    x.add_argument("-o", "--out", required=True, help="where to write the inference model")
    runtime_args(x)
    x.set_defaults(func=cmd_export)
    return parser
