"""Deploy notebook functions as local services: the core behind ``%deploy``, ``nbdeploy
deploy`` and ``nbdeploy.deploy``.

A deploy captures the function, packages it (content-addressed), builds a bento in a
separate process (reused when the content is unchanged), records a version, and switches
the deployment's address to it. The strategy here is *recreate*: the old server stops and
the new one starts on the deployment's port; if the new one does not become ready, the old
version is started again and the error says why.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nbdeploy import config
from nbdeploy.deploy.registry import register_version
from nbdeploy.deploy.store import (
    FAILED,
    SERVING,
    STOPPED,
    Deployment,
    DeploymentStore,
    Version,
)
from nbdeploy.deploy.supervisor import (
    LOOPBACK,
    ServerStartError,
    free_port,
    start_server,
    stop_process,
    tail,
)
from nbdeploy.errors import NbdeployError
from nbdeploy.store import StateStore, default_store

Notify = Callable[[str], None]
BUILD_TIMEOUT_SECONDS = 600
PROBE_TIMEOUT_SECONDS = 120
READY_TIMEOUT_SECONDS = 120
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

    @property
    def url(self) -> str:
        return self.deployment.url

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.deployment.name,
            "version": self.version.version,
            "url": self.url,
            "endpoint": self.url + self.version.schema.get("route", "/"),
            "inputs": self.version.schema.get("inputs", []),
            "status": self.deployment.status,
            "bento": self.version.bento_tag,
            "built": self.built,
            "requirements": self.requirements,
            "notices": self.notices,
            "seconds": round(self.seconds, 2),
        }


def _ignore(message: str) -> None:
    pass


def deployments_dir() -> Path:
    path = config.home() / "deployments"
    path.mkdir(parents=True, exist_ok=True)
    return path


def deploy_function(
    function: Any,
    *,
    name: str | None = None,
    namespace: Mapping[str, Any] | None = None,
    history: Iterable[str] = (),
    host: str = LOOPBACK,
    port: int | None = None,
    workers: int = 1,
    batch: bool | None = None,
    reference: str | None = None,
    requirements: Iterable[str] = (),
    source: Mapping[str, Any] | None = None,
    store: StateStore | None = None,
    notify: Notify = _ignore,
    track_mlflow: bool = True,
) -> DeployResult:
    """Deploy ``function`` (defined in a notebook) as the service ``name``."""
    from nbdeploy.service.capture import capture_function
    from nbdeploy.service.package import (
        ServiceOptions,
        deployment_name,
        package_service,
        set_requirements,
    )
    from nbdeploy.service.requirements import notebook_pip_installs, pin_requirements

    started = time.monotonic()
    deployments = DeploymentStore(store or default_store())
    name = deployment_name(name or str(getattr(function, "__name__", "service")))
    if workers < 1:
        raise DeployError("--workers must be at least 1")
    _check_host(host)
    cells = list(history)
    scope = namespace if namespace is not None else getattr(function, "__globals__", {})
    captured = capture_function(function, scope, cells)
    notices: list[str] = []
    reference_value = None
    if reference:
        if reference not in scope:
            raise DeployError(
                f"--reference {reference!r}: no such variable in the notebook",
                "name the variable that holds the training inputs (a DataFrame or array)",
            )
        reference_value = scope[reference]
    modules = set(captured.modules)
    if any(_needs_joblib(value) for value in captured.objects.values()):
        modules.add("joblib")
    pinned = pin_requirements(modules, requirements)
    for module in pinned.unresolved:
        notices.append(
            f"module {module!r} is not from an installed distribution: the service will not have it"
        )
    for line in notebook_pip_installs(cells):
        notices.append(
            f"the notebook ran `{line}`: its packages are included only if the function uses them"
        )
    for notice in notices:
        notify(notice)
    notify("requirements: " + (", ".join(pinned.pinned) or "none"))
    # Only stable facts go into the generated code: the run id would change the content hash
    # (and force a rebuild) on every run; it is kept in the version record instead.
    label = str((source or {}).get("notebook") or "an interactive session")
    staging = deployments_dir() / name / f".staging-{os.getpid()}-{time.monotonic_ns()}"
    try:
        packaged = package_service(
            captured,
            ServiceOptions(name=name, workers=workers, batch=batch),
            pinned,
            staging,
            label,
        )
        example = _example_input(packaged.schema, reference_value)
        if example is not None or _probe_cache(name, packaged).exists():
            extra = probe_imports(name, packaged, example, notify)
            if extra:
                merged = pin_requirements(modules | set(extra), requirements)
                if merged.pinned != packaged.requirements:
                    added = sorted(set(merged.pinned) - set(packaged.requirements))
                    notify("imported when called (added): " + ", ".join(added))
                    set_requirements(packaged, merged.pinned)
                    pinned = merged
        version_dir = deployments_dir() / name / "versions" / packaged.content_hash[:16]
        if version_dir.exists():
            shutil.rmtree(staging)
        else:
            version_dir.parent.mkdir(parents=True, exist_ok=True)
            staging.rename(version_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    reference_path = None
    if reference_value is not None:
        import joblib

        reference_path = str(version_dir / "reference.joblib")
        joblib.dump(reference_value, reference_path)
    if deployments.find(name) is None:
        deployments.ensure(name, host, port or free_port(host))
    existing = deployments.version_with_hash(name, packaged.content_hash)
    built = False
    if existing is None:
        notify(f"building {name} (offline, pinned requirements)")
        bento_tag, built = build_bento(version_dir)
        version = deployments.add_version(
            Version(
                deployment=name,
                version=0,
                content_hash=packaged.content_hash,
                bento_tag=bento_tag,
                function=captured.name,
                service_dir=str(version_dir),
                created_at=time.time(),
                source=dict(source or {}),
                requirements=pinned.pinned,
                schema=packaged.schema,
                options={"workers": workers, "batch": packaged.batch},
                reference_path=reference_path,
            )
        )
        registration = register_version(version) if track_mlflow else None
    else:
        version = existing
        registration = None
        notify(f"unchanged since version {version.version}: reusing its build")
    current = deployments.find(name)
    if current is not None:
        current = deployments.reconcile(name)
    if (
        current is not None
        and current.status == SERVING
        and current.live_version == version.version
        and (port is None or port == current.port)
        and host == current.host
    ):
        return DeployResult(
            current, version, built, pinned.pinned, notices, time.monotonic() - started
        )
    deployment = switch_to(deployments, name, version, host=host, port=port, notify=notify)
    if track_mlflow:
        version = _record_in_registry(deployments, version, registration, notices, notify)
    return DeployResult(
        deployment, version, built, pinned.pinned, notices, time.monotonic() - started
    )


def _record_in_registry(
    deployments: DeploymentStore,
    version: Version,
    registration: Any,
    notices: list[str],
    notify: Notify,
) -> Version:
    """Wait for the version's MLflow registration and point the alias ``live`` at it."""
    from nbdeploy.deploy.registry import REPLY_TIMEOUT_SECONDS, set_live

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


