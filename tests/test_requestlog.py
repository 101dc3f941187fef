"""The request log: written by the served service itself (every status, under concurrency,
across restarts and versions), never failing a request (an unwritable directory only counts
drops), redacting before anything is stored, sampling, rotating segments; read back by
``nbdeploy.requests`` and ``nbdeploy logs NAME --requests``."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import nbdeploy
from nbdeploy.cli import main as cli_main
from nbdeploy.errors import DeployError
from nbdeploy.monitor.requests import log_stats, read_requests, requests_frame
from nbdeploy.service import requestlog_runtime
from nbdeploy.service.requestlog_runtime import RequestLog, from_environment, segments

integration = pytest.mark.integration
SECRET = "987-65-4321-never-stored"


def define(source: str) -> dict[str, Any]:
    """Functions as a notebook defines them (in ``__main__``)."""
    namespace: dict[str, Any] = {"__name__": "__main__"}
    exec(source, namespace)
    return namespace


def scaler(factor: float = 2.0) -> Any:
    return define(
        "def scale(values: list[float]) -> list[float]:\n"
        "    if values and values[0] < 0:\n"
        "        raise ValueError(f'negative value {values[0]}')\n"
        f"    return [{factor} * v for v in values]\n"
    )["scale"]


def send(url: str, body: Any, request_id: str | None = None) -> tuple[int, str, dict[str, str]]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if request_id:
        headers["X-Request-ID"] = request_id
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.read().decode(), dict(answer.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(), dict(error.headers)


def wait_for(condition: Any, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


def rows_of(name: str, count: int, **filters: Any) -> list[dict[str, Any]]:
    """The logged rows, once at least ``count`` are there (the writer batches ~100 ms)."""
    found: list[dict[str, Any]] = []

    def enough() -> bool:
        found[:] = read_requests(name, **filters)
        return len(found) >= count

    wait_for(enough)
    return found


def record(
    index: int, body: bytes = b'{"values": [1.0]}', status: int = 200, answer: bytes = b"[2.0]"
) -> tuple[Any, ...]:
    """A raw record as the middleware submits it."""
    return (
        time.time(),
        f"id-{index}".encode(),
        "/scale",
        1.5,
        status,
        [body],
        False,
        [answer],
        False,
        [],
    )


def named(row: tuple[Any, ...]) -> dict[str, Any]:
    return dict(zip(requestlog_runtime.COLUMNS, row, strict=True))


# -- the writer, without a service -----------------------------------------------------------
def test_segments_rotate_by_size_and_the_reader_reads_across_them(tmp_path, monkeypatch):
    directory = tmp_path / "requests"
    monkeypatch.setenv(requestlog_runtime.DIR_ENV, str(directory))
    monkeypatch.setenv(requestlog_runtime.SEGMENT_MB_ENV, "0.02")  # about 20 KB
    monkeypatch.setenv(requestlog_runtime.KEEP_ENV, "100")
    monkeypatch.setenv(requestlog_runtime.VERSION_ENV, "7")
    log = from_environment({"request_log": {"sample": 1.0, "redact": []}})
    assert log is not None and log.segment_bytes == int(0.02 * 1024 * 1024)
    body = json.dumps({"values": list(range(40))}).encode()
    for batch in range(12):
        for index in range(batch * 25, batch * 25 + 25):
            log.submit(record(index, body))
        time.sleep(0.15)  # one transaction per batch; rotation is checked between them
    log.close()
    assert log.written == 300 and log.dropped == 0
    assert len(segments(directory)) >= 3
    rows = read_requests("any", directory=directory)
    assert [r["request_id"] for r in rows] == [f"id-{i}" for i in range(300)]
    assert rows[0]["version"] == 7 and rows[0]["arm"] == "v7"
    assert rows[0]["inputs"] == {"values": list(range(40))} and rows[0]["prediction"] == [2.0]
    newest = read_requests("any", directory=directory, limit=5)
    assert [r["request_id"] for r in newest] == [f"id-{i}" for i in range(295, 300)]
    since = rows[100]["time"]
    assert len(read_requests("any", directory=directory, since=since)) == 200
    assert read_requests("any", directory=directory, version=8) == []

    # Keeping fewer segments drops the oldest whole segments, never single rows.
    monkeypatch.setenv(requestlog_runtime.KEEP_ENV, "2")
    log = from_environment({})
    assert log is not None
    for batch in range(4):
        for index in range(300 + batch * 25, 325 + batch * 25):
            log.submit(record(index, body))
        time.sleep(0.15)
    log.close()
    assert len(segments(directory)) == 2
    kept = [r["request_id"] for r in read_requests("any", directory=directory)]
    assert kept[-1] == "id-399" and "id-0" not in kept


def test_a_full_queue_drops_and_counts_without_blocking(tmp_path):
    log = RequestLog(tmp_path / "requests", queue_size=5)
    started = time.perf_counter()
    for index in range(200):
        log.submit(record(index))
    assert time.perf_counter() - started < 0.5  # the request side never waits
    log.close()
    assert log.dropped_full > 0 and log.written + log.dropped == 200
    assert len(read_requests("any", directory=tmp_path / "requests")) == log.written
    stats = json.loads(next((tmp_path / "requests").glob("stats-*.json")).read_text())
    assert stats["written"] == log.written and stats["dropped_queue_full"] == log.dropped_full

    # Bodies waiting in memory are bounded too: large requests are dropped, not queued.
    bounded = RequestLog(tmp_path / "bounded", queue_bytes=1000)
    bounded.submit(record(1), size=600)
    bounded.submit(record(2), size=600)
    bounded.close()
    assert (bounded.written, bounded.dropped_full) == (1, 1)


def test_the_queue_is_written_when_the_server_shuts_down(tmp_path):
    import asyncio

    log = RequestLog(tmp_path, flush_seconds=30)  # only the shutdown can write it in time

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await receive()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"[2.0]"})
        else:
            await receive()

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b'{"values": [1.0]}'}

    async def shutdown() -> dict[str, Any]:
        return {"type": "lifespan.shutdown"}

    async def send(message: Any) -> None:
        pass

    async def serve() -> None:
        middleware = requestlog_runtime.Middleware(app, log=log, routes=["/scale"])
        http = {"type": "http", "path": "/scale", "headers": [(b"x-request-id", b"last-one")]}
        await middleware({"type": "http", "path": "/livez", "headers": []}, receive, send)
        await middleware(http, receive, send)
        await middleware({"type": "lifespan"}, shutdown, send)

    started = time.monotonic()
    asyncio.run(serve())
    assert time.monotonic() - started < 10 and log.written == 1
    [row] = read_requests("any", directory=tmp_path)
    assert row["request_id"] == "last-one" and row["endpoint"] == "/scale"


def test_an_unwritable_directory_drops_counts_warns_once_and_recovers(tmp_path, capfd):
    blocked = tmp_path / "requests"
    blocked.write_text("a file where the directory should be")
    log = RequestLog(blocked, stats_directory=tmp_path / "stats", retry_seconds=0.3)
    for batch in range(3):
        for index in range(batch * 10, batch * 10 + 10):
            log.submit(record(index))
        time.sleep(0.2)
    wait_for(lambda: log.dropped >= 30, timeout=5)
    assert log.dropped_errors == 30 and log.written == 0
    assert log.last_error and "FileExistsError" in log.last_error
    blocked.unlink()  # the disk is writable again: the writer recovers on its own
    time.sleep(0.4)
    log.submit(record(99))
    log.close()
    assert log.written == 1
    err = capfd.readouterr().err
    assert err.count("cannot write to") == 1 and "works again" in err
    stats = log_stats("any", directory=tmp_path / "stats")
    assert (
        stats["dropped"] == 30
        and stats["written"] == 1
        and "FileExistsError" in str(stats["last_error"])
    )


def test_rows_are_parsed_and_redacted_off_the_request_path(tmp_path):
    log = RequestLog(tmp_path, redact_fields=["ssn"], version=2)
    nested = {"rows": [{"a": 1, "ssn": SECRET, "inner": {"ssn": SECRET, "b": [{"ssn": 1}]}}]}
    row = named(log.row(record(1, json.dumps(nested).encode())))
    assert json.loads(row["inputs"]) == {"rows": [{"a": 1, "inner": {"b": [{}]}}]}
    unparsable = log.row(record(2, b'{"ssn": "' + SECRET.encode() + b'"', 400, b'{"error": "x"}'))
    assert SECRET not in repr(unparsable) and unparsable[7] is None  # inputs: not stored
    failing = (*record(3, status=500, answer=b'{"error": "generic"}')[:9], [f"bad {SECRET}"])
    assert SECRET not in repr(log.row(failing))  # an exception's text may quote inputs
    plain = RequestLog(tmp_path)
    raw = named(plain.row(record(4, b"{oops", 400, b"bad")))
    assert json.loads(raw["inputs"]) == "{oops" and raw["error"] == "bad"
    assert plain.row(failing)[9] == f"bad {SECRET}"
    insane = plain.row((time.time(), b"bad id with spaces", *record(5)[2:]))
    assert len(insane[1]) == 32  # a generated id instead


def test_log_options_are_checked(capsys):
    for bad in ("0", "1.5", "-0.1", "lots"):
        with pytest.raises(SystemExit):
            cli_main(["deploy", "nb.ipynb", "--log-sample", bad])
        assert "--log-sample" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["deploy", "nb.ipynb", "--redact", " "])
    assert "--redact" in capsys.readouterr().err
    with pytest.raises(DeployError, match="--log-sample"):
        nbdeploy.deploy(scaler(), name="checked", mlflow=False, log_sample=0)
    with pytest.raises(DeployError, match="--redact"):
        nbdeploy.deploy(scaler(), name="checked", mlflow=False, redact=[""])


def test_import_nbdeploy_stays_light():
    code = "import sys, nbdeploy; nbdeploy.requests; print('pandas' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- real services -----------------------------------------------------------------------------
@integration
def test_every_request_is_logged_once_under_concurrency(home):
    result = nbdeploy.deploy(scaler(), name="logged", mlflow=False, workers=2)
    url = result.deployment.url + "/scale"
    expected: dict[str, int] = {}
    answers: dict[str, dict[str, str]] = {}
    lock = threading.Lock()

    def one(index: int) -> None:
        request_id = f"req-{index:04d}"
        if index % 20 == 0:
            body: Any = b'{"values": [1.0,'  # malformed: 400
        elif index % 20 == 1:
            body = {"values": [-1.0]}  # the function raises: 500
        else:
            body = {"values": [float(index)]}
        status, _, headers = send(url, body, request_id)
        with lock:
            expected[request_id] = status
            answers[request_id] = headers

    threads = [
        threading.Thread(target=lambda k=k: [one(i) for i in range(k, 200, 8)]) for k in range(8)
    ]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert Counter(expected.values()) == {200: 180, 400: 10, 500: 10}
        assert all(h.get("X-Request-ID") == rid for rid, h in answers.items())  # the router's
        rows = [r for r in rows_of("logged", 200) if r["request_id"].startswith("req-")]
        assert Counter(r["request_id"] for r in rows) == Counter(expected.keys())  # each once
        for row in rows:
            assert row["status"] == expected[row["request_id"]]
            assert row["version"] == 1 and row["arm"] == "v1" and row["endpoint"] == "/scale"
            assert row["latency_ms"] > 0
            index = int(row["request_id"].split("-")[1])
            if row["status"] == 200:
                assert row["inputs"] == {"values": [float(index)]}
                assert row["prediction"] == [2.0 * index] and row["error"] is None
            elif row["status"] == 500:
                assert row["inputs"] == {"values": [-1.0]}
                assert row["error"] == "ValueError: negative value -1.0"
            else:
                assert row["inputs"] == '{"values": [1.0,'  # as it came (not JSON)
                assert "validation error" in row["error"]
        frame = requests_frame("logged")
        assert len(frame) >= 200 and str(frame["time"].dtype).startswith("datetime64")
        assert list(frame.columns) == [
            "time", "request_id", "version", "arm", "endpoint", "latency_ms", "status",
            "inputs", "prediction", "error",
        ]  # fmt: skip
        stats = wait_for(lambda: (s := log_stats("logged"))["written"] >= 200 and s)
        assert stats["dropped"] == 0 and 1 <= len(stats["processes"]) <= 2  # per worker
        live = next(s for s in nbdeploy.status("logged")[0].servers if s.role == "live")
        with urllib.request.urlopen(live.url + "/metrics") as answer:
            metrics = answer.read().decode()
        written = [
            float(line.split()[-1])
            for line in metrics.splitlines()
            if line.startswith("nbdeploy_request_log_rows_written_total")
        ]
        assert written and written[0] >= 200
    finally:
        nbdeploy.stop("logged")
    server_log = "\n".join(nbdeploy.logs("logged", 2000))
    assert "scheme=http" not in server_log  # BentoML's access log: replaced by the request log
    assert "ValueError: negative value -1.0" in server_log  # errors still go to the server log


@integration
def test_the_log_survives_restarts_and_follows_versions(home, cli):
    result = nbdeploy.deploy(scaler(), name="kept", mlflow=False)
    url = result.deployment.url + "/scale"
    try:
        for index in range(10):
            assert send(url, {"values": [float(index)]}, f"first-{index}")[0] == 200
        nbdeploy.stop("kept")  # what was queued is written on the way out
        assert len(read_requests("kept")) == 10
        again = nbdeploy.deploy(scaler(), name="kept", mlflow=False)  # the same v1, restarted
        assert again.version.version == 1
        for index in range(10):
            assert send(url, {"values": [float(index)]}, f"second-{index}")[0] == 200
        newer = nbdeploy.deploy(scaler(3.0), name="kept", mlflow=False)
        assert newer.version.version == 2
        for index in range(5):
            assert send(url, {"values": [1.0]}, f"third-{index}")[0] == 200
        rows = rows_of("kept", 25)
        ids = [r["request_id"] for r in rows]
        assert ids[:10] == [f"first-{i}" for i in range(10)]
        assert ids[10:20] == [f"second-{i}" for i in range(10)]
        assert [r["arm"] for r in rows[20:]] == ["v2"] * 5 and rows[-1]["prediction"] == [3.0]
        assert len(read_requests("kept", version=2)) == 5
        assert len(nbdeploy.requests("kept", limit=3)) == 3

        out = cli("logs", "kept", "--requests", "--json", "--limit", "4")
        assert out.code == 0, out
        lines = [json.loads(line) for line in out.out.strip().splitlines()]
        assert [line["request_id"] for line in lines] == [f"third-{i}" for i in range(1, 5)]
        assert lines[0]["inputs"] == {"values": [1.0]} and lines[0]["status"] == 200
        table = cli("logs", "kept", "--requests", "--limit", "2")
        assert table.code == 0 and "request id" in table.out and "third-4" in table.out
        assert "third-2" not in table.out
        assert cli("logs", "nothing", "--requests").code != 0
    finally:
        nbdeploy.stop("kept")


@integration
def test_an_unwritable_log_directory_never_fails_a_request(home):
    blocked = home / "deployments" / "blocked" / "requests"
    blocked.parent.mkdir(parents=True)
    blocked.write_text("not a directory")  # mkdir fails, for root too
    result = nbdeploy.deploy(scaler(), name="blocked", mlflow=False)
    try:
        url = result.deployment.url + "/scale"
        statuses = [send(url, {"values": [float(i)]})[0] for i in range(30)]
        assert statuses == [200] * 30
        stats = wait_for(lambda: (s := log_stats("blocked"))["dropped"] >= 30 and s)
        assert stats and stats["written"] == 0 and "FileExistsError" in stats["last_error"]
        assert read_requests("blocked") == []
    finally:
        nbdeploy.stop("blocked")
    server_log = "\n".join(nbdeploy.logs("blocked", 2000))
    assert server_log.count("nbdeploy request log: cannot write to") == 1


@integration
def test_redacted_fields_never_reach_the_disk(home):
    score_source = (
        "def score(records: list[dict]) -> list[float]:\n"
        "    for r in records:\n"
        "        if r['income'] < 0:\n"
        "            raise ValueError(f'bad record {r}')\n"
        "    return [r['income'] * FACTOR for r in records]\n"
    )
    namespace = define("FACTOR = 2\n" + score_source)
    result = nbdeploy.deploy(
        namespace["score"], name="private", mlflow=False, redact=["ssn", "token"]
    )
    version_dir = Path(result.version.service_dir)
    manifest = json.loads((version_dir / "manifest.json").read_text())
    assert manifest["request_log"] == {"sample": 1.0, "redact": ["ssn", "token"]}
    source = Path(requestlog_runtime.__file__).read_text()
    assert (version_dir / "nbdeploy_requestlog.py").read_text() == source
    assert result.version.options["redact"] == ["ssn", "token"]
    url = result.deployment.url + "/score"
    record_ = {"income": 1.5, "ssn": SECRET, "address": {"token": SECRET, "city": "Lyon"}}
    try:
        assert send(url, {"records": [record_], "ssn": SECRET}, "ok")[0] == 200
        assert send(url, {"records": [{**record_, "income": -1}]}, "raises")[0] == 500
        broken = b'{"records": [{"ssn": "' + SECRET.encode() + b'", '
        assert send(url, broken, "malformed")[0] == 400
        rows = {r["request_id"]: r for r in rows_of("private", 3)}
        assert rows["ok"]["inputs"] == {"records": [{"income": 1.5, "address": {"city": "Lyon"}}]}
        assert rows["ok"]["prediction"] == [3.0]
        assert rows["raises"]["status"] == 500 and rows["malformed"]["inputs"] is None
        # A shadow version gets the same requests: its logs and the router's keep none.
        nbdeploy.deploy(
            define("FACTOR = 3\n" + score_source)["score"],
            name="private",
            mlflow=False,
            redact=["ssn", "token"],
            strategy="shadow",
            weight=100,
        )
        for n in range(5):
            assert send(url, {"records": [record_]}, f"mirrored-{n}")[0] == 200
        assert send(url, {"records": [{**record_, "income": -1}]}, "mirrored-raises")[0] == 500
        deadline = time.monotonic() + 30
        while mirrored(home / "deployments" / "private") < 6:
            assert time.monotonic() < deadline, "the shadow log lacks the mirrored requests"
            time.sleep(0.2)
    finally:
        nbdeploy.stop("private")
    # Nowhere under the deployment's folder: request log, server and router logs, state.
    folder = home / "deployments" / "private"
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert any(p.name.endswith(".db") for p in files)
    assert any(p.parent.name == "logs" and p.name.startswith("v1-") for p in files), files
    for path in files:
        assert SECRET.encode() not in path.read_bytes(), path.relative_to(folder)
    server_log = "\n".join(nbdeploy.logs("private", 2000))
    assert "ValueError: bad record" in server_log and "[redacted]" in server_log
    # The malformed body was the client's mistake: one warning line, no traceback.
    logs = "".join(p.read_text() for p in files if p.parent.name == "logs" and p.suffix == ".log")
    assert "[WARNING]" in logs and "POST /score refused (400): " in logs
    assert "pydantic_core._pydantic_core.ValidationError" not in logs


def mirrored(folder: Path) -> int:
    """The requests the router's shadow logs under ``folder`` have recorded."""
    return sum(
        text.count('"request_id": "mirrored-')
        for text in (path.read_text() for path in folder.rglob("shadow.jsonl"))
    )


