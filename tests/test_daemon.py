"""Integration: the daemon owns what runs. kill -9 of each kind of process under load, a
simulated reboot, Ctrl-C at several points of a deploy, two verbs on one name at once, and
the private socket between the daemon and its clients (real processes throughout)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from jupyter_client.manager import start_new_kernel
from support import canary_plan, execute
from test_rollout import Load, ask, scaler

import nbdeploy
from nbdeploy.deployment import traffic
from nbdeploy.deployment.runtime import channel, client
from nbdeploy.deployment.runtime.processes import MARKER_ENV, process_start_ticks
from nbdeploy.deployment.traffic.strategies import canary

pytestmark = pytest.mark.integration
THREADS = 4  # of the load: at most this many requests are in flight when a process dies


def wait_for(condition: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what or condition}"
        time.sleep(0.05)


def servers(name: str = "scale") -> dict[str, Any]:
    """The deployment's active servers by role (one each)."""
    [deployment] = nbdeploy.status(name)
    return {server.role: server for server in deployment.servers}


def pid_of(role: str, name: str = "scale") -> int | None:
    server = servers(name).get(role)
    return server.pid if server is not None else None


def answers(url: str) -> Any:
    try:
        status, body, headers = ask(url, 1.0)
    except OSError:
        return None
    return (body, headers.get("x-nbdeploy-version")) if status == 200 else None


def status_text(cli: Any, name: str = "scale") -> str:
    result = cli("status", name)
    return result.out + result.err


@pytest.fixture
def deployed(home: Path) -> Iterator[str]:
    result = nbdeploy.deploy(scaler(2), name="scale", mlflow=False)
    yield result.deployment.url
    nbdeploy.stop("scale")


def test_a_killed_router_comes_back_at_its_address_under_load(deployed, cli):
    router = servers()["router"]
    with Load(deployed, THREADS) as load:
        wait_for(lambda: load.outcomes["200"] > 20, what="load")
        os.kill(router.pid, signal.SIGKILL)
        wait_for(lambda: pid_of("router") not in (None, router.pid), what="a new router")
        before = load.outcomes["200"]
        wait_for(lambda: load.outcomes["200"] > before + 20, what="answers again")
    # The daemon holds the address: while the router restarts, connections wait in the
    # backlog; only requests in flight in the killed router can fail.
    assert load.failed <= THREADS, load.outcomes
    assert servers()["router"].port == router.port
    text = status_text(cli)
    assert "restarted: process the router" in text
    assert f"process {router.pid} was killed by SIGKILL" in text


def test_a_killed_version_comes_back_and_requests_keep_being_answered(deployed, cli):
    live = servers()["live"]
    with Load(deployed, THREADS) as load:
        wait_for(lambda: load.outcomes["200"] > 20, what="load")
        os.killpg(live.pid, signal.SIGKILL)  # the leader and its workers
        wait_for(lambda: pid_of("live") not in (None, live.pid), what="a new v1")
        before = load.outcomes["200"]
        wait_for(lambda: load.outcomes["200"] > before + 20, what="answers again")
    assert load.failed <= THREADS, load.outcomes
    assert set(load.answers) == {2.0}
    assert not psutil.pid_exists(live.pid) or psutil.Process(live.pid).status() == "zombie"
    assert "restarted: process v1" in status_text(cli)


def test_a_killed_live_version_fails_over_to_its_warm_standby(deployed):
    nbdeploy.deploy(scaler(3), name="scale", mlflow=False)  # v1 stays warm as standby
    running = servers()
    assert running["standby"].version == 1
    with Load(deployed, THREADS) as load:
        wait_for(lambda: load.answers[3.0] > 10, what="v2 answers")
        os.killpg(running["live"].pid, signal.SIGKILL)
        wait_for(lambda: pid_of("live") not in (None, running["live"].pid), what="v2 back")
        before = load.answers[3.0]
        wait_for(lambda: load.answers[3.0] > before + 10, what="v2 answers again")
    assert load.failed <= THREADS, load.outcomes
    assert servers()["live"].version == 2


def test_a_worker_killed_under_load_is_replaced_without_failures(deployed):
    live = servers()["live"]
    (worker,) = psutil.Process(live.pid).children()
    with Load(deployed, THREADS) as load:
        wait_for(lambda: load.outcomes["200"] > 20, what="load")
        worker.kill()
        wait_for(
            lambda: [c.pid for c in psutil.Process(live.pid).children()] not in ([], [worker.pid])
        )
        before = load.outcomes["200"]
        wait_for(lambda: load.outcomes["200"] > before + 20, what="answers again")
    assert load.failed <= THREADS, load.outcomes
    assert servers()["live"].pid == live.pid  # the leader replaced its worker itself


