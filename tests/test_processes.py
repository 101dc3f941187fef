"""Server processes: start and wait for readiness, detect death, stop, pid-reuse safety,
whose port answers, whole-tree stops and interrupts during start."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from nbdeploy.deployment.runtime import processes
from nbdeploy.deployment.runtime.processes import (
    ServerStartError,
    free_port,
    is_running,
    kill_marked,
    marked_processes,
    probe,
    process_start_ticks,
    start_server,
    stop_process,
    tail,
)

SERVER = """
import http.server, os, sys
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/readyz" else 404)
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *args):
        print("request", self.path, flush=True)
print("serving", "token", os.environ.get("NBDEPLOY_START_TOKEN"), flush=True)
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""

# A server like BentoML's: a child in its process group that shrugs off SIGTERM, and a
# grandchild in a session of its own whose parent has exited (so neither the group nor
# the process tree reaches it; only the marker in its environment does).
TREE = """
import json, subprocess, sys
port, pids_file, server = sys.argv[1], sys.argv[2], sys.argv[3]
stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
child = subprocess.Popen([sys.executable, "-c", stubborn])
spawn = (
    "import subprocess, sys; print(subprocess.Popen([sys.executable, '-c', "
    "'import time; time.sleep(600)'], start_new_session=True, "
    "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).pid)"
)
orphan = subprocess.run(
    [sys.executable, "-c", spawn], capture_output=True, text=True, start_new_session=True
)
with open(pids_file + ".tmp", "w") as handle:
    json.dump({"child": child.pid, "orphan": int(orphan.stdout)}, handle)
import os; os.replace(pids_file + ".tmp", pids_file)
print("tree started", flush=True)
sys.argv[1:] = [port]
exec(open(server).read())
"""


@pytest.fixture
def server_script(tmp_path: Path) -> Path:
    path = tmp_path / "server.py"
    path.write_text(SERVER)
    return path


@pytest.fixture
def tree_script(tmp_path: Path, server_script: Path) -> Path:
    path = tmp_path / "tree.py"
    path.write_text(TREE)
    return path