@integration
def test_the_server_log_is_scrubbed_of_redacted_values():
    scrub = requestlog_runtime.Scrubber(["ssn", "token"])
    pydantic = (
        'Invalid JSON: EOF while parsing [type=json_invalid, input_value=b\'{"record": '
        '{"amount": 1, "ssn": "999-99-9999"\', input_type=bytes]'
    )
    assert scrub(pydantic) == (
        "Invalid JSON: EOF while parsing [type=json_invalid, input_value=[redacted], "
        "input_type=bytes]"
    )
    record = "ValueError: bad record {'income': -1, 'ssn': '123-45-6789', 'token': 'abc'}"
    assert scrub(record) == (
        "ValueError: bad record {'income': -1, 'ssn': [redacted], 'token': [redacted]}"
    )
    # The values of the request being served, wherever they appear (a bare value too).
    token = requestlog_runtime._BODY.set([b'{"rows": [{"ssn": "123-45-6789", "a": 1}]}'])
    try:
        assert scrub("KeyError: '123-45-6789'") == "KeyError: [redacted]"
        assert scrub("a = 1") == "a = 1"  # other fields stay
    finally:
        requestlog_runtime._BODY.reset(token)
    assert scrub("KeyError: '123-45-6789'") == "KeyError: '123-45-6789'"  # no request: kept


@integration
def test_sampling_logs_about_the_given_share(home):
    result = nbdeploy.deploy(scaler(), name="sampled", mlflow=False, log_sample=0.25)
    assert result.version.options["log_sample"] == 0.25
    url = result.deployment.url + "/scale"
    try:
        for index in range(400):
            assert send(url, {"values": [1.0]}, f"s-{index}")[0] == 200
        time.sleep(0.5)
        logged = [r for r in read_requests("sampled") if r["request_id"].startswith("s-")]
        assert 50 <= len(logged) <= 150, len(logged)  # 100 expected; about 6 sd either side
    finally:
        nbdeploy.stop("sampled")
