"""The batch image of a version (``nbdeploy image build NAME[:VERSION] --batch``): what
the pods of ``nbdeploy k8s NAME --batch`` run.

Built FROM the version's own image (``nbdeploy/NAME:vN``, built first when the engine
lacks it), so the version's code, models and pinned requirements are those it serves
with; on top of it, from an offline wheelhouse made here (pip ``--no-index
--find-links``, the engine's network "none", as every nbdeploy build):

- nbdeploy's own wheel, installed with ``--no-deps`` (the pod imports only its batch
  modules, which need the standard library, pyarrow and pandas);
- pyarrow and pandas (with what they require) at the versions installed here, unless the
  version's image has them already;
- the version folder (manifest.json, function.pkl, objects/, ...) at
  ``/home/nbdeploy/version`` (NBDEPLOY_VERSION_DIR), which
  ``python -m nbdeploy.batching.pod`` loads as ``nbdeploy batch`` does here.

Its tag is the version image's plus ``-batch``: ``nbdeploy/NAME:vN-batch``.
"""

from __future__ import annotations

import importlib.metadata as metadata
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from nbdeploy.deployment.store import Version
from nbdeploy.image import engine, wheelhouse
from nbdeploy.image.context import check_reference, serving_requirements
from nbdeploy.pipeline.progress import NullProgress, Progress

REQUIREMENTS_FILE = "requirements.batch"
VERSION_FOLDER = "version"
# What the pod needs beyond the version's own requirements (nbdeploy itself aside).
BATCH_DISTRIBUTIONS = ("pyarrow", "pandas")
_SKIPPED = shutil.ignore_patterns("__pycache__", "*.pyc", ".*")


def batch_lock(version: Version) -> wheelhouse.Lock:
    """nbdeploy (alone: ``--no-deps``) and the batch distributions' closure, less what the
    version's image holds already."""
    present = {
        wheelhouse.canonical(entry.name)
        for entry in wheelhouse.lock(serving_requirements(version)).entries
    }
    extra = wheelhouse.lock(f"{name}=={metadata.version(name)}" for name in BATCH_DISTRIBUTIONS)
    entries = [e for e in extra.entries if wheelhouse.canonical(e.name) not in present]
    entries.append(wheelhouse.Locked("nbdeploy", metadata.version("nbdeploy")))
    return wheelhouse.Lock(tuple(sorted(entries, key=lambda e: wheelhouse.canonical(e.name))))


def batch_dockerfile(version_image: str, lock: wheelhouse.Lock, labels: dict[str, str]) -> str:
    from nbdeploy.batching.pod import IMAGE_VERSION_DIR, VERSION_DIR_ENV
    from nbdeploy.image.context import dockerfile_string

    parent = check_reference(version_image, "the version image")
    python = f"python{sys.version_info.major}.{sys.version_info.minor}"
    site = f"/opt/nbdeploy/venv/lib/{python}/site-packages/"
    label_lines = " \\\n      ".join(
        f"{key}={dockerfile_string(value)}" for key, value in sorted(labels.items())
    )
    command = json.dumps(["python", "-m", "nbdeploy.batching.pod", "--help"])
    return f"""# The batch variant of {parent}: nbdeploy (without its dependencies), pyarrow and
# pandas from the wheelhouse of this context (no index: builds need no network), and the
# version folder that `python -m nbdeploy.batching.pod` scores with.
FROM {parent} AS install
USER 0:0
COPY {REQUIREMENTS_FILE} /tmp/nbdeploy/{REQUIREMENTS_FILE}
COPY wheels/ /tmp/nbdeploy/wheels/
RUN /opt/nbdeploy/venv/bin/python -m ensurepip --default-pip > /dev/null \\
 && /opt/nbdeploy/venv/bin/python -m pip install --no-index --no-deps --no-cache-dir \\
      --disable-pip-version-check --ignore-requires-python --find-links /tmp/nbdeploy/wheels \\
      --target /tmp/nbdeploy/site -r /tmp/nbdeploy/{REQUIREMENTS_FILE} \\
 && rm -rf /tmp/nbdeploy/site/bin

FROM {parent}
COPY --from=install /tmp/nbdeploy/site/ {site}
COPY {VERSION_FOLDER}/ {IMAGE_VERSION_DIR}/
ENV {VERSION_DIR_ENV}={IMAGE_VERSION_DIR}
LABEL {label_lines}
USER 10001:10001
WORKDIR /home/nbdeploy
HEALTHCHECK NONE
CMD {command}
"""


def write_batch_context(
    version: Version,
    directory: Path,
    version_image: str,
    *,
    offline: bool,
    notify: Any = lambda _message: None,
) -> dict[str, str]:
    """The build context in ``directory``; the image's labels."""
    lock = batch_lock(version)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / REQUIREMENTS_FILE).write_text(lock.text(), encoding="utf-8")
    wheelhouse.assemble(lock, directory / "wheels", offline=offline, notify=notify)
    shutil.copytree(version.service_dir, directory / VERSION_FOLDER, ignore=_SKIPPED)
    labels = {
        "ai.nbdeploy.batch": "true",
        "ai.nbdeploy.batch-requirements": " ".join(entry.line for entry in lock.entries),
        "org.opencontainers.image.description": f"nbdeploy batch scoring {version.deployment} "
        f"v{version.version}: python -m nbdeploy.batching.pod",
    }
    (directory / "Dockerfile").write_text(
        batch_dockerfile(version_image, lock, labels), encoding="utf-8"
    )
    return labels


def build_batch_image(
    version: Version,
    *,
    tag: str | None,
    base_image: str | None,
    offline: bool,
    progress: Progress | None,
    notify: Any,
) -> Any:
    """Build the batch image of ``version`` (its version image first, when missing)."""
    from nbdeploy.image.build import ImageBuild, build_image, default_tag
    from nbdeploy.k8s.scoring import batch_image_tag

    started = time.monotonic()
    progress = progress or NullProgress()
    image = check_reference(tag or batch_image_tag(version.deployment, version.version), "--tag")
    parent = default_tag(version)
    api = engine.client()
    if engine.image_exists(api, parent) is None:
        notify(f"batch: the version image {parent} is not in the engine; building it first")
        build_image(
            f"{version.deployment}:{version.version}",
            base_image=base_image,
            offline=offline,
            progress=progress,
            notify=notify,
        )
    scratch = Path(tempfile.mkdtemp(prefix="nbdeploy-batch-image-"))
    try:
        context = scratch / "context"
        labels = write_batch_context(version, context, parent, offline=offline, notify=notify)
        notify(f"batch: building {image} from {parent}")
        record = engine.build(
            api,
            engine.context_tar(
                context, "Dockerfile", [REQUIREMENTS_FILE, "wheels", VERSION_FOLDER]
            ),
            image,
            progress=progress,
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    inspected = engine.image_exists(api, image) or {}
    size = int(inspected.get("Size") or 0)
    progress.finish(True, f"built {image} ({size / 1e6:.0f} MB)")
    return ImageBuild(
        image=image,
        deployment=version.deployment,
        version=version.version,
        size=size,
        seconds=round(time.monotonic() - started, 2),
        image_id=str(inspected.get("Id") or record.image_id),
        dependencies_image=parent,
        dependencies_reused=True,
        service=record,
        labels=labels,
    )
