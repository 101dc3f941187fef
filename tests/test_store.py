"""Unit tests: the SQLite state store, its schema migrations and run records."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nbdeploy.errors import RunNotFoundError, StoreError
from nbdeploy.store import StateStore, default_store
from nbdeploy.store import migrations as migrations_module
from nbdeploy.store.migrations import LATEST_VERSION, MIGRATIONS, Migration
from nbdeploy.store.runs import (
    CACHED,
    FAILED,
    GONE_MESSAGE,
    INTERRUPTED,
    RUNNING,
    SUCCEEDED,
    Owner,
    RunStore,
    current_owner,
    new_id,
)

V2_RUN_COLUMNS = {"group_id", "step", "fingerprint", "outputs"}


def columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}


def tables(conn: sqlite3.Connection) -> set[str]:
    return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def count_runs(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0])
    finally:
        conn.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StateStore]:
    state = StateStore(tmp_path / "state.db")
    yield state
    state.close()


@pytest.fixture
def runs(store: StateStore) -> RunStore:
    return RunStore(store)


# -- schema -------------------------------------------------------------------------------
def test_migrations_are_numbered_in_order() -> None:
    assert [m.version for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))
    assert MIGRATIONS[-1].version == LATEST_VERSION


def test_new_store_is_at_latest_version_with_wal(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "dir" / "state.db"  # parents are created
    store = StateStore(path)
    try:
        assert store.schema_version == LATEST_VERSION
        conn = store.connection()
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 30_000
        assert {"runs", "run_metrics", "run_params", "run_artifacts", "events", "run_groups"} <= (
            tables(conn)
        )
        assert columns(conn, "runs") >= V2_RUN_COLUMNS
    finally:
        store.close()
    assert path.exists()
    assert list(path.parent.glob("*.bak")) == []  # nothing to back up in a new store
    # A separate connection sees WAL mode persisted in the file and the version.
    raw = sqlite3.connect(path)
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute("PRAGMA user_version").fetchone()[0] == LATEST_VERSION
    finally:
        raw.close()


def test_store_at_target_version_1_has_the_old_schema(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db", target_version=1)
    try:
        assert store.schema_version == 1
        conn = store.connection()
        assert "run_groups" not in tables(conn)
        assert not (V2_RUN_COLUMNS & columns(conn, "runs"))
    finally:
        store.close()


def _v1_store_with_a_run(path: Path) -> None:
    old = StateStore(path, target_version=1)
    with old.transaction() as conn:
        conn.execute(
            "INSERT INTO runs (id, notebook, parameters, status, kernel, output_path, error, "
            "created_at, started_at, finished_at, mlflow_run_id) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                "240101-120000-abcdef",
                "train.ipynb",
                '{"alpha": 0.5, "n": 3}',
                "failed",
                "python3",
                "/runs/train-out.ipynb",
                '{"cell": 4, "ename": "ValueError"}',
                1000.0,
                1001.0,
                1003.5,
                "mlflow-123",
            ),
        )
        conn.executemany(
            "INSERT INTO run_metrics (run_id, name, value, step, logged_at) VALUES (?,?,?,?,?)",
            [
                ("240101-120000-abcdef", "acc", 0.5, 0, 1002.0),
                ("240101-120000-abcdef", "acc", 0.75, 0, 1002.5),
            ],
        )
        conn.execute(
            "INSERT INTO run_params (run_id, name, value) VALUES (?, ?, ?)",
            ("240101-120000-abcdef", "model", '"forest"'),
        )
        conn.execute(
            "INSERT INTO run_artifacts (run_id, path) VALUES (?, ?)",
            ("240101-120000-abcdef", "plots/roc.png"),
        )
        conn.execute(
            "INSERT INTO events (at, kind, subject, detail) VALUES (?, ?, ?, ?)",
            (1003.5, "run.finished", "240101-120000-abcdef", "{}"),
        )
    # The old schema can be read by RunStore (the new columns are simply absent).
    record = RunStore(old).get("240101-120000-abcdef")
    assert record.group_id is None and record.outputs == {}
    old.close()


def test_old_store_is_migrated_keeping_its_rows_and_backed_up(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    _v1_store_with_a_run(path)

    store = StateStore(path)
    try:
        assert store.schema_version == LATEST_VERSION
        conn = store.connection()
        assert columns(conn, "runs") >= V2_RUN_COLUMNS
        assert "run_groups" in tables(conn)
        record = RunStore(store).get("240101-120000-abcdef")
        assert record.notebook == "train.ipynb"
        assert record.parameters == {"alpha": 0.5, "n": 3}
        assert record.status == "failed"
        assert record.kernel == "python3"
        assert record.output_path == "/runs/train-out.ipynb"
        assert record.error == {"cell": 4, "ename": "ValueError"}
        assert (record.created_at, record.started_at, record.finished_at) == (
            1000.0,
            1001.0,
            1003.5,
        )
        assert record.duration_s == 2.5
        assert record.mlflow_run_id == "mlflow-123"
        assert record.metrics == {"acc": 0.75}
        assert record.logged_params == {"model": "forest"}
        assert record.artifacts == ["plots/roc.png"]
        # The new columns exist with their defaults.
        assert (record.group_id, record.step, record.fingerprint, record.outputs) == (
            None,
            None,
            None,
            {},
        )
        assert conn.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 1
        # And the new features work on the migrated store.
        runs = RunStore(store)
        group = runs.create_group("sweep", "train.ipynb", {"n": [1, 2]})
        new = runs.create("train.ipynb", {"n": 1}, group_id=group.id, fingerprint="fp")
        runs.finish(new.id, SUCCEEDED, outputs={"model": "m.pkl"})
        assert runs.latest_success("fp").outputs == {"model": "m.pkl"}
    finally:
        store.close()

    backups = list(tmp_path.glob("state.db.v1-*.bak"))
    assert len(backups) == 1, backups
    assert backups[0].name.startswith("state.db.v1-") and backups[0].name.endswith(".bak")
    backup = sqlite3.connect(backups[0])
    try:
        assert backup.execute("PRAGMA user_version").fetchone()[0] == 1
        assert backup.execute("SELECT id, status FROM runs").fetchall() == [
            ("240101-120000-abcdef", "failed")
        ]
        assert not (V2_RUN_COLUMNS & columns(backup, "runs"))
    finally:
        backup.close()

    # Opening the migrated store again migrates nothing and makes no second backup.
    again = StateStore(path)
    try:
        assert again.schema_version == LATEST_VERSION
    finally:
        again.close()
    assert len(list(tmp_path.glob("state.db.v*.bak"))) == 1


def test_store_from_a_newer_nbdeploy_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    raw = sqlite3.connect(path)
    raw.execute("CREATE TABLE future (x INTEGER)")
    raw.execute(f"PRAGMA user_version = {LATEST_VERSION + 1}")
    raw.commit()
    raw.close()

    store = StateStore(path)
    try:
        with pytest.raises(StoreError) as info:
            store.connection()
        message = str(info.value)
        assert f"schema version {LATEST_VERSION + 1}" in message
        assert f"knows versions up to {LATEST_VERSION}" in message
        assert str(path) in message
        assert info.value.hint is not None and "upgrade nbdeploy" in info.value.hint
        with pytest.raises(StoreError, match="upgrade nbdeploy"):
            RunStore(store).recent()
    finally:
        store.close()
    raw = sqlite3.connect(path)
    try:  # left as it was
        assert raw.execute("PRAGMA user_version").fetchone()[0] == LATEST_VERSION + 1
        assert tables(raw) == {"future"}
    finally:
        raw.close()


def test_failed_migration_leaves_the_store_at_the_previous_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.db"
    _v1_store_with_a_run(path)
    broken = Migration(
        LATEST_VERSION + 1,
        "broken",
        ("CREATE TABLE extra (x INTEGER)", "ALTER TABLE no_such_table ADD COLUMN y TEXT"),
    )
    monkeypatch.setattr("nbdeploy.store.MIGRATIONS", (*migrations_module.MIGRATIONS, broken))
    monkeypatch.setattr("nbdeploy.store.LATEST_VERSION", LATEST_VERSION + 1)
    store = StateStore(path)
    try:
        with pytest.raises(StoreError) as info:
            store.connection()
        assert f"to schema version {LATEST_VERSION + 1} failed" in str(info.value)
        assert "the store is unchanged" in str(info.value)
    finally:
        store.close()
    raw = sqlite3.connect(path)
    try:
        # The good migration (to 2) was committed; the broken one left nothing behind.
        assert raw.execute("PRAGMA user_version").fetchone()[0] == LATEST_VERSION
        assert "extra" not in tables(raw)
        assert raw.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 1
    finally:
        raw.close()


def test_default_store_lives_under_nbdeploy_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NBDEPLOY_HOME", str(tmp_path / "one"))
    first = default_store()
    assert first.path == (tmp_path / "one" / "state.db").resolve()
    assert default_store() is first
    monkeypatch.setenv("NBDEPLOY_HOME", str(tmp_path / "two"))
    second = default_store()
    assert second is not first
    assert second.path == (tmp_path / "two" / "state.db").resolve()
    assert StateStore().path == second.path
    RunStore(second).create("nb.ipynb", {}, run_id="r-1")
    assert count_runs(tmp_path / "two" / "state.db") == 1
    assert not (tmp_path / "one" / "state.db").exists()
    second.close()


def test_unopenable_store_path_is_a_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    store = StateStore(blocker / "state.db")
    with pytest.raises(StoreError) as info:
        store.connection()
    assert "cannot open the state store" in str(info.value)
    assert info.value.hint is not None and "NBDEPLOY_HOME" in info.value.hint


# -- run records --------------------------------------------------------------------------
def test_new_id_shape() -> None:
    run_id = new_id()
    date, clock, token = run_id.split("-")
    assert len(date) == 6 and date.isdigit()
    assert len(clock) == 6 and clock.isdigit()
    assert len(token) == 8 and int(token, 16) >= 0
    assert new_id() != run_id


def test_create_and_get(runs: RunStore) -> None:
    before = time.time()
    record = runs.create(
        "train.ipynb",
        {"n": 3, "mode": "fast"},
        kernel="python3",
        output_path="/out/train.ipynb",
        step="train",
        fingerprint="abc",
    )
    assert record.status == RUNNING
    assert before <= record.created_at <= time.time()
    assert record.started_at == record.created_at
    assert record.finished_at is None and record.duration_s is None

    loaded = runs.get(record.id)
    assert loaded.id == record.id
    assert loaded.notebook == "train.ipynb"
    assert loaded.parameters == {"n": 3, "mode": "fast"}
    assert loaded.status == RUNNING
    assert loaded.kernel == "python3"
    assert loaded.output_path == "/out/train.ipynb"
    assert loaded.step == "train"
    assert loaded.fingerprint == "abc"
    assert loaded.created_at == record.created_at
    assert (loaded.metrics, loaded.logged_params, loaded.artifacts, loaded.outputs) == (
        {},
        {},
        [],
        {},
    )
    assert loaded.error is None


def test_create_with_explicit_id_and_status(runs: RunStore) -> None:
    runs.create("a.ipynb", {}, run_id="custom-id", status=CACHED)
    assert runs.get("custom-id").status == CACHED
    with pytest.raises(sqlite3.IntegrityError):
        runs.create("a.ipynb", {}, run_id="custom-id")
    assert len(runs.recent()) == 1


def test_finish_records_everything(runs: RunStore) -> None:
    record = runs.create("train.ipynb", {"n": 1}, run_id="run-1")
    runs.finish(
        "run-1",
        FAILED,
        error={"cell": 3, "ename": "KeyError", "evalue": "'x'"},
        metrics=[("acc", 0.9, 0), ("loss", 0.25, 0)],
        logged_params={"model": "forest", "depth": 4, "layers": [1, 2]},
        artifacts=["b.png", "a.csv", "b.png"],
        outputs={"model_path": "model.pkl"},
        kernel="python3",
    )
    loaded = runs.get("run-1")
    assert loaded.status == FAILED
    assert loaded.error == {"cell": 3, "ename": "KeyError", "evalue": "'x'"}
    assert loaded.metrics == {"acc": 0.9, "loss": 0.25}
    assert loaded.logged_params == {"model": "forest", "depth": 4, "layers": [1, 2]}
    assert loaded.artifacts == ["a.csv", "b.png"]  # sorted, duplicates ignored
    assert loaded.outputs == {"model_path": "model.pkl"}
    assert loaded.kernel == "python3"
    assert loaded.finished_at is not None and loaded.finished_at >= record.started_at
    assert loaded.duration_s == round(loaded.finished_at - loaded.started_at, 3)
    data = loaded.to_dict()
    assert data["id"] == "run-1"
    assert data["duration_s"] == loaded.duration_s
    assert data["metrics"] == {"acc": 0.9, "loss": 0.25}


def test_finish_keeps_kernel_when_not_given(runs: RunStore) -> None:
    runs.create("a.ipynb", {}, run_id="r", kernel="python3")
    runs.finish("r", SUCCEEDED)
    loaded = runs.get("r")
    assert loaded.kernel == "python3"
    assert loaded.error is None
    assert loaded.outputs == {}


def test_set_mlflow_run(runs: RunStore) -> None:
    runs.create("a.ipynb", {}, run_id="r")
    runs.set_mlflow_run("r", "0123abcd")
    assert runs.get("r").mlflow_run_id == "0123abcd"


def test_last_metric_value_logged_under_a_name_wins(runs: RunStore) -> None:
    runs.create("a.ipynb", {}, run_id="r")
    runs.finish(
        "r",
        SUCCEEDED,
        metrics=[("acc", 0.1, 0), ("loss", 2.0, 0), ("acc", 0.2, 0), ("acc", 0.3, 0)],
    )
    assert runs.get("r").metrics == {"acc": 0.3, "loss": 2.0}


def test_metric_value_over_steps_is_the_last_step(runs: RunStore) -> None:
    runs.create("a.ipynb", {}, run_id="r")
    runs.finish("r", SUCCEEDED, metrics=[("loss", 0.9, 1), ("loss", 0.5, 2), ("loss", 0.3, 3)])
    assert runs.get("r").metrics == {"loss": 0.3}


def test_metric_value_with_steps_out_of_order_follows_mlflow(runs: RunStore) -> None:
    # Like MLflow's "latest" value: the highest step wins, then the last logged at that step.
    runs.create("a.ipynb", {}, run_id="r")
    runs.finish("r", SUCCEEDED, metrics=[("loss", 0.3, 5), ("loss", 0.9, 1), ("loss", 0.4, 5)])
    assert runs.get("r").metrics == {"loss": 0.4}


def test_metrics_of_several_runs_do_not_mix(runs: RunStore) -> None:
    runs.create("a.ipynb", {}, run_id="r1")
    runs.create("a.ipynb", {}, run_id="r2")
    runs.finish("r1", SUCCEEDED, metrics=[("acc", 0.1, 0)], artifacts=["x"])
    runs.finish("r2", SUCCEEDED, metrics=[("acc", 0.2, 0)], logged_params={"p": 1})
    by_id = {r.id: r for r in runs.recent()}
    assert by_id["r1"].metrics == {"acc": 0.1}
    assert by_id["r2"].metrics == {"acc": 0.2}
    assert by_id["r1"].artifacts == ["x"] and by_id["r2"].artifacts == []
    assert by_id["r1"].logged_params == {} and by_id["r2"].logged_params == {"p": 1}


def test_get_by_unique_prefix(runs: RunStore) -> None:
    runs.create("a.ipynb", {}, run_id="240101-120000-aaaaaa")
    runs.create("b.ipynb", {}, run_id="240101-120000-aabbbb")
    runs.create("c.ipynb", {}, run_id="240102-090000-cccccc")
    assert runs.get("240102").notebook == "c.ipynb"
    assert runs.get("240101-120000-aaa").notebook == "a.ipynb"
    assert runs.get("240101-120000-aab").notebook == "b.ipynb"
    assert runs.get("240101-120000-aaaaaa").notebook == "a.ipynb"


def test_exact_id_wins_over_longer_ids_it_prefixes(runs: RunStore) -> None:
    runs.create("short.ipynb", {}, run_id="run")
    runs.create("long1.ipynb", {}, run_id="run-1")
    runs.create("long2.ipynb", {}, run_id="run-2")
    assert runs.get("run").notebook == "short.ipynb"


def test_ambiguous_prefix(runs: RunStore) -> None:
    runs.create("a.ipynb", {}, run_id="240101-120000-aaaaaa")
    runs.create("b.ipynb", {}, run_id="240101-120000-aabbbb")
    with pytest.raises(RunNotFoundError) as info:
        runs.get("240101-120000-aa")
    assert info.value.message == "the id prefix '240101-120000-aa' matches several runs"
    assert info.value.hint == "give more characters of the id"


def test_unknown_id(runs: RunStore) -> None:
    runs.create("a.ipynb", {}, run_id="240101-120000-aaaaaa")
    with pytest.raises(RunNotFoundError) as info:
        runs.get("999")
    assert info.value.message == "no run with id '999'"
    assert info.value.hint is not None and "nbdeploy runs" in info.value.hint
    with pytest.raises(RunNotFoundError, match="no run with id"):
        RunStore(StateStore(runs.store.path.with_name("empty.db"))).get("240101")


def test_prefix_wildcards_are_literal(runs: RunStore) -> None:
    runs.create("underscore.ipynb", {}, run_id="a_b")
    runs.create("x.ipynb", {}, run_id="axb")
    runs.create("percent.ipynb", {}, run_id="c%d")
    assert runs.get("a_").notebook == "underscore.ipynb"
    assert runs.get("c%").notebook == "percent.ipynb"
    with pytest.raises(RunNotFoundError, match="no run with id"):
        runs.get("%")
    with pytest.raises(RunNotFoundError, match="no run with id"):
        runs.get("_xb")


def test_recent_lists_newest_first_with_a_limit(runs: RunStore) -> None:
    for i in range(5):
        runs.create("a.ipynb", {"i": i}, run_id=f"run-{i}")
    assert [r.id for r in runs.recent()] == ["run-4", "run-3", "run-2", "run-1", "run-0"]
    assert [r.id for r in runs.recent(limit=2)] == ["run-4", "run-3"]
    assert [r.parameters["i"] for r in runs.recent(limit=3)] == [4, 3, 2]


def test_groups(runs: RunStore) -> None:
    group = runs.create_group("pipeline", "pipeline.yaml", {"steps": ["a", "b"]})
    assert group.status == RUNNING
    runs.create("a.ipynb", {}, run_id="g-a", group_id=group.id, step="a")
    runs.create("b.ipynb", {}, run_id="g-b", group_id=group.id, step="b")
    runs.create("other.ipynb", {}, run_id="alone")
    grouped = runs.recent(group_id=group.id)
    assert [(r.id, r.step, r.group_id) for r in grouped] == [
        ("g-a", "a", group.id),
        ("g-b", "b", group.id),
    ]
    runs.finish_group(group.id, SUCCEEDED)
    row = (
        runs.store.connection()
        .execute("SELECT kind, source, spec, status, finished_at FROM run_groups")
        .fetchone()
    )
    assert (row["kind"], row["source"], row["spec"], row["status"]) == (
        "pipeline",
        "pipeline.yaml",
        '{"steps": ["a", "b"]}',
        SUCCEEDED,
    )
    assert row["finished_at"] is not None
    with pytest.raises(sqlite3.IntegrityError):  # foreign keys are enforced
        runs.create("a.ipynb", {}, group_id="no-such-group")


def test_latest_success(runs: RunStore) -> None:
    assert runs.latest_success("fp") is None
    runs.create("a.ipynb", {}, run_id="old", fingerprint="fp")
    runs.finish("old", SUCCEEDED, outputs={"v": 1})
    time.sleep(0.002)
    runs.create("a.ipynb", {}, run_id="new", fingerprint="fp")
    runs.finish("new", SUCCEEDED, outputs={"v": 2})
    time.sleep(0.002)
    runs.create("a.ipynb", {}, run_id="newest-failed", fingerprint="fp")
    runs.finish("newest-failed", FAILED)
    runs.create("a.ipynb", {}, run_id="running", fingerprint="fp")
    runs.create("a.ipynb", {}, run_id="other", fingerprint="other-fp")
    runs.finish("other", SUCCEEDED)

    latest = runs.latest_success("fp")
    assert latest is not None
    assert latest.id == "new"
    assert latest.outputs == {"v": 2}
    assert runs.latest_success("unknown") is None


def test_records_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    first = StateStore(path)
    RunStore(first).create("a.ipynb", {"x": [1, 2]}, run_id="r")
    RunStore(first).finish("r", SUCCEEDED, metrics=[("m", 1.5, 0)])
    first.close()
    second = StateStore(path)
    try:
        record = RunStore(second).get("r")
        assert record.parameters == {"x": [1, 2]}
        assert record.metrics == {"m": 1.5}
    finally:
        second.close()


# -- transactions and concurrency ---------------------------------------------------------
def test_failed_transaction_leaves_no_partial_rows(store: StateStore, runs: RunStore) -> None:
    runs.create("keep.ipynb", {}, run_id="kept")
    with pytest.raises(RuntimeError, match="boom"), store.transaction() as conn:
        conn.execute(
            "INSERT INTO runs (id, notebook, status, created_at) VALUES ('half', 'x', 'r', 1)"
        )
        conn.execute(
            "INSERT INTO run_metrics (run_id, name, value, logged_at) VALUES ('half','m',1,1)"
        )
        conn.execute("UPDATE runs SET status = 'broken' WHERE id = 'kept'")
        raise RuntimeError("boom")
    conn = store.connection()
    assert [tuple(row) for row in conn.execute("SELECT id, status FROM runs")] == [
        ("kept", RUNNING)
    ]
    assert conn.execute("SELECT COUNT(*) FROM run_metrics").fetchone()[0] == 0
    assert not conn.in_transaction
    # The store is still usable for writes afterwards.
    runs.create("next.ipynb", {}, run_id="next")
    assert {r.id for r in runs.recent()} == {"kept", "next"}


def test_finish_failing_half_way_changes_nothing(runs: RunStore) -> None:
    runs.create("a.ipynb", {}, run_id="r")
    with pytest.raises(sqlite3.IntegrityError):  # NOT NULL on run_metrics.name
        runs.finish("r", SUCCEEDED, metrics=[("ok", 1.0, 0), (None, 1.0, 0)])  # type: ignore[list-item]
    record = runs.get("r")
    assert record.status == RUNNING
    assert record.finished_at is None
    assert record.metrics == {}


WRITER = """
import pathlib, sys, time
from nbdeploy.store import StateStore
from nbdeploy.store.runs import RunStore

