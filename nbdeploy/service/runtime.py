"""What a generated service runs: loading a version's captured code and objects, the input
schema, and batching. Copied into every version as ``nbdeploy_runtime.py``, so a service
(or a container image) needs neither nbdeploy nor the notebook: only the standard library,
cloudpickle, and numpy, pandas and pydantic where the schema uses them.

A version folder holds ``definitions.pkl`` (the notebook's classes and functions that
saved objects refer to), ``function.pkl`` (the entry function, pickled by value, whose
global objects are references resolved at load time), ``signature.pkl`` (the entry
function's type hints and defaults), ``local_modules/`` (snapshots of the user's own
modules) and ``manifest.json``. Pickles are only ever read from nbdeploy's own store.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import math
import pickle
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
DEFINITIONS = "definitions.pkl"
FUNCTION = "function.pkl"
SIGNATURE = "signature.pkl"
LOCAL_MODULES = "local_modules"
OBJECT_REFERENCE = "nbdeploy-object"


class Unpickler(pickle.Unpickler):
    """Every pickle of a version is read through this class; ``objects`` resolves the
    function's references to its global objects."""

    def __init__(self, file: Any, objects: dict[str, Any] | None = None) -> None:
        super().__init__(file)
        self.objects = objects or {}

    def persistent_load(self, reference: Any) -> Any:
        kind, name = reference
        if kind != OBJECT_REFERENCE or name not in self.objects:
            raise pickle.UnpicklingError(f"unknown object reference {reference!r}")
        return self.objects[name]


def load_pickle(path: Path, objects: dict[str, Any] | None = None) -> Any:
    """A pickle from nbdeploy's own store (never from anywhere else)."""
    with open(path, "rb") as handle:
        return Unpickler(handle, objects).load()


def read_manifest(directory: Path) -> dict[str, Any]:
    manifest: dict[str, Any] = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    return manifest


def prepare_imports(directory: Path) -> None:
    """Make the version's own modules importable, ahead of anything else of that name."""
    local = directory / LOCAL_MODULES
    if local.is_dir() and str(local) not in sys.path:
        sys.path.insert(0, str(local))


def prepare(directory: Path) -> None:
    """Import paths, then the notebook's classes and functions where pickles made by other
    libraries look for them (``__main__.NAME``)."""
    prepare_imports(directory)
    path = directory / DEFINITIONS
    if not path.exists():
        return
    definitions: dict[str, Any] = load_pickle(path)
    main = sys.modules["__main__"]
    for name, value in definitions.items():
        # Framework savers pickle notebook classes by reference, as __main__.NAME.
        setattr(main, name, value)


def load_object(spec: dict[str, Any], path: Path | None = None, model: Any = None) -> Any:
    """One saved object: through its framework's loader, or nbdeploy's own pickle file."""
    if spec["kind"] != "generic" and model is not None:
        return importlib.import_module(f"bentoml.{spec['kind']}").load_model(model)
    return load_pickle(path if path is not None else Path(model.path_of(spec["file"])))


def load_function(directory: Path, objects: dict[str, Any]) -> Callable[..., Any]:
    """The entry function, with its global objects resolved to ``objects``."""
    function: Callable[..., Any] = load_pickle(directory / FUNCTION, objects)
    return function


def load_signature(directory: Path) -> dict[str, Any]:
    """{"annotations": {param: hint}, "defaults": {param: value}, "returns": hint}."""
    signature: dict[str, Any] = load_pickle(directory / SIGNATURE)
    return signature


def load_version(directory: Path) -> Callable[..., Any]:
    """Everything at once from the version's files (probe, MLflow pyfunc): the entry
    function, or the model's predict method."""
    prepare(directory)
    manifest = read_manifest(directory)
    objects = {
        spec["name"]: load_object(spec, path=directory / "objects" / spec["file"])
        for spec in manifest["objects"]
    }
    if manifest["kind"] == "model":
        return getattr(objects[manifest["entry"]], "predict")  # noqa: B009
    return load_function(directory, objects)


def score_frame(answer: Callable[..., Any], manifest: dict[str, Any], frame: Any) -> Any:
    """Score every row of a DataFrame (MLflow's pyfunc input) with a version's answer."""
    import pandas as pd

    schema = manifest["schema"]
    if not isinstance(frame, pd.DataFrame):
        frame = pd.DataFrame(frame)
    if schema["mode"] == "records":
        names = [c["name"] for c in schema["columns"]]
        missing = [n for n in names if n not in frame.columns]
        if missing:
            raise RowsError(f"the input lacks the columns {missing}")
        converted = records_to_frame(frame[names].to_dict(orient="records"), schema["columns"])
        result = (
            answer(converted)
            if manifest["kind"] == "model"
            else answer(**{schema["parameter"]: converted})
        )
        return to_jsonable(result)
    if schema["mode"] == "rows":
        rows = frame.to_numpy(dtype=float)
        if manifest["kind"] == "model" or schema.get("as_array"):
            value: Any = rows
        else:
            value = rows.tolist()
        result = (
            answer(value) if manifest["kind"] == "model" else answer(**{schema["parameter"]: value})
        )
        return to_jsonable(result)
    # Named parameters: one call per row, each column a parameter.
    return [to_jsonable(answer(**record)) for record in frame.to_dict(orient="records")]


