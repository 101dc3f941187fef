"""The runtime shipped into every service: request validation (records and rows), the
DataFrame a function receives, JSON answers, and adaptive batching."""

from __future__ import annotations

import asyncio
import math
import threading
import time

import numpy as np
import pandas as pd
import pytest
from pydantic import TypeAdapter, ValidationError

from nbdeploy.service.runtime import (
    Batcher,
    RowsEndpoint,
    RowsError,
    check_length,
    record_model,
    records_to_frame,
    row_model,
    score_frame,
    to_jsonable,
)
from nbdeploy.service.schema import reference_columns


@pytest.fixture
def reference() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "price": [1.5, 2.0],
            "quantity": [1, 2],
            "member": [True, False],
            "city": ["Paris", "Lyon"],
            "color": pd.Categorical(["red", "blue"], categories=["red", "blue", "green"]),
            "when": pd.to_datetime(["2024-01-01T00:00:00", "2024-02-01T12:30:00"]),
        }
    )


@pytest.fixture
def columns(reference):
    return reference_columns(reference)


def good_record(**changes):
    record = {
        "price": 3.25,
        "quantity": 4,
        "member": False,
        "city": "Nice",
        "color": "green",
        "when": "2024-03-05T10:00:00",
    }
    record.update(changes)
    return record


def validate(columns, records, extra="refuse"):
    return TypeAdapter(list[record_model(columns, extra)]).validate_python(records)


def errors_of(columns, records, extra="refuse"):
    with pytest.raises(ValidationError) as caught:
        validate(columns, records, extra)
    return caught.value.errors()


# -- records ----------------------------------------------------------------------------------
def test_a_valid_record_is_accepted(columns):
    (record,) = validate(columns, [good_record()])
    dumped = record.model_dump(by_alias=True)
    assert list(dumped) == [c["name"] for c in columns]
    assert dumped["price"] == 3.25 and dumped["color"] == "green"


def test_text_in_a_numeric_column_is_refused_naming_the_column(columns):
    errors = errors_of(columns, [good_record(), good_record(price="cheap")])
    assert len(errors) == 1
    assert errors[0]["loc"] == (1, "price")


def test_a_fractional_value_in_an_integer_column_is_refused(columns):
    (error,) = errors_of(columns, [good_record(quantity=2.5)])
    assert "quantity" in error["loc"]


def test_a_missing_column_is_refused_naming_it(columns):
    record = good_record()
    del record["city"]
    (error,) = errors_of(columns, [record])
    assert error["type"] == "missing"
    assert "city" in error["loc"]


def test_an_extra_column_is_refused_by_default(columns):
    (error,) = errors_of(columns, [good_record(surprise=1)])
    assert error["type"] == "extra_forbidden"
    assert "surprise" in error["loc"]


def test_an_extra_column_is_dropped_when_asked(columns):
    (record,) = validate(columns, [good_record(surprise=1)], extra="drop")
    assert "surprise" not in record.model_dump(by_alias=True)
    frame = records_to_frame([record], columns)
    assert list(frame.columns) == [c["name"] for c in columns]


def test_an_unknown_category_is_refused(columns):
    (error,) = errors_of(columns, [good_record(color="purple")])
    assert "color" in error["loc"]
    assert "'red'" in error["msg"] and "'green'" in error["msg"]


def test_a_null_is_refused_naming_the_column_where_the_reference_had_none(columns):
    errors = errors_of(columns, [good_record(price=None, city=None)])
    assert sorted(e["loc"][-1] for e in errors) == ["city", "price"]
    assert all(e["input"] is None for e in errors)


def test_nulls_are_accepted_where_the_reference_had_missing_values(reference):
    found = reference_columns(pd.DataFrame({"a": [1.0, None], "b": ["x", None], "c": [1, 2]}))
    assert [column["nullable"] for column in found] == [True, True, False]
    columns = [{**column, "nullable": True} for column in reference_columns(reference)]
    nulls = {c["name"]: None for c in columns}
    records = validate(columns, [nulls, good_record()])
    frame = records_to_frame(records, columns)
    assert frame.isna().iloc[0].all()
    assert frame["price"].dtype == "float64"
    assert frame.loc[1, "quantity"] == 4


def test_column_names_that_are_not_identifiers_are_fields_too():
    frame = pd.DataFrame({"unit price ($)": [1.0], "class": ["a"], "model_config": [1]})
    columns = reference_columns(frame)
    records = validate(columns, [{"unit price ($)": 2.0, "class": "b", "model_config": 3}])
    assert records_to_frame(records, columns).to_dict(orient="records") == [
        {"unit price ($)": 2.0, "class": "b", "model_config": 3}
    ]


