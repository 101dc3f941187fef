"""Shared fixtures: a private NBDEPLOY_HOME per test, notebook factories, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest

VENV_BIN = Path(sys.executable).parent
REPOSITORY = Path(__file__).resolve().parent.parent
OWNED_PROCESSES = ("nbdeploy.deployment.runtime.launcher", "nbdeploy.deployment.runtime.daemon")


def require_component(name: str, available: bool, how: str) -> None:
    """Skip when a component is missing on a developer machine; fail in CI (CI is set)."""
    if available:
        return
    message = f"{name} is not available: {how}"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session", autouse=True)
def _stop_launchers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Daemons and launchers outlive kernels by design: end those of this session's homes
    with it."""
    yield
    import psutil

    base = str(tmp_path_factory.getbasetemp())
    for process in psutil.process_iter(["cmdline"]):
        try:
            command = " ".join(process.info["cmdline"] or [])
            if not any(kind in command for kind in OWNED_PROCESSES):
                continue
            if process.environ().get("NBDEPLOY_HOME", "").startswith(base):
                process.terminate()
        except psutil.Error:
            continue


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Every test gets its own state directory and MLflow store; no stray session env."""
    state = tmp_path / "nbdeploy-home"
    monkeypatch.setenv("NBDEPLOY_HOME", str(state))
    for name in (
        "MLFLOW_TRACKING_URI",
        "MLFLOW_EXPERIMENT_NAME",
        "JPY_SESSION_NAME",
        "NBDEPLOY_RUN_DIR",
        "NBDEPLOY_RUN_ID",
    ):
        monkeypatch.delenv(name, raising=False)
    yield state
    from nbdeploy.deployment.runtime import client, launcher

    if state.is_dir():
        client.shutdown(state)  # the servers it owned were stopped by their tests
        launcher.shutdown(state)


@pytest.fixture(scope="session")
def python_kernel() -> str:
    from jupyter_client.kernelspec import KernelSpecManager

    available = "python3" in KernelSpecManager().find_kernel_specs()
    require_component("the python3 Jupyter kernel", available, "pip install ipykernel")
    return "python3"


NotebookFactory = Callable[..., Path]


def notebook_json(cells: list[Any], kernel: str = "python3") -> dict[str, Any]:
    """Cells are source strings, or (source, [tags]) pairs; a markdown cell is ("md", text)."""
    built = []
    for cell in cells:
        if isinstance(cell, tuple) and cell[0] == "md":
            built.append({"cell_type": "markdown", "metadata": {}, "source": cell[1]})
            continue
        source, tags = (cell, []) if isinstance(cell, str) else cell
        built.append(
            {
                "cell_type": "code",
                "execution_count": None,
                "metadata": {"tags": tags} if tags else {},
                "outputs": [],
                "source": source,
            }
        )
    return {
        "cells": built,
        "metadata": {
            "kernelspec": {"name": kernel, "display_name": kernel, "language": "python"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }


@pytest.fixture
def make_notebook(tmp_path: Path) -> NotebookFactory:
    def make(
        name: str, cells: list[Any], kernel: str = "python3", folder: Path | None = None
    ) -> Path:
        path = (folder or tmp_path) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(notebook_json(cells, kernel)), encoding="utf-8")
        return path

    return make


class CliResult:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err

    @property
    def json(self) -> Any:
        return json.loads(self.out.strip().splitlines()[-1])

    def __repr__(self) -> str:
        return f"CliResult(code={self.code}, out={self.out[-2000:]!r}, err={self.err[-2000:]!r})"


@pytest.fixture
def cli(home: Path) -> Callable[..., CliResult]:
    """Run the real ``nbdeploy`` executable of this environment."""

    def run(*args: str, cwd: Path | None = None, timeout: float = 240) -> CliResult:
        env = dict(os.environ)
        completed = subprocess.run(
            [str(VENV_BIN / "nbdeploy"), *args],
            stdin=subprocess.DEVNULL,  # never a terminal: a command that would ask refuses
            capture_output=True,
            text=True,
            cwd=cwd,
            env=env,
            timeout=timeout,
            check=False,
        )
        return CliResult(completed.returncode, completed.stdout, completed.stderr)

    return run


@pytest.fixture(scope="session")
def nbdeploy_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel of this checkout, built as a release is: the build backend of this
    environment, and the JupyterLab extension that make prebuilt (no Node here)."""
    built = all(
        (REPOSITORY / "nbdeploy" / "labextension" / name).is_file()
        for name in ("package.json", "install.json")
    )
    require_component("the built JupyterLab extension", built, "run make labextension")
    backend = find_spec("hatchling") is not None and find_spec("hatch_jupyter_builder") is not None
    require_component("hatchling and hatch-jupyter-builder", backend, "pip install -e '.[dev]'")
    target = tmp_path_factory.mktemp("wheel")
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    command += ["--disable-pip-version-check", "--wheel-dir", str(target), str(REPOSITORY)]
    completed = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env={**os.environ, "HATCH_JUPYTER_BUILDER_SKIP_NPM": "1"},
        timeout=300,
        check=False,
    )
    wheels = sorted(target.glob("nbdeploy-*.whl"))
    assert completed.returncode == 0 and len(wheels) == 1, completed.stderr[-3000:]
    return wheels[0]


@dataclass(frozen=True)
class FreshVenv:
    """A new venv that finds this environment's packages through a .pth file (nothing is
    downloaded) but has neither nbdeploy nor any command of this environment."""

    prefix: Path

    @property
    def bin(self) -> Path:
        return self.prefix / "bin"

    def env(self, home: Path, nbdeploy_home: Path | None = None) -> dict[str, str]:
        """Its bin first on PATH (this environment's bin removed), a private HOME, pip
        offline."""
        home.mkdir(parents=True, exist_ok=True)
        path = [p for p in os.environ.get("PATH", "").split(os.pathsep) if Path(p) != VENV_BIN]
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("JUPYTER_", "PYTHON", "MLFLOW_", "JPY_", "NBDEPLOY_", "PIP_"))
            and key != "VIRTUAL_ENV"
        }
        env.update(
            PATH=os.pathsep.join([str(self.bin), *path]),
            VIRTUAL_ENV=str(self.prefix),
            HOME=str(home),
            PIP_NO_INDEX="1",
            PIP_DISABLE_PIP_VERSION_CHECK="1",
        )
        if nbdeploy_home is not None:
            env["NBDEPLOY_HOME"] = str(nbdeploy_home)
        return env


@pytest.fixture
def fresh_venv() -> Callable[[Path], FreshVenv]:
    """Make a FreshVenv at a given path (without pip of its own: ``python -m pip`` is this
    environment's, installing into the venv)."""

    def make(prefix: Path) -> FreshVenv:
        subprocess.run(
            [sys.executable, "-m", "venv", "--without-pip", str(prefix)], check=True, timeout=120
        )
        venv = FreshVenv(prefix)
        site = subprocess.run(
            [str(venv.bin / "python"), "-c", "import site; print(site.getsitepackages()[0])"],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout.strip()
        ours = dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib")])
        Path(site, "_nbdeploy_test_environment.pth").write_text("\n".join(ours) + "\n")
        return venv

    return make
