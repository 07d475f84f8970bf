"""Small LeNet-style convolutional classifier as a plain ONNX inference graph (no torch).

Layout of ``build_cnn``::

    input [N, C, S, S]
      -> conv1 (3x3, pad 1, 8 channels) [-> bn1 (inference BatchNormalization)] -> Relu
      -> pool1 (MaxPool 2x2, or AveragePool 2x2 when pool="avg")
      -> conv2 (3x3, pad 1, 16 channels, `groups`, `stride`) -> Relu
      -> pool="global": GlobalAveragePool -> Flatten
         otherwise:     pool2 (MaxPool/AveragePool 2x2) -> Reshape [N, -1]
      -> fc1 (Gemm, 32) -> Relu -> fc2 (Gemm) -> logits [N, num_classes]

With ``pool="global"`` the first pooling layer is a 2x2 MaxPool.

Command line: ``python -m adamax_onnx.models.cnn --out cnn.onnx --batchnorm --pool avg``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..atomic import save_model_atomically
from ._common import BATCH, bias_init, f32, he_normal, i64, make_model, xavier_uniform

__all__ = ["CONV1_CHANNELS", "CONV2_CHANNELS", "FC_HIDDEN", "POOLS", "build_cnn", "main"]

#: Output channels of conv1 and conv2, and width of the hidden fully connected layer.
CONV1_CHANNELS = 8
CONV2_CHANNELS = 16
FC_HIDDEN = 32
#: Supported ``pool`` arguments.
POOLS = ("max", "avg", "global")
#: Epsilon of the BatchNormalization node (PyTorch's default).
BN_EPSILON = 1e-5


def _conv_out(size: int, kernel: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - kernel) // stride + 1


def build_cnn(
    in_channels: int = 1,
    image_size: int = 8,
    num_classes: int = 10,
    seed: int = 0,
    batchnorm: bool = False,
    pool: str = "max",
    groups: int = 1,
    stride: int = 1,
) -> onnx.ModelProto:
    """Build the CNN classifier.

    Args:
        in_channels: channels of the square input images.
        image_size: height and width of the input images.
        num_classes: number of output logits.
        seed: seed of the deterministic ``np.random.default_rng`` initialisation.
        batchnorm: insert an inference-form BatchNormalization ``bn1`` after conv1 (running
            statistics start at mean 0 / variance 1, scale 1, bias 0).
        pool: ``"max"`` or ``"avg"`` (kind of both 2x2 pools) or ``"global"`` (2x2 MaxPool,
            then GlobalAveragePool + Flatten after conv2).
        groups: groups of conv2 (must divide 8 and 16).
        stride: stride of conv2.

    Returns:
        A checked ONNX model with initializers ``conv1.weight``, ``conv1.bias``,
        [``bn1.scale``, ``bn1.bias``, ``bn1.running_mean``, ``bn1.running_var``],
        ``conv2.weight``, ``conv2.bias``, ``fc1.weight``, ``fc1.bias``, ``fc2.weight``,
        ``fc2.bias`` (plus the int64 ``flatten.shape`` unless ``pool="global"``).
    """
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
    if groups < 1 or CONV1_CHANNELS % groups or CONV2_CHANNELS % groups:
        raise ValueError(f"groups must divide {CONV1_CHANNELS} and {CONV2_CHANNELS}, got {groups}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if in_channels < 1 or num_classes < 1:
        raise ValueError("in_channels and num_classes must be positive")
    s1 = _conv_out(image_size, 3, 1, 1) // 2
    s2 = _conv_out(s1, 3, stride, 1) if s1 >= 1 else 0
    s3 = 1 if pool == "global" else s2 // 2
    if s1 < 1 or s2 < 1 or s3 < 1:
        raise ValueError(
            f"image_size={image_size} is too small for pool={pool!r}, stride={stride}: "
            f"spatial sizes {image_size} -> {s1} -> {s2} -> {s3}"
        )
    flat = CONV2_CHANNELS * s3 * s3

    rng = np.random.default_rng(seed)
    nodes: list[onnx.NodeProto] = []
    inits: list[TensorProto] = []

    def node(op: str, ins: list[str], out: str, **attrs) -> str:
        nodes.append(helper.make_node(op, ins, [out], name=out, **attrs))
        return out

    pool_op = "AveragePool" if pool == "avg" else "MaxPool"
    pool_attrs = {"kernel_shape": [2, 2], "strides": [2, 2]}

    # conv1
    c1, k = CONV1_CHANNELS, 3
    fan_in = in_channels * k * k
    inits += [
        f32("conv1.weight", he_normal(rng, (c1, in_channels, k, k), fan_in)),
        f32("conv1.bias", bias_init(rng, c1, fan_in)),
    ]
    x = node(
        "Conv",
        ["input", "conv1.weight", "conv1.bias"],
        "conv1",
        kernel_shape=[k, k],
        pads=[1, 1, 1, 1],
    )
    if batchnorm:
        inits += [
            f32("bn1.scale", np.ones(c1)),
            f32("bn1.bias", np.zeros(c1)),
            f32("bn1.running_mean", np.zeros(c1)),
            f32("bn1.running_var", np.ones(c1)),
        ]
        x = node(
            "BatchNormalization",
            [x, "bn1.scale", "bn1.bias", "bn1.running_mean", "bn1.running_var"],
            "bn1",
            epsilon=BN_EPSILON,
        )
    x = node("Relu", [x], "conv1.relu")
    x = node(pool_op, [x], "pool1", **pool_attrs)

    # conv2
    c2 = CONV2_CHANNELS
    fan_in = (c1 // groups) * k * k
    inits += [
        f32("conv2.weight", he_normal(rng, (c2, c1 // groups, k, k), fan_in)),
        f32("conv2.bias", bias_init(rng, c2, fan_in)),
    ]
    x = node(
        "Conv",
        [x, "conv2.weight", "conv2.bias"],
        "conv2",
        kernel_shape=[k, k],
        pads=[1, 1, 1, 1],
        strides=[stride, stride],
        group=groups,
    )
    x = node("Relu", [x], "conv2.relu")
    if pool == "global":
        x = node("GlobalAveragePool", [x], "pool2")
        x = node("Flatten", [x], "flatten", axis=1)
    else:
        x = node(pool_op, [x], "pool2", **pool_attrs)
        inits.append(i64("flatten.shape", [0, -1]))
        x = node("Reshape", [x, "flatten.shape"], "flatten")

    # classifier
    inits += [
        f32("fc1.weight", he_normal(rng, (FC_HIDDEN, flat), flat)),
        f32("fc1.bias", bias_init(rng, FC_HIDDEN, flat)),
        f32("fc2.weight", xavier_uniform(rng, (num_classes, FC_HIDDEN), FC_HIDDEN, num_classes)),
        f32("fc2.bias", bias_init(rng, num_classes, FC_HIDDEN)),
    ]
    x = node("Gemm", [x, "fc1.weight", "fc1.bias"], "fc1", transB=1)
    x = node("Relu", [x], "fc1.relu")
    nodes.append(
        helper.make_node("Gemm", [x, "fc2.weight", "fc2.bias"], ["logits"], name="fc2", transB=1)
    )

    inputs = [
        helper.make_tensor_value_info(
            "input", TensorProto.FLOAT, [BATCH, in_channels, image_size, image_size]
        )
    ]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [BATCH, num_classes])]
    return make_model(
        "cnn",
        nodes,
        inputs,
        outputs,
        inits,
        doc=(
            f"LeNet-style CNN in_channels={in_channels} image_size={image_size} "
            f"num_classes={num_classes} batchnorm={batchnorm} pool={pool} groups={groups} "
            f"stride={stride} seed={seed}"
        ),
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point: write a CNN model to ``--out``."""
    p = argparse.ArgumentParser(
        prog="python -m adamax_onnx.models.cnn",
        description="Write a small LeNet-style CNN classifier as an ONNX model.",
    )
    p.add_argument("--out", required=True, help="path of the .onnx file to write")
    p.add_argument("--in-channels", type=int, default=1, help="input channels (default 1)")
    p.add_argument("--image-size", type=int, default=8, help="input height/width (default 8)")
    p.add_argument("--num-classes", type=int, default=10, help="number of logits (default 10)")
    p.add_argument("--seed", type=int, default=0, help="initialisation seed (default 0)")
    p.add_argument(
        "--batchnorm", action="store_true", help="add inference BatchNormalization after conv1"
    )
    p.add_argument(
        "--pool",
        choices=POOLS,
        default="max",
        help="max/avg: kind of both 2x2 pools; global: GlobalAveragePool after conv2 (default max)",
    )
    p.add_argument("--groups", type=int, default=1, help="groups of conv2 (default 1)")
    p.add_argument("--stride", type=int, default=1, help="stride of conv2 (default 1)")
    args = p.parse_args(argv)
    model = build_cnn(
        in_channels=args.in_channels,
        image_size=args.image_size,
        num_classes=args.num_classes,
        seed=args.seed,
        batchnorm=args.batchnorm,
        pool=args.pool,
        groups=args.groups,
        stride=args.stride,
    )
    save_model_atomically(model, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
