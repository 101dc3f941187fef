"""Integration: what the notebook shows, read back from widgets in a live kernel: progress
bars that end on every path, the log_metric note, the deploy card, and the dashboard's
refreshing (quiet when nothing changes) and its real figures."""

from __future__ import annotations

import html
import json
import os
import queue
import re
import time
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.manager import start_new_kernel
from support import execute, post

from nbdeploy.deployment import verbs
from nbdeploy.store import StateStore
from nbdeploy.store.runs import RunStore

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("python_kernel")]

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
FEATURES = 20
LAST_BAR = (
    "import json\nfrom ipywidgets import Widget\n"
    "bars = [w for w in list(Widget.widgets.values()) if type(w).__name__ == 'IntProgress']\n"
    "rows = [w for w in list(Widget.widgets.values()) if type(w).__name__ == 'HBox'\n"
    "        and any(c is bars[-1] for c in w.children)]\n"
    "print(json.dumps({'style': bars[-1].bar_style, 'value': bars[-1].value,\n"
    "    'max': bars[-1].max, 'description': bars[-1].description,\n"
    "    'label': rows[-1].children[2].value, 'count': len(bars)}))"
)


def in_kernel(kc: Any, code: str) -> Any:
    """Run ``code``, whose last printed line is JSON; return it decoded."""
    return json.loads(execute(kc, code).strip().splitlines()[-1])


def start_kernel(env_extra: dict[str, str], cwd: Path) -> tuple[Any, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "JPY_"))}
    env.update(env_extra)
    km, kc = start_new_kernel(kernel_name="python3", env=env, cwd=str(cwd))
    # Widget.widgets (how these tests find widgets) warns that it is deprecated.
    execute(kc, "import warnings\nwarnings.filterwarnings('ignore', category=DeprecationWarning)")
    return km, kc


@pytest.fixture
def run_kernel(home: Path, tmp_path: Path, make_notebook):
    notebook = make_notebook(
        "session.ipynb",
        [
            ("n: int = 1  # a number\nseconds: float = 0  # how long to wait", ["parameters"]),
            "import time\ntime.sleep(seconds)",
            "import nbdeploy\nnbdeploy.log_metric('double', n * 2)",
        ],
    )
    km, kc = start_kernel({"JPY_SESSION_NAME": str(notebook), "NBDEPLOY_HOME": str(home)}, tmp_path)
    try:
        execute(kc, "%load_ext nbdeploy")
        yield km, kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def test_a_run_refused_before_any_kernel_starts_ends_its_bar_red(run_kernel):
    _, kc = run_kernel
    output = execute(kc, "%deploy run -p n lots --no-mlflow", ok=False)
    assert "expects int, got lots" in output
    bar = in_kernel(kc, LAST_BAR)
    assert bar["style"] == "danger" and bar["description"] == "failed"
    assert bar["value"] == bar["max"]
    assert "parameter 'n' of session.ipynb expects int, got lots" in bar["label"]
    execute(kc, "%deploy run -p n 2 --no-mlflow")
    bar = in_kernel(kc, LAST_BAR)
    assert (bar["style"], bar["description"], bar["count"]) == ("success", "done", 2)
    assert bar["value"] == bar["max"] == 4  # parameters, injected ones, sleep, metric


def test_an_interrupted_run_ends_its_bar_amber_and_is_recorded_so(run_kernel, home):
    km, kc = run_kernel
    msg_id = kc.execute("%deploy run -p seconds 60 --no-mlflow")
    records = RunStore(StateStore(home / "state.db"))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        running = [r for r in records.recent() if r.status == "running"]
        if running:
            break
        time.sleep(0.2)
    assert running, "the run did not start"
    time.sleep(3)  # the kernel is up and inside time.sleep(60)
    km.interrupt_kernel()
    reply = kc.get_shell_msg(timeout=60)
    while reply["parent_header"].get("msg_id") != msg_id:
        reply = kc.get_shell_msg(timeout=60)
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    bar = in_kernel(kc, LAST_BAR)
    assert (bar["style"], bar["description"]) == ("warning", "interrupted")
    assert "interrupted" in bar["label"]
    [record] = records.recent()
    assert record.status == "interrupted"


