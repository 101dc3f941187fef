"""Where nbdeploy keeps its state: NBDEPLOY_HOME and the MLflow tracking URI."""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "NBDEPLOY_HOME"
MLFLOW_URI_ENV = "MLFLOW_TRACKING_URI"


def home() -> Path:
    """The state directory: ``$NBDEPLOY_HOME``, else ``~/.nbdeploy``; created on demand."""
    configured = os.environ.get(HOME_ENV)
    path = Path(configured).expanduser() if configured else Path.home() / ".nbdeploy"
    path.mkdir(parents=True, exist_ok=True)
    return path.resolve()


def state_db_path() -> Path:
    return home() / "state.db"


def runs_dir() -> Path:
    path = home() / "runs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def mlflow_tracking_uri() -> str:
    """The user's ``MLFLOW_TRACKING_URI`` when set, else a SQLite store under NBDEPLOY_HOME."""
    configured = os.environ.get(MLFLOW_URI_ENV)
    if configured:
        return configured
    return f"sqlite:///{home() / 'mlflow.db'}"


def mlflow_artifact_root() -> str:
    """Artifact location for experiments nbdeploy creates in its own tracking store."""
    return (home() / "mlartifacts").as_uri()
