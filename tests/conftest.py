"""Test selection: a plain ``pytest`` runs the fast tests, the README's all-tests command runs all.

pyproject.toml's addopts deselect the ``slow`` and ``venv`` markers; ``-m "not ortt"`` (README,
.ci/run) replaces that expression and selects them. Two guards keep the split honest:

* a test module that builds a virtual environment (it uses ``tests.venvs.venv_python``) must
  carry the ``venv`` marker, or collection stops with an error naming the module;
* when the default expression deselected tests, the summary says so and gives the command that
  runs them, so a local run never looks complete when it is not.
"""

from __future__ import annotations

import pytest

from tests.venvs import venv_python

#: The marker expression of pyproject.toml's addopts (a plain ``pytest``).
DEFAULT_SELECTION = "not slow and not venv and not ortt"
ALL_TESTS = '.venv/bin/python -m pytest -q -m "not ortt"'


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    unmarked = sorted(
        {
            item.module.__name__
            for item in items
            if getattr(getattr(item, "module", None), "venv_python", None) is venv_python
            and item.get_closest_marker("venv") is None
        }
    )
    if unmarked:
        raise pytest.UsageError(
            f"{', '.join(unmarked)} builds a virtual environment (tests.venvs.venv_python) "
            "but is not marked `venv`: add `pytestmark = pytest.mark.venv`"
        )


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    deselected = len(terminalreporter.stats.get("deselected", []))
    if deselected and config.option.markexpr == DEFAULT_SELECTION:
        terminalreporter.write_line(
            f"{deselected} slow/venv/ortt tests deselected by default; all tests: {ALL_TESTS}"
        )
