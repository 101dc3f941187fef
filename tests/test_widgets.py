"""The notebook's views without a kernel: progress bars that always end, the deploy card's
HTML, the dashboard's refresh/actions/thread with injected sources, the static report."""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest

from nbdeploy.deployment.report import compact_curl, compact_json, curl_example
from nbdeploy.errors import DeployError, ParameterError
from nbdeploy.pipeline.progress import ending, failure_reason
from nbdeploy.widgets import views
from nbdeploy.widgets.deployment import card_html
from nbdeploy.widgets.report_html import render_report

NOW = time.time()
WIDE_ROW = [0.123456789 * (i + 1) for i in range(20)]


def snapshot(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "churn",
        "status": "serving",
        "live_version": 2,
        "url": "http://127.0.0.1:5123",
        "split": "v1 90% · v2 10%",
        "window_seconds": 3600,
        "requests": 1200,
        "requests_per_second": 0.333,
        "error_rate": 0.0125,
        "latency": {"p50": 3.21, "p95": 12.5, "p99": 40.0},
        "versions": {
            "v2": {"requests": 200, "error_rate": 0.02, "p50": 4.0, "p99": 50.0},
            "v1": {"requests": 1000, "error_rate": 0.01, "p50": 3.0, "p99": 30.0},
        },
        "missing": {"age": 0.0, "plan": 0.05},
        "type_errors": {"age": 0.002},
        "out_of_range": {"age": 0.2},
        "drift": {
            "age": {"psi": 0.31, "ks_p": 0.001, "status": "drift"},
            "plan": {"psi": 0.12, "chi2_p": 0.2, "status": "warn"},
            "<b>income</b>": {"psi": None, "status": "no-data"},
        },
        "prediction": {"null_rate": 0.0, "mean": 0.42, "psi": 0.02, "status": "ok"},
        "processes": {"cpu_percent": 3.5, "memory_mb": 210.0},
        "log": {"written": 1200, "dropped": 3, "last_error": None},
        "series": [
            {"t": NOW - 120, "requests": 60, "errors": 3, "p50": 3.0, "p99": 30.0},
            {"t": NOW - 60, "requests": 120, "errors": 0, "p50": 4.0, "p99": 41.0},
            {"t": NOW, "requests": 0, "errors": 0, "p50": None, "p99": None},
        ],
    }
    data.update(overrides)
    return data


def deployment(name: str = "churn", status: str = "serving", version: int = 2) -> Any:
    return SimpleNamespace(
        name=name,
        status=status,
        live_version=version,
        url="http://127.0.0.1:5123",
        updated_at=NOW,
    )


# -- progress bars end on every path ------------------------------------------------------
class Recorder:
    def __init__(self) -> None:
        self.finished: list[tuple[bool, str, bool]] = []

    def start(self, label: str, total_cells: int) -> None:
        pass

    def cell_started(self, position: int, cell_number: int, first_line: str) -> None:
        pass

    def output(self, text: str, stream: str) -> None:
        pass

    def finish(self, ok: bool, summary: str, interrupted: bool = False) -> None:
        self.finished.append((ok, summary, interrupted))


def test_a_progress_ends_failed_when_an_error_leaves_the_block_before_any_work():
    recorder = Recorder()
    with pytest.raises(ParameterError), ending(recorder):
        raise ParameterError("parameter 'n' of a.ipynb expects int, got lots", "fix the value")
    assert recorder.finished == [(False, "parameter 'n' of a.ipynb expects int, got lots", False)]


def test_a_progress_ends_interrupted_on_ctrl_c_and_only_once():
    recorder = Recorder()
    with pytest.raises(KeyboardInterrupt), ending(recorder) as tracked:
        tracked.finish(False, "a.ipynb: interrupted", interrupted=True)  # the runner's own end
        raise KeyboardInterrupt
    assert recorder.finished == [(False, "a.ipynb: interrupted", True)]
    recorder = Recorder()
    with pytest.raises(KeyboardInterrupt), ending(recorder):
        raise KeyboardInterrupt
    assert recorder.finished == [(False, "interrupted", True)]


def test_a_progress_the_work_ended_is_not_ended_again_and_one_left_open_ends_done():
    recorder = Recorder()
    with ending(recorder) as tracked:
        tracked.finish(True, "succeeded")
    with ending(recorder):
        pass
    assert recorder.finished == [(True, "succeeded", False), (True, "done", False)]


