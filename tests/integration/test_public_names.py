"""Every module and name the documentation documents is reachable from one ``import adamax_onnx as ax``.

The package is imported once; everything else is reached with ``getattr`` from it (no further
``import adamax_onnx...``), as a user of ``ax.schedules.CosineDecayLR(...)`` would. The names come
from two places:

* the documentation itself (README.md and every ``docs/*.md``): every ``ax.<dotted>`` /
  ``adamax_onnx.<dotted>`` it mentions, every ``sess.<name>`` / ``TrainingSession.<name>``, and
  every error class it names in backticks, so the test fails when a page documents a name that
  does not exist;
* an explicit list (the public API, each schedule, list helper and error class, the CLI entry).

Inside pytest another test's ``import adamax_onnx.schedules`` would make ``ax.schedules`` exist
even if the package did not import it, so the resolution is also repeated in a fresh interpreter.
``adamax_onnx.federated`` needs Flower (not in the test venv): its modules are only located with
``importlib.util.find_spec``, never imported. Module paths of other packages (``passes.*``,
``models.*``, ``benchmarks``) are out of scope.
"""

from __future__ import annotations

import builtins
import importlib.util
import inspect
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import adamax_onnx as ax

ROOT = Path(__file__).resolve().parents[2]
#: The user documentation: the README and the pages it links in docs/.
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# ```js blocks show the JavaScript package (js/), whose TrainingSession has its own API.
README = "\n".join(
    re.sub(r"```js\n.*?```", "", path.read_text(encoding="utf-8"), flags=re.S) for path in DOC_FILES
)

# ``ax.X.Y`` / ``adamax_onnx.X.Y``, not inside a longer name (``torch.optim.Adamax``) and not
# right after a quote: ``metadata_props["adamax_onnx.contract"]`` is a metadata key, a string.
_DOTTED = re.compile(r"(?<![\w.\"'])(?:ax|adamax_onnx)((?:\.[A-Za-z_]\w*)+)")
_SESSION = re.compile(r"\b(?:sess|TrainingSession)\.([A-Za-z_]\w*)")
_ERROR = re.compile(r"`([A-Z]\w*(?:Error|Exhausted))`")

# Names the documentation gives that belong to other projects.
FOREIGN_ERRORS = {"ActorDiedError"}  # Ray's, in the Flower section


def readme_names() -> list[str]:
    """``ax.<dotted>`` for every package name the docs mention (``adamax_onnx.`` -> ``ax.``)."""
    return sorted({"ax" + m.group(1) for m in _DOTTED.finditer(README)})


def is_federated(dotted: str) -> bool:
    return dotted == "ax.federated" or dotted.startswith("ax.federated.")


README_NAMES = readme_names()
README_SESSION_NAMES = sorted(set(_SESSION.findall(README)))
README_ERRORS = sorted(
    n for n in set(_ERROR.findall(README)) if not hasattr(builtins, n) and n not in FOREIGN_ERRORS
)

SCHEDULES = [
    "LearningRateSchedule",
    "WeightDecaySchedule",
    "ExponentialDecayLR",
    "NaturalExpDecayLR",
    "InverseDecayLR",
    "CosineDecayLR",
    "PolynomialDecayLR",
    "WarmUpLR",
]
DYNAMIC_LR = [
    "piecewise_constant_lr",
    "exponential_decay_lr",
    "natural_exp_decay_lr",
    "inverse_decay_lr",
    "cosine_decay_lr",
    "polynomial_decay_lr",
    "warmup_lr",
]
ERRORS = [
    "AdamaxOnnxError",
    "ModelError",
    "GradientError",
    "LoweringError",
    "FeedError",
    "DatasetError",
    "LearningRateTableExhausted",
    "CheckpointError",
    "UnsafePathError",
    "FederatedError",
]
SESSION_METHODS = [
    "step",
    "parameters",
    "state",
    "set_parameters",
    "save_checkpoint",
    "load_checkpoint",
    "export_inference_model",
    "predict",
    "set_learning_rate",
    "get_lr",
    "get_lr_parameter",
    "get_weight_decay",
    "bind_inputs",
]
SESSION_ATTRIBUTES = [  # properties: values of the session, not methods
    "loss_scale",
    "last_overflow",
    "chunk_layout",
    "parameter_specs",
    "learning_rates",
]

