"""Browser: a real JupyterLab (started here on 127.0.0.1 with a token and a temporary root)
driven by Playwright with Debian's Chromium. A notebook deploys a tiny function with
``%deploy`` and shows the deploy card and the dashboard; the test reads what the page shows.

Needs ``/usr/bin/chromium`` (``make test`` installs it when run as root) and the Python
``playwright`` package (the dev extra); without them the test is skipped, and fails when CI
is set. On a failure (always, with NBDEPLOY_KEEP_SCREENSHOTS=1) a screenshot, the page's
console and JupyterLab's log are kept under ``ARTIFACTS`` (the path is printed).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import notebook_json, require_component

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("python_kernel")]

CHROMIUM = Path(os.environ.get("NBDEPLOY_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = Path(
    os.environ.get("NBDEPLOY_TEST_ARTIFACTS", Path(__file__).resolve().parent.parent / ".artifacts")
)
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
]
LAB_START_SECONDS = 60
DEPLOY_SECONDS = 150  # kernel start, a cold %deploy (9-14 s here) and its example call
FEATURES = 3

CELLS = [
    "%load_ext nbdeploy\n"
    "import numpy as np\n"
    f"X = np.random.default_rng(0).normal(size=(300, {FEATURES}))\n"
    "def score(rows: list[list[float]]) -> list[float]:\n"
    "    return [round(float(sum(r)), 4) for r in rows]",
    "%deploy score --reference X --no-mlflow",
    "import json, urllib.request, nbdeploy\n"
    "url = nbdeploy.status('score')[0].url + '/score'\n"
    "for i in range(25):\n"
    f"    body = json.dumps({{'rows': [[0.1 * i] * {FEATURES}]}}).encode()\n"
    "    request = urllib.request.Request(url, data=body,\n"
    "        headers={'Content-Type': 'application/json'})\n"
    "    urllib.request.urlopen(request).read()",
    "from nbdeploy.widgets.dashboard import dashboard\nboard = dashboard('score')\nboard",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def browser_ready() -> None:
    require_component(
        "Chromium",
        CHROMIUM.exists(),
        f"no browser at {CHROMIUM}: apt-get install chromium fonts-liberation "
        "(make test does it when run as root)",
    )
    require_component(
        "Playwright",
        importlib.util.find_spec("playwright") is not None,
        "pip install playwright (in the dev extra: pip install -e '.[dev]')",
    )


@pytest.fixture(scope="module")
def lab(browser_ready, tmp_path_factory) -> Iterator[dict[str, Any]]:
    """JupyterLab on 127.0.0.1 with a token, its own root, settings and nbdeploy home."""
    base = tmp_path_factory.mktemp("lab")
    root = base / "root"
    root.mkdir()
    (root / "ui.ipynb").write_text(json.dumps(notebook_json(CELLS)), encoding="utf-8")
    with running_lab(base, root) as lab:
        yield lab


@contextlib.contextmanager
def running_lab(base: Path, root: Path, *arguments: str) -> Iterator[dict[str, Any]]:
    """JupyterLab (with ``arguments``) on 127.0.0.1 with a token, serving ``root``, with its
    settings, runtime and nbdeploy home under ``base``; stopped with its kernels at the end,
    and the deployments made meanwhile with it."""
    home = base / "nbdeploy-home"
    # No "get notified about Jupyter news?" toast over the outputs.
    notifications = base / "settings" / "@jupyterlab" / "apputils-extension"
    notifications.mkdir(parents=True)
    (notifications / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')
    token, port = secrets.token_hex(16), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "JPY_"))}
    env.update(
        NBDEPLOY_HOME=str(home),
        JUPYTERLAB_SETTINGS_DIR=str(base / "settings"),
        JUPYTERLAB_WORKSPACES_DIR=str(base / "workspaces"),
        JUPYTER_RUNTIME_DIR=str(base / "runtime"),
    )
    log = (base / "lab.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={root}",
            "--ServerApp.allow_root=True",
            "--LabApp.news_url=",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            *arguments,
        ],
        cwd=root,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + LAB_START_SECONDS
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not start: {(base / 'lab.log').read_text()}")
                time.sleep(0.3)
        yield {"url": url, "token": token, "home": home, "root": root, "log": base / "lab.log"}
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # the server, its kernels and their children
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()
        from nbdeploy.deployment import verbs
        from nbdeploy.store import StateStore

        if (home / "state.db").exists():
            state = StateStore(home / "state.db")
            for deployment in verbs.status(store=state):
                verbs.stop(deployment.name, store=state)


class Console(list[str]):
    """The page's console errors and uncaught exceptions."""


@pytest.fixture
def console() -> Console:
    return Console()


@pytest.fixture
def page(lab, request, console) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    failed_before = request.session.testsfailed
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = browser.new_context(
            viewport={"width": 1400, "height": 1000},
            permissions=["clipboard-read", "clipboard-write"],
        )
        tab = context.new_page()
        tab.on(
            "console",
            lambda message: (
                console.append(f"console {message.type}: {message.text}")
                if message.type == "error"
                else None
            ),
        )
        tab.on("pageerror", lambda error: console.append(f"page error: {error}"))
        try:
            yield tab
        finally:
            failed = request.session.testsfailed > failed_before  # this test's call failed
            if failed or os.environ.get("NBDEPLOY_KEEP_SCREENSHOTS"):
                keep_artifacts(tab, request.node.name, console, lab["log"])
            context.close()
            browser.close()


