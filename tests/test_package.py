"""Service packaging: names, signatures, batching rules, and generated code that stays safe
whatever the notebook's names and paths contain."""

from __future__ import annotations

import ast
import json

import pytest
from IPython.core.interactiveshell import InteractiveShell

from nbdeploy.service.capture import capture_function
from nbdeploy.service.package import (
    ServiceDefinitionError,
    ServiceOptions,
    batchable,
    deployment_name,
    package_service,
)
from nbdeploy.service.requirements import pin_requirements


@pytest.fixture(scope="module")
def shell():
    return InteractiveShell.instance()


def captured(shell, code: str, name: str):
    assert shell.run_cell(code, store_history=True).success
    return capture_function(shell.user_ns[name], shell.user_ns, shell.user_ns["In"])


@pytest.mark.parametrize("good", ["predict", "Churn_Model", "a1", "x-y-z"])
def test_deployment_names_become_dns_labels(good):
    name = deployment_name(good)
    assert name == good.lower().replace("_", "-")


@pytest.mark.parametrize(
    "bad", ["", "../etc", 'a"b', "a\nb", "a b", "1abc", "-x", "x" * 41, "ünïcode", "a/b", "a;rm"]
)
def test_hostile_deployment_names_are_refused(bad):
    with pytest.raises(ServiceDefinitionError, match="cannot name a deployment"):
        deployment_name(bad)


def test_generated_code_is_safe_for_hostile_labels_and_docstrings(shell, tmp_path):
    function = captured(
        shell,
        "LIMIT = 3\n"
        "def score(text: str, weight: float = 1.5) -> float:\n"
        '    """Quotes \\" and \\\'\\\'\\\' and a {{ jinja }} {% tag %} in a docstring."""\n'
        "    return len(text) * weight + LIMIT\n",
        "score",
    )
    label = '"; import os; os.system("x") #\n__import__("os")'
    source = package_service(
        function, ServiceOptions(name="score"), pin_requirements(set()), tmp_path / "svc", label
    )
    code = "".join(
        (tmp_path / "svc" / name).read_text()
        for name in ("nbdeploy_function.py", "service.py", "mlflow_model.py")
    )
    tree = ast.parse((tmp_path / "svc" / "nbdeploy_function.py").read_text())
    # The label only ever appears inside a string literal, never as code.
    assert "os.system" not in "".join(
        ast.unparse(node) for node in tree.body if not isinstance(node, ast.Expr)
    ).replace(json.dumps(label), "")
    assert "{{ jinja }} {% tag %}" in code  # notebook text is not re-rendered as a template
    assert "def score(self, text: str, weight: float = 1.5) -> float:" in code
    assert "result = notebook.score(text=text, weight=weight)" in code
    assert not any(line.startswith('__import__("os")') for line in code.splitlines())
    assert source.batch is False  # two parameters: not batchable
    manifest = json.loads((tmp_path / "svc" / "manifest.json").read_text())
    assert manifest["objects"][0]["name"] == "LIMIT"
    assert manifest["schema"]["inputs"] == [
        {"name": "text", "type": "str"},
        {"name": "weight", "type": "float"},
    ]


def test_content_hash_is_stable_and_changes_with_the_objects(shell, tmp_path):
    function = captured(
        shell,
        "K = 2\ndef times(values: list[float]) -> list[float]:\n"
        "    return [v * K for v in values]\n",
        "times",
    )
    options = ServiceOptions(name="times")
    first = package_service(function, options, pin_requirements(set()), tmp_path / "a", "x")
    again = package_service(function, options, pin_requirements(set()), tmp_path / "b", "x")
    assert first.content_hash == again.content_hash
    assert first.batch is True
    changed = captured(shell, "K = 3", "times")
    third = package_service(changed, options, pin_requirements(set()), tmp_path / "c", "x")
    assert third.content_hash != first.content_hash


@pytest.mark.parametrize(
    ("code", "name", "message"),
    [
        ("def nohints(rows):\n    return rows\n", "nohints", "has no type hint"),
        ("def star(*rows: float) -> float:\n    return 0.0\n", "star", r"\*args"),
        ("def none() -> int:\n    return 1\n", "none", "takes no parameters"),
    ],
)
def test_signatures_that_cannot_be_endpoints(shell, tmp_path, code, name, message):
    function = captured(shell, code, name)
    with pytest.raises(ServiceDefinitionError, match=message):
        package_service(
            function, ServiceOptions(name="x"), pin_requirements(set()), tmp_path / "s", "x"
        )


def test_batching_needs_rows_in_and_results_out(shell, tmp_path):
    rows = captured(
        shell, "def rows_fn(rows: list[list[float]]) -> list[int]:\n    return [0]\n", "rows_fn"
    )
    scalar = captured(shell, "def one(x: float) -> float:\n    return x\n", "one")
    assert batchable(rows) and not batchable(scalar)
    with pytest.raises(ServiceDefinitionError, match="--batch needs"):
        package_service(
            scalar,
            ServiceOptions(name="one", batch=True),
            pin_requirements(set()),
            tmp_path / "s",
            "x",
        )
