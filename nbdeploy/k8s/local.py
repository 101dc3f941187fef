"""What a deployment does on this machine, which its manifests follow by default: the
version that is live, and the one tried beside it (a canary, an A/B test or a shadow in
progress) with its share, as the deployment's router is configured."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from nbdeploy.deployment import traffic
from nbdeploy.deployment.store import SERVING, Deployment

SPLIT, CANARY, AB, SHADOW = "split", "canary", "ab", "shadow"
_TRIED_AS = {SPLIT: "a traffic split", CANARY: "a canary", AB: "an A/B test", SHADOW: "a shadow"}


@dataclass(frozen=True)
class LocalSplit:
    """``live`` answers here; ``candidate`` (if any) is tried beside it by ``mode``:
    ``canary`` or ``split`` (it takes ``share`` percent of the requests), ``ab`` (the
    same, as an experiment) or ``shadow`` (``share`` percent of the requests are copied
    to it). A running canary also has its ``steps`` and ``interval``."""

    live: int
    live_here: bool  # False: no version of the kept ones is live here (``live``: the newest)
    candidate: int | None = None
    mode: str | None = None
    share: float | None = None
    sticky: bool = False
    steps: tuple[float, ...] | None = None
    interval: float | None = None
    described: str = "-"  # as nbdeploy list shows the split: "v1 90% · v2 10%"

    def tried(self) -> str:
        """How the candidate is tried here, for notices: "a canary (v1 90% · v2 10%)"."""
        return f"{_TRIED_AS.get(self.mode or '', 'tried')} ({self.described})"

    def traffic_share(self, version: int) -> float | None:
        """The percent of the requests ``version`` answers here, when it is the candidate
        of a split, a canary or an A/B test."""
        return self.share if version == self.candidate and self.mode != SHADOW else None

    def mirrored(self, version: int) -> float | None:
        """The percent of the requests copied to ``version`` here, when it is shadowed."""
        return self.share if version == self.candidate and self.mode == SHADOW else None


def read(current: Deployment, versions: Collection[int]) -> LocalSplit:
    """The split of ``current`` among its kept ``versions``. A deployment that does not
    serve tries nothing (its router's configuration is what it did before it stopped)."""
    live_here = current.live_version in versions
    live = current.live_version if current.live_version in versions else max(versions)
    assert live is not None
    if current.status != SERVING or not live_here:
        return LocalSplit(live, live_here)
    config = traffic.read_config(current.name)
    weights: dict[int, float] = {}
    for key, weight in (config.get("weights") or {}).items():
        number = _number(key)
        if number is not None and number in versions and float(weight) > 0:
            weights[number] = float(weight)
    shadow = config.get("shadow") or {}
    shadowed = _number(shadow.get("version"))
    others = [number for number in weights if number != live]
    described = traffic.describe_split(current.name)
    if others:
        candidate = max(others)
        share = 100 * weights[candidate] / sum(weights.values())
        if config.get("mode") == AB:
            return LocalSplit(
                live, True, candidate, AB, share, bool(config.get("sticky")), described=described
            )
        steps, interval = _running_canary(current.name, candidate)
        mode = CANARY if steps else SPLIT
        return LocalSplit(
            live, True, candidate, mode, share, steps=steps, interval=interval, described=described
        )
    if shadowed is not None and shadowed in versions and shadowed != live:
        percent = float(shadow.get("percent") or 100)
        return LocalSplit(live, True, shadowed, SHADOW, percent, described=described)
    return LocalSplit(live, True, described=described)


def _running_canary(name: str, version: int) -> tuple[tuple[float, ...] | None, float | None]:
    """The steps and step length of the canary of ``version`` running here, if it is one."""
    from nbdeploy.deployment.traffic.strategies.canary import RUNNING, read_plan

    plan = read_plan(name)
    if plan is None or plan.status != RUNNING or plan.version != version:
        return None, None
    return tuple(plan.steps), plan.interval


def _number(key: object) -> int | None:
    """3 for the router's "v3"."""
    if isinstance(key, str) and key.startswith("v") and key[1:].isdigit():
        return int(key[1:])
    return None
