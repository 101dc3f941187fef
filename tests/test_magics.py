"""Integration: ``%load_ext nbdeploy`` and ``%deploy run`` inside a real kernel."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from jupyter_client.manager import start_new_kernel

from nbdeploy.magics import VSCODE_NOTEBOOK_VARIABLE, DeployMagics
from nbdeploy.store import StateStore
from nbdeploy.store.runs import RunStore

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("python_kernel")]


WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def run_in_kernel(
    kc, code: str, timeout: float = 180, ok: bool = True, displays: list | None = None
) -> str:
    """Execute code; return everything the kernel printed (stdout, stderr, errors) and
    collect displayed data into ``displays``."""
    chunks: list[str] = []

    def collect(msg):
        content = msg["content"]
        if msg["msg_type"] == "stream":
            chunks.append(content["text"])
        elif msg["msg_type"] == "error":
            chunks.append(f"{content['ename']}: {content['evalue']}")
        elif msg["msg_type"] == "display_data" and displays is not None:
            displays.append(content["data"])

    reply = kc.execute_interactive(code, timeout=timeout, output_hook=collect)
    assert (reply["content"]["status"] == "ok") == ok, "".join(chunks)
    return "".join(chunks)


@pytest.fixture
def kernel(home: Path, tmp_path: Path, make_notebook):
    notebook = make_notebook(
        "session.ipynb",
        [
            ("n: int = 1  # a number", ["parameters"]),
            ("%load_ext nbdeploy\n%deploy run -p n 99", ["nbdeploy:skip"]),
            "import nbdeploy\nnbdeploy.log_metric('double', n * 2)",
        ],
    )
    env = dict(os.environ, JPY_SESSION_NAME=str(notebook), NBDEPLOY_HOME=str(home))
    km, kc = start_new_kernel(kernel_name="python3", env=env, cwd=str(tmp_path))
    try:
        yield kc, notebook
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def test_deploy_run_magic_runs_the_saved_notebook(kernel, home):
    kc, notebook = kernel
    output = run_in_kernel(kc, "%load_ext nbdeploy")
    assert output == ""
    displays: list = []
    output = run_in_kernel(kc, "%deploy run -p n 21 --no-mlflow", displays=displays)
    assert any(WIDGET_VIEW in data for data in displays), displays  # the progress widget
    state = run_in_kernel(
        kc,
        "import warnings\nwarnings.simplefilter('ignore')\nfrom ipywidgets import Widget\n"
        "bars = [w for w in Widget.widgets.values() if type(w).__name__ == 'IntProgress']\n"
        "print(bars[-1].value, bars[-1].max, bars[-1].bar_style)",
    )
    assert state.split() == ["3", "3", "success"]  # parameters, injected, the metric cell
    assert "running the saved file session.ipynb" in output
    assert "session.ipynb succeeded" in output and "double=42" in output
    [record] = RunStore(StateStore(home / "state.db")).recent()
    assert record.parameters == {"n": 21} and record.metrics == {"double": 42.0}
    assert record.notebook == str(notebook)


def test_deploy_magic_reports_user_errors_without_a_traceback(kernel):
    kc, _ = kernel
    run_in_kernel(kc, "%load_ext nbdeploy")
    output = run_in_kernel(kc, "%deploy run -p n lots", ok=False)
    assert "UsageError: nbdeploy: parameter 'n' of session.ipynb expects int, got lots" in output
    assert "Traceback" not in output
    output = run_in_kernel(kc, "%deploy run --parallel", ok=False)
    assert "nbdeploy: %deploy run: argument --parallel: expected one argument" in output
    output = run_in_kernel(kc, "%deploy params")
    assert "n     int   1        a number" in output
    output = run_in_kernel(kc, "%deploy frobnicate", ok=False)
    assert "unknown subcommand 'frobnicate'" in output
    output = run_in_kernel(kc, "%deploy run -p n 0 --no-mlflow --timeout 30 -p n oops", ok=False)
    assert "expects int, got oops" in output


def test_deploy_run_inside_a_run_does_not_recurse(kernel, cli, home):
    _, notebook = kernel
    # A notebook whose own cell says `%deploy run` (not tagged skip) must not run itself again.
    text = notebook.read_text().replace('"nbdeploy:skip"', '"other"')
    notebook.write_text(text)
    result = cli("run", str(notebook), "--no-mlflow", "--log-output")
    assert result.code == 0, result
    assert "`%deploy run` ignored: this notebook is itself running under nbdeploy" in result.out
    assert len(RunStore(StateStore(home / "state.db")).recent()) == 1


@pytest.fixture
def shell(monkeypatch):
    """An in-process IPython shell with the magics (no kernel: nothing names its notebook
    but what a test sets)."""
    ip = InteractiveShell.instance()
    ip.register_magics(DeployMagics)
    monkeypatch.delitem(ip.user_ns, VSCODE_NOTEBOOK_VARIABLE, raising=False)
    return ip


def test_the_magics_find_a_vs_code_notebook(shell, make_notebook, monkeypatch, capsys):
    notebook = make_notebook("vscode.ipynb", [("n: int = 1  # a number", ["parameters"])])
    monkeypatch.setitem(shell.user_ns, VSCODE_NOTEBOOK_VARIABLE, str(notebook))
    shell.run_line_magic("deploy", "params")
    assert "n     int   1        a number" in capsys.readouterr().out
    # `%deploy run` takes the same notebook: its parameters are checked before any kernel.
    with pytest.raises(UsageError) as raised:
        shell.run_line_magic("deploy", "run -p n lots --no-mlflow")
    assert "parameter 'n' of vscode.ipynb expects int, got lots" in str(raised.value)


@pytest.mark.parametrize("command", ["run", "params"])
def test_a_kernel_that_does_not_know_its_notebook_says_to_name_it(shell, command):
    with pytest.raises(UsageError) as raised:
        shell.run_line_magic("deploy", command)
    message = str(raised.value)
    assert f"%deploy {command}: this kernel does not know its notebook" in message
    assert f"hint: pass the notebook's path: %deploy {command} train.ipynb" in message
