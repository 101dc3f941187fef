"""The MLflow helper process: reads JSON-line requests on stdin, answers on stdout.

``start``: get or create the experiment and create a run; ``finish``: log params, metrics
and artifacts and close the run (named by its ``start`` request, so a run can be finished
before its start was answered); ``register``: log a deployment version as a pyfunc model
and register it; ``alias``: point a registered model's alias at a version. It exits when
its parent closes stdin, after handling every request already sent, even when the parent
has gone meanwhile; it ignores Ctrl-C (which reaches the whole process group), so an
interrupted run is still closed in MLflow.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import time
from typing import Any

from nbdeploy.private_files import restrict_umask

_clients: dict[str, Any] = {}
_started: dict[str, dict[str, Any]] = {}  # the reply to each start request, by its id


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
    run_id = request.get("mlflow_run_id") or _started_run(request["start_id"])
    now = int(time.time() * 1000)
    client.log_batch(
        run_id,
        metrics=[Metric(name, value, now, step) for name, value, step in request["metrics"]],
        params=[Param(name, value) for name, value in request["params"].items()],
    )
    for artifact in request["artifacts"]:
        folder = "notebook" if artifact.endswith(".ipynb") else "artifacts"
        client.log_artifact(run_id, artifact, folder)
    status = request.get("status") or ("FINISHED" if request.get("succeeded") else "FAILED")
    client.set_terminated(run_id, status)
    return {"mlflow_run_id": run_id}


def _started_run(start_id: str) -> str:
    started = _started.get(start_id)
    if started is None:
        raise RuntimeError("its MLflow run was never started (the MLflow helper restarted)")
    if not started.get("ok"):
        raise RuntimeError(f"its MLflow run could not be created: {started.get('error')}")
    return str(started["mlflow_run_id"])


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
    sys.modules.pop("nbdeploy_runtime", None)
    sys.path.insert(0, directory)
    try:
        return _log_model(mlflow, experiment_id, directory, request)
    finally:
        sys.path.remove(directory)
        sys.modules.pop("nbdeploy_runtime", None)


def _log_model(
    mlflow: Any, experiment_id: str, directory: str, request: dict[str, Any]
) -> dict[str, Any]:
    with mlflow.start_run(
        experiment_id=experiment_id, run_name=request["run_name"], tags=request["tags"]
    ):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=f"{directory}/mlflow_model.py",
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
    restrict_umask()  # MLflow's store and artifacts under NBDEPLOY_HOME: owner-only
    signal.signal(signal.SIGINT, signal.SIG_IGN)
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
        if request.get("op") == "start":
            _started[str(request.get("id"))] = reply
        with contextlib.suppress(OSError):  # the parent is gone: still do what it asked
            sys.stdout.write(json.dumps(reply) + "\n")
            sys.stdout.flush()
    with contextlib.suppress(OSError):
        sys.stdout.flush()
    os._exit(0)  # MLflow's exit hooks (telemetry, finalizers) add most of a second


if __name__ == "__main__":
    main()
