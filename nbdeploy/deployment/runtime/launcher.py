"""nbdeploy's warm launcher: one process per NBDEPLOY_HOME that has BentoML's serving stack
(and the model frameworks the notebook uses) imported, and forks what a deploy needs:
version servers, bento builds and example calls.

A cold start of any of these spends seconds importing the same packages; forked from the
launcher, a new version answers a fraction of a second after its bento is built, and
servers share the imported code's memory. ``%load_ext nbdeploy`` starts it in the
background; a deploy starts it when it is not running. It lives in a session of its own (a
kernel restart does not stop it, nor the servers it forked), exits after
``NBDEPLOY_LAUNCHER_IDLE`` seconds without requests (default 1800), and is never required:
with ``NBDEPLOY_LAUNCHER=0``, on platforms without ``fork``, or when it cannot start, the same
work runs in fresh interpreters.

It listens on a Unix socket in a private folder (mode 0700, and the peer's user id is
checked where the platform tells it), and only works on folders inside NBDEPLOY_HOME.
Requests are one JSON line each; a forked child answers its own request on the connection
it inherits.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import gc
import hashlib
import importlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NoReturn

from nbdeploy import config

DISABLE_ENV = "NBDEPLOY_LAUNCHER"
IDLE_ENV = "NBDEPLOY_LAUNCHER_IDLE"
DEFAULT_IDLE_SECONDS = 1800.0
START_TIMEOUT_SECONDS = 60.0
# What every version server, build and probe imports: BentoML's serving stack and
# nbdeploy's own runtime.
BASE_PRELOAD = (
    "bentoml",
    "_bentoml_sdk",
    "_bentoml_impl.loader",
    "_bentoml_impl.server.app",
    "_bentoml_impl.worker.service",
    "bentoml._internal.cloud.client",
    "uvicorn",
    "cloudpickle",
    "numpy",
    "nbdeploy.deployment.runtime.serving",
    "nbdeploy.service.builder",
    "nbdeploy.service.probe",
    "nbdeploy.service.runtime",
)
# Frameworks worth importing ahead of a deploy when the notebook has imported them, with the
# BentoML savers their builds use.
FRAMEWORKS = {
    "sklearn": "bentoml.sklearn",
    "lightgbm": "bentoml.lightgbm",
    "xgboost": "bentoml.xgboost",
    "catboost": "bentoml.catboost",
    "pandas": None,
    "scipy": None,
    "statsmodels": None,
}
_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_UNSAFE_FILE = "launcher-unsafe.json"  # modules whose import started threads
SOCKET = "launcher.sock"


class LauncherError(RuntimeError):
    """The launcher did not answer as expected: the caller falls back to a fresh process."""


# -- the client side ---------------------------------------------------------------------
def enabled() -> bool:
    return os.environ.get(DISABLE_ENV, "1") not in ("0", "false", "no", "off") and hasattr(
        os, "fork"
    )


def socket_path(home: Path | None = None) -> Path:
    """``NBDEPLOY_HOME/run/launcher.sock``: in the home's private folder, which no other
    user can create first (see :mod:`nbdeploy.deployment.runtime.channel`)."""
    from nbdeploy.deployment.runtime import channel

    return channel.run_dir((home or config.home()).resolve()) / SOCKET


def running_pid(home: Path | None = None) -> int | None:
    """The pid of the launcher of ``home`` when one answers."""
    try:
        return int(Launcher(socket_path(home)).ping(2.0).get("pid") or 0) or None
    except (LauncherError, ValueError):
        return None


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """What the launcher's forks run: this interpreter and nbdeploy's code as installed now.
    A launcher started before an upgrade (or an edit of a development install) is replaced."""
    package = Path(__file__).resolve().parents[2]  # nbdeploy/
    stamps = sorted(
        f"{path.relative_to(package)}:{path.stat().st_mtime_ns}" for path in package.rglob("*.py")
    )
    return hashlib.sha256("\n".join([sys.executable, *stamps]).encode()).hexdigest()[:16]


def framework_modules(modules: Iterable[str] | None = None) -> list[str]:
    """The imported modules (by default the caller's) of the frameworks worth preloading,
    and the BentoML savers for them."""
    names = list(sys.modules if modules is None else modules)
    wanted: set[str] = set()
    for name in names:
        top = name.split(".")[0]
        if top in FRAMEWORKS and ".tests" not in name and not name.split(".")[-1].startswith("_"):
            wanted.add(name)
            saver = FRAMEWORKS[top]
            if saver:
                wanted.add(saver)
    return sorted(wanted)


class Launcher:
    """A connection factory for the running launcher of a NBDEPLOY_HOME."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def request(self, message: dict[str, Any], timeout: float | None = 30.0) -> dict[str, Any]:
        """Send one request and read its one-line answer."""
        from nbdeploy.deployment.runtime import channel

        try:
            # Checked to be ours at both ends before anything is sent: a request may carry
            # the caller's whole environment.
            with channel.connect(self.path, timeout or 3600.0) as connection:
                connection.sendall(json.dumps(message).encode() + b"\n")
                answer = _read_line(connection)
        except (OSError, channel.ChannelError) as error:
            raise LauncherError(f"the launcher did not answer: {error}") from error
        if answer is None:
            raise LauncherError("the launcher closed the connection without an answer")
        reply: dict[str, Any] = json.loads(answer)
        return reply

    def ping(self, timeout: float = 5.0) -> dict[str, Any]:
        return self.request({"op": "ping"}, timeout)

    def preload(self, modules: Iterable[str]) -> bool:
        """Ask for imports ahead of need, without waiting for them: False when the
        launcher could not be reached."""
        wanted = sorted(set(modules))
        if not wanted:
            return True
        from nbdeploy.deployment.runtime import channel

        message = json.dumps({"op": "preload", "modules": wanted}).encode() + b"\n"
        try:
            with channel.connect(self.path, 5.0) as connection:
                connection.sendall(message)
        except (OSError, channel.ChannelError):
            return False
        return True

    def serve(self, spec: dict[str, Any], env: dict[str, str], cwd: Path, log_path: Path) -> int:
        """Fork a version server (:func:`nbdeploy.deployment.runtime.serving.serve`): its pid."""
        answer = self.request(
            {"op": "serve", "spec": spec, "env": env, "cwd": str(cwd), "log": str(log_path)}
        )
        if not answer.get("ok"):
            raise LauncherError(str(answer.get("error")))
        return int(answer["pid"])

    def run(
        self, task: str, directory: Path, env: dict[str, str], timeout: float
    ) -> dict[str, Any]:
        """Fork ``task`` ("build" or "probe") on a version folder and wait for its answer."""
        answer = self.request(
            {"op": task, "directory": str(directory), "env": env, "cwd": str(directory)},
            timeout,
        )
        if "launcher_error" in answer:
            raise LauncherError(str(answer["launcher_error"]))
        return answer

    def stop(self) -> None:
        with contextlib.suppress(LauncherError):
            self.request({"op": "stop"}, 5.0)


def running(home: Path | None = None, timeout: float = 20.0) -> Launcher | None:
    """The launcher of ``home`` when it answers and can fork, else None."""
    launcher = Launcher(socket_path(home))
    if not launcher.path.exists():
        return None
    try:
        answer = launcher.ping(timeout)
    except (LauncherError, ValueError):
        return None
    if answer.get("code") != code_fingerprint():
        launcher.stop()  # runs other code than this process: a fresh one takes its place
        return None
    return launcher if answer.get("fork") else None


def start(preload: Iterable[str] = ()) -> subprocess.Popen[bytes] | None:
    """Start this NBDEPLOY_HOME's launcher in the background (it exits at once when one is
    running already); None when launchers are disabled or the daemon started it.

    The daemon starts it, so that the servers it forks become the daemon's children; this
    process starts it itself only when it is the daemon."""
    if not enabled():
        return None
    from nbdeploy.deployment.runtime import client

    if not client.in_daemon():
        client.ask_daemon("launcher", {"preload": sorted(set(preload))})
        return None
    from nbdeploy.private_files import open_private
    from nbdeploy.service.builder import bentoml_environment

    home = config.home()
    home.mkdir(parents=True, exist_ok=True)
    with open_private(home / "launcher.log", "ab") as log:  # owner-only (issue 17)
        return subprocess.Popen(
            [sys.executable, "-m", "nbdeploy.deployment.runtime.launcher", *sorted(set(preload))],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **bentoml_environment(), config.HOME_ENV: str(home)},
            cwd=home,
            start_new_session=True,
        )


