"""Start, watch and stop local server processes (one per served version).

A server runs in its own session (it outlives the notebook or command that started it),
binds to 127.0.0.1 unless told otherwise, logs to a file, and counts as ready when its
readiness URL answers 200 *and* a process it started holds the listening socket, so a
stranger already answering on the port is never taken for the new server. A server is
started here (an argument list) or by a spawner, such as nbdeploy's launcher, which forks it
and hands over its pid: such an adopted process is watched, never waited for.

Everything process-related goes through psutil, so this works on Linux and macOS. A
process is identified by pid *and* creation time (see :func:`process_start_ticks`), so a
pid reused by another program is never mistaken for a live server. Stopping a server
stops its whole tree: its process group, its descendants, and every process whose
environment carries its marker (BentoML starts workers in sessions of their own).
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import psutil

from nbdeploy.errors import NbdeployError
from nbdeploy.private_files import create_private, open_private, private_dir

LOOPBACK = "127.0.0.1"
# Set in every server's environment (and so in its workers'): BentoML's process manager
# starts workers in sessions of their own, so a process group does not reach them.
MARKER_ENV = "NBDEPLOY_SERVER"
# Passed through to the server when the caller gives a token; the generated service may
# serve it so that a caller can tell its own server from any other.
TOKEN_ENV = "NBDEPLOY_START_TOKEN"
# Creation times are wall-clock based: Linux derives them from the boot time, which moves
# by whole seconds as the clock is corrected (NTP, suspend). A few seconds of slack keeps
# a live server from looking dead; a pid reused within seconds of the same start needs
# the whole pid space to wrap in that time.
START_TOLERANCE = 5.0
# A server that never became ready has no requests to finish: stop it sooner.
START_FAILURE_GRACE = 5.0
_HINT = "choose another --port or stop that process"
_GONE = (psutil.NoSuchProcess, psutil.AccessDenied)  # ZombieProcess is a NoSuchProcess
_WILDCARDS = frozenset({"", "0.0.0.0", "::"})


class ServerStartError(NbdeployError):
    """A server process exited, did not become ready in time, or could not have its port."""

    def __init__(self, message: str, log_tail: list[str], hint: str | None = None) -> None:
        detail = "\n".join(f"    {line}" for line in log_tail)
        super().__init__(message + (f"; last log lines:\n{detail}" if detail else ""), hint)
        self.log_tail = log_tail


class StartCancelled(ServerStartError):
    """The caller of a start went away: the server it was starting is stopped."""


@dataclass
class ServerProcess:
    """A started server. ``start_ticks`` is :func:`process_start_ticks` of ``pid``."""

    pid: int
    host: str
    port: int
    log_path: Path
    started_at: float
    start_ticks: int | None

    @property
    def url(self) -> str:
        return http_url(self.host, self.port)


def http_url(host: str, port: int) -> str:
    """``http://HOST:PORT``, with an IPv6 address in brackets (``http://[::1]:3000``)."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def free_port(host: str = LOOPBACK) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def process_start_ticks(pid: int) -> int | None:
    """The process's creation time in hundredths of a second since the epoch
    (``int(psutil create_time * 100)``), or None when there is no such process.

    An integer so that it fits the servers table's integer column; with the pid it
    identifies a process (see :func:`is_running`)."""
    try:
        return int(psutil.Process(pid).create_time() * 100)
    except _GONE:
        return None


def _same_start(create_time: float, start_ticks: int) -> bool:
    recorded = start_ticks / 100
    boot = psutil.boot_time()
    if recorded < boot / 2:
        # Recorded by an older nbdeploy as Linux clock ticks since boot: a live server
        # started before an upgrade must not look dead (and have its workers killed).
        recorded = boot + start_ticks / os.sysconf("SC_CLK_TCK")
    return abs(create_time - recorded) <= START_TOLERANCE


def _identified(pid: int | None, start_ticks: int | None) -> psutil.Process | None:
    """The live process ``pid`` if it is the one that started at ``start_ticks`` (any
    process with that pid when ``start_ticks`` is None); None for a zombie, a pid now
    used by another process, or one we may not inspect (then it is not ours)."""
    if not pid:
        return None
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:  # it has exited
            return None
        if start_ticks is not None and not _same_start(process.create_time(), start_ticks):
            return None
    except _GONE:
        return None
    return process


def is_running(pid: int | None, start_ticks: int | None) -> bool:
    """True when ``pid`` is alive (not a zombie) and is the process that started at
    ``start_ticks`` (from :func:`process_start_ticks`; None accepts any process)."""
    return _identified(pid, start_ticks) is not None


