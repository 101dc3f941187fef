"""What the REST handlers call: the core's functions (``nbdeploy.api``,
``nbdeploy.deployment.verbs``), with results as the CLI's ``--json`` prints them.

Everything here runs in a worker thread (never on the server's event loop) and imports
the core lazily, so loading the extension costs nothing at server start.
"""

from __future__ import annotations

import ast
import json
import logging
import math
import re
import threading
import time
from pathlib import Path
from typing import Any

from nbdeploy.errors import NbdeployError
from nbdeploy.monitor.metrics import DEFAULT_WINDOW
from nbdeploy.server.errors import ApiError, from_nbdeploy_error
from nbdeploy.server.models import DeployBody, RunBody
from nbdeploy.server.operations import Operation, OperationFailed, OperationProgress

log = logging.getLogger("nbdeploy.server")

SUMMARY_WINDOW = DEFAULT_WINDOW
SUMMARY_REFRESH_SECONDS = 5.0
VERSION_KEYS = ("version", "created_at", "function", "requirements", "bento_tag", "source")


# -- deployments -------------------------------------------------------------------------
LIST_SECONDS = 2.0  # a list is reused this long while the state store has not changed
_listed: dict[str, tuple[float, tuple[int, ...], list[dict[str, Any]]]] = {}
_listed_lock = threading.Lock()


def deployments() -> list[dict[str, Any]]:
    """``GET deployments``: every deployment as it really is, with a traffic summary.

    The sidebar polls it every few seconds while deploys run beside the server on a small
    machine: the same list is answered again while the state store is unchanged (its
    files' sizes and times) and for at most LIST_SECONDS, after which servers are checked
    for being alive again."""
    from nbdeploy import api, config

    path = config.state_db_path()
    stamp = _file_stamp(path) + _file_stamp(Path(f"{path}-wal"))
    with _listed_lock:
        known = _listed.get(str(path))
    if known is not None and known[1] == stamp and time.monotonic() - known[0] < LIST_SECONDS:
        return known[2]
    listed = [deployment_dict(each) for each in api.status()]
    with _listed_lock:
        _listed[str(path)] = (
            time.monotonic(),
            _file_stamp(path) + _file_stamp(Path(f"{path}-wal")),
            listed,
        )
    return listed


def _file_stamp(path: Path) -> tuple[int, ...]:
    try:
        info = path.stat()
    except OSError:
        return (0, 0)
    return (info.st_mtime_ns, info.st_size)


def deployment(name: str) -> dict[str, Any]:
    """``GET deployments/NAME``: the deployment, its versions and its rollout state."""
    from nbdeploy import api
    from nbdeploy.deployment.verbs import versions_of

    [current] = api.status(name)
    data = deployment_dict(current)
    data["versions"] = [
        {key: version.to_dict()[key] for key in VERSION_KEYS} for version in versions_of(name)
    ]
    try:
        data["rollout"] = api.rollout_state(name)
    except NbdeployError:
        data["rollout"] = None
    data["rollback_to"] = _rollback_target(name, current.live_version)
    return data


def _rollback_target(name: str, live: int | None) -> int | None:
    """The version ``nbdeploy rollback NAME`` would serve (the one before the live one)."""
    from nbdeploy.deployment.store import DeploymentStore
    from nbdeploy.deployment.traffic.rollouts import previous_version
    from nbdeploy.store import default_store

    return previous_version(DeploymentStore(default_store()), name, live)


def deployment_dict(current: Any) -> dict[str, Any]:
    """A deployment as the API shows it (``Deployment.to_dict`` plus traffic, summary and
    what its latest rollout's canary did)."""
    from nbdeploy.deployment.verbs import rollout_notice

    folder = _folder(current.name)
    return {
        "name": current.name,
        "status": current.status,
        "live_version": current.live_version,
        "url": current.url,
        "strategy": current.strategy,
        "traffic": _traffic_text(current.name, folder),
        "updated_at": current.updated_at,
        "servers": [server.to_dict() for server in current.servers],
        "summary": summary(current.name, folder),
        "notice": rollout_notice(current.name),
    }


def _folder(name: str) -> Path:
    """``traffic.folder(name)``, without resolving NBDEPLOY_HOME once per deployment (a
    list of hundreds of deployments spent most of its time there)."""
    import os

    from nbdeploy.deployment import traffic

    home = os.environ.get("NBDEPLOY_HOME", "")
    base = _bases.get(home)
    if base is None:
        base = _bases[home] = traffic.folder(name).parent
    return base / name


_bases: dict[str, Path] = {}
_splits: dict[str, tuple[tuple[int, int], str]] = {}


