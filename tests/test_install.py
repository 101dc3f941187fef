"""Integration: the wheel built from this checkout installs into a fresh venv and carries
everything: the ``nbdeploy`` command (a deploy from a folder outside the repository), the
JupyterLab extension and the Jupyter server extension, both enabled on install."""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import FreshVenv
from support import post

pytestmark = pytest.mark.integration

ANSI = re.compile(r"\x1b\[[0-9;]*m")
SERVE = """
def predict(rows: list[list[float]]) -> list[float]:
    return [sum(row) for row in rows]
"""


@dataclass(frozen=True)
class Ran:
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


def run(venv: FreshVenv, env: dict[str, str], cwd: Path, *command: str) -> Ran:
    """A command of the fresh venv: ``nbdeploy`` or ``python`` (the Jupyter apps run by
    their entry modules: their commands are this environment's, not the venv's)."""
    completed = subprocess.run(
        [str(venv.bin / command[0]), *command[1:]],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    ran = Ran(ANSI.sub("", completed.stdout), ANSI.sub("", completed.stderr))
    assert completed.returncode == 0, f"{command} exited {completed.returncode}: {ran}"
    return ran


def stop_everything(venv: FreshVenv, env: dict[str, str], name: str) -> None:
    """The deployment, then the daemon (nbdeploy daemon stop) and its warm launcher."""
    from nbdeploy.deployment.runtime import launcher

    for command in (["stop", name], ["daemon", "stop"]):
        subprocess.run(
            [str(venv.bin / "nbdeploy"), *command],
            env=env,
            capture_output=True,
            timeout=120,
            check=False,
        )
    launcher.shutdown(Path(env["NBDEPLOY_HOME"]))


def test_the_wheel_installs_the_command_and_both_jupyter_extensions(
    tmp_path, home, nbdeploy_wheel, fresh_venv, make_notebook
):
    venv = fresh_venv(tmp_path / "venv")
    elsewhere = tmp_path / "elsewhere"  # not the repository: nothing found from a checkout
    elsewhere.mkdir()
    env = venv.env(home=tmp_path / "user-home", nbdeploy_home=home)
    run(venv, env, elsewhere, "python", "-m", "pip", "install", str(nbdeploy_wheel))
    where = run(venv, env, elsewhere, "python", "-c", "import nbdeploy; print(nbdeploy.__file__)")
    assert where.out.startswith(str(venv.prefix)), where

    assert "usage: nbdeploy" in run(venv, env, elsewhere, "nbdeploy", "--help").out

    # `jupyter labextension list` and `jupyter server extension list` (their entry points):
    # nbdeploy's are found under the venv's own prefix, enabled, and valid.
    labextensions = run(venv, env, elsewhere, "python", "-m", "jupyterlab.labextensions", "list")
    listed = labextensions.text.split(f"{venv.prefix}/share/jupyter/labextensions", 1)
    assert len(listed) == 2, labextensions
    assert re.search(r"nbdeploy-labextension v\S+ enabled\s+OK", listed[1]), labextensions
    server = run(
        venv, env, elsewhere, "python", "-m", "jupyter_server.extension.serverextension", "list"
    )
    config = server.text.split(f"Config dir: {venv.prefix}/etc/jupyter", 1)
    assert len(config) == 2, server
    valid = r"nbdeploy enabled\s+- Validating nbdeploy\.\.\.\s+nbdeploy \S+ OK"
    assert re.search(valid, config[1]), server

    notebook = make_notebook("serve.ipynb", [(SERVE, ["nbdeploy:serve"])], folder=elsewhere)
    deploy = ["deploy", notebook.name, "--name", "from-wheel", "--no-mlflow", "--json"]
    try:
        result = json.loads(run(venv, env, elsewhere, "nbdeploy", *deploy).out.splitlines()[-1])
        assert result["status"] == "serving", result
        code, body = post(result["endpoint"], {"rows": [[1.0, 2.0], [3.0, 4.5]]})
        assert code == 200 and json.loads(body) == [3.0, 7.5], body
        stopped = run(venv, env, elsewhere, "nbdeploy", "stop", "from-wheel", "--json").out
        assert json.loads(stopped.splitlines()[-1])["status"] == "stopped", stopped
    finally:
        stop_everything(venv, env, "from-wheel")
