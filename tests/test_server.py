"""The Jupyter Server extension: the REST API under /nbdeploy/api/ (nbdeploy/server/).

Handler tests run a real Jupyter server in this process (pytest-jupyter's ``jp_fetch``,
``jp_serverapp``, ``jp_root_dir``) with the extension enabled as the installed config file
enables it; the integration tests deploy, run and stop through the API with real kernels
and a real BentoML service on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import post
from tornado.httpclient import HTTPClientError, HTTPResponse

pytest_plugins = ["pytest_jupyter.jupyter_server"]

NOTEBOOK_CELLS: list[Any] = [
    (
        "factor: float = 2.0  # multiplier\n"
        "label: str = 'x'  # a name\n"
        "pause: float = 0.0  # seconds to wait (a slow build)\n",
        ["parameters"],
    ),
    "import time\nimport nbdeploy\n\ntime.sleep(pause)\nnbdeploy.log_metric('score', factor * 10)",
    "def helper(value: float) -> float:\n    return value * factor\n",
    (
        "def predict(values: list[float]) -> list[float]:\n"
        "    return [helper(v) for v in values]\n",
        ["nbdeploy:serve"],
    ),
    ("def explore():\n    pass\n", ["nbdeploy:skip"]),
]


@pytest.fixture
def jp_server_config() -> dict[str, Any]:
    return {"ServerApp": {"jpserver_extensions": {"nbdeploy": True}}}


@pytest.fixture
def notebook(jp_root_dir: Path, make_notebook: Any) -> Path:
    path: Path = make_notebook("model.ipynb", NOTEBOOK_CELLS, folder=jp_root_dir / "work")
    return path


@pytest.fixture
def stop_deployments(home: Path) -> Iterator[None]:
    """Every service an API test started is stopped after it."""
    yield
    from nbdeploy.deployment import verbs

    for deployment in verbs.status():
        verbs.stop(deployment.name)


async def call(jp_fetch: Any, *parts: str, method: str = "GET", body: Any = None, **kw: Any) -> Any:
    """``jp_fetch`` under nbdeploy/api/: (status, JSON) without raising on 4xx."""
    if body is None and method == "POST":
        body = "{}"
    if body is not None and not isinstance(body, str | bytes):
        body = json.dumps(body)
    try:
        response: HTTPResponse = await jp_fetch(
            "nbdeploy", "api", *parts, method=method, body=body, **kw
        )
    except HTTPClientError as error:
        assert error.response is not None, error
        return error.code, json.loads(error.response.body)
    return response.code, json.loads(response.body)


async def wait_for(jp_fetch: Any, operation: dict[str, Any], timeout: float = 240) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code, state = await call(jp_fetch, "operations", operation["id"])
        assert code == 200
        assert not state["steps"] or 0 <= state["step"] <= state["steps"], state  # never 7 of 6
        if state["status"] != "running":
            return state
        await asyncio.sleep(0.25)
    raise AssertionError(f"operation {operation['id']} still running after {timeout} s")


def api_url(base_url: str, path: str) -> str:
    return f"{base_url}nbdeploy/api/{path}"


# -- security ----------------------------------------------------------------------------
async def test_every_endpoint_refuses_requests_without_a_token(
    http_server_client: Any, jp_serverapp: Any, jp_base_url: str
) -> None:
    client = http_server_client  # a raw client: no token, no cookie
    reads = ["deployments", "deployments/x", "deployments/x/metrics", "runs", "runs/x"]
    reads += ["notebooks/params?path=a.ipynb", "operations", "operations/x"]
    writes = ["deployments", "deployments/x/stop", "deployments/x/rollback", "runs"]
    writes += ["deployments/x/promote", "deployments/x/weights"]
    reads += ["schedules", "schedules/x", "schedules/x/history"]
    writes += ["schedules", "schedules/x/pause", "schedules/x/resume", "schedules/x/run-now"]
    writes += ["schedules/x/remove"]
    for path, method in [(p, "GET") for p in reads] + [(p, "POST") for p in writes]:
        response = await client.fetch(
            api_url(jp_base_url, path),
            method=method,
            body="{}" if method == "POST" else None,
            raise_error=False,
        )
        assert response.code == 403, (method, path, response.code)


async def test_cookie_sessions_need_the_xsrf_token_to_write(
    http_server_client: Any, jp_serverapp: Any, jp_base_url: str, jp_auth_header: dict[str, str]
) -> None:
    client = http_server_client
    # a token request sets the login cookie; the login page sets the _xsrf cookie
    first = await client.fetch(api_url(jp_base_url, "deployments"), headers=jp_auth_header)
    login = await client.fetch(f"{jp_base_url}login", raise_error=False)
    cookies: dict[str, str] = {}
    for response in (first, login):
        for header in response.headers.get_list("Set-Cookie"):
            name, _, rest = header.partition("=")
            cookies[name] = rest.split(";")[0]
    xsrf = cookies.pop("_xsrf")
    login_cookie = "; ".join(f"{k}={v}" for k, v in cookies.items())
    url = api_url(jp_base_url, "deployments")
    read = await client.fetch(url, headers={"Cookie": login_cookie}, raise_error=False)
    assert read.code == 200 and json.loads(read.body) == []
    body = json.dumps({"path": "missing.ipynb"})
    refused = await client.fetch(
        url, method="POST", body=body, headers={"Cookie": login_cookie}, raise_error=False
    )
    assert refused.code == 403
    assert "_xsrf" in json.loads(refused.body)["error"]
    accepted = await client.fetch(
        url,
        method="POST",
        body=body,
        headers={"Cookie": f"{login_cookie}; _xsrf={xsrf}", "X-XSRFToken": xsrf},
        raise_error=False,
    )
    assert accepted.code == 404  # past the XSRF check: the notebook does not exist
    assert json.loads(accepted.body)["field"] == "path"


@pytest.fixture
def outside(tmp_path: Path, jp_root_dir: Path) -> Path:
    """A notebook-named FIFO outside the root: opening it would block the test, so a
    request that reads it cannot pass unnoticed; and symlinks to it inside the root."""
    folder = tmp_path / "outside"
    folder.mkdir()
    secret = folder / "secret.ipynb"
    os.mkfifo(secret)
    (jp_root_dir / "link.ipynb").symlink_to(secret)
    (jp_root_dir / "linked").symlink_to(folder, target_is_directory=True)
    (jp_root_dir / ".hidden").mkdir()
    (jp_root_dir / ".hidden" / "x.ipynb").write_text("{}", encoding="utf-8")
    return secret


async def test_paths_outside_the_root_are_refused_and_never_read(
    jp_fetch: Any, jp_root_dir: Path, outside: Path
) -> None:
    relative = os.path.relpath(outside, jp_root_dir)
    assert relative.startswith("..")
    bad = [relative, str(outside), "link.ipynb", "linked/secret.ipynb", ".hidden/x.ipynb"]
    bad += ["work/../../outside/secret.ipynb", "~/secret.ipynb", ""]
    for path in bad:
        code, error = await call(jp_fetch, "notebooks", "params", params={"path": path})
        assert code == 400 and error["field"] == "path", (path, error)
        code, error = await call(jp_fetch, "deployments", method="POST", body={"path": path})
        assert code == 400 and error["field"] == "path", (path, error)
        code, error = await call(jp_fetch, "runs", method="POST", body={"path": path})
        assert code == 400 and error["field"] == "path", (path, error)
    code, error = await call(jp_fetch, "notebooks", "params", params={"path": "nothing.ipynb"})
    assert code == 404 and error["field"] == "path"
    code, error = await call(jp_fetch, "notebooks", "params", params={"path": "x.py"})
    assert code == 400 and ".ipynb" in error["error"]


async def test_a_pipeline_whose_steps_leave_the_root_is_refused(
    jp_fetch: Any, jp_root_dir: Path, tmp_path: Path, make_notebook: Any
) -> None:
    make_notebook("step.ipynb", ["x = 1"], folder=tmp_path / "elsewhere")
    (jp_root_dir / "pipeline.yaml").write_text(
        "steps:\n  - name: away\n    notebook: ../elsewhere/step.ipynb\n", encoding="utf-8"
    )
    code, error = await call(jp_fetch, "runs", method="POST", body={"path": "pipeline.yaml"})
    assert code == 400 and error["field"] == "path" and "outside" in error["error"], error


# -- validation --------------------------------------------------------------------------
async def test_invalid_bodies_get_4xx_naming_the_field(jp_fetch: Any, notebook: Path) -> None:
    path = "work/model.ipynb"
    cases: list[tuple[tuple[str, ...], Any, int, str | None]] = [
        (("deployments",), {"path": path, "bogus": 1}, 422, "bogus"),
        (("deployments",), {"name": "x"}, 422, "path"),
        (("deployments",), {"path": path, "name": "Not A Name!"}, 422, "name"),
        (("deployments",), {"path": path, "function": "1x"}, 422, "function"),
        (("deployments",), {"path": path, "strategy": "yolo"}, 422, "strategy"),
        (("deployments",), {"path": path, "parameters": [1]}, 422, "parameters"),
        (("deployments",), {"path": path, "parameters": {"factor": "lots"}}, 422, "parameters"),
        (("deployments",), {"path": path, "parameters": {"nope": 1}}, 422, "parameters"),
        (("runs",), {"path": path, "parameters": {"factor": "lots"}}, 422, "parameters"),
        (("runs",), {"path": path, "sweep": {"factor": []}}, 422, "sweep"),
        (("runs",), {"path": path, "sweep": {"nope": [1, 2]}}, 422, "sweep"),
        (("runs",), {"path": path, "sweep": {"factor": 3}}, 422, "sweep.factor"),
        (("deployments", "x", "weights"), {"weights": {"one": 1}}, 422, "weights"),
        (("deployments", "x", "weights"), {"weights": {"1": 0}}, 422, "weights"),
        (("deployments", "x", "weights"), {"split": {}}, 422, "weights"),
        (("deployments", "x", "rollback"), {"to": 0}, 422, "to"),
        (("deployments", "x", "rollback"), {"to": "latest"}, 422, "to"),
    ]
    for parts, body, status, field in cases:
        code, error = await call(jp_fetch, *parts, method="POST", body=body)
        assert (code, error["field"]) == (status, field), (parts, body, error)
        assert error["error"] and "Traceback" not in error["error"]
    code, error = await call(jp_fetch, "runs", method="POST", body="{not json")
    assert code == 400 and "not JSON" in error["error"]
    code, error = await call(jp_fetch, "runs", params={"limit": "many"})
    assert (code, error["field"]) == (422, "limit")
    code, error = await call(jp_fetch, "deployments", "metrics-less", "metrics")
    assert code == 404 and error["error"] == "no deployment named 'metrics-less'"
    code, error = await call(jp_fetch, "deployments", "x", "metrics", params={"window": "soon"})
    assert code in (404, 422)
    code, error = await call(jp_fetch, "runs", "no-such-run")
    assert code == 404 and "no-such-run" in error["error"]
    code, error = await call(jp_fetch, "operations", "nope")
    assert code == 404 and set(error) == {"error", "field", "hint"}
    code, error = await call(jp_fetch, "deployments", "x", "stop", method="POST", body={})
    assert code == 404 and "no deployment named 'x'" in error["error"]


async def test_a_metrics_read_that_fails_in_the_server_is_a_5xx_with_its_reason(
    jp_fetch: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure of the server's own (a log it cannot read, a bug) is not the client's: 500
    with the reason, never a 4xx. (Simulated: such a failure cannot be caused from here.)"""
    from nbdeploy import api
    from nbdeploy.errors import NbdeployError

    def broken(name: str, window: str) -> None:
        raise NbdeployError("the request log of x is not readable: disk I/O error")

    monkeypatch.setattr(api, "metrics", broken)
    code, error = await call(jp_fetch, "deployments", "x", "metrics")
    assert code == 500, error
    assert error["error"] == (
        "the metrics of x could not be read: the request log of x is not readable: disk I/O error"
    )

    def crashed(name: str, window: str) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(api, "metrics", crashed)
    code, error = await call(jp_fetch, "deployments", "x", "metrics")
    assert code == 500 and "OSError" in error["error"] and "Traceback" not in error["error"]


