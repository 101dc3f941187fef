"""The build context of a version's image: Dockerfile, requirements lock, wheelhouse, the
version's models and its bento, laid out so that layers cache well.

Layers, in order: the base image; the dependencies (a virtual environment installed from
the wheelhouse, keyed by the lock's digest); the artifacts (BentoML's model store entries
the bento names); the code (the bento). A change to the function alone changes only the
last layer.

Everything that reaches the Dockerfile is validated (image references, tags, the bento
tag) or quoted (labels, which carry notebook paths written by users): a hostile name
cannot add an instruction.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nbdeploy import config
from nbdeploy.deployment.store import Version
from nbdeploy.errors import NbdeployError
from nbdeploy.image import wheelhouse
from nbdeploy.image.reference import SERVING_PORT, is_image_reference
from nbdeploy.templating import render

DOCKERFILE = "Dockerfile"
LOCK_FILE = "requirements.lock"
PORT = SERVING_PORT
_BENTO_TAG = re.compile(r"[a-z0-9][a-z0-9._-]*:[a-z0-9]+")
# What the image serves with besides the version's own requirements (when installed here).
SERVING_DISTRIBUTIONS = ("bentoml", "uvloop", "httptools")


class ImageDefinitionError(NbdeployError):
    """A value given for the image (base image, tag) is not acceptable."""


def check_reference(value: str, what: str) -> str:
    if not is_image_reference(value):
        raise ImageDefinitionError(
            f"{what} {value!r} is not an image reference",
            "use NAME[:TAG], e.g. python:3.11-slim or registry.example.com/team/model:v3",
        )
    return value


def dockerfile_string(value: str) -> str:
    """``value`` as a double-quoted Dockerfile string: no line breaks or control characters;
    backslashes, quotes and ``$`` (variable expansion) escaped."""
    value = "".join(char if 32 <= ord(char) != 127 else "?" for char in value)
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$")
    return f'"{escaped}"'


BASE_IMAGE_ENV = "NBDEPLOY_BASE_IMAGE"


def default_base_image() -> str:
    """NBDEPLOY_BASE_IMAGE when set, else the official slim Python image of the kernel's
    Python version."""
    configured = os.environ.get(BASE_IMAGE_ENV, "").strip()
    if configured:
        return configured
    return f"python:{sys.version_info.major}.{sys.version_info.minor}-slim"


@dataclass
class ImageContext:
    """A written build context. ``kind``: "service" (a version: ``models/`` and ``bento/``
    on top of the dependencies) or "pipeline" (``work/``, the project folder, with
    ``command``). ``dependencies_tag`` names the dependency image."""

    directory: Path
    name: str
    version: int
    lock: wheelhouse.Lock
    base_image: str
    labels: dict[str, str] = field(default_factory=dict)
    kind: str = "service"
    command: list[str] = field(default_factory=list)
    workdir: str = ""
    # The wheels' contents: a project built from its folder keeps its version number when
    # its code changes, so the lock alone cannot tell the dependency image is stale.
    wheels_digest: str = ""

    @property
    def top_entries(self) -> list[str]:
        """What the top stage copies from the context."""
        return ["models", "bento"] if self.kind == "service" else ["work"]

    @property
    def dependencies_key(self) -> str:
        """What the dependency image is made of: its Dockerfile, which names the base image
        and the lock's digest. Versions with the same key share one dependency image."""
        text = dockerfile(self, "dependencies")
        return hashlib.sha256(text.encode()).hexdigest()

    @property
    def dependencies_tag(self) -> str:
        return f"nbdeploy-deps:{self.dependencies_key[:16]}"


def version_labels(version: Version, lock: wheelhouse.Lock) -> dict[str, str]:
    """OCI labels and nbdeploy's own: name, version, source notebook, git commit when the
    notebook is in a git work tree, the requirements hash."""
    labels = {
        "org.opencontainers.image.title": version.deployment,
        "org.opencontainers.image.version": f"v{version.version}",
        "org.opencontainers.image.description": f"nbdeploy service {version.deployment} "
        f"v{version.version} (function {version.function})",
        "ai.nbdeploy.deployment": version.deployment,
        "ai.nbdeploy.version": str(version.version),
        "ai.nbdeploy.content-hash": version.content_hash,
        "ai.nbdeploy.bento": version.bento_tag,
        "ai.nbdeploy.requirements-hash": lock.digest,
    }
    notebook = str(version.source.get("notebook") or "")
    if notebook:
        labels["ai.nbdeploy.notebook"] = notebook
        commit = git_commit(Path(notebook))
        if commit:
            labels["org.opencontainers.image.revision"] = commit
    return labels


def git_commit(notebook: Path) -> str | None:
    folder = notebook.parent if notebook.suffix else notebook
    if not folder.is_dir():
        return None
    try:
        result = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    commit = result.stdout.strip()
    return commit if result.returncode == 0 and re.fullmatch(r"[0-9a-f]{40,64}", commit) else None


def serving_requirements(version: Version) -> list[str]:
    """The version's pinned requirements plus what serves it, at the installed versions."""
    import importlib.metadata as metadata

    requirements = list(version.requirements)
    present = {
        wheelhouse.canonical(re.split(r"[<>=!~;\[ ]", line, maxsplit=1)[0]) for line in requirements
    }
    for name in SERVING_DISTRIBUTIONS:
        if name in present:
            continue
        try:
            requirements.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            if name == "bentoml":
                raise
    return requirements


