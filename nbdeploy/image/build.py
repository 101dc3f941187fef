"""Building the container image of a deployed version (``nbdeploy image build``,
``%deploy ... --image``, :func:`nbdeploy.build_image`).

An image serves exactly one version: its bento (code), the models it names (artifacts) and
its pinned requirements, installed offline from a wheelhouse made on this machine
(:mod:`nbdeploy.image.wheelhouse`). The engine builds two images with the classic builder:
a dependency image keyed by the requirements lock (built once per lock, reused by every
version that shares it) and the version's image on top of it, so a change to the function
rebuilds only the code layer. The base image comes from the engine, else is pulled (never
with ``--offline``); where no registry is reachable, :func:`make_base_commands` says how to
make one from Debian's packages. ``--pipeline NOTEBOOK_OR_YAML`` builds the image a
pipeline's Kubernetes Job runs in (:mod:`nbdeploy.image.pipeline`) the same way.
``--context-only DIR`` writes one portable multi-stage Dockerfile and its context
instead, for an engine elsewhere.
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nbdeploy.deployment.store import DeploymentNotFoundError, DeploymentStore, Version
from nbdeploy.image import engine, wheelhouse
from nbdeploy.image.context import (
    DOCKERFILE,
    LOCK_FILE,
    ImageContext,
    ImageDefinitionError,
    check_reference,
    write_context,
)
from nbdeploy.image.reference import DEFAULT_REPOSITORY
from nbdeploy.pipeline.progress import NullProgress, Progress
from nbdeploy.store import StateStore, default_store

DEPENDENCIES_KEY_LABEL = "ai.nbdeploy.dependencies-key"
Notify = Callable[[str], None]

__all__ = [
    "ImageBuild",
    "ImageDefinitionError",
    "build_image",
    "default_tag",
    "resolve_version",
]


@dataclass
class ImageBuild:
    """The outcome of a build: the image (its tag), its size and the seconds it took; the
    engine's records of the two builds (``dependencies`` is None when that image was
    reused as it was)."""

    image: str
    deployment: str
    version: int
    size: int = 0
    seconds: float = 0.0
    image_id: str = ""
    dependencies_image: str = ""
    dependencies_reused: bool = False
    dependencies: engine.BuildRecord | None = None
    service: engine.BuildRecord | None = None
    pushed: str | None = None
    digest: str | None = None
    context_dir: str | None = None
    labels: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "deployment": self.deployment,
            "version": self.version,
            "size": self.size,
            "seconds": self.seconds,
            "image_id": self.image_id,
            "dependencies_image": self.dependencies_image,
            "dependencies_reused": self.dependencies_reused,
            "steps": {
                "dependencies": self.dependencies.to_dict()["steps"] if self.dependencies else [],
                "service": self.service.to_dict()["steps"] if self.service else [],
            },
            "pushed": self.pushed,
            "digest": self.digest,
            "context_dir": self.context_dir,
            "labels": self.labels,
        }


def resolve_version(spec: str, store: StateStore | None = None) -> Version:
    """``NAME`` (the live version, else the newest) or ``NAME:VERSION`` (``3`` or ``v3``)."""
    deployments = DeploymentStore(store or default_store())
    name, _, wanted = spec.partition(":")
    deployment = deployments.get(name)
    versions = {version.version: version for version in deployments.versions(name)}
    if not versions:
        raise DeploymentNotFoundError(f"{name} has no version yet")
    if wanted:
        match = re.fullmatch(r"v?(\d+)", wanted.strip())
        number = int(match[1]) if match else -1
        if number not in versions:
            raise DeploymentNotFoundError(
                f"{name} has no version {wanted!r}",
                "versions: " + ", ".join(f"v{n}" for n in sorted(versions)),
            )
        return versions[number]
    return versions[deployment.live_version or max(versions)]


def default_tag(version: Version) -> str:
    return f"{DEFAULT_REPOSITORY.format(name=version.deployment)}:v{version.version}"


def build_image(
    spec: str | None = None,
    *,
    pipeline: str | Path | None = None,
    tag: str | None = None,
    base_image: str | None = None,
    offline: bool = False,
    push: str | None = None,
    context_only: str | Path | None = None,
    progress: Progress | None = None,
    notify: Notify = lambda _message: None,
    store: StateStore | None = None,
    batch: bool = False,
) -> ImageBuild:
    """Build the image of ``spec`` (``NAME[:VERSION]``), or with ``pipeline`` (a notebook
    or pipeline.yaml) the image its Kubernetes Job runs in; see the module's docstring.

    ``offline``: nothing is downloaded (wheels come from this environment and the wheel
    cache; the base image must be in the engine). Builds never use the network: the engine
    builds with network "none". ``push``: a registry (``host[:port][/path]``) to tag and
    push the image to. ``batch``: the version's batch image instead
    (:mod:`nbdeploy.image.batch`). Raises NbdeployError subclasses with what to do."""
    started = time.monotonic()
    if (spec is None) == (pipeline is None):
        raise ImageDefinitionError(
            "give either a deployment (NAME[:VERSION]) or --pipeline NOTEBOOK_OR_YAML"
        )
    if batch:
        if pipeline is not None or push is not None or context_only is not None:
            raise ImageDefinitionError(
                "--batch builds a deployment's batch image here: not with --pipeline, --push "
                "or --context-only",
                "push it afterwards with docker push, or build without --batch",
            )
        from nbdeploy.image.batch import build_batch_image

        return build_batch_image(
            resolve_version(str(spec), store),
            tag=tag,
            base_image=base_image,
            offline=offline,
            progress=progress,
            notify=notify,
        )
    if pipeline is not None:
        image, name, number, write = _pipeline_writer(
            Path(pipeline), tag, base_image, offline, notify
        )
    else:
        version = resolve_version(str(spec), store)
        image = check_reference(tag or default_tag(version), "--tag")
        name, number = version.deployment, version.version

        def write(directory: Path) -> ImageContext:
            return write_context(
                version, directory, base_image=base_image, offline=offline, notify=notify
            )

    if push is not None:
        _check_registry(push)
    progress = progress or NullProgress()
    if context_only is not None:
        directory = Path(context_only).resolve()
        context = write(directory)
        notify(f"wrote the Dockerfile and build context to {directory}: docker build {directory}")
        return ImageBuild(
            image=image,
            deployment=name,
            version=number,
            seconds=round(time.monotonic() - started, 2),
            context_dir=str(directory),
            labels=context.labels,
        )
    api = engine.client()  # before any work: no engine is the commonest failure
    scratch = Path(tempfile.mkdtemp(prefix="nbdeploy-image-"))
    try:
        context = write(scratch / "context")
        result = _build_with_engine(api, context, image, offline, progress, notify)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if push is not None:
        result.pushed, result.digest = _push(api, image, push, progress, notify)
    result.seconds = round(time.monotonic() - started, 2)
    return result


def _pipeline_writer(
    source: Path, tag: str | None, base_image: str | None, offline: bool, notify: Notify
) -> tuple[str, str, int, Callable[[Path], ImageContext]]:
    """The tag, name and context writer of a pipeline image: the names its Job uses."""
    from nbdeploy.image.pipeline import write_pipeline_context
    from nbdeploy.k8s.batch import DEFAULT_IMAGE, job_name_for
    from nbdeploy.k8s.options import DEFAULT_WORKDIR

    name = job_name_for(source)
    image = check_reference(tag or DEFAULT_IMAGE.format(name=name), "--tag")

    def write(directory: Path) -> ImageContext:
        return write_pipeline_context(
            source,
            directory,
            name=name,
            workdir=DEFAULT_WORKDIR,
            base_image=base_image,
            offline=offline,
            notify=notify,
        )

    return image, name, 0, write


def _build_with_engine(
    api: Any, context: ImageContext, image: str, offline: bool, progress: Progress, notify: Notify
) -> ImageBuild:
    result = ImageBuild(
        image=image,
        deployment=context.name,
        version=context.version,
        dependencies_image=context.dependencies_tag,
        labels=context.labels,
    )
    existing = engine.image_exists(api, context.dependencies_tag)
    key = context.dependencies_key
    if (
        existing is not None
        and engine.label_of(existing, DEPENDENCIES_KEY_LABEL) == key
        and _same_base(api, existing, context.base_image)
    ):
        result.dependencies_reused = True
        notify(f"dependencies: reusing {context.dependencies_tag} (same requirements lock)")
    else:
        notify(f"dependencies: building {context.dependencies_tag} from the wheelhouse")
        _require_base(api, context.base_image, offline, notify)
        _check_base_python(api, context, notify)
        result.dependencies = engine.build(
            api,
            engine.context_tar(
                context.directory, f"{DOCKERFILE}.dependencies", [LOCK_FILE, "wheels"]
            ),
            context.dependencies_tag,
            labels={DEPENDENCIES_KEY_LABEL: key},
            progress=progress,
        )
    notify(f"{context.kind}: building {image}")
    result.service = engine.build(
        api,
        engine.context_tar(context.directory, f"{DOCKERFILE}.{context.kind}", context.top_entries),
        image,
        progress=progress,
    )
    inspected = engine.image_exists(api, image) or {}
    result.image_id = str(inspected.get("Id") or result.service.image_id)
    result.size = int(inspected.get("Size") or 0)
    progress.finish(True, f"built {image} ({result.size / 1e6:.0f} MB)")
    return result


def _same_base(api: Any, dependencies: dict[str, Any], base_image: str) -> bool:
    """The dependency image was built on the base image as it is now."""
    base = engine.image_exists(api, base_image)
    if base is None:
        return True  # the base is gone from the engine; the dependency image still holds it
    layers = (base.get("RootFS") or {}).get("Layers") or []
    built = (dependencies.get("RootFS") or {}).get("Layers") or []
    return built[: len(layers)] == layers


def _check_base_python(api: Any, context: ImageContext, notify: Notify) -> None:
    """The base image's python3 has this Python's X.Y (the wheels are for it); packages
    whose Requires-Python excludes its exact version are named. The image is in the engine
    (see :func:`_require_base`): a failure here is the image's own."""
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    base = context.base_image
    ran = engine.run_once(
        api, base, ["python3", "-c", "import sys, venv; print('%d.%d.%d' % sys.version_info[:3])"]
    )
    found = ran.output
    if ran.timed_out:
        raise engine.ImageBuildError(
            f"could not check the Python of the base image {base}: {ran.problem}",
            "check that the engine runs containers (docker run --rm IMAGE true), then retry",
        )
    if found is None or not re.fullmatch(r"\d+\.\d+\.\d+", found):
        raise ImageDefinitionError(
            f"the base image {base} has no python3 with the venv module "
            f"({_python_problem(ran.problem, found)})",
            _other_base_hint(base, "and its venv module"),
        )
    if not found.startswith(f"{here}."):
        raise ImageDefinitionError(
            f"the base image {base} has Python {found}, this kernel {here}: the locked wheels "
            "are for this kernel's Python",
            _other_base_hint(base),
        )
    excluded = wheelhouse.python_mismatches(context.lock, found)
    if excluded:
        notify(
            f"the base image has Python {found}, which these packages do not declare support "
            f"for (installed anyway, as in this kernel): {', '.join(excluded)}"
        )


