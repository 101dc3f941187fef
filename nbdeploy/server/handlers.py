"""The REST handlers under ``{base_url}nbdeploy/api/``: thin faces over the core.

Every handler is authenticated (``tornado.web.authenticated``) and authorized
(``jupyter_server.auth.decorator.authorized``, resource ``nbdeploy``: GET reads, POST
writes); cookie sessions need the XSRF token for POST (jupyter_server's own check).
Request bodies are pydantic models; paths are resolved inside the server's root. Work runs
in threads: quick calls in a small pool, deploys and runs as operations
(:mod:`nbdeploy.server.operations`), so the event loop keeps answering.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import web

from nbdeploy.errors import NbdeployError
from nbdeploy.monitor.metrics import DEFAULT_WINDOW
from nbdeploy.server import scheduling, views
from nbdeploy.server.child import run_in_child
from nbdeploy.server.errors import ApiError, from_nbdeploy_error
from nbdeploy.server.models import (
    BatchBody,
    DeployBody,
    RollbackBody,
    RunBody,
    ScheduleBody,
    WeightsBody,
    check_deployment_name,
    parse_body,
)
from nbdeploy.server.operations import Operations
from nbdeploy.server.paths import NOTEBOOK_SUFFIXES, RUNNABLE_SUFFIXES, resolve_in_root

API_PREFIX = "nbdeploy/api"
AUTH_RESOURCE = "nbdeploy"
NAME = r"(?P<name>[^/]+)"
log = logging.getLogger("nbdeploy.server")
Result = TypeVar("Result")


class NbdeployHandler(APIHandler):
    """Common ground: JSON replies, errors as ``{"error", "field", "hint"}``, work in
    threads."""

    auth_resource = AUTH_RESOURCE

    @property
    def operations(self) -> Operations:
        operations: Operations = self.settings["nbdeploy_operations"]
        return operations

    @property
    def quick_pool(self) -> ThreadPoolExecutor:
        pool: ThreadPoolExecutor = self.settings["nbdeploy_pool"]
        return pool

    @property
    def root_dir(self) -> Path:
        root = self.settings.get("server_root_dir") or self.contents_manager.root_dir
        return Path(root).expanduser().resolve()

    async def call(self, work: Callable[..., Result], *args: Any) -> Result:
        """``work(*args)`` in the quick pool, its core errors as API errors."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self.quick_pool, work, *args)
        except NbdeployError as error:
            raise from_nbdeploy_error(error) from None

    def reply(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(views._finite(data), default=str))

    def body_of(self, model: type[Any]) -> Any:
        return parse_body(model, self.request.body)

    def name_of(self, name: str) -> str:
        try:
            return check_deployment_name(name)
        except ValueError as error:
            raise ApiError(404, str(error), "name") from None

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Errors as ``{"error", "field", "hint"}``, never a traceback."""
        error = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(error, ApiError):
            payload = error.to_dict()
        elif isinstance(error, web.HTTPError):
            payload = {
                "error": error.log_message or self._reason or "error",
                "field": None,
                "hint": None,
            }
        else:
            payload = {
                "error": "internal error in nbdeploy's server extension",
                "field": None,
                "hint": "the Jupyter server's log has the details",
            }
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(payload))

    def _handle_request_exception(self, e: BaseException) -> None:
        if isinstance(e, ApiError):
            if self._finished:
                return
            self.send_error(e.status, exc_info=(type(e), e, e.__traceback__))
            return
        super()._handle_request_exception(e)


# -- deployments ---------------------------------------------------------------------------
class DeploymentsHandler(NbdeployHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.reply(await self.call(views.deployments))

    @web.authenticated
    @authorized
    async def post(self) -> None:
        body: DeployBody = self.body_of(DeployBody)
        path = resolve_in_root(self.root_dir, body.path, suffixes=NOTEBOOK_SUFFIXES)
        name = await self.call(views.check_deploy, path, body)
        operation = self.operations.start(
            "deploy",
            name,
            lambda op: run_in_child(
                "deploy", {"path": str(path), "body": body.model_dump(), "name": name}, op
            ),
        )
        self.reply({"operation": operation.to_dict()}, 202)


class DeploymentHandler(NbdeployHandler):
    @web.authenticated
    @authorized
    async def get(self, name: str) -> None:
        self.reply(await self.call(views.deployment, self.name_of(name)))


ACTIONS: dict[str, Callable[[str], dict[str, Any]]] = {
    "stop": views.stop,
    "rollback": views.rollback,
    "promote": views.promote,
}


class DeploymentActionHandler(NbdeployHandler):
    """POST deployments/NAME/stop | rollback | promote."""

    @web.authenticated
    @authorized
    async def post(self, name: str, action: str) -> None:
        name = self.name_of(name)
        self.operations.refuse_if_busy(name)
        if action == "rollback" and self.request.body.strip():
            body: RollbackBody = self.body_of(RollbackBody)
            self.reply(await self.call(views.rollback, name, body.to))
            return
        self.reply(await self.call(ACTIONS[action], name))


class WeightsHandler(NbdeployHandler):
    @web.authenticated
    @authorized
    async def post(self, name: str) -> None:
        name = self.name_of(name)
        body: WeightsBody = self.body_of(WeightsBody)
        self.operations.refuse_if_busy(name)
        self.reply(await self.call(views.weights, name, body.weights))


class BatchHandler(NbdeployHandler):
    """POST deployments/NAME/batch: score a file of the root with a version (an operation)."""

    @web.authenticated
    @authorized
    async def post(self, name: str) -> None:
        name = self.name_of(name)
        body: BatchBody = self.body_of(BatchBody)
        paths = await self.call(scheduling.check_batch, name, body, self.root_dir)
        arguments = {"name": name, "body": body.model_dump(), "paths": paths}
        operation = self.operations.start(
            "batch", None, lambda op: run_in_child("batch", arguments, op)
        )
        self.reply({"operation": operation.to_dict()}, 202)


class MetricsHandler(NbdeployHandler):
    @web.authenticated
    @authorized
    async def get(self, name: str) -> None:
        window = self.get_query_argument("window", DEFAULT_WINDOW)
        self.reply(await self.call(views.metrics, self.name_of(name), window))


# -- runs ------------------------------------------------------------------------------------
class RunsHandler(NbdeployHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        text = self.get_query_argument("limit", "20")
        try:
            limit = int(text)
        except ValueError:
            raise ApiError(422, f"limit: {text!r} is not a whole number", "limit") from None
        if not 1 <= limit <= 1000:
            raise ApiError(422, "limit: between 1 and 1000", "limit")
        self.reply(await self.call(views.runs, limit))

    @web.authenticated
    @authorized
    async def post(self) -> None:
        body: RunBody = self.body_of(RunBody)
        path = resolve_in_root(self.root_dir, body.path, suffixes=RUNNABLE_SUFFIXES)
        await self.call(views.check_run, path, body, self.root_dir)
        operation = self.operations.start(
            "run",
            None,
            lambda op: run_in_child("run", {"path": str(path), "body": body.model_dump()}, op),
        )
        self.reply({"operation": operation.to_dict()}, 202)


class RunHandler(NbdeployHandler):
    @web.authenticated
    @authorized
    async def get(self, run_id: str) -> None:
        self.reply(await self.call(views.get_run, run_id))


class RunOutputHandler(NbdeployHandler):
    """The output notebook as HTML, shown in a sandboxed frame: no script of the notebook's
    outputs runs, nothing loads from elsewhere."""

    @web.authenticated
    @authorized
    async def get(self, run_id: str) -> None:
        theme = self.get_query_argument("theme", "light")
        html = await self.call(views.run_output_html, run_id, theme)
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.set_header(
            "Content-Security-Policy",
            "sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data:; font-src data:",
        )
        # APIHandler.finish would label the page JSON: finish as a plain Jupyter page.
        super(APIHandler, self).finish(html)


# -- schedules -------------------------------------------------------------------------------
class SchedulesHandler(NbdeployHandler):
    """GET schedules (each with status, last result and next fire); POST schedules (add)."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.reply(await self.call(scheduling.schedules))

    @web.authenticated
    @authorized
    async def post(self) -> None:
        body: ScheduleBody = self.body_of(ScheduleBody)
        self.reply(await self.call(scheduling.add_schedule, body, self.root_dir), 201)


