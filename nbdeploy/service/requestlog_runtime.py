"""The request log of a served version, recorded by the service itself: one row per request
to a prediction endpoint (time, request id, version, endpoint, latency, status, the inputs
and the prediction, or the error), in append-only SQLite segments. Copied into every version
as ``nbdeploy_requestlog.py`` so that a container records exactly what a local server
records; standard library only (``prometheus_client``, which BentoML brings, is used when
it is importable).

It is on when ``NBDEPLOY_REQUEST_LOG_DIR`` names a directory (nbdeploy's servers set it to
the deployment's ``requests/`` folder; a container sets it to a volume), off otherwise.

A request never waits for the log and never fails because of it: the ASGI middleware keeps
a copy of what passes (bodies up to a cap) and puts one tuple into a bounded queue without
blocking; a full queue drops the row and counts it. A daemon thread parses, redacts and
writes batches (one transaction every ~100 ms). A writing error (an unwritable directory, a
full disk, a locked database) drops the rows and counts them, prints one warning line to
the server log, and the writer tries again a few seconds later. Counts are written to
``stats-PID-STARTMS.json`` (every few seconds) and, when ``prometheus_client`` is there,
exposed on ``/metrics`` as ``nbdeploy_request_log_rows_written_total`` and
``nbdeploy_request_log_rows_dropped_total``.

Segments are ``requests-000001.db``, ``requests-000002.db``... (WAL mode, shared by every
worker and every version of a deployment): a writer appends to the newest one, starts the
next when the newest holds ``NBDEPLOY_REQUEST_LOG_SEGMENT_MB`` (default 64), and then
deletes the oldest beyond ``NBDEPLOY_REQUEST_LOG_KEEP`` segments (default 16: about 1 GiB).
Rows are never updated or deleted one by one. The folder and its files are owner-only
(0700 and 0600, whatever the server's umask): they hold inputs and predictions.

Redaction (``--redact FIELD``) removes the key at any depth of the parsed request body (and
of the answer) before a row is stored; a body that cannot be parsed, or is larger than the
cap, is then not stored at all. Only the in-memory queue ever holds the original text.
The server log is redacted too (:func:`protect_streams`): what the process writes to stdout
and stderr (log lines, tracebacks, warnings) has the values of those fields, in the
request being served and wherever a field is written with its value, and pydantic's echo of
a body (``input_value=...``) replaced by ``[redacted]``.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import contextvars
import json
import logging
import os
import queue
import random
import re
import socket
import sqlite3
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from pathlib import Path
from typing import Any

DIR_ENV = "NBDEPLOY_REQUEST_LOG_DIR"  # where segments go; unset or empty: no request log
STATS_DIR_ENV = "NBDEPLOY_REQUEST_LOG_STATS_DIR"  # stats files (default: the log directory)
VERSION_ENV = "NBDEPLOY_VERSION"  # the version number (default: the manifest's "version")
SEGMENT_MB_ENV = "NBDEPLOY_REQUEST_LOG_SEGMENT_MB"
KEEP_ENV = "NBDEPLOY_REQUEST_LOG_KEEP"
QUEUE_ENV = "NBDEPLOY_REQUEST_LOG_QUEUE"
QUEUE_MB_ENV = "NBDEPLOY_REQUEST_LOG_QUEUE_MB"
BODY_KB_ENV = "NBDEPLOY_REQUEST_LOG_BODY_KB"
ACCESS_LOG_ENV = "NBDEPLOY_ACCESS_LOG"  # 1/0: BentoML's access log (default: off when logging)

DEFAULT_SEGMENT_MB = 64.0
DEFAULT_KEEP = 16
DEFAULT_QUEUE = 10_000
DEFAULT_QUEUE_MB = 64.0  # bodies waiting in memory, at most
DEFAULT_BODY_KB = 64
ERROR_CHARS = 2000
FLUSH_SECONDS = 0.1  # rows reach the disk this long after their request, in one transaction
MAX_BATCH = 5000
# A segment another worker holds locked: this many attempts, 50 ms apart and doubling
# (about 3 s in all), before the rows are dropped.
LOCKED_ATTEMPTS = 7
RETRY_SECONDS = 5.0  # after a writing error, rows are dropped (and counted) this long
STATS_SECONDS = 2.0
STATS_KEEP_DAYS = 30
BUSY_TIMEOUT_SECONDS = 5.0
PRIVATE_DIR, PRIVATE_FILE = 0o700, 0o600

SEGMENT_PATTERN = re.compile(r"requests-(\d{6,})\.db")
STATS_GLOB = "stats-*.json"
SCHEMA_VERSION = 1
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")  # as the router accepts a client's id
COLUMNS = (
    "time",
    "request_id",
    "version",
    "arm",
    "endpoint",
    "latency_ms",
    "status",
    "inputs",
    "prediction",
    "error",
    "truncated",
)
TRUNCATED_INPUTS = 1  # bits of the "truncated" column
TRUNCATED_PREDICTION = 2
TRUNCATED_ERROR = 4
SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY,
    time REAL NOT NULL,           -- unix seconds, when the request arrived
    request_id TEXT NOT NULL,
    version INTEGER,              -- the version number (NULL when the server was not told)
    arm TEXT,                     -- "vN", as the router names it
    endpoint TEXT NOT NULL,
    latency_ms REAL NOT NULL,
    status INTEGER NOT NULL,
    inputs TEXT,                  -- JSON: the request body, redacted (NULL: not stored)
    prediction TEXT,              -- JSON: the answer of a 2xx
    error TEXT,                   -- the answer of any other status (cut)
    truncated INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS requests_time ON requests (time);
"""
INSERT = f"INSERT INTO requests ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"

