"""Build a bento from a service source directory, in a process of its own.

``python -m nbdeploy.service.builder``, given a version folder on its standard input, saves
the notebook's objects into nbdeploy's BentoML model store (``$NBDEPLOY_HOME/bentoml``),
builds the bento named by the content hash (reusing it when it exists) and prints one JSON
line. A separate process keeps BentoML's import cost and global state out of the user's
kernel, and sets the build offline: requirements are the pinned ones, never resolved or
locked against an index. ``--delete`` removes bentos and models (``nbdeploy prune``).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from nbdeploy import config
from nbdeploy.private_files import private_dir, restrict_umask
from nbdeploy.service.package import BENTO_FILES
from nbdeploy.service.runtime import LOCAL_MODULES, load_object, prepare

ENTRY = "service:NbdeployService"


def bentoml_environment() -> dict[str, str]:
    """Environment for BentoML processes: nbdeploy's own store, offline builds, no tracking."""
    return {
        # Ours, so made 0700: BentoML would create it with the process's umask.
        "BENTOML_HOME": str(private_dir(config.home() / "bentoml")),
        # v1 bento layout: uv is used only to lock packages, which nbdeploy never asks for;
        # the default layout installs uv from the index on every build.
        "BENTOML_ENABLE_FEATURES": "no_image",
        "BENTOML_DO_NOT_TRACK": "true",  # else build and serve report usage to bentoml.com
    }


def build(directory: Path) -> dict[str, Any]:
    import bentoml
    from bentoml.exceptions import NotFound

    manifest = json.loads((directory / "manifest.json").read_text(encoding="utf-8"))
    bento_tag = f"nbd-{manifest['name']}:{manifest['content_hash'][:16]}"
    try:
        bento = bentoml.bentos.get(bento_tag)
        return {"bento_tag": str(bento.tag), "reused": True, "seconds": 0.0}
    except NotFound:
        pass
    started = time.monotonic()
    if manifest.get("mlflow_model_uri"):
        try:
            bentoml.models.get(manifest["model_tag"])
        except NotFound:
            bentoml.mlflow.import_model(manifest["model_tag"], manifest["mlflow_model_uri"])
    save_objects(directory, manifest)
    bento = bentoml.bentos.build(
        service=ENTRY,
        name=bento_tag.split(":")[0],
        version=bento_tag.split(":")[1],
        build_ctx=str(directory),
        include=[name for name in BENTO_FILES if (directory / name).exists()]
        + ([f"{LOCAL_MODULES}/**"] if (directory / LOCAL_MODULES).is_dir() else []),
        # A list, not requirements_txt: BentoML refuses files under hidden directories such as
        # the default ~/.nbdeploy. The strings are pinned or validated PEP 508 requirements.
        python={"packages": list(manifest["requirements"]), "lock_packages": False},
        labels={"nbdeploy.deployment": manifest["name"], "nbdeploy.function": manifest["function"]},
    )
    return {
        "bento_tag": str(bento.tag),
        "reused": False,
        "seconds": round(time.monotonic() - started, 2),
    }


def save_objects(directory: Path, manifest: dict[str, Any]) -> None:
    """Save each object into nbdeploy's BentoML model store (once per content hash): models
    through their framework's saver, everything else as nbdeploy's own pickle file."""
    import bentoml
    from bentoml.exceptions import NotFound

    prepare(directory)  # the notebook's classes and functions, which the objects name
    for spec in manifest["objects"]:
        try:
            bentoml.models.get(spec["tag"])
            continue
        except NotFound:
            pass
        source = directory / "objects" / spec["file"]
        if spec["kind"] != "generic":
            import importlib

            saver = importlib.import_module(f"bentoml.{spec['kind']}")
            saver.save_model(spec["tag"], load_object(spec, path=source))  # our own file
        else:
            with bentoml.models.create(spec["tag"]) as model:
                _link_or_copy(source, Path(model.path_of(spec["file"])))


def _link_or_copy(source: Path, target: Path) -> None:
    """Objects can be large: a hard link costs nothing where the stores share a disk."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


DELETE = "--delete"


def delete(bentos: list[str], models: list[str]) -> dict[str, Any]:
    """Delete bentos and models from nbdeploy's BentoML store: the bytes freed and errors."""
    import bentoml
    from bentoml.exceptions import NotFound

    freed, errors = 0, []
    for store, tags in ((bentoml.bentos, bentos), (bentoml.models, models)):
        for tag in tags:
            try:
                path = Path(store.get(tag).path)
                freed += sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
                store.delete(tag)
            except NotFound:
                continue
            except Exception as error:
                errors.append(f"{tag}: {error}")
    return {"ok": True, "freed": freed, "errors": errors}


def build_task(directory: Path) -> dict[str, Any]:
    """Build the version folder ``directory``: {"ok": True, "bento_tag", "reused", "seconds"}
    or {"ok": False, "error"} (run in a process of its own: it changes directory)."""
    # A safety net: BentoML must never install anything (such as uv) while building.
    os.environ["PIP_NO_INDEX"] = "1"
    directory = directory.resolve()
    os.chdir(directory)  # BentoML reads build files relative to the working directory
    try:
        return {"ok": True, **build(directory)}
    except Exception as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}


def main() -> None:
    """``builder [KIND...]`` imports BentoML (and the framework savers of KIND) at once, so
    that the imports overlap the caller's work, then builds the folder named on its standard
    input; ``builder --delete JSON`` deletes {"bentos": [...], "models": [...]}. Either
    prints one JSON line."""
    restrict_umask()  # bentos, models and logs under NBDEPLOY_HOME: owner-only
    os.environ.update({k: v for k, v in bentoml_environment().items() if k not in os.environ})
    os.environ["PIP_NO_INDEX"] = "1"  # as in build_task: never install anything
    if sys.argv[1:2] == [DELETE]:
        request = json.loads(sys.argv[2])
        result = delete(request["bentos"], request["models"])
    else:
        import importlib

        import bentoml  # noqa: F401  (the point: loaded while the caller is busy)

        for kind in sys.argv[1:]:
            importlib.import_module(f"bentoml.{kind}")
        line = sys.stdin.readline().strip()
        if not line:  # the caller did not need a build after all
            os._exit(0)
        result = build_task(Path(line))
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    os._exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
