"""Tiny one-block transformer encoder classifier as a plain ONNX inference graph (no torch).

Layout of ``build_transformer``::

    input_ids int64 [N, T]
      -> Gather(embed.weight) + pos.weight                        x   [N, T, D]
      -> ln1 -> multi-head self-attention (attn.q/k/v/out) -> + x  x1  [N, T, D]
      -> ln2 -> ff1 -> GELU -> ff2 -> + x1                        x2  [N, T, D]
      -> ReduceMean over T -> head                                logits [N, num_classes]

The LayerNormalization nodes expose all three outputs (``Y``, ``Mean``, ``InvStdDev``) because
onnxruntime-training's gradient builder needs them. Opset 17 has no Gelu operator, so GELU is
spelled out with Erf (``gelu="erf"``, exact) or Tanh (``gelu="tanh"``, the approximation).
Scalar constants are rank-0 initializers, which the trainer treats as frozen.

Command line: ``python -m adamax_onnx.models.transformer --out transformer.onnx --d-model 32``.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..atomic import save_model_atomically
from ._common import BATCH, bias_init, f32, i64, make_model, xavier_uniform

__all__ = ["GELUS", "LN_EPSILON", "build_transformer", "main"]

#: Supported GELU formulations.
GELUS = ("erf", "tanh")
#: Epsilon of the LayerNormalization nodes (PyTorch's default).
LN_EPSILON = 1e-5


def build_transformer(
    vocab_size: int = 16,
    seq_len: int = 8,
    d_model: int = 16,
    num_heads: int = 2,
    d_ff: int = 32,
    num_classes: int = 4,
    seed: int = 0,
    gelu: str = "erf",
    num_layers: int = 1,
) -> onnx.ModelProto:
    """Build the transformer classifier.

    Args:
        vocab_size: number of token ids (rows of ``embed.weight``).
        seq_len: sequence length T (rows of ``pos.weight``).
        d_model: model width D (must be divisible by ``num_heads``).
        num_heads: attention heads H.
        d_ff: hidden width of the feed-forward block.
        num_classes: number of output logits.
        seed: seed of the deterministic ``np.random.default_rng`` initialisation.
        gelu: ``"erf"`` for ``0.5*x*(1+erf(x/sqrt(2)))`` or ``"tanh"`` for
            ``0.5*x*(1+tanh(sqrt(2/pi)*(x+0.044715*x^3)))``.
        num_layers: number of encoder blocks; with more than one, block ``i``'s tensors are
            prefixed ``layer<i>.`` (``layer0.attn.q.weight``, ...).

    Returns:
        A checked ONNX model. Trainable initializers: ``embed.weight``, ``pos.weight``,
        ``ln1.weight``, ``ln1.bias``, ``attn.{q,k,v,out}.{weight,bias}``, ``ln2.weight``,
        ``ln2.bias``, ``ff1.weight``, ``ff1.bias``, ``ff2.weight``, ``ff2.bias``,
        ``head.weight``, ``head.bias`` (MatMul weights are laid out [in, out]).
    """
    if gelu not in GELUS:
        raise ValueError(f"gelu must be one of {GELUS}, got {gelu!r}")
    if min(vocab_size, seq_len, d_model, num_heads, d_ff, num_classes, num_layers) < 1:
        raise ValueError("all sizes must be positive")
    if d_model % num_heads:
        raise ValueError(f"d_model={d_model} is not divisible by num_heads={num_heads}")
    head_dim = d_model // num_heads
    rng = np.random.default_rng(seed)
    nodes: list[onnx.NodeProto] = []
    inits: list[TensorProto] = []

    def node(op: str, ins: list[str], out: str, **attrs) -> str:
        nodes.append(helper.make_node(op, ins, [out], name=out, **attrs))
        return out

    def linear(x: str, name: str, fan_in: int, fan_out: int, out: str | None = None) -> str:
        inits.append(f32(f"{name}.weight", xavier_uniform(rng, (fan_in, fan_out), fan_in, fan_out)))
        inits.append(f32(f"{name}.bias", bias_init(rng, fan_out, fan_in)))
        y = node("MatMul", [x, f"{name}.weight"], f"{name}.matmul")
        return node("Add", [y, f"{name}.bias"], out or name)

    def layer_norm(x: str, name: str) -> str:
        inits.append(f32(f"{name}.weight", np.ones(d_model)))
        inits.append(f32(f"{name}.bias", np.zeros(d_model)))
        nodes.append(
            helper.make_node(
                "LayerNormalization",
                [x, f"{name}.weight", f"{name}.bias"],
                [name, f"{name}.mean", f"{name}.inv_std_dev"],
                name=name,
                axis=-1,
                epsilon=LN_EPSILON,
            )
        )
        return name

    # embeddings
    inits.append(f32("embed.weight", rng.standard_normal((vocab_size, d_model)) * 0.5))
    inits.append(f32("pos.weight", rng.standard_normal((seq_len, d_model)) * 0.1))
    tok = node("Gather", ["embed.weight", "input_ids"], "embed", axis=0)
    x = node("Add", [tok, "pos.weight"], "embed.add_pos")

    def block(x: str, pre: str) -> str:
        # self-attention block (pre-LN)
        inits.append(i64(f"{pre}attn.heads_shape", [0, 0, num_heads, head_dim]))
        inits.append(i64(f"{pre}attn.merge_shape", [0, 0, d_model]))
        inits.append(f32(f"{pre}attn.scale", 1.0 / math.sqrt(head_dim)))
        h = layer_norm(x, f"{pre}ln1")
        heads = {}
        for p in ("q", "k", "v"):
            y = linear(h, f"{pre}attn.{p}", d_model, d_model)
            y = node(
                "Reshape", [y, f"{pre}attn.heads_shape"], f"{pre}attn.{p}.heads"
            )  # [N, T, H, Dh]
            # K goes straight to [N, H, Dh, T] (transposed for the scores); Q, V to [N, H, T, Dh].
            perm = [0, 2, 3, 1] if p == "k" else [0, 2, 1, 3]
            heads[p] = node("Transpose", [y], f"{pre}attn.{p}.transpose", perm=perm)
        s = node("MatMul", [heads["q"], heads["k"]], f"{pre}attn.scores")  # [N, H, T, T]
        s = node("Mul", [s, f"{pre}attn.scale"], f"{pre}attn.scores_scaled")
        a = node("Softmax", [s], f"{pre}attn.softmax", axis=-1)
        c = node("MatMul", [a, heads["v"]], f"{pre}attn.context")  # [N, H, T, Dh]
        c = node(
            "Transpose", [c], f"{pre}attn.context.transpose", perm=[0, 2, 1, 3]
        )  # [N, T, H, Dh]
        c = node("Reshape", [c, f"{pre}attn.merge_shape"], f"{pre}attn.context.merge")  # [N, T, D]
        c = linear(c, f"{pre}attn.out", d_model, d_model)
        x1 = node("Add", [x, c], f"{pre}attn.residual")

        # feed-forward block (pre-LN)
        h = layer_norm(x1, f"{pre}ln2")
        f = linear(h, f"{pre}ff1", d_model, d_ff)
        if gelu == "erf":
            t = node("Mul", [f, "gelu.inv_sqrt2"], f"{pre}gelu.scaled")
            t = node("Erf", [t], f"{pre}gelu.erf")
        else:
            t = node("Mul", [f, f], f"{pre}gelu.x2")
            t = node("Mul", [t, f], f"{pre}gelu.x3")
            t = node("Mul", [t, "gelu.coeff"], f"{pre}gelu.cubic")
            t = node("Add", [f, t], f"{pre}gelu.inner")
            t = node("Mul", [t, "gelu.sqrt_2_over_pi"], f"{pre}gelu.scaled")
            t = node("Tanh", [t], f"{pre}gelu.tanh")
        t = node("Add", [t, "gelu.one"], f"{pre}gelu.one_plus")
        t = node("Mul", [f, t], f"{pre}gelu.x_times")
        g = node("Mul", [t, "gelu.half"], f"{pre}gelu")
        f = linear(g, f"{pre}ff2", d_ff, d_model)
        x2 = node("Add", [x1, f], f"{pre}ff.residual")

        return x2

    inits.append(f32("gelu.half", 0.5))
    inits.append(f32("gelu.one", 1.0))
    if gelu == "erf":
        inits.append(f32("gelu.inv_sqrt2", 1.0 / math.sqrt(2.0)))
    else:
        inits.append(f32("gelu.coeff", 0.044715))
        inits.append(f32("gelu.sqrt_2_over_pi", math.sqrt(2.0 / math.pi)))
    for layer in range(num_layers):
        x = block(x, "" if num_layers == 1 else f"layer{layer}.")

    # pooling and classifier
    pooled = node("ReduceMean", [x], "pool", axes=[1], keepdims=0)  # [N, D]
    linear(pooled, "head", d_model, num_classes, out="logits")

    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [BATCH, seq_len])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [BATCH, num_classes])]
    return make_model(
        "transformer",
        nodes,
        inputs,
        outputs,
        inits,
        doc=(
            f"{num_layers}-block pre-LN transformer vocab_size={vocab_size} seq_len={seq_len} "
            f"d_model={d_model} num_heads={num_heads} d_ff={d_ff} num_classes={num_classes} "
            f"gelu={gelu} seed={seed}"
        ),
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point: write a transformer model to ``--out``."""
    p = argparse.ArgumentParser(
        prog="python -m adamax_onnx.models.transformer",
        description="Write a tiny one-block transformer encoder classifier as an ONNX model.",
    )
    p.add_argument("--out", required=True, help="path of the .onnx file to write")
    p.add_argument("--vocab-size", type=int, default=16, help="number of token ids (default 16)")
    p.add_argument("--seq-len", type=int, default=8, help="sequence length (default 8)")
    p.add_argument("--d-model", type=int, default=16, help="model width (default 16)")
    p.add_argument("--num-heads", type=int, default=2, help="attention heads (default 2)")
    p.add_argument("--d-ff", type=int, default=32, help="feed-forward width (default 32)")
    p.add_argument("--num-classes", type=int, default=4, help="number of logits (default 4)")
    p.add_argument("--seed", type=int, default=0, help="initialisation seed (default 0)")
    p.add_argument(
        "--gelu", choices=GELUS, default="erf", help="GELU formulation (default erf, exact)"
    )
    args = p.parse_args(argv)
    model = build_transformer(
        vocab_size=args.vocab_size,
        seq_len=args.seq_len,
        d_model=args.d_model,
        num_heads=args.num_heads,
        d_ff=args.d_ff,
        num_classes=args.num_classes,
        seed=args.seed,
        gelu=args.gelu,
    )
    save_model_atomically(model, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