def test_failure_reasons_are_one_short_line():
    assert failure_reason(ValueError("bad\nsecond line")) == "ValueError: bad"
    assert failure_reason(RuntimeError()) == "RuntimeError"
    reason = failure_reason(DeployError("x" * 500, "a hint"))
    assert len(reason) == 160 and reason.endswith("…") and "hint" not in reason


def test_the_widget_bar_ends_in_the_colour_of_the_outcome():
    from nbdeploy.widgets.progress import WidgetProgress, WidgetProgressGroup

    failed = WidgetProgress("train.ipynb", show=False)
    failed.finish(False, "parameter 'n' expects int, got lots")
    assert (failed.bar.bar_style, failed.bar.value, failed.bar.max) == ("danger", 1, 1)
    assert failed.bar.description == "failed" and "expects int" in failed.label.value
    done = WidgetProgress("train.ipynb", show=False)
    done.start("", 3)
    done.cell_started(2, 4, "x = 1")
    done.finish(True, "succeeded")
    assert (done.bar.bar_style, done.bar.value, done.bar.description) == ("success", 3, "done")
    stopped = WidgetProgress("train.ipynb", show=False)
    stopped.finish(False, "interrupted", interrupted=True)
    assert (stopped.bar.bar_style, stopped.bar.description) == ("warning", "interrupted")

    group = WidgetProgressGroup("sweep of train.ipynb", show=False)
    first = group.bar_for(0, {"n": 1})
    second = group.bar_for(1, {"n": 2})
    first.finish(True, "succeeded")
    with pytest.raises(KeyboardInterrupt), ending(group):
        raise KeyboardInterrupt
    rows = [child.children[0].children for child in group.box.children[1:]]
    assert [bar.bar_style for _, bar, _ in rows] == ["success", "warning"]
    assert second.ended and rows[1][0].value == "<b>run 2: n=2</b>"


# -- the log_metric notice ---------------------------------------------------------------
def test_the_log_metric_notice_outside_a_run_is_a_note_on_stdout(tmp_path):
    code = "import nbdeploy\nnbdeploy.log_metric('a', 1)\nnbdeploy.log_param('b', 2)\n"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path
    )
    assert done.stderr == ""
    assert done.stdout.splitlines() == [
        "nbdeploy: log_metric is not recorded: this notebook is not running under "
        "`nbdeploy run` (further calls are ignored as well)"
    ]


# -- compact curl and the card -----------------------------------------------------------
def test_the_displayed_curl_is_compact_and_the_copied_one_complete():
    schema = {"route": "/predict", "mode": "rows", "width": 20}
    example = {"rows": [WIDE_ROW]}
    full = curl_example("http://127.0.0.1:5123", schema, example, key_of="churn")
    shown = compact_curl("http://127.0.0.1:5123", schema, example, key_of="churn")
    assert "2.4691357800000004" in full or "2.46913578" in full  # every digit is sent
    assert full.count(",") == 19
    assert "0.1235, 0.2469" in shown and "…" in shown and "2.469" not in shown
    lines = shown.splitlines()
    assert len(lines) == 4 and all(len(line) <= 100 for line in lines)
    assert lines[1].strip() == '-H "Authorization: Bearer $(nbdeploy key churn)" \\'
    assert compact_json({"text": "y" * 100}) == '{"text": "' + "y" * 39 + '…"}'
    assert compact_json([1, 2.0, True, None, "a"]) == '[1, 2.0, true, null, "a"]'
    assert compact_json({"rows": [[1.0] * 30] * 30}, max_chars=40) == '{"rows": [[1.0, …], …]}'


def test_the_card_shows_badge_url_copy_buttons_and_answer_and_escapes_everything():
    data = {
        "name": "churn",
        "version": 3,
        "url": "http://127.0.0.1:5123",
        "endpoint": "http://127.0.0.1:5123/predict",
        "example": {"rows": [WIDE_ROW]},
        "status": "serving",
        "built": True,
        "seconds": 2.14,
        "requirements": ["scikit-learn==1.9.1"],
        "notices": ["<script>alert(1)</script>"],
    }
    schema = {"route": "/predict", "mode": "rows", "width": 20}
    page = card_html(data, schema, (200, "[0.123456789, 1]"), key_of="churn")
    assert '<span class="nbd-badge nbd-good">serving</span>' in page
    assert '<code class="nbd-url">http://127.0.0.1:5123/predict</code>' in page
    copies = [html.unescape(text) for text in re.findall(r'data-copy="([^"]*)"', page)]
    assert copies == [
        "http://127.0.0.1:5123/predict",
        curl_example(data["url"], schema, data["example"], "churn"),
    ]
    assert "[0.1235, 1]" in page and 'nbdeploy.dashboard("churn")' in page
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "new build in 2.1 s" in page
    failed = card_html({**data, "status": "failed"}, schema, (500, "boom"))
    assert "nbd-badge nbd-bad" in failed and "Authorization" not in failed


