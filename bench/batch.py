"""Benchmark: ``nbdeploy batch`` against what a user would otherwise run to score a file.

What is compared, and why
-------------------------
``nbdeploy batch NAME INPUT --output OUTPUT`` scores a file with a deployed version's own
function, without HTTP, in a process per core, streaming the input in chunks. A user who
has no such command scores a file either with a loop of their own around the model, or by
slicing the file into requests to the running service. The batch command is worth having
if it is faster than both, its memory does not grow with the file, Dask costs little on
one machine, and a scheduled batch starts on time. Measured side by side, in one run:

1. ``batch``: ``nbdeploy batch bench-batch-model data.parquet --output out.parquet
   --no-mlflow --json`` (local executor, default workers: one per core), where
   ``bench-batch-model`` is the notebook's fitted model deployed as it is (``%deploy model
   --reference X_ref``, its rows reach ``model.predict`` as an array): the same work the
   loop below does. ``function``: the same command on ``bench-batch``, the notebook's
   ``predict(rows: list[list[float]])``, whose rows are lists (as the service passes them)
   that the function turns into an array again. MLflow is off (the loop records nothing
   either).
2. ``loop``: the loop a user writes, in one process: ``pyarrow.parquet.ParquetFile
   .iter_batches`` (50,000 rows, nbdeploy's default chunk) -> ``model.predict`` on the 20
   feature columns -> a ``ParquetWriter`` writing the same columns (the input's and
   ``prediction``); the model is the same object, loaded from a pickle written here.
3. ``http``: the file sliced into 1,000-row requests, ``{"rows": [[...], ...]}`` POSTed to
   the running deployment's ``/predict`` by a pool of as many client threads as cores,
   each with a kept-alive connection, the answers written to Parquet in input order.
4. ``dask``: ``nbdeploy batch ... --executor dask --workers 2`` (a LocalCluster of 2 worker
   processes started by the command, on the same file).
5. Peak memory of ``nbdeploy batch`` over a file and over one 10 times larger (full run:
   1,000,000 and 10,000,000 rows; ``--quick``: 200,000 and 2,000,000 rows, the same 10x
   ratio at smaller sizes). Peak = the largest summed RSS of the command's process tree
   (psutil, sampled every 50 ms; shared pages count once per process).
6. Schedules: the delay from a fire's scheduled time to its start (``started_at -
   scheduled_for`` from ``nbdeploy schedule history NAME --json``), p99 over the fires
   (linear interpolation: with few fires, close to the largest). Full run: a once-a-minute
   schedule (``--cron "0 * * * * *"``, 6 fields, seconds first) for 5 fires; ``--quick``:
   every 10 s (``"*/10 * * * * *"``) for about 60 s (6 fires). The command is a trivial
   one: ``run`` of a one-cell notebook.

Every side's time is the wall time of its whole command, start to exit, as a user waits for
it (interpreter start and imports included); sides 1-4 run on the same 1,000,000-row
Parquet file (``id`` and ``f0``..``f19`` float64: rows of X_train drawn at random plus a
little noise, so that the file looks like the training data; written in row groups of
100,000 rows, never held whole), after one untimed warm-up of ``nbdeploy batch`` on a
small file. Processes a command leaves behind are awaited (then ended) before the next.
Quick: one timed run of each side; full: three, in rotating order, medians. Every side's
peak memory is sampled as in 5 (for ``http``, the client's: the service runs anyway). The
outputs must agree: the loop's predictions are the reference; ``batch``'s, ``http``'s and
``dask``'s must equal them row for row (all rows, by ``id``, in input order), or the
benchmark fails.

Ratios (goals from the issue; its "pandas loop" is the loop of 2., in pyarrow chunks):
``batch_vs_pandas_loop`` = batch s / loop s (<= 0.6: the model both ways);
``batch_vs_http_slices`` = function s / http s (<= 0.2: the notebook's function both ways);
``function_vs_pandas_loop`` = function s / loop s (reported, no goal);
``peak_memory_ratio_10x`` = peak over the 10x file / peak over the 1x file (<= 1.2);
``dask_vs_local`` = dask s / batch s (<= 1.3); ``schedule_start_delay_p99_s`` (<= 2).

The model is example_notebooks/train.ipynb's: RandomForestClassifier(n_estimators=50,
max_depth=6) on make_classification (1,000 rows, 20 features, 75% for training, X_train a
DataFrame with columns f0..f19), and its ``predict(rows: list[list[float]]) -> list[int]``,
deployed from this process with the Python API (``nbdeploy.deploy(predict,
name="bench-batch", namespace=..., reference="X_train", mlflow=False)``) in a temporary
``NBDEPLOY_HOME``. Every process started carries a token in its environment; at the end
the deployment and the schedule are removed, the daemon and launcher stopped, and marked
processes still alive are ended and counted (``leftover_processes``); the temporary folder
(with the data files) is removed.

Usage::

    .venv/bin/python bench/batch.py [--quick] [--json]

``--quick`` takes about 3 minutes on 2 cores; the full run about 12. ``--json``: stdout ends
with one JSON object of the results. A missed goal does not change the exit status; a
failed measurement (a command that fails or times out, outputs that disagree) does.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import linecache
import os
import pickle
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchkit import TOKEN_ENV, BenchError, end_processes, log, marked_pids, tail

NAME = "bench-batch"
MODEL_NAME = "bench-batch-model"  # the fitted model itself
SCHEDULE = "bench-batch-tick"
PYTHON = sys.executable
VENV_BIN = Path(sys.executable).parent
NBDEPLOY = VENV_BIN / "nbdeploy"
THIS = Path(__file__).resolve()

FEATURES = [f"f{i}" for i in range(20)]
ROWS = 1_000_000  # the issue fixes the size, in --quick too
ROW_GROUP = 100_000
WARM_ROWS = 20_000
MEMORY_ROWS = {"quick": 200_000, "full": ROWS}  # the 1x file; the other is 10 times larger
LOOP_CHUNK_ROWS = 50_000  # nbdeploy batch's default chunk
SLICE_ROWS = 1_000
SAMPLE_S = 0.05
COMMAND_TIMEOUT_S = 900.0
REQUEST_TIMEOUT_S = 120.0
LINGER_WAIT_S = 15.0
DASK_WORKERS = 2

QUICK_CRON, QUICK_FIRES = "*/10 * * * * *", 6
FULL_CRON, FULL_FIRES = "0 * * * * *", 5

# name -> (sign, goal): the goals
GOALS: dict[str, tuple[str, float]] = {
    "batch_vs_pandas_loop": ("<=", 0.6),
    "batch_vs_http_slices": ("<=", 0.2),
    "peak_memory_ratio_10x": ("<=", 1.2),
    "dask_vs_local": ("<=", 1.3),
    "schedule_start_delay_p99_s": ("<=", 2.0),
}

# The notebook (example_notebooks/train.ipynb, synthetic data): cells run into one namespace.
TRAIN_CELL = """
import numpy as np
import pandas as pd
from sklearn.datasets import make_classification
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import train_test_split

