"""The window reader: a deployment's log summed up over a sliding window, exactly counted
under concurrent readers, bounded in memory over a large log, and never failing because of
what clients sent."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from nbdeploy.deployment.store import DeploymentStore
from nbdeploy.monitor import window
from nbdeploy.monitor.requests import log_directory
from nbdeploy.monitor.window import Aggregate, RowShape, percentiles
from nbdeploy.service.requestlog_runtime import INSERT, SCHEMA, segment_path
from nbdeploy.store import default_store

ROWS_OF_THREE = RowShape(records=False, width=3, parameter="rows")


def log_row(moment: float, **changes: Any) -> tuple[Any, ...]:
    """A row as a version's service writes it (columns of requestlog_runtime.COLUMNS)."""
    row = {
        "time": moment,
        "request_id": f"r{moment}",
        "version": 1,
        "arm": "v1",
        "endpoint": "/predict",
        "latency_ms": 2.0,
        "status": 200,
        "inputs": json.dumps({"rows": [[1.0, 2.0, 3.0]]}),
        "prediction": json.dumps([0.5]),
        "error": None,
        "truncated": 0,
        **changes,
    }
    return tuple(row.values())


class Segment:
    """A segment of a deployment's log, written as its services write it: in WAL mode,
    a transaction per batch of rows."""

    def __init__(self, name: str, number: int = 1) -> None:
        folder = log_directory(name)
        folder.mkdir(parents=True, exist_ok=True)
        self.connection = sqlite3.connect(segment_path(folder, number), isolation_level=None)
        self.connection.execute("PRAGMA journal_mode=WAL")
        self.connection.executescript(SCHEMA)

    def write(self, rows: Any) -> None:
        with self.connection:
            self.connection.execute("BEGIN")
            self.connection.executemany(INSERT, rows)


def segment(name: str) -> Segment:
    return Segment(name)


@pytest.fixture
def logged(home: Path) -> str:
    DeploymentStore(default_store()).ensure("watched", "127.0.0.1", 8000)
    return "watched"


def read(name: str, seconds: float, until: float) -> window.Summary:
    return window.reader(name, seconds).read(until, lambda v: 1.0, lambda v: ROWS_OF_THREE)


def test_concurrent_readers_count_every_row_once(logged):
    now = time.time()
    connection = segment(logged)
    written = 0
    stop = threading.Event()
    totals: list[int] = []
    failures: list[BaseException] = []

    def watch() -> None:
        try:
            while not stop.is_set():
                totals.append(read(logged, 3600, time.time()).total().logged)
        except BaseException as error:
            failures.append(error)

    watchers = [threading.Thread(target=watch) for _ in range(4)]
    for thread in watchers:
        thread.start()
    try:
        for batch in range(40):
            rows = [log_row(now - 60 + batch + i / 1000) for i in range(250)]
            connection.write(rows)
            written += len(rows)
            time.sleep(0.01)
    finally:
        stop.set()
        for thread in watchers:
            thread.join(30)
    assert not failures, failures
    assert len(totals) > 8  # the watchers read while rows were being written
    assert max(totals) <= written  # no reader ever counted a row twice
    summary = read(logged, 3600, time.time())
    assert summary.total().logged == written == 10_000
    assert sum(point["requests"] for point in summary.series()) == written


def test_a_long_window_over_a_large_log_stays_bounded_in_memory(logged, monkeypatch):
    """100,000 requests over 300 days: the reader reads the log in pieces and keeps sums per
    slot and a bounded sample, never the rows."""
    import nbdeploy.monitor.requests as requests

    monkeypatch.setattr(window, "SAMPLE_ROWS", 6_000)
    monkeypatch.setattr(window, "READ_ROWS", 2_000)
    pieces: list[int] = []
    read_after = requests.read_after

    def counted(*args: Any, **kwargs: Any) -> Any:
        rows, cursor = read_after(*args, **kwargs)
        pieces.append(len(rows))
        return rows, cursor

    monkeypatch.setattr(requests, "read_after", counted)
    now = time.time()
    connection = segment(logged)
    total = 100_000
    step = 300 * 86400 / total
    connection.write(
        (log_row(now - 300 * 86400 + i * step, latency_ms=1.0 + i % 100) for i in range(total)),
    )
    summary = read(logged, 400 * 86400, now + 1)
    assert summary.total().logged == total
    assert max(pieces) <= 2_000 and sum(pieces) == total
    assert len(window.reader(logged, 400 * 86400).aggregate.slots) <= window.SLOTS + 1
    kept = summary.inputs[(1, "/predict")]
    slots_with_rows = len(summary.points)  # 300 of the window's 400 days
    assert 0.9 * 100 * slots_with_rows <= len(kept) <= 6_000  # 100 per slot: 6,000 / 60
    assert percentiles(summary.total().latency, (50,))["p50"] == pytest.approx(50.5, rel=0.03)