# -- tables, charts and the static report ------------------------------------------------
def test_statuses_get_their_colours():
    assert [views.status_kind(s) for s in ("ok", "warn", "drift", "no-data", None)] == [
        "good",
        "caution",
        "bad",
        "off",
        "off",
    ]


def test_tables_list_every_feature_with_its_figures():
    drift = views.drift_table(snapshot())
    rows = re.findall(r"<tr>(.*?)</tr>", drift)[1:]
    assert len(rows) == 4  # three features and the prediction
    assert "nbd-bad" in rows[0] and "0.31" in rows[0] and "0.001" in rows[0]
    assert "nbd-caution" in rows[1] and "0.2" in rows[1]  # a chi-square p-value
    assert "&lt;b&gt;income&lt;/b&gt;" in rows[2] and ">no-data<" in rows[2]
    assert "prediction" in rows[3] and "mean 0.42" in rows[3]
    quality = views.quality_table(snapshot())
    assert re.findall(r"<td>(\w+)</td>", quality) == ["age", "plan"]
    assert "20 %" in quality and "5 %" in quality and "0.2 %" in quality
    versions = views.versions_table(snapshot())
    assert versions.index("v1") < versions.index("v2") and "live" in versions
    assert "no drift figures" in views.drift_table({})


def test_chart_data_turns_buckets_into_rates():
    x, p50, p99, per_second, errors = views.chart_data(snapshot()["series"])
    assert len(x) == 3 and p50 == (3.0, 4.0, None) and p99 == (30.0, 41.0, None)
    assert per_second == (1.0, 2.0, 0.0)
    assert errors == (5.0, 0.0, None)
    assert views.chart_data([]) == ((), (), (), (), ())


def test_the_report_is_one_self_contained_escaped_page():
    page = render_report(snapshot(), deployment())
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page
    assert "<script" not in page and "src=" not in page and "@import" not in page
    assert re.findall(r"https?://[^\s\"'<]+", page) == [
        "http://127.0.0.1:5123",
        "http://www.w3.org/2000/svg",
        "http://www.w3.org/2000/svg",
        "http://www.w3.org/2000/svg",
    ]
    assert page.count("<svg") == 3 and "<polyline" in page
    assert "&lt;b&gt;income&lt;/b&gt;" in page and "<b>income</b>" not in page
    assert "1,200" in page and "40 ms" in page and "traffic v1 90% · v2 10%" in page
    empty = render_report({}, {"name": "x<y", "status": "stopped"})
    assert "x&lt;y" in empty and "no requests in this window" in empty


# -- the dashboard with injected sources -------------------------------------------------
@pytest.fixture
def make_dashboard():
    made: list[Any] = []

    def make(**options: Any) -> Any:
        from nbdeploy.widgets.dashboard import Dashboard

        options.setdefault("fetch", lambda name, window: snapshot(name=name))
        options.setdefault("deployments", lambda name: [deployment()])
        options.setdefault("actions", {})
        options.setdefault("start", False)
        board = Dashboard(options.pop("name", "churn"), **options)
        made.append(board)
        return board

    yield make
    for board in made:
        board.close()


def test_the_dashboard_shows_the_figures_of_its_deployment(make_dashboard):
    board = make_dashboard()
    assert "serving <b>v2</b>" in board.header_html.value
    assert "0.333/s" in board.tiles_html.value and "40 ms" in board.tiles_html.value
    assert "nbd-bad" in board.tables_html.value and "v1" in board.tables_html.value
    assert board.chart.data[0].y == (3.0, 4.0, None)
    assert board.chart.data[2].y == (1.0, 2.0, 0.0)
    assert "request log: 1,200 written, 3 dropped" in board.footer_html.value
    assert not board.chart.layout.annotations[-1].visible
    layout = board.chart.layout  # time axes even when empty: "%H:%M" is a date format
    assert [axis.type for axis in (layout.xaxis, layout.xaxis2, layout.xaxis3)] == ["date"] * 3


