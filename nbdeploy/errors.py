"""Errors a user can meet: each says what was wrong, where, and what to do.

Faces (CLI, magic, REST) print ``str(error)`` for these and never a traceback.
"""

from __future__ import annotations


class NbdeployError(Exception):
    """Base class of every error nbdeploy reports to a user.

    ``message`` says what was wrong and where; ``hint`` says what to do about it.
    """

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if not hint else f"{message}\n  hint: {hint}")


class NotebookError(NbdeployError):
    """A notebook file is missing, unreadable or not a notebook."""


class ParameterError(NbdeployError):
    """A parameter value does not fit the notebook's parameters cell."""


class KernelNotFoundError(NbdeployError):
    """The requested Jupyter kernel is not installed."""


class PipelineSpecError(NbdeployError):
    """A pipeline.yaml file is malformed."""


class StoreError(NbdeployError):
    """The state store cannot be opened or migrated."""


class RunNotFoundError(NbdeployError):
    """No run has the given id."""


class RunFailedError(NbdeployError):
    """A notebook run ended in a failed cell or a timeout (exit code 1)."""

    exit_code = 1


class DeployError(NbdeployError):
    """A deploy did not complete; the previous version (if any) is still serving."""

    exit_code = 1