_STOP = object()
_UNPARSED = object()
_COUNTERS: dict[str, Any] = {}
# BentoML answers an exception in the function with a generic 500 and logs it on this
# logger; the request's own text of the exception is kept from that record.
BENTOML_ERROR_LOGGER = "bentoml._internal.server.http_app"
_FAILURE: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar(
    "nbdeploy_request_failure", default=None
)


def segment_number(path: Path) -> int | None:
    match = SEGMENT_PATTERN.fullmatch(path.name)
    return int(match.group(1)) if match else None


def segments(directory: Path) -> list[Path]:
    """The segments of a log directory, oldest first."""
    try:
        found = [(segment_number(p), p) for p in directory.iterdir()]
    except OSError:
        return []
    return [path for number, path in sorted((n, p) for n, p in found if n is not None)]


def segment_path(directory: Path, number: int) -> Path:
    return directory / f"requests-{number:06d}.db"


def redact(value: Any, fields: frozenset[str]) -> Any:
    """``value`` without the keys ``fields``, at any depth."""
    if isinstance(value, dict):
        return {k: redact(v, fields) for k, v in value.items() if k not in fields}
    if isinstance(value, list):
        return [redact(v, fields) for v in value]
    return value


# -- the server log, redacted ------------------------------------------------------------
REDACTED = "[redacted]"
MIN_SECRET_CHARS = 2  # shorter values are not searched for in free text (too common)
_BODY: contextvars.ContextVar[list[bytes] | None] = contextvars.ContextVar(
    "nbdeploy_request_body", default=None
)
_INPUT_VALUE = re.compile(
    r"input_value=(?:b?'(?:[^'\\\n]|\\.)*'?|b?\"(?:[^\"\\\n]|\\.)*\"?|[^,\]\n]+)"
)


