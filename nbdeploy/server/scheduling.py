"""The REST views of the batch half of deployment: schedules (``schedules/...``, thin calls
of :mod:`nbdeploy.schedule`) and batch jobs (``deployments/NAME/batch``, of
:mod:`nbdeploy.batching`).

A schedule made through the API runs its command in the server's root folder, and every
path its command names (a notebook, a pipeline.yaml, a batch job's input and output) must
stay inside that root: the check is made on the command as it is stored (paths the core
made absolute) before the daemon is asked. A batch job's input and output are checked the
same way before it starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nbdeploy.errors import NbdeployError
from nbdeploy.server.errors import ApiError, from_nbdeploy_error
from nbdeploy.server.models import BatchBody, ScheduleBody
from nbdeploy.server.operations import Operation, OperationFailed
from nbdeploy.server.paths import inside_root

SCHEDULE_ACTIONS = ("pause", "resume", "run-now", "remove")


def schedules() -> list[dict[str, Any]]:
    from nbdeploy import schedule

    return schedule.list_schedules()


def schedule_detail(name: str) -> dict[str, Any]:
    from nbdeploy import schedule

    return _core(lambda: schedule.show(name))


def schedule_history(name: str, limit: int) -> list[dict[str, Any]]:
    from nbdeploy import schedule

    history: list[dict[str, Any]] = _core(lambda: schedule.history(name, limit))
    return history


def add_schedule(body: ScheduleBody, root: Path) -> dict[str, Any]:
    """Check the command's paths against the root, then ask the daemon to add it."""
    from nbdeploy import schedule
    from nbdeploy.schedule.spec import build_spec

    options: dict[str, Any] = {
        "cron": body.cron,
        "tz": body.tz,
        "catch_up": body.catch_up,
        "overlap": body.overlap,
        "retries": body.retries,
        "on": body.on,
        "cooldown": body.cooldown,
    }
    spec = _core(lambda: build_spec(command=list(body.command), cwd=str(root), **options))
    check_command_paths(spec.command, root)
    answer: dict[str, Any] = _core(
        lambda: schedule.add(
            body.name, spec.command, cwd=str(root), replace=body.replace, **options
        )
    )
    return answer


def schedule_action(name: str, action: str) -> dict[str, Any]:
    from nbdeploy import schedule

    work = {
        "pause": schedule.pause,
        "resume": schedule.resume,
        "run-now": schedule.run_now,
        "remove": schedule.remove,
    }[action]
    answer: dict[str, Any] = _core(lambda: work(name))
    return answer


def check_command_paths(command: list[str], root: Path) -> None:
    """Every word of ``command`` that is (or reads as) a path, and every ``--option=PATH``
    value, must resolve inside ``root``: a 400 naming the word otherwise."""
    root = root.resolve()
    for word in command[1:]:
        value = word.partition("=")[2] if word.startswith("-") else word
        if not value or not _looks_like_path(value):
            continue
        target = Path(value).expanduser()
        resolved = (target if target.is_absolute() else root / target).resolve()
        if not resolved.is_relative_to(root):
            raise ApiError(
                400,
                f"the command names {value!r}, outside the server's root folder",
                "command",
                "give paths relative to the Jupyter server's root folder",
            )


def _looks_like_path(value: str) -> bool:
    return (
        "/" in value
        or value.startswith(("~", "."))
        or value.endswith(
            (".ipynb", ".yaml", ".yml", ".csv", ".parquet", ".pq", ".jsonl", ".ndjson", ".json")
        )
    )


def _core(work: Any) -> Any:
    """``work()``, with the core's errors as API errors (an unknown schedule: 404, a
    definition that does not hold: 422)."""
    try:
        return work()
    except NbdeployError as error:
        field = "name" if type(error).__name__ == "ScheduleNotFoundError" else None
        raise from_nbdeploy_error(error, field) from None


def check_batch(name: str, body: BatchBody, root: Path) -> dict[str, str]:
    """The batch job's paths, checked inside the root (the core checks the rest when the
    job starts, before any work)."""
    paths = {
        "input": str(inside_root(root, body.input, field="input")),
        "output": str(inside_root(root, body.output, field="output")),
    }
    if body.errors:
        paths["errors"] = str(inside_root(root, body.errors, field="errors"))
    from nbdeploy.deployment.store import DeploymentStore
    from nbdeploy.store import default_store

    _core(lambda: DeploymentStore(default_store()).get(name))
    return paths


def batch(name: str, body: BatchBody, paths: dict[str, str], operation: Operation) -> Any:
    """``nbdeploy batch --json`` as an operation: its progress in rows."""
    from nbdeploy import api

    def on_progress(done: int, total: int | None) -> None:
        operation.steps = total or max(done, 1)
        operation.step = done

    result = api.batch(
        name,
        paths["input"],
        paths["output"],
        errors=paths.get("errors"),
        version=body.version,
        keep=body.keep,
        features=body.features,
        max_error_share=body.max_error_share,
        mlflow=body.mlflow,
        on_progress=on_progress,
        notify=operation.say,
    )
    data = result.to_dict()
    if not result.ok:
        raise OperationFailed(data, result.message or "too many rows failed")
    return data
