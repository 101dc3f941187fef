"""The input schema of a service: from the reference data (``--reference VAR``) when given,
else from the function's type hints and the model's declared number of features.

Three shapes of input:
- ``records``: a list of records whose fields are the reference DataFrame's columns with
  their dtypes; turned into a DataFrame with exactly those columns before the call;
- ``rows``: a list of rows of numbers of a fixed width (the reference's, or the model's
  ``n_features_in_``);
- ``hints``: the function's own parameters and type hints, as written.
Records and rows map one request row to one result, so they can be batched.
"""

from __future__ import annotations

import inspect
import typing
from dataclasses import asdict, dataclass, field
from typing import Any

from nbdeploy.errors import NbdeployError

ROW_CONTAINERS = {"list", "List", "Sequence", "ndarray"}
RESULT_CONTAINERS = {"list", "List", "ndarray", "Series", "Sequence"}


class SchemaError(NbdeployError):
    """The function's parameters or the reference cannot define an input schema."""


@dataclass
class InputSchema:
    mode: str  # "records", "rows" or "hints"
    parameter: str = "rows"  # the function's parameter that receives the rows
    columns: list[dict[str, Any]] = field(default_factory=list)  # mode records
    width: int | None = None  # mode rows
    as_array: bool = False  # rows reach the function as a numpy array
    extra_columns: str = "refuse"  # mode records: "refuse" or "drop"
    per_row: bool = False  # one result per input row

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def column_kind(series: Any) -> dict[str, Any]:
    """A column's kind for the schema: number, integer, boolean, text, category, datetime."""
    import pandas as pd

    dtype = series.dtype
    label = series.name
    described: dict[str, Any] = {"name": str(label), "dtype": str(dtype)}
    # A null is accepted where the reference has missing values, refused (400) elsewhere.
    described["nullable"] = bool(series.isna().any())
    if not isinstance(label, str):
        described["label"] = label.item() if hasattr(label, "item") else label
    if isinstance(dtype, pd.CategoricalDtype):
        categories = [c.item() if hasattr(c, "item") else c for c in dtype.categories]
        described.update(kind="category", categories=categories, ordered=bool(dtype.ordered))
    elif pd.api.types.is_bool_dtype(dtype):
        described["kind"] = "boolean"
    elif pd.api.types.is_integer_dtype(dtype):
        described["kind"] = "integer"
    elif pd.api.types.is_numeric_dtype(dtype):
        described["kind"] = "number"
    elif pd.api.types.is_datetime64_any_dtype(dtype):
        described["kind"] = "datetime"
    else:
        described["kind"] = "text"
    return described


def reference_columns(frame: Any) -> list[dict[str, Any]]:
    names = [str(c) for c in frame.columns]
    if len(set(names)) != len(names):
        raise SchemaError(
            "the reference DataFrame has duplicate column names",
            "give every column its own name",
        )
    return [column_kind(frame[column]) for column in frame.columns]


def _is_frame(value: Any) -> bool:
    return hasattr(value, "columns") and hasattr(value, "dtypes") and hasattr(value, "iloc")


def reference_width(reference: Any) -> int | None:
    shape = getattr(reference, "shape", None)
    if shape is not None and len(shape) == 2:
        return int(shape[1])
    if isinstance(reference, list | tuple) and reference and isinstance(reference[0], list | tuple):
        return len(reference[0])
    return None


def _hint_name(hint: Any) -> str:
    origin = typing.get_origin(hint) or hint
    return str(getattr(origin, "__name__", origin))


def parameter_hints(function: Any) -> tuple[inspect.Signature, dict[str, Any]]:
    signature = inspect.signature(function)
    try:
        hints = typing.get_type_hints(function)
    except Exception:
        hints = {
            name: p.annotation
            for name, p in signature.parameters.items()
            if p.annotation is not inspect.Parameter.empty
        }
    return signature, hints


def model_width(objects: dict[str, Any]) -> int | None:
    """The number of features a single fitted model in ``objects`` declares."""
    widths = {
        int(value.n_features_in_)
        for value in objects.values()
        if isinstance(getattr(value, "n_features_in_", None), int)
    }
    return widths.pop() if len(widths) == 1 else None


