"""A deployment answers only through its router (issue 17): a version refuses requests
without its per-start secret, a keyed router refuses a request on its head before reading
its body, and the router fails over to a warm standby when the live version dies."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from test_rollout import ask, deployed, scaler  # noqa: F401 (deployed: a fixture)

import nbdeploy
from nbdeploy.deployment import traffic
from nbdeploy.deployment.store import Server
from nbdeploy.deployment.traffic import upstream_secrets
from nbdeploy.deployment.traffic.router import CONFIG
from nbdeploy.deployment.traffic.router.proxy import Router
from nbdeploy.service.upstream_guard import HEADER, Message, Middleware, Receive, Scope, Send

REFUSAL = "this version answers only its deployment's router"


def post(url: str, headers: dict[str, str]) -> tuple[int, Any]:
    request = urllib.request.Request(
        url + "/scale",
        data=b'{"values": [1.0]}',
        headers={"Content-Type": "application/json", **headers},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def opens(url: str) -> int:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return int(answer.status)


def servers(role: str, name: str = "scale") -> list[Server]:
    return [s for s in nbdeploy.status(name)[0].servers if s.role == role]


def wait_gone(pid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, f"process {pid} did not end"
        time.sleep(0.05)


# -- the version's side: the ASGI middleware, on a real (tiny) ASGI app ------------------


async def _hello(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"hello"})


def call(
    app: Middleware, path: str, headers: list[tuple[bytes, bytes]]
) -> tuple[int, bytes, dict[bytes, bytes]]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "headers": headers}
    asyncio.run(app(scope, receive, send))
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return sent[0]["status"], body, dict(sent[0]["headers"])


def test_the_guard_answers_only_the_secret_and_leaves_health_open(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NBDEPLOY_UPSTREAM_SECRET", "s3cret-of-this-start")
    guarded = Middleware(_hello)
    header = HEADER.lower().encode()
    status, body, headers = call(guarded, "/predict", [])
    assert status == 403 and json.loads(body) == {
        "error": REFUSAL,
        "hint": "call the deployment's URL (nbdeploy status NAME)",
    }
    assert headers[header] == b"refused"  # a router tells it from the function's own 403
    assert call(guarded, "/predict", [(header, b"wrong")])[0] == 403
    assert call(guarded, "/predict", [(header, b"s3cret-of-this-start")])[:2] == (200, b"hello")
    for path in ("/livez", "/readyz", "/healthz", "/metrics"):
        assert call(guarded, path, [])[0] == 200
    monkeypatch.delenv("NBDEPLOY_UPSTREAM_SECRET")
    assert call(Middleware(_hello), "/predict", [])[0] == 200  # a container: no check


def test_failover_goes_to_the_split_then_the_standby_never_the_shadow(tmp_path: Path) -> None:
    upstreams = {f"v{n}": {"host": "127.0.0.1", "port": 9000 + n} for n in (1, 2, 3, 4)}
    config = {
        "upstreams": upstreams,
        "weights": {"v2": 90.0, "v4": 10.0},
        "shadow": {"version": "v3"},
        "standby": {"v1": {"pid": 1, "until": time.time() + 60}},
    }
    (tmp_path / CONFIG).write_text(json.dumps(config))
    router = Router(tmp_path)
    router.reload()
    assert router.failover_order("v4") == ["v4", "v2", "v1"]


# -- a deployment, end to end ------------------------------------------------------------


@pytest.mark.integration
def test_a_version_answers_only_its_router(deployed: str, cli: Callable[..., Any]) -> None:  # noqa: F811
    [live] = servers("live")
    status, body = post(live.url, {})
    assert status == 403 and body["error"] == REFUSAL
    assert post(live.url, {HEADER: "guessed"})[0] == 403
    assert post(deployed, {HEADER: "guessed"}) == (200, [2.0])  # the router drops it
    assert opens(live.url + "/readyz") == 200 and opens(live.url + "/metrics") == 200

    secret = upstream_secrets.read(live)
    assert secret and post(live.url, {HEADER: secret}) == (200, [2.0])
    path = upstream_secrets.secret_path("scale", live.log_path)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert oct(path.parent.stat().st_mode & 0o777) == "0o700"
    assert secret not in cli("status", "scale", "--json").out
    assert secret not in cli("logs", "scale", "--tail", "400").out
    folder = traffic.folder("scale")
    for log in (folder / "logs").iterdir():
        assert secret not in log.read_text(encoding="utf-8", errors="replace"), log
    leader = psutil.Process(live.pid)
    for process in [leader, *leader.children(recursive=True)]:
        assert secret not in " ".join(process.cmdline())  # ps shows command lines to all

    # A router that has not the version's secret (another server took the port of the one
    # it knew) does not pass the refusal on: no version could answer.
    from dataclasses import replace

    from nbdeploy.deployment.store import DeploymentStore
    from nbdeploy.deployment.traffic.strategies import target
    from nbdeploy.store import default_store

    store = DeploymentStore(default_store())
    [deployment] = nbdeploy.status("scale")
    for upstream in (replace(target(live), secret="not-the-secret-" * 3), target(live)):
        traffic.route(
            store,
            "scale",
            deployment.host,
            deployment.port,
            upstreams={"v1": upstream},
            weights={"v1": 100},
        )
        status, body = post(deployed, {})
        if upstream.secret != secret:
            assert status == 502 and "refused the router's secret" in body["detail"], body
    assert (status, body) == (200, [2.0])

    # A stopped version's secret goes with it; the new one has its own.
    nbdeploy.deploy(scaler(3), name="scale", mlflow=False, strategy="recreate")
    assert not path.exists()
    [new] = servers("live")
    assert upstream_secrets.read(new) not in (None, secret)
    assert post(deployed, {}) == (200, [3.0]) and post(new.url, {})[0] == 403


@pytest.mark.integration
def test_with_a_key_no_listed_port_answers_without_it(cli: Callable[..., Any]) -> None:
    result = nbdeploy.deploy(scaler(2), name="scale", mlflow=False, auth="key")
    try:
        [entry] = cli("status", "scale", "--json").json
        ports = {entry["port"]} | {server["port"] for server in entry["servers"]}
        assert len(ports) == 2  # the router's and the live version's
        for port in ports:
            assert ask(f"http://127.0.0.1:{port}", 1.0)[0] in (401, 403), port
        key = cli("key", "scale").out.strip()
        assert post(result.deployment.url, {"Authorization": f"Bearer {key}"}) == (200, [2.0])
    finally:
        nbdeploy.stop("scale")


def read_answer_head(connection: socket.socket) -> bytes:
    """What the server sends until the end of its answer's head (or it closes)."""
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = connection.recv(65536)
        if not chunk:
            break
        received += chunk
    return received