async def test_notebook_params_are_typed_with_the_functions_a_deploy_can_serve(
    jp_fetch: Any, notebook: Path
) -> None:
    code, data = await call(jp_fetch, "notebooks", "params", params={"path": "work/model.ipynb"})
    assert code == 200
    assert data["path"] == "work/model.ipynb"
    assert data["parameters"][0] == {
        "name": "factor",
        "type": "float",
        "default": 2.0,
        "help": "multiplier",
    }
    assert [p["name"] for p in data["parameters"]] == ["factor", "label", "pause"]
    assert data["functions"] == ["predict", "helper"]


def test_loading_the_extension_imports_no_heavy_library(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from jupyter_server.serverapp import ServerApp\n"
        "app = ServerApp()\n"
        "app.initialize(argv=['--ServerApp.jpserver_extensions=nbdeploy=True',\n"
        f"    '--ServerApp.root_dir={tmp_path}', '--ServerApp.open_browser=False',\n"
        "    '--ServerApp.port=0'])\n"
        "def patterns(router):\n"
        "    for rule in getattr(router, 'rules', []):\n"
        "        yield getattr(rule.matcher, 'regex', None) and rule.matcher.regex.pattern\n"
        "        yield from patterns(rule.target)\n"
        "rules = [p for p in patterns(app.web_app.default_router) if p]\n"
        "assert any('nbdeploy/api/deployments' in r for r in rules), rules\n"
        "heavy = ('bentoml', 'mlflow', 'papermill', 'sklearn', 'pandas', 'numpy')\n"
        "print([m for m in heavy if m in sys.modules])\n"
    )
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime")}
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.strip().splitlines()[-1] == "[]", completed.stdout