X_syn, y_syn = make_classification(n_samples=1000, n_features=20, random_state=0)
frame = pd.DataFrame(X_syn, columns=[f"f{i}" for i in range(X_syn.shape[1])])
frame["target"] = y_syn
features = frame.drop(columns=["target"])
X_train, X_test, y_train, y_test = train_test_split(
    features, frame["target"], test_size=0.25, random_state=0
)
model = RandomForestClassifier(n_estimators=50, max_depth=6, random_state=0)
model.fit(X_train.to_numpy(), y_train)
"""
PREDICT_CELL = '''
def predict(rows: list[list[float]]) -> list[int]:
    """Class (0 or 1) for each row of features."""
    return model.predict(np.asarray(rows, dtype=float)).tolist()
'''
TICK_NOTEBOOK = {
    "cells": [
        {
            "cell_type": "code",
            "execution_count": None,
            "id": "tick",
            "metadata": {},
            "outputs": [],
            "source": ["x = 1"],
        }
    ],
    "metadata": {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    },
    "nbformat": 4,
    "nbformat_minor": 5,
}


# --- data ----------------------------------------------------------------------------------


def write_data(path: Path, rows: int, seed: int, reference: Any) -> None:
    """``rows`` rows of ``id`` and f0..f19 (float64), written a row group at a time: rows of
    ``reference`` (the training inputs) drawn at random, with a little noise, so that the
    file looks like what the model was trained on (no drift)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    base = np.asarray(reference, dtype=np.float64)
    schema = pa.schema([("id", pa.int64())] + [(name, pa.float64()) for name in FEATURES])
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, rows, ROW_GROUP):
            count = min(ROW_GROUP, rows - start)
            values = base[rng.integers(0, len(base), size=count)]
            values += rng.normal(0.0, 0.05, size=values.shape)
            columns = [pa.array(np.arange(start, start + count, dtype=np.int64))]
            columns += [pa.array(values[:, i]) for i in range(len(FEATURES))]
            writer.write_table(pa.Table.from_arrays(columns, schema=schema), row_group_size=count)


def feature_matrix(batch: Any) -> Any:
    """The 20 feature columns of a pyarrow RecordBatch as a float64 numpy array."""
    import numpy as np

    return np.column_stack(
        [batch.column(batch.schema.get_field_index(name)).to_numpy() for name in FEATURES]
    ).astype(np.float64, copy=False)


# --- the baselines, each run as a process of its own ---------------------------------------


