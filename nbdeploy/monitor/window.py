"""A deployment's request log summed up over a sliding time window, in bounded memory.

The window is cut into slots (a 60th of its length, aligned to the clock). Each slot keeps
sums, not rows: per version and endpoint the requests, the service's errors (5xx, or no
answer), the refusals (4xx), a latency histogram (bins 2 % wide, so percentiles are read to
about 1 %), and a uniform sample of the input rows and predictions for input quality and
drift (at most ``SAMPLE_ROWS`` over the window). Memory does not grow with the traffic or
the window: a 400-day window holds 61 slots, and the log is read in pieces of
``READ_ROWS`` rows.

Whatever clients sent is counted, never a reason to fail: a body that is not JSON, rows of
another width than the reference's, answers of another shape (``/predict_proba``) are
counted per endpoint as input-quality findings, and only rows that fit the reference are
compared with it.

One :class:`WindowReader` per deployment and window length serves every watcher (the
sidebar's summaries, dashboards, ``nbdeploy metrics``); it is locked, and reads each new
row once.
"""

from __future__ import annotations

import math
import random
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

SLOTS = 60
SAMPLE_ROWS = 120_000  # input rows (and as many predictions) kept for quality and drift
READ_ROWS = 5_000  # rows read from the log at a time
MAX_ENDPOINTS = 16  # distinct endpoints counted apart per slot (the rest as "other")
MAX_READERS = 32  # window readers kept (each deployment and window length has one)
_BIN_RATIO = 1.02
_BIN_FLOOR_MS = 0.01


def latency_bin(milliseconds: float) -> int:
    """The histogram bin of a latency: bin b holds [floor * ratio**b, floor * ratio**(b+1))."""
    if not milliseconds > _BIN_FLOOR_MS:  # also NaN
        return 0
    return int(math.log(milliseconds / _BIN_FLOOR_MS) / math.log(_BIN_RATIO))


def _bin_middle(index: int) -> float:
    return _BIN_FLOOR_MS * _BIN_RATIO ** (index + 0.5)


def percentiles(histogram: Mapping[int, int], percents: Iterable[int]) -> dict[str, float | None]:
    """``p50``, ``p99``... of a latency histogram (None when it is empty)."""
    wanted = list(percents)
    total = sum(histogram.values())
    if not total:
        return {f"p{q}": None for q in wanted}
    ordered = sorted(histogram.items())
    found: dict[str, float | None] = {}
    for q in wanted:
        rank = max(1, math.ceil(q / 100 * total))
        seen = 0
        for index, count in ordered:
            seen += count
            if seen >= rank:
                found[f"p{q}"] = round(_bin_middle(index), 3)
                break
    return found


@dataclass
class Counts:
    """What one version answered at one endpoint (in one slot, or summed)."""

    logged: int = 0  # rows in the log
    requests: float = 0.0  # requests they stand for (a sampled log: more than logged)
    errors: int = 0  # the service failed: 5xx, or no answer
    refused: int = 0  # 4xx: the client's request was refused
    latency: Counter[int] = field(default_factory=Counter)

    def add(self, other: Counts) -> None:
        self.logged += other.logged
        self.requests += other.requests
        self.errors += other.errors
        self.refused += other.refused
        self.latency.update(other.latency)

    def figures(self, seconds: float | None = None) -> dict[str, Any]:
        """requests, error and refusal rates, latency percentiles (and the rate when
        ``seconds`` is given)."""
        figures: dict[str, Any] = {
            "requests": round(self.requests),
            "error_rate": self.errors / self.logged if self.logged else None,
            "client_error_rate": self.refused / self.logged if self.logged else None,
        }
        if seconds is not None:
            figures["requests_per_second"] = self.requests / seconds if seconds > 0 else None
        return figures


class Sample:
    """A uniform random sample of at most ``capacity`` values out of all those offered."""

    def __init__(self, capacity: int, rng: random.Random) -> None:
        self.capacity = capacity
        self.values: list[Any] = []
        self.offered = 0
        self._rng = rng

    def offer(self, value: Any) -> None:
        self.offered += 1
        if len(self.values) < self.capacity:
            self.values.append(value)
            return
        index = self._rng.randrange(self.offered)
        if index < self.capacity:
            self.values[index] = value


@dataclass
class Findings:
    """What did not fit, per endpoint: bodies that were not JSON or not rows, and rows or
    answers of another shape than the reference's."""

    unreadable_bodies: int = 0
    misfit_rows: int = 0
    misfit_predictions: int = 0

    def add(self, other: Findings) -> None:
        self.unreadable_bodies += other.unreadable_bodies
        self.misfit_rows += other.misfit_rows
        self.misfit_predictions += other.misfit_predictions


Key = tuple[int, str]  # (version, endpoint); version -1 when the log does not say


