"""Record runs in MLflow: params, metrics, the output notebook and logged artifacts.

MLflow costs seconds to import and to open a SQLite tracking store. That work happens in
one helper process per nbdeploy process (:mod:`nbdeploy.pipeline.tracking_worker`), started
when the first run starts, so it runs on another core while the notebook executes, and is
shared by every run of a sweep or pipeline. Tracking never fails a run: a tracking error
becomes a warning. Metrics logged as missing (NaN, infinity) are left out of MLflow.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeoutError
from pathlib import Path
from typing import Any

from nbdeploy import config
from nbdeploy.private_files import open_private

EXPERIMENT_ENV = "MLFLOW_EXPERIMENT_NAME"
REPLY_TIMEOUT_SECONDS = 300


class TrackingWorker:
    """The helper process, spoken to in JSON lines: one request, one reply, matched by id."""

    def __init__(self) -> None:
        log = open_private(config.home() / "mlflow-worker.log", "ab")  # held by the child
        self.process = subprocess.Popen(
            [sys.executable, "-m", "nbdeploy.pipeline.tracking_worker"],
            # In nbdeploy's home: whatever MLflow writes to a relative place (./mlruns)
            # lands there, never beside the notebook.
            cwd=config.home(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            bufsize=1,
        )
        log.close()
        self._lock = threading.Lock()
        self._pending: dict[str, Future[dict[str, Any]]] = {}
        self._reader = threading.Thread(
            target=self._read, name="nbdeploy-mlflow-reader", daemon=True
        )
        self._reader.start()

    def request(self, request_id: str, **payload: Any) -> Future[dict[str, Any]]:
        future: Future[dict[str, Any]] = Future()
        with self._lock:
            self._pending[request_id] = future
            try:
                assert self.process.stdin is not None
                self.process.stdin.write(
                    json.dumps({"id": request_id, **payload}, default=str) + "\n"
                )
                self.process.stdin.flush()
            except OSError as exc:
                self._pending.pop(request_id, None)
                future.set_result({"ok": False, "error": f"the MLflow helper is gone ({exc})"})
        return future

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            try:
                reply = json.loads(line)
            except json.JSONDecodeError:
                continue
            with self._lock:
                future = self._pending.pop(str(reply.get("id")), None)
            if future is not None:
                future.set_result(reply)
        with self._lock:  # the helper exited: nobody will answer the rest
            pending, self._pending = self._pending, {}
        for future in pending.values():
            future.set_result({"ok": False, "error": "the MLflow helper process exited"})

    @property
    def alive(self) -> bool:
        return self.process.poll() is None


_worker: TrackingWorker | None = None
_worker_lock = threading.Lock()


def tracking_worker() -> TrackingWorker:
    global _worker
    with _worker_lock:
        if _worker is None or not _worker.alive:
            _worker = TrackingWorker()
        return _worker


class MlflowTracker:
    """One MLflow run for one nbdeploy run."""

    def __init__(self, experiment: str, run_name: str, tags: dict[str, str], run_id: str) -> None:
        self.uri = config.mlflow_tracking_uri()
        self.experiment = os.environ.get(EXPERIMENT_ENV) or experiment
        self.run_name = run_name
        self.tags = tags
        self.run_id = run_id
        self._started: Future[dict[str, Any]] | None = None

    def start(self) -> None:
        """Create the MLflow run in the helper process, in the background (once)."""
        if self._started is not None:
            return
        self._started = tracking_worker().request(
            f"{self.run_id}:start",
            op="start",
            uri=self.uri,
            experiment=self.experiment,
            artifact_location=config.mlflow_artifact_location(self.experiment),
            run_name=self.run_name,
            tags=self.tags,
        )

    def finish(
        self,
        *,
        succeeded: bool,
        parameters: dict[str, Any],
        metrics: list[tuple[str, float | None, int]],
        artifacts: list[Path],
        warn: Callable[[str], None],
        status: str | None = None,
        timeout: float | None = None,
    ) -> str | None:
        """Log the results and close the MLflow run with ``status`` (default FINISHED or
        FAILED, by ``succeeded``), waiting at most ``timeout`` seconds for each reply;
        returns its id (None on failure). Never raises: a tracking problem is a warning.
        Metrics without a value are not sent."""
        wait = REPLY_TIMEOUT_SECONDS if timeout is None else timeout
        try:
            return self._finish(succeeded, parameters, metrics, artifacts, warn, status, wait)
        except FutureTimeoutError:
            warn(
                f"MLflow ({self.uri}) did not answer within {wait:g} s: the run is recorded "
                "there in the background, without its MLflow id in nbdeploy's record"
            )
        except Exception as exc:
            warn(f"the run was not recorded in MLflow ({self.uri}): {type(exc).__name__}: {exc}")
        return None

    def _finish(
        self,
        succeeded: bool,
        parameters: dict[str, Any],
        metrics: list[tuple[str, float | None, int]],
        artifacts: list[Path],
        warn: Callable[[str], None],
        status: str | None,
        wait: float,
    ) -> str | None:
        self.start()
        assert self._started is not None
        # The helper handles requests in order: the run is named by its start request, so
        # this need not wait for the start's answer (MLflow may still be setting up).
        finished = (
            tracking_worker()
            .request(
                f"{self.run_id}:finish",
                op="finish",
                uri=self.uri,
                start_id=f"{self.run_id}:start",
                status=status or ("FINISHED" if succeeded else "FAILED"),
                params={name: _param_text(value) for name, value in parameters.items()},
                metrics=[
                    (name, value, step)
                    for name, value, step in metrics
                    if value is not None and math.isfinite(value)
                ],
                artifacts=[str(path) for path in artifacts if path.is_file()],
            )
            .result(timeout=wait)
        )
        if finished.get("ok"):
            return str(finished["mlflow_run_id"])
        started = self._started.result(timeout=wait)
        if not started.get("ok"):
            warn(f"the run was not recorded in MLflow ({self.uri}): {started.get('error')}")
            return None
        mlflow_run_id = str(started["mlflow_run_id"])
        warn(f"MLflow run {mlflow_run_id} is incomplete: {finished.get('error')}")
        return mlflow_run_id


def _param_text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:6000]
