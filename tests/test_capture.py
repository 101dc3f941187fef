"""Capturing a notebook function from a live IPython namespace, and pinning requirements."""

from __future__ import annotations

import importlib.metadata as metadata

import pytest
from IPython.core.interactiveshell import InteractiveShell

from nbdeploy.service.capture import CaptureError, capture_function, global_names
from nbdeploy.service.requirements import (
    RequirementError,
    notebook_pip_installs,
    parse_requirement,
    pin_requirements,
)

NOTEBOOK = '''
import json
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score as acc

X = np.random.default_rng(0).random((40, 3))
y = (X[:, 0] > 0.5).astype(int)
model = LogisticRegression().fit(X, y)
THRESHOLD = 0.5
unused_table = {"a": 1}

class Scaler:
    def __init__(self, k):
        self.k = k

    def apply(self, rows):
        return np.asarray(rows) * self.k

scaler = Scaler(2)

def clean(rows):
    return [[float(v) for v in row] for row in rows]

def predict(rows: list[list[float]]) -> list[int]:
    """Class of each row."""
    probabilities = model.predict_proba(scaler.apply(clean(rows)))[:, 1]
    return [int(p > THRESHOLD) for p in probabilities]
'''


@pytest.fixture(scope="module")
def shell():
    ip = InteractiveShell.instance()
    result = ip.run_cell(NOTEBOOK, store_history=True)
    assert result.success
    return ip


def test_global_names_come_from_bytecode_including_nested_code():
    def sample(rows):
        total = len(rows)
        return [helper(r) for r in rows if r > LIMIT], total  # noqa: F821

    names = global_names(sample.__code__)
    assert sorted(names) == ["LIMIT", "helper", "len"]
    assert "total" not in names and "rows" not in names


def test_capture_finds_helpers_classes_objects_and_imports(shell):
    captured = capture_function(shell.user_ns["predict"], shell.user_ns, shell.user_ns["In"])
    assert captured.name == "predict"
    assert captured.source.startswith("def predict(rows: list[list[float]]) -> list[int]:")
    assert captured.helper_names == ["Scaler", "clean"]
    assert captured.helpers[0].startswith("class Scaler:")
    assert set(captured.objects) == {"model", "scaler", "THRESHOLD"}  # not unused_table, X, y
    assert captured.imports == ["import numpy as np"]  # used by Scaler.apply
    assert {"numpy", "sklearn"} <= captured.modules
    assert "__main__" not in captured.modules
    assert str(captured.signature) == "(rows: 'list[list[float]]') -> 'list[int]'"


def test_imported_functions_become_imports(shell):
    shell.run_cell(
        "def score(rows: list[list[float]], labels: list[int]) -> float:\n"
        "    return float(acc(labels, model.predict(np.asarray(rows))))\n",
        store_history=True,
    )
    captured = capture_function(shell.user_ns["score"], shell.user_ns, shell.user_ns["In"])
    assert "from sklearn.metrics._classification import accuracy_score as acc" in captured.imports
    assert set(captured.objects) == {"model"}


@pytest.mark.parametrize(
    ("code", "name", "message"),
    [
        ("f = lambda rows: rows", "f", "lambda"),
        (
            "def outer():\n    k = 1\n    def inner(x):\n        return x + k\n"
            "    return inner\ng = outer()",
            "g",
            "nested function",
        ),
        ("from math import sqrt", "sqrt", "not a function defined with `def`"),
        ("from os.path import join", "join", "not in the notebook"),
    ],
)
def test_functions_that_cannot_be_deployed_are_refused_clearly(shell, code, name, message):
    shell.run_cell(code, store_history=True)
    with pytest.raises(CaptureError, match=message):
        capture_function(shell.user_ns[name], shell.user_ns, shell.user_ns["In"])


def test_requirements_are_pinned_to_installed_versions():
    requirements = pin_requirements({"sklearn", "numpy", "json", "__main__", "no_such_module_x"})
    assert f"scikit-learn=={metadata.version('scikit-learn')}" in requirements.pinned
    assert f"numpy=={metadata.version('numpy')}" in requirements.pinned
    assert not any(line.startswith("json") for line in requirements.pinned)
    assert requirements.unresolved == ["no_such_module_x"]
    with_extra = pin_requirements({"numpy"}, ["xgboost>=2.0"])
    assert "xgboost>=2.0" in with_extra.pinned


@pytest.mark.parametrize(
    "text", ["-e .", "--index-url https://x", "pkg @ https://example.com/p.whl", "a\nb", "no way!"]
)
def test_extra_requirements_are_validated(text):
    with pytest.raises(RequirementError):
        parse_requirement(text)


def test_pip_install_lines_are_reported():
    cells = [
        "%pip install lightgbm\nx = 1",
        "!pip install -q 'xgboost==2.0'",
        "print('pip install')",
    ]
    assert notebook_pip_installs(cells) == [
        "%pip install lightgbm",
        "!pip install -q 'xgboost==2.0'",
    ]