class Slot:
    """The sums of one slot of the window."""

    def __init__(self, sample_rows: int, rng: random.Random) -> None:
        self.counts: dict[Key, Counts] = {}
        self.findings: dict[Key, Findings] = {}
        self.inputs: dict[Key, Sample] = {}
        self.predictions: dict[Key, Sample] = {}
        self._sample_rows = sample_rows
        self._rng = rng

    def key(self, version: int, endpoint: str) -> Key:
        endpoints = {e for _, e in self.counts}
        if endpoint not in endpoints and len(endpoints) >= MAX_ENDPOINTS:
            endpoint = "other"
        return (version, endpoint)

    def sample(self, samples: dict[Key, Sample], key: Key) -> Sample:
        found = samples.get(key)
        if found is None:
            found = samples[key] = Sample(self._sample_rows, self._rng)
        return found


@dataclass(frozen=True)
class RowShape:
    """What a version's inputs look like: records (a dict per row) or rows of ``width``
    values (an array reference; None: any width), and whether its answers are one value
    per row."""

    records: bool
    width: int | None
    parameter: str | None
    hints: bool = False

    def fits(self, row: Any) -> bool:
        if self.hints:
            return isinstance(row, Mapping)
        if self.records:
            return isinstance(row, Mapping)
        if isinstance(row, list | tuple):
            return self.width is None or len(row) == self.width
        return self.width == 1 and not isinstance(row, Mapping)


def _is_value(answer: Any) -> bool:
    return answer is None or isinstance(answer, bool | int | float | str)


