"""nbdeploy's Jupyter Server extension: the REST API the JupyterLab sidebar uses.

Enabled on install (``etc/jupyter/jupyter_server_config.d/nbdeploy.json``), it registers
the handlers of :mod:`nbdeploy.server.handlers` under ``{base_url}nbdeploy/api/``. Loading
it imports no heavy library (BentoML, MLflow, papermill, scikit-learn): the core is
imported by the first request that needs it, in a worker thread.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

QUICK_WORKERS = 8  # reads and quick actions (stop, rollback, weights)
OPERATION_WORKERS = 4  # deploys and runs at once


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "nbdeploy.server"}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    """Register the API's handlers and its thread pools with the server."""
    from nbdeploy.server.handlers import handlers
    from nbdeploy.server.operations import Operations

    web_app = serverapp.web_app
    operations = Operations(max_workers=OPERATION_WORKERS)
    web_app.settings["nbdeploy_operations"] = operations
    web_app.settings["nbdeploy_pool"] = ThreadPoolExecutor(
        max_workers=QUICK_WORKERS, thread_name_prefix="nbdeploy-api"
    )
    web_app.add_handlers(".*$", handlers(web_app.settings["base_url"]))
    # Deployments that should serve come back with Jupyter (after a reboot, say): the
    # daemon adopts what survived and restarts the rest. In the background: never a delay.
    threading.Thread(target=_bring_back_deployments, name="nbdeploy-daemon", daemon=True).start()
    serverapp.log.info("nbdeploy: REST API at %snbdeploy/api/", web_app.settings["base_url"])


def _bring_back_deployments() -> None:
    from nbdeploy.deployment import verbs

    try:
        verbs.status()  # starts the daemon when a deployment wants serving and none runs
    except Exception:  # the sidebar shows what is wrong when it asks
        return