class Spawned(Protocol):
    """A started server process: a :class:`subprocess.Popen`, or an :class:`AdoptedProcess`."""

    pid: int

    def poll(self) -> int | None: ...


class AdoptedProcess:
    """A process that another process started for us (nbdeploy's launcher forks servers):
    it cannot be waited for, only watched."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.start_ticks = process_start_ticks(pid)

    def poll(self) -> int | None:
        """None while it runs; -1 once it is gone (its exit code went to its parent)."""
        return None if is_running(self.pid, self.start_ticks) else -1


Spawner = Callable[[dict[str, str]], Spawned]


def start_server(
    command: Sequence[str] | Spawner,
    *,
    host: str,
    port: int,
    log_path: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    ready_path: str = "/readyz",
    timeout: float = 120.0,
    fail_markers: Sequence[str] = (),
    token: str | None = None,
    listener: socket.socket | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> ServerProcess:
    """Start ``command`` (an argument list run in a session of its own, or a spawner given
    the environment) and wait until ``ready_path`` answers 200 from a process it started;
    on failure (or an interrupt) everything it started is stopped and
    :class:`ServerStartError` carries its last log lines.

    Raises ServerStartError before starting anything when ``port`` is already in use on
    ``host``, unless ``listener`` (a socket bound there by the caller) is given: it is
    passed to the server, which serves on it. ``token``, when given, is passed to the server
    as ``NBDEPLOY_START_TOKEN``. ``cancelled`` is asked while waiting: when it says so, the
    server is stopped and :class:`StartCancelled` raised."""
    if listener is None:
        check_port_free(host, port)
    # Owner-only before anything appends to it (a launcher's fork, a fresh interpreter).
    create_private(private_dir(log_path.parent) / log_path.name)
    marker = str(log_path)
    environment = dict(env if env is not None else os.environ)
    environment[MARKER_ENV] = marker
    if token is None:
        environment.pop(TOKEN_ENV, None)  # never let a server inherit another's token
    else:
        environment[TOKEN_ENV] = token
    if callable(command):
        process = command(environment)
    else:
        inherited = (listener.fileno(),) if listener is not None else ()
        process = popen_logged(command, environment, cwd, log_path, inherited)
    start_ticks: int | None = None
    try:
        start_ticks = process_start_ticks(process.pid)
        server = ServerProcess(
            pid=process.pid,
            host=host,
            port=port,
            log_path=log_path,
            started_at=time.time(),
            start_ticks=start_ticks,
        )
        failure = _wait_until_ready(
            process, server, ready_path, timeout, fail_markers, cancelled or _never
        )
    except BaseException:
        # Ctrl-C (or anything else) while waiting must not leave an untracked server
        # holding the port: nobody would know to stop it.
        _stop_started(process, start_ticks, marker)
        raise
    if failure is None:
        return server
    message, lines, hint = failure
    _stop_started(process, start_ticks, marker)
    # Read the log after stopping: a failing server's last words are the useful ones.
    raise ServerStartError(message, tail(log_path, lines), hint)


def popen_logged(
    command: Sequence[str],
    environment: dict[str, str],
    cwd: Path | None,
    log_path: Path,
    inherited: Sequence[int] = (),
) -> subprocess.Popen[bytes]:
    """Start ``command`` in a session of its own, its output appended to ``log_path``,
    with the descriptors ``inherited``."""
    with open_private(log_path, "ab") as log:
        return subprocess.Popen(
            list(command),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=environment,
            cwd=cwd,
            start_new_session=True,
            pass_fds=tuple(inherited),
        )


def _never() -> bool:
    return False


_Failure = tuple[str, int, str | None]  # message, log lines to show, hint


def _exited(code: int) -> str:
    if code == -1:
        return "the server exited before it was ready"
    return f"the server exited with code {code} before it was ready"


def _wait_until_ready(
    process: Spawned,
    server: ServerProcess,
    ready_path: str,
    timeout: float,
    fail_markers: Sequence[str],
    cancelled: Callable[[], bool],
) -> _Failure | None:
    deadline = time.monotonic() + timeout
    while True:
        if cancelled():
            raise StartCancelled("the start was cancelled: its caller was interrupted", [])
        code = process.poll()
        if code is not None:
            return _exited(code), 20, None
        if probe(server.url + ready_path):
            stranger = _answered_by_stranger(server)
            code = process.poll()  # a server that died after answering explains it better
            if code is not None:
                return _exited(code), 20, None
            return stranger
        if fail_markers and any(
            m in line for line in tail(server.log_path, 50) for m in fail_markers
        ):
            return "the server failed to start", 30, None
        if time.monotonic() > deadline:
            return f"the server was not ready after {timeout:g} s", 20, None
        time.sleep(0.1)


def _answered_by_stranger(server: ServerProcess) -> _Failure | None:
    """None when a process of the started tree listens on the server's port; else why the
    answer must have come from another process."""
    root = _identified(server.pid, server.start_ticks)
    checked: set[int] = set()
    denied: set[int] = set()

    def listening(processes: Iterable[psutil.Process]) -> bool:
        for process in processes:
            if process.pid in checked:
                continue
            checked.add(process.pid)
            try:
                connections = process.net_connections(kind="inet")
            except psutil.AccessDenied:
                denied.add(process.pid)
                continue
            except psutil.NoSuchProcess:
                continue
            if any(_listens_on(c, server.port) for c in connections):
                return True
        return False

    # The process manager itself usually holds the socket: look at it (and its
    # descendants) before scanning every process for the marker.
    if root is not None and listening([root, *_children(root)]):
        return None
    if listening(_server_tree(root, str(server.log_path))):
        return None
    listeners = _listeners(server.port)
    if any(pid in denied for pid, _ in listeners):
        return None  # the system-wide table shows what a process would not tell
    addresses = _addresses(server.host, server.port)
    strangers = [
        pid for pid, ip in listeners if pid and pid not in checked and _covers(ip, addresses)
    ]
    holder = f" ({_describe(strangers[0])})" if strangers else ""
    return (
        f"another process answers on port {server.port} on {server.host}{holder}, not the "
        "server just started (which was stopped)",
        20,
        _HINT,
    )


def _stop_started(process: Spawned, start_ticks: int | None, marker: str) -> None:
    try:
        stop_process(process.pid, start_ticks, grace=START_FAILURE_GRACE, marker=marker)
    except KeyboardInterrupt:
        # Interrupted again while stopping: skip the grace period, but still stop it all.
        stop_process(process.pid, start_ticks, grace=0, marker=marker)
        raise
    finally:
        process.poll()  # lets Popen know it is gone (stop_process may have reaped it)


def probe(url: str, timeout: float = 2.0) -> bool:
    """True when ``url`` answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return bool(answer.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


# -- whose port is it --------------------------------------------------------------------
def check_port_free(host: str, port: int) -> None:
    """Raise ServerStartError when something already listens on ``port`` on ``host``.

    Binding (with SO_REUSEADDR, as servers bind, so a closed server's TIME_WAIT does not
    count) catches every listener on Linux; connecting also catches a wildcard listener
    that macOS lets a specific bind share."""
    if not port or not (_bind_refused(host, port) or _accepts(host, port)):
        return
    addresses = _addresses(host, port)
    holders = [pid for pid, ip in _listeners(port) if pid and _covers(ip, addresses)]
    if holders:
        raise ServerStartError(
            f"port {port} on {host} is held by another process ({_describe(holders[0])})",
            [],
            _HINT,
        )
    raise ServerStartError(f"port {port} on {host} is in use", [], _HINT)


def _bind_refused(host: str, port: int) -> bool:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, IndexError):
        return False  # the server will report an unusable host itself
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as error:
            return error.errno == errno.EADDRINUSE
    return False


