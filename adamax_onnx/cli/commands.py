"""The commands of ``adamax-onnx``: build, train (with a progress bar), evaluate, export.

Each takes the parsed arguments (:mod:`.parser`), calls the public API and returns the exit code.
"""

from __future__ import annotations

import argparse

import numpy as np

from ..atomic import save_model_atomically
from .config import load_config

__all__ = ["cmd_build", "cmd_evaluate", "cmd_export", "cmd_train"]


def _names(text: str | None) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()] if text else []


def cmd_build(args: argparse.Namespace) -> int:
    from ..api import build_training_model, load_model, trainable_params
    from ..optimizer import AdaMax

    model = load_model(args.model)
    groups, overrides = load_config(args.config) if args.config else (None, {})
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
    from ..runtime import TrainingSession

    sess = TrainingSession(args.model, providers=args.providers.split(","))
    if getattr(args, "checkpoint", None) and getattr(args, "resume", True):
        from ..checkpoint import checkpoint_file

        if checkpoint_file(args.checkpoint).is_file():
            sess.load_checkpoint(args.checkpoint)
            print(f"loaded checkpoint {args.checkpoint} (step {sess.global_step})")
    return sess


def _fmt(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in metrics.items())


def cmd_train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..training import evaluate, fit, load_dataset

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
    from ..api import load_model
    from ..training import evaluate, load_dataset

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
    from ..checkpoint import checkpoint_file
    from ..errors import CheckpointError

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