@pytest.mark.integration
def test_a_keyed_router_refuses_a_huge_body_before_reading_it(home: Path) -> None:
    result = nbdeploy.deploy(scaler(2), name="scale", mlflow=False, auth="key")
    try:
        host, port = result.deployment.host, result.deployment.port
        head = (
            b"POST /scale HTTP/1.1\r\nHost: scale\r\nContent-Type: application/json\r\n"
            b"Content-Length: 200000000\r\n\r\n"
        )
        with socket.create_connection((host, port), timeout=5) as connection:
            started = time.monotonic()
            connection.sendall(head)  # and not a byte of the 200 MB announced
            answer = read_answer_head(connection)
            elapsed = time.monotonic() - started
            assert answer.startswith(b"HTTP/1.1 401 "), answer
            assert b"\r\nConnection: close\r\n" in answer
            assert elapsed < 2.0
            # The router half-closes at once: the client is told not to send the body.
            connection.settimeout(3)
            while connection.recv(65536):
                pass
        # It still serves a request with the key after all that.
        key = (home / "keys" / "scale").read_text().strip()
        assert post(result.deployment.url, {"Authorization": f"Bearer {key}"}) == (200, [2.0])
    finally:
        nbdeploy.stop("scale")


@pytest.mark.integration
def test_a_killed_live_version_fails_over_to_the_warm_standby(deployed: str) -> None:  # noqa: F811
    nbdeploy.deploy(scaler(3), name="scale", mlflow=False)  # blue-green: v1 stays warm
    [live], [standby] = servers("live"), servers("standby")
    assert (live.version, standby.version) == (2, 1) and live.pid
    assert ask(deployed, 1.0)[1] == [3.0]
    os.killpg(live.pid, signal.SIGKILL)
    wait_gone(live.pid)
    answers: list[tuple[int, Any, str | None]] = []
    deadline = time.monotonic() + 20
    while len(answers) < 30 and time.monotonic() < deadline:
        status, body, headers = ask(deployed, 1.0)
        answers.append((status, body, headers.get("x-nbdeploy-version")))
    assert len(answers) == 30
    assert answers[0] == (200, [2.0], "v1"), answers  # at once: the standby
    # All answered; v2 again once something restarted it in place (its daemon may).
    assert all(a in [(200, [2.0], "v1"), (200, [3.0], "v2")] for a in answers), answers
