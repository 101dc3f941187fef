"""Switching a deployment between versions, as the daemon does it: a deploy's rollout
(:func:`switch_to`, with the strategies of :mod:`nbdeploy.deployment.traffic.strategies`),
and what moves traffic afterwards: rolling back, promoting, weights, and the router's API
key. The verbs users call are in :mod:`nbdeploy.deployment.verbs`."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

from nbdeploy.deployment.options import DEFAULT_KEEP_WARM_SECONDS, DeployOptions, parse_sticky
from nbdeploy.deployment.runtime.locks import deployment_lock
from nbdeploy.deployment.runtime.processes import LOOPBACK, ServerStartError, free_port
from nbdeploy.deployment.store import (
    CANDIDATE,
    FAILED,
    LIVE,
    ROUTER,
    SERVING,
    STANDBY,
    Deployment,
    DeploymentStore,
    Version,
)
from nbdeploy.deployment.versions.registry import record_live
from nbdeploy.errors import DeployError
from nbdeploy.store import default_store

Notify = Callable[[str], None]


def _ignore(message: str) -> None:
    pass


def switch_to(
    deployments: DeploymentStore,
    name: str,
    version: Version,
    *,
    host: str = LOOPBACK,
    port: int | None = None,
    strategy: str = "blue-green",
    keep_warm: float = DEFAULT_KEEP_WARM_SECONDS,
    options: DeployOptions | None = None,
    notify: Notify = _ignore,
    cancelled: Callable[[], bool] | None = None,
    env: Mapping[str, str] | None = None,
) -> Deployment:
    """Route ``name`` to ``version`` with ``strategy`` (see
    :mod:`nbdeploy.deployment.traffic.strategies`). When the new version does not take over (or the
    deploy is cancelled before the switch), what served before still serves, and the error
    says so. ``env`` is the environment the version's server runs with."""
    from nbdeploy.deployment.traffic import RouterError
    from nbdeploy.deployment.traffic.strategies import Rollout, RolloutError, roll_out

    current = deployments.find(name)
    if current is None:
        current = deployments.ensure(name, host, port or free_port(host))
    _configure_auth(name, host, options.auth if options is not None else None, notify)
    rollout = Rollout(deployments, name, version, host, port or current.port, notify, keep_warm)
    rollout.cancelled = cancelled or rollout.cancelled
    rollout.env = dict(env) if env is not None else None
    if options is not None:
        rollout.steps, rollout.weight = options.steps, options.weight
        rollout.interval, rollout.wait = options.interval, bool(options.wait)
        try:
            rollout.sticky = parse_sticky(options.sticky)
        except ValueError as error:
            raise DeployError(str(error)) from None
    from nbdeploy.deployment.traffic.strategies import canary

    canary.supersede(name)  # a canary in progress gives way to this deploy
    try:
        live = roll_out(strategy, rollout)
    except BaseException as error:
        after = deployments.reconcile(name)
        serving = [s for s in after.servers if s.role == LIVE]
        if serving:
            _restore_route(rollout, serving[0], [s for s in after.servers if s.role == STANDBY])
            deployments.set_state(name, status=SERVING, live_version=serving[0].version)
        elif after.status == SERVING:
            deployments.set_state(name, status=FAILED, live_version=after.live_version)
        if not isinstance(error, RolloutError | RouterError | ServerStartError | OSError):
            raise  # an interrupt: it says what happened
        still = (
            f"v{serving[0].version} is still serving at {after.url}"
            if serving
            else "nothing is serving"
        )
        raise DeployError(
            f"{name} v{version.version} did not take over; {still}. {error}",
            getattr(error, "hint", None),
        ) from None
    deployments.set_state(
        name, status=SERVING, live_version=live, host=host, port=rollout.port, strategy=strategy
    )
    deployments.add_event(name, "switched", version=live, strategy=strategy)
    return deployments.get(name)


def _restore_route(rollout: Any, live: Any, standby: list[Any]) -> None:
    """After a failed rollout: the router sends everything to what the store says is live
    (a failure after the route changed must not leave the new split in place)."""
    from nbdeploy.deployment import traffic
    from nbdeploy.deployment.traffic.strategies import route

    weights = traffic.read_config(rollout.name).get("weights", {})
    if {k for k, w in weights.items() if w > 0} == {traffic.version_key(live.version)}:
        return  # already so
    try:
        route(rollout, live, standby)
    except Exception as error:  # the first error is the one reported
        rollout.notify(f"could not restore the route to v{live.version}: {error}")


