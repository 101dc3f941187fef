"""How a new version takes a deployment's traffic: one module per strategy, all behind the
deployment's router, sharing the steps here (start a version on a loopback port of its own,
check it with a real request, route, stop what no longer serves).

Roles of a deployment's servers: ``router`` (its stable address), ``live`` (takes the
traffic), ``standby`` (the version before, kept warm for an instant rollback),
``candidate`` (started, not yet routed) and ``failed-start``.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nbdeploy.deployment import traffic
from nbdeploy.deployment.runtime.processes import LOOPBACK, free_port, start_server, stop_process
from nbdeploy.deployment.store import (
    CANDIDATE,
    FAILED,
    FAILED_START,
    LIVE,
    STANDBY,
    STOPPED,
    DeploymentStore,
    Server,
    Version,
)
from nbdeploy.deployment.traffic import upstream_secrets
from nbdeploy.errors import NbdeployError

Notify = Callable[[str], None]
__all__ = ["CANDIDATE", "LIVE", "STANDBY", "Rollout", "RolloutError", "retire_standby", "roll_out"]
READY_TIMEOUT_SECONDS = 120
SMOKE_TIMEOUT_SECONDS = 60
STARTUP_FAILURE_MARKERS = ("Application startup failed",)
SMOKE_REQUEST_ID = "nbdeploy-example-request"  # the check of a new version, before traffic
REQUESTS_DIR = "requests"  # in the deployment's folder: the request log's segments
REQUESTS_STATS_DIR = "requests-stats"  # its per-process counts


class RolloutError(NbdeployError):
    """The new version did not take over; what served before still serves."""

    exit_code = 1


class Cancelled(RolloutError):
    """The deploy's caller was interrupted before the new version took traffic."""

    exit_code = 130


@dataclass
class Rollout:
    """One switch of a deployment to ``version``."""

    deployments: DeploymentStore
    name: str
    version: Version
    host: str  # the router's address: the deployment's stable one
    port: int
    notify: Notify
    keep_warm: float
    steps: list[float] | None = None  # canary
    weight: float | None = None  # canary: the first step
    interval: float = 30.0  # canary: seconds per step
    wait: bool = False  # canary: run every step before returning
    sticky: dict[str, str] | None = None  # A/B: {"header": NAME} or {"field": NAME}
    env: dict[str, str] | None = None  # the servers' environment (default: this process's)
    cancelled: Callable[[], bool] = lambda: False  # the deploy's caller went away

    def servers(self, *roles: str) -> list[Server]:
        return [s for s in self.deployments.active_servers(self.name) if s.role in roles]

    def check_cancelled(self) -> None:
        """Raise :class:`Cancelled` when the caller cancelled (before traffic changes)."""
        if self.cancelled():
            raise Cancelled(f"the deploy of {self.name} v{self.version.version} was cancelled")


def start_version(rollout: Rollout, version: Version, role: str, port: int | None = None) -> Server:
    """Start ``version`` on a loopback port (``port``, else a free one: the router reaches
    it there); a start that fails is recorded (``nbdeploy logs`` shows it) and re-raised."""
    from nbdeploy.deployment.runtime.serving import spawner
    from nbdeploy.service.builder import bentoml_environment

    folder = traffic.folder(rollout.name)
    log_path = folder / "logs" / f"v{version.version}-{time.time_ns()}.log"
    # Every running server keeps its folder (a candidate's too); only stopped ones go.
    running = rollout.deployments.active_servers(rollout.name)
    _drop_stale_metrics(folder, {Path(s.log_path).stem for s in running})
    upstream_secrets.drop_stale(folder, {Path(s.log_path).stem for s in running})
    # A secret of this start's own: the version then answers its router only (a restart in
    # place on ``port`` keeps the one the router sends there). The spec names its file: the
    # spec may end up on a command line, which any local user can read.
    secret_file = upstream_secrets.secret_path(rollout.name, log_path)
    in_place = upstream_secrets.routed(rollout.name, LOOPBACK, port) if port else None
    upstream_secrets.create(secret_file, reuse=in_place)
    port = port or free_port(LOOPBACK)
    spec = {
        "bento_tag": version.bento_tag,
        "host": LOOPBACK,
        "port": port,
        "workers": int(version.options.get("workers") or 1),
        "metrics_dir": str(folder / "metrics" / log_path.stem),
        "version": version.version,
        # The service logs its requests here (nbdeploy.monitor.requests reads them); its
        # counts go apart, so that they are kept even when the log cannot be written.
        "request_log_dir": str(folder / REQUESTS_DIR),
        "request_log_stats_dir": str(folder / REQUESTS_STATS_DIR),
        "upstream_secret_file": str(secret_file),
    }
    rollout.notify(
        f"starting {rollout.name} v{version.version} behind {rollout.host}:{rollout.port}"
    )
    try:
        server = start_server(
            spawner(spec, folder, log_path),
            host=LOOPBACK,
            port=port,
            log_path=log_path,
            env={**(rollout.env or os.environ), **bentoml_environment()},
            cwd=folder,  # never the caller's folder: a version carries everything it runs
            timeout=READY_TIMEOUT_SECONDS,
            fail_markers=STARTUP_FAILURE_MARKERS,
            cancelled=rollout.cancelled,
        )
    except BaseException as error:
        secret_file.unlink(missing_ok=True)
        failed = rollout.deployments.add_server(
            rollout.name,
            version.version,
            pid=0,
            start_ticks=None,
            host=LOOPBACK,
            port=port,
            log_path=str(log_path),
            role=FAILED_START,
            status=FAILED,
        )
        rollout.deployments.end_server(failed.id, FAILED, str(error) or type(error).__name__)
        raise
    return rollout.deployments.add_server(
        rollout.name,
        version.version,
        pid=server.pid,
        start_ticks=server.start_ticks,
        host=LOOPBACK,
        port=port,
        log_path=str(log_path),
        started_at=server.started_at,
        role=role,
    )


