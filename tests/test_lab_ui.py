"""Browser: nbdeploy's JupyterLab extension (labextension/) in a real JupyterLab started
here, driven by Playwright with Debian's Chromium.

The "Deployments" sidebar shows a deployment made through the REST API; the notebook
toolbar's "Deploy" dialog deploys example_notebooks/train.ipynb with a changed parameter,
the sidebar watches it serve and rolls it back; "Run pipeline" records a run that the
sidebar lists. The page's console must stay free of errors.

Needs Chromium, Playwright and the built extension (``make test`` builds it into
nbdeploy/labextension with Node); without one of them the tests are skipped, and fail when
CI is set. On a failure (always, with NBDEPLOY_KEEP_SCREENSHOTS=1) a screenshot, the
page's console and JupyterLab's log are kept under ``.artifacts/browser/`` (the path is
printed).
"""

from __future__ import annotations

import json
import re
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import require_component
from test_browser import (  # the browser and its fixtures are shared with test_browser
    browser_ready,
    console,
    page,
    running_lab,
)

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("python_kernel")]
__all__ = ["browser_ready", "console", "page"]  # fixtures used by name below

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "example_notebooks"
EXTENSION_NAME = "nbdeploy-labextension"
BUILT = REPO / "nbdeploy" / "labextension"
DEPLOY_SECONDS = 240  # the notebook runs in a kernel, then a build and a start
RUN_SECONDS = 180


