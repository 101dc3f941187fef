"""A deployment's health over a time window, from what its services recorded: traffic,
latency and errors from the request log, input and output quality and drift against the
reference profiled at deploy time, the CPU and memory of its processes, and the log's own
counts. One snapshot feeds ``nbdeploy metrics``, the notebook dashboard and the HTML report.

The request log may be sampled (``--log-sample``): request counts and rates are then
estimated from the rows (each row stands for 1 / sample requests); quality and drift are
computed on the rows themselves (``rows``).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from nbdeploy.errors import NbdeployError

DEFAULT_WINDOW_SECONDS = 3600.0
QUALITY_REFRESH_SECONDS = 5.0
SERIES_BUCKETS = 60
_WINDOW = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# psutil.Process by pid: cpu_percent counts from the previous snapshot
_processes: dict[int, Any] = {}
# a version's reference profile by path: (its modification time, the profile)
_profiles: dict[str, tuple[int, Any]] = {}


class MetricsError(NbdeployError):
    """A window or deployment that metrics cannot be read for."""


def parse_window(text: str | float | int) -> float:
    """``--window``: seconds, or a number with s, m, h or d ("15m", "1h", "7d")."""
    if isinstance(text, int | float):
        seconds = float(text)
    else:
        match = _WINDOW.match(text)
        if not match:
            raise MetricsError(f"--window {text!r} is not a duration", "write 90s, 15m, 1h or 7d")
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2) or "s"]
    if not 0 < seconds <= 400 * 86400:
        raise MetricsError(f"--window {text!r}: between 1 second and 400 days")
    return seconds


def snapshot(
    name: str,
    window_seconds: float = DEFAULT_WINDOW_SECONDS,
    *,
    store: Any = None,
    now: float | None = None,
    buckets: int = SERIES_BUCKETS,
    last_rows: int | None = None,
) -> dict[str, Any]:
    """Everything known of ``name`` over the last ``window_seconds`` (and, with
    ``last_rows``, of its last that many input rows only). Keys with nothing to say are
    None (or empty): a deployment without traffic still has a snapshot."""
    import numpy as np

    from nbdeploy.deployment import traffic
    from nbdeploy.deployment.store import DeploymentStore
    from nbdeploy.monitor.requests import log_stats, read_requests
    from nbdeploy.store import default_store

    deployments = DeploymentStore(store or default_store())
    deployment = deployments.get(name)
    versions = {v.version: v for v in deployments.versions(name)}
    until = time.time() if now is None else now
    since = until - window_seconds
    schemas = {number: version.schema for number, version in versions.items()}
    if last_rows is None:
        table = _window_table(name, since, until, schemas, store)
    else:
        logged = read_requests(name, since=since, until=until, limit=last_rows, store=store)
        table = _Table.of(logged, schemas)
    weights = np.array(
        [1.0 / float(versions[n].options.get("log_sample") or 1.0) if n in versions else 1.0
         for n in table.version.tolist()],
        dtype=float,
    )  # fmt: skip
    data: dict[str, Any] = {
        "name": name,
        "status": deployment.status,
        "live_version": deployment.live_version,
        "url": deployment.url,
        "split": traffic.describe_split(name),
        "window_seconds": window_seconds,
        "since": since,
        "until": until,
        "logged": len(table),
        "last_rows": last_rows,
    }
    everything = np.ones(len(table), dtype=bool)
    data.update(_traffic(table, weights, everything, window_seconds))
    data["versions"] = {
        f"v{number}": _traffic(table, weights, table.version == number, window_seconds, brief=True)
        for number in sorted(set(table.version.tolist()) - {-1})
    }
    data["series"] = _series(table, weights, since, window_seconds, buckets)
    live = versions.get(deployment.live_version or -1)
    inputs, predictions = table.inputs_of(live.version if live is not None else -1)
    if last_rows is not None:
        inputs = inputs[-last_rows:]
        predictions = predictions[-last_rows:] if predictions is not None else None
    data["rows"] = len(inputs)  # input rows the live version answered, in those requests
    data.update(_cached_quality(name, inputs, predictions, live, last_rows))
    data["processes"] = _processes_of(deployments, name)
    stats = log_stats(name, store=store)
    data["log"] = {k: stats.get(k) for k in ("written", "dropped", "last_error", "segments")}
    return data


# -- the rows of a window, as columns --------------------------------------------------
class _Table:
    """Logged requests as numpy columns (time, latency, status, version), with each one's
    input rows and predictions flattened once, when it is read."""

    def __init__(self) -> None:
        import numpy as np

        self.time = np.empty(0)
        self.latency = np.empty(0)
        self.status = np.empty(0, dtype=np.int64)
        self.version = np.empty(0, dtype=np.int64)
        self.inputs: list[list[Any]] = []
        self.predictions: list[list[Any]] = []

    def __len__(self) -> int:
        return len(self.inputs)

    @classmethod
    def of(cls, rows: list[dict[str, Any]], schemas: dict[int, dict[str, Any]]) -> _Table:
        table = cls()
        table.add(rows, schemas)
        return table

    def add(self, rows: list[dict[str, Any]], schemas: dict[int, dict[str, Any]]) -> None:
        """Append ``rows``, but nbdeploy's own check of a new version: it is not traffic."""
        import numpy as np

        from nbdeploy.deployment.traffic.strategies import SMOKE_REQUEST_ID

        rows = [row for row in rows if row.get("request_id") != SMOKE_REQUEST_ID]
        if not rows:
            return
        latency = [row.get("latency_ms") for row in rows]
        self.time = np.concatenate([self.time, [float(row["time"]) for row in rows]])
        self.latency = np.concatenate(
            [self.latency, [np.nan if v is None else float(v) for v in latency]]
        )
        self.status = np.concatenate([self.status, [int(row.get("status") or 0) for row in rows]])
        versions = [-1 if row.get("version") is None else int(row["version"]) for row in rows]
        self.version = np.concatenate([self.version, versions])
        for row, number in zip(rows, versions, strict=True):
            inputs, predictions = flatten([row], schemas.get(number, {}))
            self.inputs.append(inputs)
            self.predictions.append(predictions or [])

    def keep(self, mask: Any) -> None:
        self.time, self.latency = self.time[mask], self.latency[mask]
        self.status, self.version = self.status[mask], self.version[mask]
        kept = mask.nonzero()[0].tolist()
        self.inputs = [self.inputs[i] for i in kept]
        self.predictions = [self.predictions[i] for i in kept]

    def within(self, since: float, until: float) -> _Table:
        mask = (self.time >= since) & (self.time < until)
        if mask.all():
            return self
        part = _Table()
        part.time, part.latency, part.status, part.version = (
            self.time, self.latency, self.status, self.version
        )  # fmt: skip
        part.inputs, part.predictions = self.inputs, self.predictions
        part.keep(mask)
        return part

    def inputs_of(self, version: int) -> tuple[list[Any], list[Any] | None]:
        """The input rows ``version`` was sent, and the predictions it answered them with."""
        inputs: list[Any] = []
        predictions: list[Any] = []
        for index in (self.version == version).nonzero()[0].tolist():
            inputs.extend(self.inputs[index])
            predictions.extend(self.predictions[index])
        return inputs, (predictions or None)


