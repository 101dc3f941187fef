"""The daemon: one process per NBDEPLOY_HOME that owns everything nbdeploy keeps running.

It is the parent of the deployments' routers and version servers (forked by its warm
launcher, which it starts as a child of its own, and handed to it as a child subreaper),
writes the deployments' state, and keeps what runs in line with what is wanted (see
:mod:`nbdeploy.deployment.runtime.supervision`): a router or version that dies is started
again, with backoff and a crash-loop limit whose reason ``nbdeploy status`` shows.

The faces (CLI, magic, Python API, REST) are its clients over ``NBDEPLOY_HOME/run/
daemon.sock`` (see :mod:`nbdeploy.deployment.runtime.channel`). A request that changes a
deployment runs in that deployment's queue, one at a time and in the order they came, and
the client sees its progress as it happens; a client that goes away (Ctrl-C) cancels its
request, and the daemon undoes what it had started unless the switch already happened.

If the daemon dies, what it started keeps serving; the next client starts a new one, which
adopts the survivors (pid and start time from the state store) and brings back what died,
as after a reboot.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nbdeploy import config
from nbdeploy.deployment.runtime import channel
from nbdeploy.errors import NbdeployError

SOCKET = "daemon.sock"
LOCK = "daemon.lock"
LOG = "daemon.log"
IDLE_ENV = "NBDEPLOY_DAEMON_IDLE"
DEFAULT_IDLE_SECONDS = 1800.0
CANCEL = b"cancel"
PR_SET_CHILD_SUBREAPER = 36
KEPT_OUTCOMES = 256  # jobs whose outcome a client that lost its connection can still ask for
OUTCOME_WAIT_LIMIT_SECONDS = 120.0

Operation = Callable[["Job"], dict[str, Any]]


@dataclass
class Job:
    """One request that changes a deployment."""

    op: str
    name: str
    args: dict[str, Any]
    notify: Callable[[str], None]
    id: str = ""
    cancel: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    answer: dict[str, Any] = field(default_factory=dict)

    def cancelled(self) -> bool:
        return self.cancel.is_set()


class DeploymentQueue:
    """Runs one deployment's jobs one at a time, in the order they were accepted."""

    def __init__(self, name: str, run: Callable[[Job], dict[str, Any]]) -> None:
        self.name = name
        self.jobs: queue.Queue[Job] = queue.Queue()
        self.run = run
        self.busy = False
        self.thread = threading.Thread(target=self._loop, name=f"queue-{name}", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> Job:
        self.jobs.put(job)
        return job

    def _loop(self) -> None:
        while True:
            job = self.jobs.get()
            self.busy = True
            try:
                job.answer = self.run(job)
            finally:
                self.busy = False
                job.done.set()


class Daemon:
    def __init__(self, home: Path, listener: socket.socket) -> None:
        from nbdeploy.deployment.runtime.supervision import Supervisor

        self.home = home
        self.listener = listener
        self.started_at = time.time()
        self.queues: dict[str, DeploymentQueue] = {}
        self.queues_lock = threading.Lock()
        self.jobs_by_id: OrderedDict[str, Job] = OrderedDict()
        self.last_request = time.monotonic()
        self.idle = float(os.environ.get(IDLE_ENV) or DEFAULT_IDLE_SECONDS)
        self.stopping = threading.Event()
        self.supervisor = Supervisor(self)
        from nbdeploy.schedule.runner import Scheduler

        self.scheduler = Scheduler(self)  # schedules: nbdeploy.schedule

    # -- jobs --------------------------------------------------------------------------
    def queue_of(self, name: str) -> DeploymentQueue:
        with self.queues_lock:
            found = self.queues.get(name)
            if found is None:
                found = self.queues[name] = DeploymentQueue(name, self.execute)
            return found

    def submit(
        self, op: str, name: str, args: dict[str, Any], notify: Any = None, job_id: str = ""
    ) -> Job:
        job = Job(op, name, args, notify or _ignore, job_id)
        if job_id:
            with self.queues_lock:
                self.jobs_by_id[job_id] = job
                while len(self.jobs_by_id) > KEPT_OUTCOMES:
                    self.jobs_by_id.popitem(last=False)
        return self.queue_of(name).submit(job)

    def outcome(self, request: dict[str, Any]) -> dict[str, Any]:
        """The answer of the job a client named (it lost the connection that would have
        carried it: an interrupt while the answer was on its way), waiting for the job to
        end for at most ``wait`` seconds."""
        with self.queues_lock:
            job = self.jobs_by_id.get(str(request.get("job") or ""))
        if job is None:
            return {"ok": True, "known": False}
        wait = min(float(request.get("wait") or 0.0), OUTCOME_WAIT_LIMIT_SECONDS)
        if not job.done.wait(max(wait, 0.0)):
            return {"ok": True, "known": True, "done": False}
        return {"ok": True, "known": True, "done": True, "answer": job.answer}

    def execute(self, job: Job) -> dict[str, Any]:
        from nbdeploy.deployment.runtime.operations import OPERATIONS

        return answered(lambda: {"ok": True, "result": OPERATIONS[job.op](self, job)})

    # -- connections -------------------------------------------------------------------
    def serve_forever(self) -> None:
        self.listener.settimeout(1.0)
        while not self.stopping.is_set():
            try:
                connection, _ = self.listener.accept()
            except TimeoutError:
                if self._idle_over():
                    print("nbdeploy daemon: idle and nothing to supervise; exiting", flush=True)
                    return
                continue
            self.last_request = time.monotonic()
            if not channel.same_user(connection):
                connection.close()
                continue
            threading.Thread(target=self._handle, args=(connection,), daemon=True).start()

    def _idle_over(self) -> bool:
        if self.idle <= 0:  # run by a service manager: never idle out
            return False
        if time.monotonic() - self.last_request < self.idle:
            return False
        if self.scheduler.has_work():
            return False
        return not self.supervisor.has_work() and not any(q.busy for q in self.queues.values())

    def _handle(self, connection: socket.socket) -> None:
        with connection:
            connection.settimeout(30.0)
            reader = channel.LineReader(connection)
            try:
                request = reader.message() or {}
            except (OSError, channel.ChannelError):
                return
            op = str(request.get("op"))
            try:
                if op in _QUERIES:
                    _reply(connection, answered(lambda: _QUERIES[op](self, request)))
                elif op == "shutdown":
                    _reply(connection, {"ok": True, "pid": os.getpid()})
                    self.stopping.set()
                else:
                    self._run_job(connection, reader, op, request)
            except OSError:
                return

    def _run_job(
        self, connection: socket.socket, reader: channel.LineReader, op: str, request: dict
    ) -> None:
        from nbdeploy.deployment.runtime.operations import OPERATIONS

        name = request.get("name")
        if op not in OPERATIONS or not isinstance(name, str) or not name:
            _reply(connection, {"ok": False, "error": f"unknown request {op!r}", "exit_code": 2})
            return
        sending = threading.Lock()

        def notify(message: str) -> None:
            with sending, contextlib.suppress(OSError):
                channel.send(connection, {"notify": message})

        job_id = str(request.get("job") or "")
        job = self.submit(op, name, dict(request.get("args") or {}), notify, job_id)
        connection.settimeout(0.2)
        gone = False
        while not job.done.is_set():
            if gone:
                job.done.wait(1.0)
                continue
            try:
                line = reader.line()
            except TimeoutError:
                continue
            except OSError:
                line = None
            if line is None or line.strip() == CANCEL:
                job.cancel.set()  # the client was interrupted, or went away
                gone = line is None
        with sending, contextlib.suppress(OSError):
            channel.send(connection, {**job.answer, "cancelled": job.cancelled()})

    # -- life --------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        return {
            "ok": True,
            "pid": os.getpid(),
            "started_at": self.started_at,
            "uptime_s": round(time.time() - self.started_at, 1),
            "socket": str(self.home / channel.RUN_DIR / SOCKET),
            "code": _code(),
            "children": self.supervisor.describe(),
            "queues": {name: q.jobs.qsize() + int(q.busy) for name, q in self.queues.items()},
        }

    def close(self) -> None:
        self.scheduler.stop()  # fires in progress run on and record their own end
        self.supervisor.stop()
        with contextlib.suppress(OSError):
            os.unlink(self.home / channel.RUN_DIR / SOCKET)
        self.listener.close()


