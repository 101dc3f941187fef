"""Capturing a notebook function (or a fitted model) from a live IPython namespace: which
values become objects, which helpers are listed, which modules are used and which of them
are the user's own; and pinning requirements."""

from __future__ import annotations

import importlib
import importlib.metadata as metadata
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
from IPython.core.interactiveshell import InteractiveShell

from nbdeploy.service.capture import (
    CaptureError,
    capture_function,
    capture_model,
    global_names,
    local_module_path,
)
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
    assert result.success, result.error_in_exec
    return ip


def define(shell, *cells: str) -> None:
    """Run cells in the notebook shell, as a user would (one cell each)."""
    for cell in cells:
        result = shell.run_cell(textwrap.dedent(cell), store_history=True)
        assert result.success, result.error_before_exec or result.error_in_exec


def capture(shell, name: str):
    return capture_function(shell.user_ns[name], shell.user_ns, shell.user_ns["In"])


def helper_names(captured) -> list[str]:
    return [name for name, _source in captured.helpers]


def test_global_names_come_from_bytecode_including_nested_code():
    def sample(rows):
        total = len(rows)
        return [helper(r) for r in rows if r > LIMIT], total  # noqa: F821

    names = global_names(sample.__code__)
    assert sorted(names) == ["LIMIT", "helper", "len"]
    assert "total" not in names and "rows" not in names


def test_capture_sorts_objects_helpers_and_modules(shell):
    captured = capture(shell, "predict")
    assert captured.kind == "function"
    assert captured.name == "predict"
    assert captured.function is shell.user_ns["predict"]  # the live function, not source
    assert captured.source.startswith("def predict(rows: list[list[float]]) -> list[int]:")
    # Global data travels apart; the float THRESHOLD travels inside the function's pickle;
    # X, y and unused_table are not reached at all.
    assert set(captured.objects) == {"model", "scaler"}
    assert captured.objects["model"] is shell.user_ns["model"]
    assert captured.objects["scaler"] is shell.user_ns["scaler"]
    sources = dict(captured.helpers)
    assert sources["clean"].startswith("def clean(rows):")
    assert "predict" not in sources  # the entry function is not its own helper
    # numpy is used by Scaler.apply, inside an object: planning finds it while pickling
    # (see test_package); the capture itself sees the model's library.
    assert "sklearn" in captured.modules
    assert "json" not in captured.modules  # imported by the notebook, unused by predict
    assert "__main__" not in captured.modules
    assert captured.local_modules == {}
    assert str(captured.signature) == "(rows: list[list[float]]) -> list[int]"


@pytest.mark.parametrize(
    ("value", "inline"),
    [
        ("3", True),
        ("2.5", True),
        ("'text'", True),
        ("b'raw'", True),
        ("True", True),
        ("None", True),
        ("range(3)", True),
        ("[1, 2]", False),
        ("{'a': 1}", False),
        ("(1, 2)", False),
        ("{1, 2}", False),
        ("np.arange(3)", False),
        ("Scaler(3)", False),  # an instance of a notebook class is data
    ],
)
def test_small_immutable_constants_travel_inline_and_everything_else_is_an_object(
    shell, value, inline
):
    define(
        shell,
        f"""
        CONSTANT_OR_DATA = {value}
        def uses_value(rows: list[list[float]]) -> list[int]:
            return [len(str(CONSTANT_OR_DATA))] * len(rows)
        """,
    )
    captured = capture(shell, "uses_value")
    assert ("CONSTANT_OR_DATA" not in captured.objects) is inline
    if not inline:
        assert captured.objects["CONSTANT_OR_DATA"] is shell.user_ns["CONSTANT_OR_DATA"]


def test_imported_functions_record_their_modules_and_stay_out_of_objects(shell):
    define(
        shell,
        """
        def score(rows: list[list[float]], labels: list[int]) -> float:
            return float(acc(labels, model.predict(np.asarray(rows)))) + len(json.dumps(1))
        """,
    )
    captured = capture(shell, "score")
    assert set(captured.objects) == {"model"}
    assert {"sklearn", "numpy", "json"} <= captured.modules
    assert helper_names(captured) == []