def test_a_sweep_shows_one_bar_per_run(run_kernel):
    _, kc = run_kernel
    execute(kc, "%deploy run --sweep n=1,2 --no-mlflow")
    state = in_kernel(
        kc,
        "import json\nfrom ipywidgets import Widget\n"
        "bars = [w for w in list(Widget.widgets.values()) if type(w).__name__ == 'IntProgress']\n"
        "print(json.dumps(sorted(b.bar_style for b in bars)))",
    )
    assert state == ["success", "success"]


def test_log_metric_outside_a_run_shows_a_grey_note_not_an_error(run_kernel):
    _, kc = run_kernel
    messages: list[dict[str, Any]] = []
    reply = kc.execute_interactive(
        "import nbdeploy\nnbdeploy.log_metric('a', 1)\nnbdeploy.log_metric('b', 2)",
        timeout=60,
        output_hook=messages.append,
    )
    assert reply["content"]["status"] == "ok"
    streams = [m for m in messages if m["msg_type"] == "stream"]
    displays = [m["content"]["data"] for m in messages if m["msg_type"] == "display_data"]
    assert streams == []  # nothing on stderr (JupyterLab's pink box), nothing twice
    [note] = displays
    assert 'class="nbdeploy-note"' in note["text/html"]
    assert "--jp-ui-font-color2" in note["text/html"]
    assert note["text/plain"].startswith("nbdeploy: log_metric is not recorded")


# -- the dashboard refreshes quietly -----------------------------------------------------
def comm_updates(kc: Any, seconds: float) -> list[dict[str, Any]]:
    """The widget updates (comm messages) the kernel sends within ``seconds``."""
    found = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            message = kc.get_iopub_msg(timeout=left)
        except queue.Empty:
            break
        if message["msg_type"] == "comm_msg":
            found.append(message["content"])
    return found


def test_the_dashboard_sends_only_what_changed(run_kernel):
    _, kc = run_kernel
    ids = in_kernel(
        kc,
        "import json, time\nfrom types import SimpleNamespace\n"
        "from nbdeploy.widgets.dashboard import Dashboard\n"
        "figures = {'requests_per_second': 1.0, 'series': [{'t': time.time(), 'requests': 5}]}\n"
        "served = SimpleNamespace(name='x', status='serving', live_version=1,\n"
        "    url='http://127.0.0.1:1', updated_at=time.time())\n"
        "board = Dashboard('x', fetch=lambda n, w: figures, deployments=lambda n: [served],\n"
        "    actions={}, refresh=0.5)\n"
        "print(json.dumps({'footer': board.footer_html.model_id,\n"
        "    'tiles': board.tiles_html.model_id}))",
    )
    deadline = time.monotonic() + 60
    while not in_kernel(kc, "print(json.dumps(board.chart is not None))"):
        assert time.monotonic() < deadline, "the charts never came"
        time.sleep(0.5)
    comm_updates(kc, 1.0)  # what was under way
    quiet = comm_updates(kc, 3.0)
    # Nothing changed: at most the footer's "updated HH:MM:SS", once a second.
    assert {update["comm_id"] for update in quiet} <= {ids["footer"]}
    assert len(quiet) <= 4, quiet
    execute(kc, "figures['requests_per_second'] = 7.0")
    busy = comm_updates(kc, 2.0)
    tiles = [u for u in busy if u["comm_id"] == ids["tiles"]]
    assert len(tiles) == 1 and "7/s" in tiles[0]["data"]["state"]["value"]
    threads = in_kernel(
        kc,
        "import threading\nboard.close()\n"
        "print(json.dumps([t.name for t in threading.enumerate()\n"
        "    if t.name.startswith('nbdeploy-dashboard')]))",
    )
    assert threads == []


# -- the card and the dashboard of a real deployment -------------------------------------
SERVICE = f"""
import numpy as np
rng = np.random.default_rng(0)
X = rng.normal(size=(400, {FEATURES}))

def score(rows: list[list[float]]) -> list[float]:
    return [round(float(sum(r)), 6) for r in rows]
"""


@pytest.fixture(scope="module")
def service_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ui-home")


@pytest.fixture(autouse=True)
def _use_service_home(request, service_home, monkeypatch):
    if "service_kernel" in request.fixturenames:
        monkeypatch.setenv("NBDEPLOY_HOME", str(service_home))


