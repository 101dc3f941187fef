"""The faces' side of the daemon: start it when it is not running, send it a request, and
tell the truth when the caller is interrupted.

A request that changes a deployment streams the daemon's progress messages to ``notify``
and ends with the daemon's answer. Ctrl-C (or a kernel interrupt) while it runs sends
``cancel`` and waits, bounded, for the daemon's last word: either the change was undone
and what served before still serves, or it had already happened; the error raised says
which, so the command's report, status and the answering version agree.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nbdeploy import config
from nbdeploy.deployment.runtime import channel
from nbdeploy.deployment.runtime.daemon import CANCEL, SOCKET, start_process
from nbdeploy.errors import NbdeployError

START_TIMEOUT_SECONDS = 60.0
CANCEL_WAIT_SECONDS = 60.0
REQUEST_TIMEOUT_SECONDS = 3600.0
DISABLE_ENV = "NBDEPLOY_DAEMON"
IN_DAEMON_ENV = "NBDEPLOY_IN_DAEMON"
_started = threading.Lock()


class DaemonError(NbdeployError):
    """The daemon could not be started or reached."""

    exit_code = 1


class Interrupted(NbdeployError):
    """The caller was interrupted; the message says what state that left, and
    ``took_effect`` whether the request happened all the same."""

    exit_code = 130

    def __init__(self, message: str, answer: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.took_effect = bool(answer and answer.get("ok"))


def socket_path(home: Path | None = None) -> Path:
    return (home or config.home()) / channel.RUN_DIR / SOCKET


def in_daemon() -> bool:
    return os.environ.get(IN_DAEMON_ENV) == str(os.getpid())


def ping(home: Path | None = None, timeout: float = 5.0) -> dict[str, Any] | None:
    """The daemon's answer to ping, or None when none answers."""
    try:
        return query("ping", home, timeout)
    except (DaemonError, channel.ChannelError, OSError):
        return None


def home_of(store: Any) -> Path | None:
    """The NBDEPLOY_HOME a state store belongs to (its folder); None for the default."""
    return Path(store.path).parent if store is not None else None