def test_helpers_and_objects_are_found_through_closures(shell):
    define(
        shell,
        """
        closure_weights = np.array([1.0, 2.0, 3.0])

        def make_scaler(k):
            def scale(values):
                return np.asarray(values) * k * closure_weights
            return scale

        scale3 = make_scaler(3)
        """,
        """
        def closure_model_scores(rows):
            return model.predict_proba(np.asarray(rows))[:, 1]

        def compose(first):
            def run(rows):
                return first(rows)
            return run

        composed = compose(closure_model_scores)
        """,
        """
        def predict_closure(rows: list[list[float]]) -> list[float]:
            return (scale3(rows).sum(axis=1) + composed(rows)).tolist()
        """,
    )
    captured = capture(shell, "predict_closure")
    # scale3 is a closure: its code is listed, and its global array is an object.
    sources = dict(captured.helpers)
    assert "scale" in sources and "values" in sources["scale"]
    assert "run" in sources
    # `model` is reached only through the closure cell of `composed`.
    assert set(captured.objects) == {"closure_weights", "model"}
    assert "make_scaler" not in sources  # not reached: the closure is, not its factory


def test_helpers_are_found_through_notebook_decorators(shell):
    define(
        shell,
        """
        import functools
        import time

        def timed(function):
            @functools.wraps(function)
            def wrapper(*args, **kwargs):
                started = time.perf_counter()
                try:
                    return function(*args, **kwargs)
                finally:
                    time.perf_counter() - started
            return wrapper
        """,
        """
        decorated_offset = np.array([0.25])

        @timed
        def decorated_score(rows):
            return model.predict_proba(np.asarray(rows))[:, 1] + decorated_offset
        """,
        """
        def predict_decorated(rows: list[list[float]]) -> list[float]:
            return decorated_score(rows).tolist()
        """,
    )
    captured = capture(shell, "predict_decorated")
    sources = dict(captured.helpers)
    assert "decorated_score" in sources
    assert sources["decorated_score"].startswith("@timed\ndef decorated_score(rows):")
    # The wrapped function's globals are reached through the wrapper.
    assert set(captured.objects) == {"model", "decorated_offset"}
    assert {"numpy", "time"} <= captured.modules


def test_a_decorated_entry_function_is_captured_under_its_own_name(shell):
    define(
        shell,
        """
        @timed
        def predict_timed(rows: list[list[float]]) -> list[int]:
            return model.predict(np.asarray(rows)).tolist()
        """,
    )
    captured = capture(shell, "predict_timed")
    assert captured.name == "predict_timed"
    assert captured.function is shell.user_ns["predict_timed"]  # the wrapper is deployed
    assert captured.source.startswith("@timed\ndef predict_timed(")
    assert set(captured.objects) == {"model"}


def test_lru_cache_helpers_are_followed(shell):
    define(
        shell,
        """
        CACHE_TABLE = {"a": 1.0, "b": 2.0}

        @functools.lru_cache(maxsize=128)
        def cached_lookup(key):
            return CACHE_TABLE[key]
        """,
        """
        def predict_cached(keys: list[str]) -> list[float]:
            return [cached_lookup(k) for k in keys]
        """,
    )
    captured = capture(shell, "predict_cached")
    sources = dict(captured.helpers)
    assert "cached_lookup" in sources
    assert "@functools.lru_cache(maxsize=128)" in sources["cached_lookup"]
    assert set(captured.objects) == {"CACHE_TABLE"}


def test_an_lru_cached_entry_function_is_captured(shell):
    define(
        shell,
        """
        @functools.lru_cache(maxsize=None)
        def cached_entry(key: str) -> float:
            return CACHE_TABLE[key]
        """,
    )
    captured = capture(shell, "cached_entry")
    assert captured.name == "cached_entry"
    assert set(captured.objects) == {"CACHE_TABLE"}


def test_class_methods_bases_and_their_functions_are_followed(shell):
    define(
        shell,
        """
        base_offsets = np.array([0.5])
        property_table = {"scale": 2.0}
        class_constants = [1.0, 2.0]
        static_table = {"cap": 1.0}

        def method_model_scores(rows):
            return model.predict_proba(np.asarray(rows))[:, 1]
        """,
        """
        class RankerBase:
            def shift(self, values):
                return values + base_offsets

        class Ranker(RankerBase):
            @property
            def scale(self):
                return property_table["scale"]

            @classmethod
            def constants(cls):
                return class_constants

            @staticmethod
            def cap(values):
                return np.minimum(values, static_table["cap"] * 10)

            def rank(self, rows):
                return self.cap(self.shift(method_model_scores(rows)) * self.scale)
        """,
        """
        def predict_ranked(rows: list[list[float]]) -> list[float]:
            return Ranker().rank(rows).tolist()
        """,
    )
    captured = capture(shell, "predict_ranked")
    # Globals of the base's method, a property, a classmethod, a staticmethod, and of a
    # notebook function a method calls (which uses the global model).
    assert set(captured.objects) == {
        "base_offsets",
        "property_table",
        "class_constants",
        "static_table",
        "model",
    }
    sources = dict(captured.helpers)
    assert sources["Ranker"].startswith("class Ranker(RankerBase):")
    assert "method_model_scores" in sources  # named in a method
    assert {"numpy", "sklearn"} <= captured.modules


