"""The MLflow helper process: reads JSON-line requests on stdin, answers on stdout.

``start``: get or create the experiment and create a run; ``finish``: log params, metrics
and artifacts and close the run; ``register``: log a deployment version as a pyfunc model
and register it; ``alias``: point a registered model's alias at a version. It exits when
its parent closes stdin.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

_clients: dict[str, Any] = {}


def _client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    if uri not in _clients:
        _clients[uri] = MlflowClient(tracking_uri=uri)
    return _clients[uri]


def _experiment_id(client: Any, name: str, artifact_location: str | None) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    try:
        return str(client.create_experiment(name, artifact_location=artifact_location))
    except Exception:
        found = client.get_experiment_by_name(name)  # another process created it meanwhile
        if found is None:
            raise
        return str(found.experiment_id)


def start(request: dict[str, Any]) -> dict[str, Any]:
    client = _client(request["uri"])
    experiment_id = _experiment_id(client, request["experiment"], request.get("artifact_location"))
    run = client.create_run(experiment_id, run_name=request["run_name"], tags=request["tags"])
    return {"mlflow_run_id": run.info.run_id}


def finish(request: dict[str, Any]) -> dict[str, Any]:
    from mlflow.entities import Metric, Param

    client = _client(request["uri"])
    run_id = request["mlflow_run_id"]
    now = int(time.time() * 1000)
    client.log_batch(
        run_id,
        metrics=[Metric(name, value, now, step) for name, value, step in request["metrics"]],
        params=[Param(name, value) for name, value in request["params"].items()],
    )
    for artifact in request["artifacts"]:
        folder = "notebook" if artifact.endswith(".ipynb") else "artifacts"
        client.log_artifact(run_id, artifact, folder)
    client.set_terminated(run_id, "FINISHED" if request["succeeded"] else "FAILED")
    return {"mlflow_run_id": run_id}


def register(request: dict[str, Any]) -> dict[str, Any]:
    """Log a deployment version as an MLflow pyfunc model and register it under the
    deployment's name (one registered model version per nbdeploy version)."""
    import mlflow

    mlflow.set_tracking_uri(request["uri"])
    client = _client(request["uri"])
    experiment_id = _experiment_id(client, request["experiment"], request.get("artifact_location"))
    directory = request["directory"]
    # MLflow imports the model's code while logging it: make this version's module the one
    # found (versions share its name).
    sys.modules.pop("nbdeploy_function", None)
    sys.path.insert(0, directory)
    try:
        return _log_model(mlflow, experiment_id, directory, request)
    finally:
        sys.path.remove(directory)
        sys.modules.pop("nbdeploy_function", None)


def _log_model(
    mlflow: Any, experiment_id: str, directory: str, request: dict[str, Any]
) -> dict[str, Any]:
    with mlflow.start_run(
        experiment_id=experiment_id, run_name=request["run_name"], tags=request["tags"]
    ):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=f"{directory}/mlflow_model.py",
            code_paths=[f"{directory}/nbdeploy_function.py"],
            artifacts=request["artifacts"],
            pip_requirements=request["requirements"],
            registered_model_name=request["model_name"],
        )
    return {"model_version": str(info.registered_model_version), "model_uri": info.model_uri}


def set_alias(request: dict[str, Any]) -> dict[str, Any]:
    client = _client(request["uri"])
    client.set_registered_model_alias(request["model_name"], request["alias"], request["version"])
    return {}


def main() -> None:
    # jsonschema's IRI format support costs 0.7 s to import and MLflow never needs it.
    sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]
    for noisy in ("mlflow", "alembic"):  # schema set-up chatter on a new store
        logging.getLogger(noisy).setLevel(logging.WARNING)
    import mlflow.tracking  # noqa: F401  (import before the first request arrives)

    handlers = {"start": start, "finish": finish, "register": register, "alias": set_alias}
    for line in sys.stdin:
        request = json.loads(line)
        try:
            reply = {"id": request["id"], "ok": True, **handlers[request["op"]](request)}
        except Exception as exc:
            reply = {"id": request.get("id"), "ok": False, "error": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
    sys.stdout.flush()
    os._exit(0)  # MLflow's exit hooks (telemetry, finalizers) add most of a second


if __name__ == "__main__":
    main()