path, worker, go = sys.argv[1], sys.argv[2], pathlib.Path(sys.argv[3])
pathlib.Path(f"{go}.{worker}.ready").touch()
deadline = time.monotonic() + 60
while not go.exists():
    if time.monotonic() > deadline:
        sys.exit("never told to go")
    time.sleep(0.001)
runs = RunStore(StateStore(path))
for i in range(50):
    runs.create("nb.ipynb", {"worker": worker, "i": i}, run_id=f"{worker}-{i:02d}")
print("done", worker)
"""


def test_concurrent_writers_from_threads_and_processes(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    created = StateStore(path)  # an existing store (see the test below for a new one)
    assert created.schema_version == LATEST_VERSION
    created.close()
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), f"proc{n}", str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(2)
    ]
    try:
        deadline = time.monotonic() + 30
        while not all(Path(f"{go}.proc{n}.ready").exists() for n in range(2)):
            assert time.monotonic() < deadline, "the writer processes did not start"
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            time.sleep(0.01)

        shared = StateStore(path)  # one store, a connection per thread
        errors: list[BaseException] = []
        start = threading.Barrier(3)

        def write(worker: str) -> None:
            try:
                runs = RunStore(shared)
                start.wait()
                for i in range(50):
                    runs.create("nb.ipynb", {"worker": worker, "i": i}, run_id=f"{worker}-{i:02d}")
            except BaseException as exc:
                errors.append(exc)
            finally:
                shared.close()

        threads = [threading.Thread(target=write, args=(f"thread{n}",)) for n in range(2)]
        for thread in threads:
            thread.start()
        go.touch()
        start.wait()
        for thread in threads:
            thread.join(timeout=60)
        results = [p.communicate(timeout=60) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()

    assert errors == []
    for n, (p, (out, err)) in enumerate(zip(procs, results, strict=True)):
        assert p.returncode == 0, err
        assert out.strip() == f"done proc{n}"
        assert "database is locked" not in err
    assert count_runs(path) == 200
    check = StateStore(path)
    try:
        assert check.schema_version == LATEST_VERSION
        records = RunStore(check).recent(limit=1000)
        by_worker: dict[str, set[int]] = {}
        for record in records:
            by_worker.setdefault(record.parameters["worker"], set()).add(record.parameters["i"])
        assert by_worker == {
            worker: set(range(50)) for worker in ("proc0", "proc1", "thread0", "thread1")
        }
    finally:
        check.close()


def test_opening_a_new_store_waits_for_another_writer(tmp_path: Path) -> None:
    # What happens when two processes or threads open a store file that is still new: one of
    # them switches the file to WAL (an exclusive lock) while the other tries to do the same.
    path = tmp_path / "state.db"
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    other.execute("CREATE TABLE other_tool (x INTEGER)")
    release = threading.Timer(0.3, other.execute, args=("COMMIT",))
    release.start()
    store = StateStore(path)
    try:
        started = time.monotonic()
        assert store.schema_version == LATEST_VERSION  # waits for the lock, then migrates
        assert time.monotonic() - started >= 0.2
        conn = store.connection()
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert "other_tool" in tables(conn)
    finally:
        release.join()
        store.close()
        other.close()


# -- missing metric values (NaN, infinity) --------------------------------------------------
def test_non_finite_metrics_are_stored_as_missing_and_the_run_is_kept(
    store: StateStore, runs: RunStore
) -> None:
    runs.create("a.ipynb", {}, run_id="r")
    runs.finish(
        "r",
        SUCCEEDED,
        metrics=[
            ("acc", 0.5, 0),
            ("loss", float("nan"), 0),
            ("up", float("inf"), 0),
            ("down", float("-inf"), 0),
            ("gone", None, 0),
        ],
        logged_params={"model": "forest"},
    )
    loaded = runs.get("r")
    assert loaded.status == SUCCEEDED
    assert loaded.metrics == {"acc": 0.5, "loss": None, "up": None, "down": None, "gone": None}
    assert loaded.logged_params == {"model": "forest"}
    rows = store.connection().execute(
        "SELECT name, value FROM run_metrics WHERE run_id = 'r' ORDER BY rowid"
    )
    assert [tuple(row) for row in rows] == [
        ("acc", 0.5),
        ("loss", None),
        ("up", None),
        ("down", None),
        ("gone", None),
    ]
    assert json.loads(json.dumps(loaded.to_dict(), allow_nan=False))["metrics"]["loss"] is None


def test_a_missing_value_logged_last_is_the_metric_value(runs: RunStore) -> None:
    runs.create("a.ipynb", {}, run_id="r")
    runs.finish("r", SUCCEEDED, metrics=[("loss", 0.5, 0), ("loss", float("nan"), 1)])
    assert runs.get("r").metrics == {"loss": None}


def _v3_store_with_runs(path: Path) -> None:
    old = StateStore(path, target_version=3)
    with old.transaction() as conn:
        for run_id, status in (("old-running", RUNNING), ("old-done", SUCCEEDED)):
            conn.execute(
                "INSERT INTO runs (id, notebook, parameters, status, created_at) "
                "VALUES (?, 'nb.ipynb', '{}', ?, 1000.0)",
                (run_id, status),
            )
        conn.executemany(
            "INSERT INTO run_metrics (run_id, name, value, step, logged_at) VALUES (?,?,?,?,?)",
            [("old-done", "acc", value, 0, 1.0) for value in (0.1, 0.3, 0.2)],
        )
    old.close()


def test_migration_4_keeps_metrics_in_order_and_allows_missing_values(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    _v3_store_with_runs(path)
    store = StateStore(path)
    try:
        assert store.schema_version == LATEST_VERSION >= 4
        conn = store.connection()
        assert {"pid", "pid_create_time", "host"} <= columns(conn, "runs")
        notnull = {row[1]: row[3] for row in conn.execute("PRAGMA table_info(run_metrics)")}
        assert notnull["value"] == 0 and notnull["name"] == 1
        indexes = {row[1] for row in conn.execute("PRAGMA index_list(run_metrics)")}
        assert "run_metrics_by_run" in indexes
        runs = RunStore(store)
        assert runs.get("old-done").metrics == {"acc": 0.2}  # the last one logged, as before
        # A run recorded before runs had an owner cannot be judged: it is left as it was.
        old = runs.get("old-running")
        assert (old.status, old.pid, old.pid_create_time, old.host) == (RUNNING, None, None, None)
        runs.finish("old-done", SUCCEEDED, metrics=[("nan", float("nan"), 0)])
        assert runs.get("old-done").metrics["nan"] is None
    finally:
        store.close()
    assert len(list(tmp_path.glob("state.db.v3-*.bak"))) == 1


# -- runs whose process is gone -------------------------------------------------------------
def _dead_pid() -> tuple[int, float]:
    import psutil

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.2)"])
    create_time = psutil.Process(child.pid).create_time()
    child.wait()
    return child.pid, create_time


def test_runs_record_the_process_running_them(runs: RunStore) -> None:
    import psutil

    record = runs.create("a.ipynb", {}, run_id="r")
    loaded = runs.get("r")
    assert (loaded.pid, loaded.host) == (os.getpid(), socket.gethostname())
    assert loaded.pid_create_time == psutil.Process(os.getpid()).create_time()
    assert (record.pid, record.pid_create_time) == (loaded.pid, loaded.pid_create_time)
    assert loaded.to_dict()["pid"] == os.getpid()
    assert current_owner() == Owner(os.getpid(), loaded.pid_create_time, socket.gethostname())


def test_a_running_run_of_a_live_process_stays_running(runs: RunStore) -> None:
    runs.create("a.ipynb", {}, run_id="mine")  # owned by this (live) process
    assert runs.get("mine").status == RUNNING
    assert [r.status for r in runs.recent()] == [RUNNING]


def test_a_running_run_whose_process_is_gone_is_settled_as_interrupted(
    store: StateStore, runs: RunStore
) -> None:
    pid, create_time = _dead_pid()
    runs.create("a.ipynb", {}, run_id="dead", owner=Owner(pid, create_time, socket.gethostname()))
    [listed] = runs.recent()
    assert listed.status == INTERRUPTED
    assert listed.error is not None and listed.error["kind"] == INTERRUPTED
    assert GONE_MESSAGE in listed.error["message"] and str(pid) in listed.error["message"]
    assert listed.finished_at is None  # when it stopped is unknown
    # Saved, not just shown: a plain read of the row sees it.
    row = store.connection().execute("SELECT status, error FROM runs WHERE id = 'dead'").fetchone()
    assert row["status"] == INTERRUPTED and GONE_MESSAGE in json.loads(row["error"])["message"]
    assert runs.get("dead").status == INTERRUPTED


def test_a_run_whose_pid_was_reused_is_settled_by_get(runs: RunStore) -> None:
    import psutil

    started = psutil.Process(os.getpid()).create_time()
    # This process's pid, but a process that started long before: the pid was reused.
    runs.create("a.ipynb", {}, run_id="reused", owner=Owner(os.getpid(), started - 3600, ""))
    loaded = runs.get("reus")
    assert loaded.status == INTERRUPTED
    assert GONE_MESSAGE in loaded.error["message"]


def test_a_zombie_process_counts_as_gone(runs: RunStore) -> None:
    import psutil

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        process = psutil.Process(child.pid)
        owner = Owner(child.pid, process.create_time(), socket.gethostname())
        deadline = time.monotonic() + 30
        while process.status() != psutil.STATUS_ZOMBIE:  # exited, not reaped yet
            assert time.monotonic() < deadline
            time.sleep(0.01)
        runs.create("a.ipynb", {}, run_id="zombie", owner=owner)
        assert runs.get("zombie").status == INTERRUPTED
    finally:
        child.wait()


def test_runs_of_other_hosts_and_ended_runs_are_left_alone(runs: RunStore) -> None:
    pid, create_time = _dead_pid()
    runs.create("a.ipynb", {}, run_id="elsewhere", owner=Owner(pid, create_time, "other-host"))
    runs.create("a.ipynb", {}, run_id="done", owner=Owner(pid, create_time, ""))
    runs.finish("done", FAILED, error={"message": "bad"})
    assert runs.get("elsewhere").status == RUNNING
    done = runs.get("done")
    assert (done.status, done.error) == (FAILED, {"message": "bad"})


def test_end_if_running_ends_a_run_once(runs: RunStore) -> None:
    runs.create("a.ipynb", {}, run_id="r")
    error = {"kind": INTERRUPTED, "message": "a.ipynb: interrupted (Ctrl-C)"}
    assert runs.end_if_running("r", INTERRUPTED, error, finished_at=time.time()) is True
    assert runs.end_if_running("r", FAILED, {"message": "later"}) is False
    loaded = runs.get("r")
    assert (loaded.status, loaded.error) == (INTERRUPTED, error)
    assert loaded.duration_s is not None