def smoke_test(server: Server, version: Version) -> None:
    """A real request (the version's example) straight to the new server: it must answer
    2xx before it gets any traffic."""
    example = version.schema.get("example")
    route = version.schema.get("route")
    if not example or not route:
        return  # readiness is all there is to check
    request = urllib.request.Request(
        server.url + route,
        data=json.dumps(example).encode(),
        # Its row in the request log says what it was.
        headers={
            "Content-Type": "application/json",
            "X-Request-ID": SMOKE_REQUEST_ID,
            **upstream_secrets.headers(server),  # it is not the router
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=SMOKE_TIMEOUT_SECONDS) as answer:
            answer.read()
    except urllib.error.HTTPError as error:
        detail = error.read().decode(errors="replace")[:500]
        raise RolloutError(
            f"v{version.version} answered its example request with {error.code}: {detail}",
            "fix the function (nbdeploy logs NAME shows the server's log) and deploy again",
        ) from None
    except OSError as error:
        raise RolloutError(
            f"v{version.version} did not answer its example request: {error}"
        ) from None


def stop_server(rollout: Rollout, server: Server, status: str = STOPPED) -> None:
    if server.pid:
        stop_process(server.pid, server.start_ticks, marker=server.log_path)
    rollout.deployments.end_server(server.id, status)
    upstream_secrets.forget(server)


def retire_standby(rollout: Rollout) -> None:
    """Stop the warm standby: a canary or an experiment routes without it, and what it
    would roll back to is the live version, which keeps serving."""
    for server in rollout.servers(STANDBY):
        stop_server(rollout, server)


def target(server: Server) -> traffic.Target:
    return traffic.Target(
        traffic.version_key(server.version),
        server.host,
        server.port,
        secret=upstream_secrets.read(server),
    )


def route(rollout: Rollout, live: Server, standby: list[Server]) -> None:
    """All traffic to ``live``; ``standby`` stay reachable (no traffic) until their
    keep-warm time is over, when the router stops them."""
    until = time.time() + rollout.keep_warm
    traffic.route(
        rollout.deployments,
        rollout.name,
        rollout.host,
        rollout.port,
        upstreams={t.name: t for t in map(target, [live, *standby])},
        weights={traffic.version_key(live.version): 100},
        mode="split",
        shadow=None,
        sticky=None,
        standby={
            traffic.version_key(s.version): {
                "pid": s.pid,
                "start_ticks": s.start_ticks,
                "log": s.log_path,
                "until": until,
            }
            for s in standby
        },
        notify=rollout.notify,
    )


def _drop_stale_metrics(folder: Path, live: set[str]) -> None:
    """Prometheus files of servers that no longer run (each server has its own folder,
    named like its log)."""
    import shutil

    metrics = folder / "metrics"
    if metrics.is_dir():
        for stale in metrics.iterdir():
            if stale.name not in live:
                shutil.rmtree(stale, ignore_errors=True)


def roll_out(strategy: str, rollout: Rollout) -> int:
    """Switch the deployment to ``rollout.version`` with ``strategy``: the version that is
    live afterwards (a canary stays behind the stable version until it is promoted)."""
    from nbdeploy.deployment.traffic.strategies import bluegreen, canary, experiment, recreate

    strategies: dict[str, Callable[[Rollout], int]] = {
        "blue-green": bluegreen.roll_out,
        "recreate": recreate.roll_out,
        "canary": canary.roll_out,
        "ab": experiment.roll_out_ab,
        "shadow": experiment.roll_out_shadow,
    }
    if strategy not in strategies:
        raise RolloutError(
            f"--strategy {strategy}: unknown", "choose one of " + ", ".join(strategies)
        )
    return strategies[strategy](rollout)
