"""Serving a model from the MLflow registry without a notebook (``nbdeploy deploy
--from-mlflow models:/NAME@ALIAS``): the model is imported into a bento and rolled out like
any version."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nbdeploy import config
from nbdeploy.deployment.options import DeployOptions
from nbdeploy.deployment.runtime.locks import deployment_lock
from nbdeploy.deployment.runtime.processes import LOOPBACK
from nbdeploy.deployment.store import DeploymentStore, Version
from nbdeploy.deployment.verbs import DeployResult, check_host, switch
from nbdeploy.deployment.versions.build import add_version, build_bento, deployments_dir
from nbdeploy.errors import DeployError
from nbdeploy.private_files import private_dir, write_private_text
from nbdeploy.store import StateStore, default_store

Notify = Callable[[str], None]


def _ignore(message: str) -> None:
    pass


def deploy_mlflow_model(
    model_uri: str,
    *,
    name: str | None = None,
    host: str = LOOPBACK,
    port: int | None = None,
    workers: int = 1,
    store: StateStore | None = None,
    notify: Notify = _ignore,
) -> DeployResult:
    """Serve an MLflow model (``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or
    ``runs:/ID/PATH``) without a notebook: POST /predict {"rows": [...]}."""
    import hashlib

    from nbdeploy.service import requestlog_runtime, upstream_guard
    from nbdeploy.service.package import REQUEST_LOG_FILE, UPSTREAM_GUARD_FILE, deployment_name
    from nbdeploy.templating import render

    started = time.monotonic()
    check_host(host)
    resolved, registered_name, (columns, width), requirements = _resolve_mlflow_model(model_uri)
    name = deployment_name(name, given=True) if name else deployment_name(registered_name)
    deployments = DeploymentStore(store or default_store())
    content = hashlib.sha256(f"{resolved}\n{columns}\n{width}\n{workers}".encode()).hexdigest()
    model_tag = f"nbd-{name}-mlflow:{content[:16]}"
    code = render(
        "mlflow_service.py.j2",
        deployment=name,
        model_uri=resolved,
        columns=columns,
        width=width,
        service_name=f"nbd-{name}",
        workers=int(workers),
        timeout=60,
        model_tag=model_tag,
        max_batch_size=100,
        max_latency_ms=1000,
    )
    request_log = Path(requestlog_runtime.__file__).read_text(encoding="utf-8")
    guard = Path(upstream_guard.__file__).read_text(encoding="utf-8")
    content = hashlib.sha256((content + code + request_log + guard).encode()).hexdigest()
    version_dir = deployments_dir() / name / "versions" / content[:16]
    private_dir(version_dir)  # owner-only, as every version folder (issue 17)
    write_private_text(version_dir / "service.py", code)
    write_private_text(version_dir / REQUEST_LOG_FILE, request_log)
    write_private_text(version_dir / UPSTREAM_GUARD_FILE, guard)
    write_private_text(version_dir / "requirements.txt", "".join(f"{r}\n" for r in requirements))
    schema: dict[str, Any] = {
        "route": "/predict",
        "inputs": [{"name": "rows", "type": "list[Any]"}],
        "output": "list[Any]",
        "width": width,  # values per row, from the model's signature (None: unknown)
    }
    if width:  # a request that works as printed: one row of zeros of the right width
        schema["example"] = {"rows": [[0.0] * width]}
    manifest = {
        "name": name,
        "function": "predict",
        "batch": True,
        "objects": [],
        "content_hash": content,
        "requirements": requirements,
        "schema": schema,
        "mlflow_model_uri": resolved,
        "model_tag": model_tag,
    }
    write_private_text(version_dir / "manifest.json", json.dumps(manifest, indent=2))
    planned = Version(
        deployment=name,
        version=0,
        content_hash=content,
        bento_tag="",  # known once built
        function="predict",
        service_dir=str(version_dir),
        created_at=time.time(),
        source={"mlflow_model_uri": resolved, "asked": model_uri},
        requirements=requirements,
        schema=schema,
        options={"workers": workers, "batch": True, "log_sample": 1.0, "redact": []},
        mlflow_version=None,
    )
    with deployment_lock(name, notify):  # two builds of one name never run at once
        version, built = _existing_or_built(deployments, planned, host, port, notify)
    # The rollout is the daemon's, as for every deploy: serialized with the other verbs.
    options = DeployOptions(host=host, port=port, workers=workers)
    switch(name, version.version, options, notify, store)
    deployment = deployments.get(name)
    return DeployResult(deployment, version, built, requirements, [], time.monotonic() - started)


def _existing_or_built(
    deployments: DeploymentStore, planned: Version, host: str, port: int | None, notify: Notify
) -> tuple[Version, bool]:
    """The deployment's version with ``planned``'s content, else ``planned`` built now."""
    name = planned.deployment
    existing = deployments.version_with_hash(name, planned.content_hash)
    if existing is not None:
        return existing, False
    notify(f"importing {planned.source['mlflow_model_uri']} and building {name}")
    planned.bento_tag, built = build_bento(Path(planned.service_dir))
    return add_version(deployments, host, port, planned), built


def _resolve_mlflow_model(
    model_uri: str,
) -> tuple[str, str, tuple[list[str], int | None], list[str]]:
    """(a URI that names one version, the model's name, its input (column names, values per
    row), requirements)."""
    import re

    match = re.fullmatch(r"models:/([^/@]+)(?:@([\w.-]+)|/(\d+))", model_uri.strip())
    if not match and not model_uri.startswith("runs:/"):
        raise DeployError(
            f"--from-mlflow {model_uri!r} is not a registered model URI",
            "use models:/NAME@ALIAS, models:/NAME/VERSION or runs:/RUN_ID/PATH",
        )
    import logging

    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    logging.getLogger("mlflow").setLevel(logging.WARNING)

    client = MlflowClient(tracking_uri=config.mlflow_tracking_uri())
    try:
        if match:
            model_name, alias, number = match.groups()
            found = (
                client.get_model_version_by_alias(model_name, alias)
                if alias
                else client.get_model_version(model_name, number)
            )
            resolved = f"models:/{model_name}/{found.version}"
        else:
            model_name = model_uri.split("/")[-1] or "model"
            resolved = model_uri
        import mlflow.models

        info = mlflow.models.get_model_info(_with_tracking(resolved))
    except MlflowException as error:
        raise DeployError(f"MLflow has no model {model_uri!r}: {error.message}") from None
    return resolved, model_name, input_shape(info.signature), _mlflow_requirements(resolved)


def input_shape(signature: Any) -> tuple[list[str], int | None]:
    """A signature's input as rows: the column names (a column-based schema) and the values
    a row has (None: the model logged no signature, or rows of no fixed width)."""
    if signature is None or signature.inputs is None:
        return [], None
    inputs = signature.inputs
    columns = [name for name in inputs.input_names() if isinstance(name, str)]
    if columns:
        return columns, len(columns)
    if inputs.is_tensor_spec() and len(inputs.inputs) == 1:
        shape = tuple(inputs.inputs[0].shape or ())
        if len(shape) == 2 and isinstance(shape[1], int) and shape[1] > 0:
            return [], shape[1]
    return [], None


def _with_tracking(uri: str) -> str:
    import mlflow

    mlflow.set_tracking_uri(config.mlflow_tracking_uri())
    return uri


def _mlflow_requirements(model_uri: str) -> list[str]:
    """The requirements MLflow recorded with the model (pinned when it was logged)."""
    import mlflow.pyfunc

    try:
        path = mlflow.pyfunc.get_model_dependencies(model_uri)
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except Exception:  # no recorded requirements: the service uses this environment's
        from nbdeploy.service.requirements import pin_requirements

        return pin_requirements({"mlflow", "pandas", "numpy"}).pinned
    return [line.strip() for line in lines if line.strip() and not line.startswith(("#", "-"))]