EXPLICIT = [
    "ax.AdaMax",
    "ax.ParamConfig",
    "ax.trainable_params",
    "ax.load_model",
    "ax.build_training_model",
    "ax.build_optimizer_model",
    "ax.export_trainable_model",
    "ax.TrainingSession",
    "ax.DynamicLossScaleManager",
    "ax.FixedLossScaleManager",
    "ax.loss_scale.DynamicLossScaleManager",
    "ax.loss_scale.FixedLossScaleManager",
    "ax.__version__",
    "ax.cli.main",  # the ``adamax-onnx`` console script (pyproject: adamax_onnx.cli:main)
    *(f"ax.TrainingSession.{n}" for n in SESSION_METHODS),
    *(f"ax.schedules.{n}" for n in SCHEDULES),
    *(f"ax.dynamic_lr.{n}" for n in DYNAMIC_LR),
    *(f"ax.errors.{n}" for n in ERRORS),
]

# Everything resolved with getattr from the package (federated modules only located).
ALL_NAMES = sorted(
    {
        *(n for n in README_NAMES if not is_federated(n)),
        *EXPLICIT,
        *(f"ax.TrainingSession.{n}" for n in README_SESSION_NAMES if n not in SESSION_ATTRIBUTES),
        *(f"ax.errors.{n}" for n in README_ERRORS),
        *(f"ax.{n}" for n in ax.__all__),
    }
)


def resolve(dotted: str):
    """The object a documented name denotes: an attribute path from the package, or a module
    the docs run with ``python -m`` (``adamax_onnx.models.mlp``) and its attributes."""
    parts = dotted.split(".")[1:]
    try:
        obj = ax
        for part in parts:
            obj = getattr(obj, part)
        return obj
    except AttributeError:
        for cut in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module(".".join(["adamax_onnx", *parts[:cut]]))
            except ImportError:
                continue
            for part in parts[cut:]:
                obj = getattr(obj, part)
            return obj
        raise


def unresolved(names) -> list[str]:
    missing = []
    for dotted in names:
        try:
            resolve(dotted)
        except AttributeError:
            missing.append(dotted)
    return missing


# -- the documentation is parsed as intended --------------------------------------------------------
def test_readme_parse_finds_the_documented_names():
    # A regex that silently matched nothing, or a docs/ folder not found, would make the checks
    # vacuous.
    names = {path.name for path in DOC_FILES}
    assert {"README.md", "parity.md", "reliability.md", "federated.md"} <= names, names
    for name in ("ax.AdaMax", "ax.TrainingSession", "ax.schedules", "ax.dynamic_lr", "ax.errors"):
        assert name in README_NAMES, name
    assert not any(n.startswith(("ax.contract", "ax.inference_graph")) for n in README_NAMES)
    assert {"step", "save_checkpoint", "last_overflow", "get_lr"} <= set(README_SESSION_NAMES)
    assert {"CheckpointError", "FeedError", "LearningRateTableExhausted"} <= set(README_ERRORS)


# -- every name resolves ----------------------------------------------------------------------------
@pytest.mark.parametrize("dotted", [n for n in README_NAMES if not is_federated(n)])
def test_readme_name_resolves(dotted):
    assert not unresolved([dotted]), f"the docs document {dotted}, which does not exist"


@pytest.mark.parametrize("dotted", [n for n in README_NAMES if is_federated(n)])
def test_readme_federated_module_exists(dotted):
    # Importing these needs flwr; only check that the documented module is there.
    module = "adamax_onnx" + dotted[len("ax") :]
    assert importlib.util.find_spec(module) is not None, f"the docs document {module}"