def test_the_installed_config_enables_the_extension() -> None:
    import nbdeploy

    root = Path(__file__).resolve().parent.parent
    config = json.loads(
        (root / "jupyter-config" / "jupyter_server_config.d" / "nbdeploy.json").read_text()
    )
    assert config == {"ServerApp": {"jpserver_extensions": {"nbdeploy": True}}}
    assert nbdeploy._jupyter_server_extension_points() == [{"module": "nbdeploy.server"}]


# -- deploy, run and stop with real services -----------------------------------------------
@pytest.mark.integration
@pytest.mark.usefixtures("python_kernel", "stop_deployments")
async def test_deploy_serve_and_stop_through_the_api(jp_fetch: Any, notebook: Path) -> None:
    body = {
        "path": "work/model.ipynb",
        "name": "api-demo",
        "parameters": {"factor": 3.0, "pause": 1.0},
        "mlflow": False,
    }
    code, started = await call(jp_fetch, "deployments", method="POST", body=body)
    assert code == 202, started
    operation = started["operation"]
    assert operation["kind"] == "deploy" and operation["status"] == "running"
    # the server keeps answering while the notebook runs and the service builds
    code, listed = await call(jp_fetch, "deployments")
    assert code == 200
    code, state = await call(jp_fetch, "operations", operation["id"])
    assert code == 200 and state["status"] == "running"
    code, conflict = await call(jp_fetch, "deployments", method="POST", body=body)
    assert code == 409 and operation["id"] in conflict["error"]
    code, conflict = await call(jp_fetch, "deployments", "api-demo", "stop", method="POST")
    assert code == 409

    done = await wait_for(jp_fetch, operation)
    assert done["status"] == "succeeded", done
    assert done["result"]["name"] == "api-demo" and done["result"]["version"] == 1
    assert done["step"] == done["steps"] > 0 and done["messages"]
    code, listed = await call(jp_fetch, "deployments")
    assert code == 200
    [deployment] = listed
    assert deployment["status"] == "serving" and deployment["live_version"] == 1
    assert deployment["url"].startswith("http://127.0.0.1:")
    assert deployment["traffic"] == "v1" and deployment["servers"]
    answer = post(deployment["url"] + "/predict", {"values": [1, 2]})
    assert (answer[0], json.loads(answer[1])) == (200, [3.0, 6.0])

    code, detail = await call(jp_fetch, "deployments", "api-demo")
    assert code == 200 and [v["version"] for v in detail["versions"]] == [1]
    assert detail["versions"][0]["function"] == "predict"
    assert detail["rollout"]["split"] == "v1"
    # the service writes its request log in the background: wait for it
    deadline = time.monotonic() + 30
    while True:
        code, metrics = await call(
            jp_fetch, "deployments", "api-demo", "metrics", params={"window": "5m"}
        )
        assert code == 200 and metrics["name"] == "api-demo"
        code, listed = await call(jp_fetch, "deployments")
        summary = listed[0]["summary"]
        if metrics["requests"] >= 1 and summary and summary["requests"] >= 1:
            break
        assert time.monotonic() < deadline, (metrics, listed)
        await asyncio.sleep(0.5)
    assert set(summary) == {"requests_per_s", "p99_ms", "error_rate", "requests", "window"}
    assert summary["window"] == "10m"  # the same default as every other view

    code, weighted = await call(
        jp_fetch, "deployments", "api-demo", "weights", method="POST", body={"weights": {"1": 100}}
    )
    assert code == 200 and weighted["traffic"] == "v1"
    code, refused = await call(jp_fetch, "deployments", "api-demo", "rollback", method="POST")
    assert code == 409 and refused["error"]
    code, stopped = await call(jp_fetch, "deployments", "api-demo", "stop", method="POST")
    assert code == 200 and stopped["status"] == "stopped" and stopped["servers"] == []


