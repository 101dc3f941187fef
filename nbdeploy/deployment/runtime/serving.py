"""Run one version's server: a leader process binds the port and keeps its workers (BentoML's
own HTTP worker, one process per ``--workers``) alive.

This is what ``bentoml serve`` does with its circus arbiter, without a second cold start:
the leader is usually forked from nbdeploy's warm launcher
(:mod:`nbdeploy.deployment.runtime.launcher`), which has BentoML's serving stack and the model's
framework imported already, so a new version answers in a fraction of a second instead of
seconds. ``python -m nbdeploy.deployment.runtime.serving SPEC_JSON`` runs the same code in a fresh
interpreter when no launcher is at hand.

The leader is the process nbdeploy records: stopping its process group stops the workers;
a worker that dies while nobody asked it to stop is started again (a crash loop ends the
server, so that status shows it failed).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

# A worker that keeps dying is not helped by more restarts: give up after this many in a
# window, so that the deployment shows failed instead of flapping.
MAX_RESTARTS = 5
RESTART_WINDOW_SECONDS = 60.0
# A worker that dies this soon after its first start never loaded its version: no retry.
STARTUP_SECONDS = 10.0
BACKLOG = 2048
PR_SET_PDEATHSIG = 1
# What the generated service reads (see nbdeploy/service/requestlog_runtime.py).
REQUEST_LOG_DIR_ENV = "NBDEPLOY_REQUEST_LOG_DIR"
REQUEST_LOG_STATS_DIR_ENV = "NBDEPLOY_REQUEST_LOG_STATS_DIR"
VERSION_ENV = "NBDEPLOY_VERSION"
# The secret the router sends (see nbdeploy/service/upstream_guard.py).
UPSTREAM_SECRET_ENV = "NBDEPLOY_UPSTREAM_SECRET"


def serve(spec: dict[str, Any]) -> NoReturn:
    """Serve ``spec`` = {"bento_tag", "host", "port", "workers", "metrics_dir"}, and
    optionally "version" (its number), "request_log_dir" (where the service logs its
    requests; none: no request log) and "request_log_stats_dir", and "upstream_secret" or
    "upstream_secret_file" (the version then answers only requests that carry it: its
    router's), until SIGTERM or SIGINT. Never returns."""
    os.umask(0o077)  # forked from the launcher too: logs, metrics, request logs owner-only
    try:
        listener = _bind(str(spec["host"]), int(spec["port"]))
    except OSError as error:
        print(f"nbdeploy: cannot listen on {spec['host']}:{spec['port']}: {error}", flush=True)
        os._exit(3)
    metrics = Path(spec["metrics_dir"])
    metrics.mkdir(parents=True, exist_ok=True)
    # Each server its own directory: BentoML's default is shared by every server of a
    # BentoML home and emptied by each start.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics)
    _set_environment(REQUEST_LOG_DIR_ENV, spec.get("request_log_dir"))
    _set_environment(
        REQUEST_LOG_STATS_DIR_ENV, spec.get("request_log_stats_dir") or spec.get("request_log_dir")
    )
    _set_environment(VERSION_ENV, spec.get("version"))
    # From a file by preference: a fresh interpreter gets the spec on its command line,
    # which every local user can read (ps). Unreadable: no start, rather than an open one.
    secret = spec.get("upstream_secret")
    try:
        if not secret and spec.get("upstream_secret_file"):
            secret = Path(spec["upstream_secret_file"]).read_text(encoding="utf-8").strip()
    except OSError as error:
        print(f"nbdeploy: cannot read the upstream secret: {error}", flush=True)
        os._exit(3)
    _set_environment(UPSTREAM_SECRET_ENV, secret)
    _Leader(listener, spec).run()


def _set_environment(name: str, value: Any) -> None:
    """The spec decides, whatever the caller's environment said."""
    if value is None or value == "":
        os.environ.pop(name, None)
    else:
        os.environ[name] = str(value)


class _Leader:
    def __init__(self, listener: socket.socket, spec: dict[str, Any]) -> None:
        self.listener = listener
        self.spec = spec
        self.workers: dict[int, int] = {}  # pid -> worker index (1-based, as circus counts)
        self.stopping = False
        self.restarts: list[float] = []
        self.spawned: dict[int, float] = {}  # worker index -> when it was last started
        self.restarted: set[int] = set()

    def run(self) -> NoReturn:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        for index in range(1, max(1, int(self.spec.get("workers") or 1)) + 1):
            self._spawn(index)
        while self.workers:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            index = self.workers.pop(pid, 0)
            if not index or self.stopping:
                continue
            print(f"nbdeploy: worker {index} {_ended(status)}", flush=True)
            if (
                os.WIFEXITED(status)
                and time.monotonic() - self.spawned[index] < STARTUP_SECONDS
                and index not in self.restarted
            ):
                # It gave up on its own while starting: a version that cannot load is not
                # helped by retries (a worker killed by a signal, or later, is restarted).
                print("nbdeploy: the worker failed while starting; stopping the server", flush=True)
                self._stop(signal.SIGTERM, None)
                continue
            self.restarted.add(index)
            if not self._may_restart():
                print("nbdeploy: workers keep dying; stopping the server", flush=True)
                self._stop(signal.SIGTERM, None)
                continue
            print(f"nbdeploy: restarting worker {index}", flush=True)
            self._spawn(index)
        os._exit(0 if self.stopping else 1)

    def _spawn(self, index: int) -> None:
        self.spawned[index] = time.monotonic()
        leader = os.getpid()
        pid = os.fork()
        if pid == 0:
            _die_with(leader)
            _worker(self.listener, self.spec, index)
        self.workers[pid] = index

    def _may_restart(self) -> bool:
        now = time.monotonic()
        self.restarts = [t for t in self.restarts if now - t < RESTART_WINDOW_SECONDS] + [now]
        return len(self.restarts) <= MAX_RESTARTS

    def _stop(self, signum: int, _frame: Any) -> None:
        self.stopping = True
        for pid in self.workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)


