"""Deployments, versions and server processes in the state store.

A *deployment* is a name with a stable address (host and port) and a live version; a
*version* is one immutable build (content hash, bento tag, requirements, schema, the
generated code); a *server* is one process serving a version. Only the daemon writes
here: it records what runs (it waits for its children and records their deaths), and the
versions clients build (:func:`nbdeploy.deployment.runtime.client.record`). A read shows a
server whose process is already gone as ``down`` before the daemon has recorded it, never
as running. (Containers of ``nbdeploy image run`` are still recorded by the client that
starts them.)
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nbdeploy.deployment.runtime.processes import http_url, is_running, kill_marked, tail
from nbdeploy.errors import NbdeployError
from nbdeploy.store import StateStore

SERVING, STOPPED, FAILED = "serving", "stopped", "failed"
READY, STARTING = "ready", "starting"
DOWN = "down"  # seen by a read: the process is gone, the daemon has not recorded it yet
# Roles of a deployment's servers: its router (the stable address; version 0), the version
# taking traffic, the one before it kept warm for an instant rollback, one started but not
# yet routed, and a start that failed.
ROUTER, LIVE, STANDBY, CANDIDATE = "router", "live", "standby", "candidate"
# A container of a version's image (nbdeploy image run), beside the local processes: it has
# its own address and takes no traffic from the router.
CONTAINER = "container"
FAILED_START = "failed-start"


class DeploymentNotFoundError(NbdeployError):
    """No deployment (or version) with that name."""


@dataclass
class Version:
    deployment: str
    version: int
    content_hash: str
    bento_tag: str
    function: str
    service_dir: str
    created_at: float
    source: dict[str, Any] = field(default_factory=dict)
    requirements: list[str] = field(default_factory=list)
    schema: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    reference_path: str | None = None
    mlflow_version: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Server:
    id: int
    deployment: str
    version: int
    pid: int | None
    start_ticks: int | None
    host: str
    port: int
    role: str
    status: str
    log_path: str
    started_at: float
    stopped_at: float | None = None
    error: str | None = None
    container: str | None = None  # the engine's id, for a server that is a container

    @property
    def url(self) -> str:
        return http_url(self.host, self.port)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["url"] = self.url
        return data


@dataclass
class Deployment:
    name: str
    host: str
    port: int
    strategy: str
    live_version: int | None
    status: str
    created_at: float
    updated_at: float
    servers: list[Server] = field(default_factory=list)
    # The version whose answers the deployment's address returns now: the live one, or the
    # warm standby the router fails over to while the live one restarts (None: not serving).
    answering_version: int | None = None

    @property
    def url(self) -> str:
        return http_url(self.host, self.port)

    def observe(self) -> Deployment:
        """Mark the servers whose process is gone as ``down`` and tell which version answers
        (a read of /proc: nothing is changed or signalled)."""
        for server in self.servers:
            if (
                server.pid
                and not server.container
                and server.status in (READY, STARTING)
                and not is_running(server.pid, server.start_ticks)
            ):
                server.status = DOWN
        self.answering_version = None
        if self.status == SERVING:
            up = {s.role: s.version for s in self.servers if s.status == READY}
            # The live version down or starting again: the router fails over to a standby.
            self.answering_version = up.get(LIVE) or up.get(STANDBY) or self.live_version
        return self

    @property
    def recovering(self) -> bool:
        """A process of the deployment is down or starting again (after :meth:`observe`)."""
        return self.status == SERVING and any(
            s.status == DOWN or (s.role in (ROUTER, LIVE) and s.status == STARTING)
            for s in self.servers
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["url"] = self.url
        data["servers"] = [server.to_dict() for server in self.servers]
        data["recovering"] = self.recovering
        return data


class DeploymentStore:
    def __init__(self, store: StateStore) -> None:
        self.store = store

    # -- deployments -------------------------------------------------------------------
    def get(self, name: str) -> Deployment:
        row = (
            self.store.connection()
            .execute("SELECT * FROM deployments WHERE name = ?", (name,))
            .fetchone()
        )
        if row is None:
            known = [d.name for d in self.all()]
            raise DeploymentNotFoundError(
                f"no deployment named {name!r}",
                ("deployments: " + ", ".join(known))
                if known
                else "deploy one with %deploy FUNCTION",
            )
        return self._deployment(row)

    def find(self, name: str) -> Deployment | None:
        try:
            return self.get(name)
        except DeploymentNotFoundError:
            return None

    def all(self) -> list[Deployment]:
        """Every deployment with its active servers, in two queries (a list of hundreds of
        deployments must stay fast). A read: what died is the daemon's to record."""
        rows = self._deployment_rows()
        servers = self._active_servers_by_deployment()
        return [self._deployment(row, servers.get(row["name"], [])) for row in rows]

    def _deployment_rows(self) -> list[Any]:
        return self.store.connection().execute("SELECT * FROM deployments ORDER BY name").fetchall()

    def _active_servers_by_deployment(self) -> dict[str, list[Server]]:
        rows = (
            self.store.connection()
            .execute("SELECT * FROM servers WHERE status IN (?, ?) ORDER BY id", (READY, STARTING))
            .fetchall()
        )
        grouped: dict[str, list[Server]] = {}
        for row in rows:
            grouped.setdefault(row["deployment"], []).append(self._server(row))
        return grouped

    def ensure(self, name: str, host: str, port: int) -> Deployment:
        """The deployment's row, created (stopped, no version yet) when new."""
        now = time.time()
        with self.store.transaction() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO deployments "
                "(name, host, port, status, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
                (name, host, port, STOPPED, now, now),
            )
        return self.get(name)

    def set_state(
        self,
        name: str,
        *,
        status: str,
        live_version: int | None,
        host: str | None = None,
        port: int | None = None,
        strategy: str | None = None,
    ) -> None:
        with self.store.transaction() as conn:
            conn.execute(
                "UPDATE deployments SET status = ?, live_version = ?, host = COALESCE(?, host), "
                "port = COALESCE(?, port), strategy = COALESCE(?, strategy), updated_at = ? "
                "WHERE name = ?",
                (status, live_version, host, port, strategy, time.time(), name),
            )

    # -- versions ----------------------------------------------------------------------
    def add_version(self, version: Version) -> Version:
        """Insert ``version`` with the next number for its deployment (``version.version`` is
        ignored and set)."""
        with self.store.transaction() as conn:
            row = conn.execute(
                "SELECT COALESCE(MAX(version), 0) + 1 FROM versions WHERE deployment = ?",
                (version.deployment,),
            ).fetchone()
            version.version = int(row[0])
            conn.execute(
                "INSERT INTO versions (deployment, version, content_hash, bento_tag, function, "
                "source, requirements, schema, options, service_dir, reference_path, "
                "mlflow_version, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    version.deployment,
                    version.version,
                    version.content_hash,
                    version.bento_tag,
                    version.function,
                    json.dumps(version.source),
                    json.dumps(version.requirements),
                    json.dumps(version.schema),
                    json.dumps(version.options),
                    version.service_dir,
                    version.reference_path,
                    version.mlflow_version,
                    version.created_at,
                ),
            )
        return version

    def delete_version(self, name: str, version: int) -> None:
        """Forget a version (pruned: its build is gone)."""
        with self.store.transaction() as conn:
            conn.execute(
                "DELETE FROM versions WHERE deployment = ? AND version = ?", (name, version)
            )

    def delete_deployment(self, name: str) -> None:
        """Forget a deployment: its row, versions, servers and events (``nbdeploy delete``)."""
        with self.store.transaction() as conn:
            conn.execute("DELETE FROM events WHERE subject = ?", (name,))
            conn.execute("DELETE FROM servers WHERE deployment = ?", (name,))
            conn.execute("DELETE FROM versions WHERE deployment = ?", (name,))
            conn.execute("DELETE FROM deployments WHERE name = ?", (name,))

    def set_mlflow_version(self, name: str, version: int, mlflow_version: str) -> None:
        with self.store.transaction() as conn:
            conn.execute(
                "UPDATE versions SET mlflow_version = ? WHERE deployment = ? AND version = ?",
                (mlflow_version, name, version),
            )

    def version(self, name: str, number: int) -> Version:
        row = (
            self.store.connection()
            .execute("SELECT * FROM versions WHERE deployment = ? AND version = ?", (name, number))
            .fetchone()
        )
        if row is None:
            raise DeploymentNotFoundError(f"deployment {name!r} has no version {number}")
        return self._version(row)

    def versions(self, name: str) -> list[Version]:
        rows = (
            self.store.connection()
            .execute("SELECT * FROM versions WHERE deployment = ? ORDER BY version", (name,))
            .fetchall()
        )
        return [self._version(row) for row in rows]

    def version_with_hash(self, name: str, content_hash: str) -> Version | None:
        row = (
            self.store.connection()
            .execute(
                "SELECT * FROM versions WHERE deployment = ? AND content_hash = ? "
                "ORDER BY version DESC LIMIT 1",
                (name, content_hash),
            )
            .fetchone()
        )
        return self._version(row) if row else None

    # -- servers -----------------------------------------------------------------------
    def add_server(
        self,
        name: str,
        version: int,
        *,
        pid: int | None,
        start_ticks: int | None,
        host: str,
        port: int,
        log_path: str,
        role: str = "live",
        status: str = READY,
        started_at: float | None = None,
        container: str | None = None,
    ) -> Server:
        with self.store.transaction() as conn:
            cursor = conn.execute(
                "INSERT INTO servers (deployment, version, pid, start_ticks, host, port, role, "
                "status, log_path, started_at, container) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    name,
                    version,
                    pid,
                    start_ticks,
                    host,
                    port,
                    role,
                    status,
                    log_path,
                    started_at or time.time(),
                    container,
                ),
            )
            server_id = int(cursor.lastrowid or 0)
        return self.server(server_id)

    def server(self, server_id: int) -> Server:
        row = (
            self.store.connection()
            .execute("SELECT * FROM servers WHERE id = ?", (server_id,))
            .fetchone()
        )
        return self._server(row)

    def add_event(self, name: str, kind: str, **detail: Any) -> None:
        """Record what happened to deployment ``name`` (a switch, a rollback and why)."""
        with self.store.transaction() as connection:
            connection.execute(
                "INSERT INTO events (at, kind, subject, detail) VALUES (?, ?, ?, ?)",
                (time.time(), kind, f"deployment:{name}", json.dumps(detail, default=str)),
            )

    def events(self, name: str, limit: int = 20) -> list[dict[str, Any]]:
        """The deployment's latest events, newest first."""
        rows = (
            self.store.connection()
            .execute(
                "SELECT at, kind, detail FROM events WHERE subject = ? ORDER BY id DESC LIMIT ?",
                (f"deployment:{name}", limit),
            )
            .fetchall()
        )
        return [{"at": r["at"], "kind": r["kind"], **json.loads(r["detail"])} for r in rows]

    def set_role(self, server_id: int, role: str) -> None:
        with self.store.transaction() as connection:
            connection.execute("UPDATE servers SET role = ? WHERE id = ?", (role, server_id))

    def end_server(self, server_id: int, status: str, error: str | None = None) -> None:
        with self.store.transaction() as conn:
            conn.execute(
                "UPDATE servers SET status = ?, stopped_at = ?, error = COALESCE(?, error) "
                "WHERE id = ?",
                (status, time.time(), error, server_id),
            )

    def active_servers(self, name: str) -> list[Server]:
        rows = (
            self.store.connection()
            .execute(
                "SELECT * FROM servers WHERE deployment = ? AND status IN (?, ?) ORDER BY id",
                (name, READY, STARTING),
            )
            .fetchall()
        )
        return [self._server(row) for row in rows]

    def recent_servers(self, name: str, count: int) -> list[Server]:
        """The deployment's last ``count`` servers, newest first."""
        rows = (
            self.store.connection()
            .execute(
                "SELECT * FROM servers WHERE deployment = ? ORDER BY id DESC LIMIT ?",
                (name, count),
            )
            .fetchall()
        )
        return [self._server(row) for row in rows]

    def reconcile(self, name: str) -> Deployment:
        """Mark servers whose process is gone as failed (with their last log lines) and the
        deployment as failed when its live server is gone."""
        router_died = False
        for server in self.active_servers(name):
            if server.container:
                from nbdeploy.image import container

                gone = container.gone(server.container, Path(server.log_path))
                if gone is not None:
                    self.end_server(server.id, FAILED, gone)
                continue
            if is_running(server.pid, server.start_ticks):
                continue
            kill_marked(server.log_path)  # workers the dead process manager left behind
            if server.role == STANDBY:  # its keep-warm time was over: the router retired it
                self.end_server(server.id, STOPPED)
                continue
            router_died = router_died or server.role == ROUTER
            last_lines = "\n".join(tail(Path(server.log_path), 20))
            self.end_server(
                server.id, FAILED, f"the server process {server.pid} is gone\n{last_lines}"
            )
        deployment = self.get(name)
        live = [s for s in self.active_servers(name) if s.role == LIVE]
        if deployment.status == SERVING and (router_died or not live):
            self.set_state(name, status=FAILED, live_version=deployment.live_version)
            deployment = self.get(name)
        return deployment

    # -- rows to objects ---------------------------------------------------------------
    def _deployment(self, row: Any, servers: list[Server] | None = None) -> Deployment:
        return Deployment(
            name=row["name"],
            host=row["host"],
            port=row["port"],
            strategy=row["strategy"],
            live_version=row["live_version"],
            status=row["status"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            servers=self.active_servers(row["name"]) if servers is None else servers,
        )

    @staticmethod
    def _version(row: Any) -> Version:
        return Version(
            deployment=row["deployment"],
            version=row["version"],
            content_hash=row["content_hash"],
            bento_tag=row["bento_tag"],
            function=row["function"],
            service_dir=row["service_dir"],
            created_at=row["created_at"],
            source=json.loads(row["source"]),
            requirements=json.loads(row["requirements"]),
            schema=json.loads(row["schema"]),
            options=json.loads(row["options"]),
            reference_path=row["reference_path"],
            mlflow_version=row["mlflow_version"],
        )

    @staticmethod
    def _server(row: Any) -> Server:
        return Server(**{key: row[key] for key in row.keys()})  # noqa: SIM118 (sqlite3.Row)