class ScheduleHandler(NbdeployHandler):
    """GET schedules/NAME: the schedule with its last fires."""

    @web.authenticated
    @authorized
    async def get(self, name: str) -> None:
        self.reply(await self.call(scheduling.schedule_detail, name))


class ScheduleHistoryHandler(NbdeployHandler):
    """GET schedules/NAME/history?limit=N: its fires, newest first, with their runs."""

    @web.authenticated
    @authorized
    async def get(self, name: str) -> None:
        self.reply(await self.call(scheduling.schedule_history, name, self.limit()))

    def limit(self) -> int:
        text = self.get_query_argument("limit", "20")
        if not text.isdigit() or not 1 <= int(text) <= 1000:
            raise ApiError(422, f"limit: {text!r}: a whole number from 1 to 1000", "limit")
        return int(text)


class ScheduleActionHandler(NbdeployHandler):
    """POST schedules/NAME/pause | resume | run-now | remove."""

    @web.authenticated
    @authorized
    async def post(self, name: str, action: str) -> None:
        self.reply(await self.call(scheduling.schedule_action, name, action))


# -- notebooks and operations ----------------------------------------------------------------
class NotebookParamsHandler(NbdeployHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        text = self.get_query_argument("path", "")
        path = resolve_in_root(self.root_dir, text, suffixes=NOTEBOOK_SUFFIXES)
        try:
            self.reply(await self.call(views.notebook_params, path, text))
        except ApiError as error:
            error.field = error.field or "path"
            raise


class OperationsHandler(NbdeployHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.reply([operation.to_dict() for operation in self.operations.recent()])


class OperationHandler(NbdeployHandler):
    @web.authenticated
    @authorized
    async def get(self, operation_id: str) -> None:
        self.reply(self.operations.get(operation_id).to_dict())


class NotFoundHandler(NbdeployHandler):
    """Anything else under the API's prefix: a 404 in the API's own form."""

    @web.authenticated
    @authorized
    async def get(self, rest: str) -> None:
        raise ApiError(404, f"no such API: {rest!r}", None, "see docs/openapi.yaml")

    post = get


def handlers(base_url: str) -> list[tuple[str, type[NbdeployHandler]]]:
    """The URL patterns of the API, under ``base_url``."""

    def at(pattern: str) -> str:
        return url_path_join(base_url, API_PREFIX, pattern)

    return [
        (at("deployments/?"), DeploymentsHandler),
        (at(f"deployments/{NAME}/(?P<action>stop|rollback|promote)/?"), DeploymentActionHandler),
        (at(f"deployments/{NAME}/weights/?"), WeightsHandler),
        (at(f"deployments/{NAME}/metrics/?"), MetricsHandler),
        (at(f"deployments/{NAME}/batch/?"), BatchHandler),
        (at(f"deployments/{NAME}/?"), DeploymentHandler),
        (at("runs/?"), RunsHandler),
        (at(r"runs/(?P<run_id>[^/]+)/output/?"), RunOutputHandler),
        (at(r"runs/(?P<run_id>[^/]+)/?"), RunHandler),
        (at("schedules/?"), SchedulesHandler),
        (at(f"schedules/{NAME}/history/?"), ScheduleHistoryHandler),
        (
            at(f"schedules/{NAME}/(?P<action>{'|'.join(scheduling.SCHEDULE_ACTIONS)})/?"),
            ScheduleActionHandler,
        ),
        (at(f"schedules/{NAME}/?"), ScheduleHandler),
        (at("notebooks/params/?"), NotebookParamsHandler),
        (at("operations/?"), OperationsHandler),
        (at(r"operations/(?P<operation_id>[^/]+)/?"), OperationHandler),
        (at("(?P<rest>.*)"), NotFoundHandler),
    ]
