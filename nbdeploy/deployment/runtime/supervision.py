"""How the daemon keeps what runs in line with what is wanted: the reconcile loop.

What is wanted is in the state store: a deployment whose status is ``serving`` wants its
router on its address and its live version behind it. What runs is watched every tenth of
a second (pid and start time; the daemon's own children are waited for, so their exit
status gives the cause). When something died, a *heal* job goes into the deployment's
queue (so it never races a deploy or a stop of the same name) and:

- a dead router is started again on the same address; the daemon holds the listening
  socket and hands it to each router it starts, so that while one restarts, connections
  wait in the socket's backlog instead of being refused;
- a dead live version or candidate is started again on the same port (the router
  meanwhile fails over to a warm standby, or retries); a candidate that keeps dying ends
  its canary or experiment, and the live version keeps all the traffic;
- restarts back off (0, 0.5, 1, 2, 4, 8 s) and stop after ``MAX_RESTARTS`` in
  ``RESTART_WINDOW_SECONDS``: the deployment then shows ``failed`` with the reason and
  the process's last log lines, and an event tells every restart and its cause.

The same heal runs for every serving deployment when a daemon starts, which adopts the
processes that survived its predecessor and brings back what died (after a reboot: all).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nbdeploy.deployment.runtime.daemon import Daemon, Job
    from nbdeploy.deployment.store import DeploymentStore, Server

POLL_SECONDS = 0.1
PROBE_SECONDS = 5.0  # how often each router and version is asked whether it answers
PROBE_TIMEOUT_SECONDS = 5.0
HUNG_AFTER = 3  # unanswered probes in a row: the process is hung, and is killed
EXIT_STATUS_WAIT_SECONDS = 0.5
MAX_RESTARTS = 5
RESTART_WINDOW_SECONDS = 120.0
BACKOFF_SECONDS = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)
HEAL = "heal"


class Supervisor:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="supervisor", daemon=True)
        self.prober = threading.Thread(target=self._probe_loop, name="prober", daemon=True)
        self.unanswered: dict[int, int] = {}  # server id -> probes unanswered in a row
        self.pending: set[str] = set()  # deployments with a heal job queued
        self.pending_lock = threading.Lock()
        self.exits: dict[int, int] = {}  # pid -> wait status, of children we reaped
        self.restarts: dict[str, list[float]] = {}  # "NAME:router" / "NAME:v3" -> times
        self.listeners: dict[str, socket.socket] = {}  # deployment -> its router's socket
        self.listeners_lock = threading.Lock()
        self.launcher: subprocess.Popen[bytes] | None = None

    # -- life --------------------------------------------------------------------------
    def start(self) -> None:
        from nbdeploy.deployment import traffic
        from nbdeploy.deployment.runtime import launcher

        traffic.listener_for = self.listener_for
        traffic.release_listener = self.release_listener
        launcher.shutdown(self.daemon.home)  # one we did not start: ours takes its place
        for name in self._serving():
            self.request_heal(name)  # adopt the survivors, bring back the rest
        self.thread.start()
        self.prober.start()

    def stop(self) -> None:
        """Stop watching; the launcher (a child that serves only the daemon's starts) goes
        too, what it started keeps running."""
        from nbdeploy.deployment.runtime import launcher

        self.stopped.set()
        if self.launcher is not None and self.launcher.poll() is None:
            launcher.shutdown(self.daemon.home)

    def adopt_launcher(self, process: subprocess.Popen[bytes]) -> None:
        self.launcher = process

    def has_work(self) -> bool:
        return bool(self._serving())

    def _loop(self) -> None:
        while not self.stopped.wait(POLL_SECONDS):
            try:
                self._reap()
                for name in self._with_dead_servers():
                    self.request_heal(name)
            except Exception as error:  # the loop must outlive any one bad turn
                print(f"nbdeploy daemon: supervision: {type(error).__name__}: {error}", flush=True)

    def _probe_loop(self) -> None:
        """A process that runs but no longer answers (a deadlock, a stuck event loop) is
        killed after ``HUNG_AFTER`` probes in a row went unanswered; the reconcile loop then
        restarts it like any process that died."""
        while not self.stopped.wait(PROBE_SECONDS):
            try:
                self._probe_all()
            except Exception as error:
                print(f"nbdeploy daemon: probing: {type(error).__name__}: {error}", flush=True)

    def _probe_all(self) -> None:
        from nbdeploy.deployment.runtime.processes import is_running, probe
        from nbdeploy.deployment.store import ROUTER, SERVING
        from nbdeploy.deployment.traffic.router import LIVE_PATH

        deployments = self._deployments()
        serving = {d.name for d in deployments.all() if d.status == SERVING}
        seen: set[int] = set()
        for name, servers in deployments._active_servers_by_deployment().items():
            for server in servers:
                if name not in serving or not server.pid or server.container:
                    continue
                seen.add(server.id)
                path = LIVE_PATH if server.role == ROUTER else "/livez"
                if probe(server.url + path, PROBE_TIMEOUT_SECONDS):
                    self.unanswered.pop(server.id, None)
                    continue
                if not is_running(server.pid, server.start_ticks):
                    continue  # dead, not hung: the reconcile loop has it
                count = self.unanswered[server.id] = self.unanswered.get(server.id, 0) + 1
                if count >= HUNG_AFTER:
                    self._kill_hung(deployments, name, server)
        for gone in set(self.unanswered) - seen:
            del self.unanswered[gone]

    def _kill_hung(self, deployments: DeploymentStore, name: str, server: Server) -> None:
        from nbdeploy.deployment.runtime.processes import stop_process

        waited = HUNG_AFTER * PROBE_SECONDS
        print(f"nbdeploy daemon: {name}: {_what(server)} hung; killing it", flush=True)
        deployments.add_event(
            name, "hung", process=_what(server), cause=f"no answer for {waited:g} s"
        )
        stop_process(server.pid or 0, server.start_ticks, grace=0, marker=server.log_path)
        self.unanswered.pop(server.id, None)

    def _reap(self) -> None:
        """Collect the exit status of children that ended (servers handed to us as orphans
        included): the cause a restart reports."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.exits[pid] = status
            if len(self.exits) > 4096:
                self.exits.pop(next(iter(self.exits)))

    def _exit_status(self, pid: int) -> int | None:
        """The exit status of ``pid`` when it was our child. The loop reaps children now and
        then; a death seen between two reapings is waited for here (briefly: a killed child
        is a zombie at once), so the cause is its signal or code, not "gone"."""
        self._reap()
        deadline = time.monotonic() + EXIT_STATUS_WAIT_SECONDS
        while pid > 0 and pid not in self.exits and time.monotonic() < deadline:
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # not our child, or reaped by the loop meanwhile
                break
            if done:
                self.exits[pid] = status
                break
            time.sleep(0.02)
        return self.exits.get(pid)

    def request_heal(self, name: str) -> None:
        with self.pending_lock:
            if name in self.pending:
                return
            self.pending.add(name)
        self.daemon.submit(HEAL, name, {})

    def healed(self, name: str) -> None:
        with self.pending_lock:
            self.pending.discard(name)

    # -- what the store says -------------------------------------------------------------
    def _deployments(self) -> DeploymentStore:
        from nbdeploy.deployment.store import DeploymentStore
        from nbdeploy.store import default_store

        return DeploymentStore(default_store())

    def _serving(self) -> list[str]:
        from nbdeploy.deployment.store import SERVING

        return [d.name for d in self._deployments().all() if d.status == SERVING]

    def _with_dead_servers(self) -> set[str]:
        from nbdeploy.deployment.runtime.processes import is_running

        grouped = self._deployments()._active_servers_by_deployment()
        return {
            name
            for name, servers in grouped.items()
            for server in servers
            if server.pid
            and not server.container
            and not is_running(server.pid, server.start_ticks)
        }

    def describe(self) -> list[dict[str, Any]]:
        """What the daemon supervises: each process with its deployment and role."""
        from nbdeploy.deployment.runtime import launcher
        from nbdeploy.deployment.traffic.strategies import canary

        found: list[dict[str, Any]] = []
        running = launcher.running_pid(self.daemon.home)
        if running:
            found.append({"kind": "launcher", "pid": running})
        for name in canary.running_controllers():  # threads of the daemon
            plan = canary.read_plan(name)
            found.append(
                {
                    "kind": "canary",
                    "deployment": name,
                    "version": plan.version if plan else None,
                    "pid": os.getpid(),
                    "thread": True,
                }
            )
        for name, servers in self._deployments()._active_servers_by_deployment().items():
            for server in servers:
                found.append(
                    {
                        "kind": "router" if server.role == "router" else "version",
                        "role": server.role,
                        "deployment": name,
                        "version": server.version or None,
                        "pid": server.pid,
                        "port": server.port,
                        "restarts": len(self.restarts.get(_slot(name, server), [])),
                    }
                )
        return found

    # -- the routers' sockets ------------------------------------------------------------
    def listener_for(self, name: str, host: str, port: int) -> socket.socket:
        """The listening socket of ``name``'s router at host:port: the one held, else bound
        now (OSError when the address is taken)."""
        with self.listeners_lock:
            held = self.listeners.get(name)
            if held is not None:
                address = held.getsockname()
                if (address[0], address[1]) == (host.strip("[]"), port):
                    return held
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            listener = socket.socket(family, socket.SOCK_STREAM)
            try:
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                listener.bind((host.strip("[]"), port))
                listener.listen(2048)
            except OSError:
                listener.close()
                raise
            if held is not None:
                self.listeners[f"{name}@moving"] = held  # released when the old one stops
            self.listeners[name] = listener
            return listener

    def release_listener(self, name: str, host: str, port: int) -> None:
        """Close the socket held for ``name``'s router at host:port (it was stopped)."""
        with self.listeners_lock:
            for key in (name, f"{name}@moving"):
                held = self.listeners.get(key)
                if held is None:
                    continue
                address = held.getsockname()
                if (address[0], address[1]) == (host.strip("[]"), port):
                    held.close()
                    del self.listeners[key]

    # -- healing -------------------------------------------------------------------------
    def heal(self, job: Job) -> dict[str, Any]:
        """Mark what died, and bring back what the deployment wants serving."""
        from nbdeploy.deployment.runtime.locks import deployment_lock
        from nbdeploy.deployment.store import SERVING
        from nbdeploy.deployment.traffic.strategies import canary

        self.healed(job.name)
        deployments = self._deployments()
        if deployments.find(job.name) is None:
            return {}
        dead = self._dead(deployments, job.name)
        outcome: dict[str, Any] = {}
        if dead:
            with deployment_lock(job.name):
                outcome = self._bring_back(deployments, job.name, dead)
        if deployments.get(job.name).status == SERVING:
            canary.resume_controllers([job.name])  # a canary a dead daemon left running
        return outcome

    def _dead(self, deployments: DeploymentStore, name: str) -> list[Server]:
        from nbdeploy.deployment.runtime.processes import is_running

        return [
            s
            for s in deployments.active_servers(name)
            if s.pid and not s.container and not is_running(s.pid, s.start_ticks)
        ]

    def _bring_back(
        self, deployments: DeploymentStore, name: str, dead: list[Server]
    ) -> dict[str, Any]:
        from nbdeploy.deployment.runtime.processes import kill_marked
        from nbdeploy.deployment.store import FAILED, ROUTER, SERVING, STANDBY, STOPPED

        for server in dead:
            cause = self.cause(server)
            kill_marked(server.log_path)  # workers a dead process manager left behind
            expired = server.role == STANDBY  # the router retires a standby after its time
            deployments.end_server(server.id, STOPPED if expired else FAILED, cause)
            if not expired:
                deployments.add_event(
                    name, "died", process=_what(server), cause=cause.splitlines()[0]
                )
        deployment = deployments.get(name)
        if deployment.status != SERVING:
            return {}  # nothing is wanted serving: the deaths are recorded, that is all
        restarted: list[str] = []
        if any(s.role == ROUTER for s in dead):
            self._restart(deployments, name, dead, ROUTER, restarted)
        for server in [s for s in dead if s.role not in (ROUTER, STANDBY)]:
            self._restart(deployments, name, dead, server.role, restarted, server)
        return {"restarted": restarted}

    def _restart(
        self,
        deployments: DeploymentStore,
        name: str,
        dead: list[Server],
        role: str,
        restarted: list[str],
        server: Server | None = None,
    ) -> None:
        """Start the dead ``role`` again, unless it keeps dying: then a router or live
        version fails the deployment (with the reason), and a candidate ends its canary or
        experiment (the live version keeps all the traffic)."""
        from nbdeploy.deployment.store import CANDIDATE, FAILED, ROUTER
        from nbdeploy.errors import NbdeployError

        slot = f"{name}:router" if role == ROUTER else f"{name}:v{server.version if server else 0}"
        what = "the router" if role == ROUTER else f"v{server.version if server else '?'}"
        if not self._may_restart(slot):
            reason = (
                f"{what} died {MAX_RESTARTS} times within {RESTART_WINDOW_SECONDS:g} s; not "
                "restarted again"
            )
            last = next((s for s in dead if s.role == role), None)
            detail = self.cause(last) if last else ""
            if role == CANDIDATE:
                end_candidate(deployments, name, reason)
            else:
                deployments.set_state(
                    name, status=FAILED, live_version=deployments.get(name).live_version
                )
            deployments.add_event(name, "gave-up", process=what, reason=reason, cause=detail)
            return
        try:
            if role == ROUTER:
                restart_router(deployments, name)
            else:
                assert server is not None
                restart_version(deployments, name, server)
        except (NbdeployError, OSError) as error:
            deployments.add_event(name, "restart-failed", process=what, error=str(error))
            print(f"nbdeploy daemon: {name}: {what} did not restart: {error}", flush=True)
            return
        restarted.append(what)
        deployments.add_event(name, "restarted", process=what)
        print(f"nbdeploy daemon: {name}: {what} restarted", flush=True)

    def _may_restart(self, slot: str) -> bool:
        now = time.monotonic()
        recent = [t for t in self.restarts.get(slot, []) if now - t < RESTART_WINDOW_SECONDS]
        if len(recent) >= MAX_RESTARTS:
            self.restarts[slot] = recent
            return False
        wait = BACKOFF_SECONDS[min(len(recent), len(BACKOFF_SECONDS) - 1)]
        if recent and now - recent[-1] < wait:
            time.sleep(wait - (now - recent[-1]))
        self.restarts[slot] = [*recent, time.monotonic()]
        return True

    def cause(self, server: Server) -> str:
        """Why ``server`` ended: its exit status when we waited for it, and its last log
        lines."""
        from nbdeploy.deployment.runtime.processes import tail

        status = self._exit_status(server.pid or 0)
        if status is None:
            how = f"process {server.pid} is gone"
        elif os.WIFSIGNALED(status):
            number = os.WTERMSIG(status)
            how = f"process {server.pid} was killed by {signal.Signals(number).name}"
        else:
            how = f"process {server.pid} exited with code {os.waitstatus_to_exitcode(status)}"
        lines = tail(Path(server.log_path), 20)
        return how + ("\n" + "\n".join(lines) if lines else "")


def _slot(name: str, server: Server) -> str:
    return f"{name}:router" if server.role == "router" else f"{name}:v{server.version}"


def _what(server: Server) -> str:
    return "the router" if server.role == "router" else f"v{server.version} ({server.role})"


def heal(daemon: Daemon, job: Job) -> dict[str, Any]:
    return daemon.supervisor.heal(job)


def restart_router(deployments: DeploymentStore, name: str) -> None:
    """The router again on the deployment's address, with the configuration it had."""
    from nbdeploy.deployment import traffic

    deployment = deployments.get(name)
    traffic.start_router(deployments, name, deployment.host, deployment.port)


def restart_version(deployments: DeploymentStore, name: str, dead: Server) -> None:
    """The dead server's version again, on its port when that is free, else on a new one;
    the router is told (each start has a secret of its own)."""
    from nbdeploy.deployment.runtime.processes import ServerStartError
    from nbdeploy.deployment.store import LIVE, STANDBY
    from nbdeploy.deployment.traffic.strategies import canary, route, start_version

    rollout = _rollout(deployments, name, dead.version)
    try:
        again = start_version(rollout, rollout.version, dead.role, port=dead.port)
    except ServerStartError:
        again = start_version(rollout, rollout.version, dead.role)
    canary.server_restarted(name, dead.id, again.id)  # a canary in progress goes on with it
    if dead.role != LIVE or (again.port == dead.port and canary.controller_running(name)):
        return  # same port, same secret: the router's configuration (a canary's split) holds
    route(rollout, again, rollout.servers(STANDBY))  # its new secret (and port, if it moved)


def end_candidate(deployments: DeploymentStore, name: str, reason: str) -> None:
    """A canary's or experiment's candidate died: the live version takes all traffic."""
    from nbdeploy.deployment.store import LIVE, STANDBY
    from nbdeploy.deployment.traffic.strategies import canary, route

    live = [s for s in deployments.active_servers(name) if s.role == LIVE]
    if not live:
        return
    rollout = _rollout(deployments, name, live[0].version)
    route(rollout, live[0], rollout.servers(STANDBY))
    canary.stop_controller(name, f"rolled back: the candidate's server died ({reason})")


def _rollout(deployments: DeploymentStore, name: str, number: int) -> Any:
    from nbdeploy.deployment.options import DEFAULT_KEEP_WARM_SECONDS
    from nbdeploy.deployment.traffic.strategies import Rollout

    deployment = deployments.get(name)
    version = deployments.version(name, number)
    return Rollout(
        deployments,
        name,
        version,
        deployment.host,
        deployment.port,
        lambda message: print(f"nbdeploy daemon: {name}: {message}", flush=True),
        DEFAULT_KEEP_WARM_SECONDS,
    )
