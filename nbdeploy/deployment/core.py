"""Deploy notebook functions and fitted models as local services: the core behind
``%deploy``, ``nbdeploy deploy`` and ``nbdeploy.deploy``.

A deploy captures the function (or model), makes its version (see
:mod:`nbdeploy.deployment.versions`: content-addressed, built once), and switches the
deployment's address to it, all under the deployment's lock. The strategy here is
*recreate*: the old server stops and the new one starts on the deployment's port; if the
new one does not become ready (or the deploy is interrupted), the old version is started
again and the error says why.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nbdeploy import config
from nbdeploy.deployment.locks import deployment_lock
from nbdeploy.deployment.options import DeployOptions
from nbdeploy.deployment.registry import register_version
from nbdeploy.deployment.store import (
    FAILED,
    SERVING,
    STOPPED,
    Deployment,
    DeploymentStore,
    Version,
)
from nbdeploy.deployment.supervisor import (
    LOOPBACK,
    ServerStartError,
    free_port,
    start_server,
    stop_process,
    tail,
)
from nbdeploy.deployment.versions import build_bento, deployments_dir, prepare_version
from nbdeploy.errors import NbdeployError
from nbdeploy.store import StateStore, default_store

Notify = Callable[[str], None]
READY_TIMEOUT_SECONDS = 120
FAILED_START = "failed-start"  # the role of a server that never became ready
STARTUP_FAILURE_MARKERS = ("Application startup failed",)


class DeployError(NbdeployError):
    """A deploy did not complete; the previous version (if any) is still serving."""

    exit_code = 1


@dataclass
class DeployResult:
    deployment: Deployment
    version: Version
    built: bool
    requirements: list[str]
    notices: list[str] = field(default_factory=list)
    seconds: float = 0.0
    example: dict[str, Any] | None = None

    @property
    def url(self) -> str:
        return self.deployment.url

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.deployment.name,
            "version": self.version.version,
            "url": self.url,
            "endpoint": self.url + self.version.schema.get("route", "/"),
            "routes": self.version.schema.get("routes", []),
            "inputs": self.version.schema.get("inputs", []),
            "example": self.example or self.version.schema.get("example"),
            "status": self.deployment.status,
            "bento": self.version.bento_tag,
            "built": self.built,
            "requirements": self.requirements,
            "notices": self.notices,
            "seconds": round(self.seconds, 2),
        }


def _ignore(message: str) -> None:
    pass


def deploy_function(
    function: Any,
    *,
    namespace: Mapping[str, Any] | None = None,
    history: Iterable[str] = (),
    options: DeployOptions | None = None,
    source: Mapping[str, Any] | None = None,
    store: StateStore | None = None,
    notify: Notify = _ignore,
) -> DeployResult:
    """Deploy ``function`` (defined in a notebook) with everything it reaches."""
    from nbdeploy.service.capture import capture_function

    options = options or DeployOptions()
    cells = list(history)
    scope = namespace if namespace is not None else getattr(function, "__globals__", {})
    captured = capture_function(function, scope, cells)
    return deploy_captured(
        captured,
        options=options,
        reference=_reference_value(options.reference, scope),
        history=cells,
        source=source,
        store=store,
        notify=notify,
    )


def deploy_model(
    model: Any,
    *,
    variable: str | None = None,
    namespace: Mapping[str, Any] | None = None,
    history: Iterable[str] = (),
    options: DeployOptions | None = None,
    source: Mapping[str, Any] | None = None,
    store: StateStore | None = None,
    notify: Notify = _ignore,
) -> DeployResult:
    """Deploy a fitted model (``%deploy model``): /predict, and /predict_proba when the model
    has it; the input schema comes from ``options.reference``."""
    from nbdeploy.service.capture import capture_model

    options = options or DeployOptions()
    variable = variable or _variable_name(model, namespace or {}) or "model"
    cells = list(history)
    captured = capture_model(variable, model, cells)
    return deploy_captured(
        captured,
        options=options,
        reference=_reference_value(options.reference, namespace or {}),
        history=cells,
        source=source,
        store=store,
        notify=notify,
    )


def is_model(value: Any) -> bool:
    """A fitted model to serve directly (not a function to call)."""
    import types

    from nbdeploy.service.serialize import is_lru_wrapper

    if isinstance(value, types.FunctionType | types.MethodType | type) or is_lru_wrapper(value):
        return False
    return callable(getattr(value, "predict", None))


def _variable_name(value: Any, namespace: Mapping[str, Any]) -> str | None:
    for name, candidate in namespace.items():
        if candidate is value and not name.startswith("_"):
            return name
    return None


def _reference_value(reference: str | None, scope: Mapping[str, Any]) -> Any:
    if not reference:
        return None
    if reference not in scope:
        raise DeployError(
            f"--reference {reference!r}: no such variable in the notebook",
            "name the variable that holds the training inputs (a DataFrame or array)",
        )
    return scope[reference]


def deploy_captured(
    captured: Any,
    *,
    options: DeployOptions,
    reference: Any,
    history: list[str],
    source: Mapping[str, Any] | None,
    store: StateStore | None,
    notify: Notify,
) -> DeployResult:
    """Version, build and serve a capture under the deployment's lock. A failure at any
    step leaves the deployment as it was (the previous version serving)."""
    from nbdeploy.service.package import deployment_name

    started = time.monotonic()
    name = deployment_name(options.name or captured.name)  # the function's, or the model's
    if options.workers < 1:
        raise DeployError("--workers must be at least 1")
    _check_host(options.host)
    deployments = DeploymentStore(store or default_store())
    with deployment_lock(name, notify):
        prepared = prepare_version(
            captured,
            name=name,
            options=options,
            reference=reference,
            source=dict(source or {}),
            deployments=deployments,
            notify=notify,
            history=history,
        )
        version = prepared.version
        registration = register_version(version) if options.mlflow and prepared.new else None
        current = deployments.find(name)
        if current is not None:
            current = deployments.reconcile(name)
        unchanged = (
            current is not None
            and current.status == SERVING
            and current.live_version == version.version
            and (options.port is None or options.port == current.port)
            and options.host == current.host
        )
        if unchanged:
            assert current is not None
            deployment = current
        else:
            deployment = switch_to(
                deployments, name, version, host=options.host, port=options.port, notify=notify
            )
    notices = list(prepared.notices)
    if options.mlflow and not unchanged:
        version = _record_in_registry(deployments, version, registration, notices, notify)
    return DeployResult(
        deployment,
        version,
        prepared.built,
        prepared.requirements,
        notices,
        time.monotonic() - started,
        prepared.example,
    )


def _record_in_registry(
    deployments: DeploymentStore,
    version: Version,
    registration: Any,
    notices: list[str],
    notify: Notify,
) -> Version:
    """Wait for the version's MLflow registration and point the alias ``live`` at it."""
    from nbdeploy.deployment.registry import REPLY_TIMEOUT_SECONDS, set_live

    try:
        if registration is not None:
            reply = registration.result(timeout=REPLY_TIMEOUT_SECONDS)
            if not reply.get("ok"):
                raise RuntimeError(reply.get("error"))
            deployments.set_mlflow_version(
                version.deployment, version.version, reply["model_version"]
            )
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