def test_records_become_exactly_the_reference_columns_with_its_dtypes(reference, columns):
    shuffled = dict(reversed(list(good_record().items())))  # keys in another order
    records = validate(columns, [shuffled, good_record(color="red", quantity=7)])
    frame = records_to_frame(records, columns)
    assert list(frame.columns) == list(reference.columns)
    assert frame.dtypes.to_dict() == reference.dtypes.to_dict()
    assert list(frame["color"].cat.categories) == ["red", "blue", "green"]
    assert frame["quantity"].tolist() == [4, 7]
    assert frame.loc[0, "when"] == pd.Timestamp("2024-03-05T10:00:00")


def test_plain_dict_records_become_a_frame_too(reference, columns):
    frame = records_to_frame([good_record()], columns)
    assert frame.dtypes.to_dict() == reference.dtypes.to_dict()


def test_non_default_numeric_and_datetime_dtypes_are_kept():
    reference = pd.DataFrame(
        {
            "f32": pd.Series([1.0], dtype="float32"),
            "i32": pd.Series([1], dtype="int32"),
            "ns": pd.to_datetime(["2024-01-01"]).astype("datetime64[ns]"),
        }
    )
    columns = reference_columns(reference)
    frame = records_to_frame([{"f32": 2.0, "i32": 3, "ns": "2024-02-01T00:00:00"}], columns)
    assert frame.dtypes.to_dict() == reference.dtypes.to_dict()


def test_an_ordered_category_stays_ordered():
    reference = pd.DataFrame(
        {"size": pd.Categorical(["S", "L"], categories=["S", "M", "L"], ordered=True)}
    )
    frame = records_to_frame([{"size": "M"}], reference_columns(reference))
    assert frame["size"].dtype == reference["size"].dtype


def test_integer_column_labels_are_kept():
    reference = pd.DataFrame(np.arange(6.0).reshape(2, 3))
    frame = records_to_frame([{"0": 1.0, "1": 2.0, "2": 3.0}], reference_columns(reference))
    assert list(frame.columns) == list(reference.columns)


# -- rows -------------------------------------------------------------------------------------
def test_a_row_of_the_wrong_width_is_refused_with_the_expected_width():
    rows = TypeAdapter(list[row_model(3)])
    assert rows.validate_python([[1, 2.5, None]]) == [[1.0, 2.5, None]]
    with pytest.raises(ValidationError) as caught:
        rows.validate_python([[1.0, 2.0, 3.0], [1.0, 2.0]])
    (error,) = caught.value.errors()
    assert error["loc"] == (1,)
    assert "a row has 2 values; the model expects 3" in error["msg"]


def test_rows_of_text_are_refused_and_rows_without_width_take_any_length():
    with pytest.raises(ValidationError):
        TypeAdapter(list[row_model(2)]).validate_python([["a", "b"]])
    free = TypeAdapter(list[row_model(None)])
    assert free.validate_python([[1.0], [1.0, 2.0, 3.0]]) == [[1.0], [1.0, 2.0, 3.0]]


# -- answers ----------------------------------------------------------------------------------
def test_to_jsonable_turns_nan_into_none_and_arrays_into_lists():
    value = {
        "nan": float("nan"),
        "numpy_nan": np.float64("nan"),
        "inf": np.inf,
        "array": np.array([[1.0, np.nan], [3.0, 4.0]]),
        "ints": np.arange(3),
        "scalar": np.int64(7),
        "nested": [(np.float32(0.5), None)],
    }
    assert to_jsonable(value) == {
        "nan": None,
        "numpy_nan": None,
        "inf": None,
        "array": [[1.0, None], [3.0, 4.0]],
        "ints": [0, 1, 2],
        "scalar": 7,
        "nested": [[0.5, None]],
    }
    assert type(to_jsonable(np.int64(7))) is int


def test_to_jsonable_turns_pandas_results_into_plain_values():
    assert to_jsonable(pd.Series([1.0, np.nan])) == [1.0, None]
    assert to_jsonable(pd.DataFrame({"a": [1, 2], "b": [0.5, np.nan]})) == [
        {"a": 1, "b": 0.5},
        {"a": 2, "b": None},
    ]


def test_check_length_needs_one_result_per_row():
    assert check_length(np.array([1, 2]), 2) == [1, 2]
    with pytest.raises(RowsError, match="returned 1 results for 2 rows"):
        check_length([1], 2)
    with pytest.raises(RowsError, match="returned float results for 2 rows"):
        check_length(0.5, 2)


def test_rows_endpoint_gives_records_as_the_reference_frame(columns, reference):
    seen = []

    def call(frame):
        seen.append(frame)
        return frame["price"] * 2

    endpoint = RowsEndpoint(call, {"mode": "records", "columns": columns})
    assert endpoint([]) == []
    assert seen == []
    records = validate(columns, [good_record(), good_record(price=8.0)])
    assert endpoint(records) == [6.5, 16.0]
    assert seen[0].dtypes.to_dict() == reference.dtypes.to_dict()


