"""Server processes: start and wait for readiness, detect death, stop, pid-reuse safety."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from nbdeploy.deploy.supervisor import (
    ServerStartError,
    free_port,
    is_running,
    probe,
    process_start_ticks,
    start_server,
    stop_process,
    tail,
)

SERVER = """
import http.server, sys
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/readyz" else 404)
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *args):
        print("request", self.path, flush=True)
print("serving", flush=True)
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""


@pytest.fixture
def server_script(tmp_path: Path) -> Path:
    path = tmp_path / "server.py"
    path.write_text(SERVER)
    return path


def test_start_wait_ready_and_stop(server_script, tmp_path):
    port = free_port()
    log = tmp_path / "logs" / "server.log"
    server = start_server(
        [sys.executable, str(server_script), str(port)], host="127.0.0.1", port=port, log_path=log
    )
    try:
        assert server.url == f"http://127.0.0.1:{port}"
        assert probe(server.url + "/readyz")
        assert is_running(server.pid, server.start_ticks)
        assert os.getpgid(server.pid) == server.pid  # its own session: outlives its starter
        assert "serving" in tail(log)
    finally:
        assert stop_process(server.pid, server.start_ticks, grace=5)
    assert not is_running(server.pid, server.start_ticks)
    assert not probe(server.url + "/readyz")
    assert stop_process(server.pid, server.start_ticks) is False  # already stopped


def test_a_server_that_exits_reports_its_log(tmp_path):
    log = tmp_path / "crash.log"
    code = (
        "print('loading model'); print('ModuleNotFoundError: No module named xgboost'); "
        "raise SystemExit(3)"
    )
    with pytest.raises(ServerStartError) as caught:
        start_server([sys.executable, "-c", code], host="127.0.0.1", port=free_port(), log_path=log)
    message = str(caught.value)
    assert "exited with code 3 before it was ready" in message
    assert "No module named xgboost" in message


def test_a_server_that_never_gets_ready_is_stopped(tmp_path):
    log = tmp_path / "slow.log"
    code = "import time; print('warming up', flush=True); time.sleep(60)"
    started = time.monotonic()
    with pytest.raises(ServerStartError, match=r"not ready after 1\.5 s") as caught:
        start_server(
            [sys.executable, "-c", code],
            host="127.0.0.1",
            port=free_port(),
            log_path=log,
            timeout=1.5,
        )
    assert "warming up" in str(caught.value)
    assert time.monotonic() - started < 20


def test_killed_process_and_reused_pid_are_not_running(server_script, tmp_path):
    port = free_port()
    server = start_server(
        [sys.executable, str(server_script), str(port)],
        host="127.0.0.1",
        port=port,
        log_path=tmp_path / "s.log",
    )
    os.kill(server.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while is_running(server.pid, server.start_ticks) and time.monotonic() < deadline:
        time.sleep(0.05)  # a killed child stays a zombie until reaped: that counts as dead
    assert not is_running(server.pid, server.start_ticks)
    # This process is alive, but with another start time it is "someone else".
    me = os.getpid()
    assert is_running(me, process_start_ticks(me))
    assert not is_running(me, (process_start_ticks(me) or 0) + 1)
