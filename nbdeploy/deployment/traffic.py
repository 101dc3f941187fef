"""The core's side of a deployment's router: its configuration, its process and its state.

The router (:mod:`nbdeploy.deployment.router`) listens on the deployment's stable address;
the versions listen on loopback ports of their own. Here the configuration is written
atomically, the router is told with SIGHUP and we wait until its state file reports the new
generation: when :func:`apply` returns, every new request follows the new split.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nbdeploy.deployment.router import CONFIG, LIVE_PATH, STATE
from nbdeploy.deployment.store import ROUTER, STOPPED, DeploymentStore, Server
from nbdeploy.deployment.supervisor import ServerStartError, is_running, start_server
from nbdeploy.deployment.versions import deployments_dir
from nbdeploy.errors import NbdeployError

APPLY_TIMEOUT_SECONDS = 10.0
DRAIN_TIMEOUT_SECONDS = 30.0


class RouterError(NbdeployError):
    """The router did not start or did not take a new configuration."""

    exit_code = 1


@dataclass(frozen=True)
class Target:
    """Where a version's server listens (behind the router)."""

    name: str  # "v3"
    host: str
    port: int


def version_key(number: int) -> str:
    return f"v{number}"


def folder(name: str) -> Path:
    return deployments_dir() / name


def read_config(name: str) -> dict[str, Any]:
    try:
        config: dict[str, Any] = json.loads((folder(name) / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return config


def read_state(name: str) -> dict[str, Any]:
    try:
        state: dict[str, Any] = json.loads((folder(name) / STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return state


def write_config(name: str, config: dict[str, Any]) -> None:
    path = folder(name) / CONFIG
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{CONFIG}.{os.getpid()}")
    temporary.write_text(json.dumps(config, indent=2), encoding="utf-8")
    os.chmod(temporary, 0o600)  # it may carry the hash of the API key
    os.replace(temporary, path)


def describe_split(name: str) -> str:
    """The traffic split as users read it: "v2", "v1 90% · v2 10%", "v1 · shadow v2"."""
    config = read_config(name)
    weights = {k: w for k, w in config.get("weights", {}).items() if w > 0}
    total = sum(weights.values())
    if not total:
        return "-"
    parts = [k if len(weights) == 1 else f"{k} {100 * w / total:g}%" for k, w in weights.items()]
    text = " · ".join(parts)
    if config.get("mode") == "ab":
        text += " (A/B)"
    shadow = config.get("shadow")
    if shadow:
        text += f" · shadow {shadow['version']}"
    return text


def router_server(deployments: DeploymentStore, name: str) -> Server | None:
    """The deployment's running router, if any."""
    for server in deployments.active_servers(name):
        if server.role == ROUTER and is_running(server.pid, server.start_ticks):
            return server
    return None


def route(
    deployments: DeploymentStore,
    name: str,
    host: str,
    port: int,
    *,
    upstreams: dict[str, Target],
    weights: dict[str, float],
    notify: Any = None,
    **settings: Any,
) -> dict[str, Any]:
    """Route ``name`` as told, and return when the router runs the new configuration.
    ``settings`` are further keys of the configuration (sticky, shadow, mode, standby,
    key_sha256); keys not given keep their values. The router is started when none runs,
    and moved when the deployment's address changed."""
    config = read_config(name)
    config.update(settings)
    config["listen"] = {"host": host, "port": port}
    config["upstreams"] = {k: {"host": t.host, "port": t.port} for k, t in upstreams.items()}
    config["weights"] = {k: float(w) for k, w in weights.items() if k in upstreams}
    config["generation"] = int(config.get("generation", 0)) + 1
    router = router_server(deployments, name)
    if router is not None and (router.host, router.port) != (host, port):
        if notify:
            notify(f"moving {name}'s address to {host}:{port}")
        stop_router(deployments, name, STOPPED)
        router = None
    write_config(name, config)
    if router is None:
        _start_router(deployments, name, host, port)
    elif router.pid:
        os.kill(router.pid, signal.SIGHUP)
    deadline = time.monotonic() + APPLY_TIMEOUT_SECONDS
    while read_state(name).get("generation", 0) < config["generation"]:
        if time.monotonic() > deadline:
            raise RouterError(f"the router of {name} did not take its new configuration")
        time.sleep(0.005)
    return config


def _start_router(deployments: DeploymentStore, name: str, host: str, port: int) -> Server:
    log_path = folder(name) / "logs" / f"router-{time.time_ns()}.log"
    try:
        server = start_server(
            [sys.executable, "-m", "nbdeploy.deployment.router", str(folder(name))],
            host=host,
            port=port,
            log_path=log_path,
            cwd=folder(name),
            ready_path=LIVE_PATH,
            timeout=30.0,
        )
    except ServerStartError as error:
        raise RouterError(f"the router of {name} did not start: {error}") from None
    return deployments.add_server(
        name,
        0,
        pid=server.pid,
        start_ticks=server.start_ticks,
        host=host,
        port=port,
        log_path=str(log_path),
        started_at=server.started_at,
        role=ROUTER,
    )


def wait_drained(name: str, key: str, timeout: float = DRAIN_TIMEOUT_SECONDS) -> bool:
    """True once no request is in flight to version ``key`` (it gets no new ones)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        versions = read_state(name).get("versions", {})
        entry = versions.get(key)
        if entry is None or not (entry.get("inflight", 0) or entry.get("retired_inflight", 0)):
            return True
        time.sleep(0.02)
    return False


def stop_router(deployments: DeploymentStore, name: str, status: str) -> None:
    from nbdeploy.deployment.supervisor import stop_process

    for server in deployments.active_servers(name):
        if server.role == ROUTER:
            if server.pid:
                stop_process(server.pid, server.start_ticks, marker=server.log_path)
            deployments.end_server(server.id, status)