def ensure(preload: Iterable[str] = (), timeout: float = START_TIMEOUT_SECONDS) -> Launcher | None:
    """The running launcher (asked to preload ``preload``), started and waited for when there
    is none; None when disabled or it could not start."""
    if not enabled():
        return None
    wanted = list(preload)
    launcher = running()
    if launcher is None:
        process = start(wanted)
        deadline = time.monotonic() + timeout
        while launcher is None and time.monotonic() < deadline:
            time.sleep(0.05)
            launcher = running()
            if launcher is None and process is not None and process.poll() is not None:
                process = None  # lost the race to another launcher, or failed: keep looking
                if not socket_path().exists():
                    return None
        if process is not None and process.poll() is None:
            threading.Thread(target=process.wait, daemon=True).start()  # no zombie
    if launcher is not None:
        launcher.preload(wanted)
    return launcher


def shutdown(home: Path | None = None, timeout: float = 10.0) -> None:
    """Stop the launcher of ``home`` and wait until it is gone (servers it started keep
    running)."""
    launcher = Launcher(socket_path(home))
    if not launcher.path.exists():
        return
    try:
        pid = int(launcher.ping().get("pid", 0))
    except (LauncherError, ValueError):
        pid = 0
    launcher.stop()
    deadline = time.monotonic() + timeout
    while pid and time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        except PermissionError:
            return
        if _is_zombie(pid):
            return
        time.sleep(0.02)