@dataclass
class _Window:
    """The rows of one deployment's log a watcher (the dashboard) holds: every row from
    ``since`` on, and where reading stopped, so that each refresh reads only new rows."""

    since: float
    table: _Table
    cursor: dict[str, int]


_windows: dict[str, _Window] = {}


def _window_table(
    name: str, since: float, until: float, schemas: dict[int, dict[str, Any]], store: Any
) -> _Table:
    from nbdeploy.monitor.requests import log_directory, read_after

    key = str(log_directory(name))
    window = _windows.get(key)
    if window is None or since < window.since:
        rows, cursor = read_after(name, None, since=since, store=store)
        window = _windows[key] = _Window(since, _Table.of(rows, schemas), cursor)
    else:
        new, window.cursor = read_after(name, window.cursor, store=store)
        window.table.add(new, schemas)
        if since > window.since:
            window.table.keep(window.table.time >= since)
            window.since = since
    return window.table.within(since, until)


@dataclass
class _Quality:
    at: float
    rows: int
    version: int
    result: dict[str, Any]


_qualities: dict[tuple[str, int | None], _Quality] = {}


def _cached_quality(
    name: str,
    inputs: list[Any],
    predictions: list[Any] | None,
    version: Any,
    last_rows: int | None,
) -> dict[str, Any]:
    """Drift and quality, computed again when the rows changed and a few seconds passed
    (or when they changed by more than a quarter): a dashboard refreshing twice a second
    does not recompute drift as often."""
    from nbdeploy.monitor.requests import log_directory

    key = (str(log_directory(name)), last_rows)
    number = version.version if version is not None else -1
    known = _qualities.get(key)
    now = time.monotonic()
    if known is not None and known.version == number:
        changed = abs(len(inputs) - known.rows)
        fresh = now - known.at < QUALITY_REFRESH_SECONDS
        if changed == 0 or (fresh and changed <= 0.25 * max(known.rows, 1)):
            return known.result
    result = _quality(inputs, predictions, version)
    _qualities[key] = _Quality(now, len(inputs), number, result)
    return result