def test_the_dashboard_assigns_only_what_changed(make_dashboard):
    figures = snapshot()
    board = make_dashboard(fetch=lambda name, window: figures)
    changes: list[str] = []
    for widget in (board.header_html, board.tiles_html, board.tables_html, board.footer_html):
        widget.observe(lambda change: changes.append(change["name"]), names="value")
    batches = []
    original = board.chart.batch_update
    board.chart.batch_update = lambda: (batches.append(1), original())[1]
    board.refresh()
    assert changes in ([], ["value"])  # only the footer's clock may tick
    assert batches == []
    figures["requests_per_second"] = 5.0
    figures["series"] = [*figures["series"], {"t": NOW + 60, "requests": 600}]
    board.refresh()
    assert "5/s" in board.tiles_html.value and len(batches) == 1
    assert board.chart.data[2].y[-1] == 10.0


def test_the_dashboard_shows_all_deployments_and_details_of_the_picked_one(make_dashboard):
    fetched: list[str] = []

    def fetch(name: str, window: float) -> dict[str, Any]:
        fetched.append(name)
        return snapshot(name=name, requests_per_second=1.0 if name == "a" else 2.0)

    board = make_dashboard(
        name=None,
        fetch=fetch,
        deployments=lambda name: [deployment("a", "stopped"), deployment("b")],
    )
    assert board.picker.options == ("a", "b") and board.picker.value == "b"  # the serving one
    assert re.findall(r"<td><b>(\w)</b></td>", board.overview_html.value) == ["a", "b"]
    assert "1/s" in board.overview_html.value and "2/s" in board.overview_html.value
    assert ">b</span>" in board.header_html.value
    board.picker.value = "a"
    assert ">a</span>" in board.header_html.value and board.stop_button.disabled
    assert sorted(set(fetched)) == ["a", "b"]


def test_stop_asks_first_and_every_action_says_what_happened(make_dashboard):
    calls: list[str] = []

    def stop(name: str) -> Any:
        calls.append(f"stop {name}")
        return deployment(status="stopped")

    def rollback(name: str) -> Any:
        raise DeployError(f"{name} has no previous version to roll back to", "deploy one first")

    board = make_dashboard(
        actions={
            "stop": stop,
            "rollback": rollback,
            "promote": lambda name: deployment(version=3),
        }
    )
    board.stop_button.click()
    assert calls == [] and board.confirm_box.layout.display is None
    assert "Stop <b>churn</b>?" in board.confirm_html.value
    board.cancel_button.click()
    assert calls == [] and board.confirm_box.layout.display == "none"
    board.stop_button.click()
    board.confirm_button.click()
    assert calls == ["stop churn"] and "stopped churn" in board.outcome_html.value
    board.rollback_button.click()
    assert (
        "could not rollback churn: churn has no previous version to roll back to "
        "(deploy one first)" in board.outcome_html.value
    )
    assert "nbd-warn-text" in board.outcome_html.value
    board.promote_button.click()
    assert "churn is serving v3 at http://127.0.0.1:5123" in board.outcome_html.value
    assert not any(b.disabled for b in (board.rollback_button, board.promote_button))


def test_a_stopped_deployment_is_shown_greyed_with_only_what_applies(make_dashboard):
    board = make_dashboard(
        fetch=lambda name, window: snapshot(status="stopped"),
        deployments=lambda name: [deployment(status="stopped")],
    )
    header = board.header_html.value
    assert "last served <b>" not in header and "last served v2" in header
    assert "serving <b>" not in header and "5123" not in header and "traffic" not in header
    assert "nbd-tiles nbd-dim" in board.tiles_html.value
    assert all(b.disabled for b in (board.stop_button, board.rollback_button, board.promote_button))


def test_the_dashboard_shows_the_latest_rollout_while_serving(make_dashboard):
    notice = {"kind": "canary", "version": 3, "status": "rolled back", "reason": "errors 31%"}
    notice["text"] = "canary v3: rolled back: errors 31%"
    board = make_dashboard(fetch=lambda name, window: {**snapshot(), "rollout": notice})
    assert "canary v3: rolled back: errors 31%" in board.rollout_html.value
    assert "nbd-bad" in board.rollout_html.value and 'role="alert"' in board.rollout_html.value
    stopped = make_dashboard(
        fetch=lambda name, window: {**snapshot(status="stopped"), "rollout": notice},
        deployments=lambda name: [deployment(status="stopped")],
    )
    assert stopped.rollout_html.value == ""  # a stopped deployment has no rollout to follow
    plain = make_dashboard()
    assert plain.rollout_html.value == ""