@pytest.fixture
def leftovers() -> Iterator[list[int]]:
    """Pids a test started; whatever still runs at the end is killed (a failing test must
    not leave processes behind)."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if not gone(pid):
            os.kill(pid, signal.SIGKILL)


def gone(pid: int) -> bool:
    """Exited: no such process, or a zombie nobody has reaped yet."""
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def wait_for(condition: Callable[[], object], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)


def foreign_server(script: Path, port: int, leftovers: list[int]) -> subprocess.Popen[bytes]:
    """A server nbdeploy did not start (no marker), answering /readyz on ``port``."""
    env = {k: v for k, v in os.environ.items() if k != processes.MARKER_ENV}
    process = subprocess.Popen(
        [sys.executable, str(script), str(port)], stdout=subprocess.DEVNULL, env=env
    )
    leftovers.append(process.pid)
    wait_for(lambda: probe(f"http://127.0.0.1:{port}/readyz"))
    assert probe(f"http://127.0.0.1:{port}/readyz")
    return process


def test_start_wait_ready_and_stop(server_script, tmp_path):
    port = free_port()
    log = tmp_path / "logs" / "server.log"
    server = start_server(
        [sys.executable, str(server_script), str(port)],
        host="127.0.0.1",
        port=port,
        log_path=log,
        token="t0k3n",
    )
    try:
        assert server.url == f"http://127.0.0.1:{port}"
        assert probe(server.url + "/readyz")
        assert is_running(server.pid, server.start_ticks)
        assert os.getpgid(server.pid) == server.pid  # its own session: outlives its starter
        assert "serving token t0k3n" in tail(log)
        assert marked_processes(str(log)) == [server.pid]
    finally:
        assert stop_process(server.pid, server.start_ticks, grace=5)
    assert not is_running(server.pid, server.start_ticks)
    assert not probe(server.url + "/readyz")
    assert stop_process(server.pid, server.start_ticks) is False  # already stopped
    # The port is free again at once (the closed connections' TIME_WAIT does not count):
    # a redeploy restarts on the same port.
    again = start_server(
        [sys.executable, str(server_script), str(port)], host="127.0.0.1", port=port, log_path=log
    )
    assert stop_process(again.pid, again.start_ticks, grace=5)
    assert "serving token None" in tail(log)  # no token given, none passed


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
    assert marked_processes(str(log)) == []


def test_a_port_held_by_another_process_is_refused_before_starting(
    server_script, tmp_path, leftovers
):
    port = free_port()
    holder = foreign_server(server_script, port, leftovers)
    started = tmp_path / "started"
    with pytest.raises(ServerStartError) as caught:
        start_server(
            [sys.executable, "-c", f"open({str(started)!r}, 'w')"],
            host="127.0.0.1",
            port=port,
            log_path=tmp_path / "held.log",
        )
    message = str(caught.value)
    assert f"port {port} on 127.0.0.1 is held by another process (pid {holder.pid}, " in message
    assert "choose another --port or stop that process" in message
    assert not started.exists()  # nothing was started
    assert holder.poll() is None  # and the holder was left alone


def test_a_port_held_by_an_unknown_process_is_refused(
    server_script, tmp_path, leftovers, monkeypatch
):
    """The holder may be invisible (another user's process; macOS without root)."""
    port = free_port()
    foreign_server(server_script, port, leftovers)
    monkeypatch.setattr(processes, "_listeners", lambda port: [(None, "127.0.0.1")])
    with pytest.raises(ServerStartError, match=f"port {port} on 127.0.0.1 is in use") as caught:
        start_server(
            [sys.executable, "-c", "pass"], host="127.0.0.1", port=port, log_path=tmp_path / "l"
        )
    assert "choose another --port" in str(caught.value)


def test_an_answer_from_another_process_is_not_readiness(
    server_script, tmp_path, leftovers, monkeypatch
):
    """Another server takes the port between the check and the start (simulated by
    skipping the check): its 200 must not pass for the new server's."""
    port = free_port()
    holder = foreign_server(server_script, port, leftovers)
    monkeypatch.setattr(processes, "check_port_free", lambda host, port: None)
    pid_file = tmp_path / "ours.pid"
    # Probe only once ours has written its pid, so that the test knows what to look for.
    real_probe = processes.probe
    monkeypatch.setattr(processes, "probe", lambda url: pid_file.exists() and real_probe(url))
    log = tmp_path / "ours.log"
    code = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    with pytest.raises(ServerStartError) as caught:
        start_server([sys.executable, "-c", code], host="127.0.0.1", port=port, log_path=log)
    ours = int(pid_file.read_text())
    leftovers.append(ours)
    message = str(caught.value)
    assert f"another process answers on port {port} on 127.0.0.1 (pid {holder.pid}, " in message
    assert gone(ours)  # ours was stopped ...
    assert marked_processes(str(log)) == []
    assert holder.poll() is None  # ... and the other server was not


def test_killed_process_and_reused_pid_are_not_running(server_script, tmp_path):
    port = free_port()
    server = start_server(
        [sys.executable, str(server_script), str(port)],
        host="127.0.0.1",
        port=port,
        log_path=tmp_path / "s.log",
    )
    os.kill(server.pid, signal.SIGKILL)
    wait_for(lambda: not is_running(server.pid, server.start_ticks), 5)
    assert not is_running(server.pid, server.start_ticks)
    # This process is alive, but with another start time it is "someone else".
    me = os.getpid()
    ticks = process_start_ticks(me)
    assert ticks is not None
    assert ticks == int(psutil.Process(me).create_time() * 100)
    assert is_running(me, ticks)
    assert is_running(me, None)
    hour = 3600 * 100
    assert not is_running(me, ticks + hour)
    assert not is_running(me, ticks - hour)
    assert not is_running(None, ticks)


def test_a_zombie_is_not_running(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        ticks = process_start_ticks(child.pid)
        assert is_running(child.pid, ticks)
        child.kill()  # not reaped: it stays a zombie
        wait_for(lambda: psutil.Process(child.pid).status() == psutil.STATUS_ZOMBIE)
        assert psutil.Process(child.pid).status() == psutil.STATUS_ZOMBIE
        assert not is_running(child.pid, ticks)
        assert not is_running(child.pid, None)
    finally:
        child.kill()
        child.wait()
    assert not is_running(child.pid, ticks)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="an older Linux-only format")
def test_start_ticks_recorded_by_older_versions_still_match():
    """Older nbdeploy stored clock ticks since boot; such a live server must not look dead."""
    me = psutil.Process(os.getpid())
    since_boot = round((me.create_time() - psutil.boot_time()) * os.sysconf("SC_CLK_TCK"))
    assert is_running(me.pid, since_boot)
    assert not is_running(me.pid, since_boot + 3600 * os.sysconf("SC_CLK_TCK"))


def test_stop_reaches_the_whole_tree(tree_script, server_script, tmp_path, leftovers):
    port = free_port()
    log = tmp_path / "tree.log"
    pids_file = tmp_path / "pids.json"
    server = start_server(
        [sys.executable, str(tree_script), str(port), str(pids_file), str(server_script)],
        host="127.0.0.1",
        port=port,
        log_path=log,
        timeout=30,
    )
    leftovers.append(server.pid)
    wait_for(pids_file.exists)
    pids = json.loads(pids_file.read_text())
    leftovers.extend(pids.values())
    orphan = psutil.Process(pids["orphan"])
    # Out of reach of the group and the tree: another session, its parent gone.
    assert os.getsid(orphan.pid) != os.getsid(server.pid)
    assert orphan.pid not in {p.pid for p in psutil.Process(server.pid).children(recursive=True)}
    assert orphan.pid in marked_processes(str(log))

    started = time.monotonic()
    assert stop_process(server.pid, server.start_ticks, grace=1, marker=str(log))
    assert time.monotonic() - started < 10
    for pid in (server.pid, pids["child"], pids["orphan"]):
        assert gone(pid), pid
    assert marked_processes(str(log)) == []
    assert not probe(server.url + "/readyz")


def test_an_interrupt_while_waiting_leaves_nothing_behind(
    tree_script, server_script, tmp_path, leftovers, monkeypatch
):
    port = free_port()
    log = tmp_path / "interrupted.log"
    pids_file = tmp_path / "pids.json"
    calls = []

    def interrupted_probe(url: str) -> bool:
        calls.append(url)
        # The second look, once the whole tree runs, is when Ctrl-C arrives.
        if len(calls) >= 2 and pids_file.exists():
            raise KeyboardInterrupt
        return False

    monkeypatch.setattr(processes, "probe", interrupted_probe)
    monkeypatch.setattr(processes, "START_FAILURE_GRACE", 1.0)  # the child ignores SIGTERM
    try:
        with pytest.raises(KeyboardInterrupt):
            start_server(
                [sys.executable, str(tree_script), str(port), str(pids_file), str(server_script)],
                host="127.0.0.1",
                port=port,
                log_path=log,
                timeout=30,
            )
        pids = json.loads(pids_file.read_text())
        leftovers.extend(pids.values())
        for pid in pids.values():
            assert gone(pid), pid
        assert marked_processes(str(log)) == []
        assert not probe(f"http://127.0.0.1:{port}/readyz")
    finally:
        kill_marked(str(log))  # the server itself, should the test fail


def test_urls_bracket_ipv6_addresses():
    from nbdeploy.deployment.runtime.processes import http_url
    from nbdeploy.deployment.store import Deployment

    assert http_url("::1", 3000) == "http://[::1]:3000"
    assert http_url("127.0.0.1", 3000) == "http://127.0.0.1:3000"
    deployment = Deployment(
        name="x",
        host="::1",
        port=3000,
        strategy="recreate",
        status="stopped",
        live_version=None,
        created_at=0.0,
        updated_at=0.0,
    )
    assert deployment.url == "http://[::1]:3000"