def test_base_classes_are_listed_as_helpers(shell):
    define(
        shell,
        """
        class ListedBase:
            def double(self, values):
                return [2 * v for v in values]

        class ListedChild(ListedBase):
            pass

        def predict_listed(values: list[float]) -> list[float]:
            return ListedChild().double(values)
        """,
    )
    captured = capture(shell, "predict_listed")
    assert {"ListedChild", "ListedBase"} <= set(helper_names(captured))


def test_helpers_named_by_defaults_are_listed(shell):
    define(
        shell,
        """
        def default_transform(values):
            return [v + 1 for v in values]

        def predict_default(values: list[float], transform=default_transform) -> list[float]:
            return transform(values)
        """,
    )
    captured = capture(shell, "predict_default")
    assert "default_transform" in helper_names(captured)


def test_helpers_are_listed_in_definition_order(shell):
    define(
        shell,
        "def order_second(v):\n    return v + 1\n",
        "def order_first(v):\n    return order_second(v) * 2\n",
        "def predict_order(v: float) -> float:\n    return order_first(v) + order_second(v)\n",
    )
    captured = capture(shell, "predict_order")
    assert helper_names(captured) == ["order_second", "order_first"]


@pytest.fixture
def local_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Write a module of the user's own beside the "notebook" and make it importable."""
    created: list[str] = []

    def write(source: str, package: bool = False, name: str | None = None) -> str:
        name = name or f"mylib_{uuid.uuid4().hex[:8]}"
        if package:
            (tmp_path / name).mkdir()
            (tmp_path / name / "__init__.py").write_text(textwrap.dedent(source))
        else:
            (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        created.append(name)
        return name

    monkeypatch.syspath_prepend(str(tmp_path))
    yield write
    for name in created:
        sys.modules.pop(name, None)


def test_local_modules_are_detected_and_installed_ones_are_not(shell, local_module, tmp_path):
    name = local_module(
        """
        def normalize(rows):
            return [[v / 10 for v in row] for row in rows]
        """
    )
    define(
        shell,
        f"import {name}\n",
        f"def predict_local(rows: list[list[float]]) -> list[int]:\n"
        f"    return model.predict(np.asarray({name}.normalize(rows))).tolist()\n",
    )
    captured = capture(shell, "predict_local")
    assert name in captured.modules
    assert captured.local_modules == {name: (tmp_path / f"{name}.py").resolve()}
    assert {"numpy", "sklearn"} <= captured.modules
    assert "numpy" not in captured.local_modules and "sklearn" not in captured.local_modules


def test_local_functions_packages_and_their_local_imports_are_detected(
    shell, local_module, tmp_path
):
    inner = local_module("SCALE = 3\n")
    package = local_module(
        f"""
        import {inner}

        def triple(values):
            return [v * {inner}.SCALE for v in values]
        """,
        package=True,
    )
    define(
        shell,
        f"from {package} import triple as local_triple\n",
        "def predict_triple(values: list[float]) -> list[float]:\n"
        "    return local_triple(values)\n",
    )
    captured = capture(shell, "predict_triple")
    assert captured.local_modules == {
        package: (tmp_path / package).resolve(),  # a package: its folder
        inner: (tmp_path / f"{inner}.py").resolve(),  # imported by it
    }
    assert captured.objects == {}


def test_installed_and_standard_modules_are_never_local():
    assert local_module_path("numpy") is None
    assert local_module_path("sklearn") is None
    assert local_module_path("json") is None
    assert local_module_path("__main__") is None
    assert local_module_path("no_such_module_xyz") is None


def fake_editable_install(root: Path, name: str, top_level: bool) -> Path:
    """A distribution installed in editable mode the way hatchling (and pdm, flit) do it: a
    dist-info whose RECORD lists a .pth file, the sources in a folder of their own."""
    site = root / "site-packages"
    info = site / f"{name}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "RECORD").write_text(
        f"_editable_impl_{name}.pth,,\n{name}-0.1.dist-info/METADATA,,\n"
        f"{name}-0.1.dist-info/RECORD,,\n"
    )
    (info / "direct_url.json").write_text(
        f'{{"url": "file://{root}/src", "dir_info": {{"editable": true}}}}'
    )
    if top_level:
        (info / "top_level.txt").write_text(f"{name}\n")
    package = root / "src" / name
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("VALUE = 1\n")
    return site


@pytest.fixture
def editable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    created: list[str] = []

    def install(top_level: bool) -> str:
        name = f"editable_{uuid.uuid4().hex[:8]}"
        site = fake_editable_install(tmp_path, name, top_level)
        monkeypatch.syspath_prepend(str(site))
        monkeypatch.syspath_prepend(str(tmp_path / "src"))
        importlib.import_module(name)
        created.append(name)
        return name

    yield install
    for name in created:
        sys.modules.pop(name, None)


