"""Deployment versions in the MLflow model registry: each version is registered as a
version of the registered model named after the deployment, and the alias ``live`` follows
the version that serves. Registry errors never fail a deploy: they become notices.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nbdeploy import config

if TYPE_CHECKING:
    from nbdeploy.deployment.store import DeploymentStore, Version

LIVE_ALIAS = "live"
EXPERIMENT = "nbdeploy-deployments"
REPLY_TIMEOUT_SECONDS = 300


def register_version(version: Any) -> Future[dict[str, Any]]:
    """Start registering ``version`` (in the MLflow helper process); returns its reply."""
    from nbdeploy.pipeline.tracking import tracking_worker

    directory = Path(version.service_dir)
    return tracking_worker().request(
        f"register-{uuid.uuid4().hex}",
        op="register",
        uri=config.mlflow_tracking_uri(),
        experiment=EXPERIMENT,
        artifact_location=config.mlflow_artifact_location(EXPERIMENT),
        run_name=f"{version.deployment}-v{version.version}",
        tags={
            "nbdeploy.deployment": version.deployment,
            "nbdeploy.version": str(version.version),
            "nbdeploy.bento": version.bento_tag,
        },
        directory=str(directory),
        # The whole version folder: runtime, pickles, objects and local modules; the pyfunc
        # loads it as the service does.
        artifacts={"version": str(directory)},
        requirements=version.requirements,
        model_name=version.deployment,
    )


def set_live(model_name: str, model_version: str) -> dict[str, Any]:
    from nbdeploy.pipeline.tracking import tracking_worker

    return (
        tracking_worker()
        .request(
            f"alias-{uuid.uuid4().hex}",
            op="alias",
            uri=config.mlflow_tracking_uri(),
            model_name=model_name,
            alias=LIVE_ALIAS,
            version=model_version,
        )
        .result(timeout=REPLY_TIMEOUT_SECONDS)
    )


Notify = Callable[[str], None]


def record_live(
    deployments: DeploymentStore,
    version: Version,
    registration: Any,
    notices: list[str],
    notify: Notify,
) -> Version:
    """Wait for the version's MLflow registration and point the alias ``live`` at it."""
    try:
        if registration is not None:
            reply = registration.result(timeout=REPLY_TIMEOUT_SECONDS)
            if not reply.get("ok"):
                raise RuntimeError(reply.get("error"))
            from nbdeploy.deployment.runtime import client

            fields = {
                "deployment": version.deployment,
                "version": version.version,
                "mlflow_version": str(reply["model_version"]),
            }
            client.record("mlflow_version", fields, home=client.home_of(deployments.store))
            version = deployments.version(version.deployment, version.version)
        if version.mlflow_version:
            answer = set_live(version.deployment, version.mlflow_version)
            if not answer.get("ok"):
                raise RuntimeError(answer.get("error"))
    except Exception as error:  # the service serves; only the registry record is missing
        message = f"MLflow registry not updated: {error}"
        notices.append(message)
        notify(message)
    return version
