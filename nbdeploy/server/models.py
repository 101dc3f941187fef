"""The request bodies of the REST API as pydantic models (unknown fields are refused).

:func:`parse_body` turns a validation error into a 422 that names the field.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from nbdeploy.server.errors import ApiError

Model = TypeVar("Model", bound=BaseModel)
STRATEGIES = ("blue-green", "recreate", "canary", "ab", "shadow")  # DeployOptions' own


def check_deployment_name(value: str) -> str:
    """A deployment name as the CLI accepts it (the core's own check)."""
    from nbdeploy.service.package import deployment_name

    try:
        return deployment_name(value, given=True)
    except Exception as error:
        raise ValueError(getattr(error, "message", str(error))) from None


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False)


class DeployBody(_Body):
    """POST deployments: run a notebook in the server's root, then deploy its function."""

    path: str = Field(description="a .ipynb relative to the server's root folder")
    name: str | None = None
    function: str | None = None
    parameters: dict[str, Any] | None = None
    strategy: str | None = None
    mlflow: bool = True
    replace: bool = False  # take over a name another notebook deployed
    reference: str | None = None  # the variable with the training inputs (drift, input checks)

    @field_validator("reference")
    @classmethod
    def _reference(cls, value: str | None) -> str | None:
        if value is not None and not value.isidentifier():
            raise ValueError(f"{value!r} is not a Python variable name")
        return value

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        return None if value is None else check_deployment_name(value)

    @field_validator("function")
    @classmethod
    def _function(cls, value: str | None) -> str | None:
        if value is not None and not value.isidentifier():
            raise ValueError(f"{value!r} is not a Python function name")
        return value

    @field_validator("strategy")
    @classmethod
    def _strategy(cls, value: str | None) -> str | None:
        if value is not None and value not in STRATEGIES:
            raise ValueError(f"{value!r} is not a strategy: {', '.join(STRATEGIES)}")
        return value


class RunBody(_Body):
    """POST runs: a notebook (once, or a sweep) or a pipeline.yaml."""

    path: str = Field(description="a .ipynb or pipeline.yaml relative to the server's root")
    parameters: dict[str, Any] | None = None
    sweep: dict[str, list[Any]] | None = None
    mlflow: bool = True

    @field_validator("sweep")
    @classmethod
    def _sweep(cls, value: dict[str, list[Any]] | None) -> dict[str, list[Any]] | None:
        for name, values in (value or {}).items():
            if not values:
                raise ValueError(f"{name}: give a non-empty list of values")
        return value


class RollbackBody(_Body):
    """POST deployments/NAME/rollback: ``{"to": N}`` for a kept version (default, or an
    empty body: the previous one)."""

    to: int | None = Field(default=None, ge=1)


class WeightsBody(_Body):
    """POST deployments/NAME/weights: percentages by version, ``{"1": 90, "2": 10}``."""

    weights: dict[str, float]

    @field_validator("weights")
    @classmethod
    def _weights(cls, value: dict[str, float]) -> dict[str, float]:
        split: dict[str, float] = {}
        for key, weight in value.items():
            number = key.strip().lower().removeprefix("v")
            if not number.isdigit():
                raise ValueError(f"{key!r} is not a version number (1, 2, ... or v1, v2, ...)")
            if weight < 0:
                raise ValueError(f"{key}: a weight is zero or more")
            split[f"v{int(number)}"] = float(weight)
        if not split or not any(w > 0 for w in split.values()):
            raise ValueError("give at least one version a weight above zero")
        return split


class BatchBody(_Body):
    """POST deployments/NAME/batch: score a file (a folder, or a glob) of the server's root
    with a version's own function, writing ``output`` inside the root (nbdeploy batch)."""

    input: str = Field(description="a CSV, Parquet or JSON Lines file, folder or glob")
    output: str = Field(description="the file to write: .parquet, .csv or .jsonl")
    version: int | None = Field(default=None, ge=1)
    keep: list[str] | None = None
    features: list[str] | None = None
    errors: str | None = None
    max_error_share: float = Field(default=0.01, ge=0, le=1)
    mlflow: bool = True


class ScheduleBody(_Body):
    """POST schedules: an nbdeploy command (``["run", "train.ipynb", "-p", "epochs", "3"]``,
    ``["batch", "churn", "in.csv", "--output", "out.parquet"]``) run by the daemon on a clock
    (``cron``), on a deployment's health (``on``), or both. Paths in the command are relative
    to the server's root and must stay inside it."""

    name: str
    command: list[str] = Field(min_length=1)
    cron: str | None = None
    tz: str | None = None
    catch_up: str = "latest"
    overlap: str = "skip"
    retries: int = Field(default=0, ge=0)
    on: str | None = None
    cooldown: str = "1h"
    replace: bool = False


def parse_body(model: type[Model], raw: bytes) -> Model:
    """The request body as ``model``; a 400 for a body that is not a JSON object and a 422
    naming the first field that does not fit."""
    try:
        data = json.loads(raw or b"null")
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ApiError(400, f"the request body is not JSON: {error}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise validation_error(error) from None


def validation_error(error: ValidationError) -> ApiError:
    first = error.errors()[0]
    field = ".".join(str(part) for part in first.get("loc", ())) or None
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    kind = first.get("type")
    if kind == "extra_forbidden":
        message = "unknown field"
    elif kind == "missing":
        message = "required"
    hint = None
    if len(error.errors()) > 1:
        hint = f"{len(error.errors()) - 1} more field(s) are invalid too"
    return ApiError(422, f"{field}: {message}" if field else message, field, hint)
