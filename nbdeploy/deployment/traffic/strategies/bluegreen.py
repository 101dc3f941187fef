"""Blue-green (the default): the new version starts beside the live one, answers its
example request, then takes all traffic at once; requests in flight to the old version
finish there, and the old version stays warm (no traffic) for ``--keep-warm`` seconds so
that a rollback is instant. A new version that fails to start or to answer leaves the old
one serving, untouched."""

from __future__ import annotations

from nbdeploy.deployment import traffic
from nbdeploy.deployment.store import CANDIDATE, FAILED, LIVE, STANDBY, Server
from nbdeploy.deployment.traffic.strategies import (
    Rollout,
    route,
    smoke_test,
    start_version,
    stop_server,
)


def roll_out(rollout: Rollout) -> int:
    warm = [s for s in rollout.servers(STANDBY) if s.version == rollout.version.version]
    if warm:
        take_over(rollout, warm[0])
        return rollout.version.version
    live = rollout.servers(LIVE)
    leftovers = rollout.servers(STANDBY, CANDIDATE)
    new = start_version(rollout, rollout.version, CANDIDATE)
    try:
        smoke_test(new, rollout.version)
        # Served straight on the deployment's address (before routers): it makes way,
        # once, for the router.
        legacy = [s for s in live if s.port == rollout.port]
        if legacy:
            rollout.notify(f"moving {rollout.name} behind its router (a moment without service)")
            for server in legacy:
                stop_server(rollout, server)
        previous = [s for s in live if s not in legacy and s.version != rollout.version.version]
        warm = previous if rollout.keep_warm > 0 else []
        rollout.check_cancelled()
        route(rollout, new, warm)
    except BaseException:
        stop_server(rollout, new, FAILED)
        raise
    rollout.deployments.set_role(new.id, LIVE)
    for server in warm:
        rollout.deployments.set_role(server.id, STANDBY)
    retired = leftovers + [s for s in live if s not in warm and s not in legacy]
    for server in retired:
        traffic.wait_drained(rollout.name, traffic.version_key(server.version))
        stop_server(rollout, server)
    return rollout.version.version


def take_over(rollout: Rollout, standby: Server) -> None:
    """A warm standby takes all traffic at once (a rollback); the version it replaces
    becomes the standby."""
    rollout.notify(f"v{standby.version} is warm: switching to it")
    live = rollout.servers(LIVE)
    others = [s for s in rollout.servers(STANDBY, CANDIDATE) if s.id != standby.id]
    rollout.check_cancelled()
    route(rollout, standby, live if rollout.keep_warm > 0 else [])
    rollout.deployments.set_role(standby.id, LIVE)
    for server in live:
        rollout.deployments.set_role(server.id, STANDBY)
    for server in others + ([] if rollout.keep_warm > 0 else live):
        traffic.wait_drained(rollout.name, traffic.version_key(server.version))
        stop_server(rollout, server)
