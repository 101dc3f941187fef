"""Canary analysis on hand-made router states: the p99 limit at partial steps comes from the
stable version's window; at the 100% step (the stable version gets no requests) from its
requests since the canary started, so a model that is slow everywhere is not rolled back at
the end, and a canary slower than stable still is."""

from __future__ import annotations

import bisect
import json
import math
from dataclasses import asdict
from typing import Any

from support import canary_plan

from nbdeploy.deployment.traffic.router.proxy import BUCKETS_MS
from nbdeploy.deployment.traffic.strategies import canary
from nbdeploy.deployment.traffic.strategies.canary import CanaryPlan, analyse

STABLE, CANARY = "v1", "v2"


def counters(*latencies: tuple[int, float], errors: int = 0) -> dict[str, Any]:
    """Router counters (as ``Router.state()`` writes them) of ``count`` requests at each
    latency in ms."""
    buckets = [0] * len(BUCKETS_MS)
    for count, milliseconds in latencies:
        buckets[bisect.bisect_left(BUCKETS_MS, milliseconds)] += count
    return {"requests": sum(buckets), "errors": errors, "buckets": buckets}


def added(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    return {
        "requests": first["requests"] + second["requests"],
        "errors": first["errors"] + second["errors"],
        "buckets": [a + b for a, b in zip(first["buckets"], second["buckets"], strict=True)],
    }


def state(versions: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {
        "versions": versions,
        "buckets_ms": [b if b != math.inf else None for b in BUCKETS_MS],
    }


def plan(baseline: dict[str, dict[str, Any]] | None = None) -> CanaryPlan:
    plan: CanaryPlan = canary_plan(interval=60.0, keep_warm=0.0, baseline=baseline or {})
    return plan


class Run:
    """A canary run on the router's counters: the stable version's history before the
    canary, then steps that add requests to both versions."""

    def __init__(self, stable_before: dict[str, Any]) -> None:
        self.now = {STABLE: stable_before}
        self.plan = plan(baseline={STABLE: stable_before})

    def step(
        self, stable: dict[str, Any] | None, canary_window: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The step's (before, state after) with these requests in its window."""
        before = json.loads(json.dumps(self.now))
        if stable is not None:
            self.now[STABLE] = added(self.now[STABLE], stable)
        self.now[CANARY] = added(self.now.get(CANARY, counters()), canary_window)
        return before, state(json.loads(json.dumps(self.now)))


def test_a_model_slow_everywhere_passes_its_100_percent_step():
    run = Run(stable_before=counters((500, 950)))
    for stable_share in (90, 50):
        before, after = run.step(
            counters((stable_share, 900), (1, 1000)), counters((100 - stable_share, 950))
        )
        assert analyse(before, after, run.plan) is None
    before, after = run.step(None, counters((100, 950), (1, 1000)))  # 100%: stable gets none
    assert analyse(before, after, run.plan) is None


def test_a_canary_three_times_slower_is_rolled_back_at_100_percent():
    run = Run(stable_before=counters((500, 700)))
    before, after = run.step(counters((90, 700)), counters((10, 710)))
    assert analyse(before, after, run.plan) is None
    before, after = run.step(None, counters((100, 2100)))
    breach = analyse(before, after, run.plan)
    assert breach == ("p99 latency 3000 ms > 1125 ms (stable p99 750 ms since the canary started)")


def test_the_100_percent_step_judges_against_the_stable_version_since_the_canary_started():
    # Before the canary the stable version was fast; during it, slow (the load grew): the
    # reference is the canary's run, not the router's whole history.
    run = Run(stable_before=counters((10_000, 10)))
    before, after = run.step(counters((50, 1400)), counters((50, 1400)))
    assert analyse(before, after, run.plan) is None
    before, after = run.step(None, counters((100, 1400)))
    assert analyse(before, after, run.plan) is None  # 1500 ms against 1.5 x 1500 ms


def test_partial_steps_still_compare_with_the_stable_window():
    fast_history = counters((1000, 40))
    run = Run(stable_before=fast_history)
    before, after = run.step(counters((90, 40)), counters((10, 40)))
    assert analyse(before, after, run.plan) is None
    before, after = run.step(counters((50, 40)), counters((50, 900)))
    assert analyse(before, after, run.plan) == "p99 latency 1000 ms > 500 ms (stable p99 50 ms)"
    # The window's own stable p99 sets the limit above the floor, history aside.
    run = Run(stable_before=fast_history)
    before, after = run.step(counters((90, 700)), counters((10, 1000)))
    assert analyse(before, after, run.plan) is None  # 1000 ms <= 1.5 x 750 ms
    before, after = run.step(counters((90, 700)), counters((10, 1500)))
    assert analyse(before, after, run.plan) == "p99 latency 1500 ms > 1125 ms (stable p99 750 ms)"


def test_errors_still_roll_back_whatever_the_latency():
    run = Run(stable_before=counters((100, 10)))
    before, after = run.step(None, counters((100, 10), errors=5))
    assert analyse(before, after, run.plan) == (
        "success rate 95.0% < 99% (5 of 100 requests failed)"
    )


def test_a_plan_without_a_baseline_uses_all_the_router_counted():
    # A plan written before baselines were kept: the stable's counters since the router
    # started are the reference.
    run = Run(stable_before=counters((500, 950)))
    run.plan = plan(baseline=None)
    before, after = run.step(None, counters((100, 950)))
    assert analyse(before, after, run.plan) is None
    before, after = run.step(None, counters((100, 3000)))
    assert analyse(before, after, run.plan) == (
        "p99 latency 3000 ms > 1500 ms (stable p99 1000 ms since the router started)"
    )


def test_a_router_restarted_since_the_canary_started_counts_from_its_start():
    run = Run(stable_before=counters((5000, 950)))  # more than the restarted router counts
    run.now = {STABLE: counters((40, 950))}
    before, after = run.step(None, counters((100, 950)))
    assert analyse(before, after, run.plan) is None


def test_older_plans_without_a_baseline_are_still_read(home):
    from nbdeploy.deployment import traffic

    folder = traffic.folder("scale")
    folder.mkdir(parents=True)
    written = asdict(plan())
    del written["baseline"]
    (folder / canary.PLAN).write_text(json.dumps(written), encoding="utf-8")
    read = canary.read_plan("scale")
    assert read is not None and read.baseline == {} and read.version == 2


def test_the_baseline_keeps_the_routers_counters_of_the_versions(monkeypatch):
    from nbdeploy.deployment import traffic

    stable = counters((30, 12))
    monkeypatch.setattr(
        traffic,
        "read_state",
        lambda name: state({STABLE: {**stable, "inflight": 2, "port": 9}, "v0": counters()}),
    )
    assert canary._counters_now("scale", 1, 2) == {STABLE: stable}
