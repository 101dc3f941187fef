"""Planning and writing a version: names, content hashes, batching rules, and generated code
that stays safe whatever the notebook's names, paths and docstrings contain."""

from __future__ import annotations

import ast
import inspect
import json
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from IPython.core.interactiveshell import InteractiveShell

from nbdeploy.service import runtime
from nbdeploy.service.capture import capture_function, capture_model
from nbdeploy.service.package import (
    ServiceDefinitionError,
    ServiceOptions,
    deployment_name,
    plan_version,
    set_requirements,
    write_version,
)

HOSTILE_LABEL = '"; import os; os.system("x") #\n__import__("os")\r\nimport sys'
HOSTILE_DOC = '''
def hostile_doc(text: str, weight: float = 1.5) -> float:
    """Quotes \\" and \\'\\'\\' and \\"\\"\\" and a {{ jinja }} {% tag %} in a docstring.

    """
    return len(text) * weight
'''


@pytest.fixture(scope="module")
def shell():
    ip = InteractiveShell.instance()
    define(ip, "import numpy as np\nimport pandas as pd\n")
    return ip


def define(shell, *cells: str) -> None:
    for cell in cells:
        result = shell.run_cell(textwrap.dedent(cell), store_history=True)
        assert result.success, result.error_before_exec or result.error_in_exec


def planned(
    shell,
    name: str,
    options: ServiceOptions | None = None,
    reference: Any = None,
    label: str = "a notebook",
):
    captured = capture_function(shell.user_ns[name], shell.user_ns, shell.user_ns["In"])
    return plan_version(captured, options or ServiceOptions(name="svc"), reference, label)


