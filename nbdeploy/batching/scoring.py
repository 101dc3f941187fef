"""Worker side of a batch job: a chunk of rows in, its output rows and failed rows out.

A worker process loads the version's captured code and objects once (from the version
folder in nbdeploy's own store, with :func:`nbdeploy.service.runtime.load_version`), then
scores chunk after chunk as the service would score a request of those rows: the same
checks of values, the same conversion (:func:`~nbdeploy.service.runtime.records_to_frame`
for a DataFrame function, here straight from the checked columns with
:func:`~nbdeploy.service.runtime.conform_frame`; a float array or lists of floats for rows)
and the same call.

A call that raises is split in halves until the rows that raise are found (bisection); each
of them fails with the exception's type and message, and the other rows are scored.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nbdeploy.batching.columns import (
    HINTS,
    PREDICTION,
    RECORDS,
    RowError,
    ScoringPlan,
    check_records,
    check_rows,
)

_loaded: dict[str, tuple[Callable[..., Any], dict[str, Any]]] = {}
_load_lock = threading.Lock()


@dataclass
class ChunkResult:
    index: int
    first_row: int
    rows_in: int
    table: Any  # pyarrow.Table: kept columns and predictions of the rows that succeeded
    errors: list[dict[str, Any]] = field(default_factory=list)  # row (global), column, reason


def loaded_version(service_dir: str) -> tuple[Callable[..., Any], dict[str, Any]]:
    """The version's answer (its function, or its model's predict) and manifest, loaded
    once per process."""
    with _load_lock:
        if service_dir not in _loaded:
            from nbdeploy.service.runtime import load_version, read_manifest

            directory = Path(service_dir)
            answer = load_version(directory)  # prepare() included
            _loaded[service_dir] = (answer, read_manifest(directory))
        return _loaded[service_dir]


def warm(service_dir: str) -> None:
    """Pool initializer: load the version before the first chunk arrives."""
    from nbdeploy.private_files import restrict_umask

    restrict_umask()
    loaded_version(service_dir)


def score_chunk(plan: ScoringPlan, index: int, first_row: int, table: Any) -> ChunkResult:
    """Score one chunk (a pyarrow Table of input columns)."""
    answer, manifest = loaded_version(plan.service_dir)
    frame = table.select(plan.features).to_pandas() if plan.features else None
    rows = table.num_rows
    failed: dict[int, RowError] = {}
    if plan.mode == HINTS:
        results = _score_hints(answer, plan, table, failed)
    else:
        assert frame is not None
        if plan.mode == RECORDS:
            values, problems = check_records(frame, plan.schema_columns)
        else:
            values, problems = check_rows(frame, plan.features)
        for problem in problems:
            failed[problem[0]] = problem
        good = [p for p in range(rows) if p not in failed]
        call = _caller(answer, manifest, plan, values)
        results = {}
        _bisect(call, good, results, failed)
    return _result(plan, index, first_row, table, results, failed)


def _caller(
    answer: Callable[..., Any], manifest: dict[str, Any], plan: ScoringPlan, values: Any
) -> Callable[[list[int]], list[Any]]:
    """A function of row positions that returns their results, called as the service calls
    the version."""
    from nbdeploy.service.runtime import check_length, conform_frame

    is_model = manifest["kind"] == "model"

    def invoke(argument: Any) -> Any:
        return answer(argument) if is_model else answer(**{plan.parameter: argument})

    if plan.mode == RECORDS:
        columns = plan.schema_columns

        def call_records(positions: list[int]) -> list[Any]:
            part = values.iloc[positions].reset_index(drop=True)
            return check_length(invoke(conform_frame(part, columns)), len(positions))

        return call_records

    def call_rows(positions: list[int]) -> list[Any]:
        matrix = values[positions]
        argument: Any = matrix if plan.as_array else rows_of(matrix)
        return check_length(invoke(argument), len(positions))

    return call_rows


def rows_of(matrix: Any) -> list[list[float | None]]:
    """A float matrix as the lists of a request's rows, a missing value (NaN) as None; only
    the rows that have one are looked at value by value."""
    import numpy as np

    rows: list[list[float | None]] = matrix.tolist()
    missing = np.isnan(matrix)
    for position in np.flatnonzero(missing.any(axis=1)).tolist():
        gaps = missing[position]
        rows[position] = [None if gap else v for v, gap in zip(rows[position], gaps, strict=True)]
    return rows


def _bisect(
    call: Callable[[list[int]], list[Any]],
    positions: list[int],
    results: dict[int, Any],
    failed: dict[int, RowError],
) -> None:
    """Score ``positions``; when the call raises, score each half on its own, down to the
    single rows that raise."""
    if not positions:
        return
    try:
        answers = call(positions)
    except Exception as error:
        if len(positions) == 1:
            message = str(error).strip().splitlines()[0] if str(error).strip() else ""
            failed[positions[0]] = (positions[0], None, f"{type(error).__name__}: {message}")
            return
        middle = len(positions) // 2
        _bisect(call, positions[:middle], results, failed)
        _bisect(call, positions[middle:], results, failed)
        return
    results.update(zip(positions, answers, strict=True))


def _score_hints(
    answer: Callable[..., Any], plan: ScoringPlan, table: Any, failed: dict[int, RowError]
) -> dict[int, Any]:
    """Named parameters: one call per row, each parameter the column of its name, its value
    converted by the parameter's type hint as the service's request validation does (a CSV's
    "1.5" is the float 1.5); a value the hint refuses fails the row, naming the column."""
    from pydantic import ValidationError

    from nbdeploy.service.runtime import plain

    adapters = _hint_adapters(plan.service_dir)
    results: dict[int, Any] = {}
    records = table.select(plan.hint_parameters).to_pylist()
    for position, record in enumerate(records):
        arguments = {}
        for name, value in record.items():
            adapter = adapters.get(name)
            if adapter is None:
                arguments[name] = value
                continue
            try:
                arguments[name] = adapter.validate_python(value)
            except ValidationError as error:
                detail = error.errors()[0].get("msg", "invalid") if error.errors() else "invalid"
                failed[position] = (position, name, f"value {value!r} does not fit: {detail}")
                break
        if position in failed:
            continue
        try:
            results[position] = plain(answer(**arguments))
        except Exception as error:
            message = str(error).strip().splitlines()[0] if str(error).strip() else ""
            failed[position] = (position, None, f"{type(error).__name__}: {message}")
    return results


_adapters: dict[str, dict[str, Any]] = {}


def _hint_adapters(service_dir: str) -> dict[str, Any]:
    """pydantic adapters of the function's parameters (from the version's signature.pkl),
    made once per process."""
    with _load_lock:
        if service_dir not in _adapters:
            from pydantic import TypeAdapter

            from nbdeploy.service.runtime import load_signature

            annotations = load_signature(Path(service_dir)).get("annotations", {})
            made = {}
            for name, hint in annotations.items():
                try:
                    made[name] = TypeAdapter(hint)
                except Exception:  # a hint pydantic cannot check: the value as it is
                    continue
            _adapters[service_dir] = made
        return _adapters[service_dir]


def _result(
    plan: ScoringPlan,
    index: int,
    first_row: int,
    table: Any,
    results: dict[int, Any],
    failed: dict[int, RowError],
) -> ChunkResult:
    import pyarrow as pa

    from nbdeploy.batching.inputs import conform

    good = sorted(results)
    taken = table.take(pa.array(good, type=pa.int64()))
    columns: dict[str, Any] = {
        name: conform(taken.column(name), plan.kept_types[name]) for name in plan.kept
    }
    answers = [results[p] for p in good]  # JSON values already (check_length, plain)
    if answers and all(isinstance(a, dict) for a in answers):
        keys = list(dict.fromkeys(key for a in answers for key in a))
        for key in keys:
            label = str(key) if str(key) not in columns else f"{PREDICTION}_{key}"
            columns[label] = _column([a.get(key) for a in answers])
    else:
        columns[PREDICTION] = _column(answers)
    errors = [
        {"row": first_row + position, "column": column, "reason": reason}
        for position, column, reason in sorted(failed.values())
    ]
    return ChunkResult(index, first_row, table.num_rows, pa.table(columns), errors)


def _column(values: list[Any]) -> Any:
    import json

    import pyarrow as pa

    try:
        return pa.array(values)
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        return pa.array([None if v is None else json.dumps(v) for v in values], type=pa.string())