class Aggregate:
    """The slots of one window, filled from log rows."""

    def __init__(self, width: float, sample_rows: int | None = None) -> None:
        self.width = width
        self.slots: dict[int, Slot] = {}
        self.sample_rows = sample_rows or max(1, SAMPLE_ROWS // SLOTS)  # per slot and key
        self._rng = random.Random(0)

    def slot_of(self, moment: float) -> int:
        return math.floor(moment / self.width)

    def add(
        self,
        rows: Iterable[Mapping[str, Any]],
        *,
        oldest_slot: int,
        weight_of: Callable[[int], float],
        shape_of: Callable[[int], RowShape | None],
    ) -> None:
        """Count ``rows`` (log rows, decoded); rows before ``oldest_slot`` are left out."""
        from nbdeploy.deployment.traffic.strategies import SMOKE_REQUEST_ID

        for row in rows:
            if row.get("request_id") == SMOKE_REQUEST_ID:
                continue  # nbdeploy's own check of a new version: not traffic
            try:
                moment = float(row["time"])
                version = -1 if row.get("version") is None else int(row["version"])
                status = int(row.get("status") or 0)
            except (KeyError, TypeError, ValueError):
                continue
            index = self.slot_of(moment)
            if index < oldest_slot:
                continue
            slot = self.slots.get(index)
            if slot is None:
                slot = self.slots[index] = Slot(self.sample_rows, self._rng)
            key = slot.key(version, str(row.get("endpoint") or "/predict"))
            counts = slot.counts.get(key)
            if counts is None:
                counts = slot.counts[key] = Counts()
            counts.logged += 1
            counts.requests += weight_of(version)
            if status >= 500 or status == 0:
                counts.errors += 1
            elif status >= 400:
                counts.refused += 1
            latency = row.get("latency_ms")
            if isinstance(latency, int | float) and not math.isnan(latency):
                counts.latency[latency_bin(float(latency))] += 1
            if 200 <= status < 500:
                self._add_rows(slot, key, row, status, shape_of(version))

    def _add_rows(
        self, slot: Slot, key: Key, row: Mapping[str, Any], status: int, shape: RowShape | None
    ) -> None:
        """The input rows of a request the service could read (answered, or refused for
        its values: a type error is input quality too), and its answers, one per row."""
        body, answer = row.get("inputs"), row.get("prediction")
        if body is None or shape is None:
            return  # not stored (sampled, cut), or a version that is gone
        findings = slot.findings.get(key)
        if findings is None:
            findings = slot.findings[key] = Findings()
        if isinstance(body, str):
            findings.unreadable_bodies += 1
            return
        items: Any
        answers: Any
        if shape.hints or not isinstance(body, Mapping):
            items, answers = [body], [answer]
        else:
            items = body.get(shape.parameter) if shape.parameter in body else None
            if items is None:
                items = next(iter(body.values()), None)
            answers = answer if isinstance(answer, list) else None
        if not isinstance(items, list):
            findings.unreadable_bodies += 1
            return
        inputs = slot.sample(slot.inputs, key)
        for item in items:
            if shape.fits(item):
                inputs.offer(item)
            else:
                findings.misfit_rows += 1
        if status >= 300 or answers is None:
            return
        if len(answers) != len(items) or not all(_is_value(a) for a in answers):
            findings.misfit_predictions += len(items)
            return
        predictions = slot.sample(slot.predictions, key)
        for value in answers:
            predictions.offer(value)

    def drop_before(self, oldest_slot: int) -> None:
        for index in [i for i in self.slots if i < oldest_slot]:
            del self.slots[index]

    def summary(self, first: int, last: int) -> Summary:
        """The sums of slots ``first`` to ``last`` (included)."""
        chosen = [(i, s) for i, s in sorted(self.slots.items()) if first <= i <= last]
        summary = Summary(self.width, first, last)
        for index, slot in chosen:
            point = Counts()
            for key, counts in slot.counts.items():
                point.add(counts)
                summary.counts.setdefault(key, Counts()).add(counts)
            summary.points[index] = point
            for key, findings in slot.findings.items():
                summary.findings.setdefault(key, Findings()).add(findings)
        summary.inputs = _pooled([s.inputs for _, s in chosen], self._rng)
        summary.predictions = _pooled([s.predictions for _, s in chosen], self._rng)
        return summary


def _pooled(samples: list[dict[Key, Sample]], rng: random.Random) -> dict[Key, list[Any]]:
    """One uniform sample of the whole window per key out of the slots' samples: each slot
    gives the same share of what it was offered (the smallest share any slot kept)."""
    pooled: dict[Key, list[Any]] = {}
    keys = {key for slot in samples for key in slot}
    for key in keys:
        parts = [slot[key] for slot in samples if key in slot and slot[key].offered]
        if not parts:
            continue
        share = min(len(part.values) / part.offered for part in parts)
        values: list[Any] = []
        for part in parts:
            take = min(len(part.values), round(part.offered * share))
            values.extend(
                part.values if take == len(part.values) else rng.sample(part.values, take)
            )
        pooled[key] = values
    return pooled


@dataclass
class Summary:
    """A window's sums: per (version, endpoint), per slot, and the pooled samples."""

    width: float
    first: int
    last: int
    counts: dict[Key, Counts] = field(default_factory=dict)
    points: dict[int, Counts] = field(default_factory=dict)
    findings: dict[Key, Findings] = field(default_factory=dict)
    inputs: dict[Key, list[Any]] = field(default_factory=dict)
    predictions: dict[Key, list[Any]] = field(default_factory=dict)

    @property
    def since(self) -> float:
        return self.first * self.width

    def total(self, version: int | None = None, endpoint: str | None = None) -> Counts:
        total = Counts()
        for (number, path), counts in self.counts.items():
            if (version is None or number == version) and (endpoint is None or path == endpoint):
                total.add(counts)
        return total

    def versions(self) -> list[int]:
        return sorted({number for number, _ in self.counts} - {-1})

    def endpoints(self, version: int | None = None) -> list[str]:
        return sorted({e for n, e in self.counts if version is None or n == version})

    def series(self) -> list[dict[str, Any]]:
        """Requests, errors and latency per slot, oldest first (charts over time)."""
        points = []
        for index in range(self.first, self.last + 1):
            counts = self.points.get(index) or Counts()
            points.append(
                {
                    "t": (index + 1) * self.width,
                    "requests": round(counts.requests),
                    "errors": counts.errors,
                    **percentiles(counts.latency, (50, 99)),
                }
            )
        return points


class WindowReader:
    """The sums of one deployment's log over its last ``seconds``, kept up to date: each
    call reads the rows written since the previous one."""

    def __init__(self, name: str, seconds: float, store: Any = None) -> None:
        self.name = name
        self.seconds = seconds
        self.store = store
        self.lock = threading.Lock()
        self.aggregate = Aggregate(seconds / SLOTS)
        self.cursor: dict[str, int] | None = None

    def read(
        self,
        until: float,
        weight_of: Callable[[int], float],
        shape_of: Callable[[int], RowShape | None],
    ) -> Summary:
        from nbdeploy.monitor.requests import read_after

        with self.lock:
            aggregate = self.aggregate
            oldest = aggregate.slot_of(until - self.seconds)
            while True:
                rows, self.cursor = read_after(
                    self.name,
                    self.cursor,
                    since=oldest * aggregate.width,
                    store=self.store,
                    limit=READ_ROWS,
                )
                aggregate.add(rows, oldest_slot=oldest, weight_of=weight_of, shape_of=shape_of)
                if len(rows) < READ_ROWS:
                    break
            aggregate.drop_before(oldest)
            return aggregate.summary(oldest, aggregate.slot_of(until))


_readers: OrderedDict[tuple[str, float, str], WindowReader] = OrderedDict()
_readers_lock = threading.Lock()


def reader(name: str, seconds: float, store: Any = None) -> WindowReader:
    """The window reader of deployment ``name`` (its log folder) and window length."""
    from nbdeploy.monitor.requests import log_directory

    key = (str(log_directory(name)), float(seconds), str(getattr(store, "path", "")))
    with _readers_lock:
        found = _readers.get(key)
        if found is None:
            found = _readers[key] = WindowReader(name, seconds, store)
        _readers.move_to_end(key)
        while len(_readers) > MAX_READERS:
            _readers.popitem(last=False)
        return found


def summarize_rows(
    rows: Iterable[Mapping[str, Any]],
    seconds: float,
    until: float,
    weight_of: Callable[[int], float],
    shape_of: Callable[[int], RowShape | None],
) -> Summary:
    """The sums of given rows (the last N of a log) as a window of ``seconds``."""
    aggregate = Aggregate(seconds / SLOTS, sample_rows=SAMPLE_ROWS)
    oldest = aggregate.slot_of(until - seconds)
    aggregate.add(rows, oldest_slot=oldest, weight_of=weight_of, shape_of=shape_of)
    return aggregate.summary(oldest, aggregate.slot_of(until))