# -- input schema ---------------------------------------------------------------------
class RowsError(ValueError):
    """Input rows that do not fit the schema (answered with 400)."""


def row_model(width: int | None) -> Any:
    """A row of numbers (nulls allowed, counted as missing) of exactly ``width`` values."""
    from typing import Annotated

    from pydantic import AfterValidator

    def check(row: list[float | None]) -> list[float | None]:
        if width is not None and len(row) != width:
            raise ValueError(
                f"a row has {len(row)} values; the model expects {width} (the reference's width)"
            )
        return row

    return Annotated[list[float | None], AfterValidator(check)]


def record_model(columns: list[dict[str, Any]], extra: str = "refuse") -> Any:
    """A pydantic model of one record: the reference's columns, each typed; an unknown
    column is refused (400 naming it) or dropped; a null is refused (400 naming the column)
    unless the reference has missing values in that column."""
    import datetime
    from typing import Literal

    from pydantic import ConfigDict, Field, create_model

    types: dict[str, Any] = {
        "number": float,
        "integer": int,
        "boolean": bool,
        "text": str,
        "datetime": datetime.datetime,
    }
    fields: dict[str, Any] = {}
    for index, column in enumerate(columns):
        kind = column["kind"]
        if kind == "category":
            categories = tuple(column.get("categories") or ())
            hint: Any = Literal[categories] if categories else str
        else:
            hint = types.get(kind, Any)
        # Null where the model saw missing values in training (monitoring counts them);
        # versions made before "nullable" was recorded accept nulls everywhere.
        nullable = column.get("nullable", True)
        fields[f"c{index}"] = (hint | None if nullable else hint, Field(..., alias=column["name"]))
    config = ConfigDict(
        extra="forbid" if extra == "refuse" else "ignore",
        populate_by_name=False,
        strict=False,
    )
    return create_model("Record", __config__=config, **fields)


def records_to_frame(records: Sequence[Any], columns: list[dict[str, Any]]) -> Any:
    """Validated records (pydantic models or dicts) as a DataFrame with exactly the
    reference's columns: its labels, in its order, with its dtypes."""
    import pandas as pd

    names = [column["name"] for column in columns]
    rows = [
        record.model_dump(by_alias=True) if hasattr(record, "model_dump") else record
        for record in records
    ]
    return conform_frame(pd.DataFrame.from_records(rows, columns=names), columns)


def conform_frame(frame: Any, columns: list[dict[str, Any]]) -> Any:
    """``frame`` (the reference's columns, by name, with values of the right kinds) with
    exactly the reference's labels, order and dtypes: what the function was trained on."""
    import pandas as pd

    names = [column["name"] for column in columns]
    frame = frame[names].copy()
    for column in columns:
        name, kind, dtype = column["name"], column["kind"], column.get("dtype")
        values = frame[name]
        if kind in ("number", "integer"):
            numbers = pd.to_numeric(values, errors="coerce")
            if kind == "integer" and numbers.isna().any():
                dtype = "float64"  # a missing value in an integer column
            frame[name] = _as_dtype(numbers, dtype or "float64")
        elif kind == "boolean":
            frame[name] = values.astype("bool") if not values.isna().any() else values
        elif kind == "category":
            frame[name] = pd.Categorical(
                values,
                categories=column.get("categories") or None,
                ordered=bool(column.get("ordered")),
            )
        elif kind == "datetime":
            frame[name] = _as_dtype(pd.to_datetime(values), dtype)
        elif dtype:
            frame[name] = _as_dtype(values, dtype)
    labels = [column.get("label", column["name"]) for column in columns]
    if labels != names:
        frame.columns = labels  # e.g. the integer labels of pd.DataFrame(array)
    return frame


def _as_dtype(values: Any, dtype: str | None) -> Any:
    if not dtype:
        return values
    try:
        return values.astype(dtype)
    except (TypeError, ValueError):
        return values


def to_jsonable(value: Any) -> Any:
    """numpy and pandas results as plain JSON values (NaN becomes null)."""
    if hasattr(value, "to_numpy") and not hasattr(value, "columns"):
        value = value.to_numpy()
    if hasattr(value, "to_dict") and hasattr(value, "columns"):
        return to_jsonable(value.to_dict(orient="records"))
    kind = getattr(getattr(value, "dtype", None), "kind", None)
    if kind in ("b", "i", "u", "U") and hasattr(value, "tolist"):
        return value.tolist()  # whole arrays of plain values: no element needs a look
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list | tuple):
        if all(_is_plain(item) for item in value):  # the common answer: one number per row
            return list(value)
        return [to_jsonable(item) for item in value]
    if isinstance(value, dict):
        return {key: to_jsonable(item) for key, item in value.items()}
    return value


