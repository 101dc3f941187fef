"""Read a notebook file as plain JSON (fast: no nbformat import) and answer questions about it.

The conventions nbdeploy reads are cell tags: ``parameters`` (papermill's parameter cell),
``nbdeploy:skip`` (left out of runs and services) and ``nbdeploy:serve`` (the cell that
defines a service's entry function).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nbdeploy.errors import NotebookError

PARAMETERS_TAG = "parameters"
INJECTED_TAG = "injected-parameters"
SKIP_TAG = "nbdeploy:skip"
SERVE_TAG = "nbdeploy:serve"


def cell_source(cell: dict[str, Any]) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else str(source)


def cell_tags(cell: dict[str, Any]) -> list[str]:
    tags = cell.get("metadata", {}).get("tags", [])
    return [str(tag) for tag in tags] if isinstance(tags, list) else []


def first_line(cell: dict[str, Any], width: int = 72) -> str:
    """The first non-blank source line of a cell, shortened to ``width`` characters."""
    for line in cell_source(cell).splitlines():
        if line.strip():
            line = line.strip()
            return line if len(line) <= width else line[: width - 1] + "…"
    return ""


@dataclass
class Notebook:
    """A notebook file's JSON plus its path; ``cells`` keep their 0-based positions."""

    path: Path
    data: dict[str, Any]

    @property
    def cells(self) -> list[dict[str, Any]]:
        cells: list[dict[str, Any]] = self.data["cells"]
        return cells

    @property
    def name(self) -> str:
        return self.path.name

    def tagged(self, tag: str) -> list[int]:
        """Indexes (0-based) of the cells that carry ``tag``."""
        return [i for i, cell in enumerate(self.cells) if tag in cell_tags(cell)]

    @property
    def kernel_name(self) -> str | None:
        spec = self.data.get("metadata", {}).get("kernelspec") or {}
        name = spec.get("name")
        return str(name) if name else None

    @property
    def language(self) -> str:
        metadata = self.data.get("metadata", {})
        language = (metadata.get("kernelspec") or {}).get("language") or (
            metadata.get("language_info") or {}
        ).get("name")
        return str(language or "python")

    def source_digest(self) -> str:
        """A digest of what executes: code cells' source and tags, not outputs or metadata."""
        digest = hashlib.sha256()
        for cell in self.cells:
            if cell.get("cell_type") != "code":
                continue
            digest.update(json.dumps([cell_source(cell), sorted(cell_tags(cell))]).encode())
        return digest.hexdigest()


def read_notebook(path: str | Path) -> Notebook:
    """Load ``path`` as a notebook, with an error that names the file when it is not one."""
    notebook_path = Path(path).expanduser()
    if notebook_path.is_dir():
        raise NotebookError(f"{notebook_path} is a directory, not a notebook")
    try:
        text = notebook_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise NotebookError(
            f"notebook not found: {notebook_path}",
            "check the path (relative paths start at the current directory)",
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise NotebookError(f"cannot read notebook {notebook_path}: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise NotebookError(
            f"{notebook_path} is not a notebook: invalid JSON at line {exc.lineno}, "
            f"column {exc.colno}",
            "open and save it in JupyterLab to repair it",
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("cells"), list):
        raise NotebookError(f"{notebook_path} is not a notebook: it has no list of cells")
    if int(data.get("nbformat", 4)) < 4:
        raise NotebookError(
            f"{notebook_path} is in notebook format {data.get('nbformat')}; "
            "nbdeploy reads format 4",
            "open and save it in JupyterLab to upgrade it",
        )
    return Notebook(path=notebook_path.resolve(), data=data)
