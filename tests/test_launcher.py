"""Integration: the warm launcher forks version servers, builds and example calls; servers
outlive it; it is private to its user and its NBDEPLOY_HOME; everything works without it."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from support import post

from nbdeploy.deployment.runtime import client, launcher

pytestmark = pytest.mark.integration

SCRIPT = """
import json, sys
import nbdeploy

SCALE = float(sys.argv[1])

def scale(values: list[float]) -> list[float]:
    return [SCALE * v for v in values]

result = nbdeploy.deploy(scale, name="scale", mlflow=False)
[live] = [s for s in result.deployment.servers if s.role == "live"]
print(json.dumps({"url": result.deployment.url, "pid": live.pid}))
"""


def deploy(tmp_path: Path, factor: float, **env: str) -> dict[str, object]:
    script = tmp_path / "deploy_scale.py"
    script.write_text(SCRIPT, encoding="utf-8")
    completed = subprocess.run(
        [sys.executable, str(script), str(factor)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, **env},
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    answer: dict[str, object] = json.loads(completed.stdout.strip().splitlines()[-1])
    return answer


def scaled(deployment: dict[str, object], values: list[float]) -> object:
    status, body = post(f"{deployment['url']}/scale", {"values": values})
    return json.loads(body) if status == 200 else (status, body)


def stop(cli) -> None:
    result = cli("stop", "scale")
    assert result.code == 0, result


def wait_for(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_servers_are_forked_from_the_launcher_and_outlive_it(tmp_path, home, cli):
    first = deploy(tmp_path, 2)
    running = launcher.running()
    assert running is not None
    launcher_pid = running.ping()["pid"]
    daemon = client.ping()
    assert daemon is not None
    server = psutil.Process(int(first["pid"]))  # type: ignore[call-overload]
    # Forked by the launcher (the daemon's child), handed to the daemon, which waits on it.
    assert "nbdeploy.deployment.runtime.launcher" in " ".join(server.cmdline())
    assert psutil.Process(launcher_pid).ppid() == daemon["pid"]
    assert server.ppid() == daemon["pid"]
    assert scaled(first, [1, 2]) == [2.0, 4.0]

    launcher.shutdown()
    wait_for(lambda: not psutil.pid_exists(launcher_pid))
    assert scaled(first, [1]) == [2.0]
    assert cli("status", "scale", "--json").json[0]["status"] == "serving"

    second = deploy(tmp_path, 3)  # a new launcher takes over
    assert scaled(second, [1]) == [3.0]
    assert launcher.running() is not None
    stop(cli)


def test_a_worker_that_dies_is_started_again(tmp_path, home, cli):
    first = deploy(tmp_path, 2)
    leader = psutil.Process(int(first["pid"]))  # type: ignore[call-overload]
    (worker,) = leader.children()
    worker.send_signal(signal.SIGKILL)

    def replaced() -> bool:
        children = leader.children()
        return len(children) == 1 and children[0].pid != worker.pid

    wait_for(replaced)
    wait_for(lambda: scaled(first, [5]) == [10.0])
    status = cli("status", "scale", "--json").json[0]
    [live] = [s for s in status["servers"] if s["role"] == "live"]
    assert status["status"] == "serving" and live["pid"] == leader.pid
    log = Path(live["log_path"]).read_text(encoding="utf-8")
    assert "worker 1 was killed by signal 9" in log and "restarting worker 1" in log
    stop(cli)
    wait_for(lambda: not leader.is_running() or leader.status() == psutil.STATUS_ZOMBIE)


def test_without_a_launcher_the_same_deploy_works(tmp_path, home, cli):
    first = deploy(tmp_path, 4, NBDEPLOY_LAUNCHER="0")
    assert not launcher.socket_path(home).exists()
    assert scaled(first, [1]) == [4.0]
    server = psutil.Process(int(first["pid"]))  # type: ignore[call-overload]
    assert "nbdeploy.deployment.runtime.serving" in " ".join(server.cmdline())
    stop(cli)


def test_the_launcher_is_private_and_stays_in_its_home(home):
    running = launcher.ensure()
    assert running is not None
    path = launcher.socket_path(home)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700

    outside = Path("/tmp")
    answer = running.request(
        {"op": "build", "directory": str(outside), "cwd": str(outside), "env": {}}
    )
    assert answer["ok"] is False and "outside NBDEPLOY_HOME" in answer["error"]
    with pytest.raises(launcher.LauncherError, match="outside NBDEPLOY_HOME"):
        running.serve({}, {}, outside, home / "x.log")

    running.request({"op": "preload", "modules": ["no_such_module_here", "os; rm -rf"]})
    failed = running.ping()["failed"]
    assert "not a module of an installed distribution" in failed["no_such_module_here"]
    assert "os; rm -rf" in failed


def test_a_launcher_running_other_code_is_replaced(home, monkeypatch):
    first = launcher.ensure()
    assert first is not None
    old_pid = first.ping()["pid"]
    launcher.code_fingerprint.cache_clear()
    monkeypatch.setattr(launcher, "code_fingerprint", lambda: "an upgrade")
    assert launcher.running() is None  # and it was asked to stop
    wait_for(lambda: not psutil.pid_exists(old_pid) or not psutil.Process(old_pid).is_running())
