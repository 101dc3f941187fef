"""The image a pipeline runs in on Kubernetes (``nbdeploy image build --pipeline``): the
Job that ``nbdeploy k8s --pipeline`` writes runs ``nbdeploy run`` inside it.

It holds nbdeploy (with papermill and a Python kernel), the packages the notebooks import,
pinned to the versions of this environment and installed offline as for a version's image,
and the project folder (the folder of the notebook or of pipeline.yaml, without hidden
files, caches and virtual environments) at ``/home/nbdeploy/work``, owned by the image's
user so that runs can write their outputs beside it. Its default tag is the one the Job
names: ``nbdeploy/pipeline-NAME:latest``.
"""

from __future__ import annotations

import ast
import importlib.metadata as metadata
import shutil
from collections.abc import Callable
from pathlib import Path

from nbdeploy.errors import NbdeployError
from nbdeploy.image import wheelhouse
from nbdeploy.image.context import (
    ImageContext,
    check_reference,
    default_base_image,
    finish_context,
    git_commit,
    start_context,
)

PROJECT_LIMIT_BYTES = 1024**3
_SKIPPED_NAMES = {"__pycache__", ".ipynb_checkpoints", "node_modules", "mlruns"}
# What every pipeline image runs: nbdeploy itself (papermill, nbclient, MLflow come with
# it) and the kernel the notebooks run in.
RUNNER_DISTRIBUTIONS = ("nbdeploy", "ipykernel")


class PipelineImageError(NbdeployError):
    """The project cannot be put into an image."""


def notebooks_of(source: Path) -> list[Path]:
    """The notebook itself, or every step's notebook of a pipeline.yaml."""
    if source.suffix == ".ipynb":
        return [source]
    from nbdeploy.pipeline.dag import load_pipeline

    return [step.notebook for step in load_pipeline(source).steps]


def imported_modules(notebook: Path) -> set[str]:
    """Top-level modules the notebook's code cells import (magics and shell lines aside;
    a cell that does not parse is skipped: it fails the run, not the image)."""
    from nbdeploy.notebook.reader import read_notebook

    modules: set[str] = set()
    for cell in read_notebook(notebook).cells:
        if cell.get("cell_type") != "code":
            continue
        source = "".join(cell.get("source", ""))
        if source.lstrip().startswith("%%"):
            continue
        lines = [
            "" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines()
        ]
        try:
            tree = ast.parse("\n".join(lines))
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                modules.add(node.module.split(".")[0])
    return modules


def pipeline_requirements(
    source: Path, notify: Callable[[str], None] = lambda _message: None
) -> list[str]:
    """nbdeploy and the kernel, plus the distributions the notebooks import, pinned."""
    from nbdeploy.service.requirements import pin_requirements

    modules: set[str] = set()
    for notebook in notebooks_of(source):
        modules |= imported_modules(notebook)
    project = source.parent
    local = {module for module in modules if _is_local(project, module)}
    pinned = pin_requirements(modules - local)
    missing = sorted(set(pinned.unresolved))
    if missing:
        notify(
            "imported but from no installed distribution (the runs will fail on them): "
            + ", ".join(missing)
        )
    requirements = list(pinned.pinned)
    for name in RUNNER_DISTRIBUTIONS:
        requirements.append(f"{name}=={metadata.version(name)}")
    return requirements


def _is_local(project: Path, module: str) -> bool:
    return (project / f"{module}.py").is_file() or (project / module / "__init__.py").is_file()


def copy_project(folder: Path, target: Path) -> int:
    """The project folder into ``target``, without hidden entries, caches and virtual
    environments; the bytes copied. PipelineImageError past PROJECT_LIMIT_BYTES."""
    total = 0

    def ignore(directory: str, names: list[str]) -> set[str]:
        nonlocal total
        skipped = set()
        for name in names:
            path = Path(directory) / name
            if (
                name.startswith(".")
                or name in _SKIPPED_NAMES
                or name.endswith(".pyc")
                or (path / "pyvenv.cfg").exists()
                or path.is_symlink()
            ):
                skipped.add(name)
            elif path.is_file():
                total += path.stat().st_size
        if total > PROJECT_LIMIT_BYTES:
            raise PipelineImageError(
                f"the project folder {folder} holds more than {PROJECT_LIMIT_BYTES // 1024**2} MB",
                "move large data out of it (read it from object storage or a volume in the "
                "Job), or build from a smaller folder",
            )
        return skipped

    shutil.copytree(folder, target, ignore=ignore)
    return total


def write_pipeline_context(
    source: Path,
    directory: Path,
    *,
    name: str,
    workdir: str,
    base_image: str | None = None,
    offline: bool = False,
    notify: Callable[[str], None] = lambda _message: None,
) -> ImageContext:
    """The portable context of ``source``'s pipeline image in ``directory``."""
    source = source.resolve()
    if not source.is_file():
        raise PipelineImageError(f"{source} does not exist", "give a notebook or a pipeline.yaml")
    base = check_reference(base_image or default_base_image(), "--base-image")
    lock = wheelhouse.lock(pipeline_requirements(source, notify))
    context = ImageContext(directory, name, 0, lock, base, kind="pipeline", workdir=workdir)
    context.command = ["nbdeploy", "run", source.name]
    context.labels = {
        "org.opencontainers.image.title": f"pipeline-{name}",
        "org.opencontainers.image.description": f"nbdeploy pipeline {source.name}: "
        "nbdeploy run inside",
        "ai.nbdeploy.pipeline": str(source),
        "ai.nbdeploy.requirements-hash": lock.digest,
    }
    commit = git_commit(source)
    if commit:
        context.labels["org.opencontainers.image.revision"] = commit
    start_context(context, offline, notify)
    copied = copy_project(source.parent, directory / "work")
    notify(f"project: {source.parent} ({copied / 1e6:.1f} MB) -> {workdir}")
    finish_context(context)
    return context
