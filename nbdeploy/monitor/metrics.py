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
from dataclasses import dataclass
from typing import Any

from nbdeploy.errors import NbdeployError

DEFAULT_WINDOW = "10m"  # of every view: nbdeploy metrics, the dashboards, the sidebar
DEFAULT_WINDOW_SECONDS = 600.0
QUALITY_REFRESH_SECONDS = 5.0
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
    last_rows: int | None = None,
) -> dict[str, Any]:
    """Everything known of ``name`` over the last ``window_seconds`` (and, with
    ``last_rows``, of its last that many input rows only). Keys with nothing to say are
    None (or empty): a deployment without traffic still has a snapshot. What clients sent
    never makes it fail: what does not fit is counted (``findings``)."""
    from nbdeploy.deployment import traffic
    from nbdeploy.deployment.store import DeploymentStore
    from nbdeploy.deployment.verbs import rollout_notice
    from nbdeploy.monitor.requests import log_stats, read_requests
    from nbdeploy.monitor.window import percentiles, reader, summarize_rows
    from nbdeploy.store import default_store

    deployments = DeploymentStore(store or default_store())
    deployment = deployments.get(name)
    versions = {v.version: v for v in deployments.versions(name)}
    until = time.time() if now is None else now
    live = versions.get(deployment.live_version or -1)

    def weight_of(number: int) -> float:
        version = versions.get(number)
        return 1.0 / float(version.options.get("log_sample") or 1.0) if version else 1.0

    shapes = {number: _shape(version) for number, version in versions.items()}
    if last_rows is None:
        window = reader(name, window_seconds, store).read(until, weight_of, shapes.get)
    else:
        since = until - window_seconds
        logged = read_requests(name, since=since, until=until, limit=last_rows, store=store)
        window = summarize_rows(logged, window_seconds, until, weight_of, shapes.get)
    span = max(until - window.since, 1e-9)
    total = window.total()
    data: dict[str, Any] = {
        "name": name,
        "status": deployment.status,
        "live_version": deployment.live_version,
        "url": deployment.url,
        "split": traffic.describe_split(name),
        "rollout": rollout_notice(name, store),  # the latest rollout's canary, if any
        "window_seconds": window_seconds,
        "since": window.since,
        "until": until,
        "logged": total.logged,
        "last_rows": last_rows,
    }
    data.update(total.figures(span))
    data["latency"] = percentiles(total.latency, (50, 95, 99))
    data["versions"] = {
        f"v{number}": _brief(window.total(version=number)) for number in window.versions()
    }
    data["endpoints"] = {
        endpoint: _brief(window.total(endpoint=endpoint)) for endpoint in window.endpoints()
    }
    data["series"] = window.series()
    number = live.version if live is not None else -1
    data.update(_live_quality(name, window, number, live, last_rows))
    data["processes"] = _processes_of(deployments, name)
    stats = log_stats(name, store=store)
    data["log"] = {k: stats.get(k) for k in ("written", "dropped", "last_error", "segments")}
    return data


def _brief(counts: Any) -> dict[str, Any]:
    from nbdeploy.monitor.window import percentiles

    figures = counts.figures()
    return {
        "requests": figures["requests"],
        "error_rate": figures["error_rate"],
        "client_error_rate": figures["client_error_rate"],
        **percentiles(counts.latency, (50, 95, 99)),
    }


def _shape(version: Any) -> Any:
    """How a version's input rows look (None for a version whose schema is not known)."""
    from nbdeploy.monitor.window import RowShape

    schema = version.schema or {}
    mode = schema.get("mode")
    if mode not in ("records", "rows", "hints"):
        return None
    width = schema.get("width")
    profile = _profile_of(version)
    if mode == "rows" and profile is not None:
        width = len(profile.columns)
    return RowShape(
        records=mode == "records",
        width=int(width) if isinstance(width, int) else None,
        parameter=schema.get("parameter"),
        hints=mode == "hints",
    )


def _profile_of(version: Any) -> Any:
    """The version's reference profile (read once per change of its file), or None."""
    from pathlib import Path

    from nbdeploy.monitor.drift import DriftError, ReferenceProfile
    from nbdeploy.monitor.reference import PROFILE_FILE

    if version is None:
        return None
    path = Path(version.service_dir) / PROFILE_FILE
    try:
        stamp = path.stat().st_mtime_ns
    except OSError:
        return None
    cached = _profiles.get(str(path))
    if cached is not None and cached[0] == stamp:
        return cached[1]
    try:
        profile = ReferenceProfile.load(path)
    except DriftError:
        return None
    _profiles[str(path)] = (stamp, profile)
    return profile


@dataclass
class _Quality:
    at: float
    rows: int
    version: int
    result: dict[str, Any]


_qualities: dict[tuple[str, float, int | None], _Quality] = {}


