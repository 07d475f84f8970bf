"""``TrainingSession``'s public read-only views and how the runtime modules depend on each other.

The views (``chunk_layout``, ``ortvalue``, ``state_tensors``, ``parameter_specs``) are checked
against the numpy reference optimizer and the parameters they were built from; the module
layering is read from the sources (AST), so an import hidden inside a function counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import adamax_onnx as ax
from tests.reference import NumpyAdaMax
from tests.reference import random_grads as _grads
from tests.reference import random_params as _params

PACKAGE = Path(ax.__file__).parent


def _session(shapes=((6, 4), (3,)), **kwargs):
    params = _params(list(shapes))
    opt = ax.AdaMax(list(params), learning_rate=0.01)
    return params, ax.TrainingSession(ax.build_optimizer_model(opt, params), **kwargs)


def test_ortvalue_is_the_current_value_without_a_copy():
    params, sess = _session()
    ref = NumpyAdaMax(params, learning_rate=0.01)
    for step in range(3):
        grads = _grads(params, step)
        sess.step(grads)
        ref.update({k[: -len("_grad")]: g for k, g in grads.items()})
        for p in params:
            np.testing.assert_allclose(sess.ortvalue(p).numpy(), ref.w[p], rtol=1e-6, atol=1e-7)
            np.testing.assert_allclose(
                sess.ortvalue(f"{p}.adamax.m").numpy(), ref.m[p], rtol=1e-6, atol=1e-7
            )
    # no copy: writing into it is what the next step reads (as set_parameters does)
    sess.ortvalue("p1").update_inplace(np.zeros(3, np.float32))
    np.testing.assert_array_equal(sess.parameters()["p1"], np.zeros(3, np.float32))
    with pytest.raises(ax.ModelError, match="'p9'"):
        sess.ortvalue("p9")
    with pytest.raises(ax.ModelError, match="'p0_grad'"):
        sess.ortvalue("p0_grad")  # a data input, not carried state


def test_chunk_layout_is_a_copy_of_what_the_session_binds():
    params, sess = _session([(1 << 20,)])
    expected = {n: [8, 131072] for n in ("p0", "p0.adamax.m", "p0.adamax.v")}
    assert sess.chunk_layout == expected
    sess.chunk_layout["p0"].append(1)  # a view for reading: changing it changes nothing
    sess.chunk_layout.clear()
    assert sess.chunk_layout == expected
    _, plain = _session([(1 << 20,)], chunk_size=0)
    assert plain.chunk_layout == {}


def test_state_tensors_are_what_a_checkpoint_holds(tmp_path):
    params, sess = _session()
    sess.step(_grads(params, 0))
    tensors = sess.state_tensors()
    contract = sess.contract
    assert set(tensors) == set(contract.state_inputs()) | set(contract.lr_inputs.values())
    for p, w in sess.parameters().items():
        np.testing.assert_array_equal(tensors[p], w)
    tensors["p0"][:] = 7  # host copies
    assert not np.any(sess.parameters()["p0"] == 7)
    sess.save_checkpoint(tmp_path)
    _, other = _session()
    other.load_checkpoint(tmp_path)
    for name, value in other.state_tensors().items():
        np.testing.assert_array_equal(value, sess.state_tensors()[name], err_msg=name)


def test_parameter_specs_are_what_set_parameters_accepts():
    params, sess = _session()
    specs = sess.parameter_specs
    assert list(specs) == list(params)
    for name, arr in params.items():
        assert specs[name].shape == arr.shape and specs[name].dtype == arr.dtype
    with pytest.raises(ax.ModelError, match=r"'p0' must be float32\[6, 4\], got float64\[6, 4\]"):
        sess.set_parameters({"p0": params["p0"].astype(np.float64)})
    with pytest.raises(ax.ModelError, match=r"'p1' must be float32\[3\], got float32\[4\]"):
        sess.set_parameters({"p1": np.zeros(4, np.float32)})
    sess.set_parameters({"p1": np.full(3, 2.0, np.float32)})
    np.testing.assert_array_equal(sess.parameters()["p1"], np.full(3, 2.0, np.float32))


def test_bind_inputs_checks_through_the_same_specs():
    params, sess = _session()
    with pytest.raises(ax.FeedError, match=r"'p1_grad' is tensor\(float\)\[4\], expected"):
        sess.bind_inputs({"p1_grad": ort.OrtValue.ortvalue_from_numpy(np.zeros(4, np.float32))})
    grad = ort.OrtValue.ortvalue_from_numpy(_grads(params, 0)["p1_grad"])
    sess.bind_inputs({"p1_grad": grad})
    with pytest.raises(ax.FeedError, match=r"missing input\(s\) \['p0_grad'\]; a step takes"):
        sess.step({})
    sess.step({"p0_grad": _grads(params, 0)["p0_grad"]})
    assert sess.global_step == 1


def test_binding_an_input_after_feeding_it_trains_like_feeding_it():
    # Fed inputs of one static shape are copied into buffers bound once; binding one of them
    # later must replace it, and the others must still be read from what is fed.
    params = _params([(6, 4), (3,), (5,)])
    opt = ax.AdaMax(list(params), learning_rate=0.01)
    model = ax.build_optimizer_model(opt, params)
    fed, mixed = ax.TrainingSession(model), ax.TrainingSession(model)
    ref = NumpyAdaMax(params, learning_rate=0.01)
    bound = ort.OrtValue.ortvalue_from_numpy(np.zeros(3, np.float32))
    for step in range(4):
        grads = _grads(params, step)
        fed.step(grads)
        if step == 2:
            mixed.bind_inputs({"p1_grad": bound})
        if step >= 2:
            bound.update_inplace(grads.pop("p1_grad"))
        mixed.step(grads)
        ref.update({k[: -len("_grad")]: g for k, g in _grads(params, step).items()})
    for p, w in mixed.parameters().items():
        np.testing.assert_array_equal(w, fed.parameters()[p], err_msg=p)
        np.testing.assert_allclose(w, ref.w[p], rtol=1e-6, atol=1e-7, err_msg=p)


# -- layering --------------------------------------------------------------------------------
def _imports(path: Path) -> set[str]:
    """Modules ``path`` imports anywhere (relative names resolved against the package)."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = list(parts[: len(parts) - node.level]) if node.level else []
            module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            out.add(module)
            out.update(f"{module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


@pytest.mark.parametrize(
    "module",
    [
        "buffers.py",
        "providers.py",
        "trainable.py",
        "feeds.py",
        "lr_probe.py",
        "checkpoint.py",
        "passes/session.py",
    ],
)
def test_what_the_runtime_uses_does_not_import_it(module):
    assert not any(m.startswith("adamax_onnx.runtime") for m in _imports(PACKAGE / module))


def test_the_session_pass_runs_no_session():
    # model in, model out (the package-wide rules are in integration/test_layering.py)
    assert not any(m.startswith("onnxruntime") for m in _imports(PACKAGE / "passes/session.py"))


def test_the_runtime_edits_no_graph():
    # The model edits a session needs are the passes.session pass; runtime.py names no graph
    # builder or rewrite (identifiers in the code, docstrings aside).
    tree = ast.parse((PACKAGE / "runtime.py").read_text())
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    names |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    for edit in ("make_node", "make_graph", "make_model", "ChunkUpdates", "CopyFrom", "extend"):
        assert edit not in names, edit
