"""Start, watch and stop local server processes (one per served version).

A server runs in its own session (it outlives the notebook or command that started it),
binds to 127.0.0.1 unless told otherwise, logs to a file, and counts as ready when its
readiness URL answers 200. A process is identified by pid *and* start time, so a pid
reused by another program is never mistaken for a live server.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from nbdeploy.errors import NbdeployError

LOOPBACK = "127.0.0.1"
# Set in every server's environment (and so in its workers'): BentoML's process manager
# starts workers in sessions of their own, so a process group does not reach them.
MARKER_ENV = "NBDEPLOY_SERVER"


class ServerStartError(NbdeployError):
    """A server process exited or did not become ready in time."""

    def __init__(self, message: str, log_tail: list[str]) -> None:
        detail = "\n".join(f"    {line}" for line in log_tail)
        super().__init__(message + (f"; last log lines:\n{detail}" if detail else ""))
        self.log_tail = log_tail


@dataclass
class ServerProcess:
    pid: int
    host: str
    port: int
    log_path: Path
    started_at: float
    start_ticks: int | None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


def free_port(host: str = LOOPBACK) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def process_start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its end.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])


def is_running(pid: int | None, start_ticks: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    ticks = process_start_ticks(pid)
    if ticks is None:
        return start_ticks is None
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    if state == "Z":  # a zombie has exited
        return False
    return start_ticks is None or ticks == start_ticks


def start_server(
    command: Sequence[str],
    *,
    host: str,
    port: int,
    log_path: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    ready_path: str = "/readyz",
    timeout: float = 120.0,
    fail_markers: Sequence[str] = (),
) -> ServerProcess:
    """Start ``command`` and wait until ``ready_path`` answers 200; on failure the process is
    stopped and :class:`ServerStartError` carries its last log lines."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    environment = dict(env if env is not None else os.environ)
    environment[MARKER_ENV] = str(log_path)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            list(command),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=environment,
            cwd=cwd,
            start_new_session=True,
        )
    server = ServerProcess(
        pid=process.pid,
        host=host,
        port=port,
        log_path=log_path,
        started_at=time.time(),
        start_ticks=process_start_ticks(process.pid),
    )
    deadline = time.monotonic() + timeout
    while True:
        code = process.poll()
        if code is not None:
            raise ServerStartError(
                f"the server exited with code {code} before it was ready", tail(log_path)
            )
        if probe(server.url + ready_path):
            return server
        if fail_markers and any(m in line for line in tail(log_path, 50) for m in fail_markers):
            stop_process(process.pid, server.start_ticks, marker=str(log_path))
            raise ServerStartError("the server failed to start", tail(log_path, 30))
        if time.monotonic() > deadline:
            stop_process(process.pid, server.start_ticks, marker=str(log_path))
            raise ServerStartError(f"the server was not ready after {timeout:g} s", tail(log_path))
        time.sleep(0.1)


def probe(url: str, timeout: float = 2.0) -> bool:
    """True when ``url`` answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return bool(answer.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def marked_processes(marker: str) -> list[int]:
    """Pids of the processes whose environment carries ``MARKER_ENV=marker``."""
    needle = f"{MARKER_ENV}={marker}".encode() + b"\0"
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ + b"\0":
            found.append(int(entry.name))
    return found


def kill_marked(marker: str) -> None:
    """SIGKILL what is left of a server (workers orphaned by a dead process manager)."""
    for pid in marked_processes(marker):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
        _reap(pid)


def stop_process(
    pid: int, start_ticks: int | None, grace: float = 10.0, marker: str | None = None
) -> bool:
    """Stop a server and everything it started (its process group, and with ``marker`` its
    workers in other sessions): SIGTERM, then SIGKILL after ``grace`` seconds. Returns
    False when the server's main process was not running."""
    if not is_running(pid, start_ticks):
        _reap(pid)
        if marker:
            kill_marked(marker)
        return False
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        _reap(pid)
        if not is_running(pid, start_ticks):
            if marker:
                _wait_marked_gone(marker, deadline)
                kill_marked(marker)
            return True
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    _reap(pid)
    if marker:
        kill_marked(marker)
    return True


def _wait_marked_gone(marker: str, deadline: float) -> None:
    while marked_processes(marker) and time.monotonic() < deadline:
        time.sleep(0.05)


def _reap(pid: int) -> None:
    """Collect the exit status if the process is our child (else it is not a zombie of ours)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def tail(path: Path, lines: int = 20) -> list[str]:
    """The last ``lines`` lines of a log file (empty when there is none)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    return text.splitlines()[-lines:]