@pytest.mark.integration
@pytest.mark.usefixtures("python_kernel")
async def test_run_a_notebook_and_a_sweep_through_the_api(jp_fetch: Any, notebook: Path) -> None:
    body = {"path": "work/model.ipynb", "parameters": {"factor": 4.5}, "mlflow": False}
    code, started = await call(jp_fetch, "runs", method="POST", body=body)
    assert code == 202 and started["operation"]["kind"] == "run"
    done = await wait_for(jp_fetch, started["operation"])
    assert done["status"] == "succeeded", done
    run_id = done["result"]["id"]
    code, run = await call(jp_fetch, "runs", run_id)
    assert code == 200 and run["status"] == "succeeded"
    assert run["parameters"]["factor"] == 4.5 and run["metrics"] == {"score": 45.0}
    code, runs = await call(jp_fetch, "runs", params={"limit": "5"})
    assert code == 200 and [r["id"] for r in runs] == [run_id]
    # The output notebook as a static page: HTML, no script, a sandboxing policy.
    page = await jp_fetch("nbdeploy", "api", "runs", run_id, "output")
    assert page.code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert page.headers["Content-Security-Policy"].startswith("sandbox")
    html = page.body.decode()
    assert "Parameters injected by nbdeploy" in html and ">4.5<" in html
    assert "<script" not in html.lower()
    assert "--jp-layout-color0: white" in html  # light unless the page asks for dark
    dark = await jp_fetch("nbdeploy", "api", "runs", run_id, "output", params={"theme": "dark"})
    assert "--jp-layout-color0: #111" in dark.body.decode()
    code, refused = await call(jp_fetch, "runs", run_id, "output", params={"theme": "neon"})
    assert code == 422 and refused["field"] == "theme", refused
    code, missing = await call(jp_fetch, "runs", "no-such-run", "output")
    assert code == 404, missing

    sweep = {"path": "work/model.ipynb", "sweep": {"factor": [1, 2]}, "mlflow": False}
    code, started = await call(jp_fetch, "runs", method="POST", body=sweep)
    assert code == 202
    done = await wait_for(jp_fetch, started["operation"])
    assert done["status"] == "succeeded" and done["steps"] == 2 == done["step"], done
    scores = sorted(r["metrics"]["score"] for r in done["result"]["runs"])
    assert scores == [10.0, 20.0]


