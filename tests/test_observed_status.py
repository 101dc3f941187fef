"""A read of status tells what runs now: a server whose process is gone shows ``down``
before the daemon has recorded it, and the deployment names the version that answers
(the warm standby while the live one restarts). Real processes stand in for servers."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from nbdeploy.deployment.report import status_table
from nbdeploy.deployment.runtime.processes import process_start_ticks
from nbdeploy.deployment.store import (
    DOWN,
    LIVE,
    READY,
    ROUTER,
    SERVING,
    STANDBY,
    STARTING,
    STOPPED,
    Deployment,
    Server,
)


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        process.kill()
        process.wait(timeout=10)


def server(processes: list[subprocess.Popen[bytes]], role: str, version: int) -> Server:
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    processes.append(process)
    return Server(
        id=len(processes),
        deployment="demo",
        version=version,
        pid=process.pid,
        start_ticks=process_start_ticks(process.pid),
        host="127.0.0.1",
        port=40000 + len(processes),
        role=role,
        status=READY,
        log_path=f"/nonexistent/{role}.log",
        started_at=0.0,
    )


def deployment(servers: list[Server], status: str = SERVING) -> Deployment:
    return Deployment("demo", "127.0.0.1", 8000, "bluegreen", 2, status, 0.0, 0.0, servers)


def kill(processes: list[subprocess.Popen[bytes]], index: int) -> None:
    processes[index].kill()
    processes[index].wait(timeout=10)


def test_all_running_the_live_version_answers(processes):
    seen = deployment(
        [server(processes, ROUTER, 0), server(processes, LIVE, 2), server(processes, STANDBY, 1)]
    ).observe()
    assert seen.answering_version == 2
    assert not seen.recovering
    assert [s.status for s in seen.servers] == [READY, READY, READY]
    assert "serving" in status_table([seen]) and "recovering" not in status_table([seen])


def test_a_dead_live_version_shows_down_and_the_standby_answers(processes):
    servers = [
        server(processes, ROUTER, 0),
        server(processes, LIVE, 2),
        server(processes, STANDBY, 1),
    ]
    kill(processes, 1)
    seen = deployment(servers).observe()
    assert seen.servers[1].status == DOWN
    assert seen.answering_version == 1
    assert seen.recovering
    assert "recovering: v2 down, v1 answers" in status_table([seen])


def test_a_live_version_starting_again_leaves_the_standby_answering(processes):
    again = server(processes, LIVE, 2)
    again.status = STARTING
    seen = deployment([server(processes, ROUTER, 0), again, server(processes, STANDBY, 1)])
    seen.observe()
    assert seen.answering_version == 1 and seen.recovering
    assert "v2 starting" in status_table([seen])


def test_a_dead_router_is_recovering_and_the_live_version_still_answers(processes):
    servers = [server(processes, ROUTER, 0), server(processes, LIVE, 2)]
    kill(processes, 0)
    seen = deployment(servers).observe()
    assert seen.servers[0].status == DOWN
    assert seen.answering_version == 2 and seen.recovering
    assert "recovering: the router down" in status_table([seen])


def test_a_pid_reused_by_another_process_is_not_taken_for_the_server(processes):
    live = server(processes, LIVE, 2)
    assert live.start_ticks is not None
    live.start_ticks -= 1000  # the pid now names a process that started 10 s later
    seen = deployment([server(processes, ROUTER, 0), live]).observe()
    assert seen.servers[1].status == DOWN


def test_a_stopped_deployment_has_no_answering_version(processes):
    seen = deployment([], status=STOPPED).observe()
    assert seen.answering_version is None and not seen.recovering
