"""The real-model suite (:data:`tests.real_models.CASES`) through ``ax.from_torch``, freshly
initialised (no perturbation: the tensors an exporter would merge stay equal), in eval and in
train mode (TorchScript exporter) and in eval mode with ``exporter="dynamo"``, 20 steps of
MindSpore AdaMax against the same steps in torch.

Reference: torch float32 (:class:`tests.torch_adamax.TorchAdaMax`); losses must agree within
1e-5 relative. Where torch float32 itself is further than that from the same training in
float64 (batch statistics over 4 values, chaotic trajectories), the criterion is that our
losses are no further from float64 than torch float32's (the first step, and the worst step,
times 2): the float32 noise of either side then decides, not a difference of semantics. Dropout is set to
p=0 in train mode (torch's random masks cannot be reproduced; masks from the seed state are
compared with torch in tests/integration/test_train_mode.py). Frozen tensors (running statistics in
eval mode) are bit-identical in the exported model, which reproduces the trained torch model.

The same suite exported with plain ``torch.onnx.export`` defaults (constant folding, merged
tensors) trains like torch too, except where folding puts BatchNorm into the Conv.
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import numpy_helper

import adamax_onnx as ax
from tests.real_models import CASES, batches, import_torchvision_models, missing_modules
from tests.torch_adamax import TorchAdaMax

pytestmark = pytest.mark.slow

STEPS = 20
BATCH = 4
LR = 1e-3
RTOL = 1e-5

def _cases():
    for name, case in CASES.items():
        if case.train_mode:
            continue  # the same models; mode is a parameter here
        for mode, exporter in (
            ("eval", "torchscript"),
            ("train", "torchscript"),
            ("eval", "dynamo"),
        ):
            yield pytest.param(name, mode, exporter, id=f"{name}-{mode}-{exporter}")


def _freeze_biases_before_batchnorm(module: torch.nn.Module) -> None:
    """Under BatchNorm on batch statistics the bias of the layer before it has a zero true
    gradient, and AdaMax turns float noise there into full-size steps (differently on each
    side): such biases are frozen in train mode."""
    norms = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)
    for seq in module.modules():
        if isinstance(seq, torch.nn.Sequential):
            layers = list(seq)
            for a, b in zip(layers, layers[1:], strict=False):
                if isinstance(b, norms) and getattr(a, "bias", None) is not None:
                    a.bias.requires_grad_(False)


def _torch_losses(model, data, names, mode, dtype):
    model = copy.deepcopy(model).to(dtype)
    model.train(mode == "train")
    params = [p for n, p in model.named_parameters() if n in set(names)]
    opt = TorchAdaMax(params, learning_rate=LR)
    losses = []
    for x, y in data:
        opt.zero_grad()
        x = x.to(dtype) if x.is_floating_point() else x
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return np.array(losses), model


@pytest.mark.parametrize(("name", "mode", "exporter"), list(_cases()))
def test_fresh_model_through_from_torch(name, mode, exporter, tmp_path):
    case = CASES[name]
    missing = missing_modules(case)
    assert not missing, f"the suite needs {', '.join(missing)} (scripts/setup.sh --test)"
    if "torchvision" in case.needs:
        import_torchvision_models()
    torch.manual_seed(0)
    module = case.make().float()
    for sub in module.modules():
        if isinstance(sub, torch.nn.Dropout):
            sub.p = 0.0
    module.train(mode == "train")
    if mode == "train":
        _freeze_biases_before_batchnorm(module)
    data = batches(case, STEPS, BATCH)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # nothing to untie or report
        model, names = ax.from_torch(
            module, data[0][0][:2], input_names=[case.input_name], mode=mode, exporter=exporter
        )
        train = ax.build_training_model(model, ax.AdaMax(names, learning_rate=LR))
    assert names == [n for n, p in module.named_parameters() if p.requires_grad]
    frozen = {
        i.name: numpy_helper.to_array(i)
        for i in model.graph.initializer
        if i.name not in set(names) and i.data_type == onnx.TensorProto.FLOAT
    }
    sess = ax.TrainingSession(train)
    ours = np.array(
        [float(sess.step({case.input_name: x.numpy(), "labels": y.numpy()})) for x, y in data]
    )
    ref32, trained = _torch_losses(module, data, names, mode, torch.float32)
    assert ours[0] != ours[-1]
    close = np.abs(ours - ref32) <= RTOL * np.abs(ref32)
    if not close.all():
        ref64, _ = _torch_losses(module, data, names, mode, torch.float64)
        err_ours = np.abs(ours - ref64) / np.abs(ref64)
        err_t32 = np.abs(ref32 - ref64) / np.abs(ref64)
        # the first step tightly; then, trajectories being chaotic, the worst step
        first_ok = err_ours[0] <= max(RTOL, 2 * err_t32[0])
        assert first_ok and err_ours.max() <= 2 * err_t32.max() + 1e-6, (
            f"{name} {mode}: ours vs float64 {err_ours.max():.2e}, torch float32 vs float64 "
            f"{err_t32.max():.2e}, ours vs torch float32 "
            f"{(np.abs(ours - ref32) / np.abs(ref32)).max():.2e}"
        )
        return  # trajectories that far apart: the exported outputs are not comparable

    path = sess.export_inference_model(tmp_path / "trained.onnx")
    exported = {i.name: i for i in onnx.load(str(path)).graph.initializer}
    if mode == "eval":
        for n, value in frozen.items():
            if n in exported:
                assert numpy_helper.to_array(exported[n]).tobytes() == value.tobytes(), n
    trained.eval()
    x = case.data(BATCH + 1, torch.Generator().manual_seed(99))
    (got,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {case.input_name: x.numpy()}
    )
    with torch.no_grad():
        want = trained(x).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4 * np.abs(want).max())


# -- plain torch.onnx.export with its defaults ----------------------------------------------------
# Constant folding folds BatchNorm into the Conv: the file is no longer the module's model.
# For these the test asserts what the user gets: the warning naming the folded weights, and
# no BatchNormalization node left (so training cannot match torch's BatchNorm).
FOLDS_BATCHNORM = {"small_cnn_bn", "mobilenet_v2", "resnet18"}


def _default_cases():
    for name, case in CASES.items():
        if not case.train_mode:
            yield pytest.param(name, id=name)


@pytest.mark.parametrize("name", list(_default_cases()))
def test_fresh_model_through_default_export(name):
    """``torch.onnx.export(module, x, f, input_names, output_names, dynamic_axes)`` and nothing
    else (constant folding on, equal tensors merged): ties are repaired by the build, folded
    copies used once train like their weights."""
    import io

    case = CASES[name]
    missing = missing_modules(case)
    assert not missing, f"the suite needs {', '.join(missing)} (scripts/setup.sh --test)"
    if "torchvision" in case.needs:
        import_torchvision_models()
    torch.manual_seed(0)
    module = case.make().float().eval()
    data = batches(case, STEPS, BATCH)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (data[0][0],),
            buf,
            dynamo=False,
            input_names=[case.input_name],
            output_names=["logits"],
            dynamic_axes={case.input_name: {0: "batch"}, "logits": {0: "batch"}},
        )
    model = onnx.load_from_string(buf.getvalue())
    if name in FOLDS_BATCHNORM:
        assert not any(n.op_type == "BatchNormalization" for n in model.graph.node)
        with pytest.warns(UserWarning, match="exporter-generated names: weights the exporter"):
            ax.trainable_params(model)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        names = ax.trainable_params(model)
        train = ax.build_training_model(model, ax.AdaMax(names, learning_rate=LR))
    sess = ax.TrainingSession(train)
    ours = [float(sess.step({case.input_name: x.numpy(), "labels": y.numpy()})) for x, y in data]
    ref, _ = _torch_losses(
        module, data, [n for n, _ in module.named_parameters()], "eval", torch.float32
    )
    np.testing.assert_allclose(ours, ref, rtol=RTOL, atol=0)