def _is_zombie(pid: int) -> bool:
    import psutil

    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return True


# -- the launcher process ----------------------------------------------------------------
class _Server:
    def __init__(self, home: Path, listener: socket.socket, lock: int) -> None:
        self.home = home
        self.listener = listener
        self.lock = lock  # children must not inherit it: it would outlive the launcher
        self.preloaded: list[str] = []
        self.failed: dict[str, str] = {}
        self.idle = float(os.environ.get(IDLE_ENV) or DEFAULT_IDLE_SECONDS)
        self.unsafe = set(_read_unsafe(home))

    def preload(self, modules: Iterable[str]) -> None:
        for name in modules:
            if name in self.preloaded or name in self.failed or name in self.unsafe:
                continue
            if not _MODULE_NAME.match(name) or not _installed(name.split(".")[0]):
                self.failed[name] = "not a module of an installed distribution"
                continue
            try:
                importlib.import_module(name)
            except BaseException as error:  # a preload is an optimisation, never a failure
                self.failed[name] = f"{type(error).__name__}: {error}"
                continue
            if not _single_threaded():
                # Forking a process with threads is unsafe: remember the module, make way
                # for a fresh launcher without it.
                _write_unsafe(self.home, self.unsafe | {name})
                print(f"nbdeploy launcher: importing {name} started threads; exiting", flush=True)
                self.close()
                os._exit(0)
            self.preloaded.append(name)

    def serve_forever(self) -> None:
        last = time.monotonic()
        self.listener.settimeout(5.0)
        while True:
            try:
                connection, _ = self.listener.accept()
            except TimeoutError:
                if time.monotonic() - last > self.idle or not self.home.is_dir():
                    return
                continue
            last = time.monotonic()
            with connection:
                if not _same_user(connection):
                    continue
                self._handle(connection)

    def _handle(self, connection: socket.socket) -> None:
        connection.settimeout(30.0)
        try:
            line = _read_line(connection)
            request = json.loads(line) if line else {}
        except (OSError, ValueError):
            return
        op = request.get("op")
        if op == "ping":
            _answer(
                connection,
                {
                    "ok": True,
                    "pid": os.getpid(),
                    "code": code_fingerprint(),
                    "fork": _single_threaded(),
                    "preloaded": self.preloaded,
                    "failed": self.failed,
                },
            )
        elif op == "preload":
            self.preload(str(m) for m in request.get("modules", []))
            _answer(connection, {"ok": True, "preloaded": self.preloaded})
        elif op == "stop":
            _answer(connection, {"ok": True})
            self.close()
            os._exit(0)
        elif op in ("serve", "build", "probe"):
            problem = self._refuse(request)
            if problem:
                _answer(connection, {"ok": False, "launcher_error": problem, "error": problem})
                return
            # What the launcher imported never changes: out of the collector's sight, so
            # forked servers neither pause to scan it nor copy its pages by touching them.
            gc.freeze()
            if os.fork() == 0:
                self.listener.close()
                os.close(self.lock)
                if request["op"] == "serve" and os.fork() != 0:
                    # A server leaves this process at once: it becomes the child of the
                    # daemon (a child subreaper), which waits for it and restarts it.
                    os._exit(0)
                _child(connection, request)
        else:
            _answer(connection, {"ok": False, "error": f"unknown request {op!r}"})

    def _refuse(self, request: dict[str, Any]) -> str | None:
        if not _single_threaded():
            return "the launcher has threads and cannot fork safely"
        for key in ("cwd", "directory", "log"):
            if key in request and not _inside(Path(str(request[key])), self.home):
                return f"{key} {request[key]!r} is outside NBDEPLOY_HOME"
        if not isinstance(request.get("env"), dict):
            return "no environment given"
        return None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.listener.getsockname())
        self.listener.close()