@pytest.fixture(scope="module")
def service_kernel(service_home, tmp_path_factory):
    km, kc = start_kernel({"NBDEPLOY_HOME": str(service_home)}, tmp_path_factory.mktemp("k"))
    try:
        execute(kc, SERVICE)
        execute(kc, "%load_ext nbdeploy")
        yield kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
        state = StateStore(service_home / "state.db")
        for deployment in verbs.status(store=state):
            verbs.stop(deployment.name, store=state)


def test_the_deploy_card_shows_status_url_copy_buttons_and_a_compact_curl(service_kernel):
    kc = service_kernel
    displays: list[dict[str, Any]] = []
    reply = kc.execute_interactive(
        "%deploy score --reference X --no-mlflow",
        timeout=300,
        output_hook=lambda m: (
            displays.append(m["content"]["data"]) if m["msg_type"] == "display_data" else None
        ),
    )
    assert reply["content"]["status"] == "ok"
    widgets_shown = [data for data in displays if WIDGET_VIEW in data]
    assert len(widgets_shown) == 2  # the deploy's progress bar, then the card
    assert widgets_shown[1]["text/plain"].startswith("✓ score v1")  # without widgets: text
    bar = in_kernel(kc, LAST_BAR)
    assert (bar["style"], bar["description"]) == ("success", "done")
    assert bar["value"] == bar["max"] == 3
    page = in_kernel(
        kc,
        "import json\nfrom ipywidgets import Widget\n"
        "[card] = [w for w in list(Widget.widgets.values())\n"
        "          if type(w).__name__ == 'DeploymentCard']\n"
        "print(json.dumps(card.card_html.value))",
    )
    assert '<span class="nbd-badge nbd-good">serving</span>' in page
    url = re.search(r'<code class="nbd-url">(http://127\.0\.0\.1:\d+/score)</code>', page)
    assert url is not None
    [shown] = re.findall(r'<pre class="nbd-curl">(.*?)</pre>', page, re.S)
    shown = html.unescape(shown)
    assert "…" in shown and max(len(line) for line in shown.splitlines()) <= 100
    copies = [html.unescape(c) for c in re.findall(r'data-copy="([^"]*)"', page)]
    assert copies[0] == url.group(1)
    body = json.loads(copies[1].split(" -d ", 1)[1].strip("'"))
    assert len(next(iter(body.values()))[0]) == FEATURES  # the copy is the whole request
    assert re.search(r'nbd-answer">\[-?\d', page)  # the example call's answer

    refused = execute(kc, "%deploy score --workers 0 --no-mlflow", ok=False)
    assert "--workers must be at least 1" in refused
    bar = in_kernel(kc, LAST_BAR)
    assert (bar["style"], bar["description"]) == ("danger", "failed")
    assert "--workers must be at least 1" in bar["label"]


def test_the_dashboard_of_a_real_deployment_shows_its_requests_and_drift(service_kernel, tmp_path):
    kc = service_kernel
    execute(kc, "%deploy score --reference X --no-mlflow")
    url = in_kernel(kc, "import json, nbdeploy\nprint(json.dumps(nbdeploy.status('score')[0].url))")
    for index in range(30):
        row = [float(index % 3)] * FEATURES
        assert post(url + "/score", {"rows": [row]})[0] == 200
    state = in_kernel(
        kc,
        "import json, time\nfrom nbdeploy.widgets.dashboard import dashboard\n"
        "board = dashboard('score', refresh=0.5)\n"
        "deadline = time.monotonic() + 30\n"
        "while (board.snapshots.get('score', {}).get('requests') or 0) < 30:\n"
        "    assert time.monotonic() < deadline, board.snapshots\n"
        "    time.sleep(0.5)\n"
        "while board.chart is None or not board.chart.data[2].y:\n"
        "    assert time.monotonic() < deadline\n"
        "    time.sleep(0.5)\n"
        "print(json.dumps({'tiles': board.tiles_html.value, 'tables': board.tables_html.value,\n"
        "    'header': board.header_html.value, 'throughput': sum(board.chart.data[2].y)}))",
    )
    assert "serving <b>v" in state["header"] and url in state["header"]
    counted = re.search(
        r'"nbd-tile-value">([\d,]+)</div><div class="nbd-tile-label">requests in 10 min',
        state["tiles"],
    )
    assert counted is not None and int(counted.group(1).replace(",", "")) >= 30
    assert state["throughput"] > 0
    assert state["tables"].count("<td>f") >= 2 * FEATURES  # quality and drift, per feature
    from nbdeploy.widgets.report_html import write_report

    report = write_report("score", tmp_path / "report.html").read_text(encoding="utf-8")
    assert url in report and report.count("<svg") == 3 and "<script" not in report
    assert all(f"<td>f{index}</td>" in report for index in range(FEATURES))
    stop = in_kernel(
        kc,
        "board.stop_button.click()\nboard.confirm_button.click()\n"
        "print(json.dumps(board.outcome_html.value))",
    )
    assert "stopped score" in stop
    assert "stopped" in execute(kc, "%deploy status score --text")
    assert (
        in_kernel(
            kc,
            "import threading\nboard.close()\n"
            "print(json.dumps([t.name for t in threading.enumerate() if 'dashboard' in t.name]))",
        )
        == []
    )


