"""When a cron schedule fires, in its time zone, across daylight-saving changes.

Fire times are found on the zone's wall clock (croniter over naive local times), then each
wall time is placed on the timeline:

- a wall time that does not exist (the hour skipped when clocks spring forward) fires once,
  at the first instant after the gap (e.g. 02:30 on that day fires at 03:00);
- a wall time that happens twice (the hour repeated when clocks fall back) fires once, at
  its first occurrence.

Catch-up: the fire times missed while the daemon was down (or the machine off) are those in
``(after, until]``, at most ``MAX_CATCH_UP`` (the most recent ones).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

MAX_CATCH_UP = 100
_MAX_STEPS = 200_000  # wall times looked at for one answer (a repeated hour of seconds)


def _zone(tz: str) -> Any:
    from zoneinfo import ZoneInfo

    return ZoneInfo(tz)


def place(wall: datetime, tz: str) -> float:
    """The instant (epoch seconds) a naive wall time of zone ``tz`` fires at: its first
    occurrence when repeated, the end of the gap when it does not exist."""
    zone = _zone(tz)
    first = wall.replace(tzinfo=zone, fold=0)
    back = first.astimezone(timezone.utc).astimezone(zone).replace(tzinfo=None)
    if back == wall:  # exists (fold=0 is the earlier of two when repeated)
        return first.timestamp()
    # In a gap: fold=1 reads it with the offset after the change (an instant before the
    # gap), fold=0 with the offset before (an instant after it); the change lies between.
    low = wall.replace(tzinfo=zone, fold=1).timestamp()
    high = first.timestamp()
    low, high = min(low, high), max(low, high)
    before = datetime.fromtimestamp(low, zone).utcoffset()
    while high - low > 0.5:
        middle = (low + high) / 2
        if datetime.fromtimestamp(middle, zone).utcoffset() == before:
            low = middle
        else:
            high = middle
    return float(round(high))


def fire_times(cron: str, tz: str, after: float, count: int = 1) -> list[float]:
    """The next ``count`` fire instants strictly after ``after`` (epoch seconds)."""
    found: list[float] = []
    for instant in _instants(cron, tz, after):
        found.append(instant)
        if len(found) >= count:
            break
    return found


def _instants(cron: str, tz: str, after: float) -> Iterator[float]:
    """The fire instants after ``after``, in order, each once (at most ``_MAX_STEPS`` wall
    times looked at)."""
    from croniter import croniter

    zone = _zone(tz)
    start = datetime.fromtimestamp(after, zone).replace(tzinfo=None)
    # Start an hour of wall time earlier: after a fall-back, wall times before the local
    # time of ``after`` may still lie ahead; the instants are filtered below.
    walls = croniter(cron, start - timedelta(hours=1), second_at_beginning=True)
    last = after
    for _ in range(_MAX_STEPS):
        instant = place(walls.get_next(datetime), tz)
        if instant > last:
            yield instant
            last = instant


def next_fire(cron: str, tz: str, after: float) -> float | None:
    found = fire_times(cron, tz, after, 1)
    return found[0] if found else None


def missed(
    cron: str, tz: str, after: float, until: float, limit: int = MAX_CATCH_UP
) -> list[float]:
    """Fire times in ``(after, until]``: the most recent ``limit`` of them, oldest first.
    Looks back from ``until`` over a doubling span, so a long outage costs no more than
    the times kept."""
    span = 60.0
    while True:
        since = max(after, until - span)
        found = _between(cron, tz, since, until)
        if len(found) > limit or since <= after:
            return found[-limit:] if limit > 0 else []
        span *= 2


def _between(cron: str, tz: str, after: float, until: float) -> list[float]:
    found: list[float] = []
    for instant in _instants(cron, tz, after):
        if instant > until:
            break
        found.append(instant)
    return found


def local_text(instant: float | None, tz: str) -> str:
    """``instant`` on the wall clock of ``tz``, with the zone's abbreviation."""
    if instant is None:
        return "-"
    return datetime.fromtimestamp(instant, _zone(tz)).strftime("%Y-%m-%d %H:%M:%S %Z")