def _traffic_text(name: str, folder: Path) -> str:
    """``traffic.describe_split(name)`` (as ``nbdeploy status`` shows it), read again only
    when the router's configuration file changed."""
    from nbdeploy.deployment import traffic
    from nbdeploy.deployment.traffic.router import CONFIG

    try:
        info = (folder / CONFIG).stat()
    except OSError:
        return traffic.describe_split(name) if folder.is_dir() else "-"
    stamp = (info.st_mtime_ns, info.st_size)
    known = _splits.get(str(folder))
    if known is not None and known[0] == stamp:
        return known[1]
    text = traffic.describe_split(name)
    _splits[str(folder)] = (stamp, text)
    return text


_summaries: dict[str, tuple[float, dict[str, Any] | None]] = {}
_refreshing: set[str] = set()
_summary_lock = threading.Lock()


def summary(name: str, folder: Path | None = None) -> dict[str, Any] | None:
    """Requests per second, p99 latency, error rate and requests over the last five minutes,
    from ``nbdeploy metrics`` (None for a deployment that never logged a request).

    Kept for a few seconds; an older one is answered at once and refreshed in the
    background, so that listing many deployments stays fast."""
    from nbdeploy.deployment.traffic.strategies import REQUESTS_DIR

    cached = _summaries.get(name)
    if cached is None:
        directory = (folder or _folder(name)) / REQUESTS_DIR
        if not directory.is_dir() or not any(directory.iterdir()):
            return None
    if cached is None or time.monotonic() - cached[0] > SUMMARY_REFRESH_SECONDS:
        # Computed in the background, never while a request waits: the first list after a
        # deployment's first request shows no summary yet, the next one (a few seconds
        # later, as the sidebar polls) does.
        with _summary_lock:
            start = name not in _refreshing
            _refreshing.add(name)
        if start:
            threading.Thread(target=_refresh_summary, args=(name,), daemon=True).start()
    return cached[1] if cached is not None else None


def _refresh_summary(name: str) -> None:
    try:
        _compute_summary(name)
    finally:
        with _summary_lock:
            _refreshing.discard(name)


def _compute_summary(name: str) -> dict[str, Any] | None:
    from nbdeploy import api

    try:
        data = api.metrics(name, SUMMARY_WINDOW)
    except NbdeployError:
        result = None
    else:
        rate = data.get("requests_per_second")
        result = {
            "requests_per_s": round(rate, 3) if rate is not None else None,
            "p99_ms": (data.get("latency") or {}).get("p99"),
            "error_rate": data.get("error_rate"),
            "requests": data.get("requests"),
            "window": SUMMARY_WINDOW,
        }
    _summaries[name] = (time.monotonic(), result)
    return result


def stop(name: str) -> dict[str, Any]:
    from nbdeploy import api

    return deployment_dict(api.stop(name))


def rollback(name: str, to: int | None = None) -> dict[str, Any]:
    from nbdeploy import api

    return deployment_dict(api.rollback(name, to=to))


def promote(name: str) -> dict[str, Any]:
    from nbdeploy import api

    return deployment_dict(api.promote(name))


def weights(name: str, split: dict[str, float]) -> dict[str, Any]:
    from nbdeploy import api

    return deployment_dict(api.weights(name, split))


def metrics(name: str, window: str) -> dict[str, Any]:
    """What ``nbdeploy metrics NAME --window W --json`` prints."""
    from nbdeploy import api

    try:
        data: dict[str, Any] = json.loads(json.dumps(api.metrics(name, window), default=str))
    except NbdeployError as error:
        kind = type(error).__name__
        if kind in ("MetricsError", "DeploymentNotFoundError"):  # what the request asked
            raise from_nbdeploy_error(error, "window" if kind == "MetricsError" else None) from None
        raise _unreadable(name, error.message, error.hint) from None
    except Exception as error:  # the server's failure, never the client's: a 5xx
        log.exception("metrics of %s", name)
        raise _unreadable(name, f"{type(error).__name__}: {error}", None) from None
    return _finite(data)


def _unreadable(name: str, reason: str, hint: str | None) -> ApiError:
    return ApiError(
        500,
        f"the metrics of {name} could not be read: {reason}",
        None,
        hint or "nbdeploy metrics NAME in a terminal shows the same; the server's log has more",
    )


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: they become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


# -- notebooks ---------------------------------------------------------------------------
def notebook_params(path: Path, shown: str) -> dict[str, Any]:
    """``GET notebooks/params``: typed parameters, the functions a deploy could serve, and
    the variables that could be its reference (the training inputs)."""
    from nbdeploy import api
    from nbdeploy.notebook.reader import read_notebook

    notebook = read_notebook(path)
    return {
        "path": shown,
        "parameters": [parameter.to_dict() for parameter in api.params(path)],
        "functions": notebook_functions(notebook),
        "references": reference_candidates(notebook),
    }


