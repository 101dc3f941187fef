"""Shared fixtures: a private NBDEPLOY_HOME per test, notebook factories, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

VENV_BIN = Path(sys.executable).parent
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
            capture_output=True,
            text=True,
            cwd=cwd,
            env=env,
            timeout=timeout,
            check=False,
        )
        return CliResult(completed.returncode, completed.stdout, completed.stderr)

    return run