def test_a_hung_router_is_killed_and_replaced(deployed, cli):
    from nbdeploy.deployment.runtime.supervision import HUNG_AFTER, PROBE_SECONDS

    router = servers()["router"]
    os.kill(router.pid, signal.SIGSTOP)  # alive, answering nothing
    try:
        wait_for(
            lambda: pid_of("router") not in (None, router.pid),
            (HUNG_AFTER + 3) * PROBE_SECONDS * 2,
            "the hung router replaced",
        )
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(router.pid, signal.SIGKILL)
    assert wait_for(lambda: answers(deployed), 10, "answers")[0] == [2.0]
    text = status_text(cli)
    assert "hung: process the router" in text and "restarted: process the router" in text


def owned_processes(home: Path) -> list[psutil.Process]:
    """Every process that runs for ``home``: the daemon, the launcher, routers, versions and
    their workers."""
    found = []
    for process in psutil.process_iter():
        try:
            environment = process.environ()
        except psutil.Error:
            continue
        if environment.get("NBDEPLOY_HOME") == str(home) and process.pid != os.getpid():
            found.append(process)
    return found


def test_a_simulated_reboot_brings_every_deployment_back_at_its_address(home, cli):
    first = nbdeploy.deploy(scaler(2), name="scale", mlflow=False)
    other = nbdeploy.deploy(scaler(5), name="other", mlflow=False)
    victims = owned_processes(home)
    kinds = " ".join(" ".join(p.cmdline()) for p in victims)
    assert "runtime.daemon" in kinds and "traffic.router" in kinds
    for process in victims:
        process.kill()
    psutil.wait_procs(victims, timeout=10)
    assert answers(first.url) is None and answers(other.url) is None

    status = cli("status")  # any command: a new daemon adopts nothing, restarts everything
    assert status.code == 0, status
    assert wait_for(lambda: answers(first.url), 10, "scale back")[0] == [2.0]
    assert wait_for(lambda: answers(other.url), 10, "other back")[0] == [5.0]
    for name in ("scale", "other"):
        assert nbdeploy.status(name)[0].status == "serving"
        nbdeploy.stop(name)


@pytest.mark.parametrize("face", ["load_ext", "jupyter_server"])
def test_after_a_reboot_opening_a_notebook_brings_deployments_back(home, tmp_path, face):
    deployed = nbdeploy.deploy(scaler(2), name="scale", mlflow=False)
    victims = owned_processes(home)
    for process in victims:
        process.kill()
    psutil.wait_procs(victims, timeout=10)
    assert answers(deployed.url) is None
    if face == "load_ext":  # a kernel loads the magics, and runs nothing else
        started = start_new_kernel(kernel_name="python3", cwd=str(tmp_path))
        try:
            execute(started[1], "%load_ext nbdeploy")
            assert wait_for(lambda: answers(deployed.url), 10, "scale back")[0] == [2.0]
        finally:
            started[1].stop_channels()
            started[0].shutdown_kernel(now=True)
    else:  # the Jupyter server extension loads (what JupyterLab's start does)
        from nbdeploy.server import _bring_back_deployments

        _bring_back_deployments()
        assert wait_for(lambda: answers(deployed.url), 10, "scale back")[0] == [2.0]
    nbdeploy.stop("scale")  # what came back is the test's to end


def test_the_daemon_dying_leaves_services_serving_and_its_successor_adopts_them(deployed, cli):
    before = servers()
    daemon = client.ping()
    assert daemon is not None
    os.kill(int(daemon["pid"]), signal.SIGKILL)
    assert answers(deployed) is not None  # no daemon: the deployment serves on
    state = cli("daemon", "status", "--json")
    assert state.code == 0 and state.json["running"] is False
    assert cli("status", "scale").code == 0  # starts a new daemon
    state = cli("daemon", "status", "--json").json
    assert state["running"] and state["pid"] != daemon["pid"]
    watched = {child["pid"] for child in state["children"]}
    assert {before["router"].pid, before["live"].pid} <= watched  # adopted, not restarted
    assert {s.pid for s in servers().values()} == {before["router"].pid, before["live"].pid}
    text = cli("daemon", "status").out
    assert f"router   scale pid {before['router'].pid}" in text