def _code_trees(notebook: Any, parameters: bool = True) -> list[ast.Module]:
    """The parsed code cells (not those tagged ``nbdeploy:skip``, nor the parameters cell
    unless ``parameters``; magics and shell lines blanked; a cell that does not parse left
    out)."""
    from nbdeploy.notebook.reader import PARAMETERS_TAG, SKIP_TAG, cell_source, cell_tags

    trees = []
    for cell in notebook.cells:
        if cell.get("cell_type") != "code" or SKIP_TAG in cell_tags(cell):
            continue
        if not parameters and PARAMETERS_TAG in cell_tags(cell):
            continue
        source = "\n".join(
            "" if line.lstrip().startswith(("%", "!")) else line
            for line in cell_source(cell).splitlines()
        )
        try:
            trees.append(ast.parse(source))
        except SyntaxError:
            continue
    return trees


def notebook_functions(notebook: Any) -> list[str]:
    """Top-level functions defined in the notebook's code cells (not those tagged
    ``nbdeploy:skip``), the entry function a deploy picks by default first."""
    from nbdeploy.deployment.verbs import serve_function_name

    names: list[str] = []
    for tree in _code_trees(notebook):
        for node in tree.body:
            if (
                isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                and node.name not in names
                and not node.name.startswith("_")
            ):
                names.append(node.name)
    entry = serve_function_name(notebook)
    if entry in names:
        names.remove(entry)
        names.insert(0, entry)
    return names


_TRAINING_NAME = re.compile(r"(^x(_|$)|train|features?$|^df$|frame)", re.IGNORECASE)


def reference_candidates(notebook: Any) -> list[str]:
    """Top-level names the notebook assigns (``X_train, X_test, ... = ...`` included) that
    could hold its training inputs, the likeliest first (X_train, features, ...). What they
    hold is checked when the deploy runs: a DataFrame or an array."""
    names: list[str] = []
    for tree in _code_trees(notebook, parameters=False):
        for node in tree.body:
            targets = node.targets if isinstance(node, ast.Assign) else []
            if isinstance(node, ast.AnnAssign):
                targets = [node.target]
            for target in targets:
                for name in ast.walk(target):
                    if (
                        isinstance(name, ast.Name)
                        and not name.id.startswith("_")
                        and name.id not in names
                    ):
                        names.append(name.id)

    def rank(name: str) -> int:
        if name.lower().startswith("y"):
            return 3  # labels
        if "train" in name.lower():
            return 0
        return 1 if _TRAINING_NAME.search(name) else 2

    return sorted(names, key=rank)  # stable: in the notebook's order within a rank


# -- deploys -----------------------------------------------------------------------------
def check_deploy(path: Path, body: DeployBody) -> str:
    """Check a deploy request before it starts (the notebook, its parameters, the name, and
    that the name is not served from another notebook unless ``replace``: a 409 the sidebar
    asks about); returns the deployment's name."""
    from nbdeploy.deployment.verbs import serve_function_name
    from nbdeploy.pipeline.runner import prepare_run
    from nbdeploy.service.package import deployment_name

    try:
        prepared = prepare_run(path, body.parameters)
    except NbdeployError as error:
        field = "parameters" if type(error).__name__ == "ParameterError" else "path"
        raise from_nbdeploy_error(error, field) from None
    name = body.name
    if not name:
        function = body.function or serve_function_name(prepared.notebook)
        try:
            name = deployment_name(function)
        except NbdeployError as error:
            raise ApiError(
                422, error.message, "name", "give the deployment a name (1-40 of a-z, 0-9, -)"
            ) from None
    if not body.replace:
        from nbdeploy.deployment.store import DeploymentStore
        from nbdeploy.deployment.verbs import check_owner
        from nbdeploy.store import default_store

        try:
            check_owner(DeploymentStore(default_store()), name, {"notebook": str(path)})
        except NbdeployError as error:
            raise ApiError(409, error.message, "replace", error.hint) from None
    return name


def deploy(path: Path, body: DeployBody, name: str, operation: Operation) -> dict[str, Any]:
    """Run the notebook, then deploy its function from that kernel (``nbdeploy deploy``)."""
    from nbdeploy.deployment.options import DeployOptions
    from nbdeploy.deployment.verbs import deploy_notebook

    options = DeployOptions(
        name=name, mlflow=body.mlflow, replace=body.replace, reference=body.reference
    )
    if body.strategy:
        options.strategy = body.strategy
    _, result = deploy_notebook(
        path,
        function=body.function,
        options=options,
        values=body.parameters,
        progress=OperationProgress(operation),
        notify=operation.say,
        warn=operation.warn,
    )
    return dict(json.loads(json.dumps(result, default=str)))


