"""``nbdeploy prune``: old versions do not fill the disk; ``nbdeploy delete``: a deployment
and everything it left, gone.

Versions beyond the newest N of a deployment are removed from nbdeploy's store, from
BentoML's store (the bento, and the saved objects no kept version uses) and from the
version folders. The live version and the rollback target are always kept. MLflow registry
versions stay unless ``registry=True``.

:func:`delete` stops a deployment, then removes every version that way, its folder (request
and server logs, router configuration, keys) and its rows in nbdeploy's store; its MLflow
registered model too unless ``registry=False``. Output notebooks of runs stay (they are the
runs', listed by ``nbdeploy runs``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nbdeploy import config
from nbdeploy.deployment.runtime.locks import deployment_lock
from nbdeploy.deployment.store import STOPPED, DeploymentStore, Version
from nbdeploy.errors import NbdeployError
from nbdeploy.store import StateStore, default_store

DEFAULT_KEEP = 3


@dataclass
class PruneReport:
    deployment: str
    removed: list[int] = field(default_factory=list)
    kept: list[int] = field(default_factory=list)
    freed_bytes: int = 0
    registry_removed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "deployment": self.deployment,
            "removed": self.removed,
            "kept": self.kept,
            "freed_bytes": self.freed_bytes,
            "registry_removed": self.registry_removed,
            "errors": self.errors,
        }


def prune(
    name: str | None = None,
    *,
    keep: int = DEFAULT_KEEP,
    registry: bool = False,
    store: StateStore | None = None,
) -> list[PruneReport]:
    """Remove all but the newest ``keep`` versions of one deployment (or of each)."""
    from nbdeploy.deployment.traffic.rollouts import previous_version

    if keep < 1:
        raise NbdeployError("--keep must be at least 1", "keep at least the newest version")
    deployments = DeploymentStore(store or default_store())
    names = [deployments.get(name).name] if name else [d.name for d in deployments.all()]
    reports = []
    for each in names:
        with deployment_lock(each):
            current = deployments.get(each)
            versions = deployments.versions(each)
            protected = {
                current.live_version,
                previous_version(deployments, each, current.live_version),
            }
            newest = {v.version for v in sorted(versions, key=lambda v: -v.version)[:keep]}
            kept = [v for v in versions if v.version in newest or v.version in protected]
            doomed = [v for v in versions if v not in kept]
            report = PruneReport(each, kept=[v.version for v in kept])
            if doomed:
                _remove(deployments, doomed, kept, report, registry)
            reports.append(report)
    return reports


def delete(name: str, *, registry: bool = True, store: StateStore | None = None) -> PruneReport:
    """Stop ``name`` and remove all it left (see the module's docstring). A deploy of the
    same name that lands meanwhile is kept, and the deletion refused."""
    from nbdeploy.deployment.runtime import client
    from nbdeploy.deployment.traffic import keys
    from nbdeploy.deployment.versions.build import deployments_dir

    deployments = DeploymentStore(store or default_store())
    deployments.get(name)  # an unknown name: the error lists the deployments there are
    client.call("stop", name, home=client.home_of(store))
    with deployment_lock(name):
        current = deployments.get(name)
        if current.status != STOPPED:
            raise NbdeployError(
                f"{name} was deployed again while it was being deleted: kept",
                f"stop it and delete it again: nbdeploy delete {name}",
            )
        versions = deployments.versions(name)
        report = PruneReport(name)
        # The deployment's rows go last: an interrupted deletion is finished by running it
        # again, which finds the deployment and what is left of it.
        if registry and any(v.mlflow_version for v in versions):
            try:
                _delete_registered_model(name)
                report.registry_removed = [
                    str(v.mlflow_version) for v in versions if v.mlflow_version
                ]
            except Exception as error:  # the rest of the deletion still holds
                report.errors.append(f"MLflow registered model {name}: {error}")
        _remove(deployments, versions, [], report, registry=False)
        keys.delete_key(name)
        folder = deployments_dir() / name
        if folder.is_dir() and folder.resolve().is_relative_to(config.home().resolve()):
            report.freed_bytes += _size(folder)
            shutil.rmtree(folder, ignore_errors=True)
        client.record("deleted_deployment", {"deployment": name}, home=client.home_of(store))
    return report


def _remove(
    deployments: DeploymentStore,
    doomed: list[Version],
    kept: list[Version],
    report: PruneReport,
    registry: bool,
) -> None:
    from nbdeploy.deployment.runtime import client

    kept_tags = {tag for version in kept for tag in _model_tags(version)}
    model_tags = sorted({t for v in doomed for t in _model_tags(v)} - kept_tags)
    bento_tags = sorted({v.bento_tag for v in doomed} - {v.bento_tag for v in kept})
    freed, errors = delete_from_bentoml(bento_tags, model_tags)
    report.freed_bytes += freed
    report.errors.extend(errors)
    for version in doomed:
        folder = Path(version.service_dir)
        if folder.is_dir() and folder.is_relative_to(config.home()):
            report.freed_bytes += _size(folder)
            shutil.rmtree(folder, ignore_errors=True)
        if registry and version.mlflow_version:
            try:
                _delete_registry_version(version.deployment, version.mlflow_version)
                report.registry_removed.append(version.mlflow_version)
            except Exception as error:  # the rest of the prune still holds
                report.errors.append(f"MLflow version {version.mlflow_version}: {error}")
        fields = {"deployment": version.deployment, "version": version.version}
        client.record("pruned_version", fields, home=client.home_of(deployments.store))
        report.removed.append(version.version)


def _model_tags(version: Version) -> list[str]:
    try:
        manifest = json.loads((Path(version.service_dir) / "manifest.json").read_text())
    except (OSError, ValueError):
        return []
    tags = [spec["tag"] for spec in manifest.get("objects", [])]
    if manifest.get("model_tag"):
        tags.append(manifest["model_tag"])
    return tags


def delete_from_bentoml(bentos: list[str], models: list[str]) -> tuple[int, list[str]]:
    """Delete bentos and models in a BentoML process of its own (BentoML stays out of the
    caller); returns the bytes freed and the errors met."""
    if not bentos and not models:
        return 0, []
    from nbdeploy.deployment.versions.build import last_json
    from nbdeploy.service.builder import DELETE, bentoml_environment

    request = json.dumps({"bentos": bentos, "models": models})
    completed = subprocess.run(
        [sys.executable, "-m", "nbdeploy.service.builder", DELETE, request],
        capture_output=True,
        text=True,
        env={**os.environ, **bentoml_environment()},
        timeout=300,
        check=False,
    )
    answer = last_json(completed.stdout)
    if answer is None:
        return 0, ["BentoML's store was not pruned: " + completed.stderr[-500:]]
    return int(answer["freed"]), list(answer["errors"])


def _delete_registry_version(model_name: str, version: str) -> None:
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking_uri=config.mlflow_tracking_uri()).delete_model_version(
        model_name, version
    )


def _delete_registered_model(model_name: str) -> None:
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking_uri=config.mlflow_tracking_uri()).delete_registered_model(model_name)


def _size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