def _accepts(host: str, port: int) -> bool:
    target = {"": LOOPBACK, "0.0.0.0": LOOPBACK, "::": "::1"}.get(host, host)
    try:
        with socket.create_connection((target, port), timeout=0.5):
            return True
    except OSError:
        return False


def _addresses(host: str, port: int) -> set[str]:
    try:
        return {str(info[4][0]) for info in socket.getaddrinfo(host, port)} | {host}
    except socket.gaierror:
        return {host}


def _covers(listen_ip: str, addresses: set[str]) -> bool:
    """Whether a socket listening on ``listen_ip`` takes connections to ``addresses``."""
    ip = listen_ip.removeprefix("::ffff:")  # IPv4-mapped
    return ip in _WILDCARDS or ip in addresses or bool(addresses & _WILDCARDS)


def _listens_on(connection: Any, port: int) -> bool:
    return bool(
        connection.status == psutil.CONN_LISTEN
        and connection.laddr
        and connection.laddr.port == port
    )


def _listeners(port: int) -> list[tuple[int | None, str]]:
    """(pid, address) of every visible socket listening on ``port``; the pid is None
    when the owner is another user's process."""
    try:
        return [
            (c.pid, c.laddr.ip) for c in psutil.net_connections(kind="inet") if _listens_on(c, port)
        ]
    except psutil.AccessDenied:
        pass  # macOS wants root for the system-wide table: ask each process we may inspect
    found: list[tuple[int | None, str]] = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            found.extend(
                (process.pid, c.laddr.ip)
                for c in process.net_connections(kind="inet")
                if _listens_on(c, port)
            )
    return found