def loop_main(model_path: str, input_path: str, output_path: str) -> int:
    """The hand-written loop: chunks of the file -> model.predict -> ParquetWriter."""
    started = time.perf_counter()
    import pyarrow as pa
    import pyarrow.parquet as pq

    with open(model_path, "rb") as handle:
        model = pickle.load(handle)  # written by this benchmark
    rows = 0
    writer: Any = None
    try:
        for batch in pq.ParquetFile(input_path).iter_batches(batch_size=LOOP_CHUNK_ROWS):
            predictions = model.predict(feature_matrix(batch))
            table = pa.Table.from_batches([batch]).append_column(
                "prediction", pa.array(predictions)
            )
            if writer is None:
                writer = pq.ParquetWriter(output_path, table.schema)
            writer.write_table(table)
            rows += batch.num_rows
    finally:
        if writer is not None:
            writer.close()
    print(json.dumps({"rows": rows, "seconds": round(time.perf_counter() - started, 3)}))
    return 0


def http_main(url: str, input_path: str, output_path: str, threads: int) -> int:
    """The file sliced into 1,000-row requests to the service, answers written in order."""
    started = time.perf_counter()
    import http.client
    import urllib.parse

    import pyarrow as pa
    import pyarrow.parquet as pq

    target = urllib.parse.urlsplit(url)
    host, port, path = target.hostname or "127.0.0.1", target.port or 80, target.path
    local = threading.local()

    def post(rows: list[list[float]]) -> list[Any]:
        body = json.dumps({"rows": rows}).encode()
        headers = {"Content-Type": "application/json", "Connection": "keep-alive"}
        for attempt in (1, 2):  # a kept-alive connection the server closed: reconnect once
            connection = getattr(local, "connection", None)
            if connection is None:
                connection = http.client.HTTPConnection(host, port, timeout=REQUEST_TIMEOUT_S)
                local.connection = connection
            try:
                connection.request("POST", path, body=body, headers=headers)
                answer = connection.getresponse()
                data = answer.read()
            except (ConnectionError, http.client.HTTPException):
                connection.close()
                local.connection = None
                if attempt == 2:
                    raise
                continue
            if answer.status != 200:
                raise BenchError(f"{url} answered {answer.status}: {data[:300]!r}")
            result = json.loads(data)
            if not isinstance(result, list) or len(result) != len(rows):
                raise BenchError(f"{url} answered {str(result)[:200]} for {len(rows)} rows")
            return result
        raise BenchError("unreachable")

    rows = 0
    writer: Any = None
    pending: deque[tuple[Any, Future[list[Any]]]] = deque()

    def write_oldest() -> None:
        nonlocal writer, rows
        batch, future = pending.popleft()
        predictions = future.result(timeout=REQUEST_TIMEOUT_S * 2)
        table = pa.Table.from_batches([batch]).append_column(
            "prediction", pa.array(predictions, type=pa.int64())
        )
        if writer is None:
            writer = pq.ParquetWriter(output_path, table.schema)
        writer.write_table(table)
        rows += batch.num_rows

    try:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            for batch in pq.ParquetFile(input_path).iter_batches(batch_size=SLICE_ROWS):
                pending.append((batch, pool.submit(post, feature_matrix(batch).tolist())))
                if len(pending) >= 2 * threads:  # bounded: a few requests in flight
                    write_oldest()
            while pending:
                write_oldest()
    finally:
        if writer is not None:
            writer.close()
    print(json.dumps({"rows": rows, "seconds": round(time.perf_counter() - started, 3)}))
    return 0


# --- measuring a command -------------------------------------------------------------------


