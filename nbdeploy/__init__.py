"""nbdeploy: from a Jupyter notebook to tracked pipeline runs and deployed services.

The public API is small and imported lazily, so ``import nbdeploy`` (done inside every
notebook that logs results) stays fast::

    nbdeploy.run("train.ipynb", parameters={"n_estimators": 200})
    nbdeploy.params("train.ipynb")
    nbdeploy.runs()
    nbdeploy.log_metric("accuracy", 0.93)        # inside a notebook
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from nbdeploy.api import (
        batch,
        deploy,
        get_run,
        kubernetes,
        logs,
        metrics,
        params,
        promote,
        prune,
        requests,
        rollback,
        run,
        runs,
        show_code,
        status,
        stop,
        weights,
    )
    from nbdeploy.api import schedules as schedules  # an object: not in __all__
    from nbdeploy.image.build import build_image
    from nbdeploy.image.container import run_image
    from nbdeploy.pipeline.context import log_artifact, log_metric, log_param
    from nbdeploy.widgets.dashboard import dashboard

_LAZY = {
    "run": "nbdeploy.api",
    "params": "nbdeploy.api",
    "runs": "nbdeploy.api",
    "get_run": "nbdeploy.api",
    "deploy": "nbdeploy.api",
    "status": "nbdeploy.api",
    "stop": "nbdeploy.api",
    "logs": "nbdeploy.api",
    "rollback": "nbdeploy.api",
    "promote": "nbdeploy.api",
    "weights": "nbdeploy.api",
    "prune": "nbdeploy.api",
    "requests": "nbdeploy.api",
    "show_code": "nbdeploy.api",
    "schedules": "nbdeploy.api",  # an object (add, list, ...): not in __all__
    "kubernetes": "nbdeploy.api",
    "build_image": "nbdeploy.image.build",
    "run_image": "nbdeploy.image.container",
    "metrics": "nbdeploy.api",
    "batch": "nbdeploy.api",
    "dashboard": "nbdeploy.widgets.dashboard",
    "log_metric": "nbdeploy.pipeline.context",
    "log_param": "nbdeploy.pipeline.context",
    "log_artifact": "nbdeploy.pipeline.context",
}

__all__ = [
    "__version__",
    "batch",
    "build_image",
    "dashboard",
    "deploy",
    "get_run",
    "kubernetes",
    "load_ipython_extension",
    "log_artifact",
    "log_metric",
    "log_param",
    "logs",
    "metrics",
    "params",
    "promote",
    "prune",
    "requests",
    "rollback",
    "run",
    "run_image",
    "runs",
    "show_code",
    "status",
    "stop",
    "weights",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'nbdeploy' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    """The prebuilt JupyterLab extension: installed wheels carry it as shared data;
    ``jupyter labextension develop --overwrite .`` links it in a checkout."""
    return [{"src": "labextension", "dest": "nbdeploy-labextension"}]


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    """The Jupyter Server extension (``jpserver_extensions: {"nbdeploy": true}``): the
    REST API of :mod:`nbdeploy.server`."""
    return [{"module": "nbdeploy.server"}]


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext nbdeploy``: registers the ``%deploy`` magics."""
    from nbdeploy.magics import register

    register(ipython)