def ask_daemon(op: str, fields: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
    """Ask the daemon (started when none runs) a question that changes no deployment."""
    ensure()
    return query(op, None, timeout, fields)


def record(kind: str, fields: dict[str, Any], home: Path | None = None) -> dict[str, Any]:
    """Have the daemon (the store's only writer) record what this process made: a new
    version (``kind`` "version"), its MLflow model version ("mlflow_version"), a version
    it pruned ("pruned_version"), or a deployment it deleted ("deleted_deployment")."""
    if in_daemon():  # the daemon itself (a rollback records the registry's version)
        from nbdeploy.deployment.runtime.daemon import record as record_here

        answer = record_here({**fields, "kind": kind})
    else:
        ensure(home)
        answer = query("record", home, REQUEST_TIMEOUT_SECONDS, {**fields, "kind": kind})
    if not answer.get("ok"):
        raise rebuild_error(answer)
    return answer


def query(
    op: str,
    home: Path | None = None,
    timeout: float = 5.0,
    fields: dict[str, Any] | None = None,
) -> dict[str, Any]:
    path = socket_path(home)
    try:
        with channel.connect(path, timeout) as connection:
            channel.send(connection, {**(fields or {}), "op": op})
            answer = channel.LineReader(connection).message()
    except FileNotFoundError as error:
        raise DaemonError("no daemon runs for this NBDEPLOY_HOME") from error
    except OSError as error:
        raise DaemonError(f"the daemon did not answer: {error}") from error
    if answer is None:
        raise DaemonError("the daemon closed the connection without an answer")
    return answer


def ensure(home: Path | None = None, timeout: float = START_TIMEOUT_SECONDS) -> dict[str, Any]:
    """The running daemon's ping answer; a daemon is started and waited for when none
    answers (or when it runs other code than this process: an upgrade)."""
    home = home or config.home()
    answer = ping(home)
    if answer is not None and answer.get("code") == _code():
        return answer
    with _started:
        if answer is not None:
            shutdown(home)
        answer = ping(home)
        if answer is not None:
            return answer
        process = start_process(home)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            answer = ping(home, 2.0)
            if answer is not None:
                threading.Thread(target=process.wait, daemon=True).start()  # no zombie
                return answer
            if process.poll() is not None and not socket_path(home).exists():
                # Lost the race to another client's daemon, which has not listened yet.
                process = start_process(home)
            time.sleep(0.02)
    log = channel.run_dir(home) / "daemon.log"
    raise DaemonError(
        f"the nbdeploy daemon did not start within {timeout:g} s",
        f"its log is {log}",
    )


def shutdown(home: Path | None = None, timeout: float = 10.0) -> bool:
    """Ask the daemon to exit (what it started keeps running) and wait until it has; False
    when none was running."""
    try:
        answer = query("shutdown", home, 5.0)
    except (DaemonError, channel.ChannelError):
        return False
    pid = int(answer.get("pid") or 0)
    deadline = time.monotonic() + timeout
    while pid and time.monotonic() < deadline and _alive(pid):
        time.sleep(0.02)
    return True


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _code() -> str:
    from nbdeploy.deployment.runtime.launcher import code_fingerprint

    return code_fingerprint()


def call(
    op: str,
    name: str,
    args: dict[str, Any] | None = None,
    notify: Callable[[str], None] | None = None,
    timeout: float = REQUEST_TIMEOUT_SECONDS,
    home: Path | None = None,
) -> dict[str, Any]:
    """Run ``op`` on deployment ``name`` in the daemon of ``home`` (default: this process's
    NBDEPLOY_HOME): its result; raises the daemon's error as an :class:`NbdeployError` (its
    message and hint), :class:`Interrupted` when interrupted."""
    import secrets

    ensure(home)
    tell = notify or (lambda message: None)
    job = secrets.token_hex(8)
    with channel.connect(socket_path(home), 10.0) as connection:
        channel.send(connection, {"op": op, "name": name, "args": args or {}, "job": job})
        reader = channel.LineReader(connection)
        try:
            answer = _answer(connection, reader, tell, time.monotonic() + timeout)
        except KeyboardInterrupt:
            last = _cancel(connection, reader, tell)
            if last is None:
                last = _outcome_of(job, home)
            raise Interrupted(_interrupted(op, name, last), last) from None
    return _result(answer)


def _answer(
    connection: socket.socket,
    reader: channel.LineReader,
    notify: Callable[[str], None],
    deadline: float,
) -> dict[str, Any]:
    connection.settimeout(1.0)
    while True:
        try:
            message = reader.message()
        except TimeoutError:
            if time.monotonic() > deadline:
                raise DaemonError("the daemon did not finish the request in time") from None
            continue
        if message is None:
            raise DaemonError(
                "the daemon went away during the request",
                "nbdeploy daemon logs shows why; nbdeploy status shows what serves",
            )
        if "notify" in message:
            notify(str(message["notify"]))
            continue
        return message


def _cancel(
    connection: socket.socket, reader: channel.LineReader, notify: Callable[[str], None]
) -> dict[str, Any] | None:
    """Ask the daemon to cancel, and wait for its last word (a second interrupt gives up
    waiting; the daemon finishes either way)."""
    with contextlib.suppress(OSError):
        connection.sendall(CANCEL + b"\n")
    try:
        return _answer(connection, reader, notify, time.monotonic() + CANCEL_WAIT_SECONDS)
    except (KeyboardInterrupt, NbdeployError, OSError):
        return None


def _outcome_of(job: str, home: Path | None) -> dict[str, Any] | None:
    """The job's answer asked for on a new connection: the interrupt may have struck while
    the answer was being read, and the daemon, done, has closed the first one."""
    try:
        found = query(
            "outcome", home, CANCEL_WAIT_SECONDS + 5, {"job": job, "wait": CANCEL_WAIT_SECONDS}
        )
    except (KeyboardInterrupt, NbdeployError, OSError):
        return None
    answer = found.get("answer")
    return answer if isinstance(answer, dict) else None


def _interrupted(op: str, name: str, answer: dict[str, Any] | None) -> str:
    verb = {"switch": "deploy"}.get(op, op)
    if answer is None:
        return (
            f"the {verb} of {name} was interrupted; the daemon finishes or undoes it: "
            f"nbdeploy status {name} shows what serves"
        )
    if answer.get("ok"):
        result = answer.get("result") or {}
        live = result.get("live_version")
        now = f"v{live} serves" if live else "it took effect"
        return f"the {verb} of {name} was interrupted too late to undo: {now}"
    return f"the {verb} of {name} was interrupted and undone: {answer.get('error')}"


def _result(answer: dict[str, Any]) -> dict[str, Any]:
    if answer.get("ok"):
        result: dict[str, Any] = answer.get("result") or {}
        return result
    raise rebuild_error(answer)


def rebuild_error(answer: dict[str, Any]) -> NbdeployError:
    """The daemon's error as the class it was raised as (callers catch DeployError,
    DeploymentNotFoundError, ...), with its message, hint and exit code."""
    kind = _error_classes().get(str(answer.get("type")), NbdeployError)
    error = kind.__new__(kind)
    NbdeployError.__init__(error, str(answer.get("error")), answer.get("hint"))
    error.exit_code = int(answer.get("exit_code") or 1)
    return error


def _error_classes() -> dict[str, type[NbdeployError]]:
    from nbdeploy.deployment.runtime.locks import DeploymentBusyError
    from nbdeploy.deployment.runtime.processes import ServerStartError
    from nbdeploy.deployment.store import DeploymentNotFoundError
    from nbdeploy.deployment.traffic import RouterError
    from nbdeploy.deployment.traffic.strategies import RolloutError
    from nbdeploy.errors import DeployError
    from nbdeploy.schedule.spec import ScheduleError, ScheduleNotFoundError

    classes: list[type[NbdeployError]] = [
        DeployError,
        ScheduleError,
        ScheduleNotFoundError,
        DeploymentBusyError,
        DeploymentNotFoundError,
        RolloutError,
        RouterError,
        ServerStartError,
    ]
    return {kind.__name__: kind for kind in classes}