def _ignore(message: str) -> None:
    pass


def _code() -> str:
    from nbdeploy.deployment.runtime.launcher import code_fingerprint

    return code_fingerprint()


def answered(work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``work``'s answer, or its error as the client rebuilds it (class, message, hint)."""
    try:
        return work()
    except NbdeployError as error:
        return {
            "ok": False,
            "error": error.message,
            "hint": error.hint,
            "type": type(error).__name__,
            "exit_code": error.exit_code,
        }
    except Exception as error:  # the daemon lives on; the client hears why
        traceback.print_exc()
        return {"ok": False, "error": f"{type(error).__name__}: {error}", "exit_code": 1}


def _reply(connection: socket.socket, message: dict[str, Any]) -> None:
    channel.send(connection, message)


def record(request: dict[str, Any]) -> dict[str, Any]:
    """Write what a client made (the daemon is the store's only writer): a new version's row
    (and its deployment's, the first time), the MLflow model version it was registered as,
    the end of a version whose build was pruned, or of a deployment deleted. Answered at
    once, outside the deployment's queue: the client holds the deployment's lock while it
    builds, and a queued rollout may be waiting for that lock."""
    from nbdeploy.deployment.store import DeploymentStore, Version
    from nbdeploy.store import default_store

    deployments = DeploymentStore(default_store())
    if request.get("kind") == "version":
        version = Version(**request["version"])
        if deployments.find(version.deployment) is None:  # created with its first version
            deployments.ensure(version.deployment, str(request["host"]), int(request["port"]))
        return {"ok": True, "version": deployments.add_version(version).version}
    if request.get("kind") == "pruned_version":
        deployments.delete_version(str(request["deployment"]), int(request["version"]))
        return {"ok": True}
    if request.get("kind") == "deleted_deployment":
        deployments.delete_deployment(str(request["deployment"]))
        return {"ok": True}
    if request.get("kind") == "mlflow_version":
        name, number = str(request["deployment"]), int(request["version"])
        deployments.set_mlflow_version(name, number, str(request["mlflow_version"]))
        return {"ok": True}
    return {"ok": False, "error": f"nothing to record as {request.get('kind')!r}", "exit_code": 2}


def _start_launcher(daemon: Daemon, request: dict[str, Any]) -> dict[str, Any]:
    """Start the warm launcher as our child (a client asked: it builds or preloads)."""
    from nbdeploy.deployment.runtime import launcher

    modules = [str(m) for m in request.get("preload") or []]
    process = launcher.start(modules)
    if process is not None:
        daemon.supervisor.adopt_launcher(process)
    return {"ok": True}


_QUERIES: dict[str, Callable[[Daemon, dict[str, Any]], dict[str, Any]]] = {
    "ping": lambda daemon, request: {
        "ok": True,
        "pid": os.getpid(),
        "code": _code(),
        "started_at": daemon.started_at,
    },
    "status": lambda daemon, request: daemon.status(),
    "launcher": _start_launcher,
    "record": lambda daemon, request: record(request),
    "outcome": lambda daemon, request: daemon.outcome(request),
    "schedule": lambda daemon, request: daemon.scheduler.handle(request),
}


def become_subreaper() -> bool:
    """Orphans of our descendants (servers forked by the launcher) become our children, so
    that we wait on them (Linux); elsewhere they are watched by pid and start time."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def lock_path(home: Path) -> Path:
    return channel.run_dir(home) / LOCK


def main() -> None:
    """``python -m nbdeploy.deployment.runtime.daemon``: serve until idle or told to stop."""
    from nbdeploy.deployment.runtime.launcher import drop_working_directory_from_path

    drop_working_directory_from_path()
    from nbdeploy.deployment.runtime.client import IN_DAEMON_ENV
    from nbdeploy.private_files import restrict_umask

    restrict_umask()
    os.environ[IN_DAEMON_ENV] = str(os.getpid())
    home = config.home()
    os.chdir(home)
    lock = os.open(lock_path(home), os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held for the process's life
    except OSError:
        return  # another daemon owns this home
    os.set_inheritable(lock, False)
    become_subreaper()
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    listener = channel.listen(channel.run_dir(home) / SOCKET)
    daemon = Daemon(home, listener)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: daemon.stopping.set())
    print(f"nbdeploy daemon: pid {os.getpid()} for {home}", flush=True)
    try:
        daemon.supervisor.start()
        daemon.scheduler.start()
        daemon.serve_forever()
    finally:
        daemon.close()
        print("nbdeploy daemon: stopped (what it started keeps running)", flush=True)


def start_process(home: Path) -> subprocess.Popen[bytes]:
    """Start the daemon of ``home`` in a session of its own (it exits at once when one runs)."""
    from nbdeploy.private_files import open_private
    from nbdeploy.service.builder import bentoml_environment

    with open_private(channel.run_dir(home) / LOG, "ab") as handle:
        return subprocess.Popen(
            [sys.executable, "-m", "nbdeploy.deployment.runtime.daemon"],
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            env={**os.environ, **bentoml_environment(), config.HOME_ENV: str(home)},
            cwd=home,
            start_new_session=True,
        )


if __name__ == "__main__":
    main()