def function_schema(
    function: Any, objects: dict[str, Any], reference: Any, extra_columns: str = "refuse"
) -> InputSchema:
    """The input schema of a notebook function."""
    signature, hints = parameter_hints(function)
    parameters = list(signature.parameters.values())
    returns = hints.get("return")
    per_row = returns is not None and _hint_name(returns) in RESULT_CONTAINERS
    if len(parameters) == 1 and parameters[0].kind in (
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        inspect.Parameter.KEYWORD_ONLY,
    ):
        only = parameters[0]
        hint = hints.get(only.name)
        name = _hint_name(hint) if hint is not None else None
        if reference is not None and _is_frame(reference) and name in (None, "DataFrame"):
            return InputSchema(
                mode="records",
                parameter=only.name,
                columns=reference_columns(reference),
                extra_columns=extra_columns,
                per_row=per_row or returns is None,
            )
        if name in ROW_CONTAINERS and _numeric_rows(hint):
            width = reference_width(reference) if reference is not None else None
            return InputSchema(
                mode="rows",
                parameter=only.name,
                width=width if width is not None else model_width(objects),
                as_array=name == "ndarray",
                per_row=per_row,
            )
    for parameter in parameters:
        if parameter.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            raise SchemaError(
                f"{function.__name__} takes *{parameter.name}: an HTTP endpoint needs named "
                "parameters",
                "declare them: def predict(rows: list[list[float]])",
            )
        if parameter.kind is inspect.Parameter.POSITIONAL_ONLY:
            raise SchemaError(
                f"parameter {parameter.name!r} of {function.__name__} is positional-only",
                "drop the `/` from the signature: requests name their fields",
            )
        if parameter.name not in hints:
            raise SchemaError(
                f"parameter {parameter.name!r} of {function.__name__} has no type hint",
                f"annotate it, e.g. {parameter.name}: list[list[float]], or give "
                "--reference VAR: the hints (or the reference) define the input schema",
            )
    if not parameters:
        raise SchemaError(f"{function.__name__} takes no parameters: nothing to send it")
    return InputSchema(mode="hints", parameter=parameters[0].name)


def _numeric_rows(hint: Any) -> bool:
    """list[list[float]] and the like (numpy arrays count as rows of numbers)."""
    if _hint_name(hint) == "ndarray":
        return True
    arguments = typing.get_args(hint)
    if len(arguments) != 1:
        return False
    inner = arguments[0]
    if _hint_name(inner) not in {"list", "List", "Sequence", "tuple"}:
        return False
    leaves = [a for a in typing.get_args(inner) if a is not type(None) and a is not Ellipsis]
    flat: list[Any] = []
    for leaf in leaves:
        flat.extend(typing.get_args(leaf) or [leaf])
    return all(leaf in (float, int, type(None)) for leaf in flat) and bool(flat)


def model_schema(model: Any, reference: Any, extra_columns: str = "refuse") -> InputSchema:
    """The input schema of a fitted model deployed directly."""
    if reference is not None and _is_frame(reference):
        return InputSchema(
            mode="records",
            columns=reference_columns(reference),
            extra_columns=extra_columns,
            per_row=True,
        )
    width = reference_width(reference) if reference is not None else None
    if width is None:
        width = getattr(model, "n_features_in_", None)
        names = getattr(model, "feature_names_in_", None)
        if names is not None and reference is None:
            raise SchemaError(
                f"the model was fitted on a DataFrame with columns {list(names)[:5]}...; "
                "its input schema needs the data",
                "give the training inputs: --reference X_train",
            )
    return InputSchema(
        mode="rows", width=int(width) if width else None, as_array=True, per_row=True
    )


def example_rows(reference: Any, schema: InputSchema) -> list[Any] | None:
    """The first row of the reference as a request would carry it."""
    if reference is None:
        return None
    head = reference.iloc[:1] if hasattr(reference, "iloc") else reference[:1]
    if schema.mode == "records" and _is_frame(head):
        from nbdeploy.service.runtime import to_jsonable

        records = head.astype(object).where(head.notna(), None).to_dict(orient="records")
        return [{str(k): _plain(v) for k, v in to_jsonable(records)[0].items()}]
    values = head.to_numpy() if hasattr(head, "to_numpy") else head
    rows = values.tolist() if hasattr(values, "tolist") else list(values)
    return [list(row) if isinstance(row, list | tuple) else row for row in rows]


def _plain(value: Any) -> Any:
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if hasattr(value, "item"):
        return value.item()
    return value


def placeholder_row(schema: InputSchema) -> Any:
    """A row the schema accepts, when there is no reference to take one from."""
    if schema.mode == "records":
        values = {"number": 0.0, "integer": 0, "boolean": False, "text": "", "datetime": None}
        return {
            c["name"]: (c.get("categories") or [None])[0]
            if c["kind"] == "category"
            else values.get(c["kind"])
            for c in schema.columns
        }
    return [0.0] * (schema.width or 1)