def names_in(code: str) -> set[str]:
    """Every name and attribute the code uses (strings and comments excluded)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Name):
            found.add(node.id)
        elif isinstance(node, ast.Attribute):
            found.add(node.attr)
        elif isinstance(node, ast.alias):
            found.add(node.name)
    return found


def endpoint_method(plan, name: str):
    """The endpoint method of the generated service.py as a plain function, with the
    module-level names it uses, so that it can be called without BentoML."""
    tree = ast.parse(plan.rendered["service.py"])
    service = next(n for n in tree.body if isinstance(n, ast.ClassDef))
    method = next(n for n in service.body if isinstance(n, ast.FunctionDef) and n.name == name)
    method.decorator_list = []
    module = ast.Module(body=[method], type_ignores=[])
    namespace = {
        "_nbd": runtime,
        "_SIGNATURE": plan.signature,
        "_HINT": plan.signature["annotations"],
        "_DEFAULT": plan.signature["defaults"],
        "Any": Any,
    }
    exec(compile(module, "service.py", "exec", dont_inherit=True), namespace)
    return namespace[name]


class FakeService:
    def __init__(self, function):
        self._function = function


# -- names ------------------------------------------------------------------------------------
@pytest.mark.parametrize("good", ["predict", "Churn_Model", "a1", "x-y-z"])
def test_deployment_names_become_dns_labels(good):
    name = deployment_name(good)
    assert name == good.lower().replace("_", "-")


def test_a_given_name_is_used_as_given_or_refused_with_the_form_it_could_take():
    assert deployment_name("b-scale", given=True) == "b-scale"
    with pytest.raises(ServiceDefinitionError, match="cannot name a deployment") as raised:
        deployment_name("b_scale", given=True)
    assert raised.value.hint == "did you mean b-scale?"
    with pytest.raises(ServiceDefinitionError, match="did you mean churn"):
        deployment_name("Churn", given=True)


@pytest.mark.parametrize(
    "bad", ["", "../etc", 'a"b', "a\nb", "a b", "1abc", "-x", "x" * 41, "ünïcode", "a/b", "a;rm"]
)
def test_hostile_deployment_names_are_refused(bad):
    with pytest.raises(ServiceDefinitionError, match="cannot name a deployment"):
        deployment_name(bad)


# -- generated code -------------------------------------------------------------------------
def test_hostile_labels_and_docstrings_never_become_code(shell):
    define(shell, HOSTILE_DOC)
    plan = planned(shell, "hostile_doc", label=HOSTILE_LABEL)
    for file_name in ("service.py", "mlflow_model.py"):
        code = plan.rendered[file_name]
        names = names_in(code)  # parses: the generated code is valid Python
        assert "system" not in names and "__import__" not in names
        assert not any(
            line.lstrip().startswith(("__import__", "import os")) for line in code.splitlines()
        )
        assert "{{" not in code and "{%" not in code
    service = plan.rendered["service.py"]
    assert f"# Source: {json.dumps(HOSTILE_LABEL)}" in service  # one comment line
    assert "jinja" not in service  # the docstring stays in the pickle
    # The notebook's text is shown as it is, never rendered as a template.
    assert "{{ jinja }} {% tag %}" in plan.rendered["notebook_source.py"]


def test_hostile_column_names_never_become_code(shell):
    define(
        shell,
        """
        def hostile_columns(frame):
            return [0] * len(frame)
        """,
    )
    reference = pd.DataFrame({'"); import os; os.system("x") #': [1.0], "a\nimport sys": [2]})
    plan = planned(shell, "hostile_columns", reference=reference)
    assert plan.schema.mode == "records"
    for file_name in ("service.py", "mlflow_model.py"):
        names = names_in(plan.rendered[file_name])
        assert "system" not in names and "os" not in names
    assert [c["name"] for c in plan.manifest()["schema"]["columns"]] == list(reference.columns)


def test_hostile_labels_stay_comments_in_notebook_source(shell):
    define(shell, HOSTILE_DOC)
    plan = planned(shell, "hostile_doc", label=HOSTILE_LABEL)
    source = plan.rendered["notebook_source.py"]
    assert not any(
        line.startswith(('__import__("os")', "import sys")) for line in source.splitlines()
    )


def test_keyword_only_parameters_and_a_parameter_named_notebook(shell):
    define(
        shell,
        """
        def kw_score(text: str, weight: float = 1.5, *, notebook: int = 2,
                     self_test: bool = False) -> float:
            return len(text) * weight + notebook + self_test
        """,
    )
    plan = planned(shell, "kw_score")
    compile(plan.rendered["service.py"], "service.py", "exec")
    assert plan.schema.mode == "hints"
    assert plan.batch is False
    method = endpoint_method(plan, "kw_score")
    parameters = inspect.signature(method).parameters
    assert list(parameters) == ["self", "text", "weight", "notebook", "self_test"]
    assert parameters["text"].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    assert parameters["notebook"].kind is inspect.Parameter.KEYWORD_ONLY
    assert parameters["self_test"].kind is inspect.Parameter.KEYWORD_ONLY
    assert parameters["weight"].default == 1.5 and parameters["notebook"].default == 2
    assert parameters["text"].annotation is str
    service = FakeService(shell.user_ns["kw_score"])
    assert method(service, "abcd", notebook=10) == 4 * 1.5 + 10
    assert method(service, text="ab", weight=2.0) == 2 * 2.0 + 2
    assert plan.inputs() == [
        {"name": "text", "type": "str"},
        {"name": "weight", "type": "float"},
        {"name": "notebook", "type": "int"},
        {"name": "self_test", "type": "bool"},
    ]


def test_a_parameter_named_self_is_refused(shell):
    define(shell, "def uses_self(self: int) -> int:\n    return self\n")
    with pytest.raises(ServiceDefinitionError, match="parameter 'self' of uses_self"):
        planned(shell, "uses_self")


def test_a_parameter_named_like_nbdeploys_own_names_is_refused(shell):
    define(shell, "def shadowing(_nbd: int) -> int:\n    return _nbd + 1\n")
    with pytest.raises(ServiceDefinitionError, match="parameter '_nbd' of shadowing"):
        planned(shell, "shadowing")


def test_the_endpoint_never_replaces_an_object_attribute(shell):
    define(
        shell,
        """
        obj0_table = np.arange(3.0)
        def obj0(rows: list[list[float]]) -> list[float]:
            return (np.asarray(rows) @ obj0_table).tolist()
        """,
    )
    plan = planned(shell, "obj0")
    service = next(
        n for n in ast.parse(plan.rendered["service.py"]).body if isinstance(n, ast.ClassDef)
    )
    names: list[str] = []
    for node in service.body:
        if isinstance(node, ast.Assign):
            names += [target.id for target in node.targets if isinstance(target, ast.Name)]
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            names.append(node.name)
    assert len(names) == len(set(names)), names


def test_rows_and_records_services_compile_with_batching(shell):
    define(
        shell,
        """
        def batch_rows(rows: list[list[float]]) -> list[float]:
            return [sum(r) for r in rows]

        def batch_records(frame: pd.DataFrame) -> list[float]:
            return frame["a"].tolist()
        """,
    )
    rows = planned(shell, "batch_rows", reference=np.zeros((2, 3)))
    assert (rows.schema.mode, rows.schema.width, rows.batch) == ("rows", 3, True)
    assert "async def batch_rows(self, rows: _Rows)" in rows.rendered["service.py"]
    records = planned(shell, "batch_records", reference=pd.DataFrame({"a": [1.0]}))
    assert (records.schema.mode, records.batch) == ("records", True)
    assert "async def batch_records(self, frame: _Rows)" in records.rendered["service.py"]
    unbatched = planned(shell, "batch_rows", ServiceOptions(name="svc", batch=False))
    assert unbatched.batch is False
    assert "    def batch_rows(self, rows: _Rows)" in unbatched.rendered["service.py"]
    for plan in (rows, records, unbatched):
        compile(plan.rendered["service.py"], "service.py", "exec")


def test_batch_is_refused_for_a_scalar_function(shell):
    define(shell, "def scalar(x: float) -> float:\n    return x\n")
    assert planned(shell, "scalar").batch is False
    with pytest.raises(ServiceDefinitionError, match="--batch needs scalar"):
        planned(shell, "scalar", ServiceOptions(name="scalar", batch=True))


# -- content hashes ---------------------------------------------------------------------------
def test_content_hash_is_stable_and_follows_objects_and_code(shell):
    define(
        shell,
        """
        hash_weights = np.array([1.0, 2.0, 3.0])
        HASH_K = 2
        unrelated_data = np.zeros(3)

        def hashed(rows: list[list[float]]) -> list[float]:
            return (np.asarray(rows) @ hash_weights * HASH_K).tolist()
        """,
    )
    first = planned(shell, "hashed")
    assert planned(shell, "hashed").content_hash == first.content_hash
    define(shell, "unrelated_data = np.ones(3)")
    assert planned(shell, "hashed").content_hash == first.content_hash
    define(shell, "hash_weights = np.array([1.0, 2.0, 3.5])")  # a global object changes
    changed_object = planned(shell, "hashed")
    assert changed_object.content_hash != first.content_hash
    assert changed_object.object_hashes["hash_weights"] != first.object_hashes["hash_weights"]
    define(shell, "hash_weights = np.array([1.0, 2.0, 3.0])")  # back: the same version
    assert planned(shell, "hashed").content_hash == first.content_hash
    define(shell, "HASH_K = 3")  # an inline constant changes the function's pickle
    assert planned(shell, "hashed").content_hash != first.content_hash
    define(shell, "HASH_K = 2")
    define(
        shell,
        """
        def hashed(rows: list[list[float]]) -> list[float]:
            return (np.asarray(rows) @ hash_weights * HASH_K + 1).tolist()
        """,
    )
    assert planned(shell, "hashed").content_hash != first.content_hash


def test_requirements_complete_the_content_hash(shell):
    define(shell, "def req_fn(x: float) -> float:\n    return x\n")
    plan = planned(shell, "req_fn")
    base = plan.content_hash
    set_requirements(plan, ["numpy==2.0", "Pandas==3.0", "numpy==2.0"])
    assert plan.requirements == ["numpy==2.0", "Pandas==3.0"]
    assert plan.content_hash != base
    set_requirements(plan, [])
    assert plan.content_hash == base


def test_modules_used_inside_objects_are_found_while_planning(shell):
    define(
        shell,
        """
        import scipy.special

        class Squasher:
            def squash(self, values):
                return scipy.special.expit(values)

        squasher = Squasher()

        def squashed(values: list[float]) -> list[float]:
            return squasher.squash(values).tolist()
        """,
    )
    captured = capture_function(shell.user_ns["squashed"], shell.user_ns, shell.user_ns["In"])
    assert "scipy" not in captured.modules  # only the object's method uses it
    plan = plan_version(captured, ServiceOptions(name="svc"), None, "a notebook")
    assert "scipy" in plan.captured.modules
    assert "Squasher" in plan.definitions


# -- written versions --------------------------------------------------------------------------
@pytest.fixture
def local_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    name = f"mylib_{uuid.uuid4().hex[:8]}"
    folder = tmp_path / "notebook_dir"
    folder.mkdir()
    (folder / f"{name}.py").write_text(
        "def tenfold(values):\n    return [10 * v for v in values]\n"
    )
    monkeypatch.syspath_prepend(str(folder))
    yield name, folder / f"{name}.py"
    sys.modules.pop(name, None)


def test_write_version_holds_everything_a_service_loads(shell, tmp_path, local_module):
    name, path = local_module
    define(
        shell,
        f"import {name}\n",
        f"""
        written_offsets = np.array([0.5, 1.5])

        def written(values: list[float]) -> list[float]:
            return [v + float(written_offsets.sum()) for v in {name}.tenfold(values)]
        """,
    )
    plan = planned(shell, "written", ServiceOptions(name="written"))
    assert plan.captured.local_modules == {name: path.resolve()}
    assert plan.routes == ["/written"]
    version = tmp_path / "version"
    version.mkdir()
    (version / "stale.txt").write_text("from an earlier attempt")
    write_version(plan, version)
    assert not (version / "stale.txt").exists()
    for file_name in (
        "service.py",
        "mlflow_model.py",
        "nbdeploy_runtime.py",
        "notebook_source.py",
        "function.pkl",
        "signature.pkl",
        "definitions.pkl",
        "manifest.json",
        "requirements.txt",
        "objects/obj0.pkl",
        f"local_modules/{name}.py",
    ):
        assert (version / file_name).is_file(), file_name
    assert (version / "nbdeploy_runtime.py").read_text() == Path(runtime.__file__).read_text()
    manifest = json.loads((version / "manifest.json").read_text())
    assert manifest["name"] == "written"
    assert manifest["kind"] == "function" and manifest["entry"] == "written"
    assert manifest["content_hash"] == plan.content_hash
    assert manifest["local_modules"] == [name]
    assert manifest["routes"] == ["/written"]
    assert [o["name"] for o in manifest["objects"]] == ["written_offsets"]
    assert manifest["schema"]["mode"] == "hints"  # list[float]: not rows of numbers
    # A fresh interpreter, without the notebook's folder on its path, gets the same answer.
    code = (
        "import json, sys; from pathlib import Path\n"
        "from nbdeploy.service.runtime import load_version\n"
        "print(json.dumps(load_version(Path(sys.argv[1]))([1.0, 2.0])))\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code, str(version)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert json.loads(completed.stdout) == shell.user_ns["written"]([1.0, 2.0])


def test_a_model_version_serves_predict_and_predict_proba(shell, tmp_path):
    define(
        shell,
        """
        from sklearn.linear_model import LogisticRegression
        served_X = np.random.default_rng(2).random((30, 4))
        served_model = LogisticRegression().fit(served_X, (served_X[:, 1] > 0.5).astype(int))
        """,
    )
    model = shell.user_ns["served_model"]
    plan = plan_version(
        capture_model("served_model", model), ServiceOptions(name="served"), None, "nb"
    )
    assert plan.routes == ["/predict", "/predict_proba"]
    assert (plan.schema.mode, plan.schema.width, plan.batch) == ("rows", 4, True)
    assert plan.object_specs[0]["kind"] == "sklearn"
    assert "sklearn" in plan.captured.modules
    service = plan.rendered["service.py"]
    compile(service, "service.py", "exec")
    assert "async def predict(" in service and "async def predict_proba(" in service
    write_version(plan, tmp_path / "version")
    assert not (tmp_path / "version" / "function.pkl").exists()
    answer = runtime.load_version(tmp_path / "version")
    rows = np.random.default_rng(3).random((5, 4))
    assert answer(rows).tolist() == model.predict(rows).tolist()


def test_notebook_source_shows_the_classes_inside_saved_objects(shell):
    define(
        shell,
        """
        import numpy as np
        from sklearn.base import BaseEstimator, TransformerMixin
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        class ShownClip(BaseEstimator, TransformerMixin):
            def fit(self, X, y=None):
                return self
            def transform(self, X):
                return np.clip(X, 0.1, None)
        shown_X = np.random.default_rng(0).random((40, 3))
        shown_model = make_pipeline(ShownClip(), LogisticRegression()).fit(
            shown_X, (shown_X[:, 0] > 0.5).astype(int)
        )
        def shown(rows: list[list[float]]) -> list[int]:
            return shown_model.predict(np.asarray(rows)).tolist()
        """,
    )
    text = planned(shell, "shown").rendered["notebook_source.py"]
    assert "# -- ShownClip, used inside the saved objects" in text
    assert "class ShownClip(BaseEstimator, TransformerMixin):" in text
    assert "def shown(rows: list[list[float]]) -> list[int]:" in text