def test_a_canary_outlives_its_daemon_and_the_next_daemon_promotes_it(deployed, cli):
    nbdeploy.deploy(scaler(3), name="scale", mlflow=False, strategy="canary", interval=600)
    text = cli("daemon", "status").out
    assert "canary   scale v2 a thread of the daemon" in text, text
    daemon = client.ping()
    assert daemon is not None
    os.kill(int(daemon["pid"]), signal.SIGKILL)
    # The split stays as it was while no daemon runs: both versions answer.
    seen = {wait_for(lambda: answers(deployed), 10, "an answer")[1] for _ in range(60)}
    assert seen == {"v1", "v2"}, seen
    promoted = cli("promote", "scale")  # starts a daemon, which resumes the canary first
    assert promoted.code == 0, promoted
    assert "canary v2 promoted" in promoted.out + promoted.err
    plan = canary.read_plan("scale")
    assert plan is not None and plan.status == canary.PROMOTED
    assert plan.controller_pid != daemon["pid"]  # the new daemon ran it
    assert answers(deployed) == ([3.0], "v2")
    [deployment] = nbdeploy.status("scale")
    assert deployment.live_version == 2


def restarted_or_failed(router_pid: int) -> bool:
    """The router that was ``router_pid`` runs again (as another process), or the daemon
    gave up (one read of the servers: a restart may end a row between two reads)."""
    if nbdeploy.status("scale")[0].status == "failed":
        return True
    router = servers().get("router")
    return router is not None and router.pid != router_pid


def test_a_crash_loop_ends_in_failed_with_the_reason(deployed, cli):
    from nbdeploy.deployment.runtime.supervision import MAX_RESTARTS

    for _ in range(MAX_RESTARTS + 1):
        router = servers().get("router")
        if router is None:
            break
        os.kill(router.pid, signal.SIGKILL)
        wait_for(lambda pid=router.pid: restarted_or_failed(pid), 30, "a restart or the end")
    wait_for(lambda: nbdeploy.status("scale")[0].status == "failed", 30, "failed")
    status = cli("status", "scale")
    assert status.code == 1
    assert f"the router died {MAX_RESTARTS} times" in status.out
    assert "was killed by SIGKILL" in status.out


# -- interrupts and concurrent verbs --------------------------------------------------------
DEPLOY_SCRIPT = textwrap.dedent(
    """
    import sys
    import nbdeploy
    from nbdeploy.errors import NbdeployError

    namespace = {"__name__": "__main__"}
    exec(
        "def scale(values: list[float]) -> list[float]:\\n"
        f"    return [{sys.argv[1]} * v for v in values]\\n",
        namespace,
    )
    try:
        result = nbdeploy.deploy(namespace["scale"], name="scale", mlflow=False)
    except NbdeployError as error:
        print("ERROR", error, flush=True)
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        print("INTERRUPTED before the switch", flush=True)
        sys.exit(130)
    print("DEPLOYED", result.version.version, flush=True)
    """
)


def start_deploy(tmp_path: Path, factor: float) -> subprocess.Popen[str]:
    script = tmp_path / "deploy_scale.py"
    script.write_text(DEPLOY_SCRIPT, encoding="utf-8")
    return subprocess.Popen(
        [sys.executable, str(script), str(factor)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
    )


def new_server_log(version: int) -> Callable[[], bool]:
    logs = traffic.folder("scale") / "logs"
    return lambda: any(logs.glob(f"v{version}-*.log"))


def generation() -> int:
    return int(traffic.read_state("scale").get("generation", 0))


def ports_of(name: str) -> set[int]:
    from nbdeploy.deployment.store import DeploymentStore
    from nbdeploy.store import default_store

    return {s.port for s in DeploymentStore(default_store()).recent_servers(name, 50) if s.port}


def nothing_of_the_deployment_runs(name: str = "scale") -> None:
    folder = str(traffic.folder(name))
    for process in psutil.process_iter():
        try:
            marker = process.environ().get(MARKER_ENV, "")
        except psutil.Error:
            continue
        assert not marker.startswith(folder), f"{process.pid} still runs: {process.cmdline()}"
    for port in ports_of(name):
        with socket.socket() as probe:
            probe.settimeout(0.5)
            assert probe.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still answers"


@pytest.mark.parametrize("moment", ["server-starting", "after-switch", "while-preparing"])
def test_an_interrupted_deploy_reports_what_status_and_the_answers_say(deployed, tmp_path, moment):
    switched = generation()
    process = start_deploy(tmp_path, 3)
    try:
        if moment == "server-starting":
            wait_for(new_server_log(2), 120, "the new server's start")
        elif moment == "after-switch":
            wait_for(lambda: generation() > switched, 120, "the switch")
        else:
            time.sleep(0.5)
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=120)
    finally:
        process.kill()
    [deployment] = nbdeploy.status("scale")
    answer = wait_for(lambda: answers(deployed), 10, "an answer")
    if "too late to undo" in output or "DEPLOYED" in output:
        assert deployment.live_version == 2 and answer[0] == [3.0], output
    else:
        assert process.returncode == 130, output
        assert deployment.live_version == 1 and answer[0] == [2.0], output
        assert "interrupted" in output.lower(), output
        assert "v2" not in {s.role for s in deployment.servers}
        assert [s.version for s in deployment.servers if s.role != "router"] == [1]
    if moment == "after-switch":
        assert deployment.live_version == 2, output
    nbdeploy.stop("scale")
    nothing_of_the_deployment_runs()


