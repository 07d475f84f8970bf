"""Our autodiff against onnxruntime-training 1.19.2's C++ gradient builder (optional oracle).

Runs only in .venv-ortt (marker ``ortt``; scripts/ortt_venv.sh, called by .ci/run). For each
bundled model and loss, the gradient graphs of both builders are run on the same batch in
onnxruntime and every ``p_grad`` compared. The two builders share no code: the C++ one emits
com.microsoft gradient kernels (lowered here to standard ops, as the default used to do).
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import adamax_onnx as ax
from adamax_onnx.models.cnn import build_cnn
from adamax_onnx.models.mlp import build_mlp
from adamax_onnx.models.transformer import build_transformer
from adamax_onnx.passes.autodiff import AutodiffBuilder
from adamax_onnx.passes.batchnorm import DecomposeBatchNorm
from adamax_onnx.passes.contract import grad_name
from adamax_onnx.passes.gradients import BuildGradients, OrtGradientBuilder
from adamax_onnx.passes.loss import LOSS_NAME, AttachLoss
from adamax_onnx.passes.lowering import LowerToStandard

pytestmark = pytest.mark.ortt


def _cases():
    rng = np.random.default_rng(0)
    mlp = build_mlp(in_features=16, hidden=(32, 16), num_classes=5)
    cnn = build_cnn(batchnorm=True)
    tr = build_transformer()
    return {
        "mlp_ce": (mlp, "cross_entropy", {"input": rng.standard_normal((6, 16))}, 5),
        "mlp_mse": (mlp, "mse", {"input": rng.standard_normal((6, 16))}, None),
        "cnn_bn_ce": (cnn, "cross_entropy", {"input": rng.standard_normal((4, 1, 8, 8))}, 10),
        "transformer_ce": (tr, "cross_entropy", None, None),
    }


def _grads(model, loss, feeds, builder):
    params = ax.trainable_params(model)
    with_loss = AttachLoss(loss)(model).model
    with_loss = DecomposeBatchNorm(params)(with_loss).model
    g = BuildGradients(LOSS_NAME, params, builder=builder)(with_loss).model
    g = LowerToStandard()(g).model
    sess = ort.InferenceSession(g.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [grad_name(p) for p in params]
    # BuildGradients turns the parameters into inputs (the caller attaches their values).
    values = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    feeds = {**feeds, **{p: values[p] for p in params}}
    wanted = {i.name for i in sess.get_inputs()}
    run = sess.run(names, {k: v for k, v in feeds.items() if k in wanted})
    return dict(zip(params, run, strict=True))


@pytest.mark.parametrize("case", list(_cases()))
def test_autodiff_matches_onnxruntime_training_builder(case):
    model, loss, feeds, classes = _cases()[case]
    rng = np.random.default_rng(1)
    if feeds is None:  # the transformer: token ids
        vocab = model.graph.initializer[0].dims[0]
        seq = model.graph.input[0].type.tensor_type.shape.dim[1].dim_value or 8
        feeds = {model.graph.input[0].name: rng.integers(0, vocab, (4, seq)).astype(np.int64)}
        classes = [o for o in model.graph.output][0].type.tensor_type.shape.dim[-1].dim_value
    feeds = {k: (v.astype(np.float32) if v.dtype == np.float64 else v) for k, v in feeds.items()}
    batch = next(iter(feeds.values())).shape[0]
    if loss == "cross_entropy":
        feeds["labels"] = rng.integers(0, classes, batch).astype(np.int64)
    else:
        out = model.graph.output[0].type.tensor_type.shape.dim
        feeds["labels"] = rng.standard_normal((batch, out[-1].dim_value)).astype(np.float32)
    ours = _grads(model, loss, feeds, AutodiffBuilder())
    theirs = _grads(model, loss, feeds, OrtGradientBuilder())
    assert ours.keys() == theirs.keys()
    # One absolute scale for the model: some gradients are zero in exact arithmetic (a key
    # bias shifts every score of a query equally) and both builders return float32 noise there.
    scale = max(float(np.abs(v).max()) for v in theirs.values())
    for p in ours:
        np.testing.assert_allclose(ours[p], theirs[p], rtol=1e-4, atol=1e-6 * scale, err_msg=p)