def _check_host(host: str) -> None:
    if host not in (LOOPBACK, "localhost", "::1") and not os.environ.get("NBDEPLOY_ALLOW_REMOTE"):
        raise DeployError(
            f"--host {host}: services listen on 127.0.0.1 unless you opt in",
            "set NBDEPLOY_ALLOW_REMOTE=1 to serve on other addresses (and put an "
            "authenticating proxy in front)",
        )


def _start(deployments: DeploymentStore, name: str, version: Version, host: str, port: int) -> Any:
    """Start a server for ``version``; a start that fails is recorded (its log is what
    ``nbdeploy logs`` shows) and re-raised."""
    from nbdeploy.deployment.serving import spawner
    from nbdeploy.service.builder import bentoml_environment

    folder = deployments_dir() / name
    log_path = folder / "logs" / f"v{version.version}-{time.time_ns()}.log"
    _drop_stale_metrics(folder, {Path(s.log_path).stem for s in deployments.active_servers(name)})
    spec = {
        "bento_tag": version.bento_tag,
        "host": host,
        "port": port,
        "workers": int(version.options.get("workers") or 1),
        "metrics_dir": str(folder / "metrics" / log_path.stem),
    }
    try:
        server = start_server(
            spawner(spec, folder, log_path),
            host=host,
            port=port,
            log_path=log_path,
            env={**os.environ, **bentoml_environment()},
            # Never the caller's folder: a version carries everything it runs.
            cwd=folder,
            timeout=READY_TIMEOUT_SECONDS,
            fail_markers=STARTUP_FAILURE_MARKERS,
        )
    except BaseException as error:
        failed = deployments.add_server(
            name,
            version.version,
            pid=0,
            start_ticks=None,
            host=host,
            port=port,
            log_path=str(log_path),
            role=FAILED_START,
            status=FAILED,
        )
        deployments.end_server(failed.id, FAILED, str(error) or type(error).__name__)
        raise
    return deployments.add_server(
        name,
        version.version,
        pid=server.pid,
        start_ticks=server.start_ticks,
        host=host,
        port=port,
        log_path=str(log_path),
        started_at=server.started_at,
    )


