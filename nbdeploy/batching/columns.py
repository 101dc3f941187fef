"""Which input columns feed a version's function, which are carried to the output, and the
checks a row's values pass before the call (what the service's request schema checks).

The version's ``manifest.json`` "schema" decides (see :mod:`nbdeploy.service.schema`):

- ``records`` (a DataFrame function, or a model deployed with a DataFrame reference): the
  reference's columns, by name; a missing one is an error before any work;
- ``rows`` (a function of rows or arrays, or a model on arrays): ``--features``, else the
  reference's feature names (the version's drift profile), else every column, checked
  against the schema's width;
- ``hints`` (named parameters): one call per row, the columns named as the parameters.

Columns that do not feed the function (an id, a date) are only carried to the output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nbdeploy.errors import NbdeployError

RECORDS, ROWS, HINTS = "records", "rows", "hints"
PREDICTION = "prediction"


class BatchColumnsError(NbdeployError):
    """The input's columns do not fit the version's input schema, or the options."""


@dataclass
class ScoringPlan:
    """Everything a worker needs to score a chunk (small and picklable)."""

    service_dir: str
    kind: str  # "model" or "function"
    mode: str  # records, rows or hints
    parameter: str
    features: list[str]  # input columns fed to the function, in the order it takes them
    kept: list[str]  # input columns carried to the output
    kept_types: dict[str, Any] = field(default_factory=dict)  # pyarrow types of ``kept``
    schema_columns: list[dict[str, Any]] = field(default_factory=list)  # records mode
    as_array: bool = False
    hint_parameters: list[str] = field(default_factory=list)  # hints: parameter = column


def plan_columns(
    *,
    service_dir: str,
    manifest: dict[str, Any],
    input_names: list[str],
    input_schema: Any,
    features: list[str] | None,
    keep: list[str] | None,
    profile_columns: list[str] | None,
) -> ScoringPlan:
    """The scoring plan of a version on an input with the columns ``input_names``."""
    schema = manifest["schema"]
    mode = schema["mode"]
    available = set(input_names)
    if features and mode != ROWS:
        raise BatchColumnsError(
            f"--features applies to a version that takes rows of numbers; this one takes "
            f"{'a DataFrame of the reference columns' if mode == RECORDS else 'named parameters'}",
            "leave out --features: the version's own schema names its columns",
        )
    hint_parameters: list[str] = []
    if mode == RECORDS:
        chosen = [column["name"] for column in schema["columns"]]
        _require(chosen, available, "the version's reference columns", input_names)
    elif mode == ROWS:
        chosen = _row_features(schema, input_names, features, profile_columns)
    else:
        chosen, hint_parameters = _hint_features(Path(service_dir), input_names)
    kept = list(input_names) if keep is None else list(keep)
    _require(kept, available, "--keep", input_names)
    expected = (
        {c["name"]: c["kind"] for c in schema.get("columns") or []} if mode == RECORDS else {}
    )
    if mode == ROWS:
        expected = {name: "number" for name in chosen}
    kept_types = {
        name: _carried_type(input_schema.field(name).type, expected.get(name)) for name in kept
    }
    return ScoringPlan(
        service_dir=service_dir,
        kind=manifest["kind"],
        mode=mode,
        parameter=schema.get("parameter") or "rows",
        features=chosen,
        kept=kept,
        kept_types=kept_types,
        schema_columns=list(schema.get("columns") or []),
        as_array=bool(schema.get("as_array")) or manifest["kind"] == "model",
        hint_parameters=hint_parameters,
    )


def _carried_type(arrow_type: Any, kind: str | None) -> Any:
    """The type of a carried column: as the input's first block has it, unless that block
    read a feature column as text (a bad value in it) or as all nulls: then the type the
    version's schema expects."""
    import pyarrow as pa

    textual = pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type)
    if pa.types.is_null(arrow_type) or textual:
        by_kind = {"number": pa.float64(), "integer": pa.int64(), "boolean": pa.bool_()}
        if kind in by_kind:
            return by_kind[kind]
    return pa.string() if pa.types.is_null(arrow_type) else arrow_type


def _require(names: list[str], available: set[str], what: str, input_names: list[str]) -> None:
    missing = [name for name in names if name not in available]
    if missing:
        shown = ", ".join(input_names[:20]) + (" ..." if len(input_names) > 20 else "")
        raise BatchColumnsError(
            f"the input has no column {missing[0]!r} ({what}"
            + (f"; also missing: {', '.join(missing[1:6])}" if len(missing) > 1 else "")
            + f"); its columns: {shown}",
            "add the column to the input, or name the right ones",
        )