_PLAIN_TYPES = (int, str, bool, type(None))


def _is_plain(item: Any) -> bool:
    """A JSON value as it is: a whole number, text, a boolean, None or a finite float."""
    kind = type(item)
    return kind in _PLAIN_TYPES or (kind is float and math.isfinite(item))


def check_length(results: Any, count: int) -> list[Any]:
    values = to_jsonable(results)
    if not isinstance(values, list) or len(values) != count:
        got = len(values) if isinstance(values, list) else type(values).__name__
        raise RowsError(
            f"the function returned {got} results for {count} rows; "
            "a function of rows must return one result per row"
        )
    return values


# -- batching ---------------------------------------------------------------------------
class Batcher:
    """Adaptive batching of rows across concurrent requests.

    Requests queue their rows; while the model is busy with one batch, the next one grows
    (up to ``max_rows``), so batches follow the load without a fixed wait. A request larger
    than ``max_rows`` runs on its own, whole: batching never changes what one request can
    do, and nothing is shed while the queue drains.
    """

    def __init__(self, call: Callable[[list[Any]], Any], max_rows: int = 100) -> None:
        self.call = call
        self.max_rows = max_rows
        self._queue: list[tuple[list[Any], asyncio.Future[list[Any]]]] = []
        self._busy = False
        self._drainer: asyncio.Task[None] | None = None

    async def submit(self, rows: list[Any]) -> list[Any]:
        if not rows:
            return []
        loop = asyncio.get_running_loop()
        if len(rows) >= self.max_rows:
            result = await loop.run_in_executor(None, self.call, rows)
            return check_length(result, len(rows))
        future: asyncio.Future[list[Any]] = loop.create_future()
        self._queue.append((rows, future))
        if not self._busy:
            self._busy = True
            self._drainer = loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._queue:
                batch: list[tuple[list[Any], asyncio.Future[list[Any]]]] = []
                size = 0
                while self._queue and (not batch or size + len(self._queue[0][0]) <= self.max_rows):
                    item = self._queue.pop(0)
                    batch.append(item)
                    size += len(item[0])
                rows = [row for part, _ in batch for row in part]
                try:
                    results = check_length(await loop.run_in_executor(None, self.call, rows), size)
                except Exception as error:
                    await self._one_by_one(batch, error)
                    continue
                start = 0
                for part, future in batch:
                    if not future.done():
                        future.set_result(results[start : start + len(part)])
                    start += len(part)
        finally:
            self._busy = False

    async def _one_by_one(
        self, batch: list[tuple[list[Any], asyncio.Future[list[Any]]]], error: Exception
    ) -> None:
        """A failed batch of several requests: each runs alone, so that one bad request
        does not fail the others."""
        loop = asyncio.get_running_loop()
        for rows, future in batch:
            if future.done():
                continue
            if len(batch) == 1:
                future.set_exception(error)
                continue
            try:
                result = await loop.run_in_executor(None, self.call, rows)
                future.set_result(check_length(result, len(rows)))
            except Exception as own_error:
                future.set_exception(own_error)


# -- endpoints ----------------------------------------------------------------------------
class RowsEndpoint:
    """Rows (or records) in, one result per row out: converts the validated request into
    what the function or model takes, checks the answer's length, and batches."""

    def __init__(
        self, call: Callable[[Any], Any], schema: dict[str, Any], max_batch_size: int = 100
    ) -> None:
        self.call = call
        self.schema = schema
        self.batcher = Batcher(self._run, max_rows=max_batch_size)

    def inputs(self, rows: Sequence[Any]) -> Any:
        if self.schema["mode"] == "records":
            return records_to_frame(rows, self.schema["columns"])
        values = [list(row) for row in rows]
        if self.schema.get("as_array"):
            import numpy as np

            return np.asarray(
                [[math.nan if v is None else v for v in row] for row in values], dtype=float
            )
        return values

    def _run(self, rows: list[Any]) -> list[Any]:
        return check_length(self.call(self.inputs(rows)), len(rows))

    def __call__(self, rows: Sequence[Any]) -> list[Any]:
        return self._run(list(rows)) if rows else []

    async def batched(self, rows: Sequence[Any]) -> list[Any]:
        return await self.batcher.submit(list(rows))


def plain(value: Any) -> Any:
    """A function's answer made JSON-friendly when it is a numpy or pandas value."""
    if hasattr(value, "tolist") or hasattr(value, "to_numpy") or hasattr(value, "to_dict"):
        return to_jsonable(value)
    return value