def test_an_editable_distribution_declaring_its_top_level_is_a_requirement(editable):
    name = editable(top_level=True)
    assert local_module_path(name) is None


def test_an_editable_distribution_without_top_level_is_a_requirement(editable):
    name = editable(top_level=False)
    assert local_module_path(name) is None


@pytest.mark.parametrize(
    ("code", "name", "message"),
    [
        ("refused_lambda = lambda rows: rows", "refused_lambda", "a lambda cannot be deployed"),
        (
            "async def refused_async(rows: list[float]) -> list[float]:\n    return rows",
            "refused_async",
            "refused_async is async or a generator",
        ),
        (
            "def refused_generator(rows: list[float]):\n    yield from rows",
            "refused_generator",
            "refused_generator is async or a generator",
        ),
        ("from math import sqrt as refused_builtin", "refused_builtin", "not a function defined"),
        ("class RefusedClass:\n    pass", "RefusedClass", "not a function defined with `def`"),
        ("refused_number = 42", "refused_number", "42 is not a function defined with `def`"),
        (
            "import functools\nrefused_partial = functools.partial(max, 0)",
            "refused_partial",
            "not a function defined with `def`",
        ),
    ],
)
def test_functions_that_cannot_be_deployed_are_refused_clearly(shell, code, name, message):
    define(shell, code)
    with pytest.raises(CaptureError, match=message) as caught:
        capture(shell, name)
    assert caught.value.hint  # every refusal says what to do instead


def test_capture_model_serves_predict_and_predict_proba(shell):
    captured = capture_model("model", shell.user_ns["model"])
    assert captured.kind == "model"
    assert captured.function is None
    assert captured.methods == ["predict", "predict_proba"]
    assert captured.objects == {"model": shell.user_ns["model"]}
    assert "sklearn" in captured.modules


def test_capture_model_without_predict_proba_serves_predict_only(shell):
    define(
        shell,
        "from sklearn.linear_model import LinearRegression\n"
        "regressor = LinearRegression().fit(X, X[:, 0])\n",
    )
    captured = capture_model("regressor", shell.user_ns["regressor"])
    assert captured.methods == ["predict"]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"a": 1}, "table is a dict, which has no predict method"),
        (object(), "table is a object, which has no predict method"),
        (type("HasProba", (), {"predict_proba": lambda self, x: x})(), "no predict method"),
    ],
)
def test_capture_model_refuses_objects_without_predict(value, message):
    with pytest.raises(CaptureError, match=message):
        capture_model("table", value)


def test_capture_model_refuses_an_unfitted_class():
    from sklearn.linear_model import LogisticRegression

    with pytest.raises(CaptureError, match="is a class, not a fitted model"):
        capture_model("table", LogisticRegression)


# -- requirements -----------------------------------------------------------------------------
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


# -- a local module whose file changed since the kernel imported it ------------------------
def test_what_changed_in_a_module_file_since_its_import_is_named(local_module, tmp_path):
    from nbdeploy.service.capture import changed_since_import

    source = """
        import functools
        from sklearn.base import BaseEstimator, TransformerMixin

        THRESHOLD = 0.5
        LABELS = ("no", "yes")
        CACHE = {}  # filled as it runs: not an edit

        def traced(function):
            @functools.wraps(function)
            def wrapper(*args):
                return function(*args)
            return wrapper

        @traced
        def label(p):
            return LABELS[int(p > THRESHOLD)]

        class Scaler(BaseEstimator, TransformerMixin):  # sklearn wraps transform
            def fit(self, X, y=None):
                return self

            def transform(self, X):
                return [[2 * v for v in row] for row in X]
        """
    name = local_module(source)
    module = importlib.import_module(name)
    module.CACHE["seen"] = 1
    path = tmp_path / f"{name}.py"
    assert changed_since_import(name) == []
    # Moved lines and comments only: not a change.
    path.write_text("# moved down\n\n" + textwrap.dedent(source))
    assert changed_since_import(name) == []
    edited = textwrap.dedent(source).replace("THRESHOLD = 0.5", "THRESHOLD = 0.8")
    edited = edited.replace("2 * v", "3 * v").replace('"yes"', '"YES"')
    path.write_text(edited)
    assert changed_since_import(name) == [
        f"{name}.Scaler.transform",
        f"{name}.THRESHOLD",
        f"{name}.LABELS",
    ]
    path.write_text("def broken(:\n")
    assert changed_since_import(name) == [f"{name} (its file can no longer be read or compiled)"]
