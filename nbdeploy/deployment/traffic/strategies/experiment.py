"""Experiments with a new version beside the live one: A/B tests and shadowing. The new
version runs as a candidate; ``nbdeploy promote NAME`` makes it live (the old one stays
warm), ``nbdeploy rollback NAME`` ends the experiment (the old one keeps all traffic).

- **A/B** (``--strategy ab``): requests are split by weight (``--weight P``, the new
  version's share, default 50), at random or sticky by a key (``--sticky header:NAME`` or
  ``--sticky field:NAME``: the same key, hashed, always reaches the same arm). Each answer
  names its arm (``X-Nbdeploy-Version``) and carries ``X-Request-ID``; outcomes come back
  as ``POST <router>/feedback {"request_id": ..., "label": 0|1}`` (or ``"reward": x``) and
  ``nbdeploy ab NAME`` compares the arms with an always-valid sequential test.
- **Shadow** (``--strategy shadow``): every request (or ``--weight P`` percent of them) is
  also sent to the new version; only the live version's answer is returned, both answers
  and latencies are recorded, and ``nbdeploy shadow NAME`` reports the agreement rate, the
  latency difference and the new version's errors.
"""

from __future__ import annotations

import time
from typing import Any

from nbdeploy.deployment import traffic
from nbdeploy.deployment.runtime.processes import http_url
from nbdeploy.deployment.store import CANDIDATE, FAILED, LIVE
from nbdeploy.deployment.traffic.strategies import (
    Rollout,
    retire_standby,
    smoke_test,
    start_version,
    stop_server,
    target,
)

DEFAULT_AB_SHARE = 50.0
DEFAULT_SHADOW_PERCENT = 100.0


def roll_out_ab(rollout: Rollout) -> int:
    return _experiment(rollout, "ab")


def roll_out_shadow(rollout: Rollout) -> int:
    return _experiment(rollout, "shadow")


def _experiment(rollout: Rollout, kind: str) -> int:
    from nbdeploy.deployment.traffic.strategies import bluegreen

    live = rollout.servers(LIVE)
    if not live or live[0].port == rollout.port:
        rollout.notify(f"nothing serves behind the router yet: blue-green instead of {kind}")
        return bluegreen.roll_out(rollout)
    stable = live[0]
    for leftover in rollout.servers(CANDIDATE):  # an earlier experiment gives way
        stop_server(rollout, leftover)
    candidate = start_version(rollout, rollout.version, CANDIDATE)
    old, new = traffic.version_key(stable.version), traffic.version_key(candidate.version)
    settings: dict[str, Any]
    experiment = f"{new}-vs-{old}-{time.strftime('%Y%m%d-%H%M%S')}"  # logs and reports are per id
    try:
        smoke_test(candidate, rollout.version)
        if kind == "ab":
            share = rollout.weight if rollout.weight is not None else DEFAULT_AB_SHARE
            weights = {old: 100 - share, new: share}
            settings = {
                "mode": "ab",
                "shadow": None,
                "sticky": rollout.sticky,
                "experiment": experiment,
            }
        else:
            share = rollout.weight if rollout.weight is not None else DEFAULT_SHADOW_PERCENT
            weights = {old: 100.0}
            settings = {"mode": "split", "shadow": {"version": new, "percent": share}}
            settings["sticky"] = None
            settings["experiment"] = None
        rollout.check_cancelled()
        traffic.route(
            rollout.deployments,
            rollout.name,
            rollout.host,
            rollout.port,
            upstreams={old: target(stable), new: target(candidate)},
            weights=weights,
            notify=rollout.notify,
            **settings,
        )
    except BaseException:
        stop_server(rollout, candidate, FAILED)
        raise
    retire_standby(rollout)
    details: dict[str, Any] = {"share": share}
    if kind == "ab":
        details["experiment"] = experiment
    rollout.deployments.add_event(rollout.name, f"{kind}-started", version=new, **details)
    if kind == "ab":
        rollout.notify(
            f"A/B experiment {experiment}: {old} {100 - share:g}%, {new} {share:g}%"
            + (f", sticky by {_describe(rollout.sticky)}" if rollout.sticky else "")
            + f"; send outcomes to POST {http_url(rollout.host, rollout.port)}/feedback "
            f'{{"request_id": ..., "label": 0|1}}; see nbdeploy ab {rollout.name}'
        )
    else:
        rollout.notify(
            f"shadow: {share:g}% of requests also go to {new} (its answers are recorded, "
            f"never returned); see nbdeploy shadow {rollout.name}"
        )
    return stable.version


def _describe(sticky: dict[str, str] | None) -> str:
    if not sticky:
        return "nothing"
    kind, name = next(iter(sticky.items()))
    return f"the {kind} {name}"