def test_deploy_status_shows_the_dashboard_with_the_table_as_its_text(service_kernel):
    kc = service_kernel
    displays: list[dict[str, Any]] = []
    reply = kc.execute_interactive(
        "%deploy status",
        timeout=120,
        output_hook=lambda m: (
            displays.append(m["content"]["data"]) if m["msg_type"] == "display_data" else None
        ),
    )
    assert reply["content"]["status"] == "ok"
    [board] = displays
    assert WIDGET_VIEW in board and "score" in board["text/plain"]
    assert board["text/plain"].startswith("name ")
    text = execute(kc, "%deploy status --text")
    assert text.startswith("name ") and "score" in text


def test_the_card_of_a_canary_turns_red_when_it_is_rolled_back(service_kernel, service_home):
    """In a live kernel: %deploy --strategy canary shows a card whose rollout line follows
    the canary; rolled back (here from the CLI, as a user would), it says so with the reason."""
    kc = service_kernel
    execute(kc, "%deploy score --name canaried --no-mlflow")
    execute(kc, "def ones(rows: list[list[float]]) -> list[float]:\n    return [1.0 for r in rows]")
    execute(kc, "%deploy ones --name canaried --no-mlflow --strategy canary --interval 600")
    line = in_kernel(
        kc,
        "import json\nfrom ipywidgets import Widget\n"
        "cards = [w for w in list(Widget.widgets.values())\n"
        "         if type(w).__name__ == 'DeploymentCard' and w.deployment_name == 'canaried']\n"
        "print(json.dumps(cards[-1].rollout_html.value))",
    )
    assert "canary v2: running at 10% (step 1 of" in line, line
    verbs.rollback("canaried", store=StateStore(service_home / "state.db"))
    state = in_kernel(
        kc,
        "import json, time\ndeadline = time.monotonic() + 20\n"
        "while 'rolled back' not in cards[-1].rollout_html.value:\n"
        "    assert time.monotonic() < deadline, cards[-1].rollout_html.value\n"
        "    time.sleep(0.2)\n"
        "print(json.dumps({'line': cards[-1].rollout_html.value,\n"
        "    'watching': cards[-1]._watcher.is_alive()}))",
    )
    assert "canary v2: rolled back" in state["line"] and "nbd-bad" in state["line"]
    # The notebook dashboard says the same, read from the deployment itself.
    board = in_kernel(
        kc,
        "import nbdeploy\nboard = nbdeploy.dashboard('canaried')\n"
        "shown = {'rollout': board.rollout_html.value, 'header': board.header_html.value}\n"
        "print(json.dumps(shown))\nboard.close()",
    )
    assert "canary v2: rolled back: rolled back by the user" in board["rollout"], board
    assert "serving <b>v1</b>" in board["header"], board
    execute(kc, "import time; time.sleep(2.5)")  # one more reading: the watcher has ended
    assert in_kernel(kc, "print(json.dumps(cards[-1]._watcher.is_alive()))") is False
    verbs.stop("canaried", store=StateStore(service_home / "state.db"))
