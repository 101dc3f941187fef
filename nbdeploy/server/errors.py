"""Errors of the REST API: each becomes ``{"error", "field", "hint"}`` with its status.

An :class:`ApiError` carries the HTTP status and the request field it is about; the core's
:class:`~nbdeploy.errors.NbdeployError` messages are already written for users and keep
their hint (see :func:`from_nbdeploy_error`).
"""

from __future__ import annotations

from typing import Any

from nbdeploy.errors import NbdeployError


class ApiError(Exception):
    """A request the API refuses (4xx), or could not answer (5xx, with the reason):
    ``status``, ``message``, the ``field`` it is about."""

    def __init__(
        self, status: int, message: str, field: str | None = None, hint: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.hint = hint

    def to_dict(self) -> dict[str, Any]:
        return {"error": self.message, "field": self.field, "hint": self.hint}


# Core errors that mean "no such thing" (by class name: the classes live in modules the
# server does not import until a request needs them).
_NOT_FOUND = {"DeploymentNotFoundError", "RunNotFoundError", "ScheduleNotFoundError"}
_INVALID = {"ParameterError", "MetricsError", "ServiceDefinitionError", "ScheduleError"}


def from_nbdeploy_error(error: NbdeployError, field: str | None = None) -> ApiError:
    """The API error for a core error: 404 for an unknown deployment or run, 422 for a value
    that does not fit (a parameter, a window), 409 for a state that forbids it (a deploy
    error: no running version, nothing to roll back to), 400 otherwise."""
    kinds = {klass.__name__ for klass in type(error).__mro__}
    if kinds & _NOT_FOUND:
        status = 404
    elif kinds & _INVALID:
        status = 422
    elif "DeployError" in kinds:
        status = 409
    else:
        status = 400
    return ApiError(status, error.message, field, error.hint)