def _drop_stale_metrics(folder: Path, live: set[str]) -> None:
    """Prometheus files of servers that no longer run (each server has its own folder,
    named like its log)."""
    metrics = folder / "metrics"
    if metrics.is_dir():
        for stale in metrics.iterdir():
            if stale.name not in live:
                shutil.rmtree(stale, ignore_errors=True)


def _stop_all(deployments: DeploymentStore, name: str) -> None:
    for server in deployments.active_servers(name):
        if server.pid:
            stop_process(server.pid, server.start_ticks, marker=server.log_path)
        deployments.end_server(server.id, STOPPED)


def switch_to(
    deployments: DeploymentStore,
    name: str,
    version: Version,
    *,
    host: str = LOOPBACK,
    port: int | None = None,
    notify: Notify = _ignore,
) -> Deployment:
    """Recreate: stop what serves ``name``, start ``version`` on its port. When the new
    version does not start, or the deploy is interrupted, the previous live version is
    started again and the deployment's record is left as it was."""
    current = deployments.find(name)
    if current is None:
        current = deployments.ensure(name, host, port or free_port(host))
    target_port = port or current.port
    previous = deployments.version(name, current.live_version) if current.live_version else None
    was_serving = current.status == SERVING and bool(deployments.active_servers(name))
    _stop_all(deployments, name)
    notify(f"starting {name} v{version.version} on {host}:{target_port}")
    try:
        _start(deployments, name, version, host, target_port)
    except BaseException as error:
        interrupted = not isinstance(error, ServerStartError | OSError)
        reason = "the deploy was interrupted" if interrupted else str(error)
        restored = _restore(deployments, current, previous, was_serving, notify)
        if interrupted:
            raise
        if restored is not None:
            raise DeployError(
                f"{name} v{version.version} did not start; v{restored.live_version} is serving "
                f"again at {restored.url}. {reason}"
            ) from None
        raise DeployError(f"{name} v{version.version} did not start. {reason}") from None
    deployments.set_state(
        name, status=SERVING, live_version=version.version, host=host, port=target_port
    )
    return deployments.get(name)