def _child(connection: socket.socket, request: dict[str, Any]) -> NoReturn:
    """In the forked child: become a process of its own and do the request's work."""
    code = 0
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the launcher ignores it; we wait
        os.setsid()
        os.environ.clear()
        os.environ.update({str(k): str(v) for k, v in request["env"].items()})
        os.chdir(request["cwd"])
        if request["op"] == "serve":
            log_path = Path(request["log"])
            # Where a caller interrupted before our answer finds whom to stop.
            from nbdeploy.deployment.runtime.processes import process_start_ticks

            started = process_start_ticks(os.getpid())
            log_path.with_suffix(".pid").write_text(f"{os.getpid()} {started}", encoding="utf-8")
            _redirect(log_path)
            _answer(connection, {"ok": True, "pid": os.getpid()})
            connection.close()
            from nbdeploy.deployment.runtime.serving import serve

            serve(request["spec"])
        _redirect(None)
        directory = Path(request["directory"])
        if request["op"] == "build":
            from nbdeploy.service.builder import build_task

            _answer(connection, build_task(directory))
        else:
            from nbdeploy.service.probe import probe_version

            _answer(connection, {"ok": True, **probe_version(directory)})
    except BaseException as error:
        code = 1
        with contextlib.suppress(OSError):
            _answer(connection, {"ok": False, "error": f"{type(error).__name__}: {error}"})
    os._exit(code)


def _redirect(log_path: Path | None) -> None:
    """Standard input from /dev/null; output to ``log_path`` (appended) or /dev/null."""
    null = os.open(os.devnull, os.O_RDWR)
    out = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644) if log_path else null
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)


def _answer(connection: socket.socket, message: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):
        connection.sendall(json.dumps(message, default=str).encode() + b"\n")


def _read_line(connection: socket.socket, limit: int = 1 << 20) -> str | None:
    chunks = bytearray()
    while b"\n" not in chunks:
        chunk = connection.recv(65536)
        if not chunk:
            return None
        chunks += chunk
        if len(chunks) > limit:
            raise ValueError("request too long")
    return chunks.split(b"\n", 1)[0].decode()


def _same_user(connection: socket.socket) -> bool:
    from nbdeploy.deployment.runtime import channel

    return channel.same_user(connection)


def _single_threaded() -> bool:
    """No Python threads besides the main one. Native thread pools that start at import
    (OpenBLAS, under numpy) re-create themselves in a forked child (pthread_atfork), as
    every prefork server that preloads numpy relies on; the launcher imports, it never
    computes, so no OpenMP pool exists in it."""
    return threading.active_count() == 1


def _installed(top: str) -> bool:
    from nbdeploy.service.requirements import installed_top_levels

    return top in installed_top_levels() or top in ("_bentoml_sdk", "_bentoml_impl", "nbdeploy")


def _inside(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root.resolve())


def _read_unsafe(home: Path) -> list[str]:
    try:
        return list(json.loads((home / _UNSAFE_FILE).read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return []


def _write_unsafe(home: Path, names: set[str]) -> None:
    with contextlib.suppress(OSError):
        (home / _UNSAFE_FILE).write_text(json.dumps(sorted(names)), encoding="utf-8")


def drop_working_directory_from_path() -> None:
    """``python -m`` puts the working directory first on ``sys.path``: a module in the
    folder of whoever started the process (a notebook's folder) must never be what a
    version imports; versions carry their own modules."""
    here = os.getcwd()
    sys.path[:] = [entry for entry in sys.path if entry not in ("", ".", here)]


def _listen(path: Path) -> socket.socket:
    from nbdeploy.deployment.runtime import channel

    return channel.listen(path, 64)


def main() -> None:
    """``python -m nbdeploy.deployment.runtime.launcher [MODULE...]``: serve until idle."""
    os.umask(0o077)  # it and all it forks write owner-only files (issue 17)
    drop_working_directory_from_path()
    home = config.home()
    home.mkdir(parents=True, exist_ok=True)
    lock = os.open(home / "launcher.lock", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held for the process's life
    except OSError:
        return  # another launcher serves this home
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # forked children are reaped by the system
    server = _Server(home, _listen(socket_path(home)), lock)
    try:
        server.preload([*BASE_PRELOAD, *sys.argv[1:]])
        server.serve_forever()
    finally:
        server.close()


if __name__ == "__main__":
    main()
