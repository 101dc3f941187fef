"""Input schemas: records from a reference DataFrame, rows of a fixed width, or the
function's own type hints."""

from __future__ import annotations

import inspect

import numpy
import numpy as np
import numpy.typing
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from nbdeploy.service.schema import (
    InputSchema,
    SchemaError,
    column_kind,
    example_rows,
    function_schema,
    model_schema,
    placeholder_row,
    reference_columns,
)


@pytest.fixture
def reference() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "price": [1.5, 2.0, np.nan],
            "quantity": [1, 2, 3],
            "member": [True, False, True],
            "city": ["Paris", "Lyon", "Nice"],
            "color": pd.Categorical(["red", "blue", "red"], categories=["red", "blue", "green"]),
            "when": pd.to_datetime(
                ["2024-01-01T00:00:00", "2024-02-01T12:30:00", "2024-03-01T00:00:00"]
            ),
        }
    )


def test_column_kinds_follow_the_reference_dtypes(reference):
    columns = reference_columns(reference)
    assert [c["name"] for c in columns] == list(reference.columns)
    assert {c["name"]: c["kind"] for c in columns} == {
        "price": "number",
        "quantity": "integer",
        "member": "boolean",
        "city": "text",
        "color": "category",
        "when": "datetime",
    }
    by_name = {c["name"]: c for c in columns}
    assert by_name["color"]["categories"] == ["red", "blue", "green"]  # all, in order
    assert by_name["price"]["dtype"] == "float64"
    assert by_name["quantity"]["dtype"] == "int64"
    assert by_name["when"]["dtype"] == str(reference["when"].dtype)
    assert "categories" not in by_name["city"]


@pytest.mark.parametrize(
    ("series", "kind"),
    [
        (pd.Series([1, 2], dtype="int32"), "integer"),
        (pd.Series([1, None], dtype="Int64"), "integer"),
        (pd.Series([1.0], dtype="float32"), "number"),
        (pd.Series([True, None], dtype="boolean"), "boolean"),
        (pd.Series(["a", None], dtype=object), "text"),
        (pd.Series(pd.to_datetime(["2024-01-01"]).tz_localize("UTC")), "datetime"),
    ],
)
def test_column_kinds_of_other_dtypes(series, kind):
    assert column_kind(series.rename("c"))["kind"] == kind


def test_integer_categories_become_plain_values():
    described = column_kind(pd.Series(pd.Categorical([3, 1], categories=[1, 2, 3]), name="c"))
    assert described["categories"] == [1, 2, 3]
    assert all(type(c) is int for c in described["categories"])  # JSON-friendly


def test_duplicate_column_names_are_refused():
    frame = pd.DataFrame([[1, 2]], columns=["a", "a"])
    with pytest.raises(SchemaError, match="duplicate column names"):
        reference_columns(frame)


# -- a notebook function's schema ---------------------------------------------------------
def test_a_dataframe_parameter_with_a_dataframe_reference_takes_records(reference):
    def predict(frame: pd.DataFrame) -> list[float]:
        return [0.0] * len(frame)

    schema = function_schema(predict, {}, reference, extra_columns="drop")
    assert schema.mode == "records"
    assert schema.parameter == "frame"
    assert schema.columns == reference_columns(reference)
    assert schema.extra_columns == "drop"
    assert schema.per_row is True


def test_an_unannotated_single_parameter_with_a_dataframe_reference_takes_records(reference):
    def predict(frame):
        return [0.0] * len(frame)

    schema = function_schema(predict, {}, reference)
    assert schema.mode == "records"
    assert schema.parameter == "frame"
    assert schema.extra_columns == "refuse"
    assert schema.per_row is True  # no return hint: one result per record is assumed


def test_a_records_function_returning_a_scalar_is_not_per_row(reference):
    def predict(frame: pd.DataFrame) -> float:
        return 0.0

    assert function_schema(predict, {}, reference).per_row is False


def test_rows_take_their_width_from_an_array_reference():
    def predict(rows: list[list[float]]) -> list[int]:
        return [0] * len(rows)

    schema = function_schema(predict, {}, np.zeros((5, 4)))
    assert (schema.mode, schema.parameter, schema.width) == ("rows", "rows", 4)
    assert schema.as_array is False
    assert schema.per_row is True


def test_rows_take_their_width_from_a_dataframe_reference_when_annotated_as_lists(reference):
    def predict(rows: list[list[float]]) -> list[int]:
        return [0] * len(rows)

    schema = function_schema(predict, {}, reference)
    assert schema.mode == "rows"
    assert schema.width == reference.shape[1]


def test_rows_take_their_width_from_the_models_n_features_in():
    model = LogisticRegression().fit(np.random.default_rng(0).random((20, 7)), [0, 1] * 10)

    def predict(rows: list[list[float]]) -> list[int]:
        return model.predict(np.asarray(rows)).tolist()

    schema = function_schema(predict, {"model": model, "threshold_table": {"a": 1}}, None)
    assert (schema.mode, schema.width) == ("rows", 7)