def test_an_answer_lost_to_an_interrupt_is_asked_for_again(deployed):
    """The interrupt can strike while the daemon's answer is being read: the daemon has
    answered and closed, the client has lost the answer. It asks for the job's outcome on
    a new connection, and says what happened, not "finishes or undoes it"."""
    nbdeploy.deploy(scaler(3), name="scale", mlflow=False)
    with channel.connect(client.socket_path(), 10.0) as connection:
        channel.send(connection, {"op": "rollback", "name": "scale", "args": {}, "job": "lost1"})
        wait_for(lambda: nbdeploy.status("scale")[0].live_version == 1, 60, "the rollback")
        time.sleep(0.5)  # the answer is sent; this client never reads it
    outcome = client._outcome_of("lost1", None)
    assert outcome is not None and outcome["ok"] and outcome["result"]["live_version"] == 1
    message = client._interrupted("rollback", "scale", outcome)
    assert message == "the rollback of scale was interrupted too late to undo: v1 serves"
    assert client._outcome_of("never-sent", None) is None
    answer = wait_for(lambda: answers(deployed), 10, "an answer")
    assert answer == ([2.0], "v1")


@pytest.mark.parametrize("verb", ["rollback", "stop"])
def test_an_interrupted_rollback_or_stop_says_what_happened(deployed, verb):
    nbdeploy.deploy(scaler(3), name="scale", mlflow=False)
    for delay in (0.3, 1.0):
        before = nbdeploy.status("scale")[0]
        if before.status != "serving":
            nbdeploy.deploy(scaler(3), name="scale", mlflow=False)
            before = nbdeploy.status("scale")[0]
        command = [str(Path(sys.executable).with_name("nbdeploy")), verb, "scale"]
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        time.sleep(delay)
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=120)
        after = nbdeploy.status("scale")[0]
        changed = (after.status, after.live_version) != (before.status, before.live_version)
        if process.returncode == 0 or "too late to undo" in output:
            assert changed, output  # it says it happened: it did
        else:
            assert process.returncode == 130 and "interrupted" in output, output
            assert not changed, output  # it says it did not happen: nothing changed
        if after.status == "serving":
            answer = wait_for(lambda: answers(deployed), 10, "an answer")
            assert answer[1] == f"v{after.live_version}", (output, answer)
        else:
            nothing_of_the_deployment_runs()


def test_a_stop_accepted_during_a_deploy_is_the_final_state(deployed, tmp_path, cli):
    process = start_deploy(tmp_path, 3)
    try:
        wait_for(new_server_log(2), 120, "the new server's start")
        stopped = cli("stop", "scale")
        output, _ = process.communicate(timeout=120)
    finally:
        process.kill()
    assert stopped.code == 0, stopped
    assert "DEPLOYED 2" in output  # the deploy was accepted first: it completed, then stop
    [deployment] = nbdeploy.status("scale")
    assert deployment.status == "stopped" and deployment.servers == []
    nothing_of_the_deployment_runs()


def test_two_deploys_of_one_name_at_once_end_in_the_last_accepted(deployed, tmp_path):
    first, second = start_deploy(tmp_path, 3), start_deploy(tmp_path, 4)
    outputs = [p.communicate(timeout=300)[0] for p in (first, second)]
    assert all("DEPLOYED" in output for output in outputs), outputs
    [deployment] = nbdeploy.status("scale")
    switched = [e for e in deployment_events() if e["kind"] == "switched"]
    assert switched[0]["version"] == deployment.live_version  # the last switch serves
    # Each deploy prints the version it prepared (the code is exec'd: no source to read).
    factor = 3.0 if f"DEPLOYED {deployment.live_version}" in outputs[0] else 4.0
    answer = wait_for(lambda: answers(deployed), 10, "an answer")
    assert answer == ([factor], f"v{deployment.live_version}")