def _restore(
    deployments: DeploymentStore,
    current: Deployment,
    previous: Version | None,
    was_serving: bool,
    notify: Notify,
) -> Deployment | None:
    """Put the deployment back as it was before a failed switch; the restarted deployment,
    or None when nothing was serving (or it could not start again)."""
    if previous is not None and was_serving:
        notify(f"starting v{previous.version} again")
        try:
            _start(deployments, current.name, previous, current.host, current.port)
        except (ServerStartError, OSError) as again:
            notify(f"restarting v{previous.version} failed too: {again}")
            deployments.set_state(current.name, status=FAILED, live_version=previous.version)
            return None
        deployments.set_state(current.name, status=SERVING, live_version=previous.version)
        return deployments.get(current.name)
    status = current.status if current.status != SERVING else FAILED
    deployments.set_state(current.name, status=status, live_version=current.live_version)
    return None


# -- the other verbs -------------------------------------------------------------------
def status(name: str | None = None, store: StateStore | None = None) -> list[Deployment]:
    """Deployments as they really are (dead servers are marked failed)."""
    deployments = DeploymentStore(store or default_store())
    names = [name] if name else [d.name for d in deployments.all()]
    return [deployments.reconcile(each) for each in names]


def stop(name: str, store: StateStore | None = None) -> Deployment:
    deployments = DeploymentStore(store or default_store())
    current = deployments.get(name)
    _stop_all(deployments, name)
    deployments.set_state(name, status=STOPPED, live_version=current.live_version)
    return deployments.get(name)


def logs(name: str, lines: int = 50, store: StateStore | None = None) -> list[str]:
    """The last lines of the deployment's current server log; after a start that failed (and
    the previous version was started again), that failed start's log first."""
    deployments = DeploymentStore(store or default_store())
    deployments.get(name)
    recent = deployments.recent_servers(name, 2)
    if not recent:
        return []
    newest = recent[0]
    failed = recent[1] if len(recent) > 1 and recent[1].role == FAILED_START else None
    if failed is None or newest.role == FAILED_START:
        return tail(Path(newest.log_path), lines)
    return [
        f"---- v{failed.version}: the start that failed ----",
        *tail(Path(failed.log_path), lines),
        f"---- v{newest.version}: serving now ----",
        *tail(Path(newest.log_path), lines),
    ]


def rollback(name: str, store: StateStore | None = None, notify: Notify = _ignore) -> Deployment:
    """Serve the version that was live before the current one (no rebuild)."""
    deployments = DeploymentStore(store or default_store())
    current = deployments.get(name)
    target = previous_version(deployments, name, current.live_version)
    if target is None:
        raise DeployError(f"{name} has no earlier version to roll back to")
    version = deployments.version(name, target)
    with deployment_lock(name, notify):
        deployment = switch_to(
            deployments, name, version, host=current.host, port=current.port, notify=notify
        )
    if version.mlflow_version:
        _record_in_registry(deployments, version, None, [], notify)
    return deployment


def previous_version(deployments: DeploymentStore, name: str, live: int | None) -> int | None:
    rows = (
        deployments.store.connection()
        .execute(
            "SELECT version FROM servers WHERE deployment = ? AND version != ? AND role != ? "
            "ORDER BY id DESC LIMIT 1",
            (name, live or -1, FAILED_START),
        )
        .fetchone()
    )
    if rows:
        return int(rows[0])
    earlier = [v.version for v in deployments.versions(name) if live is None or v.version < live]
    return max(earlier) if earlier else None


def versions_of(name: str, store: StateStore | None = None) -> list[Version]:
    deployments = DeploymentStore(store or default_store())
    deployments.get(name)
    return deployments.versions(name)