def _python_problem(problem: str, printed: str | None) -> str:
    """Why python3 gave no version, in a few words: the engine's words are long."""
    if re.search(r"python3.*(executable file not found|no such file)", problem, re.I):
        return "no python3 on its PATH"
    if "No module named" in problem:
        return problem.split("ModuleNotFoundError: ", 1)[-1]
    return problem[-160:] if problem else f"python3 printed {printed!r}"


# Debian releases by the Python their python3 is: the suite mmdebstrap makes a base of.
DEBIAN_SUITES = {"3.9": "bullseye", "3.11": "bookworm", "3.13": "trixie"}


def make_base_commands(avoid: str = "") -> tuple[str, str]:
    """The commands that make a base image without a registry (as tests/docker/engine.sh
    does): a minimal Debian with python3 and python3-venv from Debian's packages, imported
    into the engine; and the image's name (never ``avoid``, the image that failed)."""
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    suite = DEBIAN_SUITES.get(here, "bookworm")
    name = f"nbdeploy-base:{suite}"
    if name == avoid:
        name = f"nbdeploy-base:python3-{suite}"
    commands = (
        f"mmdebstrap --variant=minbase --include=python3,python3-venv,ca-certificates "
        f"{suite} base.tar && docker import base.tar {name}"
    )
    if here not in DEBIAN_SUITES:
        commands += f" (with a suite whose python3 is {here} in place of {suite})"
    return commands, name


