"""The core's side of a deployment's router: its configuration, its process and its state.

The router (:mod:`nbdeploy.deployment.traffic.router`) listens on the deployment's stable address;
the versions listen on loopback ports of their own. Here the configuration is written
atomically, the router is told with SIGHUP and we wait until its state file reports the new
generation: when :func:`apply` returns, every new request follows the new split.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nbdeploy.deployment.runtime.processes import (
    ServerStartError,
    check_port_free,
    is_running,
    start_server,
)
from nbdeploy.deployment.store import ROUTER, STOPPED, DeploymentStore, Server
from nbdeploy.deployment.traffic.router import CONFIG, LISTEN_FD_ENV, LIVE_PATH, STATE
from nbdeploy.deployment.versions.build import deployments_dir
from nbdeploy.errors import NbdeployError

APPLY_TIMEOUT_SECONDS = 10.0
DRAIN_TIMEOUT_SECONDS = 30.0

# Set by the daemon (see nbdeploy.deployment.runtime.supervision): the listening socket of
# a deployment's router, held by the daemon across the router's restarts, and its release
# when the router stops for good. Unset, a router binds its address itself.
listener_for: Callable[[str, str, int], socket.socket] | None = None
release_listener: Callable[[str, str, int], None] | None = None


class RouterError(NbdeployError):
    """The router did not start or did not take a new configuration."""

    exit_code = 1


@dataclass(frozen=True)
class Target:
    """Where a version's server listens (behind the router), and the secret it answers to
    (see :mod:`nbdeploy.deployment.traffic.upstream_secrets`; kept out of reprs, hence logs)."""

    name: str  # "v3"
    host: str
    port: int
    secret: str | None = field(default=None, repr=False)


def upstream_entry(target: Target, before: dict[str, Any] | None) -> dict[str, Any]:
    """The router's configuration of ``target``. A target without a secret keeps the one
    the same server had (a caller that rebuilt it from ``router.json``, as a key rotation
    does): dropping it would cut the router off from that version."""
    entry: dict[str, Any] = {"host": target.host, "port": target.port}
    previous = before or {}
    same_server = (previous.get("host"), previous.get("port")) == (target.host, target.port)
    secret = target.secret
    if secret is None and same_server:
        secret = previous.get("secret")
    if secret:
        entry["secret"] = secret
    return entry


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
    """The traffic split as users read it: "v2", "v1 90% · v2 10%", "v1 · shadow v2",
    "v1 50% · v2 50% (A/B ab-3f2c)" (an A/B test names its experiment)."""
    config = read_config(name)
    weights = {k: w for k, w in config.get("weights", {}).items() if w > 0}
    total = sum(weights.values())
    if not total:
        return "-"
    parts = [k if len(weights) == 1 else f"{k} {100 * w / total:g}%" for k, w in weights.items()]
    text = " · ".join(parts)
    if config.get("mode") == "ab":
        experiment = config.get("experiment")
        text += f" (A/B {experiment})" if experiment else " (A/B)"
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
    before = config.get("upstreams", {})
    config["upstreams"] = {k: upstream_entry(t, before.get(k)) for k, t in upstreams.items()}
    config["weights"] = {k: float(w) for k, w in weights.items() if k in upstreams}
    config["generation"] = int(config.get("generation", 0)) + 1
    router = router_server(deployments, name)
    moving = router is not None and (router.host, router.port) != (host, port)
    previous = read_config(name)
    write_config(name, config)
    try:
        if router is None or moving:
            # A new address is taken before the old one is given up: when it cannot be
            # had, the old router serves on as it did.
            start_router(deployments, name, host, port)
        elif router.pid:
            os.kill(router.pid, signal.SIGHUP)
    except BaseException:
        write_config(name, previous)
        raise
    if moving and router is not None:
        if notify:
            notify(f"moving {name}'s address to {host}:{port}")
        _stop(deployments, router, STOPPED)
    deadline = time.monotonic() + APPLY_TIMEOUT_SECONDS
    while read_state(name).get("generation", 0) < config["generation"]:
        if time.monotonic() > deadline:
            raise RouterError(f"the router of {name} did not take its new configuration")
        time.sleep(0.005)
    return config


def start_router(deployments: DeploymentStore, name: str, host: str, port: int) -> Server:
    """Start ``name``'s router on host:port with the configuration in its folder."""
    log_path = folder(name) / "logs" / f"router-{time.time_ns()}.log"
    command = [sys.executable, "-m", "nbdeploy.deployment.traffic.router", str(folder(name))]
    listener = None
    if listener_for is not None:
        try:
            listener = listener_for(name, host, port)
        except OSError as error:
            check_port_free(host, port)  # names the process that holds it, when one does
            raise RouterError(
                f"the router of {name} cannot listen on port {port} of {host}: {error}",
                "choose another --port or stop the process that holds it",
            ) from None
    try:
        server = start_server(
            command,
            host=host,
            port=port,
            log_path=log_path,
            cwd=folder(name),
            ready_path=LIVE_PATH,
            timeout=30.0,
            listener=listener,
            env={**os.environ, LISTEN_FD_ENV: str(listener.fileno())} if listener else None,
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
    for server in deployments.active_servers(name):
        if server.role == ROUTER:
            _stop(deployments, server, status)


def _stop(deployments: DeploymentStore, router: Server, status: str) -> None:
    from nbdeploy.deployment.runtime.processes import stop_process

    if router.pid:
        stop_process(router.pid, router.start_ticks, marker=router.log_path)
    deployments.end_server(router.id, status)
    if release_listener is not None:
        release_listener(router.deployment, router.host, router.port)