def test_every_rate_says_the_window_it_is_over(make_dashboard):
    board = make_dashboard(fetch=lambda name, window: snapshot(window_seconds=600))
    tiles = board.tiles_html.value
    assert "requests/s over 10 min" in tiles and "errors over 10 min" in tiles
    overview = make_dashboard(name=None, fetch=lambda name, window: snapshot(window_seconds=600))
    assert "req/s (10 min)" in overview.overview_html.value
    assert "errors (10 min)" in overview.overview_html.value


def test_a_failing_source_is_shown_not_raised(make_dashboard):
    def fetch(name: str, window: float) -> dict[str, Any]:
        raise OSError("the request log is locked")

    board = make_dashboard(fetch=fetch)
    assert "OSError: the request log is locked" in board.footer_html.value


def dashboard_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("nbdeploy-dashboard")]


def test_the_refresh_thread_runs_until_the_dashboard_is_closed(make_dashboard):
    board = make_dashboard(start=True, refresh=0.1)  # at most 2 Hz
    assert board.refresh_seconds == 0.5 and board.running
    deadline = time.monotonic() + 5
    while board.refreshes < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert board.refreshes >= 3
    board.close()
    assert not board.running and dashboard_threads() == []
    assert board.comm is None


def test_the_refresh_thread_ends_when_its_views_are_gone(make_dashboard, monkeypatch):
    from nbdeploy.widgets import dashboard as module

    monkeypatch.setattr(module, "HIDDEN_GRACE_SECONDS", 0.2)
    board = make_dashboard(start=True, refresh=0.5)
    board._view_count = 1  # a front end shows it
    time.sleep(0.7)
    assert board.running
    board._view_count = 0  # its output was cleared
    deadline = time.monotonic() + 5
    while board.running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not board.running and board.comm is None


def test_the_dashboard_text_is_the_status_table(make_dashboard):
    board = make_dashboard()
    bundle = board._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert bundle["text/plain"].splitlines()[1].split()[:4] == ["✓", "churn", "serving", "v2"]


def test_a_dashboard_of_an_unknown_deployment_is_refused_at_once():
    from nbdeploy.errors import NbdeployError
    from nbdeploy.widgets.dashboard import dashboard

    with pytest.raises(NbdeployError, match="no deployment named 'nope'"):
        dashboard("nope")
    assert dashboard_threads() == []


def test_an_interrupt_during_the_example_call_says_the_deploy_had_completed():
    """Ctrl-C ("interrupt kernel") landing in the card's example call: no urllib traceback."""
    import http.server
    import signal

    from nbdeploy.widgets.deployment import INTERRUPTED_CALL, call_endpoint

    class Slow(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            time.sleep(3)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/predict"
    interrupt = threading.Timer(0.5, os.kill, args=(os.getpid(), signal.SIGINT))
    interrupt.start()
    try:
        assert call_endpoint(url, {"rows": [[1]]}) == (0, INTERRUPTED_CALL)
    finally:
        interrupt.cancel()
        server.shutdown()
        server.server_close()


def test_the_card_follows_its_canary_until_it_ends(monkeypatch):
    from nbdeploy.widgets import card as cards

    monkeypatch.setattr(cards, "WATCH_EVERY_SECONDS", 0.01)
    plan = {"version": 7, "status": "running", "steps": [10.0, 50.0, 100.0], "step": 1}
    states = [
        {"canary": dict(plan)},
        {"canary": {**plan, "status": "rolled back", "reason": "errors 30.5% > 1%"}},
    ]
    read: list[str] = []

    def state(name: str) -> dict[str, Any]:
        read.append(name)
        return states[min(len(read) - 1, 1)]

    card = cards.DeploymentCard("<b>card</b>", "churn")
    try:
        card.watch_canary(7, state=state)
        assert card._watcher is not None
        card._watcher.join(5)
        assert not card._watcher.is_alive()  # it ends with the canary
        line = card.rollout_html.value
        assert "canary v7: rolled back: errors 30.5% &gt; 1%" in line
        assert "nbd-bad" in line and 'role="alert"' in line
        assert card.show_rollout({"canary": plan}, 7)
        assert "canary v7: running at 50% (step 2 of 3)" in card.rollout_html.value
        assert not card.show_rollout({"canary": {**plan, "status": "promoted"}}, 7)
        assert "nbd-good" in card.rollout_html.value
        assert not card.show_rollout({"canary": None}, 7)
        assert "replaced by a newer rollout" in card.rollout_html.value
    finally:
        card.close()