def test_reading_a_window_takes_a_fraction_of_the_memory_of_its_rows(logged, monkeypatch):
    monkeypatch.setattr(window, "SAMPLE_ROWS", 600)
    monkeypatch.setattr(window, "READ_ROWS", 1_000)
    now = time.time()
    segment(logged).write(log_row(now - 3000 + i / 10) for i in range(20_000))

    def peak(work: Any) -> int:
        tracemalloc.start()
        try:
            work()
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    from nbdeploy.monitor.requests import read_requests

    rows = peak(lambda: read_requests(logged))
    summed = peak(lambda: read(logged, 3600, now + 1))
    assert summed < rows / 3, (summed, rows)


def test_a_window_slides_and_forgets_what_left_it(logged):
    now = 1_000_000.0 * 60
    connection = segment(logged)
    connection.write([log_row(now - 30), log_row(now - 5)])
    assert read(logged, 60, now).total().logged == 2
    connection.write([log_row(now + 10)])
    assert read(logged, 60, now + 40).total().logged == 2  # now - 30 left the window
    assert read(logged, 60, now + 200).total().logged == 0


def test_what_clients_sent_is_counted_and_only_fitting_rows_are_sampled():
    aggregate = Aggregate(1.0)
    rows = [
        {"time": 10.0, "version": 1, "endpoint": "/predict", "status": 200, "latency_ms": 1.0,
         "inputs": {"rows": [[1, 2, 3], [4, 5, 6]]}, "prediction": [0.1, 0.2]},
        # of another width: answered 400, counted as a misfit, not sampled
        {"time": 10.1, "version": 1, "endpoint": "/predict", "status": 400, "latency_ms": 1.0,
         "inputs": {"rows": [[1, 2]]}, "prediction": None},
        # a body that was not JSON (stored as text)
        {"time": 10.2, "version": 1, "endpoint": "/predict", "status": 400, "latency_ms": 1.0,
         "inputs": '{"rows": [[1, 2, 3]', "prediction": None},
        # /predict_proba: its answers are lists, not one value per row
        {"time": 10.3, "version": 1, "endpoint": "/predict_proba", "status": 200,
         "latency_ms": 3.0, "inputs": {"rows": [[7, 8, 9]]}, "prediction": [[0.3, 0.7]]},
        # the service failed: counted as an error, its rows are not input quality
        {"time": 10.4, "version": 1, "endpoint": "/predict", "status": 500, "latency_ms": 9.0,
         "inputs": {"rows": [[1, 2, 3]]}, "prediction": None},
        {"time": 10.5, "version": 1, "endpoint": "/predict", "status": 200, "latency_ms": 1.0,
         "inputs": {"rows": [[None, "x", 3]]}, "prediction": [None]},
    ]  # fmt: skip
    aggregate.add(rows, oldest_slot=0, weight_of=lambda v: 1.0, shape_of=lambda v: ROWS_OF_THREE)
    summary = aggregate.summary(0, 10)
    predict, proba = (1, "/predict"), (1, "/predict_proba")
    assert summary.total().logged == 6
    assert summary.total(endpoint="/predict").errors == 1
    assert summary.total(endpoint="/predict").refused == 2
    assert summary.inputs[predict] == [[1, 2, 3], [4, 5, 6], [None, "x", 3]]
    assert summary.predictions[predict] == [0.1, 0.2, None]
    assert summary.inputs[proba] == [[7, 8, 9]] and proba not in summary.predictions
    found = summary.findings[predict]
    assert (found.misfit_rows, found.unreadable_bodies) == (1, 1)
    assert summary.findings[proba].misfit_predictions == 1
    assert summary.endpoints() == ["/predict", "/predict_proba"]


def test_latency_percentiles_are_read_to_within_two_percent():
    aggregate = Aggregate(60.0)
    values = [0.2 * (i + 1) for i in range(1000)]  # 0.2 ms to 200 ms
    rows = [{"time": 5.0, "version": 1, "status": 200, "latency_ms": v} for v in values]
    aggregate.add(rows, oldest_slot=0, weight_of=lambda v: 1.0, shape_of=lambda v: None)
    found = percentiles(aggregate.summary(0, 0).total().latency, (50, 95, 99))
    assert found["p50"] == pytest.approx(100.0, rel=0.02)
    assert found["p95"] == pytest.approx(190.0, rel=0.02)
    assert found["p99"] == pytest.approx(198.0, rel=0.02)
    assert percentiles({}, (50,)) == {"p50": None}


def test_a_sampled_log_counts_each_row_for_the_requests_it_stands_for():
    aggregate = Aggregate(60.0)
    rows = [{"time": 1.0, "version": 2, "status": 200, "latency_ms": 1.0}] * 10
    aggregate.add(rows, oldest_slot=0, weight_of=lambda v: 4.0, shape_of=lambda v: None)
    counts = aggregate.summary(0, 0).total(version=2)
    assert (counts.logged, round(counts.requests)) == (10, 40)
