"""Schedules and their fires in the state store.

Table ``schedules`` (one row per schedule, written by the daemon only) holds the spec and
what the daemon knows of it: active or paused, the last fire and its result, the next fire
time. Every fire is a run record of kind ``schedule`` (``step`` = the schedule's name); the
runs its command made carry the fire's id as ``trigger_id``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from nbdeploy.schedule.spec import ScheduleNotFoundError, ScheduleSpec
from nbdeploy.store import StateStore
from nbdeploy.store.runs import RUNNING, RunRecord, RunStore

ACTIVE, PAUSED = "active", "paused"
SKIPPED, REPLACED, STOPPED = "skipped", "replaced", "stopped"
KIND = "schedule"


@dataclass
class Schedule:
    name: str
    spec: ScheduleSpec
    status: str
    created_at: float
    updated_at: float
    last_fire_at: float | None
    next_fire_at: float | None
    last_status: str | None
    last_error: str | None
    last_triggered_at: float | None

    @property
    def failing(self) -> bool:
        return self.last_status in ("failed", "interrupted")

    def to_dict(self) -> dict[str, Any]:
        from nbdeploy.schedule.timing import local_text

        return {
            "name": self.name,
            "status": self.status,
            "spec": self.spec.to_dict(),
            "command": self.spec.command_text,
            "cron": self.spec.cron,
            "tz": self.spec.tz,
            "on": self.spec.on,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "last_fire_at": self.last_fire_at,
            "next_fire_at": self.next_fire_at if self.status == ACTIVE else None,
            "next_fire": local_text(self.next_fire_at, self.spec.tz)
            if self.status == ACTIVE and self.next_fire_at
            else None,
            "last_status": self.last_status,
            "last_error": self.last_error,
            "last_triggered_at": self.last_triggered_at,
            "failing": self.failing,
        }


class ScheduleStore:
    def __init__(self, store: StateStore) -> None:
        self.store = store
        self.runs = RunStore(store)

    # -- schedules -----------------------------------------------------------------------
    def find(self, name: str) -> Schedule | None:
        row = (
            self.store.connection()
            .execute("SELECT * FROM schedules WHERE name = ?", (name,))
            .fetchone()
        )
        return _schedule(row) if row else None

    def get(self, name: str) -> Schedule:
        found = self.find(name)
        if found is None:
            raise ScheduleNotFoundError(
                f"no schedule named {name!r}", "list them with `nbdeploy schedule list`"
            )
        return found

    def all(self) -> list[Schedule]:
        rows = self.store.connection().execute("SELECT * FROM schedules ORDER BY name").fetchall()
        return [_schedule(row) for row in rows]

    def put(self, name: str, spec: ScheduleSpec, next_fire_at: float | None) -> Schedule:
        """Create the schedule, or replace its spec (a replaced schedule starts afresh)."""
        now = time.time()
        with self.store.transaction() as conn:
            conn.execute("DELETE FROM schedules WHERE name = ?", (name,))
            conn.execute(
                "INSERT INTO schedules (name, spec, status, created_at, updated_at, "
                "next_fire_at) VALUES (?, ?, ?, ?, ?, ?)",
                (name, json.dumps(spec.to_dict()), ACTIVE, now, now, next_fire_at),
            )
        return self.get(name)

    def update(self, name: str, **fields: Any) -> None:
        allowed = {
            "status",
            "last_fire_at",
            "next_fire_at",
            "last_status",
            "last_error",
            "last_triggered_at",
        }
        assert set(fields) <= allowed, fields
        if not fields:
            return
        columns = ", ".join(f"{column} = ?" for column in fields)
        with self.store.transaction() as conn:
            conn.execute(
                f"UPDATE schedules SET {columns}, updated_at = ? WHERE name = ?",
                (*fields.values(), time.time(), name),
            )

    def delete(self, name: str) -> None:
        with self.store.transaction() as conn:
            conn.execute("DELETE FROM schedules WHERE name = ?", (name,))

    # -- fires ---------------------------------------------------------------------------
    def create_fire(
        self, name: str, spec: ScheduleSpec, parameters: dict[str, Any], run_id: str
    ) -> RunRecord:
        return self.runs.create(
            spec.command_text,
            parameters,
            step=name,
            kind=KIND,
            run_id=run_id,
        )

    def set_fire_owner(self, run_id: str, pid: int, create_time: float | None) -> None:
        """The fire is run by the process the daemon started for it (which records its
        own end), not by the daemon."""
        with self.store.transaction() as conn:
            conn.execute(
                "UPDATE runs SET pid = ?, pid_create_time = ? WHERE id = ?",
                (pid, create_time, run_id),
            )

    def end_fire(
        self, run_id: str, status: str, error: dict[str, Any] | None, *, force: bool = False
    ) -> bool:
        """End a fire that is still running (or was settled as interrupted while its
        process still ran); ``force`` for an end the daemon decided (replaced, stopped)."""
        statuses = ("running", "interrupted") if not force else ("running",)
        marks = ",".join("?" * len(statuses))
        with self.store.transaction() as conn:
            cursor = conn.execute(
                f"UPDATE runs SET status = ?, error = ?, finished_at = ? "
                f"WHERE id = ? AND kind = ? AND status IN ({marks})",
                (
                    status,
                    json.dumps(error, default=str) if error else None,
                    time.time(),
                    run_id,
                    KIND,
                    *statuses,
                ),
            )
            return cursor.rowcount > 0

    def fire(self, run_id: str) -> RunRecord:
        return self.runs.get(run_id)

    def fires(self, name: str, limit: int = 50) -> list[RunRecord]:
        """The schedule's fires, newest first."""
        rows = (
            self.store.connection()
            .execute(
                "SELECT id FROM runs WHERE kind = ? AND step = ? "
                "ORDER BY created_at DESC, id DESC LIMIT ?",
                (KIND, name, limit),
            )
            .fetchall()
        )
        return [self.runs.get(row["id"]) for row in rows]

    def running_fires(self) -> list[RunRecord]:
        rows = (
            self.store.connection()
            .execute("SELECT id FROM runs WHERE kind = ? AND status = ?", (KIND, RUNNING))
            .fetchall()
        )
        return [self.runs.get(row["id"]) for row in rows]

    def runs_of(self, fire_id: str) -> list[str]:
        """The ids of the runs a fire's command made."""
        rows = (
            self.store.connection()
            .execute("SELECT id FROM runs WHERE trigger_id = ? ORDER BY created_at, id", (fire_id,))
            .fetchall()
        )
        return [row["id"] for row in rows]

    def history(self, name: str, limit: int = 50) -> list[dict[str, Any]]:
        """The schedule's fires as ``history --json`` shows them, newest first."""
        entries = []
        for fire in self.fires(name, limit):
            parameters = fire.parameters or {}
            error = fire.error or {}
            entries.append(
                {
                    "run_id": fire.id,
                    "status": fire.status,
                    "started_at": fire.started_at,
                    "finished_at": fire.finished_at,
                    "scheduled_for": parameters.get("scheduled_for"),
                    "attempt": parameters.get("attempt", 1),
                    "trigger": parameters.get("trigger"),
                    "runs": self.runs_of(fire.id),
                    "log": parameters.get("log"),
                    "exit_code": error.get("exit_code"),
                    "error": error.get("message"),
                    "log_tail": error.get("log_tail"),
                    "command": fire.notebook,
                }
            )
        return entries


def _schedule(row: Any) -> Schedule:
    return Schedule(
        name=row["name"],
        spec=ScheduleSpec.from_dict(json.loads(row["spec"])),
        status=row["status"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        last_fire_at=row["last_fire_at"],
        next_fire_at=row["next_fire_at"],
        last_status=row["last_status"],
        last_error=row["last_error"],
        last_triggered_at=row["last_triggered_at"],
    )