class TreeMemory:
    """The largest summed RSS of a process and its descendants, sampled every 50 ms."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.root: Any = None
        with contextlib.suppress(psutil.Error):  # gone already: nothing to sample
            self.root = psutil.Process(pid)
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        import psutil

        while self.root is not None and not self._stop.is_set():
            total = 0
            try:
                processes = [self.root, *self.root.children(recursive=True)]
            except psutil.Error:
                processes = []
            for process in processes:
                with contextlib.suppress(psutil.Error):
                    total += process.memory_info().rss
            self.peak_bytes = max(self.peak_bytes, total)
            self._stop.wait(SAMPLE_S)

    def stop(self) -> float:
        """Peak in MB."""
        self._stop.set()
        self._thread.join(timeout=5)
        return round(self.peak_bytes / 1e6, 1)


@dataclass
class Measured:
    """One run of a command: wall time, peak memory, and the JSON object it printed last."""

    seconds: float
    peak_mb: float
    report: dict[str, Any] = field(default_factory=dict)


def last_json(text: str) -> dict[str, Any]:
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                value = json.loads(line)
                if isinstance(value, dict):
                    return value
    return {}


def measure(label: str, command: list[str], env: dict[str, str]) -> Measured:
    """Run ``command`` to its end (bounded), timed wall-clock, its memory sampled."""
    before = set(marked_pids(env[TOKEN_ENV]))
    with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
        started = time.perf_counter()
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, env=env
        )
        memory = TreeMemory(process.pid)
        code: int | None
        try:
            code = process.wait(timeout=COMMAND_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            end_processes([process.pid], grace=3.0)
            code = None
        seconds = time.perf_counter() - started
        peak_mb = memory.stop()
        _await_leftovers(env[TOKEN_ENV], before)  # not timed
        stdout.seek(0)
        stderr.seek(0)
        out_text = stdout.read().decode(errors="replace")
        err_text = stderr.read().decode(errors="replace")
    if code != 0:
        what = f"timed out after {COMMAND_TIMEOUT_S:g} s" if code is None else f"exited {code}"
        raise BenchError(
            f"{label} {what}\n  command: {' '.join(command)}\n"
            f"--- stderr (tail) ---\n{tail(err_text) or '(empty)'}\n"
            f"--- stdout (tail) ---\n{tail(out_text) or '(empty)'}"
        )
    return Measured(round(seconds, 3), peak_mb, last_json(out_text))


def cli(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 120.0) -> str:
    """An nbdeploy command that must succeed; its stdout."""
    completed = subprocess.run(
        [str(NBDEPLOY), *args],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    if completed.returncode != 0:
        raise BenchError(
            f"nbdeploy {' '.join(args)} exited {completed.returncode}:\n"
            f"{tail(completed.stderr or completed.stdout)}"
        )
    return completed.stdout


# --- the deployment ------------------------------------------------------------------------


class Notebook:
    """Cells executed into one namespace, as a kernel runs them (``__main__``, sources in
    linecache as IPython keeps them)."""

    def __init__(self) -> None:
        self.namespace: dict[str, Any] = {"__name__": "__main__"}
        self.history: list[str] = []

    def run(self, cell: str) -> None:
        filename = f"<bench-batch-cell-{len(self.history)}>"
        linecache.cache[filename] = (len(cell), None, cell.splitlines(True), filename)
        exec(compile(cell, filename, "exec"), self.namespace)
        self.history.append(cell)

    def deploy(self) -> Any:
        import nbdeploy

        return nbdeploy.deploy(
            self.namespace["predict"],
            name=NAME,
            namespace={
                "__name__": "__main__",
                "model": self.namespace["model"],
                "np": self.namespace["np"],
                "X_train": self.namespace["X_train"],
                "predict": self.namespace["predict"],
            },
            history=list(self.history),
            reference="X_train",
            mlflow=False,
            notify=lambda message: log(f"    nbdeploy: {message}"),
        )

    def deploy_model(self) -> Any:
        """The fitted model itself (fitted on arrays: its reference is the array)."""
        import nbdeploy

        model = self.namespace["model"]
        return nbdeploy.deploy(
            model,
            name=MODEL_NAME,
            namespace={"model": model, "X_ref": self.namespace["X_train"].to_numpy()},
            reference="X_ref",
            mlflow=False,
            notify=lambda message: log(f"    nbdeploy: {message}"),
        )


# --- checks --------------------------------------------------------------------------------


def predictions(path: Path, label: str) -> tuple[Any, Any]:
    """``id`` and ``prediction`` of an output file, as int64 numpy arrays."""
    import numpy as np
    import pyarrow.parquet as pq

    if not path.exists():
        raise BenchError(f"{label}: no output at {path}")
    names = pq.ParquetFile(path).schema_arrow.names
    missing = [name for name in ("id", "prediction") if name not in names]
    if missing:
        raise BenchError(f"{label}: output {path.name} lacks {missing}; its columns: {names}")
    table = pq.read_table(path, columns=["id", "prediction"])
    ids = table.column("id").to_numpy().astype(np.int64)
    values = table.column("prediction").to_numpy()
    return ids, values.astype(np.int64)


def check_agrees(reference: Path, other: Path, label: str, rows: int) -> None:
    """``other``'s predictions equal the loop's, row for row, by id; all rows present."""
    import numpy as np

    ref_ids, ref_values = predictions(reference, "loop")
    ids, values = predictions(other, label)
    if len(ids) != rows or len(ref_ids) != rows:
        raise BenchError(f"{label}: {len(ids)} rows out (loop: {len(ref_ids)}), expected {rows}")
    order = np.argsort(ids, kind="stable")
    ref_order = np.argsort(ref_ids, kind="stable")
    if not np.array_equal(ids[order], ref_ids[ref_order]):
        raise BenchError(f"{label}: its ids are not the input's")
    differ = np.flatnonzero(values[order] != ref_values[ref_order])
    if len(differ):
        first = int(ids[order][differ[0]])
        raise BenchError(
            f"{label}: {len(differ)} predictions differ from the loop's (first: id {first})"
        )
    if not np.array_equal(ids, np.sort(ids)):
        raise BenchError(f"{label}: rows are not in input order")


def check_rows_out(measured: Measured, label: str, rows: int) -> None:
    """nbdeploy batch's --json: every row in, out, none failed."""
    report = measured.report
    if not report:
        raise BenchError(f"{label}: printed no JSON object with --json")
    got = (report.get("rows_in"), report.get("rows_out"), report.get("rows_failed"))
    if got != (rows, rows, 0):
        raise BenchError(f"{label}: rows_in/out/failed {got}, expected ({rows}, {rows}, 0)")