def keep_artifacts(tab: Any, name: str, problems: list[str], lab_log: Path) -> None:
    folder = ARTIFACTS / "browser" / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    folder.mkdir(parents=True, exist_ok=True)
    try:
        tab.screenshot(path=str(folder / "page.png"))
        for selector in (".nbd-deployment-card", ".nbd-dashboard"):  # whole, not scrolled
            for index, element in enumerate(tab.locator(selector).all()):
                element.screenshot(path=str(folder / f"{selector[1:]}-{index}.png"))
    except Exception as error:  # the page may be gone: keep the rest
        problems.append(f"(no screenshot: {error})")
    (folder / "console.txt").write_text("\n".join(problems), encoding="utf-8")
    if lab_log.exists():
        shutil.copy(lab_log, folder / "jupyterlab.log")
    print(f"\nbrowser test artifacts: {folder}")


def run_all_cells(tab: Any) -> None:
    tab.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    tab.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()


def test_the_card_and_the_dashboard_render_in_jupyterlab(lab, page, console):
    from playwright.sync_api import expect

    page.goto(f"{lab['url']}/lab/tree/ui.ipynb?token={lab['token']}")
    kernel_idle = page.get_by_text(re.compile(r"Python 3 \(ipykernel\) \| Idle"))
    expect(kernel_idle).to_be_visible(timeout=60_000)
    run_all_cells(page)

    # The deploy card: badge, URL with its copy button, the compact curl.
    card = page.locator(".nbd-deployment")
    expect(card).to_be_visible(timeout=DEPLOY_SECONDS * 1000)
    expect(card.locator(".nbd-head .nbd-badge")).to_have_text("serving")
    url = card.locator(".nbd-url")
    expect(url).to_have_text(re.compile(r"^http://127\.0\.0\.1:\d+/score$"))
    buttons = card.locator("button.nbd-copy")
    expect(buttons).to_have_count(2)
    buttons.first.click()
    expect(buttons.first).to_have_text("copied")
    assert page.evaluate("navigator.clipboard.readText()") == url.inner_text()
    buttons.nth(1).click()
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied.startswith("curl -X POST ") and "\n" not in copied
    expect(card.locator(".nbd-curl")).to_contain_text("-H 'Content-Type: application/json'")
    # Labels and values line up: every label starts at the same x, left-aligned.
    lefts = card.locator(".nbd-key").evaluate_all(
        "keys => keys.map(k => [k.getBoundingClientRect().left, getComputedStyle(k).textAlign])"
    )
    assert len({left for left, _ in lefts}) == 1 and {align for _, align in lefts} == {"left"}

    # The dashboard: figures, the plotly chart (SVG), the drift table, the buttons.
    board = page.locator(".nbd-dashboard")
    expect(board).to_be_visible(timeout=60_000)
    expect(board.locator(".nbd-head .nbd-badge").first).to_have_text("serving")
    expect(board.locator(".js-plotly-plot .main-svg").first).to_be_visible(timeout=60_000)
    expect(board.locator(".js-plotly-plot .scatterlayer .trace")).to_have_count(4)
    requests = board.locator(".nbd-tile", has_text="requests in 10 min").locator(".nbd-tile-value")
    expect(requests).to_have_text(re.compile(r"^(2[5-9]|[3-9]\d)$"), timeout=20_000)
    drift = board.locator("table", has=page.locator("th", has_text="PSI"))
    rows = drift.locator("tbody tr")
    expect(rows.first).to_be_visible()
    assert rows.count() >= FEATURES
    for index in range(FEATURES):
        row = rows.nth(index)
        expect(row.locator("td").first).to_have_text(f"f{index}")
        expect(row.locator(".nbd-badge")).to_have_count(1)
    quality = board.locator("table", has=page.locator("th", has_text="type errors"))
    expect(quality.locator("tbody tr")).to_have_count(FEATURES)
    board.get_by_role("button", name="stop").first.click()
    expect(board.get_by_text("Stop score?")).to_be_visible()
    board.get_by_role("button", name="cancel").click()
    expect(board.get_by_text("Stop score?")).to_be_hidden()
    board.get_by_role("button", name="rollback").click()
    expect(board.locator(".nbd-warn-text", has_text="could not rollback score")).to_be_visible(
        timeout=30_000
    )

    # JupyterLab's dark theme: the card and the dashboard follow its colours.
    def colours() -> list[str]:
        return page.evaluate(
            "() => ['.nbd-deployment', '.nbd-dashboard'].flatMap(s => {"
            " const e = document.querySelector(s); const c = getComputedStyle(e);"
            " return [c.color, c.backgroundColor]; })"
        )

    light = colours()
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Settings$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Theme$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^JupyterLab Dark$")).click()
    expect(page.locator("body[data-jp-theme-light='false']")).to_have_count(1, timeout=10_000)
    page.wait_for_function(
        f"() => getComputedStyle(document.querySelector('.nbd-deployment'))"
        f".color !== {json.dumps(light[0])}"
    )
    dark = colours()
    assert all(before != after for before, after in zip(light, dark, strict=True)), (light, dark)

    assert list(console) == []
