"""Integration: rollouts behind a deployment's router, with real servers on 127.0.0.1 and
load running through the router while versions change (blue-green drops nothing, canaries
roll back on their own, rollback is instant from a warm standby)."""

from __future__ import annotations

import json
import os
import random
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from jupyter_client.manager import start_new_kernel
from support import execute

import nbdeploy
from nbdeploy import api
from nbdeploy.deployment import traffic
from nbdeploy.deployment.traffic.strategies import canary
from nbdeploy.errors import DeployError

pytestmark = pytest.mark.integration


def define(source: str) -> dict[str, Any]:
    """Functions as a notebook defines them (in ``__main__``)."""
    namespace: dict[str, Any] = {"__name__": "__main__"}
    exec(source, namespace)
    return namespace


def scaler(factor: float, fail_above: float | None = None, sleep: float = 0.0) -> Any:
    failing = f"    if values and values[0] > {fail_above}:\n        raise ValueError('bad')\n"
    return define(
        "import time\n"
        "def scale(values: list[float]) -> list[float]:\n"
        + (failing if fail_above is not None else "")
        + (f"    time.sleep({sleep})\n" if sleep else "")
        + f"    return [{factor} * v for v in values]\n"
    )["scale"]


def ask(url: str, value: float) -> tuple[int, Any, dict[str, str]]:
    request = urllib.request.Request(
        url + "/scale",
        data=json.dumps({"values": [value]}).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            headers = {k.lower(): v for k, v in answer.headers.items()}
            return answer.status, json.loads(answer.read()), headers
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(), {k.lower(): v for k, v in error.headers.items()}


class Load:
    """Requests sent through the router in a loop by a few threads, every outcome kept."""

    def __init__(self, url: str, threads: int = 4) -> None:
        self.url = url
        self.outcomes: Counter[str] = Counter()
        self.answers: Counter[float] = Counter()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(threads)]

    def _loop(self) -> None:
        while not self.stopping.is_set():
            try:
                status, body, _ = ask(self.url, 1.0)
                self.outcomes[str(status)] += 1
                if status == 200:
                    self.answers[body[0]] += 1
            except OSError as error:
                self.outcomes[f"error: {type(error).__name__}"] += 1

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=60)

    @property
    def failed(self) -> int:
        return sum(count for outcome, count in self.outcomes.items() if outcome != "200")


@pytest.fixture
def deployed(home: Path) -> Iterator[str]:
    result = nbdeploy.deploy(scaler(2), name="scale", mlflow=False)
    yield result.deployment.url
    nbdeploy.stop("scale")


def roles(name: str = "scale") -> list[tuple[str, int]]:
    [deployment] = nbdeploy.status(name)
    return sorted((s.role, s.version) for s in deployment.servers)


def test_blue_green_switches_under_load_without_dropping_a_request(deployed):
    with Load(deployed) as load:
        time.sleep(0.5)
        result = nbdeploy.deploy(scaler(3), name="scale", mlflow=False)
        time.sleep(0.5)
    assert load.failed == 0, load.outcomes
    assert set(load.answers) == {2.0, 3.0} and result.deployment.live_version == 2
    assert roles() == [("live", 2), ("router", 0), ("standby", 1)]
    assert result.deployment.url == deployed  # one stable address

    standby_pid = next(s.pid for s in nbdeploy.status("scale")[0].servers if s.version == 1)
    with Load(deployed) as load:
        time.sleep(0.3)
        rolled = nbdeploy.rollback("scale")
        time.sleep(0.3)
    assert load.failed == 0, load.outcomes
    assert rolled.live_version == 1 and ask(deployed, 1.0)[1] == [2.0]
    live = next(s for s in rolled.servers if s.role == "live")
    assert live.pid == standby_pid  # the warm standby took over: nothing was started
    assert roles() == [("live", 1), ("router", 0), ("standby", 2)]
    kinds = [event["kind"] for event in nbdeploy_events()]
    assert kinds[:2] == ["switched", "switched"]


