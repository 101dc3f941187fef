"""Schedules: nbdeploy commands (``run ...``, ``batch ...``) run by the daemon on a clock
(``cron``), on a deployment's health (``on``), or both.

The core API every face calls (CLI, magic, ``nbdeploy.schedules``, REST): each function
returns plain dicts. Changes go to the daemon (the only writer of table ``schedules``) over
its socket; reads go to the state store. See :mod:`nbdeploy.schedule.spec` for the options,
:mod:`nbdeploy.schedule.runner` for how fires run.
"""

from __future__ import annotations

import os
from typing import Any

DEFAULT_HISTORY = 50


def add(
    name: str,
    command: list[str] | str,
    *,
    cron: str | None = None,
    tz: str | None = None,
    catch_up: str = "latest",
    overlap: str = "skip",
    retries: int = 0,
    on: str | None = None,
    cooldown: str | float = "1h",
    replace: bool = False,
    cwd: str | None = None,
) -> dict[str, Any]:
    """Add a schedule (``replace``: replace one of that name). ``command`` is an nbdeploy
    command without ``nbdeploy`` (``["run", "train.ipynb", "-p", "epochs", "3"]`` or that
    text); relative paths in it are made absolute from ``cwd`` (default: the current
    folder)."""
    import shlex

    from nbdeploy.schedule.spec import build_spec, schedule_name

    words = shlex.split(command) if isinstance(command, str) else [str(w) for w in command]
    spec = build_spec(
        command=words,
        cron=cron,
        tz=tz,
        catch_up=catch_up,
        overlap=overlap,
        retries=retries,
        on=on,
        cooldown=cooldown,
        cwd=cwd or os.getcwd(),
    )
    return _ask("add", schedule_name(name), spec=spec.to_dict(), replace=bool(replace))


def list_schedules() -> list[dict[str, Any]]:
    """Every schedule: status (active/paused), last result, next fire time in its zone."""
    return [schedule.to_dict() for schedule in _store().all()]


def show(name: str) -> dict[str, Any]:
    """One schedule, with its last fires."""
    store = _store()
    return {**store.get(name).to_dict(), "history": store.history(name, 10)}


def pause(name: str) -> dict[str, Any]:
    """No more fires until resumed (a fire in progress finishes)."""
    return _ask("pause", name)


def resume(name: str) -> dict[str, Any]:
    """Fire again from the next fire time (times passed while paused are not caught up)."""
    return _ask("resume", name)


def remove(name: str) -> dict[str, Any]:
    """Remove a schedule; a fire in progress is stopped (recorded ``stopped``)."""
    return _ask("remove", name)


def run_now(name: str) -> dict[str, Any]:
    """Fire at once (the overlap policy applies): the fire's run id and status."""
    return _ask("run_now", name)


def history(name: str, limit: int = DEFAULT_HISTORY) -> list[dict[str, Any]]:
    """The schedule's fires, newest first: run_id, status, started_at, scheduled_for,
    finished_at, attempt, trigger, runs (ids of the runs its command made), log."""
    store = _store()
    store.get(name)
    return store.history(name, limit)


def _store() -> Any:
    """The schedules' store, for reading. While an active schedule exists a daemon must run
    them: one is started when none runs (after a reboot or ``nbdeploy daemon stop``, any
    schedule command brings the schedules back, missed fires caught up by policy)."""
    from nbdeploy.schedule.store import ACTIVE, ScheduleStore
    from nbdeploy.store import default_store

    store = ScheduleStore(default_store())
    if any(schedule.status == ACTIVE for schedule in store.all()):
        from nbdeploy.deployment.runtime import client

        if not client.in_daemon():
            client.ensure()
    return store


def _ask(action: str, name: str, **fields: Any) -> dict[str, Any]:
    from nbdeploy.schedule.client import request

    return request(action, name, **fields)


class Schedules:
    """``nbdeploy.schedules``: the schedule functions for Python (``nbdeploy.schedules.add(
    "nightly", ["run", "train.ipynb"], cron="0 2 * * *")``, ``.list()``, ``.pause(name)``,
    ``.resume(name)``, ``.remove(name)``, ``.run_now(name)``, ``.history(name)``)."""

    add = staticmethod(add)
    list = staticmethod(list_schedules)
    show = staticmethod(show)
    pause = staticmethod(pause)
    resume = staticmethod(resume)
    remove = staticmethod(remove)
    run_now = staticmethod(run_now)
    history = staticmethod(history)

    def __repr__(self) -> str:
        return "<nbdeploy.schedules: add, list, show, pause, resume, remove, run_now, history>"