# --- the measurements ----------------------------------------------------------------------


def rounded(value: float, digits: int = 3) -> float:
    return round(value, digits)


def side_summary(runs: list[Measured], rows: int) -> dict[str, Any]:
    seconds = statistics.median(run.seconds for run in runs)
    return {
        "seconds": rounded(seconds),
        "rows_per_s": round(rows / seconds),
        "peak_mb": max(run.peak_mb for run in runs),
        "samples_s": [run.seconds for run in runs],
        "reported_seconds": [run.report.get("seconds") for run in runs],
    }


def batch_command(input_path: Path, output: Path, *extra: str, name: str = MODEL_NAME) -> list[str]:
    return [
        str(NBDEPLOY), "batch", name, str(input_path), "--output", str(output),
        "--no-mlflow", "--json", *extra,
    ]  # fmt: skip


def compare_sides(
    quick: bool, work: Path, env: dict[str, str], url: str, model_path: Path, data: Path
) -> dict[str, Any]:
    """Sides 1-4 on the same file; rotating order in the full run; outputs checked."""
    repetitions = 1 if quick else 3
    threads = os.cpu_count() or 1
    commands = {
        "batch": lambda out: batch_command(data, out),
        "function": lambda out: batch_command(data, out, name=NAME),
        "loop": lambda out: [PYTHON, str(THIS), "--loop", str(model_path), str(data), str(out)],
        "http": lambda out: [
            PYTHON,
            str(THIS),
            "--http",
            url + "/predict",
            str(data),
            str(out),
            "--threads",
            str(threads),
        ],
        "dask": lambda out: batch_command(data, out, "--executor", "dask", "--workers", "2"),
    }
    sides = list(commands)
    runs: dict[str, list[Measured]] = {side: [] for side in sides}
    for i in range(repetitions):
        order = sides[i % len(sides) :] + sides[: i % len(sides)]
        for side in order:
            output = work / f"out-{side}.parquet"
            output.unlink(missing_ok=True)
            result = measure(side, commands[side](output), env)
            if side in ("batch", "function", "dask"):
                check_rows_out(result, side, ROWS)
            runs[side].append(result)
            log(
                f"  [{i + 1}/{repetitions}] {side:<5} {result.seconds:7.2f} s  "
                f"{ROWS / result.seconds:9.0f} rows/s  peak {result.peak_mb:7.1f} MB"
            )
        reference = work / "out-loop.parquet"
        for side in ("batch", "function", "http", "dask"):
            check_agrees(reference, work / f"out-{side}.parquet", side, ROWS)
        log(f"  outputs agree: every side's predictions equal the loop's ({ROWS} rows)")
        for side in sides:
            (work / f"out-{side}.parquet").unlink(missing_ok=True)
    summary: dict[str, Any] = {side: side_summary(runs[side], ROWS) for side in sides}
    summary["repetitions"] = repetitions
    summary["client_threads"] = threads
    summary["dask_workers"] = DASK_WORKERS
    return summary


def memory_pair(quick: bool, work: Path, env: dict[str, str], reference: Any) -> dict[str, Any]:
    """Peak memory of nbdeploy batch over a file and over one 10 times larger."""
    small_rows = MEMORY_ROWS["quick" if quick else "full"]
    sizes = {"1x": small_rows, "10x": small_rows * 10}
    result: dict[str, Any] = {}
    for key, rows in sizes.items():
        path = work / f"memory-{key}.parquet"
        if not path.exists():
            log(f"  writing {rows:,} rows to {path.name}")
            write_data(path, rows, 2 if key == "1x" else 3, reference)
        output = work / f"memory-{key}-out.parquet"
        measured = measure(f"batch over {rows:,} rows", batch_command(path, output), env)
        check_rows_out(measured, f"batch over {rows:,} rows", rows)
        result[key] = {
            "rows": rows,
            "file_mb": round(path.stat().st_size / 1e6, 1),
            "seconds": measured.seconds,
            "rows_per_s": round(rows / measured.seconds),
            "peak_mb": measured.peak_mb,
        }
        log(
            f"  {key:<3} {rows:>10,} rows  {measured.seconds:7.2f} s  "
            f"peak {measured.peak_mb:7.1f} MB"
        )
        output.unlink(missing_ok=True)
        path.unlink(missing_ok=True)
    result["sizes_note"] = f"{sizes['1x']:,} vs {sizes['10x']:,} rows" + (
        " (--quick: smaller than the full run's 1,000,000 vs 10,000,000)" if quick else ""
    )
    return result


