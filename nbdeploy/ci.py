"""``nbdeploy ci init``: a GitHub Actions workflow that installs the project and runs its
notebook pipelines with nbdeploy, publishing output notebooks and JUnit reports."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

from nbdeploy.errors import NbdeployError
from nbdeploy.templating import render

_SAFE_PATH = re.compile(r"[A-Za-z0-9._/ -]+")
_SKIP_DIRS = {".git", ".venv", "venv", "node_modules", ".ipynb_checkpoints", ".nbdeploy"}


def find_pipelines(root: Path) -> list[Path]:
    """Every pipeline.yaml under ``root`` (outside virtualenvs and checkpoints)."""
    found = []
    for path in sorted(root.rglob("pipeline.y*ml")):
        if not _SKIP_DIRS.intersection(part for part in path.relative_to(root).parts):
            found.append(path.relative_to(root))
    return found


def _installs(root: Path) -> list[str]:
    installs = []
    if (root / "requirements.txt").exists():
        installs.append("pip install -r requirements.txt")
    if (root / "pyproject.toml").exists() or (root / "setup.py").exists():
        installs.append("pip install .")
    installs.append("pip install nbdeploy")
    return installs


def write_github_workflow(
    path: Path,
    *,
    targets: list[str] | None = None,
    python_version: str = "3.11",
    overwrite: bool = False,
    root: Path | None = None,
) -> Path:
    root = (root or Path.cwd()).resolve()
    if path.exists() and not overwrite:
        raise NbdeployError(f"{path} exists already", "pass --force to overwrite it")
    if not re.fullmatch(r"3\.\d{1,2}", python_version):
        raise NbdeployError(f"--python {python_version!r} is not a Python version such as 3.11")
    chosen = [Path(t) for t in targets] if targets else find_pipelines(root)
    if not chosen:
        raise NbdeployError(
            f"no pipeline.yaml found under {root}",
            "name the notebooks or pipelines to run: nbdeploy ci init train.ipynb",
        )
    entries: list[dict[str, Any]] = []
    for target in chosen:
        resolved = (root / target).resolve()
        if not resolved.exists():
            raise NbdeployError(f"{target} does not exist (relative to {root})")
        if not resolved.is_relative_to(root):
            raise NbdeployError(f"{target} is outside the project directory {root}")
        relative = resolved.relative_to(root).as_posix()
        if not _SAFE_PATH.fullmatch(relative):
            raise NbdeployError(
                f"{relative!r}: a workflow target may only contain letters, digits, spaces "
                "and . _ - /",
                "rename the file (this keeps the workflow free of shell and expression injection)",
            )
        entries.append(
            {
                "label": relative,
                "quoted": shlex.quote(relative),
                "slug": re.sub(r"[^A-Za-z0-9_.-]+", "-", relative.rsplit(".", 1)[0]).strip("-"),
            }
        )
    text = render(
        "github-workflow.yml.j2",
        targets=entries,
        python_version=python_version,
        installs=_installs(root),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path