def nbdeploy_events() -> list[dict[str, Any]]:
    from nbdeploy.deployment.store import DeploymentStore
    from nbdeploy.store import default_store

    return DeploymentStore(default_store()).events("scale")


def test_a_new_version_that_fails_its_example_request_leaves_the_old_one(deployed):
    notebook = define(
        "import numpy as np\n"
        "X = np.array([[0.1, 0.2], [0.3, 0.4]])\n"
        "def scale(rows: list[list[float]]) -> list[float]:\n"
        "    raise RuntimeError('broken')\n"
    )
    with Load(deployed) as load, pytest.raises(Exception) as raised:
        nbdeploy.deploy(
            notebook["scale"], name="scale", mlflow=False, reference="X", namespace=notebook
        )
    message = str(raised.value)
    assert "did not take over; v1 is still serving at" in message
    assert "answered its example request with 500" in message
    assert load.failed == 0, load.outcomes
    assert roles() == [("live", 1), ("router", 0)]
    assert ask(deployed, 1.0)[1] == [2.0]


def test_recreate_reports_its_downtime(deployed, capsys):
    result = nbdeploy.deploy(
        scaler(5), name="scale", mlflow=False, strategy="recreate", notify=print
    )
    assert "had no version serving for" in capsys.readouterr().out
    assert ask(result.deployment.url, 1.0)[1] == [5.0]
    assert roles() == [("live", 2), ("router", 0)]


def test_an_erroring_canary_is_rolled_back_on_its_own(deployed):
    with Load(deployed) as load:
        time.sleep(0.3)
        with pytest.raises(Exception) as raised:
            nbdeploy.deploy(
                scaler(3, fail_above=0.5),
                name="scale",
                mlflow=False,
                strategy="canary",
                steps=[50, 100],
                interval=2,
                wait=True,
            )
    assert "canary v2 rolled back: success rate" in str(raised.value)
    assert load.outcomes["200"] > 0 and "error: URLError" not in load.outcomes
    plan = canary.read_plan("scale")
    assert plan is not None and plan.status == "rolled back" and "success rate" in plan.reason
    assert plan.history[-1]["requests"] > 0 and plan.history[-1]["breach"] == plan.reason
    assert roles() == [("live", 1), ("router", 0)]
    assert [ask(deployed, 1.0)[1] for _ in range(20)] == [[2.0]] * 20
    [event] = [e for e in nbdeploy_events() if e["kind"] == "canary-rolled-back"]
    assert "success rate" in event["reason"]


def test_status_of_one_deployment_tells_its_rollout(deployed, cli):
    nbdeploy.deploy(scaler(3), name="scale", mlflow=False, strategy="canary", weight=20)
    text = cli("status", "scale").out
    assert "traffic v1 80% · v2 20%" in text and "canary v2: running at 20% (step 1 of" in text
    assert "canary-started" in text
    [entry] = cli("status", "scale", "--json").json
    assert entry["rollout"]["canary"]["status"] == "running"
    assert entry["rollout"]["split"] == "v1 80% · v2 20%"
    cli("rollback", "scale")
    text = cli("status", "scale").out
    assert "canary v2: rolled back: rolled back by the user" in text


def test_a_canary_in_the_background_is_promoted_by_hand(deployed, cli):
    result = nbdeploy.deploy(
        scaler(3), name="scale", mlflow=False, strategy="canary", weight=30, interval=600
    )
    assert result.deployment.live_version == 1  # the canary is not live yet
    assert roles() == [("candidate", 2), ("live", 1), ("router", 0)]
    seen = Counter(ask(deployed, 1.0)[2]["x-nbdeploy-version"] for _ in range(200))
    assert set(seen) == {"v1", "v2"} and 20 < seen["v2"] < 100, seen
    promoted = cli("promote", "scale", "--json")
    assert promoted.code == 0, promoted
    assert promoted.json["live_version"] == 2
    assert roles() == [("live", 2), ("router", 0), ("standby", 1)]
    assert canary.read_plan("scale").status == "promoted"  # type: ignore[union-attr]