def timestamp(value: Any) -> float | None:
    """Seconds since the epoch from a number or an ISO 8601 text."""
    from datetime import datetime

    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and value:
        with contextlib.suppress(ValueError):
            return float(value)
        with contextlib.suppress(ValueError):
            return datetime.fromisoformat(value).timestamp()
    return None


def percentile(values: list[float], share: float) -> float:
    """Linear interpolation between the closest ranks (numpy's default)."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * share
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def schedule_delay(quick: bool, work: Path, env: dict[str, str]) -> dict[str, Any]:
    """A schedule running a one-cell notebook; delay = started_at - scheduled_for."""
    cron, fires = (QUICK_CRON, QUICK_FIRES) if quick else (FULL_CRON, FULL_FIRES)
    period = 10.0 if quick else 60.0
    notebook = work / "tick.ipynb"
    notebook.write_text(json.dumps(TICK_NOTEBOOK))
    cli(
        ["schedule", "add", SCHEDULE, "--cron", cron, "--", "run", str(notebook), "--no-mlflow"],
        env,
        work,
    )
    log(f"  schedule {SCHEDULE!r} added: --cron {cron!r}, waiting for {fires} fires")
    deadline = time.monotonic() + period * (fires + 1.5) + 30
    history: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        time.sleep(2.0)
        answer = json.loads(cli(["schedule", "history", SCHEDULE, "--json"], env, work) or "[]")
        history = answer if isinstance(answer, list) else list(answer.get("fires") or [])
        settled = [f for f in history if f.get("status") not in ("running", "queued", None)]
        if len(settled) >= fires:
            break
    with contextlib.suppress(BenchError, subprocess.SubprocessError):
        cli(["schedule", "pause", SCHEDULE], env, work)
    delays: list[float] = []
    statuses: dict[str, int] = {}
    for fire in history:
        status = str(fire.get("status"))
        statuses[status] = statuses.get(status, 0) + 1
        started, scheduled = timestamp(fire.get("started_at")), timestamp(fire.get("scheduled_for"))
        first_attempt = fire.get("attempt") in (None, 1)  # a retry starts later by design
        if started is not None and scheduled is not None and status != "skipped" and first_attempt:
            delays.append(started - scheduled)
    if not delays:
        raise BenchError(
            f"schedule {SCHEDULE}: no fire with started_at and scheduled_for in its history "
            f"within {period * (fires + 1.5) + 30:.0f} s: {json.dumps(history)[:800]}"
        )
    log(f"  {len(delays)} fires, delays (s): {[round(d, 3) for d in delays]}")
    return {
        "cron": cron,
        "fires": len(delays),
        "statuses": statuses,
        "delays_s": [round(d, 3) for d in delays],
        "p50_s": rounded(percentile(delays, 0.5)),
        "p99_s": rounded(percentile(delays, 0.99)),
        "max_s": rounded(max(delays)),
        "note": (
            f"--quick: every 10 s for about 60 s ({len(delays)} fires)"
            if quick
            else f"once a minute ({len(delays)} fires)"
        ),
    }


# --- processes -----------------------------------------------------------------------------


RUNTIME_MODULE = "nbdeploy.deployment.runtime"  # the daemon, launcher and servers


def _is_runtime(pid: int) -> bool:
    """Whether the process is nbdeploy's daemon, launcher or one of their servers: alive
    on purpose (the deployment), not a leftover of a command."""
    import psutil

    with contextlib.suppress(psutil.Error):
        process: Any = psutil.Process(pid)
        for _ in range(6):
            if process is None:
                break
            if any(RUNTIME_MODULE in part for part in process.cmdline()):
                return True
            process = process.parent()
    return False


def _await_leftovers(token: str, before: set[int]) -> int:
    """Processes a command left behind (not the runtime's): awaited, then ended."""

    def leftovers() -> list[int]:
        return [p for p in marked_pids(token) if p not in before and not _is_runtime(p)]

    left = leftovers()
    deadline = time.monotonic() + LINGER_WAIT_S
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = leftovers()
    if left:
        log(f"  ! {len(left)} process(es) alive {LINGER_WAIT_S:.0f} s after exit: ending them")
        end_processes(left, grace=3.0)
    LINGERING.append(len(left))
    return len(left)


LINGERING: list[int] = []  # processes each command left behind (awaited, not timed)


def stop_everything(home: Path, env: dict[str, str]) -> None:
    """Remove the schedule, stop the deployment, the home's daemon and launcher."""
    if not (home / "state.db").exists():
        return
    with contextlib.suppress(Exception):
        subprocess.run(
            [str(NBDEPLOY), "schedule", "remove", SCHEDULE],
            env=env, capture_output=True, timeout=60, check=False,
        )  # fmt: skip
    with contextlib.suppress(Exception):
        import nbdeploy

        nbdeploy.stop(NAME)
        nbdeploy.stop(MODEL_NAME)
    with contextlib.suppress(Exception):
        subprocess.run(
            [str(NBDEPLOY), "daemon", "stop"], env=env, capture_output=True, timeout=60,
            check=False,
        )  # fmt: skip
    with contextlib.suppress(Exception):
        from nbdeploy.deployment.runtime import client, launcher

        client.shutdown()
        launcher.shutdown()


def remaining(token: str, grace: float = 10.0) -> list[int]:
    deadline = time.monotonic() + grace
    while (pids := marked_pids(token)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return pids


# --- the run -------------------------------------------------------------------------------


def run_benchmarks(quick: bool, work: Path, env: dict[str, str]) -> dict[str, Any]:
    log("training the model (example_notebooks/train.ipynb's) and deploying it")
    notebook = Notebook()
    notebook.run(TRAIN_CELL)
    notebook.run(PREDICT_CELL)
    model_path = work / "model.pkl"
    with open(model_path, "wb") as handle:
        pickle.dump(notebook.namespace["model"], handle)
    started = time.perf_counter()
    deployed = notebook.deploy()
    notebook.deploy_model()
    url = str(deployed.url).rstrip("/")
    log(f"  deployed at {url} in {time.perf_counter() - started:.1f} s")

    reference = notebook.namespace["X_train"].to_numpy()
    data = work / "data.parquet"
    log(f"writing {ROWS:,} rows to {data.name} (row groups of {ROW_GROUP:,})")
    write_data(data, ROWS, 1, reference)
    warm = work / "warm.parquet"
    write_data(warm, WARM_ROWS, 4, reference)
    log(f"  {data.stat().st_size / 1e6:.0f} MB; warm-up: nbdeploy batch over {WARM_ROWS:,} rows")
    warm_run = measure("warm-up batch", batch_command(warm, work / "warm-out.parquet"), env)
    check_rows_out(warm_run, "warm-up batch", WARM_ROWS)
    log(f"  warm-up took {warm_run.seconds:.1f} s")

    log("batch, loop, http slices, dask on the same file")
    sides = compare_sides(quick, work, env, url, model_path, data)
    data.unlink(missing_ok=True)

    log("peak memory: nbdeploy batch over a file and over one 10 times larger")
    memory = memory_pair(quick, work, env, reference)

    log("schedule start delay")
    schedule = schedule_delay(quick, work, env)
    return {"sides": sides, "memory": memory, "schedule": schedule}


def results_json(measured: dict[str, Any], quick: bool) -> dict[str, Any]:
    sides, memory, schedule = measured["sides"], measured["memory"], measured["schedule"]
    batch = sides["batch"]["seconds"]
    data: dict[str, Any] = {
        "batch_vs_pandas_loop": rounded(batch / sides["loop"]["seconds"]),
        "batch_vs_http_slices": rounded(sides["function"]["seconds"] / sides["http"]["seconds"]),
        "function_vs_pandas_loop": rounded(sides["function"]["seconds"] / sides["loop"]["seconds"]),
        "peak_memory_ratio_10x": rounded(memory["10x"]["peak_mb"] / memory["1x"]["peak_mb"]),
        "dask_vs_local": rounded(sides["dask"]["seconds"] / batch),
        "schedule_start_delay_p99_s": schedule["p99_s"],
    }
    data["goals"] = {name: f"{sign} {goal:g}" for name, (sign, goal) in GOALS.items()}
    data["met"] = {name: meets(name, data[name]) for name in GOALS}
    for side in ("batch", "function", "loop", "http", "dask"):
        data[f"{side}_seconds"] = sides[side]["seconds"]
        data[f"{side}_rows_per_s"] = sides[side]["rows_per_s"]
        data[f"{side}_peak_mb"] = sides[side]["peak_mb"]
    data.update(
        {
            "rows": ROWS,
            "sides": sides,
            "memory": memory,
            "schedule": schedule,
            "cpu_count": os.cpu_count(),
            "quick": quick,
        }
    )
    return data


def meets(name: str, value: float) -> bool:
    sign, goal = GOALS[name]
    return value <= goal if sign == "<=" else value >= goal


def report(data: dict[str, Any]) -> str:
    mode = "quick" if data["quick"] else "full"
    sides = data["sides"]
    memory = data["memory"]
    schedule = data["schedule"]
    labels = {
        "batch": "nbdeploy batch, the model (local)",
        "function": "nbdeploy batch, the notebook's function",
        "loop": "hand-written loop",
        "http": f"http slices ({sides['client_threads']} threads)",
        "dask": f"nbdeploy batch --executor dask ({sides['dask_workers']} workers)",
    }
    lines = [
        f"nbdeploy batch benchmark ({mode}; {data['cpu_count']} CPUs; {data['rows']:,} rows x "
        f"20 features; {sides['repetitions']} timed run(s) per side, medians; load average "
        f"{data.get('loadavg_1min_before', 0):.2f} before it started)",
        "",
        f"{'side':<44} {'seconds':>8} {'rows/s':>10} {'peak MB':>8}",
    ]
    for side, label in labels.items():
        row = sides[side]
        lines.append(
            f"{label:<44} {row['seconds']:>8.2f} {row['rows_per_s']:>10,} {row['peak_mb']:>8.1f}"
        )
    lines += ["", f"peak memory of nbdeploy batch: {memory['sizes_note']}"]
    for key in ("1x", "10x"):
        row = memory[key]
        lines.append(
            f"  {key:<4} {row['rows']:>11,} rows {row['file_mb']:>7.1f} MB file "
            f"{row['seconds']:>7.2f} s  peak {row['peak_mb']:>7.1f} MB"
        )
    lines += [
        "",
        f"schedule {schedule['cron']!r}: {schedule['note']}; delays {schedule['delays_s']} s",
        "",
        f"{'measure':<30} {'value':>9}  {'goal':<7} verdict",
    ]
    for name, (sign, goal) in GOALS.items():
        verdict = "PASS" if data["met"][name] else "MISS"
        lines.append(f"{name:<30} {data[name]:>9.3f}  {sign} {goal:<4g} {verdict}")
    lines.append(
        f"{'function_vs_pandas_loop':<30} {data['function_vs_pandas_loop']:>9.3f}  (no goal)"
    )
    if data.get("leftover_processes"):
        lines += ["", f"note: {data['leftover_processes']} process(es) were left and ended"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    summary = " ".join(__doc__.split("\n\n")[0].split()) if __doc__ else None
    parser = argparse.ArgumentParser(description=summary)
    parser.add_argument("--quick", action="store_true", help="one run per side (about 3 min)")
    parser.add_argument(
        "--json", action="store_true", help="end stdout with one JSON object of results"
    )
    # The baselines' own processes (this file, run by the benchmark).
    parser.add_argument("--loop", nargs=3, metavar=("MODEL", "INPUT", "OUTPUT"), help="(internal)")
    parser.add_argument("--http", nargs=3, metavar=("URL", "INPUT", "OUTPUT"), help="(internal)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="(internal)")
    args = parser.parse_args(argv)
    if args.loop:
        model, input_path, output = args.loop
        return loop_main(model, input_path, output)
    if args.http:
        url, input_path, output = args.http
        return http_main(url, input_path, output, threads=args.threads)
    if not os.access(NBDEPLOY, os.X_OK):
        print(f"bench: {NBDEPLOY} not found: run this with the venv's python", file=sys.stderr)
        return 2

    token = uuid.uuid4().hex
    work = Path(tempfile.mkdtemp(prefix="nbdeploy-bench-batch-"))
    home = work / "home"
    for key in list(os.environ):
        if key.startswith(("NBDEPLOY_", "MLFLOW_", "JPY_", "DASK_")):
            del os.environ[key]
    os.environ["NBDEPLOY_HOME"] = str(home)
    os.environ[TOKEN_ENV] = token  # everything started here (and its children) carries it
    env = dict(os.environ)
    load_before = os.getloadavg()[0]  # other work on the machine skews every number here
    started = time.perf_counter()
    LINGERING.clear()
    try:
        measured = run_benchmarks(args.quick, work, env)
    except (BenchError, subprocess.SubprocessError, OSError, ValueError) as error:
        print(f"bench: FAILED: {error}", file=sys.stderr)
        return 1
    except Exception as error:  # a deploy that failed: nbdeploy's own errors
        print(f"bench: FAILED: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
    finally:
        stop_everything(home, env)
        leftovers = remaining(token)
        if leftovers:
            log(f"  ! {len(leftovers)} process(es) of this benchmark still alive: ending them")
            end_processes(leftovers)
        shutil.rmtree(work, ignore_errors=True)
    took = time.perf_counter() - started
    log(f"took {took:.0f} s")
    data = results_json(measured, args.quick)
    data["leftover_processes"] = len(leftovers) + sum(LINGERING)
    data["total_s"] = round(took, 1)
    data["loadavg_1min_before"] = round(load_before, 2)
    print(report(data))
    if args.json:
        print(json.dumps(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