def _live_quality(
    name: str, window: Any, number: int, version: Any, last_rows: int | None
) -> dict[str, Any]:
    """Input and output quality and drift of the live version, per endpoint, computed
    again when its sample changed and a few seconds passed (or when it changed by more
    than a quarter): a dashboard refreshing twice a second does not recompute drift as
    often."""
    from nbdeploy.monitor.requests import log_directory

    endpoints = window.endpoints(number)
    inputs = {e: window.inputs.get((number, e), []) for e in endpoints}
    rows = sum(len(found) for found in inputs.values())
    key = (str(log_directory(name)), float(window.width), last_rows)
    known = _qualities.get(key)
    now = time.monotonic()
    if known is not None and known.version == number:
        changed = abs(rows - known.rows)
        fresh = now - known.at < QUALITY_REFRESH_SECONDS
        if changed == 0 or (fresh and changed <= 0.25 * max(known.rows, 1)):
            return known.result
    result = _quality_by_endpoint(window, number, version, endpoints, last_rows)
    _qualities[key] = _Quality(now, rows, number, result)
    return result


def _quality_by_endpoint(
    window: Any, number: int, version: Any, endpoints: list[str], last_rows: int | None
) -> dict[str, Any]:
    """The drift table of the main endpoint (``/predict``, else the one with most rows),
    and per endpoint its rows, what did not fit and its drift status."""

    def rows_of(endpoint: str) -> list[Any]:
        found: list[Any] = window.inputs.get((number, endpoint), [])
        return found[-last_rows:] if last_rows is not None else found

    main = "/predict" if "/predict" in endpoints else None
    if main is None and endpoints:
        main = max(endpoints, key=lambda e: len(window.inputs.get((number, e), [])))
    result: dict[str, Any] = {}
    per_endpoint: dict[str, Any] = {}
    for endpoint in endpoints:
        findings = window.findings.get((number, endpoint))
        predictions = window.predictions.get((number, endpoint)) or None
        quality = _quality(rows_of(endpoint), predictions, version)
        per_endpoint[endpoint] = {
            "rows": len(rows_of(endpoint)),
            "unreadable_bodies": findings.unreadable_bodies if findings else 0,
            "misfit_rows": findings.misfit_rows if findings else 0,
            "misfit_predictions": findings.misfit_predictions if findings else 0,
            "drift_status": quality["drift_status"],
            "note": quality.pop("note", None),
        }
        if endpoint == main:
            result = quality
    if not result:
        result = _quality([], None, version)
        result.pop("note", None)
    result["rows"] = per_endpoint[main]["rows"] if main is not None else 0
    result["main_endpoint"] = main
    result["findings"] = per_endpoint
    return result


# -- input and output quality, drift -----------------------------------------------------
def _quality(inputs: list[Any], predictions: list[Any] | None, version: Any) -> dict[str, Any]:
    """Missing values, type errors, values out of range and drift per feature, and the
    predictions' quality, for input rows (that fit the reference) the live version
    answered. A window the drift statistics cannot read is a note, never a failure."""
    from nbdeploy.monitor.drift import DriftError, compare

    empty: dict[str, Any] = {
        "missing": {},
        "type_errors": {},
        "out_of_range": {},
        "drift": {},
        "prediction": None,
        "drift_status": None,
        "reference": False,
    }
    profile = _profile_of(version)
    if profile is None:
        return empty
    if profile.prediction is None:
        predictions = None
    try:
        report = compare(profile, inputs, predictions=predictions).to_dict()
    except DriftError as error:  # a window of mixed rows, among others
        return {**empty, "reference": True, "note": f"drift not computed: {error.message}"}
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
    lines.extend(_finding_lines(data))
    log = data.get("log") or {}
    if log.get("dropped"):
        lines.append(
            f"request log: {log['dropped']} rows dropped"
            + (f" (last error: {log['last_error']})" if log.get("last_error") else "")
        )
    return lines


def _finding_lines(data: dict[str, Any]) -> list[str]:
    """What clients sent that did not fit, per endpoint of the live version."""
    lines = []
    width = None
    for endpoint, found in (data.get("findings") or {}).items():
        parts = []
        if found.get("unreadable_bodies"):
            parts.append(f"{found['unreadable_bodies']} bodies that are not rows")
        if found.get("misfit_rows"):
            parts.append(f"{found['misfit_rows']} rows that do not fit the reference")
        if found.get("misfit_predictions"):
            parts.append(
                f"answers for {found['misfit_predictions']} rows not one value per row "
                "(not compared with the reference's predictions)"
            )
        if found.get("note"):
            parts.append(str(found["note"]))
        if parts:
            width = width or max(len(e) for e in data["findings"])
            lines.append(f"{endpoint:<{width}}  " + "; ".join(parts))
    if lines:
        lines.insert(0, "input quality (what clients sent that was left out of drift):")
    return lines


def _percent(rate: Any) -> float | None:
    return None if rate is None else 100 * float(rate)


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