def test_rollback_aborts_a_canary_in_progress(deployed, cli):
    nbdeploy.deploy(scaler(3), name="scale", mlflow=False, strategy="canary", interval=600)
    rolled = cli("rollback", "scale", "--json")
    assert rolled.code == 0, rolled
    assert rolled.json["live_version"] == 1
    assert roles() == [("live", 1), ("router", 0)]
    plan = canary.read_plan("scale")
    assert plan is not None and plan.reason == "rolled back by the user"


def test_weights_split_traffic_by_hand(deployed, cli):
    nbdeploy.deploy(scaler(3), name="scale", mlflow=False)
    result = cli("weights", "scale", "v1=50", "v2=50")
    assert result.code == 0, result
    seen = Counter(ask(deployed, 1.0)[1][0] for _ in range(200))
    assert set(seen) == {2.0, 3.0} and min(seen.values()) > 50, seen
    wrong = cli("weights", "scale", "v9=100")
    assert wrong.code != 0 and "no running version v9" in wrong.err


def test_a_standby_is_stopped_after_its_keep_warm_time(deployed):
    nbdeploy.deploy(scaler(3), name="scale", mlflow=False, keep_warm=1)
    standby = next(s for s in nbdeploy.status("scale")[0].servers if s.role == "standby")
    deadline = time.monotonic() + 30
    while psutil.pid_exists(standby.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not psutil.pid_exists(standby.pid) or psutil.Process(standby.pid).status() == "zombie"
    # The daemon records the retired standby's end just after it stopped it.
    while roles() != [("live", 2), ("router", 0)] and time.monotonic() < deadline + 10:
        time.sleep(0.2)
    assert roles() == [("live", 2), ("router", 0)]
    assert nbdeploy.status("scale")[0].status == "serving"


def test_stop_ends_the_router_and_every_version(home):
    result = nbdeploy.deploy(scaler(2), name="scale", mlflow=False)
    pids = [s.pid for s in result.deployment.servers]
    nbdeploy.stop("scale")
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie" for p in pids)
    with pytest.raises(OSError):
        ask(result.deployment.url, 1.0)


def test_the_router_and_versions_outlive_a_kernel_restart(home, tmp_path, cli):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "JPY_"))}
    km, kc = start_new_kernel(kernel_name="python3", env=env, cwd=str(tmp_path))
    try:
        execute(kc, "%load_ext nbdeploy")
        execute(
            kc,
            "def scale(values: list[float]) -> list[float]:\n    return [7 * v for v in values]\n",
        )
        execute(kc, "%deploy scale --no-mlflow")
        url = cli("status", "scale", "--json").json[0]["url"]
        km.restart_kernel(now=True)
        kc.wait_for_ready(timeout=60)
        assert ask(url, 1.0)[1] == [7.0]
        status = cli("status", "scale", "--json").json[0]
        assert status["status"] == "serving" and status["url"] == url
        execute(kc, "%load_ext nbdeploy")
        output = execute(kc, "%deploy status scale")
        assert "serving" in output
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
        cli("stop", "scale")