class Scrubber:
    """Removes the values of redacted fields from text written to the server log."""

    def __init__(self, fields: Iterable[str]) -> None:
        self.fields = frozenset(fields)
        names = "|".join(re.escape(field) for field in sorted(self.fields, key=len, reverse=True))
        # 'ssn': '...', "ssn": "...", ssn=..., "ssn": 123 (a string may be cut off)
        self.pairs = re.compile(
            rf"(?P<key>[\"']?\b(?:{names})\b[\"']?\s*[:=]\s*)(?!{re.escape(REDACTED)})"
            r"(?P<value>'(?:[^'\\\n]|\\.)*'?|\"(?:[^\"\\\n]|\\.)*\"?|[^,;}\])\s\n]+)"
        )

    def __call__(self, text: str) -> str:
        for secret in self.secrets_of_the_request():
            text = text.replace(secret, REDACTED)
        text = _INPUT_VALUE.sub(f"input_value={REDACTED}", text)
        return self.pairs.sub(lambda m: f"{m.group('key')}{REDACTED}", text)

    def secrets_of_the_request(self) -> list[str]:
        """The values of the redacted fields in the body of the request being served."""
        chunks = _BODY.get()
        if not chunks:
            return []
        raw = b"".join(chunks)
        found: list[Any] = []
        try:
            _collect(json.loads(raw), self.fields, found)
        except ValueError:  # not JSON (cut off, malformed): the fields' values as written
            text = raw.decode("utf-8", "replace")
            for match in self.pairs.finditer(text):
                found.append(match.group("value").strip("\"'"))
        secrets = {str(value) for value in found if value is not None}
        texts = secrets | {json.dumps(value) for value in found if isinstance(value, str)}
        texts |= {repr(value) for value in found if isinstance(value, str)}
        return sorted((t for t in texts if len(t) >= MIN_SECRET_CHARS), key=len, reverse=True)