def api(lab: dict[str, Any], method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """A call to nbdeploy's REST API with the server's token (no XSRF needed then)."""
    request = urllib.request.Request(
        f"{lab['url']}/nbdeploy/api/{path}",
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"token {lab['token']}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def wait_for_operation(lab: dict[str, Any], operation: dict[str, Any], seconds: float) -> Any:
    deadline = time.monotonic() + seconds
    while operation["status"] == "running":
        assert time.monotonic() < deadline, operation
        time.sleep(1)
        status, operation = api(lab, "GET", f"operations/{operation['id']}")
        assert status == 200, operation
    assert operation["status"] == "succeeded", operation
    return operation


@pytest.fixture(scope="module")
def lab(browser_ready, tmp_path_factory) -> Iterator[dict[str, Any]]:
    """JupyterLab on 127.0.0.1 with a token, the example notebooks as its root, its own
    nbdeploy home, nbdeploy's server extension and the extension built in this checkout."""
    require_component(
        "the built JupyterLab extension",
        (BUILT / "package.json").exists() and (BUILT / "static").is_dir(),
        "build it: cd labextension && npm ci && npm run build (make test does it)",
    )
    base = tmp_path_factory.mktemp("lab-ui")
    root = base / "root"
    shutil.copytree(EXAMPLES, root, ignore=shutil.ignore_patterns("data", ".ipynb_checkpoints"))
    # This checkout's build, whatever is installed (a stale copy, or nothing yet).
    extensions = base / "labextensions"
    extensions.mkdir()
    (extensions / EXTENSION_NAME).symlink_to(BUILT, target_is_directory=True)
    with running_lab(
        base,
        root,
        # enabled on install; named here so that an older editable install works too
        "--ServerApp.jpserver_extensions={'nbdeploy': True}",
        f"--LabApp.extra_labextensions_path={extensions}",
    ) as lab:
        yield lab


@pytest.fixture(scope="module")
def first_version(lab) -> dict[str, Any]:
    """predict v1, deployed through the REST API (the toolbar's deploy makes v2)."""
    status, answer = api(
        lab,
        "POST",
        "deployments",
        {"path": "train.ipynb", "parameters": {"n_estimators": 20}, "mlflow": False},
    )
    assert status == 202, answer
    return wait_for_operation(lab, answer["operation"], DEPLOY_SECONDS)


def open_lab(page: Any, lab: dict[str, Any], path: str = "") -> None:
    from playwright.sync_api import expect

    where = f"tree/{path}" if path else ""
    page.goto(f"{lab['url']}/lab/{where}?token={lab['token']}")
    if path:
        kernel_idle = page.get_by_text(re.compile(r"Python 3 \(ipykernel\) \| Idle"))
        expect(kernel_idle).to_be_visible(timeout=60_000)
    else:
        expect(page.locator("#jp-main-dock-panel")).to_be_visible(timeout=60_000)


def open_panel(page: Any) -> Any:
    from playwright.sync_api import expect

    panel = page.locator("#nbdeploy-deployments")
    tab = page.locator(".lm-TabBar-tab[data-id='nbdeploy-deployments']")
    expect(tab).to_be_visible(timeout=30_000)
    # The workspace may restore the sidebar open or collapsed; a click on the tab of an open
    # sidebar closes it: click, look, and click again if that closed it.
    for _ in range(3):
        try:
            expect(panel).to_be_visible(timeout=2_000)
            return panel
        except AssertionError:
            tab.click()
    expect(panel).to_be_visible()
    return panel


def toolbar_button(page: Any, notebook: str, kind: str) -> Any:
    """The nbdeploy button (``deploy`` or ``run``) of the open notebook ``notebook`` (the
    workspace may have restored other notebooks beside it)."""
    panel = page.get_by_role("tabpanel", name=notebook)
    return panel.locator(f".jp-NotebookPanel-toolbar .nbdl-toolbar-{kind}")


def nbdeploy_errors(console: list[str]) -> list[str]:
    """Console errors of the page (all of them count: the extension must cause none)."""
    return list(console)


def test_the_panel_shows_a_deployment_made_through_the_api(lab, first_version, page, console):
    from playwright.sync_api import expect

    open_lab(page, lab)
    panel = open_panel(page)
    card = panel.locator(".nbdl-card[data-name='predict']")
    expect(card).to_be_visible(timeout=15_000)
    expect(card.locator(".nbdl-badge")).to_have_text("serving")
    expect(card.locator(".nbdl-version")).to_have_text("v1")
    url = card.locator(".nbdl-url")
    expect(url).to_have_text(re.compile(r"^127\.0\.0\.1:\d+$"))  # the port is never cut off
    service = url.get_attribute("href") or ""
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", service), service
    assert url.get_attribute("title") == service
    expect(card.locator(".nbdl-field-strategy")).to_have_text("blue-green")
    expect(card.locator(".nbdl-field-traffic")).to_contain_text("v1")
    copy = card.get_by_role("button", name="Copy the URL of predict")
    copy.click()
    expect(copy).to_have_text("copied")
    assert page.evaluate("navigator.clipboard.readText()") == service

    # Requests to the service show up as requests/s and p99 (the summary refreshes), each
    # labelled with the window it is over.
    expect(card.locator(".nbdl-term-rps")).to_have_text("requests/s (10m)")
    expect(card.locator(".nbdl-term-p99")).to_have_text("p99 (10m)")
    for _ in range(20):
        body = json.dumps({"rows": [[0.1] * 20]}).encode()
        request = urllib.request.Request(
            f"{service}/predict", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            assert answer.status == 200
    expect(card.locator(".nbdl-field-p99")).to_have_text(re.compile(r"\d ms$"), timeout=30_000)
    expect(card.locator(".nbdl-field-rps")).not_to_have_text("–")

    # Keyboard: the actions are buttons that take the focus in order.
    card.get_by_role("button", name="Copy the URL of predict").focus()
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.getAttribute('aria-label')") == "Stop predict"

    # The dashboard opens in the main area with tiles and tables.
    card.get_by_role("button", name="Open the dashboard of predict").click()
    board = page.locator(".nbdl-dashboard")
    expect(board).to_be_visible(timeout=15_000)
    expect(board.locator(".nbdl-tile").first).to_be_visible(timeout=15_000)
    expect(board.locator(".nbdl-table caption", has_text="versions")).to_be_visible()
    expect(board.locator(".nbdl-tile-label", has_text="requests/s over 10m")).to_be_visible()
    expect(board.locator(".nbdl-table caption", has_text="traffic by endpoint")).to_be_visible()
    # The chart has its scales: requests on the left, p99 on the right, 24-hour times below.
    chart = board.locator(".nbdl-chart")
    expect(chart.locator(".nbdl-axis-time")).to_have_count(3)
    for label in chart.locator(".nbdl-axis-time").all_text_contents():
        assert re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", label), label
    expect(chart.locator(".nbdl-axis-latency").first).to_have_text(re.compile(r"ms$"))

    # Hidden behind another tab, the dashboard does not poll; shown again, it does.
    asked: list[str] = []
    page.on("request", lambda r: asked.append(r.url) if "/metrics" in r.url else None)
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^File$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^New Launcher$")).click()
    expect(board).to_be_hidden()
    page.wait_for_timeout(12_000)  # more than two refresh intervals
    assert asked == [], asked
    page.locator(".lm-TabBar-tab", has_text="predict dashboard").click()
    expect(board).to_be_visible()
    page.wait_for_timeout(3_000)
    assert asked, "the dashboard did not refresh when shown again"

    # The theme: light, then JupyterLab Dark; the panel follows its colours.
    def colours() -> list[str]:
        return page.evaluate(
            "() => ['#nbdeploy-deployments', '.nbdl-card', '.nbdl-dashboard'].flatMap(s => {"
            " const c = getComputedStyle(document.querySelector(s));"
            " return [c.color, c.backgroundColor]; })"
        )

    light = colours()
    set_theme(page, "JupyterLab Dark")
    page.wait_for_function(
        "() => getComputedStyle(document.querySelector('#nbdeploy-deployments')).color"
        f" !== {json.dumps(light[0])}"
    )
    dark = colours()
    assert all(before != after for before, after in zip(light, dark, strict=True)), (light, dark)
    set_theme(page, "JupyterLab Light")

    assert nbdeploy_errors(console) == []


def set_theme(page: Any, theme: str) -> None:
    """Choose ``theme`` in Settings > Theme, and wait until the page has it."""
    from playwright.sync_api import expect

    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Settings$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Theme$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(f"^{re.escape(theme)}$")).click()
    light = "false" if "Dark" in theme else "true"
    expect(page.locator(f"body[data-jp-theme-light='{light}']")).to_have_count(1, timeout=10_000)


@pytest.mark.timeout(900)
def test_deploy_from_the_toolbar_then_roll_back(lab, first_version, page, console):
    from playwright.sync_api import expect

    open_lab(page, lab, "train.ipynb")
    toolbar_button(page, "train.ipynb", "deploy").click()
    dialog = page.locator(".nbdl-operation-dialog")
    expect(dialog).to_be_visible()
    trees = dialog.locator("input[name='n_estimators']")
    expect(trees).to_have_value("50", timeout=15_000)  # the default, filled in
    expect(dialog.locator("input[name='test_size']")).to_have_value("0.25")
    expect(dialog.locator("select[id$='-function']")).to_have_value("predict")
    expect(dialog.locator("select[id$='-strategy']")).to_have_value("blue-green")
    # The training inputs are offered as the reference (drift and input checks).
    expect(dialog.locator("select[id$='-reference']")).to_have_value("X_train")
    # A value that does not fit its type is refused at its field, before any request.
    trees.fill("2.5")
    expect(dialog.locator(".nbdl-param[data-name='n_estimators'] .nbdl-field-error")).to_have_text(
        "n_estimators: enter a whole number (int)"
    )
    deploy = dialog.get_by_role("button", name="Deploy")
    expect(deploy).to_be_disabled()
    trees.fill("30")
    expect(deploy).to_be_enabled()
    expect(dialog.locator(".nbdl-param[data-name='n_estimators'] .nbdl-field-error")).to_have_text(
        ""
    )
    dialog.locator("input[id$='-mlflow']").uncheck()  # quicker; MLflow is covered elsewhere
    deploy.click()
    expect(dialog.locator(".nbdl-progress-area")).to_be_visible()
    outcome = dialog.locator(".nbdl-outcome")
    expect(outcome).to_contain_text(
        re.compile(r"predict v2 is serving at http://127\.0\.0\.1:\d+"),
        timeout=DEPLOY_SECONDS * 1000,
    )
    expect(outcome).to_be_in_viewport()  # scrolled to, not below the form's fold
    expect(dialog.locator(".nbdl-log li").first).to_be_visible()
    dialog.get_by_role("button", name="Close").last.click()
    expect(dialog).to_be_hidden()
    status, runs = api(lab, "GET", "runs?limit=5")
    assert status == 200 and runs[0]["parameters"].get("n_estimators") == 30, runs
    status, metrics = api(lab, "GET", "deployments/predict/metrics")
    assert status == 200 and metrics["reference"] is True, metrics  # v2 has its reference

    panel = open_panel(page)
    card = panel.locator(".nbdl-card[data-name='predict']")
    expect(card.locator(".nbdl-version")).to_have_text("v2", timeout=15_000)
    expect(card.locator(".nbdl-badge")).to_have_text("serving")

    # Roll back: confirm in JupyterLab's dialog, then v1 is live again.
    card.get_by_role("button", name="Roll back predict").click()
    confirm = page.locator(".jp-Dialog").filter(has_text="Serve an earlier version of predict")
    expect(confirm).to_be_visible()
    expect(confirm).to_contain_text("v2 serves now")
    choice = confirm.locator("select.nbdl-rollback-to")
    expect(choice).to_have_value("1")  # the previous version, named; any kept one can be
    expect(choice.locator("option")).to_have_count(1)
    confirm.get_by_role("button", name="Rollback predict").click()
    expect(card.locator(".nbdl-message")).to_have_text("rolled back: v1 is live", timeout=60_000)
    expect(card.locator(".nbdl-version")).to_have_text("v1")
    status, detail = api(lab, "GET", "deployments/predict")
    assert status == 200 and detail["live_version"] == 1, detail

    assert nbdeploy_errors(console) == []


def test_deploying_a_name_another_notebook_serves_asks_first(lab, first_version, page, console):
    """predict is served from train.ipynb: a deploy of predict from a copy asks before it
    replaces it; cancelled, nothing runs and nothing changes."""
    from playwright.sync_api import expect

    shutil.copy(lab["root"] / "train.ipynb", lab["root"] / "copy.ipynb")
    before = api(lab, "GET", "deployments/predict")[1]
    open_lab(page, lab, "copy.ipynb")
    toolbar_button(page, "copy.ipynb", "deploy").click()
    dialog = page.locator(".nbdl-operation-dialog")
    expect(dialog.locator("input[name='n_estimators']")).to_have_value("50", timeout=15_000)
    dialog.get_by_role("button", name="Deploy").click()
    ask = dialog.locator(".nbdl-ask")
    expect(ask).to_be_visible(timeout=15_000)
    expect(ask).to_contain_text("Replace the deployment?")
    expect(ask).to_contain_text(re.compile(r"predict serves v\d+, deployed from .*train\.ipynb"))
    expect(ask.get_by_role("button", name="Replace the deployment")).to_be_focused()
    ask.get_by_role("button", name="Cancel").click()
    expect(dialog.locator(".nbdl-outcome")).to_contain_text("Not deployed", timeout=10_000)
    after = api(lab, "GET", "deployments/predict")[1]
    assert after["live_version"] == before["live_version"]
    assert len(after["versions"]) == len(before["versions"])
    page.keyboard.press("Escape")
    # Chromium reports the 409 the question came from; nothing else may be in the console.
    expected = "the server responded with a status of 409 (Conflict)"
    assert [error for error in nbdeploy_errors(console) if expected not in error] == []


@pytest.mark.timeout(600)
def test_run_pipeline_from_the_toolbar_lists_the_run(lab, page, console):
    from playwright.sync_api import expect

    open_lab(page, lab, "train.ipynb")
    toolbar_button(page, "train.ipynb", "run").click()
    dialog = page.locator(".nbdl-operation-dialog")
    trees = dialog.locator("input[name='n_estimators']")
    expect(trees).to_have_value("50", timeout=15_000)
    run = dialog.get_by_role("button", name="Run")
    trees.fill("")
    trees.press_sequentially("lots")  # typed, as a user types it
    expect(trees).to_have_value("lots")
    expect(dialog.locator(".nbdl-param[data-name='n_estimators'] .nbdl-field-error")).to_have_text(
        "n_estimators: enter a whole number (int)"
    )
    expect(run).to_be_disabled()
    trees.fill("10")
    expect(run).to_be_enabled()
    dialog.locator("input[id$='-mlflow']").uncheck()
    run.click()
    outcome = dialog.locator(".nbdl-outcome")
    expect(outcome).to_contain_text(
        re.compile(r"run [\w-]+ succeeded: accuracy 0\.\d+"), timeout=RUN_SECONDS * 1000
    )
    page.keyboard.press("Escape")  # closes the dialog from the keyboard
    expect(dialog).to_be_hidden()

    panel = open_panel(page)
    run = panel.locator(
        ".nbdl-run", has=page.locator(".nbdl-run-params", has_text="n_estimators=10")
    )
    expect(run).to_be_visible(timeout=15_000)
    expect(run.locator(".nbdl-badge")).to_have_text("succeeded")
    expect(run.locator(".nbdl-run-metrics")).to_contain_text("accuracy")
    # The output notebook lives in the nbdeploy home, outside the server's root: its path
    # is shown with a copy button, and it opens as a read-only page the server renders.
    path = run.locator(".nbdl-run-output code")
    expect(path).to_have_text(re.compile(r"\.ipynb$"))
    assert Path(path.inner_text()).is_file()
    # In JupyterLab Dark the output notebook is dark too (a white page would glare).
    set_theme(page, "JupyterLab Dark")
    try:
        run.get_by_role("button", name=re.compile("Show the output notebook")).click()
        frame = page.frame_locator(".jp-MainAreaWidget iframe").last
        expect(frame.locator("body")).to_contain_text(
            re.compile(r"accuracy 0\.\d+ on \d+ held-out rows"), timeout=30_000
        )
        expect(frame.locator(".celltag_injected-parameters")).to_contain_text("n_estimators = 10")
        background = frame.locator("body").evaluate(
            "b => getComputedStyle(b).backgroundColor.match(/\\d+/g).slice(0, 3).map(Number)"
        )
        assert sum(background) / 3 < 80, background  # a dark page
    finally:
        set_theme(page, "JupyterLab Light")

    assert nbdeploy_errors(console) == []


@pytest.mark.timeout(600)
def test_a_pipeline_file_runs_from_its_editor(lab, page, console):
    """pipeline.yaml opened in JupyterLab's editor has a Run pipeline button: its steps run
    in order, and the dialog says how each ended."""
    from playwright.sync_api import expect

    page.goto(f"{lab['url']}/lab/tree/pipeline.yaml?token={lab['token']}")
    button = page.get_by_role("tabpanel", name="pipeline.yaml").locator(".nbdl-toolbar-run")
    expect(button).to_be_visible(timeout=60_000)
    button.click()
    dialog = page.locator(".nbdl-operation-dialog")
    expect(dialog).to_contain_text("A pipeline: each step runs its notebook", timeout=15_000)
    dialog.locator("input[id$='-mlflow']").uncheck()
    dialog.get_by_role("button", name="Run").click()
    expect(dialog.locator(".nbdl-outcome")).to_contain_text(
        re.compile(r"succeeded: 2 of 2 steps \(prepare succeeded · train succeeded\)"),
        timeout=RUN_SECONDS * 1000,
    )
    page.keyboard.press("Escape")
    status, runs = api(lab, "GET", "runs?limit=5")
    assert status == 200 and {"prepare", "train"} <= {r.get("step") for r in runs}, runs
    assert nbdeploy_errors(console) == []


def test_a_canary_rolled_back_turns_its_card_red_with_the_reason(lab, page, console, monkeypatch):
    from test_rollout import scaler

    import nbdeploy

    monkeypatch.setenv("NBDEPLOY_HOME", str(lab["home"]))  # the lab's deployments
    nbdeploy.deploy(scaler(2), name="scale", mlflow=False)
    try:
        nbdeploy.deploy(scaler(3), name="scale", mlflow=False, strategy="canary", interval=600)
        from playwright.sync_api import expect

        open_lab(page, lab)
        card = open_panel(page).locator(".nbdl-card[data-name='scale']")
        line = card.locator(".nbdl-rollout")
        expect(line).to_have_text(
            re.compile(r"^canary v2: running at 10% \(step 1 of"), timeout=15_000
        )
        nbdeploy.rollback("scale")  # the canary ends, rolled back, with its reason
        expect(line).to_contain_text("canary v2: rolled back", timeout=15_000)
        expect(line).to_have_class(re.compile(r"\bnbdl-error-text\b"))
        expect(line).to_have_attribute("role", "alert")
        assert nbdeploy_errors(console) == []
    finally:
        nbdeploy.stop("scale")


def test_a_stopped_deployment_greys_its_card(lab, first_version, page, console):
    """After a stop the card shows no URL and no figures, and only what applies."""
    from playwright.sync_api import expect

    open_lab(page, lab)
    card = open_panel(page).locator(".nbdl-card[data-name='predict']")
    expect(card.locator(".nbdl-badge")).to_have_text("serving", timeout=15_000)
    card.get_by_role("button", name="Stop predict").click()
    confirm = page.locator(".jp-Dialog").filter(has_text="Stop predict?")
    confirm.get_by_role("button", name="Stop predict").click()
    expect(card.locator(".nbdl-message")).to_have_text("stopped", timeout=60_000)
    expect(card.locator(".nbdl-badge")).to_have_text("stopped")
    expect(card).to_have_class(re.compile(r"\bnbdl-stopped\b"))
    expect(card.locator(".nbdl-url")).to_be_hidden()
    for field in ("rps", "p99", "errors", "traffic"):
        expect(card.locator(f".nbdl-field-{field}")).to_have_text("–")
    for action in ("Stop predict", "Roll back predict", "Promote the new version of predict"):
        expect(card.get_by_role("button", name=action)).to_be_disabled()
    assert nbdeploy_errors(console) == []


@pytest.mark.timeout(600)
def test_schedules_in_the_sidebar(lab, page, console, make_notebook):
    """A schedule made through the API is listed with when it fires; Run now fires it and
    its history links the run it made; a schedule whose command fails turns red with the
    reason; Pause and Resume change its state."""
    from playwright.sync_api import expect

    make_notebook("failing.ipynb", ["raise RuntimeError('no data today')"], folder=lab["root"])
    nightly = {
        "name": "nightly",
        "command": ["run", "prepare.ipynb", "--no-mlflow"],
        "cron": "0 2 * * *",
        "tz": "Europe/Berlin",
    }
    broken = {"name": "broken", "command": ["run", "failing.ipynb", "--no-mlflow"]}
    broken["cron"] = "0 3 * * *"
    for body in (nightly, broken):
        status, answer = api(lab, "POST", "schedules", body)
        assert status == 201, answer
    try:
        open_lab(page, lab)
        panel = open_panel(page)
        item = panel.locator(".nbdl-schedule[data-name='nightly']")
        expect(item.locator(".nbdl-badge").first).to_have_text("active", timeout=15_000)
        expect(item.locator(".nbdl-schedule-when")).to_have_text("0 2 * * * (Europe/Berlin)")
        expect(item.locator(".nbdl-schedule-next")).to_contain_text("next: ")
        item.get_by_role("button", name="Run nightly now").click()
        fire = item.locator(".nbdl-fire").first
        expect(fire.locator(".nbdl-badge")).to_have_text("succeeded", timeout=RUN_SECONDS * 1000)
        run_link = fire.locator(".nbdl-fire-runs .nbdl-link")
        expect(run_link).to_have_count(1)
        run_id = run_link.inner_text()
        run_link.click()  # the run's output notebook opens in the main area
        frame = page.frame_locator(f"#nbdeploy-run-output-{run_id} iframe")
        expect(frame.locator("body")).to_contain_text("positive_share", timeout=30_000)

        bad = panel.locator(".nbdl-schedule[data-name='broken']")
        bad.get_by_role("button", name="Run broken now").click()
        last = bad.locator(".nbdl-schedule-last")
        expect(bad.locator(".nbdl-badge").first).to_have_text("failing", timeout=RUN_SECONDS * 1000)
        expect(last).to_contain_text("last: failed")
        expect(last).to_have_class(re.compile(r"\bnbdl-error-text\b"))
        expect(last).to_have_attribute("role", "alert")

        item.get_by_role("button", name="Pause or resume nightly").click()
        expect(item.locator(".nbdl-badge").first).to_have_text("paused", timeout=15_000)
        expect(item.locator(".nbdl-schedule-next")).to_have_text("next: —")
        item.get_by_role("button", name="Pause or resume nightly").click()
        expect(item.locator(".nbdl-badge").first).to_have_text("active", timeout=15_000)
        assert nbdeploy_errors(console) == []
    finally:
        for name in ("nightly", "broken"):
            api(lab, "POST", f"schedules/{name}/remove")