@pytest.mark.integration
@pytest.mark.usefixtures("python_kernel")
async def test_a_failing_run_fails_its_operation_with_the_cell(
    jp_fetch: Any, jp_root_dir: Path, make_notebook: Any
) -> None:
    make_notebook("broken.ipynb", ["x = 1", "raise ValueError('bad data')"], folder=jp_root_dir)
    body = {"path": "broken.ipynb", "mlflow": False}
    code, started = await call(jp_fetch, "runs", method="POST", body=body)
    assert code == 202
    done = await wait_for(jp_fetch, started["operation"])
    assert done["status"] == "failed" and "bad data" in done["error"]["error"], done
    assert done["result"]["status"] == "failed"


def test_the_deploy_form_offers_the_training_inputs_as_reference() -> None:
    from nbdeploy.notebook.reader import read_notebook
    from nbdeploy.server.views import reference_candidates

    example = Path(__file__).resolve().parent.parent / "example_notebooks" / "train.ipynb"
    found = reference_candidates(read_notebook(example))
    assert found[0] == "X_train", found
    assert found.index("X_test") < found.index("y_train")  # labels last
    assert not {"n_estimators", "max_depth"} & set(found)  # parameters are not inputs


def test_an_operations_progress_never_counts_past_its_total() -> None:
    from nbdeploy.server.operations import Operation, OperationProgress

    operation = Operation(id="op", kind="run", subject=None)
    progress = OperationProgress(operation)
    progress.start("train.ipynb", 6)
    seen = []
    for position in range(1, 8):  # six cells, then the epilogue nbdeploy adds
        progress.cell_started(position, position, "")
        seen.append(operation.step)
    assert seen == [1, 2, 3, 4, 5, 6, 6]
    progress.finish(True, "done")
    assert operation.step == operation.steps == 6