# -- runs --------------------------------------------------------------------------------
def check_run(path: Path, body: RunBody, root: Path) -> None:
    """Check a run request before it starts: parameters of a notebook, the steps of a
    pipeline (whose notebooks and outputs must stay inside the server's root)."""
    from nbdeploy.pipeline.runner import prepare_run

    try:
        if path.suffix == ".ipynb":
            prepared = prepare_run(path, body.parameters)
            declared = {parameter.name for parameter in prepared.declared}
            unknown = sorted(set(body.sweep or {}) - declared)
            if unknown:
                raise ApiError(
                    422,
                    f"{path.name} declares no parameter {', '.join(unknown)}",
                    "sweep",
                    "declared: " + (", ".join(sorted(declared)) or "none"),
                )
            return
        if body.sweep:
            raise ApiError(422, "a sweep applies to a notebook, not to a pipeline.yaml", "sweep")
        from nbdeploy.pipeline.dag import load_pipeline

        pipeline = load_pipeline(path)
    except NbdeployError as error:
        field = "parameters" if type(error).__name__ == "ParameterError" else "path"
        raise from_nbdeploy_error(error, field) from None
    for step in pipeline.steps:
        for target in [step.notebook, *step.outputs.values()]:
            if not Path(target).resolve().is_relative_to(root):
                raise ApiError(
                    400,
                    f"{path.name}, step {step.name!r}: {target} is outside the server's root",
                    "path",
                )


def run(path: Path, body: RunBody, operation: Operation) -> dict[str, Any]:
    """Run a notebook (once or as a sweep) or a pipeline.yaml, as ``nbdeploy run --json``."""
    from nbdeploy import api
    from nbdeploy.pipeline import summary as summaries
    from nbdeploy.pipeline.progress import NullProgress

    sweep = [f"{name}={json.dumps(values)}" for name, values in (body.sweep or {}).items()]
    single = path.suffix == ".ipynb" and not sweep
    if sweep:
        operation.steps = math.prod(len(values) for values in (body.sweep or {}).values())

    def on_done(*event: Any) -> None:
        operation.say(summaries.event_line(*event))
        if not single:
            operation.step += 1

    result = api.run(
        path,
        body.parameters,
        sweep=sweep,
        mlflow=body.mlflow,
        progress=OperationProgress(operation) if single else NullProgress(),
        progress_for=lambda *key: NullProgress(),
        on_done=on_done,
        notify=operation.say,
        warn=operation.warn,
    )
    data = _finite(json.loads(json.dumps(result.to_dict(), default=str)))
    if not result.ok:
        message = getattr(result, "message", None) or f"{path.name}: not every run succeeded"
        raise OperationFailed(data, message)
    return dict(data)


def runs(limit: int) -> list[dict[str, Any]]:
    from nbdeploy import api

    return [_finite(record.to_dict()) for record in api.runs(limit=limit)]


OUTPUT_THEMES = ("light", "dark")


def run_output_html(run_id: str, theme: str = "light") -> str:
    """``GET runs/ID/output[?theme=dark]``: the run's output notebook as static HTML
    (nbconvert), in the light or dark theme of the page that shows it, for the sidebar to
    show when the notebook lies outside the server's root (run folders live in
    NBDEPLOY_HOME). The path comes from nbdeploy's own run record, never a request."""
    from nbconvert import HTMLExporter

    from nbdeploy import api

    record = api.get_run(run_id)
    path = Path(record.output_path or "")
    if path.suffix != ".ipynb" or not path.is_file():
        raise ApiError(
            404,
            f"run {record.id} has no output notebook (yet)",
            None,
            "a run writes it as its cells execute; a run that never started has none",
        )
    if theme not in OUTPUT_THEMES:
        raise ApiError(422, f"theme {theme!r}: light or dark", "theme")
    body, _ = HTMLExporter(template_name="lab", theme=theme).from_filename(str(path))
    # A static page: the template's scripts (require.js, MathJax from a CDN) and any an
    # output carries would not run in the sandboxed frame anyway.
    return _SCRIPT.sub("", str(body))


_SCRIPT = re.compile(r"<script\b[^>]*>.*?</script\s*>", re.IGNORECASE | re.DOTALL)


def get_run(run_id: str) -> dict[str, Any]:
    from nbdeploy import api

    return dict(_finite(api.get_run(run_id).to_dict()))