# -- traffic ---------------------------------------------------------------------------
def _errors(table: _Table) -> Any:
    """Failures of the service: a 5xx answer, or none at all (status 0)."""
    return (table.status >= 500) | (table.status == 0)


def _quantiles(latencies: Any, percents: tuple[int, ...]) -> dict[str, float | None]:
    import numpy as np

    latencies = latencies[~np.isnan(latencies)]
    if not latencies.size:
        return {f"p{q}": None for q in percents}
    values = np.percentile(latencies, percents)
    return {f"p{q}": round(float(v), 3) for q, v in zip(percents, values, strict=True)}


def _traffic(
    table: _Table, weights: Any, mask: Any, window: float, brief: bool = False
) -> dict[str, Any]:
    count = int(mask.sum())
    requests = float(weights[mask].sum())
    error_rate = float(_errors(table)[mask].sum()) / count if count else None
    quantiles = _quantiles(table.latency[mask], (50, 95, 99))
    if brief:
        return {"requests": round(requests), "error_rate": error_rate, **quantiles}
    client = int(((table.status >= 400) & (table.status < 500))[mask].sum())
    return {
        "requests": round(requests),
        "requests_per_second": requests / window if window else None,
        "error_rate": error_rate,
        "client_error_rate": client / count if count else None,
        "latency": quantiles,
    }


def _series(
    table: _Table, weights: Any, since: float, window: float, buckets: int
) -> list[dict[str, Any]]:
    """Requests, errors and latency per time bucket, oldest first (charts over time)."""
    import numpy as np

    width = window / buckets
    slot = np.clip(((table.time - since) / width).astype(np.int64), 0, buckets - 1)
    requests = np.bincount(slot, weights=weights, minlength=buckets)
    errors = np.bincount(slot, weights=_errors(table).astype(float), minlength=buckets)
    order = np.argsort(slot, kind="stable")
    bounds = np.searchsorted(slot[order], np.arange(buckets + 1))
    latencies = table.latency[order]
    series = []
    for index in range(buckets):
        quantiles = _quantiles(latencies[bounds[index] : bounds[index + 1]], (50, 99))
        series.append(
            {
                "t": since + (index + 1) * width,
                "requests": round(float(requests[index])),
                "errors": int(errors[index]),
                **quantiles,
            }
        )
    return series


# -- input and output quality, drift -----------------------------------------------------
def _quality(inputs: list[Any], predictions: list[Any] | None, version: Any) -> dict[str, Any]:
    """Missing values, type errors, values out of range and drift per feature, and the
    predictions' quality, for the input rows the live version answered."""
    empty: dict[str, Any] = {
        "missing": {},
        "type_errors": {},
        "out_of_range": {},
        "drift": {},
        "prediction": None,
        "drift_status": None,
        "reference": False,
    }
    if version is None:
        return empty
    from pathlib import Path

    from nbdeploy.monitor.drift import DriftError, ReferenceProfile, compare
    from nbdeploy.monitor.reference import PROFILE_FILE

    path = Path(version.service_dir) / PROFILE_FILE
    try:
        stamp = path.stat().st_mtime_ns
    except OSError:
        return empty
    cached = _profiles.get(str(path))
    if cached is not None and cached[0] == stamp:
        profile = cached[1]
    else:
        try:
            profile = ReferenceProfile.load(path)
        except DriftError:
            return empty
        _profiles[str(path)] = (stamp, profile)
    report = compare(profile, inputs, predictions=predictions).to_dict()
    features = report["features"]
    drift = {
        name: {
            "psi": feature.get("psi"),
            "ks_p": feature.get("ks_p"),
            "chi2_p": feature.get("chi2_p"),
            "status": feature.get("status"),
        }
        for name, feature in features.items()
    }
    return {
        "missing": {name: f.get("missing") for name, f in features.items()},
        "type_errors": {name: f.get("type_errors") for name, f in features.items()},
        "out_of_range": {name: f.get("out_of_range") for name, f in features.items()},
        "drift": drift,
        "prediction": report.get("prediction"),
        "drift_status": report.get("status"),
        "reference": True,
    }