def write_context(
    version: Version,
    directory: Path,
    *,
    base_image: str | None = None,
    offline: bool = True,
    notify: Callable[[str], None] = lambda _message: None,
) -> ImageContext:
    """Write the whole portable context into ``directory`` (which must be empty or absent):
    ``Dockerfile`` (all stages), ``Dockerfile.dependencies``, ``Dockerfile.service``, the
    lock, ``wheels/``, ``models/`` and ``bento/``."""
    base = check_reference(base_image or default_base_image(), "--base-image")
    lock = wheelhouse.lock(serving_requirements(version))
    context = ImageContext(directory, version.deployment, version.version, lock, base)
    context.labels = version_labels(version, lock)
    start_context(context, offline, notify)
    copy_version(version, directory)
    finish_context(context)
    return context


def start_context(context: ImageContext, offline: bool, notify: Callable[[str], None]) -> None:
    """An empty (or new) folder with the lock and its wheelhouse."""
    directory = context.directory
    if directory.exists() and any(directory.iterdir()):
        raise ImageDefinitionError(
            f"{directory} is not empty", "give --context-only a new or empty folder"
        )
    directory.mkdir(parents=True, exist_ok=True)
    (directory / LOCK_FILE).write_text(context.lock.text(), encoding="utf-8")
    wheels = wheelhouse.assemble(context.lock, directory / "wheels", offline=offline, notify=notify)
    context.wheels_digest = wheelhouse.digest(wheels)


def finish_context(context: ImageContext) -> None:
    """The Dockerfiles: all stages in one (portable), and each half for the engine here."""
    for part, file_name in (
        ("all", DOCKERFILE),
        ("dependencies", f"{DOCKERFILE}.dependencies"),
        (context.kind, f"{DOCKERFILE}.{context.kind}"),
    ):
        (context.directory / file_name).write_text(dockerfile(context, part), encoding="utf-8")


def dockerfile(context: ImageContext, part: str) -> str:
    if context.kind == "service":
        command = serve_command(context.labels["ai.nbdeploy.bento"])
    else:
        command = context.command
    return render(
        "Dockerfile.j2",
        part=part,
        kind=context.kind,
        base_image=check_reference(context.base_image, "--base-image"),
        dependencies_image=(
            check_reference(context.dependencies_tag, "dependency image")
            if part not in ("all", "dependencies")
            else ""
        ),
        lock_digest=context.lock.digest,
        wheels_digest=context.wheels_digest,
        version=int(context.version),
        workdir=context.workdir,
        labels=[(key, dockerfile_string(value)) for key, value in sorted(context.labels.items())],
        command=json.dumps(command),
    )


def serve_command(bento_tag: str) -> list[str]:
    if not _BENTO_TAG.fullmatch(bento_tag):
        raise ImageDefinitionError(f"bento tag {bento_tag!r} is not one nbdeploy made")
    return ["bentoml", "serve", bento_tag, "--host", "0.0.0.0", "--port", str(PORT)]


def copy_version(version: Version, directory: Path) -> None:
    """The bento (``bento/NAME/VERSION``) and the models it names (``models/NAME/VERSION``)
    from nbdeploy's BentoML store, with their ``latest`` markers."""
    import yaml

    store = config.home() / "bentoml"
    name, tag = version.bento_tag.split(":", 1)
    bento = store / "bentos" / name / tag
    if not (bento / "bento.yaml").is_file():
        raise NbdeployError(
            f"the bento {version.bento_tag} of {version.deployment} v{version.version} is "
            f"missing from {store}",
            f"deploy {version.deployment} again to rebuild it",
        )
    _copy_entry(bento, directory / "bento" / name / tag)
    described: dict[str, Any] = yaml.safe_load((bento / "bento.yaml").read_text(encoding="utf-8"))
    (directory / "models").mkdir(exist_ok=True)
    for model_tag in sorted(_model_tags(described)):
        model_name, model_version = model_tag.split(":", 1)
        source = store / "models" / model_name / model_version
        if not source.is_dir():
            raise NbdeployError(
                f"the model {model_tag} that {version.bento_tag} serves is missing from {store}",
                f"deploy {version.deployment} again to save it",
            )
        _copy_entry(source, directory / "models" / model_name / model_version)


def _model_tags(described: dict[str, Any]) -> set[str]:
    """The models a bento names: at its top level and in each of its services."""
    entries = list(described.get("models") or [])
    for service in described.get("services") or []:
        entries += service.get("models") or []
    return {str(entry["tag"] if isinstance(entry, dict) else entry) for entry in entries}


def _copy_entry(source: Path, target: Path) -> None:
    """One store entry, hard-linked where the disk allows (models can be large), with the
    ``latest`` file BentoML keeps beside versions."""
    shutil.copytree(source, target, copy_function=_link_or_copy)
    (target.parent / "latest").write_text(target.name, encoding="utf-8")


def _link_or_copy(source: str, target: str) -> None:
    try:
        Path(target).hardlink_to(source)
    except OSError:
        shutil.copy2(source, target)
