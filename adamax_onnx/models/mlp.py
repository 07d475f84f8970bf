"""Multi-layer perceptron as a plain ONNX inference graph (no torch needed).

``build_mlp`` returns a model ``input`` float32 [N, in_features] -> ``logits`` float32
[N, num_classes] made of fully connected layers ``fc1`` .. ``fcK`` (Gemm with ``transB=1`` and
PyTorch-layout weights [out, in], or MatMul + Add with weights [in, out]) and an activation
between consecutive layers.

Command line: ``python -m adamax_onnx.models.mlp --out mlp.onnx --hidden 64 32 --activation tanh``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..atomic import save_model_atomically
from ._common import BATCH, bias_init, f32, he_normal, make_model, xavier_uniform

__all__ = ["ACTIVATIONS", "build_mlp", "main"]

#: Supported activations and their ONNX operator.
ACTIVATIONS = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh"}


def build_mlp(
    in_features: int = 64,
    hidden: Sequence[int] = (64,),
    num_classes: int = 10,
    activation: str = "relu",
    seed: int = 0,
    use_matmul: bool = False,
) -> onnx.ModelProto:
    """Build an MLP classifier.

    Args:
        in_features: size of each input row.
        hidden: widths of the hidden layers (may be empty: a single linear layer).
        num_classes: number of output logits.
        activation: ``"relu"``, ``"sigmoid"`` or ``"tanh"``, applied between layers.
        seed: seed of the deterministic ``np.random.default_rng`` initialisation.
        use_matmul: use ``MatMul`` (weight [in, out]) + ``Add`` instead of ``Gemm``
            (weight [out, in], ``transB=1``).

    Returns:
        A checked ONNX model with initializers ``fc{i}.weight`` and ``fc{i}.bias``.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    sizes = [int(in_features), *(int(h) for h in hidden), int(num_classes)]
    if any(s <= 0 for s in sizes):
        raise ValueError(f"all layer sizes must be positive, got {sizes}")
    rng = np.random.default_rng(seed)
    nodes: list[onnx.NodeProto] = []
    inits: list[TensorProto] = []
    x = "input"
    n_layers = len(sizes) - 1
    for i in range(n_layers):
        fan_in, fan_out = sizes[i], sizes[i + 1]
        name = f"fc{i + 1}"
        last = i == n_layers - 1
        if activation == "relu" and not last:
            w = he_normal(rng, (fan_out, fan_in), fan_in)
        else:
            w = xavier_uniform(rng, (fan_out, fan_in), fan_in, fan_out)
        b = bias_init(rng, fan_out, fan_in)
        out = "logits" if last else f"{name}.out"
        if use_matmul:
            inits += [f32(f"{name}.weight", w.T), f32(f"{name}.bias", b)]
            nodes.append(
                helper.make_node(
                    "MatMul", [x, f"{name}.weight"], [f"{name}.matmul"], name=f"{name}.matmul"
                )
            )
            nodes.append(
                helper.make_node("Add", [f"{name}.matmul", f"{name}.bias"], [out], name=name)
            )
        else:
            inits += [f32(f"{name}.weight", w), f32(f"{name}.bias", b)]
            nodes.append(
                helper.make_node(
                    "Gemm", [x, f"{name}.weight", f"{name}.bias"], [out], name=name, transB=1
                )
            )
        x = out
        if not last:
            act = f"{name}.{activation}"
            nodes.append(helper.make_node(ACTIVATIONS[activation], [x], [act], name=act))
            x = act
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, [BATCH, sizes[0]])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [BATCH, sizes[-1]])]
    return make_model(
        "mlp",
        nodes,
        inputs,
        outputs,
        inits,
        doc=f"MLP {sizes} activation={activation} use_matmul={use_matmul} seed={seed}",
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point: write an MLP model to ``--out``."""
    p = argparse.ArgumentParser(
        prog="python -m adamax_onnx.models.mlp", description="Write an MLP classifier as an ONNX model."
    )
    p.add_argument("--out", required=True, help="path of the .onnx file to write")
    p.add_argument("--in-features", type=int, default=64, help="input width (default 64)")
    p.add_argument(
        "--hidden",
        type=int,
        nargs="*",
        default=[64],
        help="hidden layer widths, e.g. --hidden 64 32 (default 64; none for a linear model)",
    )
    p.add_argument("--num-classes", type=int, default=10, help="number of logits (default 10)")
    p.add_argument(
        "--activation",
        choices=sorted(ACTIVATIONS),
        default="relu",
        help="activation between layers (default relu)",
    )
    p.add_argument("--seed", type=int, default=0, help="initialisation seed (default 0)")
    p.add_argument(
        "--use-matmul",
        action="store_true",
        help="use MatMul+Add (weights [in, out]) instead of Gemm (weights [out, in])",
    )
    args = p.parse_args(argv)
    model = build_mlp(
        in_features=args.in_features,
        hidden=tuple(args.hidden),
        num_classes=args.num_classes,
        activation=args.activation,
        seed=args.seed,
        use_matmul=args.use_matmul,
    )
    save_model_atomically(model, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