# -- schedules ---------------------------------------------------------------------------
@pytest.fixture
def ends_the_daemon(home: Path) -> Iterator[None]:
    """The daemon a schedule test started stops after it, and with it its fires."""
    yield
    import psutil

    from nbdeploy.deployment.runtime import client

    client.shutdown(home)
    for process in psutil.process_iter():
        try:
            if process.pid != os.getpid() and process.environ().get("NBDEPLOY_HOME") == str(home):
                process.kill()
        except psutil.Error:
            continue


@pytest.mark.integration
async def test_schedules_through_the_api(
    jp_fetch: Any, notebook: Path, ends_the_daemon: None
) -> None:
    command = ["run", "work/model.ipynb", "-p", "factor", "3", "--no-mlflow"]
    body = {"name": "nightly", "command": command, "cron": "0 2 * * *", "tz": "Europe/Berlin"}
    code, added = await call(jp_fetch, "schedules", method="POST", body=body)
    assert code == 201, added
    code, listed = await call(jp_fetch, "schedules")
    assert code == 200 and [s["name"] for s in listed] == ["nightly"]
    assert listed[0]["status"] == "active" and listed[0]["next_fire"]
    # The command runs in the server's root: its notebook path was made absolute there.
    code, shown = await call(jp_fetch, "schedules", "nightly")
    assert code == 200 and str(notebook) in shown["spec"]["command"], shown
    code, fired = await call(jp_fetch, "schedules", "nightly", "run-now", method="POST")
    assert code == 200, fired
    deadline = time.monotonic() + 120
    while True:
        code, history = await call(jp_fetch, "schedules", "nightly", "history")
        assert code == 200
        if history and history[0]["status"] not in ("running", "queued"):
            break
        assert time.monotonic() < deadline, history
        await asyncio.sleep(0.5)
    fire = history[0]
    assert fire["status"] == "succeeded", fire
    assert fire["runs"], fire  # the run its command made, linked to the fire
    code, run = await call(jp_fetch, "runs", fire["runs"][0])
    assert code == 200 and run["metrics"]["score"] == 30.0 and run["trigger_id"] == fire["run_id"]
    code, _ = await call(jp_fetch, "schedules", "nightly", "pause", method="POST")
    assert code == 200
    code, shown = await call(jp_fetch, "schedules", "nightly")
    assert shown["status"] == "paused"
    code, _ = await call(jp_fetch, "schedules", "nightly", "remove", method="POST")
    assert code == 200
    code, listed = await call(jp_fetch, "schedules")
    assert listed == []