def _die_with(leader: int) -> None:
    """A worker ends when its leader does, however the leader ends (kill -9 included): an
    orphaned worker would keep answering on the version's port, where a restarted version
    must listen (Linux; elsewhere stopping the server finds workers by their marker)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != leader:  # it ended before we asked
        os._exit(1)


def _worker(listener: socket.socket, spec: dict[str, Any], index: int) -> NoReturn:
    """BentoML's HTTP worker on the leader's socket (the code ``bentoml serve`` runs in
    each of its workers)."""
    code = 0
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        from _bentoml_impl.worker.service import main

        main(
            [
                str(spec["bento_tag"]),
                "--fd",
                str(listener.fileno()),
                "--worker-id",
                str(index),
                "--backlog",
                str(BACKLOG),
            ],
            standalone_mode=False,
        )
    except BaseException as error:  # the log is where a failing worker explains itself
        import traceback

        traceback.print_exc()
        code = 2 if not isinstance(error, SystemExit) else int(error.code or 0)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host.strip("[]"), port))
    listener.listen(BACKLOG)
    listener.set_inheritable(True)
    return listener


def _ended(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"was killed by signal {os.WTERMSIG(status)}"
    return f"exited with code {os.waitstatus_to_exitcode(status)}"


def spawner(spec: dict[str, Any], cwd: Path, log_path: Path) -> Any:
    """A spawner for :func:`nbdeploy.deployment.runtime.processes.start_server`: the server forked
    from the warm launcher (started when it is not running), else in a fresh interpreter."""
    from nbdeploy.deployment.runtime import launcher
    from nbdeploy.deployment.runtime.processes import AdoptedProcess, popen_logged

    def spawn(environment: dict[str, str]) -> Any:
        running = launcher.ensure()
        if running is not None:
            try:
                return AdoptedProcess(running.serve(spec, environment, cwd, log_path))
            except KeyboardInterrupt:
                _stop_unanswered(log_path)
                raise
            except launcher.LauncherError as error:
                with open(log_path, "a", encoding="utf-8") as log:
                    log.write(f"nbdeploy: the launcher could not start the server ({error})\n")
        return popen_logged(
            [sys.executable, "-m", "nbdeploy.deployment.runtime.serving", json.dumps(spec)],
            environment,
            cwd,
            log_path,
        )

    return spawn


def _stop_unanswered(log_path: Path) -> None:
    """Interrupted while the launcher forked the server: stop it by the pid it wrote."""
    from nbdeploy.deployment.runtime.processes import stop_process

    pid_file = log_path.with_suffix(".pid")
    deadline = time.monotonic() + 2.0
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        pid, start_ticks = (int(word) for word in pid_file.read_text(encoding="utf-8").split())
    except (OSError, ValueError):
        return
    stop_process(pid, start_ticks, grace=0)  # the start time: never a process that reused it


def main() -> None:
    os.umask(0o077)  # what the server writes under NBDEPLOY_HOME is owner-only (issue 17)
    from nbdeploy.deployment.runtime.launcher import drop_working_directory_from_path

    drop_working_directory_from_path()
    serve(json.loads(sys.argv[1]))


if __name__ == "__main__":
    main()
