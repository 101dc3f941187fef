"""Recreate: stop what serves, then start the new version (the router answers 502 in
between; the time without service is reported). When the new version does not start, the
previous one is started again."""

from __future__ import annotations

import time

from nbdeploy.deployment.store import CANDIDATE, FAILED, LIVE, STANDBY
from nbdeploy.deployment.traffic.strategies import (
    Rollout,
    route,
    smoke_test,
    start_version,
    stop_server,
)


def roll_out(rollout: Rollout) -> int:
    old = rollout.servers(LIVE, STANDBY, CANDIDATE)
    previous = next((s for s in old if s.role == LIVE), None)
    rollout.check_cancelled()
    stopped_at = time.monotonic()
    for server in old:
        stop_server(rollout, server)
    try:
        new = start_version(rollout, rollout.version, LIVE)
        try:
            smoke_test(new, rollout.version)
        except BaseException:
            stop_server(rollout, new, FAILED)
            raise
        route(rollout, new, [])
    except BaseException:
        if previous is not None:
            _restore(rollout, previous.version)
        raise
    rollout.notify(
        f"recreate: {rollout.name} had no version serving for {time.monotonic() - stopped_at:.1f} s"
    )
    return rollout.version.version


def _restore(rollout: Rollout, number: int) -> None:
    """Start the version that served before again (a failure here is told; the first
    error is the one reported)."""
    rollout.notify(f"starting v{number} again")
    try:
        again = start_version(rollout, rollout.deployments.version(rollout.name, number), LIVE)
        route(rollout, again, [])
    except Exception as again_error:
        rollout.notify(f"restarting v{number} failed too: {again_error}")
