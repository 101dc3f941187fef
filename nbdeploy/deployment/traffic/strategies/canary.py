"""Canary: the new version gets a growing share of the traffic (``--steps``, every
``--interval`` seconds) while it answers as well as the stable version; a breach rolls it
back at once, and the reason is recorded. At 100% it is promoted (the stable version stays
warm for rollback).

The analysis follows Flagger's defaults: over each step's window the canary's success rate
(answers below 500, connections that worked) must stay at or above 99%, and its p99 latency
at or below max(500 ms, 1.5 x the stable version's p99). The router's per-version counters
give both (a latency histogram, so the p99 is a bucket's upper bound). The stable p99 is
the one over the same window when the stable version answered enough requests in it; else
(at the 100% step it gets none) over the canary's whole run so far, from the counters the
plan keeps from the canary's start (``baseline``).

The steps run in a controller thread of the daemon (which owns every process of the home),
so that ``%deploy`` returns at once and a kernel restart does not stop a canary; ``--wait``
runs them in the deploy itself. A daemon that starts resumes the canaries its predecessor
left running, at the step they were at. ``nbdeploy promote NAME`` and ``nbdeploy rollback
NAME`` ask a running canary to finish early, and a new deploy of the same name supersedes
it at once (the controller takes the deployment's lock only to change traffic, never while
a step waits). The plan and its outcome are in ``canary.json`` in the deployment's folder,
written only by the daemon, each change a read-modify-write under one lock: a request
(promote, abort, superseded, stopped) is never overwritten by the controller's progress.
A controller that fails rolls its canary back, and the plan says why.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager as ContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nbdeploy.deployment import traffic
from nbdeploy.deployment.options import DEFAULT_CANARY_STEPS
from nbdeploy.deployment.runtime.processes import process_start_ticks
from nbdeploy.deployment.store import CANDIDATE, FAILED, LIVE, SERVING, STANDBY, STOPPED
from nbdeploy.deployment.traffic.strategies import (
    Rollout,
    RolloutError,
    retire_standby,
    smoke_test,
    start_version,
    stop_server,
    target,
)
from nbdeploy.private_files import write_private_text

PLAN = "canary.json"
MIN_SUCCESS_RATE = 0.99
P99_FLOOR_MS = 500.0
P99_FACTOR = 1.5
# Fewer stable requests in a window make a p99 that says little (the 100% step has none):
# the stable version's requests since the canary started are the reference then.
MIN_STABLE_REQUESTS = 20
POLL_SECONDS = 0.2
RUNNING, PROMOTED, ROLLED_BACK = "running", "promoted", "rolled back"
SUPERSEDED = "superseded"  # a new deploy of the same name took over
_plans_lock = threading.RLock()  # every read-modify-write of a plan in this process
_controllers: dict[str, threading.Thread] = {}  # deployment -> its canary's controller


@dataclass
class CanaryPlan:
    name: str
    version: int  # the canary
    stable: int
    candidate_server: int
    stable_server: int
    steps: list[float]
    interval: float
    keep_warm: float
    status: str = RUNNING
    step: int = 0
    reason: str | None = None
    request: str | None = None  # "promote" or "abort", from nbdeploy promote / rollback
    # The process whose thread runs the steps (the daemon): with its start time, so that a
    # pid reused by another process is never taken for it.
    controller_pid: int | None = None
    controller_start_ticks: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    # The router's counters of the stable and canary versions when the canary started
    # (version key: requests, errors, buckets); empty in plans written before it was kept.
    baseline: dict[str, dict[str, Any]] = field(default_factory=dict)


def plan_path(name: str) -> Path:
    return traffic.folder(name) / PLAN


def read_plan(name: str) -> CanaryPlan | None:
    try:
        return CanaryPlan(**json.loads(plan_path(name).read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def write_plan(plan: CanaryPlan) -> None:
    """Write a new plan whole (when a canary starts); changes go through :func:`update`."""
    with _plans_lock:
        write_private_text(plan_path(plan.name), json.dumps(asdict(plan), indent=2))


def update(plan: CanaryPlan, only_running: bool = False, **changes: Any) -> bool:
    """Apply ``changes`` to the plan on disk (read again under the lock, so that what
    others wrote meanwhile stays) and to ``plan``; with ``only_running``, only while the
    plan on disk is still running. False when nothing was written."""
    with _plans_lock:
        current = read_plan(plan.name)
        if current is None or (only_running and current.status != RUNNING):
            return False
        for key, value in changes.items():
            setattr(current, key, value)
            setattr(plan, key, value)
        write_private_text(plan_path(plan.name), json.dumps(asdict(current), indent=2))
        return True


def roll_out(rollout: Rollout) -> int:
    """Start the canary at its first step; with ``--wait``, run every step. The version
    live afterwards (the stable one until the canary is promoted)."""
    from nbdeploy.deployment.traffic.strategies import bluegreen

    stable = rollout.servers(LIVE)
    if not stable or stable[0].port == rollout.port:
        rollout.notify("nothing serves behind the router yet: blue-green instead of a canary")
        return bluegreen.roll_out(rollout)
    steps = list(rollout.steps or DEFAULT_CANARY_STEPS)
    if rollout.weight is not None:
        steps = [rollout.weight, *[s for s in steps if s > rollout.weight]]
    for leftover in rollout.servers(CANDIDATE):  # of a canary or experiment this replaces
        stop_server(rollout, leftover)
    candidate = start_version(rollout, rollout.version, CANDIDATE)
    try:
        smoke_test(candidate, rollout.version)
        plan = CanaryPlan(
            name=rollout.name,
            version=rollout.version.version,
            stable=stable[0].version,
            candidate_server=candidate.id,
            stable_server=stable[0].id,
            steps=steps,
            interval=rollout.interval,
            keep_warm=rollout.keep_warm,
            baseline=_counters_now(rollout.name, stable[0].version, rollout.version.version),
        )
        rollout.check_cancelled()
        _route_share(rollout, plan, steps[0])
    except BaseException:
        stop_server(rollout, candidate, FAILED)
        raise
    retire_standby(rollout)
    rollout.deployments.add_event(rollout.name, "canary-started", version=plan.version, steps=steps)
    rollout.notify(
        f"canary v{plan.version}: {steps[0]:g}% of the traffic; steps {steps} every "
        f"{plan.interval:g} s"
    )
    if rollout.wait:  # the steps run here, and this thread is the canary's controller
        write_plan(plan)
        _controllers[rollout.name] = threading.current_thread()
        try:
            run_steps(rollout, plan)
        finally:
            _controllers.pop(rollout.name, None)
        if plan.status == ROLLED_BACK:
            raise RolloutError(f"canary v{plan.version} rolled back: {plan.reason}")
        return plan.version
    plan.controller_pid = os.getpid()
    plan.controller_start_ticks = process_start_ticks(plan.controller_pid)
    write_plan(plan)
    start_controller(rollout.name)
    return plan.stable


def run_steps(
    rollout: Rollout, plan: CanaryPlan, locked: Callable[[], ContextManager[Any]] | None = None
) -> None:
    """Analyse each step's window from the plan's current step on (a resumed canary
    starts its step's window again); go on, promote at 100%, or roll back on a breach.

    ``locked`` (the controller's) takes the deployment's lock around each change of
    traffic, not while a step waits: a deploy of the same name meanwhile supersedes the
    canary (its controller then leaves everything to that deploy)."""
    hold = locked or contextlib.nullcontext
    for index, share in enumerate(plan.steps):
        if index < plan.step:
            continue
        if index > plan.step:  # the plan's step is routed already
            with hold():
                if not _still_current(rollout, plan):
                    return
                _route_share(rollout, plan, share)
            rollout.notify(f"canary v{plan.version}: {share:g}% of the traffic")
        if not update(plan, only_running=True, step=index):
            return  # stopped or superseded meanwhile
        before = traffic.read_state(plan.name).get("versions", {})
        request = _wait(plan)
        if request == SUPERSEDED:
            return
        with hold():
            if not _still_current(rollout, plan):
                return
            if request == "abort":
                _roll_back(rollout, plan, "rolled back by the user")
                return
            if request == "promote":
                break
            state = traffic.read_state(plan.name)
            breach = analyse(before, state, plan)
            window = _window(before, state.get("versions", {}), traffic.version_key(plan.version))
            step = {"share": share, "at": time.time(), "requests": window["requests"]}
            update(plan, history=[*plan.history, {**step, "breach": breach}])
            if not window["requests"]:
                rollout.notify(
                    f"canary v{plan.version}: no request reached it at {share:g}%: "
                    "nothing to judge in this step"
                )
            if breach:
                _roll_back(rollout, plan, breach)
                return
    with hold():
        if _still_current(rollout, plan):
            _promote(rollout, plan)


def analyse(before: dict[str, Any], state: dict[str, Any], plan: CanaryPlan) -> str | None:
    """Why the canary failed this window's analysis, or None."""
    after = state.get("versions", {})
    bounds = [b if b is not None else float("inf") for b in state.get("buckets_ms", [])]
    canary = _window(before, after, traffic.version_key(plan.version))
    if canary["requests"] == 0:
        return None  # nothing to judge in this window (told in the history)
    success = 1 - canary["errors"] / canary["requests"]
    if success < MIN_SUCCESS_RATE:
        return (
            f"success rate {success:.1%} < {MIN_SUCCESS_RATE:.0%} "
            f"({canary['errors']} of {canary['requests']} requests failed)"
        )
    canary_p99 = _quantile(canary["buckets"], bounds, 0.99)
    stable, over = _stable_reference(before, after, plan)
    stable_p99 = _quantile(stable["buckets"], bounds, 0.99) if stable["requests"] else 0.0
    limit = max(P99_FLOOR_MS, P99_FACTOR * stable_p99)
    if canary_p99 > limit:
        return f"p99 latency {canary_p99:g} ms > {limit:g} ms (stable p99 {stable_p99:g} ms{over})"
    return None


def _stable_reference(
    before: dict[str, Any], after: dict[str, Any], plan: CanaryPlan
) -> tuple[dict[str, Any], str]:
    """The stable version's requests to compare the canary with, and since when (said in a
    breach): this window's when there are enough (same load, same moment); else those since
    the canary started, else all the router counted (a first step at 100%)."""
    key = traffic.version_key(plan.stable)
    window = _window(before, after, key)
    if window["requests"] >= MIN_STABLE_REQUESTS:
        return window, ""
    start = _baseline_of(plan, after, key)
    if start is not None:
        since_start = _window({key: start}, after, key)
        if since_start["requests"] >= MIN_STABLE_REQUESTS:
            return since_start, " since the canary started"
    return _window({}, after, key), " since the router started"


def _baseline_of(plan: CanaryPlan, after: dict[str, Any], key: str) -> dict[str, Any] | None:
    """The counters of ``key`` when the canary started; None when the plan kept none (an
    older plan) or the router restarted since (its counters are behind them)."""
    start, now = plan.baseline.get(key), after.get(key, {})
    if start is None or start.get("requests", 0) > now.get("requests", 0):
        return None
    if len(start.get("buckets", [])) != len(now.get("buckets", [])):
        return None
    return start


def _counters_now(name: str, *versions: int) -> dict[str, dict[str, Any]]:
    """The router's counters of ``versions`` now (as its state file last said)."""
    counted = traffic.read_state(name).get("versions", {})
    keys = [traffic.version_key(v) for v in versions]
    return {
        key: {counter: counted[key][counter] for counter in ("requests", "errors", "buckets")}
        for key in keys
        if key in counted
    }


def _window(before: dict[str, Any], after: dict[str, Any], key: str) -> dict[str, Any]:
    first, last = before.get(key, {}), after.get(key, {})
    counts = last.get("buckets", [])
    earlier = first.get("buckets") or [0] * len(counts)
    buckets = [b - a for a, b in zip(earlier, counts, strict=True)]
    return {
        "requests": last.get("requests", 0) - first.get("requests", 0),
        "errors": last.get("errors", 0) - first.get("errors", 0),
        "buckets": buckets,
    }


def _quantile(buckets: list[int], bounds: list[float], q: float) -> float:
    total = sum(buckets)
    if not total:
        return 0.0
    seen = 0
    for count, bound in zip(buckets, bounds, strict=False):
        seen += count
        if seen >= q * total:
            return bound
    return bounds[-1] if bounds else 0.0


def _wait(plan: CanaryPlan) -> str | None:
    """Sleep the step's interval; a promote or abort asked meanwhile ends it early, and so
    does the end of the plan by someone else (a deploy superseded it, the deployment was
    stopped): then ``plan.status`` says so."""
    deadline = time.monotonic() + plan.interval
    while time.monotonic() < deadline:
        asked = read_plan(plan.name)
        if asked is None:
            plan.status = SUPERSEDED
            return SUPERSEDED
        if asked.status != RUNNING:
            plan.status, plan.reason = asked.status, asked.reason
            return SUPERSEDED
        if asked.request in ("promote", "abort", SUPERSEDED):
            return asked.request
        time.sleep(min(POLL_SECONDS, max(0.0, deadline - time.monotonic())))
    return None


def _still_current(rollout: Rollout, plan: CanaryPlan) -> bool:
    """The canary still runs (nobody ended its plan) and its servers are still the ones
    routed (no deploy replaced them)."""
    on_disk = read_plan(plan.name)
    if on_disk is None or on_disk.status != RUNNING:
        return False
    active = {s.id for s in rollout.servers(CANDIDATE, LIVE)}
    return {plan.candidate_server, plan.stable_server} <= active


def _route_share(rollout: Rollout, plan: CanaryPlan, share: float) -> None:
    servers = {s.id: s for s in rollout.deployments.active_servers(rollout.name)}
    stable, candidate = servers[plan.stable_server], servers[plan.candidate_server]
    traffic.route(
        rollout.deployments,
        rollout.name,
        rollout.host,
        rollout.port,
        upstreams={t.name: t for t in (target(stable), target(candidate))},
        weights={
            traffic.version_key(stable.version): 100 - share,
            traffic.version_key(candidate.version): share,
        },
        notify=rollout.notify,
        mode="split",
        shadow=None,
        sticky=None,
    )


def _promote(rollout: Rollout, plan: CanaryPlan) -> None:
    from nbdeploy.deployment.traffic.strategies import route

    servers = {s.id: s for s in rollout.deployments.active_servers(rollout.name)}
    candidate, stable = servers[plan.candidate_server], servers[plan.stable_server]
    route(rollout, candidate, [stable] if plan.keep_warm > 0 else [])
    rollout.deployments.set_role(candidate.id, LIVE)
    if plan.keep_warm > 0:
        rollout.deployments.set_role(stable.id, STANDBY)
    else:
        traffic.wait_drained(plan.name, traffic.version_key(stable.version))
        stop_server(rollout, stable)
    rollout.deployments.set_state(plan.name, status=SERVING, live_version=plan.version)
    update(plan, status=PROMOTED)
    rollout.deployments.add_event(plan.name, "canary-promoted", version=plan.version)
    rollout.notify(f"canary v{plan.version} promoted: it takes all the traffic")


def _roll_back(rollout: Rollout, plan: CanaryPlan, reason: str) -> None:
    from nbdeploy.deployment.traffic.strategies import route

    servers = {s.id: s for s in rollout.deployments.active_servers(rollout.name)}
    stable, candidate = servers.get(plan.stable_server), servers.get(plan.candidate_server)
    if stable is not None:
        route(rollout, stable, [])
    if candidate is not None:
        traffic.wait_drained(plan.name, traffic.version_key(candidate.version), timeout=10.0)
        stop_server(rollout, candidate, STOPPED)
        rollout.deployments.end_server(candidate.id, STOPPED, f"canary rolled back: {reason}")
    update(plan, status=ROLLED_BACK, reason=reason)
    rollout.deployments.add_event(
        plan.name, "canary-rolled-back", version=plan.version, reason=reason
    )
    rollout.notify(f"canary v{plan.version} rolled back: {reason}; v{plan.stable} serves all")


def ask(name: str, request: str) -> CanaryPlan | None:
    """Ask a running canary to finish early ("promote" or "abort"); None when no canary
    of ``name`` is running under a controller of this process."""
    plan = read_plan(name)
    if plan is None or not controller_running(name):
        return None
    if not update(plan, only_running=True, request=request):
        return None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)
        now = read_plan(name)
        if now is not None and now.status != RUNNING:
            return now
    return read_plan(name)


def supersede(name: str) -> None:
    """A new deploy of ``name`` takes over from a canary in progress (called under the
    deployment's lock): its controller stops without touching the traffic."""
    plan = read_plan(name)
    if plan is not None:
        reason = "a new deploy took over"
        update(plan, only_running=True, request=SUPERSEDED, status=SUPERSEDED, reason=reason)


def stop_controller(name: str, reason: str = "the deployment was stopped") -> None:
    """End a canary's controller (the deployment is being stopped, or the canary's server
    died): the plan says it was rolled back, and why; the controller sees it within
    ``POLL_SECONDS`` and leaves the traffic alone."""
    plan = read_plan(name)
    if plan is not None:
        update(plan, only_running=True, status=ROLLED_BACK, reason=reason)
    thread = _controllers.get(name)
    if thread is not None and thread is not threading.current_thread():
        thread.join(timeout=2 * POLL_SECONDS + 1.0)  # it may wait for the lock: no longer


def server_restarted(name: str, dead: int, again: int) -> None:
    """The daemon restarted server ``dead`` of a running canary as ``again``."""
    plan = read_plan(name)
    if plan is None or dead not in (plan.candidate_server, plan.stable_server):
        return
    key = "candidate_server" if dead == plan.candidate_server else "stable_server"
    update(plan, only_running=True, **{key: again})


def controller_running(name: str) -> bool:
    thread = _controllers.get(name)
    return thread is not None and thread.is_alive()


def running_controllers() -> list[str]:
    """The deployments whose canary's controller runs in this process."""
    return sorted(name for name in list(_controllers) if controller_running(name))


def start_controller(name: str) -> None:
    """Run the steps of ``name``'s canary in a thread of this process (the daemon)."""
    if controller_running(name):
        return
    thread = threading.Thread(target=_control, args=(name,), name=f"canary {name}", daemon=True)
    _controllers[name] = thread
    thread.start()


def resume_controllers(names: list[str]) -> None:
    """After a daemon's start: the canaries of ``names`` left running by its predecessor
    go on from the step they were at, under this process."""
    for name in names:
        plan = read_plan(name)
        if plan is None or plan.status != RUNNING or controller_running(name):
            continue
        update(plan, controller_pid=os.getpid(), controller_start_ticks=_own_start_ticks())
        start_controller(name)


def _own_start_ticks() -> int | None:
    return process_start_ticks(os.getpid())


def _control(name: str) -> None:
    """The controller: run the steps of ``canary.json``; a failure rolls the canary back."""
    from nbdeploy.deployment.runtime.locks import deployment_lock
    from nbdeploy.deployment.store import DeploymentStore
    from nbdeploy.store import default_store

    def tell(message: str) -> None:
        print(f"nbdeploy daemon: {name}: {message}", flush=True)

    plan = read_plan(name)
    if plan is None or plan.status != RUNNING:
        return
    rollout: Rollout | None = None
    try:
        deployments = DeploymentStore(default_store())
        current = deployments.get(name)
        version = deployments.version(name, plan.version)
        rollout = Rollout(
            deployments, name, version, current.host, current.port, tell, plan.keep_warm
        )
        run_steps(rollout, plan, locked=lambda: deployment_lock(name, tell))
        # Returned with the plan still running: its servers were ended by someone else.
        reason = "its servers no longer run"
        if update(plan, only_running=True, status=ROLLED_BACK, reason=reason):
            tell(f"canary v{plan.version} ended: {reason}")
    except Exception as error:  # the canary must not be left half-routed and "running"
        reason = f"the canary's controller failed: {type(error).__name__}: {error}"
        tell(reason)
        with contextlib.suppress(Exception):
            if rollout is not None:
                with deployment_lock(name, tell):
                    if _still_current(rollout, plan):
                        _roll_back(rollout, plan, reason)
        update(plan, only_running=True, status=ROLLED_BACK, reason=reason)
    finally:
        if _controllers.get(name) is threading.current_thread():
            del _controllers[name]