def _describe(pid: int) -> str:
    try:
        return f"pid {pid}, {psutil.Process(pid).name()}"
    except psutil.Error:
        return f"pid {pid}"


# -- finding and stopping a server's processes ---------------------------------------------
def _scan(group: int | None, marker: str | None) -> list[psutil.Process]:
    """Processes in process group ``group`` or whose environment has MARKER_ENV=marker."""
    found = []
    me = os.getpid()
    for process in psutil.process_iter():
        if process.pid == me:
            continue
        try:
            in_group = group is not None and os.getpgid(process.pid) == group
            if in_group or (marker is not None and process.environ().get(MARKER_ENV) == marker):
                found.append(process)
        except (psutil.Error, OSError):
            continue  # gone, a zombie, or another user's
    return found


def marked_processes(marker: str) -> list[int]:
    """Pids of the processes whose environment carries ``MARKER_ENV=marker``."""
    return [process.pid for process in _scan(None, marker)]


def _server_tree(root: psutil.Process | None, marker: str | None) -> list[psutil.Process]:
    """``root`` (when it runs), its descendants, its process group, and the processes
    carrying ``marker``: each once."""
    found: dict[int, psutil.Process] = {}
    if root is not None:
        found[root.pid] = root
        found.update((child.pid, child) for child in _children(root))
    if root is not None or marker is not None:
        group = root.pid if root is not None else None
        for process in _scan(group, marker):
            found.setdefault(process.pid, process)
    found.pop(os.getpid(), None)
    return list(found.values())


def _children(process: psutil.Process) -> list[psutil.Process]:
    try:
        return list(process.children(recursive=True))
    except psutil.Error:
        return []


def _signal(processes: Iterable[psutil.Process], root: psutil.Process | None, sig: int) -> None:
    if root is not None and root.is_running():
        # The group as a whole too: it also reaches what forks between scan and signal.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(root.pid, sig)
    for process in processes:
        # psutil checks the pid still names the same process before signalling it.
        with contextlib.suppress(psutil.Error):
            process.send_signal(sig)


def _alive(process: psutil.Process) -> bool:
    try:
        if process.status() == psutil.STATUS_ZOMBIE:
            _reap(process.pid)
            return False
        return bool(process.is_running())
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return bool(process.is_running())


def _wait_gone(processes: list[psutil.Process], deadline: float) -> list[psutil.Process]:
    """Wait until ``processes`` have exited (zombies count as exited; ours are reaped) or
    ``deadline`` passes; the ones still alive."""
    while True:
        alive = [process for process in processes if _alive(process)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.05)


def kill_marked(marker: str) -> None:
    """SIGKILL what is left of a server (workers orphaned by a dead process manager)."""
    processes = _scan(None, marker)
    _signal(processes, None, signal.SIGKILL)
    _wait_gone(processes, time.monotonic() + 2.0)


def stop_process(
    pid: int, start_ticks: int | None, grace: float = 10.0, marker: str | None = None
) -> bool:
    """Stop a server and everything it started (its process group, its descendants, and
    with ``marker`` its workers in other sessions): SIGTERM, then SIGKILL after ``grace``
    seconds. Returns False when the server's main process was not running."""
    root = _identified(pid, start_ticks)
    was_running = root is not None
    if root is None:
        _reap(pid)  # our own child that already exited
    processes = _server_tree(root, marker)
    if not processes:
        return was_running
    _signal(processes, root, signal.SIGTERM)
    alive = _wait_gone(processes, time.monotonic() + grace)
    if root is not None and not _alive(root):
        root = None  # its pid (and group id) may now be someone else's
    # Look again: a process manager may have started workers while it was told to stop.
    known = {process.pid for process in alive}
    alive += [p for p in _server_tree(root, marker) if p.pid not in known and _alive(p)]
    if alive:
        _signal(alive, root, signal.SIGKILL)
        _wait_gone(alive, time.monotonic() + 5.0)
    return was_running


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
