"""Reading a deployment's request log: the rows its versions' services wrote (see
:mod:`nbdeploy.service.requestlog_runtime`, copied into every version) into the SQLite
segments of ``<deployment folder>/requests/``, and their counts of written and dropped rows.

    nbdeploy.requests("churn", limit=100)            # newest last
    nbdeploy.requests("churn", since=time.time() - 3600, version=3, frame=True)

Segments are opened read-only; nothing here ever changes them.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import sqlite3
from pathlib import Path
from typing import Any

from nbdeploy.service.requestlog_runtime import COLUMNS, STATS_GLOB, segments

FRAME_COLUMNS = tuple(column for column in COLUMNS if column != "truncated")
Moment = float | int | datetime.datetime


def log_directory(name: str) -> Path:
    """Where the services of deployment ``name`` write their request log."""
    from nbdeploy.deployment import traffic
    from nbdeploy.deployment.traffic.strategies import REQUESTS_DIR

    return traffic.folder(name) / REQUESTS_DIR


def stats_directories(name: str) -> list[Path]:
    from nbdeploy.deployment import traffic
    from nbdeploy.deployment.traffic.strategies import REQUESTS_STATS_DIR

    return [traffic.folder(name) / REQUESTS_STATS_DIR, log_directory(name)]


def read_requests(
    name: str,
    *,
    since: Moment | None = None,
    until: Moment | None = None,
    version: int | None = None,
    limit: int | None = None,
    store: Any = None,
    directory: str | Path | None = None,
) -> list[dict[str, Any]]:
    """The logged requests of deployment ``name``, oldest first (across every segment):
    the ``limit`` newest ones, those from ``since`` (included) to ``until`` (excluded),
    of one ``version``. ``inputs`` and ``prediction`` are decoded JSON (None when not
    stored: a body above the size cap, or unparsable with redaction on); ``truncated``
    says what was cut. ``directory`` reads a log directory directly (a container's volume)."""
    folder = _folder(name, store, directory)
    if limit is not None and limit <= 0:
        return []
    conditions, parameters = [], []
    if since is not None:
        conditions.append("time >= ?")
        parameters.append(_seconds(since))
    if until is not None:
        conditions.append("time < ?")
        parameters.append(_seconds(until))
    if version is not None:
        conditions.append("version = ?")
        parameters.append(int(version))
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    query = f"SELECT {', '.join(COLUMNS)} FROM requests{where} ORDER BY time DESC, id DESC"
    if limit is not None:
        query += f" LIMIT {int(limit)}"
    rows: list[tuple[Any, ...]] = []
    # Newest segments first: with a limit, an older one is read only while it can hold
    # one of the newest rows (segments overlap in time only where one follows another).
    for path in reversed(segments(folder)):
        if limit is not None and len(rows) >= limit:
            cutoff = sorted((r[0] for r in rows), reverse=True)[limit - 1]
            newest = _newest_time(path)
            if newest is None or newest < cutoff:
                break
        rows.extend(_query(path, query, parameters))
    rows.sort(key=lambda r: r[0])
    if limit is not None:
        rows = rows[-limit:]
    return [_decoded(row) for row in rows]


def read_after(
    name: str,
    cursor: dict[str, int] | None = None,
    *,
    since: Moment | None = None,
    store: Any = None,
    directory: str | Path | None = None,
    limit: int | None = None,
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The rows written since ``cursor`` (segment file name -> the last row id read; None:
    from the start), from ``since`` on when given, and the cursor to pass next time: a
    watcher reads each row once, however long it watches. Rows come in the order they were
    written; with ``limit``, at most that many (call again with the cursor for the rest: a
    long log is read in bounded pieces)."""
    folder = _folder(name, store, directory)
    cursor = dict(cursor or {})
    found: list[dict[str, Any]] = []
    keys = []
    for path in segments(folder):
        try:  # a segment deleted and made again (a new deployment) is another file
            key = f"{path.name}@{path.stat().st_ino}"
        except OSError:
            continue
        keys.append(key)
        last = cursor.get(key, 0)
        query = f"SELECT id, {', '.join(COLUMNS)} FROM requests WHERE id > ?"
        parameters: list[Any] = [last]
        if since is not None:  # "+time": walk the ids, not the time index, then sort them
            query += " AND +time >= ?"
            parameters.append(_seconds(since))
        if limit is not None and len(found) >= limit:
            cursor.setdefault(key, last)
            continue  # read next time
        if limit is not None:
            query += f" ORDER BY id LIMIT {int(limit) - len(found)}"
        else:
            query += " ORDER BY id"
        rows = _query(path, query, parameters)
        if rows:
            last = int(rows[-1][0])
            found.extend(_decoded(row[1:]) for row in rows)
        cursor[key] = last
    return found, {key: cursor[key] for key in keys}


def requests_frame(
    name: str,
    *,
    since: Moment | None = None,
    until: Moment | None = None,
    version: int | None = None,
    limit: int | None = None,
    store: Any = None,
    directory: str | Path | None = None,
) -> Any:
    """:func:`read_requests` as a pandas DataFrame: ``time`` as datetimes (UTC), one row
    per request, ``inputs`` and ``prediction`` as decoded JSON values."""
    import pandas as pd

    rows = read_requests(
        name,
        since=since,
        until=until,
        version=version,
        limit=limit,
        store=store,
        directory=directory,
    )
    frame = pd.DataFrame(
        [{k: row[k] for k in FRAME_COLUMNS} for row in rows], columns=FRAME_COLUMNS
    )
    frame["time"] = pd.to_datetime(frame["time"], unit="s", utc=True)
    frame["version"] = frame["version"].astype("Int64")
    frame["status"] = frame["status"].astype("Int64")
    frame["latency_ms"] = frame["latency_ms"].astype("float64")
    return frame


def log_stats(
    name: str, *, store: Any = None, directory: str | Path | None = None
) -> dict[str, Any]:
    """What the services of ``name`` counted: rows written and dropped (a full queue, or
    a log that could not be written), the last error, per process and in total, and the
    segments on disk."""
    folder = _folder(name, store, directory)
    places = [Path(directory)] if directory is not None else stats_directories(name)
    processes: list[dict[str, Any]] = []
    seen: set[str] = set()
    for place in places:
        with contextlib.suppress(OSError):
            for path in sorted(place.glob(STATS_GLOB)):
                if path.name in seen:
                    continue
                try:
                    entry = json.loads(path.read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    continue
                seen.add(path.name)
                entry["alive"] = _alive(entry.get("pid"), entry.get("host"))
                processes.append(entry)
    processes.sort(key=lambda e: e.get("started_at") or 0)
    errors = [e for e in processes if e.get("last_error")]
    last = max(errors, key=lambda e: e.get("last_error_time") or 0) if errors else None
    files = segments(folder)
    return {
        "name": name,
        "directory": str(folder),
        "written": sum(int(e.get("written") or 0) for e in processes),
        "dropped": sum(int(e.get("dropped") or 0) for e in processes),
        "dropped_queue_full": sum(int(e.get("dropped_queue_full") or 0) for e in processes),
        "dropped_errors": sum(int(e.get("dropped_errors") or 0) for e in processes),
        "last_error": last.get("last_error") if last else None,
        "last_error_time": last.get("last_error_time") if last else None,
        "segments": len(files),
        "bytes": sum(_bytes(path) for path in files),
        "processes": processes,
    }


def _folder(name: str, store: Any, directory: str | Path | None) -> Path:
    if directory is not None:
        return Path(directory)
    from nbdeploy.deployment.store import DeploymentStore
    from nbdeploy.store import default_store

    DeploymentStore(store or default_store()).get(name)  # a clear error for an unknown name
    return log_directory(name)


def _seconds(moment: Moment) -> float:
    if isinstance(moment, datetime.datetime):
        return moment.timestamp()  # a naive datetime is local time, as Python reads it
    if hasattr(moment, "timestamp"):  # a pandas Timestamp
        return float(moment.timestamp())
    return float(moment)


def _connect(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)


def _query(path: Path, query: str, parameters: list[Any]) -> list[tuple[Any, ...]]:
    try:
        connection = _connect(path)
    except sqlite3.Error:
        return []
    try:
        return list(connection.execute(query, parameters).fetchall())
    except sqlite3.Error:  # not (yet) a segment: created, no table written
        return []
    finally:
        connection.close()


def _newest_time(path: Path) -> float | None:
    found = _query(path, "SELECT MAX(time) FROM requests", [])
    return found[0][0] if found else None


def _decoded(row: tuple[Any, ...]) -> dict[str, Any]:
    entry = dict(zip(COLUMNS, row, strict=True))
    for key in ("inputs", "prediction"):
        text = entry[key]
        if text is not None:
            with contextlib.suppress(ValueError):  # else kept as the stored text
                entry[key] = json.loads(text)
    return entry


def _bytes(path: Path) -> int:
    total = 0
    for suffix in ("", "-wal"):
        with contextlib.suppress(OSError):
            total += os.stat(f"{path}{suffix}").st_size
    return total


def _alive(pid: Any, host: Any) -> bool | None:
    """Whether a local process is still running (None: another host's, not known)."""
    import socket

    if not isinstance(pid, int) or (host and host != socket.gethostname()):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -- for the terminal (nbdeploy logs NAME --requests) ----------------------------------------
CELL_CHARS = 40


def print_requests(rows: list[dict[str, Any]], as_json: bool = False) -> None:
    """Logged requests as a compact table (oldest first), or one JSON object per line."""
    if as_json:
        for row in rows:
            print(json.dumps(row, default=str))
        return
    if not rows:
        print("no requests logged yet")
        return
    from nbdeploy.pipeline.summary import table

    body = [
        [
            datetime.datetime.fromtimestamp(row["time"]).strftime("%Y-%m-%d %H:%M:%S"),
            str(row["request_id"]),
            row["arm"] or "-",
            str(row["status"]),
            f"{row['latency_ms']:.1f} ms",
            _cut(row["inputs"]),
            _cut(row["prediction"]) if row["error"] is None else _cut(row["error"]),
        ]
        for row in rows
    ]
    headers = ["time", "request id", "version", "status", "latency", "input", "prediction"]
    print(table(headers, body))


def _cut(value: Any) -> str:
    if value is None:
        return "-"
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    text = " ".join(text.split())
    return text if len(text) <= CELL_CHARS else text[: CELL_CHARS - 1] + "…"