async def test_schedule_requests_that_do_not_hold_are_refused(
    jp_fetch: Any, notebook: Path, outside: Path, jp_root_dir: Path
) -> None:
    run = ["run", "work/model.ipynb"]
    relative = os.path.relpath(outside, jp_root_dir)
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"name": "x", "command": ["run", str(outside)], "cron": "0 2 * * *"}, 400, "outside"),
        ({"name": "x", "command": ["run", relative], "cron": "0 2 * * *"}, 400, "outside"),
        (
            {"name": "x", "command": [*run, "--output-dir", "/tmp/away"], "cron": "0 2 * * *"},
            400,
            "outside",
        ),
        ({"name": "x", "command": run, "cron": "0 25 * * *"}, 422, "cron"),
        ({"name": "x", "command": run, "cron": "0 2 * * *", "tz": "Mars/Base"}, 422, "zone"),
        ({"name": "x", "command": ["deploy", "work/model.ipynb"], "cron": "0 2 * * *"}, 422, "run"),
        ({"name": "x", "command": run}, 422, "--cron"),
        ({"name": "x", "command": [], "cron": "0 2 * * *"}, 422, "command"),
    ]
    for body, status, words in cases:
        code, error = await call(jp_fetch, "schedules", method="POST", body=body)
        assert code == status and words in (error["error"] + str(error["field"])), (body, error)
    code, error = await call(jp_fetch, "schedules", "nothing")
    assert code == 404 and error["field"] == "name"
    code, error = await call(jp_fetch, "schedules", "nothing", "pause", method="POST")
    assert code == 404


# -- batch jobs ----------------------------------------------------------------------------
def rows_sum(rows: list[list[float]]) -> list[float]:
    return [sum(row) for row in rows]


@pytest.mark.integration
async def test_a_batch_job_through_the_api(
    jp_fetch: Any, jp_root_dir: Path, outside: Path, stop_deployments: None
) -> None:
    import nbdeploy

    nbdeploy.deploy(rows_sum, name="summer", namespace={"rows_sum": rows_sum}, mlflow=False)
    data = jp_root_dir / "data"
    data.mkdir()
    lines = ["id,a,b"] + [f"{i},{i},{i / 2}" for i in range(300)]
    (data / "in.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    body = {"input": "data/in.csv", "output": "data/out.jsonl", "keep": ["id"], "mlflow": False}
    body["features"] = ["a", "b"]
    code, answer = await call(jp_fetch, "deployments", "summer", "batch", method="POST", body=body)
    assert code == 202, answer
    state = await wait_for(jp_fetch, answer["operation"], timeout=180)
    assert state["status"] == "succeeded", state
    result = state["result"]
    assert result["rows_in"] == 300 and result["rows_out"] == 300 and result["rows_failed"] == 0
    written = [json.loads(line) for line in (data / "out.jsonl").read_text().splitlines()]
    assert written[7] == {"id": 7, "prediction": 7 + 3.5}
    code, run = await call(jp_fetch, "runs", result["run_id"])
    assert code == 200 and run["kind"] == "batch" and run["metrics"]["rows_out"] == 300
    relative = os.path.relpath(outside.parent, jp_root_dir)
    for bad, field in (
        ({**body, "input": str(outside)}, "input"),
        ({**body, "output": f"{relative}/out.csv"}, "output"),
        ({**body, "input": "linked/*.csv"}, "input"),
        ({**body, "output": ".hidden/out.csv"}, "output"),
    ):
        code, error = await call(
            jp_fetch, "deployments", "summer", "batch", method="POST", body=bad
        )
        assert code == 400 and error["field"] == field, (bad, error)
    code, error = await call(jp_fetch, "deployments", "nothing", "batch", method="POST", body=body)
    assert code == 404, error