def show_code(name: str, version: int | None = None, store: StateStore | None = None) -> str:
    deployments = DeploymentStore(store or default_store())
    current = deployments.get(name)
    number = version or current.live_version
    if number is None:
        raise DeployError(f"{name} has no version yet")
    chosen = deployments.version(name, number)
    directory = Path(chosen.service_dir)
    files = [directory / "notebook_source.py", directory / "service.py"]
    local = directory / "local_modules"
    if local.is_dir():
        files += sorted(p for p in local.rglob("*.py") if "__pycache__" not in p.parts)
    parts = []
    for path in files:
        if not path.is_file():
            continue
        label = str(path.relative_to(directory))
        parts.append(f"# ---- {label} " + "-" * max(4, 80 - len(label)) + "\n")
        parts.append(path.read_text(encoding="utf-8"))
    return "".join(parts)


# -- from the MLflow registry (nbdeploy deploy --from-mlflow URI) ---------------------------
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

    from nbdeploy.service.package import deployment_name
    from nbdeploy.templating import render

    started = time.monotonic()
    _check_host(host)
    resolved, registered_name, columns, requirements = _resolve_mlflow_model(model_uri)
    name = deployment_name(name or registered_name)
    deployments = DeploymentStore(store or default_store())
    content = hashlib.sha256(f"{resolved}\n{columns}\n{workers}".encode()).hexdigest()
    model_tag = f"nbd-{name}-mlflow:{content[:16]}"
    code = render(
        "mlflow_service.py.j2",
        deployment=name,
        model_uri=resolved,
        columns=columns,
        service_name=f"nbd-{name}",
        workers=int(workers),
        timeout=60,
        model_tag=model_tag,
        max_batch_size=100,
        max_latency_ms=1000,
    )
    content = hashlib.sha256((content + code).encode()).hexdigest()
    version_dir = deployments_dir() / name / "versions" / content[:16]
    version_dir.mkdir(parents=True, exist_ok=True)
    (version_dir / "service.py").write_text(code, encoding="utf-8")
    (version_dir / "requirements.txt").write_text("".join(f"{r}\n" for r in requirements))
    schema = {
        "route": "/predict",
        "inputs": [{"name": "rows", "type": "list[Any]"}],
        "output": "list[Any]",
    }
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
    (version_dir / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    version = deployments.version_with_hash(name, content)
    built = False
    if version is None:
        notify(f"importing {resolved} and building {name}")
        bento_tag, built = build_bento(version_dir)
        if deployments.find(name) is None:  # created only once a version exists
            deployments.ensure(name, host, port or free_port(host))
        version = deployments.add_version(
            Version(
                deployment=name,
                version=0,
                content_hash=content,
                bento_tag=bento_tag,
                function="predict",
                service_dir=str(version_dir),
                created_at=time.time(),
                source={"mlflow_model_uri": resolved, "asked": model_uri},
                requirements=requirements,
                schema=schema,
                options={"workers": workers, "batch": True},
                mlflow_version=None,
            )
        )
    with deployment_lock(name, notify):
        deployment = switch_to(deployments, name, version, host=host, port=port, notify=notify)
    return DeployResult(deployment, version, built, requirements, [], time.monotonic() - started)


def _resolve_mlflow_model(model_uri: str) -> tuple[str, str, list[str], list[str]]:
    """(a URI that names one version, the model's name, input column names, requirements)."""
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
    columns = []
    if info.signature is not None and info.signature.inputs is not None:
        columns = [name for name in info.signature.inputs.input_names() if isinstance(name, str)]
    return resolved, model_name, columns, _mlflow_requirements(resolved)


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


# -- from a notebook file (nbdeploy deploy NOTEBOOK) --------------------------------------
RESULT_MARKER = "NBDEPLOY_RESULT "


def serve_function_name(notebook: Any) -> str:
    """The entry function: the last ``def`` in the cell tagged ``nbdeploy:serve``, else
    ``predict``."""
    import ast

    from nbdeploy.notebook.reader import SERVE_TAG, cell_source

    for index in reversed(notebook.tagged(SERVE_TAG)):
        try:
            tree = ast.parse(cell_source(notebook.cells[index]))
        except SyntaxError:
            continue
        names = [n.name for n in tree.body if isinstance(n, ast.FunctionDef)]
        if names:
            return names[-1]
    return "predict"


def deploy_notebook(
    notebook_path: str | Path,
    *,
    function: str | None = None,
    model: str | None = None,
    options: DeployOptions | None = None,
    values: Mapping[str, Any] | None = None,
    text_values: Mapping[str, str] | None = None,
    kernel: str | None = None,
    timeout: float | None = None,
    progress: Any = None,
    notify: Notify = _ignore,
    warn: Notify = _ignore,
) -> tuple[Any, dict[str, Any]]:
    """Run the notebook as a pipeline run, then deploy its function (or, with ``model``, the
    fitted model in that variable) from that kernel. Returns (run outcome, deploy result as
    a dict); raises DeployError when either fails."""
    from dataclasses import asdict

    from nbdeploy.pipeline.runner import execute_run, prepare_run

    options = options or DeployOptions()
    prepared = prepare_run(notebook_path, values, text_values, kernel=kernel)
    chosen = model or function or serve_function_name(prepared.notebook)
    if not chosen.isidentifier():
        flag = "--object" if model else "--function"
        raise DeployError(f"{flag} {chosen!r} is not a Python name")
    arguments = {
        "target": chosen,
        "model": bool(model),
        "options": asdict(options),
        "notebook": str(prepared.notebook.path),
    }
    epilogue = (
        "import json as _nbdeploy_json\n"
        "import nbdeploy.deployment.core as _nbdeploy_core\n"
        "_nbdeploy_core.deploy_in_kernel(\n"
        f"    globals(), _nbdeploy_json.loads({json.dumps(arguments)!r})\n"
        ")\n"
    )
    outcome = execute_run(
        prepared,
        timeout=timeout,
        progress=progress,
        track_mlflow=options.mlflow,
        notify=notify,
        warn=warn,
        epilogue=epilogue,
    )
    if not outcome.ok:
        raise DeployError(f"{outcome.message} (run {outcome.record.id})")
    for line in (outcome.epilogue_output or "").splitlines():
        if line.startswith("nbdeploy: "):
            notify(line[len("nbdeploy: ") :])
        if line.startswith(RESULT_MARKER):
            result: dict[str, Any] = json.loads(line[len(RESULT_MARKER) :])
            result["run_id"] = outcome.record.id
            return outcome, result
    raise DeployError(
        f"the notebook ran, but the deploy step printed no result (run {outcome.record.id})"
    )


def deploy_in_kernel(namespace: dict[str, Any], arguments: dict[str, Any]) -> None:
    """Run inside the notebook's kernel by ``nbdeploy deploy``: deploy and print the result."""
    target = arguments["target"]
    notebook = Path(arguments["notebook"]).name
    value = namespace.get(target)
    options = DeployOptions(**arguments["options"])
    source = {"notebook": arguments["notebook"], "run_id": os.environ.get("NBDEPLOY_RUN_ID")}
    say: Notify = lambda message: print(f"nbdeploy: {message}", flush=True)  # noqa: E731
    if arguments.get("model"):
        if value is None:
            raise DeployError(f"{notebook} defines no variable {target!r}")
        result = deploy_model(
            value,
            variable=target,
            namespace=namespace,
            history=list(namespace.get("In", [])),
            options=options,
            source=source,
            notify=say,
        )
    else:
        if value is None or not callable(value):
            raise DeployError(
                f"{notebook} defines no function {target!r}",
                "tag the cell that defines the entry function with nbdeploy:serve, pass "
                "--function, or deploy a fitted model with --object VARIABLE",
            )
        result = deploy_function(
            value,
            namespace=namespace,
            history=list(namespace.get("In", [])),
            options=options,
            source=source,
            notify=say,
        )
    print(RESULT_MARKER + json.dumps(result.to_dict(), default=str), flush=True)