def flatten(
    rows: Iterable[dict[str, Any]], schema: dict[str, Any]
) -> tuple[list[Any], list[Any] | None]:
    """The input rows (lists or records) of logged requests that reached the service with
    a body it could read: answered (2xx), or refused for their values (4xx: a type error
    is input quality too); and the predictions of the answered ones, where the answer
    gives one per input row (None when none does)."""
    inputs: list[Any] = []
    predictions: list[Any] = []
    parameter = schema.get("parameter")
    for row in rows:
        body, answer = row.get("inputs"), row.get("prediction")
        status = int(row.get("status") or 0)
        if body is None or not 200 <= status < 500 or isinstance(body, str):
            continue  # not stored, not JSON, or the service failed
        items: Any
        if schema.get("mode") == "hints" or not isinstance(body, dict):
            items, answers = [body], [answer]
        else:
            items = body.get(parameter) if parameter in body else next(iter(body.values()), [])
            if not isinstance(items, list):
                continue
            answers = answer if isinstance(answer, list) else []
        inputs.extend(items)
        if status < 300 and len(answers) == len(items):
            predictions.extend(answers)
    return inputs, (predictions or None)


# -- processes ----------------------------------------------------------------------------
def _processes_of(deployments: Any, name: str) -> dict[str, Any]:
    """CPU (percent of one core, since the previous snapshot) and resident memory of the
    deployment's servers and router, with their worker processes."""
    import psutil

    cpu = 0.0
    memory = 0
    count = 0
    for server in deployments.active_servers(name):
        if not server.pid:
            continue
        try:
            leader = psutil.Process(server.pid)
            family = [leader, *leader.children(recursive=True)]
        except psutil.Error:
            continue
        for process in family:
            try:
                known = _processes.get(process.pid)
                if known is None or known.create_time() != process.create_time():
                    _processes[process.pid] = known = process
                    known.cpu_percent(None)  # the first reading only starts the count
                else:
                    cpu += known.cpu_percent(None)
                memory += process.memory_info().rss
                count += 1
            except psutil.Error:
                continue
    return {
        "processes": count,
        "cpu_percent": round(cpu, 1) if count else None,
        "memory_mb": round(memory / 2**20, 1) if count else None,
    }


def summary_lines(data: dict[str, Any]) -> list[str]:
    """The snapshot as a few lines of text, for the terminal."""
    latency = data.get("latency") or {}

    def number(value: Any, digits: int = 1, unit: str = "") -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "-"
        return f"{value:.{digits}f}{unit}"

    window = data["window_seconds"]
    lines = [
        f"{data['name']}: {data['status']}, v{data['live_version']} at {data['url']} "
        f"(traffic {data['split']})",
        f"last {_duration(window)}: {data['requests']} requests "
        f"({number(data.get('requests_per_second'), 2)}/s), errors "
        f"{number(_percent(data.get('error_rate')), 2, '%')}, latency p50 "
        f"{number(latency.get('p50'), 1, ' ms')} p95 {number(latency.get('p95'), 1, ' ms')} "
        f"p99 {number(latency.get('p99'), 1, ' ms')}",
    ]
    processes = data.get("processes") or {}
    if processes.get("processes"):
        lines.append(
            f"processes: {processes['processes']}, CPU {number(processes['cpu_percent'])}%, "
            f"memory {number(processes['memory_mb'], 0)} MB"
        )
    if not data.get("reference"):
        lines.append("drift: no reference for the live version (deploy with --reference X_train)")
    else:
        lines.append(f"{'feature':<20} {'missing':>8} {'range':>8} {'psi':>7} {'ks p':>7}  drift")
        for feature, drift in data["drift"].items():
            test_p = drift.get("ks_p") if drift.get("ks_p") is not None else drift.get("chi2_p")
            lines.append(
                f"{feature[:20]:<20} {number(_percent(data['missing'].get(feature)), 1, '%'):>8} "
                f"{number(_percent(data['out_of_range'].get(feature)), 1, '%'):>8} "
                f"{number(drift.get('psi'), 3):>7} "
                f"{number(test_p, 3):>7}  "
                f"{drift.get('status')}"
            )
        prediction = data.get("prediction") or {}
        if prediction:
            lines.append(
                f"{'prediction':<20} {number(_percent(prediction.get('null_rate')), 1, '%'):>8} "
                f"{'':>8} {number(prediction.get('psi'), 3):>7} {'':>7}  "
                f"{prediction.get('status')}"
            )
        statuses = [d.get("status") for d in [*data["drift"].values(), prediction]]
        if "no-data" in statuses:
            from nbdeploy.monitor.drift import DEFAULT_THRESHOLDS

            lines.append(
                f"no-data: fewer than {DEFAULT_THRESHOLDS.min_rows} values of the feature in "
                "the window, too few to judge drift (widen --window)"
            )
    log = data.get("log") or {}
    if log.get("dropped"):
        lines.append(
            f"request log: {log['dropped']} rows dropped"
            + (f" (last error: {log['last_error']})" if log.get("last_error") else "")
        )
    return lines


def _percent(rate: Any) -> float | None:
    return None if rate is None else 100 * float(rate)


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
