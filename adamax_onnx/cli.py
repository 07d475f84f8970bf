"""The ``adamax-onnx`` command: build, train, evaluate and export from the shell.

It only parses arguments and calls the public API. Every library error ends the command with
exit code 2 and one line on stderr (no traceback); ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from . import __version__
from .atomic import save_model_atomically
from .errors import AdamaxOnnxError
from .passes.adamax import DEFAULT_BUCKET_SIZE

#: Schedule / dynamic_lr arguments that are counts; other int values in a config file are
#: read as floats (a config may say 0 for 0.0, while the schedules insist on float, as MindSpore).
_INT_ARGS = {
    "decay_steps",
    "warmup_steps",
    "total_step",
    "step_per_epoch",
    "decay_epoch",
    "warmup_epoch",
    "milestone",
}
_OPTIMIZER_KEYS = ("learning_rate", "weight_decay", "beta1", "beta2", "eps", "loss_scale")


def _config_value(spec, where: str):
    """A learning rate or weight decay from a config file.

    A number; a list (a per-step table); ``{"table": [...]}``; ``{"schedule": "<class of
    adamax_onnx.schedules>", <its arguments>}``; or ``{"dynamic_lr": "<function of
    adamax_onnx.dynamic_lr>", <its arguments>}`` (a table computed by that function).
    """
    if not isinstance(spec, dict):
        return spec
    from . import dynamic_lr, schedules

    kinds = [k for k in ("table", "schedule", "dynamic_lr") if k in spec]
    if len(kinds) != 1:
        raise AdamaxOnnxError(
            f"{where}: a dict must have exactly one of 'table', 'schedule' or 'dynamic_lr', "
            f"got keys {sorted(spec)}"
        )
    kind = kinds[0]
    args = {k: v for k, v in spec.items() if k != kind}
    if kind == "table":
        if args or not isinstance(spec["table"], list):
            raise AdamaxOnnxError(f"{where}: 'table' must be a list and the only key")
        return spec["table"]
    args = {k: float(v) if type(v) is int and k not in _INT_ARGS else v for k, v in args.items()}
    module, names = (
        (schedules, [n for n in schedules.__all__ if n.endswith("LR")])
        if kind == "schedule"
        else (dynamic_lr, list(dynamic_lr.__all__))
    )
    if spec[kind] not in names:
        raise AdamaxOnnxError(f"{where}: unknown {kind} {spec[kind]!r}; one of {names}")
    try:
        return getattr(module, spec[kind])(**args)
    except (TypeError, ValueError) as exc:
        raise AdamaxOnnxError(f"{where}: {spec[kind]}: {exc}") from exc


def _load_config(path: str) -> tuple[list[dict] | None, dict]:
    """Parameter groups (or None) and optimizer arguments from a JSON or TOML config file.

    The file holds a list of groups, or a dict with an optional ``groups`` list and optional
    optimizer arguments (``learning_rate``, ``weight_decay``, ``beta1``, ``beta2``, ``eps``,
    ``loss_scale``), which take precedence over the command-line flags. Group keys are
    MindSpore's: ``params``, ``lr``, ``weight_decay``, ``grad_centralization``,
    ``order_params``; learning rates and weight decays take the forms of
    :func:`_config_value`.
    """
    p = Path(path)
    if not p.is_file():
        raise AdamaxOnnxError(f"config file {path!r} does not exist")
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except ValueError as exc:
        kind = "TOML" if p.suffix == ".toml" else "JSON"
        raise AdamaxOnnxError(f"config file {path!r} is not valid {kind}: {exc}") from exc
    if isinstance(data, list):
        data = {"groups": data}
    if not isinstance(data, dict):
        raise AdamaxOnnxError(f"config file {path!r} must hold a dict or a list of groups")
    unknown = [k for k in data if k not in ("groups", *_OPTIMIZER_KEYS)]
    if unknown:
        raise AdamaxOnnxError(
            f"config file {path!r}: unknown key(s) {unknown}; allowed: "
            f"{['groups', *_OPTIMIZER_KEYS]}"
        )
    groups = data.get("groups")
    if groups is not None:
        if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
            raise AdamaxOnnxError(
                f"config file {path!r}: 'groups' must be a list of parameter-group dicts"
            )
        groups = [
            {
                k: _config_value(v, f"config file {path!r}, group {i}, {k!r}")
                if k in ("lr", "weight_decay")
                else v
                for k, v in g.items()
            }
            for i, g in enumerate(groups)
        ]
    kwargs = {
        k: _config_value(data[k], f"config file {path!r}, {k!r}")
        if k in _OPTIMIZER_KEYS[:2]
        else data[k]
        for k in _OPTIMIZER_KEYS
        if k in data
    }
    return groups, kwargs


def _load_groups(path: str) -> list[dict]:
    """The parameter groups of a config file (see :func:`_load_config`)."""
    groups, _ = _load_config(path)
    if groups is None:
        raise AdamaxOnnxError(f"config file {path!r} has no parameter groups (key 'groups')")
    return groups


def _names(text: str | None) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()] if text else []


def cmd_build(args: argparse.Namespace) -> int:

    from .api import build_training_model, load_model, trainable_params
    from .optimizer import AdaMax

    model = load_model(args.model)
    groups, overrides = _load_config(args.config) if args.config else (None, {})
    if groups is not None:
        params = groups
    elif args.params:
        params = [p.strip() for p in args.params.split(",") if p.strip()]
    else:
        params = trainable_params(model, keep_ties=_names(args.keep_ties))
    kwargs = dict(
        learning_rate=args.lr,
        beta1=args.beta1,
        beta2=args.beta2,
        eps=args.eps,
        weight_decay=args.weight_decay,
        loss_scale=args.loss_scale,
    )
    kwargs.update(overrides)  # the config file's optimizer arguments win over the flags
    opt = AdaMax(params, **kwargs)
    train = build_training_model(
        model,
        opt,
        loss=args.loss,
        label=args.label,
        output=args.output,
        bucket_size=args.bucket_size,
        chunk_size=args.chunk_size,
        ignore_index=args.ignore_index,
        class_axis=args.class_axis,
        keep_ties=_names(args.keep_ties),
        dropout_seed=args.dropout_seed,
    )
    save_model_atomically(train, args.out)
    print(f"wrote {args.out}: {len(opt.param_names)} trained parameters, loss {args.loss!r}")
    return 0


def _session(args: argparse.Namespace):
    from .runtime import TrainingSession

    sess = TrainingSession(args.model, providers=args.providers.split(","))
    if getattr(args, "checkpoint", None) and getattr(args, "resume", True):
        from .checkpoint import checkpoint_file

        if checkpoint_file(args.checkpoint).is_file():
            sess.load_checkpoint(args.checkpoint)
            print(f"loaded checkpoint {args.checkpoint} (step {sess.global_step})")
    return sess


def _fmt(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in metrics.items())


def cmd_train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .training import evaluate, fit, load_dataset

    sess = _session(args)
    x, y = load_dataset(args.data)
    val = load_dataset(args.val) if args.val else None
    if val is not None:
        print(f"before: val {_fmt(evaluate(sess, *val))}")
    bar = tqdm(
        total=len(x) * args.epochs, unit="ex", disable=args.quiet, leave=False, mininterval=0.5
    )

    def on_step(n: int, loss: float) -> None:
        bar.update(n)
        bar.set_postfix(loss=f"{loss:.4f}")

    def on_epoch(r) -> None:
        line = f"epoch {r.epoch}/{args.epochs}: train_loss={r.train_loss:.4f}"
        if r.metrics:
            line += f" val {_fmt(r.metrics)}"
        tqdm.write(line)

    fit(
        sess,
        x,
        y,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        val=val,
        on_step=on_step,
        on_epoch=on_epoch,
        checkpoint=args.checkpoint,
    )
    bar.close()
    print(f"checkpoint: {args.checkpoint} (step {sess.global_step})")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .api import load_model
    from .training import evaluate, load_dataset

    x, y = load_dataset(args.data)
    model = load_model(args.model)
    if any(p.key == "adamax_onnx.contract" for p in model.metadata_props):
        _require_checkpoint(args)
        sess = _session(args)
        print(_fmt(evaluate(sess, x, y)))
        return 0
    # A plain inference model: run it directly.
    import onnxruntime as ort

    infer = ort.InferenceSession(model.SerializeToString(), providers=args.providers.split(","))
    name = infer.get_inputs()[0].name
    out = np.concatenate(
        [infer.run(None, {name: x[i : i + 256]})[0] for i in range(0, len(x), 256)]
    )
    if np.issubdtype(y.dtype, np.integer):
        print(f"accuracy={float((out.argmax(axis=1) == y).mean()):.4f}")
    else:
        print(f"mse={float(((out - y) ** 2).mean()):.6f}")
    return 0


def _require_checkpoint(args: argparse.Namespace) -> None:
    """export/evaluate read an explicit --checkpoint: a missing one is an error, not a reset."""
    from .checkpoint import checkpoint_file
    from .errors import CheckpointError

    if args.checkpoint and not checkpoint_file(args.checkpoint).is_file():
        raise CheckpointError(
            f"checkpoint {str(checkpoint_file(args.checkpoint))!r} does not exist"
        )


def cmd_export(args: argparse.Namespace) -> int:
    _require_checkpoint(args)
    sess = _session(args)
    path = sess.export_inference_model(args.out)
    print(f"wrote {path} (step {sess.global_step})")
    return 0


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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("adamax-onnx: interrupted", file=sys.stderr)
        return 130
    except (AdamaxOnnxError, ValueError, TypeError, KeyError, RuntimeError, OSError) as exc:
        if args.debug:
            raise
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"adamax-onnx {args.command}: error: {message}", file=sys.stderr)
        return 2
    except Exception as exc:  # onnxruntime's errors derive from Exception only (Fail, InvalidGraph)
        if args.debug:
            raise
        text = str(exc).strip()
        message = text.splitlines()[0].strip() if text else ""
        print(
            f"adamax-onnx {args.command}: error: {type(exc).__name__}: {message} "
            "(--debug shows the traceback)",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