def _collect(value: Any, fields: frozenset[str], found: list[Any]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            if key in fields:
                _collect_all(item, found)
            else:
                _collect(item, fields, found)
    elif isinstance(value, list):
        for item in value:
            _collect(item, fields, found)


def _collect_all(value: Any, found: list[Any]) -> None:
    if isinstance(value, dict):
        for item in value.values():
            _collect_all(item, found)
    elif isinstance(value, list):
        for item in value:
            _collect_all(item, found)
    else:
        found.append(value)


class RedactingStream:
    """A text stream that writes through ``scrub``: stdout or stderr of a server whose
    version redacts fields."""

    def __init__(self, stream: Any, scrub: Scrubber) -> None:
        self._stream = stream
        self._scrub = scrub

    def write(self, text: str) -> int:
        try:
            cleaned = self._scrub(text)
        except Exception:  # never lose a log line to the scrubber; never leak one either
            cleaned = REDACTED + "\n"
        self._stream.write(cleaned)
        return len(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def protect_streams(fields: Iterable[str]) -> Scrubber | None:
    """Redact this process's stdout and stderr (and the log handlers that write to them)
    when ``fields`` are redacted; None when there is nothing to redact."""
    fields = frozenset(f for f in fields if f)
    if not fields:
        return None
    scrub = Scrubber(fields)
    originals = {}
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if isinstance(stream, RedactingStream):
            continue
        wrapped = RedactingStream(stream, scrub)
        originals[id(stream)] = wrapped
        setattr(sys, name, wrapped)
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    for logger in loggers:
        for handler in getattr(logger, "handlers", []):
            if isinstance(handler, logging.StreamHandler) and id(handler.stream) in originals:
                handler.setStream(originals[id(handler.stream)])
    return scrub


def _number(name: str, default: float, minimum: float) -> float:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        print(
            f"nbdeploy request log: {name}={text!r} is not a number; using {default:g}",
            file=sys.stderr,
        )
        return default
    return max(minimum, value)


def from_environment(manifest: dict[str, Any]) -> RequestLog | None:
    """The version's request log as the environment configures it (None: no log)."""
    settings = manifest.get("request_log") or {}
    protect_streams(settings.get("redact") or ())  # the server log, log or no log
    directory = os.environ.get(DIR_ENV, "").strip()
    if not directory:
        return None
    version: int | None = None
    with contextlib.suppress(TypeError, ValueError):
        version = int(os.environ.get(VERSION_ENV) or manifest.get("version") or "")
    return RequestLog(
        Path(directory),
        version=version,
        sample=float(settings.get("sample", 1.0)),
        redact_fields=settings.get("redact") or (),
        stats_directory=Path(os.environ.get(STATS_DIR_ENV) or directory),
        segment_bytes=int(_number(SEGMENT_MB_ENV, DEFAULT_SEGMENT_MB, 0.001) * 1024 * 1024),
        keep=int(_number(KEEP_ENV, DEFAULT_KEEP, 2)),
        queue_size=int(_number(QUEUE_ENV, DEFAULT_QUEUE, 1)),
        queue_bytes=int(_number(QUEUE_MB_ENV, DEFAULT_QUEUE_MB, 0.001) * 1024 * 1024),
        body_limit=int(_number(BODY_KB_ENV, DEFAULT_BODY_KB, 1) * 1024),
    )


def bentoml_logging(log: RequestLog | None) -> dict[str, Any]:
    """BentoML's ``logging`` service setting: its access log (a line per request, about a
    quarter of the throughput of a small model) is off when the request log replaces it;
    errors and tracebacks go to the server log either way, except a client's mistake (an
    answer 4xx), which is one warning line (:class:`ClientErrorsAsOneLine`)."""
    server_log = logging.getLogger(BENTOML_HTTP_LOGGER)
    if not any(isinstance(f, ClientErrorsAsOneLine) for f in server_log.filters):
        server_log.addFilter(ClientErrorsAsOneLine())
    asked = os.environ.get(ACCESS_LOG_ENV, "").strip().lower()
    enabled = asked in ("1", "true", "yes", "on") if asked else log is None
    return {"access": {"enabled": enabled}}


BENTOML_HTTP_LOGGER = "bentoml._internal.server.http_app"  # logs "Exception on /path [POST]"


class ClientErrorsAsOneLine(logging.Filter):
    """BentoML logs every refused request (a body that does not validate: answered 400) as
    an ERROR with the whole traceback. A client's mistake is not the server's error: such a
    record becomes one WARNING line with what was wrong (the traceback of a 5xx stays)."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        status = _client_error_status(error)
        if status is None:
            return True
        record.msg = "%s refused (%d): %s"
        record.args = (_path_of(record), status, _one_line(error))
        record.exc_info, record.exc_text = None, None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def _client_error_status(error: BaseException | None) -> int | None:
    """The 4xx status BentoML answers ``error`` with (None: not a client's mistake)."""
    if error is None:
        return None
    if type(error).__name__ == "ValidationError" and type(error).__module__.startswith("pydantic"):
        return 400
    code = getattr(getattr(error, "error_code", None), "value", None)
    return code if isinstance(code, int) and 400 <= code < 500 else None


def _path_of(record: logging.LogRecord) -> str:
    """ "POST /predict" from BentoML's ("Exception on %s [%s]", path, method)."""
    args = record.args if isinstance(record.args, tuple) else ()
    return f"{args[1]} {args[0]}" if len(args) >= 2 else "a request"


def _one_line(error: BaseException | None) -> str:
    """The first lines of ``error``'s message, joined; pydantic's echo of the input and its
    links to documentation left out (the input may hold private values)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    kept = [line for line in lines if not line.startswith("For further information")]
    text = "; ".join(kept)
    text = _INPUT_VALUE.sub("input_value=…", text)
    return text[:300] + ("…" if len(text) > 300 else "")


class RequestLog:
    """The queue, the writer thread, the segments and the counts of one process."""

    def __init__(
        self,
        directory: Path,
        *,
        version: int | None = None,
        sample: float = 1.0,
        redact_fields: Iterable[str] = (),
        stats_directory: Path | None = None,
        segment_bytes: int = int(DEFAULT_SEGMENT_MB * 1024 * 1024),
        keep: int = DEFAULT_KEEP,
        queue_size: int = DEFAULT_QUEUE,
        queue_bytes: int = int(DEFAULT_QUEUE_MB * 1024 * 1024),
        body_limit: int = DEFAULT_BODY_KB * 1024,
        flush_seconds: float = FLUSH_SECONDS,
        retry_seconds: float = RETRY_SECONDS,
    ) -> None:
        self.directory = Path(directory)
        self.stats_directory = Path(stats_directory or directory)
        self.version = version
        self.arm = f"v{version}" if version is not None else None
        self.sample = min(1.0, max(0.0, sample))
        self.redact_fields = frozenset(redact_fields)
        self.segment_bytes = max(1, segment_bytes)
        # At least two: a worker still appending to the previous segment never writes
        # into a deleted file.
        self.keep = max(2, keep)
        self.body_limit = max(1, body_limit)
        self.flush_seconds = flush_seconds
        self.retry_seconds = retry_seconds
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, queue_size))
        self.queue_bytes = max(1, queue_bytes)
        # Bytes of bodies queued: each counter has one writing thread, so no lock is needed.
        self._bytes_in = 0  # the request side
        self._bytes_out = 0  # the writer
        self.dropped_full = 0  # only the request side adds to it
        self.dropped_errors = 0  # only the writer adds to these
        self.written = 0
        self.last_error: str | None = None
        self.last_error_time: float | None = None
        self.started_at = time.time()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._closed = False
        self._closing = threading.Event()  # cuts the wait for a batch short
        self._connection: sqlite3.Connection | None = None
        self._path: Path | None = None
        self._failing_until = 0.0
        self._stats_name = f"stats-{os.getpid()}-{int(self.started_at * 1000)}.json"
        self._reported = (0, 0)  # (written, dropped) already added to the Prometheus counters

    @property
    def dropped(self) -> int:
        return self.dropped_full + self.dropped_errors

    # -- the request side -----------------------------------------------------------------
    def submit(self, record: tuple[Any, ...], size: int = 0) -> None:
        """Queue one request's raw record: (arrival time, X-Request-ID bytes or None,
        path, latency ms, status, request body chunks, request body cut, answer chunks,
        answer cut, texts of the exceptions logged for it) holding ``size`` bytes of
        bodies. Never blocks, never raises."""
        if self._thread is None:
            self._start()
        if size and self._bytes_in - self._bytes_out + size > self.queue_bytes:
            self.dropped_full += 1
            return
        try:
            self.queue.put_nowait((record, size))
        except queue.Full:
            self.dropped_full += 1
            return
        self._bytes_in += size

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is not None or self._closed:
                return
            self._thread = threading.Thread(
                target=self._run, name="nbdeploy-request-log", daemon=True
            )
            self._thread.start()
            atexit.register(self.close)

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued, then stop the writer (at shutdown; idempotent)."""
        with self._start_lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
        if thread is None:
            return
        self._closing.set()
        with contextlib.suppress(queue.Full):
            self.queue.put((_STOP, 0), timeout=timeout)
        thread.join(timeout)

    # -- the writer -----------------------------------------------------------------------
    def _run(self) -> None:
        self._prune_stats()
        next_stats = 0.0
        stopping = False
        while not stopping:
            items: list[tuple[Any, int]] = []
            with contextlib.suppress(queue.Empty):
                items.append(self.queue.get(timeout=STATS_SECONDS))
            if items and items[0][0] is not _STOP:
                self._closing.wait(self.flush_seconds)  # a batch gathers meanwhile
            while items and len(items) < MAX_BATCH:
                try:
                    items.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            if any(record is _STOP for record, _ in items):
                stopping = True
                while True:  # whatever was queued before the stop
                    try:
                        items.append(self.queue.get_nowait())
                    except queue.Empty:
                        break
            records = [record for record, _ in items if record is not _STOP]
            self._bytes_out += sum(size for _, size in items)
            if records:
                self._write(records)
            if stopping or time.monotonic() >= next_stats:
                self._report()
                next_stats = time.monotonic() + STATS_SECONDS
        self._disconnect()

    def _write(self, records: list[Any]) -> None:
        if time.monotonic() < self._failing_until:
            self.dropped_errors += len(records)
            return
        rows = []
        for record in records:
            try:
                rows.append(self.row(record))
            except Exception as error:  # one odd request: its row only
                self.dropped_errors += 1
                self.last_error = f"{type(error).__name__}: {error}"
                self.last_error_time = time.time()
        if not rows:
            return
        for attempt in range(LOCKED_ATTEMPTS):
            try:
                self._insert(rows)
                break
            except sqlite3.OperationalError as error:
                # Another worker holds the segment (it may be setting it up: WAL mode and
                # the schema need the file alone, and SQLite does not always wait for
                # that): wait a little and write the same rows, rather than drop them.
                locked = "locked" in str(error) or "busy" in str(error)
                if locked and attempt + 1 < LOCKED_ATTEMPTS:
                    self._disconnect()
                    time.sleep(0.05 * 2**attempt)
                    continue
                self.dropped_errors += len(rows)
                self._failed(error)
                return
            except Exception as error:
                self.dropped_errors += len(rows)
                self._failed(error)
                return
        self.written += len(rows)
        if self._failing_until:
            self._failing_until = 0.0
            print(
                f"nbdeploy request log: writing to {self.directory} works again",
                file=sys.stderr,
                flush=True,
            )

    def _insert(self, rows: list[Any]) -> None:
        connection = self._segment()
        connection.execute("BEGIN IMMEDIATE")
        try:
            connection.executemany(INSERT, rows)
            connection.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                connection.execute("ROLLBACK")
            raise

    def _failed(self, error: Exception) -> None:
        text = f"{type(error).__name__}: {error}"
        self.last_error, self.last_error_time = text, time.time()
        if not self._failing_until:  # one line per episode, not one per batch
            print(
                f"nbdeploy request log: cannot write to {self.directory} ({text}); requests "
                f"are served but not logged (dropped rows are counted), retrying every "
                f"{self.retry_seconds:g} s",
                file=sys.stderr,
                flush=True,
            )
        self._failing_until = time.monotonic() + self.retry_seconds
        self._disconnect()

    def _disconnect(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(sqlite3.Error):
                self._connection.close()
        self._connection, self._path = None, None

    def _segment(self) -> sqlite3.Connection:
        """The connection to the newest segment; the next one once it is full (other
        workers and versions append to the same segments)."""
        self.directory.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
        existing = segments(self.directory)
        newest = existing[-1] if existing else segment_path(self.directory, 1)
        if existing and _size(newest) >= self.segment_bytes:
            number = segment_number(newest) or 0
            newest = segment_path(self.directory, number + 1)
            self._drop_old([*existing, newest])
        if self._connection is None or self._path != newest:
            self._disconnect()
            self._connection = _open(newest)
            self._path = newest
        return self._connection

    def _drop_old(self, paths: list[Path]) -> None:
        for path in paths[: max(0, len(paths) - self.keep)]:
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(OSError):
                    os.unlink(f"{path}{suffix}")

    def row(self, record: tuple[Any, ...]) -> tuple[Any, ...]:
        """A stored row from the request side's raw record (parsed and redacted here, off
        the request path)."""
        (started, raw_id, endpoint, latency_ms, status) = record[:5]
        body, body_cut, answer, answer_cut, failure = record[5:]
        request_id = raw_id.decode("latin-1") if raw_id else ""
        if not REQUEST_ID.fullmatch(request_id):
            request_id = uuid.uuid4().hex
        truncated = 0
        inputs = None
        if body_cut:
            truncated |= TRUNCATED_INPUTS
        else:
            inputs = self._json(b"".join(body), raw_allowed=True)
        prediction = error = None
        answer_bytes = b"".join(answer)
        if 200 <= status < 300:
            if answer_cut:
                truncated |= TRUNCATED_PREDICTION
            else:
                prediction = self._json(answer_bytes, raw_allowed=True)
        else:
            text = self._json(answer_bytes, raw_allowed=False) if self.redact_fields else None
            if failure and status >= 500 and not self.redact_fields:
                # The exception's own text (an exception message may quote inputs: never
                # with redaction on).
                text = failure[-1]
            if text is None:
                text = answer_bytes.decode("utf-8", "replace")
            if answer_cut or len(text) > ERROR_CHARS:
                truncated |= TRUNCATED_ERROR
                text = text[:ERROR_CHARS] + "…"
            error = text or f"status {status}"
        return (
            started,
            request_id,
            self.version,
            self.arm,
            endpoint,
            round(latency_ms, 3),
            status,
            inputs,
            prediction,
            error,
            truncated,
        )

    def _json(self, data: bytes, raw_allowed: bool) -> str | None:
        """JSON text to store: ``data`` when it parses (redacted when asked), else the text
        as a JSON string (never with redaction: what is unparsed cannot be redacted)."""
        try:
            value = json.loads(data) if data else _UNPARSED
        except (ValueError, RecursionError):
            value = _UNPARSED
        if value is _UNPARSED:
            if self.redact_fields or not raw_allowed or not data:
                return None
            return json.dumps(data.decode("utf-8", "replace"))
        if not self.redact_fields:
            return data.decode("utf-8", "replace")
        try:
            return json.dumps(redact(value, self.redact_fields), separators=(",", ":"))
        except (ValueError, RecursionError):
            return None

    # -- counts -------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "version": self.version,
            "arm": self.arm,
            "directory": str(self.directory),
            "written": self.written,
            "dropped": self.dropped,
            "dropped_queue_full": self.dropped_full,
            "dropped_errors": self.dropped_errors,
            "last_error": self.last_error,
            "last_error_time": self.last_error_time,
            "sample": self.sample,
            "segment": self._path.name if self._path is not None else None,
            "started_at": self.started_at,
            "updated_at": time.time(),
        }

    def _report(self) -> None:
        """The stats file, and the Prometheus counters when there are any."""
        with contextlib.suppress(OSError):
            self.stats_directory.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
            path = self.stats_directory / self._stats_name
            temporary = path.with_name(f".{path.name}.tmp")
            with os.fdopen(_create_private(temporary, os.O_TRUNC), "w", encoding="utf-8") as out:
                out.write(json.dumps(self.stats()))
            os.replace(temporary, path)
        written, dropped = self.written, self.dropped
        counters = _counters()
        if counters:
            with contextlib.suppress(Exception):
                counters["written"].inc(written - self._reported[0])
                counters["dropped"].inc(dropped - self._reported[1])
                self._reported = (written, dropped)

    def _prune_stats(self) -> None:
        """Stats files of processes gone for a long time."""
        cutoff = time.time() - STATS_KEEP_DAYS * 86400
        with contextlib.suppress(OSError):
            for path in self.stats_directory.glob(STATS_GLOB):
                with contextlib.suppress(OSError):
                    if path.stat().st_mtime < cutoff:
                        path.unlink()


def _counters() -> dict[str, Any]:
    """Process-wide Prometheus counters (multiprocess mode when PROMETHEUS_MULTIPROC_DIR is
    set, as BentoML's workers have it), made on first use: after BentoML set that up."""
    if "tried" not in _COUNTERS:
        _COUNTERS["tried"] = True
        try:
            from prometheus_client import Counter

            _COUNTERS["written"] = Counter(
                "nbdeploy_request_log_rows_written",
                "Requests written to nbdeploy's request log",
            )
            _COUNTERS["dropped"] = Counter(
                "nbdeploy_request_log_rows_dropped",
                "Requests nbdeploy's request log dropped (queue full or writing errors)",
            )
        except Exception:  # no prometheus_client, or already registered by another copy
            _COUNTERS.pop("written", None)
            _COUNTERS.pop("dropped", None)
    return {k: v for k, v in _COUNTERS.items() if k != "tried"}


def _size(path: Path) -> int:
    total = 0
    for suffix in ("", "-wal"):
        with contextlib.suppress(OSError):
            total += os.stat(f"{path}{suffix}").st_size
    return total


def _create_private(path: Path, flags: int = 0) -> int:
    """A descriptor of ``path`` for writing, created 0600 (an older, wider file of ours made
    0600): the modes hold whatever the umask (a container's server keeps its own)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | flags, PRIVATE_FILE)
    with contextlib.suppress(OSError):  # a file of another user on a shared volume
        if os.fstat(descriptor).st_mode & 0o077:
            os.fchmod(descriptor, PRIVATE_FILE)
    return descriptor


def _open(path: Path) -> sqlite3.Connection:
    # Made before SQLite makes it: its -wal and -shm files get the database's mode.
    os.close(_create_private(path))
    connection = sqlite3.connect(
        str(path), timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None, check_same_thread=False
    )
    try:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.executescript(SCHEMA)
        connection.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    except BaseException:
        connection.close()
        raise
    return connection


# -- the ASGI middleware ---------------------------------------------------------------------
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class Middleware:
    """Logs the requests to ``routes`` (the prediction endpoints): every status, with its
    latency. It passes every message on at once (streaming is unchanged) and keeps copies
    of the bodies up to the log's cap; nothing is parsed here."""

    def __init__(self, app: Any, log: RequestLog | None = None, routes: Iterable[str] = ()):
        self.app = app
        self.log = log
        self.routes = frozenset(routes)
        if log is not None:
            _watch_bentoml_errors()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        log = self.log
        if log is None:
            return await self.app(scope, receive, send)
        kind = scope["type"]
        if kind != "http" or scope["path"] not in self.routes:
            if kind == "lifespan":
                return await self.app(scope, _flushing_receive(receive, log), send)
            return await self.app(scope, receive, send)
        if log.sample < 1.0 and random.random() >= log.sample:
            return await self.app(scope, receive, send)
        started = time.time()
        clock = time.perf_counter()
        limit = log.body_limit
        raw_id = None
        for key, value in scope["headers"]:
            if key == b"x-request-id":
                raw_id = value
                break
        body: list[bytes] = []
        answer: list[bytes] = []
        sizes = [0, 0]  # request body, answer body
        status = 0
        failure: list[str] = []
        token = _FAILURE.set(failure)
        body_token = _BODY.set(body) if log.redact_fields else None

        async def logged_receive() -> Message:
            message = await receive()
            chunk = message.get("body")
            if chunk:
                if sizes[0] < limit:
                    body.append(chunk[: limit - sizes[0]])
                sizes[0] += len(chunk)
            return message

        async def logged_send(message: Message) -> None:
            nonlocal status
            kind = message["type"]
            if kind == "http.response.start":
                status = message["status"]
            elif kind == "http.response.body":
                chunk = message.get("body")
                if chunk:
                    if sizes[1] < limit:
                        answer.append(chunk[: limit - sizes[1]])
                    sizes[1] += len(chunk)
            await send(message)

        try:
            await self.app(scope, logged_receive, logged_send)
        except asyncio.CancelledError:  # BentoML's timeout cancels the request
            if not status:
                status, answer = 504, [b"the request was cancelled (timed out)"]
            raise
        except BaseException as error:
            if not status:
                status, answer = 500, [f"{type(error).__name__}: {error}".encode()]
            raise
        finally:
            with contextlib.suppress(Exception):
                _FAILURE.reset(token)
                if body_token is not None:
                    _BODY.reset(body_token)
            with contextlib.suppress(Exception):
                log.submit(
                    (
                        started,
                        raw_id,
                        scope["path"],
                        (time.perf_counter() - clock) * 1000.0,
                        status,
                        body,
                        sizes[0] > limit,
                        answer,
                        sizes[1] > limit,
                        failure,
                    ),
                    min(sizes[0], limit) + min(sizes[1], limit),
                )


class _FailureFilter(logging.Filter):
    """Keeps the text of the exception BentoML logs for the request being served."""

    def filter(self, record: logging.LogRecord) -> bool:
        failure = _FAILURE.get()
        if failure is not None and record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            with contextlib.suppress(Exception):
                failure.append(f"{type(error).__name__}: {error}"[:ERROR_CHARS])
        return True


def _watch_bentoml_errors() -> None:
    logger = logging.getLogger(BENTOML_ERROR_LOGGER)
    if not any(isinstance(f, _FailureFilter) for f in logger.filters):
        logger.addFilter(_FailureFilter())


def _flushing_receive(receive: Receive, log: RequestLog) -> Receive:
    """The lifespan's receive: at shutdown the queue is written before the worker ends
    (nbdeploy's workers leave with os._exit, where atexit handlers do not run)."""

    async def flushing() -> Message:
        message = await receive()
        if message.get("type") == "lifespan.shutdown":
            with contextlib.suppress(Exception):
                await asyncio.get_running_loop().run_in_executor(None, log.close)
        return message

    return flushing