def _configure_auth(name: str, host: str, auth: str | None, notify: Notify) -> None:
    """Give the router the hash of the deployment's API key (created and shown once when
    asked for, or when the router listens beyond loopback), or none."""
    from nbdeploy.deployment import traffic
    from nbdeploy.deployment.traffic import keys

    remote = host not in (LOOPBACK, "localhost", "::1")
    if auth == "none" and remote:
        raise DeployError(
            f"--host {host} needs an API key: the service would be open to the network",
            "drop --auth none (a key is created), or serve on 127.0.0.1",
        )
    config = traffic.read_config(name)
    key = keys.read_key(name)
    if auth == "key" or (remote and not config.get("key_sha256")):
        if key is None:
            key = keys.create_key(name)
            # Never in the output: notebooks are saved and committed with their outputs.
            notify(f"created an API key for {name}: nbdeploy key {name} prints it")
        config["key_sha256"] = keys.key_hash(key)
    elif auth == "none":
        config.pop("key_sha256", None)
        keys.delete_key(name)
    traffic.write_config(name, config)


def new_key(deployments: DeploymentStore, name: str) -> str:
    """In the daemon: the new key, and the router told its hash."""
    from nbdeploy.deployment import traffic
    from nbdeploy.deployment.traffic import keys

    current = deployments.get(name)
    key = keys.create_key(name)
    with deployment_lock(name, _ignore):
        config = traffic.read_config(name)
        traffic.route(
            deployments,
            name,
            current.host,
            current.port,
            upstreams={
                k: traffic.Target(k, v["host"], v["port"])
                for k, v in config.get("upstreams", {}).items()
            },
            weights=config.get("weights", {}),
            key_sha256=keys.key_hash(key),
        )
    return key


def roll_back(
    deployments: DeploymentStore, name: str, notify: Notify = _ignore, to: int | None = None
) -> Deployment:
    """In the daemon: what :func:`rollback` asks for (``to``: a kept version by number;
    default: the one that served before the live one)."""
    from nbdeploy.deployment.traffic.strategies import canary

    current = deployments.get(name)
    ended = canary.ask(name, "abort")
    if ended is not None:  # a canary in progress: its stable version keeps all traffic
        notify(f"canary v{ended.version} {ended.status}: {ended.reason or ''}".rstrip(": "))
        return deployments.get(name)
    if to is None and _end_experiment(deployments, current, notify):
        return deployments.get(name)
    target = previous_version(deployments, name, current.live_version) if to is None else to
    if target is None:
        raise DeployError(f"{name} has no earlier version to roll back to")
    if to is not None:
        _check_rollback_target(deployments, name, current, to)
    version = deployments.version(name, target)
    with deployment_lock(name, notify):
        deployment = switch_to(
            deployments,
            name,
            version,
            host=current.host,
            port=current.port,
            strategy="blue-green",
            notify=notify,
        )
    if version.mlflow_version:
        notify(f"v{version.version} serves; the MLflow alias 'live' follows in the background")
        follow_in_registry(version)
    return deployment


def follow_in_registry(version: Version) -> threading.Thread:
    """Point the MLflow alias ``live`` at ``version`` in the background (MLflow takes
    seconds to start): traffic has switched already. A failure is a ``registry-not-updated``
    event, shown by ``nbdeploy status NAME``."""

    def follow() -> None:
        deployments = DeploymentStore(default_store())
        notices: list[str] = []
        record_live(deployments, version, None, notices, _ignore)
        for notice in notices:
            deployments.add_event(
                version.deployment, "registry-not-updated", version=version.version, error=notice
            )

    thread = threading.Thread(target=follow, name="nbdeploy-registry", daemon=True)
    thread.start()
    return thread