def _example_input(schema: dict[str, Any], reference: Any) -> dict[str, Any] | None:
    """An example call built from the reference data (first row), for one-input functions."""
    from nbdeploy.deploy.report import example_rows

    inputs = schema.get("inputs", [])
    if reference is None or len(inputs) != 1:
        return None
    rows = example_rows(reference)
    return {inputs[0]["name"]: rows} if rows is not None else None


def _probe_cache(name: str, packaged: Any) -> Path:
    return deployments_dir() / name / "probes" / f"{packaged.code_hash[:16]}.json"


def probe_imports(
    name: str, packaged: Any, example: dict[str, Any] | None, notify: Notify
) -> list[str]:
    """Call the packaged function on ``example`` in a fresh interpreter; return the modules it
    imported. Cached by the code's hash: an unchanged redeploy (with or without an example)
    reuses the answer."""
    cache = _probe_cache(name, packaged)
    if cache.exists() or example is None:
        result = json.loads(cache.read_text(encoding="utf-8")) if cache.exists() else {}
    else:
        (packaged.directory / "example.json").write_text(json.dumps(example, default=str))
        try:
            completed = subprocess.run(
                [sys.executable, "-m", "nbdeploy.service.probe", str(packaged.directory)],
                capture_output=True,
                text=True,
                timeout=PROBE_TIMEOUT_SECONDS,
                check=False,
            )
            result = json.loads(completed.stdout.strip().splitlines()[-1])
        except (subprocess.TimeoutExpired, IndexError, json.JSONDecodeError) as error:
            notify(f"could not check the function's imports with an example call: {error}")
            return []
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(result))
    if result.get("error"):
        notify(f"the example call fails in a fresh interpreter: {result['error']}")
    return list(result.get("modules", []))