def test_rows_endpoint_gives_arrays_with_nan_for_missing_values():
    seen = []

    def call(rows):
        seen.append(rows)
        return rows.sum(axis=1)

    endpoint = RowsEndpoint(call, {"mode": "rows", "as_array": True, "width": 2})
    assert endpoint([[1.0, 2.0], [3.0, None]]) == [3.0, None]
    assert isinstance(seen[0], np.ndarray) and seen[0].dtype == np.float64
    assert math.isnan(seen[0][1, 1])
    listed = RowsEndpoint(lambda rows: [type(rows).__name__] * len(rows), {"mode": "rows"})
    assert listed([[1.0], [2.0]]) == ["list", "list"]
    short = RowsEndpoint(lambda rows: rows[:-1], {"mode": "rows"})
    with pytest.raises(RowsError):
        short([[1.0], [2.0]])


def test_score_frame_scores_every_row_of_a_dataframe(columns, reference):
    manifest = {
        "kind": "function",
        "schema": {"mode": "records", "parameter": "frame", "columns": columns},
    }
    extra = reference.assign(extra=1)
    assert score_frame(lambda frame: frame["quantity"] * 10, manifest, extra) == [10, 20]
    with pytest.raises(RowsError, match="lacks the columns"):
        score_frame(lambda frame: frame, manifest, reference.drop(columns=["city"]))
    rows = {"kind": "function", "schema": {"mode": "rows", "parameter": "rows"}}
    assert score_frame(lambda rows: [sum(r) for r in rows], rows, [[1, 2], [3, 4]]) == [3.0, 7.0]


# -- batching ---------------------------------------------------------------------------------
class RecordingCall:
    """A function of rows that records each call; answers row * 10; fails on "bad"."""

    def __init__(self, delay: float = 0.0, short: bool = False) -> None:
        self.calls: list[list] = []
        self.delay = delay
        self.short = short
        self.lock = threading.Lock()

    def __call__(self, rows):
        with self.lock:
            self.calls.append(list(rows))
        time.sleep(self.delay)
        if "bad" in rows:
            raise ValueError("a bad row")
        answer = [row * 10 for row in rows]
        return answer[:-1] if self.short else answer


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, timeout=30))


def test_an_empty_request_is_answered_without_calling():
    call = RecordingCall()
    assert run(Batcher(call).submit([])) == []
    assert call.calls == []


def test_a_request_larger_than_max_rows_is_answered_whole_in_one_call():
    call = RecordingCall()
    rows = list(range(10))
    assert run(Batcher(call, max_rows=4).submit(rows)) == [r * 10 for r in rows]
    assert call.calls == [rows]


def test_concurrent_requests_are_batched_and_each_gets_its_own_results():
    call = RecordingCall(delay=0.05)
    batcher = Batcher(call, max_rows=100)
    requests = [[i, i + 0.5] for i in range(10)]

    async def main():
        return await asyncio.gather(*(batcher.submit(rows) for rows in requests))

    answers = run(main())
    assert answers == [[i * 10, (i + 0.5) * 10] for i in range(10)]
    assert len(call.calls) < len(requests)
    assert sorted(row for rows in call.calls for row in rows) == sorted(
        row for rows in requests for row in rows
    )


def test_batches_never_exceed_max_rows():
    call = RecordingCall(delay=0.02)
    batcher = Batcher(call, max_rows=4)
    requests = [[i, -i] for i in range(1, 6)]

    async def main():
        return await asyncio.gather(*(batcher.submit(rows) for rows in requests))

    assert run(main()) == [[i * 10, -i * 10] for i in range(1, 6)]
    assert all(len(rows) <= 4 for rows in call.calls)
    assert len(call.calls) == 3


def test_a_failing_request_does_not_fail_the_others_in_its_batch():
    call = RecordingCall(delay=0.02)
    batcher = Batcher(call, max_rows=100)
    requests = [[1, 2], [3, "bad"], [5], [6, 7]]

    async def main():
        return await asyncio.gather(
            *(batcher.submit(rows) for rows in requests), return_exceptions=True
        )

    first, failed, third, fourth = run(main())
    assert first == [10, 20] and third == [50] and fourth == [60, 70]
    assert isinstance(failed, ValueError) and str(failed) == "a bad row"
    assert [3, "bad"] in call.calls  # tried alone after the batch failed


def test_a_lone_failing_request_gets_its_own_error():
    with pytest.raises(ValueError, match="a bad row"):
        run(Batcher(RecordingCall()).submit(["bad"]))


@pytest.mark.parametrize("size", [2, 8])
def test_a_wrong_length_answer_raises_rows_error(size):
    batcher = Batcher(RecordingCall(short=True), max_rows=4)
    with pytest.raises(RowsError, match=f"returned {size - 1} results for {size} rows"):
        run(batcher.submit(list(range(size))))


def test_the_batcher_keeps_working_after_a_failure():
    call = RecordingCall()
    batcher = Batcher(call, max_rows=100)

    async def main():
        with pytest.raises(ValueError):
            await batcher.submit(["bad"])
        return await batcher.submit([1])

    assert run(main()) == [10]