def test_the_router_speaks_http_properly(deployed):
    """Keep-alive, request ids, a JSON 404 for the router's own paths, and bodies sent
    in chunks."""
    import http.client

    host, port = deployed.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    for value in (1.0, 2.0, 3.0):  # one connection, several requests
        connection.request(
            "POST", "/scale", json.dumps({"values": [value]}), {"X-Request-ID": f"id-{value}"}
        )
        answer = connection.getresponse()
        assert answer.status == 200 and json.loads(answer.read()) == [2 * value]
        assert answer.getheader("X-Request-ID") == f"id-{value}"
        assert answer.getheader("X-Nbdeploy-Version") == "v1"
    body = json.dumps({"values": [random.random()]}).encode()
    connection.putrequest("POST", "/scale")
    connection.putheader("Transfer-Encoding", "chunked")
    connection.putheader("Content-Type", "application/json")
    connection.endheaders()
    connection.send(b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
    answer = connection.getresponse()
    assert answer.status == 200 and len(json.loads(answer.read())) == 1
    deadline = time.monotonic() + 5  # the router writes its state every half second
    while traffic.read_state("scale")["versions"]["v1"]["requests"] < 4:
        assert time.monotonic() < deadline, traffic.read_state("scale")
        time.sleep(0.1)
    assert traffic.read_state("scale")["versions"]["v1"]["errors"] == 0


def feedback(url: str, body: Any) -> tuple[int, Any]:
    request = urllib.request.Request(
        url + "/feedback",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def ask_as(url: str, user: str) -> dict[str, str]:
    request = urllib.request.Request(
        url + "/scale",
        data=json.dumps({"values": [1.0]}).encode(),
        headers={"Content-Type": "application/json", "X-User": user},
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        answer.read()
        return {k.lower(): v for k, v in answer.headers.items()}


def test_an_ab_test_is_sticky_takes_feedback_and_decides(deployed, cli):
    nbdeploy.deploy(scaler(3), name="scale", mlflow=False, strategy="ab", sticky="header:X-User")
    assert roles() == [("candidate", 2), ("live", 1), ("router", 0)]
    arms: dict[str, str] = {}
    for round_ in range(3):
        for user in range(150):
            headers = ask_as(deployed, f"user-{user}")
            arm = headers["x-nbdeploy-version"]
            assert arms.setdefault(f"user-{user}", arm) == arm  # sticky per key
            if round_ == 0:
                # the new version converts, the old one does not: a clear winner
                status, _ = feedback(
                    deployed, {"request_id": headers["x-request-id"], "label": arm == "v2"}
                )
                assert status == 200
    assert 40 < sum(1 for a in arms.values() if a == "v2") < 110
    assert feedback(deployed, {"request_id": "nobody", "label": 1})[0] == 404
    assert feedback(deployed, {"request_id": "x", "label": 3})[0] == 400
    report = cli("ab", "scale", "--json")
    assert report.code == 0, report
    [comparison] = report.json["comparisons"]
    assert (comparison["control"], comparison["treatment"]) == ("v1", "v2")
    assert comparison["decision"] == "treatment better"
    text = cli("ab", "scale").out
    assert "v2 vs v1: treatment better" in text
    promoted = cli("promote", "scale", "--json")
    assert promoted.code == 0 and promoted.json["live_version"] == 2, promoted
    assert roles() == [("live", 2), ("router", 0), ("standby", 1)]
    assert {ask_as(deployed, "user-1")["x-nbdeploy-version"] for _ in range(10)} == {"v2"}


def test_status_shows_the_latest_rollout_not_a_replaced_one(deployed, cli):
    nbdeploy.deploy(scaler(3), name="scale", mlflow=False, strategy="canary", interval=600)
    assert cli("promote", "scale").code == 0
    shown = cli("status", "scale").out
    assert "canary v2: promoted" in shown and "canary-promoted" in shown
    assert cli("stop", "scale").code == 0
    shown = cli("status", "scale").out
    assert "canary v2" not in shown and "canary-promoted" not in shown and "stopped" in shown
    nbdeploy.deploy(scaler(4), name="scale", mlflow=False)
    shown = cli("status", "scale").out
    assert "canary" not in shown, shown  # a newer rollout replaced it
    rollout = nbdeploy.api.rollout_state("scale")
    assert rollout["canary"] is None
    assert [e["kind"] for e in rollout["events"]] == ["switched"]


def test_a_rollback_can_go_to_any_kept_version(deployed, cli):
    nbdeploy.deploy(scaler(3), name="scale", mlflow=False)
    nbdeploy.deploy(scaler(4), name="scale", mlflow=False)
    assert ask(deployed, 1.0)[1] == [4.0]
    done = cli("rollback", "scale", "--to", "1", "--json")
    assert done.code == 0, done
    assert done.json["live_version"] == 1 and ask(deployed, 1.0)[1] == [2.0]
    missing = cli("rollback", "scale", "--to", "9")
    assert missing.code != 0 and "scale has no version v9" in missing.err
    assert "kept versions: v1, v2, v3" in missing.err
    serving = cli("rollback", "scale", "--to", "1")
    assert serving.code != 0 and "v1 of scale already serves" in serving.err
    assert nbdeploy.rollback("scale", to=3).live_version == 3  # forward again, from Python
    assert ask(deployed, 1.0)[1] == [4.0]


def ab_when(cli: Any, condition: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The A/B report once ``condition`` holds (the router writes its logs out every half
    second)."""
    deadline = time.monotonic() + 10
    while not condition(report := cli("ab", "scale", "--json").json):
        assert time.monotonic() < deadline, report
        time.sleep(0.2)
    return report


def test_each_ab_experiment_has_its_id_and_feedback_survives_a_router_restart(deployed, cli):
    import signal as signals

    nbdeploy.deploy(scaler(3), name="scale", mlflow=False, strategy="ab")
    first = [ask_as(deployed, f"a-{n}") for n in range(40)]
    for headers in first:
        assert feedback(deployed, {"request_id": headers["x-request-id"], "label": 1})[0] == 200
    experiment_one = cli("ab", "scale", "--json").json["experiment"]
    assert experiment_one and experiment_one.startswith("v2-vs-v1-")
    nbdeploy.rollback("scale")  # ends the first experiment
    time.sleep(1.1)  # a new experiment id (its time in seconds)
    nbdeploy.deploy(scaler(4), name="scale", mlflow=False, strategy="ab")
    second = [ask_as(deployed, f"b-{n}") for n in range(30)]
    report = ab_when(cli, lambda found: sum(arm["requests"] for arm in found["arms"]) == 30)
    assert report["experiment"] != experiment_one
    assert report["experiments"] == [experiment_one, report["experiment"]]
    # Every view's traffic line names the running experiment (status, sidebar, dashboards).
    assert api.rollout_state("scale")["split"].endswith(f"(A/B {report['experiment']})")
    # The second experiment's arms and requests only; no outcome of the first one counts.
    assert sum(arm["requests"] for arm in report["arms"]) == 30
    assert sum(arm["outcomes"] for arm in report["arms"]) == 0
    old = cli("ab", "scale", "--experiment", experiment_one, "--json").json
    assert sum(arm["outcomes"] for arm in old["arms"]) == 40
    # kill -9 of the router: it comes back, and feedback for requests it answered before
    # is still taken (the request ids are read back from the log).
    router = next(s for s in nbdeploy.status("scale")[0].servers if s.role == "router")
    os.kill(router.pid, signals.SIGKILL)
    deadline = time.monotonic() + 30
    while True:
        try:
            status, answer = feedback(
                deployed, {"request_id": second[0]["x-request-id"], "label": 1}
            )
            if status == 200:
                break
        except OSError:
            status = None
        assert time.monotonic() < deadline, status
        time.sleep(0.2)
    assert answer["experiment"] == report["experiment"]
    assert answer["arm"] == second[0]["x-nbdeploy-version"]
    ab_when(cli, lambda found: sum(arm["outcomes"] for arm in found["arms"]) == 1)
    assert cli("ab", "scale", "--experiment", "nope").code != 0
    nbdeploy.rollback("scale")


def test_a_shadow_never_changes_the_answer_and_survives_a_crashing_candidate(deployed, cli):
    nbdeploy.deploy(scaler(3), name="scale", mlflow=False, strategy="shadow")
    assert [ask(deployed, 1.0)[1] for _ in range(30)] == [[2.0]] * 30
    deadline = time.monotonic() + 30
    while (report := cli("shadow", "scale", "--json").json)["mirrored"] < 30:
        assert time.monotonic() < deadline, (report, traffic.read_state("scale"))
        time.sleep(0.2)
    assert report["agreement_rate"] == 0.0 and report["candidate_errors"] == 0
    assert "agreement with the live answers: 0.0% of" in cli("shadow", "scale").out

    crashing = define(
        "import os\n"
        "def scale(values: list[float]) -> list[float]:\n"
        "    if values == [1.0]:\n"
        "        os._exit(1)  # the whole worker dies\n"
        "    return [2 * v for v in values]\n"
    )["scale"]
    nbdeploy.deploy(crashing, name="scale", mlflow=False, strategy="shadow")
    assert [ask(deployed, 1.0)[1] for _ in range(20)] == [[2.0]] * 20
    assert [ask(deployed, 0.5)[1] for _ in range(5)] == [[1.0]] * 5
    rolled = cli("rollback", "scale", "--json")
    assert rolled.code == 0 and rolled.json["live_version"] == 1, rolled
    assert roles() == [("live", 1), ("router", 0)]


def test_an_api_key_guards_the_router_and_never_shows_in_outputs(home, cli, capsys):
    result = nbdeploy.deploy(scaler(2), name="scale", mlflow=False, auth="key", notify=print)
    url = result.deployment.url
    printed = capsys.readouterr().out
    key = cli("key", "scale").out.strip()
    assert len(key) > 30 and key not in printed and "nbdeploy key scale" in printed
    assert ask(url, 1.0)[0] == 401
    keyfile = home / "keys" / "scale"
    assert oct(keyfile.stat().st_mode & 0o777) == "0o600"

    def with_key(token: str) -> int:
        request = urllib.request.Request(
            url + "/scale",
            data=b'{"values": [1.0]}',
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return answer.status
        except urllib.error.HTTPError as error:
            return error.code

    assert with_key(key) == 200 and with_key(key + "x") == 401
    assert urllib.request.urlopen(url + "/readyz", timeout=10).status == 200  # health: open
    from nbdeploy.deployment.report import describe_deploy

    assert "$(nbdeploy key scale)" in describe_deploy(result) and key not in describe_deploy(result)
    # a later deploy keeps the key; a rotation replaces it at once
    nbdeploy.deploy(scaler(3), name="scale", mlflow=False)
    assert ask(url, 1.0)[0] == 401 and with_key(key) == 200
    rotated = cli("key", "scale", "--rotate").out.strip()
    assert rotated != key and with_key(key) == 401 and with_key(rotated) == 200
    nbdeploy.stop("scale")


def test_listening_beyond_loopback_always_needs_a_key(home, monkeypatch):
    monkeypatch.setenv("NBDEPLOY_ALLOW_REMOTE", "1")
    with pytest.raises(Exception, match="needs an API key"):
        nbdeploy.deploy(scaler(2), name="scale", mlflow=False, host="0.0.0.0", auth="none")
    result = nbdeploy.deploy(scaler(2), name="scale", mlflow=False, host="0.0.0.0")
    try:
        port = result.deployment.port
        assert ask(f"http://127.0.0.1:{port}", 1.0)[0] == 401
        live = [s for s in result.deployment.servers if s.role == "live"]
        assert live and all(s.host == "127.0.0.1" for s in live)  # versions stay on loopback
    finally:
        nbdeploy.stop("scale")


def test_a_canary_retires_the_warm_standby_it_routes_without(deployed):
    nbdeploy.deploy(scaler(3), name="scale", mlflow=False)
    [standby] = [s for s in nbdeploy.status("scale")[0].servers if s.role == "standby"]
    nbdeploy.deploy(scaler(4), name="scale", mlflow=False, strategy="canary", interval=600)
    assert roles() == [("candidate", 3), ("live", 2), ("router", 0)]
    assert not psutil.pid_exists(standby.pid) or psutil.Process(standby.pid).status() == "zombie"
    nbdeploy.rollback("scale")  # ends the canary
    assert roles() == [("live", 2), ("router", 0)]


def test_a_deploy_during_a_canary_takes_over_at_once(deployed):
    nbdeploy.deploy(scaler(3), name="scale", mlflow=False, strategy="canary", interval=600)
    assert canaries_supervised() == ["scale"]
    started = time.monotonic()
    result = nbdeploy.deploy(scaler(4), name="scale", mlflow=False)
    assert time.monotonic() - started < 60  # it did not wait for the canary's steps
    assert result.deployment.live_version == 3 and ask(deployed, 1.0)[1] == [4.0]
    assert roles() == [("live", 3), ("router", 0), ("standby", 1)]
    assert canary.read_plan("scale").status == "superseded"  # type: ignore[union-attr]
    deadline = time.monotonic() + 10
    while canaries_supervised():
        assert time.monotonic() < deadline, "the canary's controller did not stop"
        time.sleep(0.2)


def canaries_supervised() -> list[str]:
    """The deployments whose canary the daemon's controllers run now."""
    from nbdeploy.deployment.runtime import admin

    children = admin.status().get("children", [])
    return [child["deployment"] for child in children if child["kind"] == "canary"]


def test_a_canary_without_traffic_says_it_had_nothing_to_judge(deployed, capsys):
    result = nbdeploy.deploy(
        scaler(3),
        name="scale",
        mlflow=False,
        strategy="canary",
        steps=[50, 100],
        interval=1,
        wait=True,
        notify=print,
    )
    out = capsys.readouterr().out
    assert "no request reached it at 50%: nothing to judge in this step" in out
    assert result.deployment.live_version == 2
    plan = canary.read_plan("scale")
    assert plan is not None and plan.status == "promoted"
    assert [step["requests"] for step in plan.history] == [0, 0]


def test_a_failed_deploy_keeps_the_metrics_of_a_running_experiment(deployed, home):
    nbdeploy.deploy(scaler(3), name="scale", mlflow=False, strategy="ab")
    [candidate] = [s for s in nbdeploy.status("scale")[0].servers if s.role == "candidate"]
    metrics = home / "deployments" / "scale" / "metrics" / Path(candidate.log_path).stem
    assert metrics.is_dir()
    notebook = define(
        "import numpy as np\n"
        "X = np.array([[0.1, 0.2]])\n"
        "def scale(rows: list[list[float]]) -> list[float]:\n"
        "    raise RuntimeError('broken')\n"
    )
    with pytest.raises(Exception, match="did not take over"):
        nbdeploy.deploy(
            notebook["scale"], name="scale", mlflow=False, reference="X", namespace=notebook
        )
    assert roles() == [("candidate", 2), ("live", 1), ("router", 0)]
    assert metrics.is_dir()  # the experiment's candidate still runs, with its Prometheus files


def test_the_example_call_goes_to_the_version_just_deployed(deployed):
    # A canary at 1%: through the deployment's address, the stable v1 would answer.
    from nbdeploy.widgets.deployment import call_example

    result = nbdeploy.deploy(
        scaler(3), name="scale", mlflow=False, strategy="canary", weight=1, interval=600
    )
    data = {**result.to_dict(), "example": {"values": [2.0]}}
    answers = {call_example(data) for _ in range(20)}
    assert answers == {(200, "[6.0]")}, answers
    nbdeploy.rollback("scale")


def test_a_name_another_notebook_deployed_is_taken_over_only_when_asked(home):
    train = {"notebook": "/work/project/train.ipynb"}
    nbdeploy.deploy(scaler(2), name="owned", mlflow=False, source=train)
    # The same notebook, as JupyterLab names it (relative to its root): no question.
    nbdeploy.deploy(scaler(3), name="owned", mlflow=False, source={"notebook": "train.ipynb"})
    with pytest.raises(
        DeployError, match=r"deployed from train\.ipynb; this deploy comes from other\.ipynb"
    ) as refused:
        nbdeploy.deploy(scaler(4), name="owned", mlflow=False, source={"notebook": "other.ipynb"})
    assert refused.value.hint is not None and "--replace" in refused.value.hint
    assert nbdeploy.status("owned")[0].live_version == 2  # v2 (factor 3) still serves
    taken = nbdeploy.deploy(
        scaler(4), name="owned", mlflow=False, source={"notebook": "other.ipynb"}, replace=True
    )
    assert taken.deployment.live_version == 3
    nbdeploy.stop("owned")  # a stopped deployment is anybody's to deploy again
    again = nbdeploy.deploy(scaler(5), name="owned", mlflow=False, source=train)
    assert again.deployment.status == "serving"
    nbdeploy.stop("owned")