def _needs_joblib(value: Any) -> bool:
    from nbdeploy.service.package import object_kind

    return object_kind(value) == "generic"


def _check_host(host: str) -> None:
    if host not in (LOOPBACK, "localhost", "::1") and not os.environ.get("NBDEPLOY_ALLOW_REMOTE"):
        raise DeployError(
            f"--host {host}: services listen on 127.0.0.1 unless you opt in",
            "set NBDEPLOY_ALLOW_REMOTE=1 to serve on other addresses (and put an "
            "authenticating proxy in front)",
        )


def build_bento(version_dir: Path) -> tuple[str, bool]:
    """Build (or reuse) the bento of a packaged version in a separate process."""
    from nbdeploy.service.builder import bentoml_environment

    env = {
        **os.environ,
        **bentoml_environment(),
        config.MLFLOW_URI_ENV: config.mlflow_tracking_uri(),
    }
    try:
        completed = subprocess.run(
            [sys.executable, "-m", "nbdeploy.service.builder", str(version_dir)],
            capture_output=True,
            text=True,
            env=env,
            timeout=BUILD_TIMEOUT_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise DeployError(
            f"building the service took longer than {BUILD_TIMEOUT_SECONDS} s"
        ) from None
    lines = completed.stdout.strip().splitlines()
    try:
        result = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        raise DeployError(
            "building the service failed:\n"
            + "\n".join(completed.stderr.strip().splitlines()[-15:])
        ) from None
    if not result.get("ok"):
        detail = "\n".join(completed.stderr.strip().splitlines()[-10:])
        raise DeployError(f"building the service failed: {result.get('error')}\n{detail}".rstrip())
    return str(result["bento_tag"]), not result.get("reused", False)


def server_command(bento_tag: str, host: str, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "bentoml",
        "serve",
        bento_tag,
        "--host",
        host,
        "--port",
        str(port),
    ]


def _start(deployments: DeploymentStore, name: str, version: Version, host: str, port: int) -> Any:
    from nbdeploy.service.builder import bentoml_environment

    log_path = deployments_dir() / name / "logs" / f"v{version.version}-{int(time.time())}.log"
    server = start_server(
        server_command(version.bento_tag, host, port),
        host=host,
        port=port,
        log_path=log_path,
        env={**os.environ, **bentoml_environment()},
        timeout=READY_TIMEOUT_SECONDS,
        fail_markers=STARTUP_FAILURE_MARKERS,
    )
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
    """Recreate: stop what serves ``name``, start ``version`` on its port; on failure start
    the previous live version again and raise DeployError."""
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
    except (ServerStartError, OSError) as error:
        reason = str(error)
        if previous is not None and was_serving:
            try:
                _start(deployments, name, previous, current.host, current.port)
                deployments.set_state(name, status=SERVING, live_version=previous.version)
                raise DeployError(
                    f"{name} v{version.version} did not start; v{previous.version} is serving "
                    f"again at {current.url}. {reason}"
                ) from None
            except ServerStartError as again:
                reason += f"\nrestarting v{previous.version} failed too: {again}"
        deployments.set_state(name, status=FAILED, live_version=current.live_version)
        raise DeployError(f"{name} v{version.version} did not start. {reason}") from None
    deployments.set_state(
        name, status=SERVING, live_version=version.version, host=host, port=target_port
    )
    return deployments.get(name)


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
    deployments = DeploymentStore(store or default_store())
    deployments.get(name)
    server = deployments.last_server(name)
    return tail(Path(server.log_path), lines) if server else []


def rollback(name: str, store: StateStore | None = None, notify: Notify = _ignore) -> Deployment:
    """Serve the version that was live before the current one (no rebuild)."""
    deployments = DeploymentStore(store or default_store())
    current = deployments.get(name)
    target = previous_version(deployments, name, current.live_version)
    if target is None:
        raise DeployError(f"{name} has no earlier version to roll back to")
    version = deployments.version(name, target)
    deployment = switch_to(deployments, name, version, notify=notify)
    if version.mlflow_version:
        _record_in_registry(deployments, version, None, [], notify)
    return deployment


def previous_version(deployments: DeploymentStore, name: str, live: int | None) -> int | None:
    rows = (
        deployments.store.connection()
        .execute(
            "SELECT version FROM servers WHERE deployment = ? AND version != ? "
            "ORDER BY id DESC LIMIT 1",
            (name, live or -1),
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
    parts = []
    for file_name in ("nbdeploy_function.py", "service.py"):
        path = Path(chosen.service_dir) / file_name
        parts.append(f"# ---- {file_name} " + "-" * (80 - len(file_name)) + "\n")
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
    if deployments.find(name) is None:
        deployments.ensure(name, host, port or free_port(host))
    version = deployments.version_with_hash(name, content)
    built = False
    if version is None:
        notify(f"importing {resolved} and building {name}")
        bento_tag, built = build_bento(version_dir)
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
    name: str | None = None,
    values: Mapping[str, Any] | None = None,
    text_values: Mapping[str, str] | None = None,
    reference: str | None = None,
    kernel: str | None = None,
    timeout: float | None = None,
    track_mlflow: bool = True,
    progress: Any = None,
    notify: Notify = _ignore,
    warn: Notify = _ignore,
) -> tuple[Any, dict[str, Any]]:
    """Run the notebook as a pipeline run, then deploy its function from that kernel.
    Returns (run outcome, deploy result as a dict); raises DeployError when either fails."""
    from nbdeploy.pipeline.runner import execute_run, prepare_run

    prepared = prepare_run(notebook_path, values, text_values, kernel=kernel)
    chosen = function or serve_function_name(prepared.notebook)
    if not chosen.isidentifier():
        raise DeployError(f"--function {chosen!r} is not a Python name")
    arguments = {
        "function": chosen,
        "name": name,
        "reference": reference,
        "notebook": str(prepared.notebook.path),
    }
    epilogue = (
        "import json as _nbdeploy_json\n"
        "import nbdeploy.deploy.core as _nbdeploy_core\n"
        "_nbdeploy_core.deploy_in_kernel(\n"
        f"    globals(), _nbdeploy_json.loads({json.dumps(arguments)!r})\n"
        ")\n"
    )
    outcome = execute_run(
        prepared,
        timeout=timeout,
        progress=progress,
        track_mlflow=track_mlflow,
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
    function_name = arguments["function"]
    function = namespace.get(function_name)
    if function is None or not callable(function):
        raise DeployError(
            f"{Path(arguments['notebook']).name} defines no function {function_name!r}",
            "tag the cell that defines the entry function with nbdeploy:serve, or pass --function",
        )
    result = deploy_function(
        function,
        name=arguments.get("name"),
        namespace=namespace,
        history=list(namespace.get("In", [])),
        reference=arguments.get("reference"),
        source={"notebook": arguments["notebook"], "run_id": os.environ.get("NBDEPLOY_RUN_ID")},
        notify=lambda message: print(f"nbdeploy: {message}", flush=True),
    )
    data = result.to_dict()
    if arguments.get("reference"):
        from nbdeploy.deploy.report import example_rows

        rows = example_rows(namespace.get(arguments["reference"]))
        inputs = result.version.schema.get("inputs", [])
        if rows is not None and len(inputs) == 1:
            data["example"] = {inputs[0]["name"]: rows}
    print(RESULT_MARKER + json.dumps(data, default=str), flush=True)