def promote_candidate(
    deployments: DeploymentStore, name: str, notify: Notify = _ignore
) -> Deployment:
    """In the daemon: what :func:`promote` asks for."""
    from nbdeploy.deployment.traffic.strategies import canary

    deployments.get(name)
    ended = canary.ask(name, "promote")
    if ended is not None:
        notify(f"canary v{ended.version} {ended.status}")
        return deployments.get(name)
    current = deployments.reconcile(name)
    candidates = [s for s in current.servers if s.role == CANDIDATE]
    if not candidates:
        raise DeployError(
            f"{name} has no canary, A/B test or shadow in progress to promote",
            "deploy with --strategy canary, ab or shadow; a plain deploy switches at once",
        )
    from nbdeploy.deployment.traffic.strategies import bluegreen

    with deployment_lock(name, notify):
        version = deployments.version(name, candidates[0].version)
        bluegreen.take_over(_rollout(deployments, current, version, notify), candidates[0])
        deployments.set_state(name, status=SERVING, live_version=version.version)
        deployments.add_event(name, "promoted", version=version.version)
    notify(f"v{version.version} takes all the traffic")
    return deployments.get(name)


def _rollout(
    deployments: DeploymentStore, current: Deployment, version: Version, notify: Notify
) -> Any:
    from nbdeploy.deployment.traffic.strategies import Rollout

    return Rollout(
        deployments,
        current.name,
        version,
        current.host,
        current.port,
        notify,
        DEFAULT_KEEP_WARM_SECONDS,
    )


def _end_experiment(deployments: DeploymentStore, current: Deployment, notify: Notify) -> bool:
    """An A/B test or shadow in progress ends: the live version keeps all the traffic and
    the candidate stops. False when there is none."""
    from nbdeploy.deployment import traffic
    from nbdeploy.deployment.traffic.strategies import route, stop_server

    current = deployments.reconcile(current.name)
    candidates = [s for s in current.servers if s.role == CANDIDATE]
    live = [s for s in current.servers if s.role == LIVE]
    config = traffic.read_config(current.name)
    running = bool(candidates) or bool(config.get("shadow")) or config.get("mode") == "ab"
    if not running or not live:
        return False
    with deployment_lock(current.name, notify):
        rollout = _rollout(
            deployments, current, deployments.version(current.name, live[0].version), notify
        )
        standby = [s for s in current.servers if s.role == STANDBY]
        route(rollout, live[0], standby)
        for candidate in candidates:
            stop_server(rollout, candidate)
        deployments.add_event(current.name, "experiment-ended", version=live[0].version)
    notify(f"the experiment ended; v{live[0].version} keeps all the traffic")
    return True


def split_traffic(
    deployments: DeploymentStore, name: str, weights: Mapping[str, float]
) -> Deployment:
    """In the daemon: what :func:`set_weights` asks for."""
    from nbdeploy.deployment import traffic
    from nbdeploy.deployment.traffic.strategies import target

    current = deployments.get(name)
    running = {
        traffic.version_key(s.version): s
        for s in deployments.active_servers(name)
        if s.role != ROUTER
    }
    unknown = sorted(set(weights) - set(running))
    if unknown:
        raise DeployError(
            f"{name}: no running version {', '.join(unknown)}",
            "running: " + (", ".join(sorted(running)) or "none"),
        )
    if any(w < 0 for w in weights.values()) or not any(w > 0 for w in weights.values()):
        raise DeployError("weights must be zero or more, and one of them more than zero")
    with deployment_lock(name, _ignore):
        traffic.route(
            deployments,
            name,
            current.host,
            current.port,
            upstreams={key: target(server) for key, server in running.items()},
            weights=dict(weights),
        )
        deployments.add_event(name, "weights", weights=dict(weights))
    return deployments.get(name)


def _check_rollback_target(
    deployments: DeploymentStore, name: str, current: Deployment, to: int
) -> None:
    kept = [v.version for v in deployments.versions(name)]
    if to not in kept:
        raise DeployError(
            f"{name} has no version v{to}",
            f"kept versions: {', '.join(f'v{v}' for v in kept) or 'none'} (nbdeploy show {name})",
        )
    if to == current.live_version and current.status == SERVING:
        raise DeployError(f"v{to} of {name} already serves")


def previous_version(deployments: DeploymentStore, name: str, live: int | None) -> int | None:
    rows = (
        deployments.store.connection()
        .execute(
            # Versions that took traffic: a candidate that was rolled back never did.
            "SELECT version FROM servers WHERE deployment = ? AND version != ? "
            "AND role IN (?, ?) ORDER BY id DESC LIMIT 1",
            (name, live or -1, LIVE, STANDBY),
        )
        .fetchone()
    )
    if rows:
        return int(rows[0])
    earlier = [v.version for v in deployments.versions(name) if live is None or v.version < live]
    return max(earlier) if earlier else None