def test_every_name_resolves_in_a_fresh_interpreter():
    """Nothing else imported first: the package itself makes every name reachable."""
    code = (
        "import json, sys\n"
        "from tests.integration.test_public_names import ALL_NAMES, unresolved\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('adamax_onnx'))\n"
        "print(json.dumps({'missing': unresolved(ALL_NAMES), 'loaded': loaded}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["missing"] == []
    # The import stays cheap: the CLI is imported on first use, Flower's side never.
    assert "adamax_onnx.cli" not in result["loaded"]
    assert not any(m.startswith("adamax_onnx.federated") for m in result["loaded"])


def test_all_names_resolve_here():
    assert unresolved(ALL_NAMES) == []


# -- what they are ----------------------------------------------------------------------------------
def test_submodules_are_package_attributes():
    for name in ("schedules", "dynamic_lr", "loss_scale", "errors", "cli"):
        module = getattr(ax, name)
        assert inspect.ismodule(module) and module.__name__ == f"adamax_onnx.{name}"
        assert name in dir(ax)
    for name in ("schedules", "dynamic_lr", "loss_scale", "errors"):
        assert name in ax.__all__
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        ax.not_a_name  # noqa: B018


def test_issue_example_works():
    lr = ax.schedules.CosineDecayLR(min_lr=0.0, max_lr=0.1, decay_steps=10)
    assert lr.value(0) == pytest.approx(0.1) and lr.value(10) == 0.0
    assert ax.dynamic_lr.warmup_lr(0.4, 4, 1, 2) == [0.0, 0.2, 0.4, 0.4]


def test_module_all_lists_resolve_and_cover_the_documented_names():
    assert set(SCHEDULES) <= set(ax.schedules.__all__)
    assert set(DYNAMIC_LR) == set(ax.dynamic_lr.__all__)
    for module in (ax.schedules, ax.dynamic_lr, ax.loss_scale):
        for name in module.__all__:
            assert getattr(module, name) is not None, f"{module.__name__}.{name}"
    for name in SCHEDULES[2:]:
        assert issubclass(getattr(ax.schedules, name), ax.schedules.LearningRateSchedule)
    assert all(callable(getattr(ax.dynamic_lr, n)) for n in DYNAMIC_LR)
    assert ax.loss_scale.DynamicLossScaleManager is ax.DynamicLossScaleManager
    assert ax.loss_scale.FixedLossScaleManager is ax.FixedLossScaleManager


def test_error_classes():
    """Every error class of ``ax.errors`` is listed here, derives from AdamaxOnnxError and from
    a built-in exception type (README: "subclasses of the built-in types MindSpore uses")."""
    defined = {
        n
        for n, obj in vars(ax.errors).items()
        if inspect.isclass(obj)
        and issubclass(obj, BaseException)
        and obj.__module__ == "adamax_onnx.errors"
    }
    assert defined == set(ERRORS)
    for name in ERRORS:
        cls = getattr(ax.errors, name)
        assert issubclass(cls, ax.errors.AdamaxOnnxError)
        if name != "AdamaxOnnxError":
            assert any(
                b.__module__ == "builtins" and b is not Exception for b in cls.__mro__[1:]
            ), name
        if name in ax.__all__:
            assert getattr(ax, name) is cls


def test_callables_and_cli_entry():
    for dotted in EXPLICIT:
        if dotted != "ax.__version__":
            assert callable(resolve(dotted)), dotted
    assert isinstance(ax.__version__, str)
    assert list(inspect.signature(ax.cli.main).parameters) == ["argv"]


# Keyword arguments the README uses or names, per callable.
DOCUMENTED_KEYWORDS = {
    "ax.AdaMax": ["learning_rate", "beta1", "beta2", "eps", "weight_decay", "loss_scale"],
    "ax.TrainingSession": ["providers", "chunk_size"],
    "ax.build_training_model": [
        "loss",
        "label",
        "output",
        "portable",
        "skip_nonfinite",
        "loss_scale_manager",
        "bucket_size",
        "chunk_size",
    ],
    "ax.build_optimizer_model": ["bucket_size", "chunk_size"],
    "ax.TrainingSession.set_learning_rate": ["group"],
    "ax.DynamicLossScaleManager": ["init_loss_scale", "scale_factor", "scale_window"],
    "ax.FixedLossScaleManager": ["loss_scale", "drop_overflow_update"],
}


@pytest.mark.parametrize("dotted", list(DOCUMENTED_KEYWORDS))
def test_documented_keywords(dotted):
    params = inspect.signature(resolve(dotted)).parameters
    for kw in DOCUMENTED_KEYWORDS[dotted]:
        assert kw in params, f"{dotted} has no keyword {kw!r}"


def test_session_methods_and_attributes_on_an_instance():
    """``sess.<name>`` of the README, on a real (tiny) session: methods and per-session values."""
    opt = ax.AdaMax(["w"], learning_rate=0.01)
    sess = ax.TrainingSession(ax.build_optimizer_model(opt, {"w": np.zeros(3, np.float32)}))
    for name in sorted(set(SESSION_METHODS) | set(README_SESSION_NAMES)):
        assert hasattr(sess, name), f"TrainingSession has no {name!r}"
        if name not in SESSION_ATTRIBUTES:
            assert callable(getattr(sess, name)), name
    sess.step({"w_grad": np.ones(3, np.float32)})
    assert sess.last_overflow is False and sess.loss_scale is None
    assert sess.get_lr() == {0: pytest.approx(0.01)}