def test_a_canary_promoted_and_rolled_back_at_once_ends_in_the_last_accepted(deployed):
    nbdeploy.deploy(scaler(3), name="scale", mlflow=False, strategy="canary", interval=600)
    verbs = [
        subprocess.Popen(
            [str(Path(sys.executable).parent / "nbdeploy"), verb, "scale"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for verb in ("promote", "rollback")
    ]
    promoted, rolled_back = [(p.communicate(timeout=120)[0], p.returncode) for p in verbs]
    assert rolled_back[1] == 0, rolled_back
    kinds = [e["kind"] for e in reversed(deployment_events())]  # oldest first
    [deployment] = nbdeploy.status("scale")
    if "promoted" in kinds or "canary-promoted" in kinds:
        # promote was accepted first (v2 took over), then rollback served v1 again
        assert promoted[1] == 0, promoted
        assert kinds[-1] == "switched"
    else:
        # rollback was accepted first and ended the canary; promote found nothing to promote
        assert promoted[1] != 0 and "no canary" in promoted[0], promoted
        assert canary.read_plan("scale").status == "rolled back"  # type: ignore[union-attr]
    assert deployment.status == "serving" and deployment.live_version == 1
    answer = wait_for(lambda: answers(deployed), 10, "an answer")
    assert answer == ([2.0], "v1")
    assert {s.role for s in deployment.servers} >= {"router", "live"}
    assert "candidate" not in {s.role for s in deployment.servers}


def deployment_events() -> list[dict[str, Any]]:
    from nbdeploy.deployment.store import DeploymentStore
    from nbdeploy.store import default_store

    return DeploymentStore(default_store()).events("scale", 20)


# -- the private socket and pids --------------------------------------------------------------
def test_the_daemon_socket_is_private_and_checked_both_ways(home, tmp_path):
    client.ensure()
    path = client.socket_path(home)
    assert oct(path.stat().st_mode & 0o777) == oct(0o600)
    assert oct(path.parent.stat().st_mode & 0o777) == oct(0o700)
    if os.getuid() != 0:
        pytest.skip("checking another user's side needs root to become that user")
    # Another user reaches the socket (opened up on purpose; the folders above it are
    # passed as a descriptor, as they are private too): the daemon says nothing.
    os.chmod(path.parent, 0o711)
    os.chmod(path, 0o666)
    folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        probe = textwrap.dedent(
            f"""
            import os, socket
            os.setgid(65534); os.setuid(65534)
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(5)
            s.connect("/proc/self/fd/{folder}/{path.name}")
            try:
                s.sendall(b'{{"op": "ping"}}\\n')
                print(repr(s.recv(100)))
            except (BrokenPipeError, ConnectionResetError):
                print("closed")
            """
        )
        other = subprocess.run(
            [sys.executable, "-c", probe],
            capture_output=True,
            text=True,
            timeout=30,
            pass_fds=(folder,),
        )
        assert other.stdout.strip() in ("b''", "closed"), other  # closed without a word
    finally:
        os.close(folder)
        os.chmod(path.parent, 0o700)
        os.chmod(path, 0o600)
    # And a client refuses a socket folder that another user made first.
    foreign = tmp_path / "foreign-home"
    (foreign / "run").mkdir(parents=True)
    os.chown(foreign / "run", 65534, 65534)
    with pytest.raises(channel.ChannelError, match="another user"):
        channel.connect(foreign / "run" / "daemon.sock", 5.0)
    assert client.ping(foreign) is None


def test_a_process_that_reused_a_canary_controllers_pid_is_never_signalled(home, tmp_path):
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        ticks = process_start_ticks(stranger.pid)
        assert ticks is not None
        traffic.folder("scale").mkdir(parents=True, exist_ok=True)
        plan = canary_plan(
            steps=[10.0, 100.0],
            controller_pid=stranger.pid,
            controller_start_ticks=ticks - 100_000,  # the controller started long before
        )
        canary.write_plan(plan)
        canary.stop_controller("scale")
        assert stranger.poll() is None  # not signalled: it is another process
        assert canary.read_plan("scale").status == canary.ROLLED_BACK
    finally:
        stranger.kill()
        stranger.wait(10)


def test_daemon_logs_and_status_for_people(deployed, cli):
    text = cli("daemon", "status").out
    assert "daemon pid" in text and "router   scale" in text and "version  scale v1" in text
    logs = cli("daemon", "logs", "--tail", "20")
    assert logs.code == 0 and "nbdeploy daemon: pid" in logs.out
    install = cli("daemon", "install")
    # No systemd user manager in this container: a clear refusal, nothing written.
    if install.code != 0:
        assert "systemd" in install.err and "hint" in install.err, install
    json.loads(cli("daemon", "status", "--json").out)