def _other_base_hint(failed: str, wanted: str = "") -> str:
    """What to give instead of ``failed``: never ``failed`` itself."""
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    official = f"python:{here}-slim"
    example = f" (e.g. {official})" if official != failed else ""
    commands, name = make_base_commands(avoid=failed)
    with_python = f"Python {here} {wanted}".strip()
    return (
        f"give --base-image an image with {with_python}{example}; or make one without a "
        f"registry: {commands}, then --base-image {name}"
    )


def _require_base(api: Any, base_image: str, offline: bool, notify: Notify) -> None:
    """The base image is in the engine: there already, else pulled (not when offline).
    A pull that fails says so, with the engine's reason, and names the offline path."""
    if engine.image_exists(api, base_image) is not None:
        return
    commands, name = make_base_commands(avoid=base_image)
    offline_path = (
        "use an image the engine already has: --offline --base-image IMAGE (see docker "
        f"images); or make one without a registry: {commands}, then --offline --base-image "
        f"{name}"
    )
    if offline:
        raise engine.ImageBuildError(
            f"the base image {base_image} is not in the engine, and an offline build does not "
            "pull it",
            f"{offline_path}; or docker pull {base_image} where a registry is reachable and "
            "bring it here with docker save and docker load",
        )
    notify(f"base image: pulling {base_image} (it is not in the engine)")
    try:
        engine.pull(api, base_image)
    except engine.ImageBuildError as error:
        raise engine.ImageBuildError(
            f"the base image {base_image} is not in the engine and could not be pulled "
            f"({error.message})",
            offline_path,
        ) from None
    if engine.image_exists(api, base_image) is None:
        raise engine.ImageBuildError(
            f"the pull of the base image {base_image} ended without the image in the engine",
            offline_path,
        )


def _check_registry(registry: str) -> None:
    if not re.fullmatch(r"[a-zA-Z0-9.-]+(?::[0-9]+)?(?:/[a-z0-9._-]+)*", registry):
        raise ImageDefinitionError(
            f"--push {registry!r} is not a registry address",
            "give host[:port][/path], e.g. --push registry.example.com/team",
        )


def _push(
    api: Any, image: str, registry: str, progress: Progress, notify: Notify
) -> tuple[str, str]:
    repository, _, tag = image.rpartition(":")
    if "/" in repository and "." in repository.split("/", 1)[0]:
        repository = repository.split("/", 1)[1]  # already names a registry: keep its path
    target = f"{registry.rstrip('/')}/{repository}"
    check_reference(f"{target}:{tag}", "--push")
    api.tag(image, target, tag=tag)
    notify(f"pushing {target}:{tag}")
    digest = engine.push(api, target, tag, progress)
    return f"{target}:{tag}", digest