def test_rows_without_reference_or_a_single_model_have_no_width():
    small = LogisticRegression().fit(np.zeros((4, 2)) + np.eye(4, 2), [0, 1, 0, 1])
    large = LogisticRegression().fit(np.zeros((4, 3)) + np.eye(4, 3), [0, 1, 0, 1])

    def predict(rows: list[list[float]]) -> list[int]:
        return [0] * len(rows)

    assert function_schema(predict, {}, None).width is None
    assert function_schema(predict, {"a": small, "b": large}, None).width is None


@pytest.mark.parametrize("hint", ["np.ndarray", "numpy.typing.NDArray[np.float64]"])
def test_array_parameters_take_rows_as_an_array(hint):
    namespace = {"np": np, "numpy": numpy}
    exec(f"def predict(rows: {hint}) -> list[float]:\n    return [0.0] * len(rows)\n", namespace)
    schema = function_schema(namespace["predict"], {}, np.zeros((2, 3)))
    assert (schema.mode, schema.width, schema.as_array) == ("rows", 3, True)


@pytest.mark.parametrize(
    "hint", ["list[list[int]]", "list[tuple[float, ...]]", "list[list[float | None]]"]
)
def test_other_numeric_row_hints_take_rows(hint):
    namespace: dict = {}
    exec(f"def predict(rows: {hint}) -> list[int]:\n    return []\n", namespace)
    assert function_schema(namespace["predict"], {}, None).mode == "rows"


@pytest.mark.parametrize(
    "code",
    [
        "def predict(text: str) -> float:\n    return 0.0\n",
        "def predict(rows: list[list[str]]) -> list[int]:\n    return []\n",
        "def predict(a: float, b: float = 1.0) -> float:\n    return a\n",
        "def predict(rows: list[list[float]], k: int = 3) -> list[int]:\n    return []\n",
        "def predict(*, text: str) -> float:\n    return 0.0\n",
    ],
)
def test_other_signatures_take_their_own_hints(code):
    namespace: dict = {}
    exec(code, namespace)
    schema = function_schema(namespace["predict"], {}, None)
    assert schema.mode == "hints"
    assert schema.parameter == next(iter(inspect.signature(namespace["predict"]).parameters))


def test_a_dataframe_parameter_without_reference_is_a_hint():
    def predict(frame: pd.DataFrame) -> list[float]:
        return []

    assert function_schema(predict, {}, None).mode == "hints"


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("def predict(*rows: float) -> float:\n    return 0.0\n", r"takes \*rows"),
        ("def predict(**fields: float) -> float:\n    return 0.0\n", r"takes \*fields"),
        (
            "def predict(rows: list[float], /) -> float:\n    return 0.0\n",
            "parameter 'rows' of predict is positional-only",
        ),
        (
            "def predict(a: float, b) -> float:\n    return 0.0\n",
            "parameter 'b' of predict has no type hint",
        ),
        ("def predict(rows):\n    return rows\n", "parameter 'rows' of predict has no type hint"),
        ("def predict() -> int:\n    return 1\n", "takes no parameters"),
    ],
)
def test_signatures_that_cannot_be_endpoints(code, message):
    namespace: dict = {}
    exec(code, namespace)
    with pytest.raises(SchemaError, match=message) as caught:
        function_schema(namespace["predict"], {}, None)
    if "no parameters" not in message:
        assert caught.value.hint


# -- a fitted model's schema -----------------------------------------------------------------
def test_a_model_fitted_on_a_dataframe_asks_for_the_reference():
    frame = pd.DataFrame({"a": [0.0, 1.0, 0.0, 1.0], "b": [1.0, 0.0, 1.0, 0.0]})
    model = LogisticRegression().fit(frame, [0, 1, 0, 1])
    with pytest.raises(SchemaError, match="fitted on a DataFrame") as caught:
        model_schema(model, None)
    assert "--reference" in caught.value.hint
    schema = model_schema(model, frame)
    assert schema.mode == "records"
    assert [c["name"] for c in schema.columns] == ["a", "b"]
    assert schema.per_row is True


def test_a_model_fitted_on_an_array_takes_rows_of_its_width():
    model = LogisticRegression().fit(np.eye(4, 5), [0, 1, 0, 1])
    schema = model_schema(model, None)
    assert (schema.mode, schema.width, schema.as_array, schema.per_row) == ("rows", 5, True, True)
    assert model_schema(model, np.zeros((2, 5))).width == 5


def test_example_and_placeholder_rows_fit_the_schema(reference):
    records = function_schema(lambda frame: frame, {}, reference)
    example = example_rows(reference, records)
    assert example == [
        {
            "price": 1.5,
            "quantity": 1,
            "member": True,
            "city": "Paris",
            "color": "red",
            "when": "2024-01-01T00:00:00",
        }
    ]
    placeholder = placeholder_row(records)
    assert list(placeholder) == list(reference.columns)
    assert placeholder["color"] == "red"
    assert placeholder_row(InputSchema(mode="rows", width=3)) == [0.0, 0.0, 0.0]
    rows = InputSchema(mode="rows", width=3)
    assert example_rows(np.arange(6.0).reshape(2, 3), rows) == [[0.0, 1.0, 2.0]]
