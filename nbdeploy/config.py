"""Where nbdeploy keeps its state: NBDEPLOY_HOME and the MLflow tracking URI.

The home is owner-only (mode 0700, issue 17): it holds request logs with inputs and
predictions, pickled objects and logs, and on a shared machine other local users must not
read them; the mode also covers what libraries (MLflow, BentoML) write inside it.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from nbdeploy.errors import NbdeployError
from nbdeploy.private_files import DIR_MODE, private_dir

HOME_ENV = "NBDEPLOY_HOME"
MLFLOW_URI_ENV = "MLFLOW_TRACKING_URI"
MLFLOW_DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")  # MLflow's SQL stores
# MLflow's default artifact root for a database store when set (``mlflow server`` sets it).
MLFLOW_ARTIFACT_ROOT_ENV = "_MLFLOW_SERVER_ARTIFACT_ROOT"


def home() -> Path:
    """The state directory: ``$NBDEPLOY_HOME``, else ``~/.nbdeploy``; created on demand
    with mode 0700, and made 0700 again when it is not (one stat per call: it is called
    often). Raises NbdeployError when the folder belongs to another user."""
    configured = os.environ.get(HOME_ENV)
    path = Path(configured).expanduser() if configured else Path.home() / ".nbdeploy"
    try:
        status = path.stat()
    except FileNotFoundError:
        # Parents keep the default mode: they are the user's folders, not ours.
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir(mode=DIR_MODE, exist_ok=True)
        status = path.stat()
    _keep_private(path, status)
    return path.resolve()


def _keep_private(path: Path, status: os.stat_result) -> None:
    if status.st_uid != os.getuid():
        raise NbdeployError(
            f"nbdeploy's home {path} belongs to another user (uid {status.st_uid})",
            f"set {HOME_ENV} to a folder of your own, or remove {path}",
        )
    if stat.S_IMODE(status.st_mode) != DIR_MODE:
        os.chmod(path, DIR_MODE)  # made before issue 17, or opened up by hand


def state_db_path() -> Path:
    return home() / "state.db"


def runs_dir() -> Path:
    return private_dir(home() / "runs")


def mlflow_tracking_uri() -> str:
    """The user's ``MLFLOW_TRACKING_URI`` when set (a relative path made absolute: MLflow's
    helper process runs in NBDEPLOY_HOME), else a SQLite store under NBDEPLOY_HOME."""
    configured = os.environ.get(MLFLOW_URI_ENV)
    if configured:
        return absolute_uri(configured)
    return f"sqlite:///{home() / 'mlflow.db'}"


def absolute_uri(uri: str) -> str:
    """A tracking URI whose local path is relative (``./mlruns``, ``file:mlruns``,
    ``sqlite:///mlflow.db``) as an absolute one, from the current folder; others as given."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        path = uri[len("sqlite:///") :]
        return f"sqlite:///{Path(path).resolve()}" if path and path != ":memory:" else uri
    if uri.split(":")[0] in ("databricks", "databricks-uc", "uc"):
        return uri  # MLflow's names of hosted stores, not paths
    if "://" not in uri and not uri.startswith("file:"):
        return Path(uri).resolve().as_uri()  # a plain path
    if uri.startswith("file:") and not uri.startswith("file:/"):
        return Path(uri[len("file:") :]).resolve().as_uri()
    return uri


def mlflow_artifact_location(experiment: str) -> str | None:
    """Artifact location for an MLflow experiment nbdeploy creates, in the tracking store of
    :func:`mlflow_tracking_uri`. A database store's default is ``./mlruns`` of the folder of
    whichever process opens it (the user's working folder, for one): so with a database
    store, and no artifact root given to MLflow, a folder of NBDEPLOY_HOME/mlartifacts (made
    0700 here: MLflow would create it with the process's umask). A file store or a tracking
    server places artifacts itself: None. An existing experiment keeps its own location."""
    scheme = mlflow_tracking_uri().split(":", 1)[0].split("+", 1)[0]
    if scheme not in MLFLOW_DATABASE_SCHEMES or os.environ.get(MLFLOW_ARTIFACT_ROOT_ENV):
        return None
    folder = re.sub(r"[^\w.-]+", "_", experiment).strip(".") or "experiment"  # one folder
    return (private_dir(home() / "mlartifacts") / folder).as_uri()
