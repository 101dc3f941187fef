"""Run records: one row per notebook run, with metrics, logged parameters and artifacts.

Sweeps and pipelines are *groups* of runs. A pipeline step's ``fingerprint`` (notebook
source, parameters, upstream outputs) is what the step cache looks up.

A run records the process that runs it (pid, the process's creation time, host). When runs
are read, a run still marked running whose process is gone (killed, crashed, or its pid now
belongs to another process) is settled as interrupted and saved, so no run stays "running"
forever. A metric logged as NaN or infinity is stored as missing (NULL).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from nbdeploy.errors import RunNotFoundError
from nbdeploy.numbers import finite_or_none
from nbdeploy.store import StateStore

RUNNING, SUCCEEDED, FAILED, CACHED = "running", "succeeded", "failed", "cached"
INTERRUPTED = "interrupted"
GONE_MESSAGE = "the process running it is gone"
# Creation times are derived from the boot time, which moves by whole seconds when the
# clock is corrected: allow some slack (a pid is not reused within seconds of its start).
START_TOLERANCE_S = 5.0

Metric = tuple[str, float | None, int]  # name, value (None: missing), step


@dataclass(frozen=True)
class Owner:
    """The process running a run: pid, creation time (psutil) and host name."""

    pid: int
    create_time: float | None
    host: str


_owners: dict[int, Owner] = {}


def current_owner() -> Owner:
    """This process, as recorded in the runs it starts."""
    pid = os.getpid()  # looked up per pid: a forked child is another owner
    if pid not in _owners:
        import psutil

        try:
            create_time: float | None = psutil.Process(pid).create_time()
        except psutil.Error:
            create_time = None
        _owners[pid] = Owner(pid, create_time, socket.gethostname())
    return _owners[pid]


def owner_is_gone(pid: int | None, create_time: float | None, host: str | None) -> bool:
    """True when the process that ran a run has exited (a zombie counts as exited) or its
    pid now belongs to another process. False when it cannot be told: no pid recorded,
    another host, or a process we may not inspect."""
    if pid is None or (host and host != socket.gethostname()):
        return False
    import psutil

    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return True
        if create_time is not None:
            return abs(process.create_time() - create_time) > START_TOLERANCE_S
    except psutil.NoSuchProcess:  # ZombieProcess included
        return True
    except psutil.Error:  # AccessDenied: not ours to judge
        return False
    return False


TRIGGER_ENV = "NBDEPLOY_TRIGGER_RUN"  # set by the daemon for the command a schedule runs


def trigger_from_environment() -> str | None:
    """The run (a schedule's fire) that started this process's runs, if any."""
    return os.environ.get(TRIGGER_ENV) or None


def new_id() -> str:
    """A short, sortable, unique id: ``YYMMDD-HHMMSS-xxxxxxxx``."""
    return time.strftime("%y%m%d-%H%M%S") + "-" + secrets.token_hex(4)


@dataclass
class RunRecord:
    id: str
    notebook: str
    parameters: dict[str, Any]
    status: str
    created_at: float
    kernel: str | None = None
    output_path: str | None = None
    error: dict[str, Any] | None = None
    started_at: float | None = None
    finished_at: float | None = None
    mlflow_run_id: str | None = None
    group_id: str | None = None
    step: str | None = None
    fingerprint: str | None = None
    outputs: dict[str, Any] = field(default_factory=dict)
    deployed: list[dict[str, Any]] = field(default_factory=list)  # by its %deploy lines
    metrics: dict[str, float | None] = field(default_factory=dict)
    logged_params: dict[str, Any] = field(default_factory=dict)
    artifacts: list[str] = field(default_factory=list)
    pid: int | None = None
    pid_create_time: float | None = None
    host: str | None = None
    kind: str = "notebook"  # or "batch" (nbdeploy batch), "schedule" (a schedule's fire)
    trigger_id: str | None = None  # the run that started this one (a schedule's fire)

    @property
    def duration_s(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return round(self.finished_at - self.started_at, 3)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["duration_s"] = self.duration_s
        return data


@dataclass
class RunGroup:
    id: str
    kind: str
    source: str
    status: str
    created_at: float
    spec: dict[str, Any] = field(default_factory=dict)
    finished_at: float | None = None


class RunStore:
    """Create, update and query run records in a :class:`StateStore`."""

    def __init__(self, store: StateStore) -> None:
        self.store = store

    # -- writes ------------------------------------------------------------------------
    def create(
        self,
        notebook: str,
        parameters: dict[str, Any],
        *,
        kernel: str | None = None,
        output_path: str | None = None,
        group_id: str | None = None,
        step: str | None = None,
        fingerprint: str | None = None,
        status: str = RUNNING,
        run_id: str | None = None,
        owner: Owner | None = None,
        kind: str = "notebook",
        trigger_id: str | None = None,
    ) -> RunRecord:
        """Record a new run, owned by ``owner`` (default: this process)."""
        now = time.time()
        owner = owner or current_owner()
        record = RunRecord(
            id=run_id or new_id(),
            notebook=notebook,
            parameters=parameters,
            status=status,
            created_at=now,
            started_at=now,
            kernel=kernel,
            output_path=output_path,
            group_id=group_id,
            step=step,
            fingerprint=fingerprint,
            pid=owner.pid,
            pid_create_time=owner.create_time,
            host=owner.host,
            kind=kind,
            trigger_id=trigger_id if trigger_id is not None else trigger_from_environment(),
        )
        with self.store.transaction() as conn:
            conn.execute(
                "INSERT INTO runs (id, notebook, parameters, status, kernel, output_path, "
                "created_at, started_at, group_id, step, fingerprint, pid, pid_create_time, "
                "host, kind, trigger_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.id,
                    notebook,
                    _dumps(parameters),
                    status,
                    kernel,
                    output_path,
                    now,
                    now,
                    group_id,
                    step,
                    fingerprint,
                    owner.pid,
                    owner.create_time,
                    owner.host,
                    record.kind,
                    record.trigger_id,
                ),
            )
        return record

    def finish(
        self,
        run_id: str,
        status: str,
        *,
        error: dict[str, Any] | None = None,
        metrics: list[Metric] | None = None,
        logged_params: dict[str, Any] | None = None,
        artifacts: list[str] | None = None,
        outputs: dict[str, Any] | None = None,
        kernel: str | None = None,
        deployed: list[dict[str, Any]] | None = None,
    ) -> None:
        """Record a run's end and everything it logged, in one transaction. A metric value
        that is not a finite number is stored as missing (NULL)."""
        now = time.time()
        with self.store.transaction() as conn:
            conn.execute(
                "UPDATE runs SET status = ?, error = ?, finished_at = ?, outputs = ?, "
                "kernel = COALESCE(?, kernel), deployed = ? WHERE id = ?",
                (
                    status,
                    _dumps(error) if error else None,
                    now,
                    _dumps(outputs or {}),
                    kernel,
                    _dumps(deployed or []),
                    run_id,
                ),
            )
            conn.executemany(
                "INSERT INTO run_metrics (run_id, name, value, step, logged_at) "
                "VALUES (?, ?, ?, ?, ?)",
                [
                    (run_id, name, finite_or_none(value), step, now)
                    for name, value, step in metrics or []
                ],
            )
            conn.executemany(
                "INSERT OR REPLACE INTO run_params (run_id, name, value) VALUES (?, ?, ?)",
                [(run_id, name, _dumps(value)) for name, value in (logged_params or {}).items()],
            )
            conn.executemany(
                "INSERT OR IGNORE INTO run_artifacts (run_id, path) VALUES (?, ?)",
                [(run_id, path) for path in artifacts or []],
            )

    def end_if_running(
        self,
        run_id: str,
        status: str,
        error: dict[str, Any],
        *,
        finished_at: float | None = None,
    ) -> bool:
        """End a run that stopped abruptly (interrupted, or its runner failed), unless it
        has already ended; True if it was still running. ``finished_at`` None: unknown."""
        with self.store.transaction() as conn:
            cursor = conn.execute(
                "UPDATE runs SET status = ?, error = ?, finished_at = ? "
                "WHERE id = ? AND status = ?",
                (status, _dumps(error), finished_at, run_id, RUNNING),
            )
            return cursor.rowcount > 0

    def set_mlflow_run(self, run_id: str, mlflow_run_id: str) -> None:
        with self.store.transaction() as conn:
            conn.execute("UPDATE runs SET mlflow_run_id = ? WHERE id = ?", (mlflow_run_id, run_id))

    def create_group(self, kind: str, source: str, spec: dict[str, Any]) -> RunGroup:
        group = RunGroup(
            id=new_id(), kind=kind, source=source, status=RUNNING, created_at=time.time(), spec=spec
        )
        with self.store.transaction() as conn:
            conn.execute(
                "INSERT INTO run_groups (id, kind, source, spec, status, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (group.id, kind, source, _dumps(spec), group.status, group.created_at),
            )
        return group

    def finish_group(self, group_id: str, status: str) -> None:
        with self.store.transaction() as conn:
            conn.execute(
                "UPDATE run_groups SET status = ?, finished_at = ? WHERE id = ?",
                (status, time.time(), group_id),
            )

    # -- reads -------------------------------------------------------------------------
    def get(self, run_id: str) -> RunRecord:
        """One run by id or by a unique prefix of its id."""
        conn = self.store.connection()
        rows = conn.execute(
            "SELECT * FROM runs WHERE id = ? OR id LIKE ? ESCAPE '\\' ORDER BY id LIMIT 2",
            (run_id, _like_prefix(run_id)),
        ).fetchall()
        exact = [row for row in rows if row["id"] == run_id]
        if exact:
            rows = exact
        if not rows:
            raise RunNotFoundError(
                f"no run with id {run_id!r}", "list the runs with `nbdeploy runs`"
            )
        if len(rows) > 1:
            raise RunNotFoundError(
                f"the id prefix {run_id!r} matches several runs", "give more characters of the id"
            )
        return self._settle(self._hydrate([rows[0]]))[0]

    def recent(self, limit: int = 50, group_id: str | None = None) -> list[RunRecord]:
        conn = self.store.connection()
        if group_id is not None:
            rows = conn.execute(
                "SELECT * FROM runs WHERE group_id = ? ORDER BY created_at, id", (group_id,)
            ).fetchall()
        else:
            rows = conn.execute(
                "SELECT * FROM runs ORDER BY created_at DESC, id DESC LIMIT ?", (limit,)
            ).fetchall()
        return self._settle(self._hydrate(rows))

    def _settle(self, records: list[RunRecord]) -> list[RunRecord]:
        """Settle runs shown running whose process is gone as interrupted (and save that)."""
        settled = []
        for record in records:
            if record.status == RUNNING and owner_is_gone(
                record.pid, record.pid_create_time, record.host
            ):
                error = {
                    "kind": INTERRUPTED,
                    "message": f"{GONE_MESSAGE} (pid {record.pid}: killed or crashed); "
                    "the output notebook has what was saved until then",
                }
                try:
                    self.end_if_running(record.id, INTERRUPTED, error)
                except sqlite3.Error:  # a read-only store: show it settled all the same
                    record.status, record.error = INTERRUPTED, error
                else:  # read it back: another process may have settled it first
                    row = (
                        self.store.connection()
                        .execute("SELECT * FROM runs WHERE id = ?", (record.id,))
                        .fetchone()
                    )
                    record = self._hydrate([row])[0]
            settled.append(record)
        return settled

    def latest_success(self, fingerprint: str) -> RunRecord | None:
        """The newest successful run with this fingerprint (the step cache)."""
        row = (
            self.store.connection()
            .execute(
                "SELECT * FROM runs WHERE fingerprint = ? AND status = ? "
                "ORDER BY finished_at DESC LIMIT 1",
                (fingerprint, SUCCEEDED),
            )
            .fetchone()
        )
        return self._hydrate([row])[0] if row else None

    def _hydrate(self, rows: list[Any]) -> list[RunRecord]:
        if not rows:
            return []
        conn = self.store.connection()
        ids = [row["id"] for row in rows]
        marks = ",".join("?" * len(ids))
        metrics: dict[str, dict[str, float | None]] = {run_id: {} for run_id in ids}
        # A run's value for a metric is the one logged at the highest step, the last one
        # logged among equal steps (as MLflow shows a metric's latest value).
        for m in conn.execute(
            f"SELECT run_id, name, value FROM run_metrics WHERE run_id IN ({marks}) "
            "ORDER BY step, rowid",
            ids,
        ):
            metrics[m["run_id"]][m["name"]] = m["value"]
        params: dict[str, dict[str, Any]] = {run_id: {} for run_id in ids}
        for p in conn.execute(
            f"SELECT run_id, name, value FROM run_params WHERE run_id IN ({marks})", ids
        ):
            params[p["run_id"]][p["name"]] = json.loads(p["value"])
        artifacts: dict[str, list[str]] = {run_id: [] for run_id in ids}
        for a in conn.execute(
            f"SELECT run_id, path FROM run_artifacts WHERE run_id IN ({marks}) ORDER BY path", ids
        ):
            artifacts[a["run_id"]].append(a["path"])
        records = []
        for row in rows:
            keys = row.keys()
            records.append(
                RunRecord(
                    id=row["id"],
                    notebook=row["notebook"],
                    parameters=json.loads(row["parameters"]),
                    status=row["status"],
                    created_at=row["created_at"],
                    kernel=row["kernel"],
                    output_path=row["output_path"],
                    error=json.loads(row["error"]) if row["error"] else None,
                    started_at=row["started_at"],
                    finished_at=row["finished_at"],
                    mlflow_run_id=row["mlflow_run_id"],
                    group_id=row["group_id"] if "group_id" in keys else None,
                    step=row["step"] if "step" in keys else None,
                    fingerprint=row["fingerprint"] if "fingerprint" in keys else None,
                    outputs=json.loads(row["outputs"]) if "outputs" in keys else {},
                    deployed=json.loads(row["deployed"]) if "deployed" in keys else [],
                    metrics=metrics[row["id"]],
                    logged_params=params[row["id"]],
                    artifacts=artifacts[row["id"]],
                    pid=row["pid"] if "pid" in keys else None,
                    pid_create_time=row["pid_create_time"] if "pid" in keys else None,
                    host=row["host"] if "pid" in keys else None,
                    kind=row["kind"] if "kind" in keys else "notebook",
                    trigger_id=row["trigger_id"] if "trigger_id" in keys else None,
                )
            )
        return records


def _dumps(value: Any) -> str:
    return json.dumps(value, default=str, sort_keys=True)


def _like_prefix(prefix: str) -> str:
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"