def _row_features(
    schema: dict[str, Any],
    input_names: list[str],
    features: list[str] | None,
    profile_columns: list[str] | None,
) -> list[str]:
    width = schema.get("width")
    if features:
        _require(features, set(input_names), "--features", input_names)
        chosen = list(features)
        where = "--features"
    elif profile_columns and all(name in input_names for name in profile_columns):
        chosen = list(profile_columns)
        where = "the reference's feature names"
    else:
        chosen = list(input_names)
        where = "every input column (no --features, and not the reference's names)"
    if width is not None and len(chosen) != int(width):
        raise BatchColumnsError(
            f"{where} gives {len(chosen)} columns ({', '.join(chosen[:10])}); "
            f"the version takes rows of {width} values",
            "name the feature columns in order: --features COL ...",
        )
    return chosen


def _hint_features(service_dir: Path, input_names: list[str]) -> tuple[list[str], list[str]]:
    from nbdeploy.service.runtime import load_signature

    signature = load_signature(service_dir)
    parameters = list(signature.get("annotations", {}))
    parameters = [name for name in parameters if name != "return"]
    defaults = signature.get("defaults", {})
    required = [name for name in parameters if name not in defaults]
    missing = [name for name in required if name not in input_names]
    if missing:
        raise BatchColumnsError(
            f"the version's function takes the parameters {', '.join(parameters)}; the input "
            f"has no column {missing[0]!r}",
            "a function of named parameters is called once per row with the columns of "
            "those names: add the column, or deploy a function of a DataFrame (--reference)",
        )
    used = [name for name in parameters if name in input_names]
    return used, used


# -- checks of values (worker side) ---------------------------------------------------------
RowError = tuple[int, str | None, str]  # position in the chunk, column, reason


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_records(frame: Any, columns: list[dict[str, Any]]) -> tuple[Any, list[RowError]]:
    """The reference's columns of ``frame`` converted to their kinds, and the rows whose
    values do not fit (a value of another kind, a null where the reference had none, an
    unknown category). Vectorized: one pass per column."""
    import numpy as np
    import pandas as pd

    errors: dict[int, RowError] = {}
    converted = {}
    for column in columns:
        name, kind = column["name"], column["kind"]
        values = frame[name]
        null = values.isna().to_numpy()
        bad = np.zeros(len(values), dtype=bool)
        reason = ""
        if kind in ("number", "integer"):
            numbers = _numbers(values)
            bad = ~null & numbers.isna().to_numpy()
            reason = "is not a number"
            if kind == "integer":
                whole = numbers.isna() | (numbers % 1 == 0)
                fraction = ~whole.to_numpy() & ~bad
                _note(errors, fraction, values, name, "is not a whole number (integer column)")
            result: Any = numbers
        elif kind == "boolean":
            result = values.map(_boolean, na_action="ignore")
            bad = ~null & result.isna().to_numpy()
            reason = "is not a boolean"
        elif kind == "category":
            categories = list(column.get("categories") or [])
            result = values
            if categories and all(isinstance(c, int | float) for c in categories):
                result = _numbers(values)
            if categories:
                bad = ~null & ~result.isin(categories).to_numpy()
                known = ", ".join(_shown(c) for c in categories[:10])
                reason = f"is not a known category (known: {known})"
        elif kind == "datetime":
            result = pd.to_datetime(values, errors="coerce")
            bad = ~null & result.isna().to_numpy()
            reason = "is not a date and time"
        elif kind == "text":
            result = values.map(lambda v: v if isinstance(v, str) else str(v), na_action="ignore")
        else:
            result = values
        _note(errors, bad, values, name, reason)
        if not column.get("nullable", True):
            for position in np.flatnonzero(null):
                errors.setdefault(
                    int(position),
                    (int(position), name, "missing value; the reference had none in this column"),
                )
        converted[name] = result
    return pd.DataFrame(converted, index=frame.index), sorted(errors.values())


def _note(errors: dict[int, RowError], bad: Any, values: Any, name: str, reason: str) -> None:
    import numpy as np

    raw = values.to_numpy()
    for position in np.flatnonzero(bad):
        errors.setdefault(
            int(position), (int(position), name, f"value {_shown(raw[position])} {reason}")
        )


def _numbers(values: Any) -> Any:
    import pandas as pd

    if values.dtype == bool:
        return values.astype("float64")
    numbers = pd.to_numeric(values, errors="coerce")
    return numbers.astype("float64") if numbers.dtype == object else numbers


def _boolean(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "1.0"):
        return True
    if text in ("false", "0", "no", "0.0"):
        return False
    return None


def check_rows(frame: Any, features: list[str]) -> tuple[Any, list[RowError]]:
    """The feature columns as a float matrix (NaN for nulls) and the rows with a value that
    is not a number."""
    import numpy as np

    errors: dict[int, RowError] = {}
    matrix = np.empty((len(frame), len(features)), dtype=float)
    for position, name in enumerate(features):
        values = frame[name]
        numbers = _numbers(values)
        bad = ~values.isna().to_numpy() & numbers.isna().to_numpy()
        _note(errors, bad, values, name, "is not a number")
        matrix[:, position] = numbers.to_numpy(dtype=float, na_value=math.nan)
    return matrix, sorted(errors.values())
