"""The verbs users call, in one place: deploy, status, stop, logs, show, rollback, promote,
weights, rotate-key. The CLI, ``%deploy``, ``nbdeploy.deploy`` and the REST handlers are
thin faces over these.

A deploy captures the function (or model) and makes its version here, in the caller's
process (see :mod:`nbdeploy.deployment.versions.build`: content-addressed, built once);
rolling it out behind the deployment's router with a strategy
(:mod:`nbdeploy.deployment.traffic.strategies`: blue-green by default, recreate, canary,
A/B, shadow) is a request to the daemon, as is every other change (stop, rollback, ...):
the daemon does them one at a time per deployment. A version that does not take over (or
a request that is interrupted) leaves what served before serving, and the error says why.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nbdeploy.deployment.options import (
    DeployOptions,
    check_log_sample,
    check_redact,
    parse_sticky,
)
from nbdeploy.deployment.runtime.locks import deployment_lock
from nbdeploy.deployment.runtime.processes import (
    LOOPBACK,
    tail,
)
from nbdeploy.deployment.store import (
    FAILED_START,
    READY,
    ROUTER,
    SERVING,
    STARTING,
    Deployment,
    DeploymentStore,
    Version,
)
from nbdeploy.deployment.versions.build import prepare_version
from nbdeploy.deployment.versions.registry import record_live, register_version
from nbdeploy.errors import DeployError
from nbdeploy.store import StateStore, default_store

Notify = Callable[[str], None]


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
            "strategy": self.deployment.strategy,
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
    # As given, else made from the function's (or the model's) name.
    name = (
        deployment_name(options.name, given=True)
        if options.name
        else deployment_name(captured.name)
    )
    if options.workers < 1:
        raise DeployError("--workers must be at least 1")
    try:
        parse_sticky(options.sticky)
        options.log_sample = check_log_sample(options.log_sample)
        options.redact = check_redact(options.redact)
    except ValueError as error:
        raise DeployError(str(error)) from None
    check_host(options.host)
    deployments = DeploymentStore(store or default_store())
    if not options.replace:
        check_owner(deployments, name, source)
    with deployment_lock(name, notify):  # two builds of one name never run at once
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
    from nbdeploy.deployment.runtime.client import Interrupted

    try:
        outcome = switch(name, version.version, options, notify, store)
    except Interrupted as interrupted:
        if interrupted.took_effect and options.mlflow:  # the registry follows what serves
            record_live(deployments, version, registration, [], notify)
        raise
    unchanged = bool(outcome.get("unchanged"))
    deployment = deployments.get(name)
    notices = list(prepared.notices)
    if options.mlflow and not unchanged:
        version = record_live(deployments, version, registration, notices, notify)
    return DeployResult(
        deployment,
        version,
        prepared.built,
        prepared.requirements,
        notices,
        time.monotonic() - started,
        prepared.example,
    )


def check_owner(deployments: DeploymentStore, name: str, source: Mapping[str, Any] | None) -> None:
    """A deploy from one notebook does not silently replace the serving deployment of
    another: DeployError unless the live version came from the same notebook (or either is
    not known: an interactive session, a function deployed from Python). A stopped
    deployment is anybody's to deploy again."""
    current = deployments.find(name)
    if current is None or current.status != SERVING or current.live_version is None:
        return
    owner = deployments.version(name, current.live_version).source.get("notebook")
    ours = (source or {}).get("notebook")
    if not owner or not ours or _same_file(str(owner), str(ours)):
        return
    raise DeployError(
        f"{name} serves v{current.live_version}, deployed from {owner}; this deploy comes "
        f"from {ours}",
        "add --replace to take the name over (replace=True from Python), or choose another --name",
    )


def _same_file(first: str, second: str) -> bool:
    """Two notebook paths name one file; a relative one (JupyterLab's session path, from
    the server's root) matches the end of an absolute one."""
    one, other = Path(first), Path(second)
    if one.is_absolute() and other.is_absolute():
        return one.resolve() == other.resolve()
    shorter, longer = sorted((one.parts, other.parts), key=len)
    return longer[len(longer) - len(shorter) :] == shorter


def switch(
    name: str,
    version: int,
    options: DeployOptions,
    notify: Notify = _ignore,
    store: StateStore | None = None,
) -> dict[str, Any]:
    """Ask the daemon to roll ``name`` out to ``version`` (a prepared version): its outcome,
    ``unchanged`` when that version already served as asked."""
    from dataclasses import asdict

    from nbdeploy.deployment.runtime import client

    return client.call(
        "switch",
        name,
        {
            "version": version,
            "host": options.host,
            "port": options.port,
            "strategy": options.strategy,
            "keep_warm": options.keep_warm,
            "options": asdict(options),
            # What the version's server runs with: the caller's environment (credentials a
            # model needs, PYTHONPATH), as when it was started from the notebook.
            "env": dict(os.environ),
        },
        notify,
        home=client.home_of(store),
    )


def check_host(host: str) -> None:
    if host not in (LOOPBACK, "localhost", "::1") and not os.environ.get("NBDEPLOY_ALLOW_REMOTE"):
        raise DeployError(
            f"--host {host}: services listen on 127.0.0.1 unless you opt in",
            "set NBDEPLOY_ALLOW_REMOTE=1 to serve on other addresses (and put an "
            "authenticating proxy in front)",
        )


# -- the other verbs -------------------------------------------------------------------
def status(name: str | None = None, store: StateStore | None = None) -> list[Deployment]:
    """Deployments as the daemon keeps them (a read: it changes nothing). A daemon is
    started when deployments want serving and none runs (after a reboot, it brings them
    back)."""
    deployments = DeploymentStore(store or default_store())
    found = [d.observe() for d in ([deployments.get(name)] if name else deployments.all())]
    if any(d.status == SERVING for d in found):
        from nbdeploy.deployment.runtime import client

        client.ensure(client.home_of(store))
    return found


def stop(name: str, store: StateStore | None = None) -> Deployment:
    """Stop the deployment's router and versions (and a canary in progress)."""
    from nbdeploy.deployment.runtime import client

    deployments = DeploymentStore(store or default_store())
    deployments.get(name)
    client.call("stop", name, home=client.home_of(store))
    return deployments.get(name)


def logs(name: str, lines: int = 50, store: StateStore | None = None) -> list[str]:
    """The last lines of the log of the deployment's newest version server (not its
    router's); after a start that failed, that failed start's log first."""
    deployments = DeploymentStore(store or default_store())
    deployments.get(name)
    servers = [s for s in deployments.recent_servers(name, 50) if s.role != ROUTER]
    if not servers:
        return []
    for server in servers[:2]:
        if server.container and server.status in (READY, STARTING):
            from nbdeploy.image.container import copy_logs

            copy_logs(server.container, Path(server.log_path))
    failed = servers[0] if servers[0].role == FAILED_START else None
    serving = next((s for s in servers if s.role != FAILED_START), None)
    if failed is None or serving is None:
        return tail(Path(servers[0].log_path), lines)
    return [
        f"---- v{failed.version}: the start that failed ----",
        *tail(Path(failed.log_path), lines),
        f"---- v{serving.version}: serving now ----",
        *tail(Path(serving.log_path), lines),
    ]


def why_failed(name: str, lines: int = 8, store: StateStore | None = None) -> list[str]:
    """Why ``name`` failed, from the process that failed: the daemon's reason for giving up
    and that process's last log lines; else the newest server log."""
    deployments = DeploymentStore(store or default_store())
    for event in deployments.events(name, 20):
        if event["kind"] == "gave-up":
            cause = str(event.get("cause") or "").splitlines()
            return [str(event.get("reason")), *cause[:1], *cause[1:][-lines:]]
        if event["kind"] in ("switched", "stopped"):
            break  # an older failure was dealt with since
    return logs(name, lines, store)


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

    from nbdeploy.pipeline.progress import NullProgress
    from nbdeploy.pipeline.runner import execute_run, prepare_run
    from nbdeploy.service.package import deployment_name

    options = options or DeployOptions()
    prepared = prepare_run(notebook_path, values, text_values, kernel=kernel)
    chosen = model or function or serve_function_name(prepared.notebook)
    if not chosen.isidentifier():
        flag = "--object" if model else "--function"
        raise DeployError(f"{flag} {chosen!r} is not a Python name")
    if not options.replace:  # before the notebook runs, not after
        name = (
            deployment_name(options.name, given=True) if options.name else deployment_name(chosen)
        )
        source = {"notebook": str(prepared.notebook.path)}
        check_owner(DeploymentStore(default_store()), name, source)
    arguments = {
        "target": chosen,
        "model": bool(model),
        "options": asdict(options),
        "notebook": str(prepared.notebook.path),
    }
    epilogue = (
        "import json as _nbdeploy_json\n"
        "import nbdeploy.deployment.verbs as _nbdeploy_core\n"
        "_nbdeploy_core.deploy_in_kernel(\n"
        f"    globals(), _nbdeploy_json.loads({json.dumps(arguments)!r})\n"
        ")\n"
    )
    live = _DeployStepLines(progress or NullProgress(), notify)
    outcome = execute_run(
        prepared,
        timeout=timeout,
        progress=live,
        track_mlflow=options.mlflow,
        notify=notify,
        warn=warn,
        epilogue=epilogue,
    )
    if not outcome.ok:
        raise DeployError(f"{outcome.message} (run {outcome.record.id})")
    for line in (outcome.epilogue_output or "").splitlines():
        if line.startswith("nbdeploy: ") and line not in live.told:  # not streamed already
            notify(line[len("nbdeploy: ") :])
        if line.startswith(RESULT_MARKER):
            result: dict[str, Any] = json.loads(line[len(RESULT_MARKER) :])
            result["run_id"] = outcome.record.id
            return outcome, result
    raise DeployError(
        f"the notebook ran, but the deploy step printed no result (run {outcome.record.id})"
    )


class _DeployStepLines:
    """A run's progress that also tells the deploy step's own lines (``nbdeploy: ...``
    printed in the kernel: building, waiting for another deploy, switching) as they come,
    not when the run has ended. Where the run's outputs do not reach this process (another
    executor), they are told afterwards from the step's recorded output."""

    def __init__(self, inner: Any, notify: Notify) -> None:
        self.inner, self.notify = inner, notify
        self.in_step = False
        self.told: set[str] = set()

    def start(self, label: str, total_cells: int) -> None:
        self.inner.start(label, total_cells)

    def cell_started(self, position: int, cell_number: int, first_line: str) -> None:
        from nbdeploy.pipeline.progress import EPILOGUE_LABEL

        self.in_step = first_line == EPILOGUE_LABEL
        self.inner.cell_started(position, cell_number, first_line)

    def output(self, text: str, stream: str) -> None:
        if self.in_step:
            for line in text.splitlines():
                if line.startswith("nbdeploy: ") and line not in self.told:
                    self.told.add(line)
                    self.notify(line[len("nbdeploy: ") :])
        self.inner.output(text, stream)

    def finish(self, ok: bool, summary: str, interrupted: bool = False) -> None:
        self.inner.finish(ok, summary, interrupted)


def deploy_in_kernel(namespace: dict[str, Any], arguments: dict[str, Any]) -> None:
    """Run inside the notebook's kernel by ``nbdeploy deploy``: deploy and print the result."""
    deploy_in_kernel_result(namespace, arguments)


def deploy_in_kernel_result(namespace: dict[str, Any], arguments: dict[str, Any]) -> DeployResult:
    """:func:`deploy_in_kernel`, returning the result (a pipeline step's ``deploy:``)."""
    from nbdeploy.pipeline.context import DEPLOY_STEP_ENV

    os.environ.pop(DEPLOY_STEP_ENV, None)  # not passed on to the version's server
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
    return result


# -- the verbs that move traffic (done by the daemon: traffic.rollouts) -----------------
def rollback(
    name: str,
    store: StateStore | None = None,
    notify: Notify = _ignore,
    to: int | None = None,
) -> Deployment:
    """Serve the version that was live before the current one, or kept version ``to`` (no
    rebuild): at once when it is still warm, else started beside the current one first
    (blue-green)."""
    from nbdeploy.deployment.runtime import client

    deployments = DeploymentStore(store or default_store())
    deployments.get(name)
    args = {"to": int(to)} if to is not None else {}
    client.call("rollback", name, args, notify=notify, home=client.home_of(store))
    return deployments.get(name)


def promote(name: str, store: StateStore | None = None, notify: Notify = _ignore) -> Deployment:
    """A canary in progress takes all the traffic now (its remaining steps are skipped)."""
    from nbdeploy.deployment.runtime import client

    deployments = DeploymentStore(store or default_store())
    deployments.get(name)
    client.call("promote", name, notify=notify, home=client.home_of(store))
    return deployments.get(name)


def set_weights(
    name: str, weights: Mapping[str, float], store: StateStore | None = None
) -> Deployment:
    """Split traffic by hand among the versions that run (``{"v1": 90, "v2": 10}``)."""
    from nbdeploy.deployment.runtime import client

    deployments = DeploymentStore(store or default_store())
    deployments.get(name)
    client.call("weights", name, {"weights": dict(weights)}, home=client.home_of(store))
    return deployments.get(name)


def rotate_key(name: str, store: StateStore | None = None) -> str:
    """A new API key for ``name``'s router (the old one stops working at once)."""
    from nbdeploy.deployment.runtime import client
    from nbdeploy.deployment.traffic import keys

    DeploymentStore(store or default_store()).get(name)
    client.call("rotate_key", name, home=client.home_of(store))
    key = keys.read_key(name)
    assert key is not None
    return key


ROLLOUT_STARTS = frozenset({"canary-started", "ab-started", "shadow-started", "stopped"})


def current_rollout(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events (newest first) of the latest rollout: back to the one that began it (a
    deploy's switch, a canary, A/B or shadow start, a stop), so that what a newer rollout
    replaced is not shown as if it were current."""
    kept = []
    for event in events:
        kept.append(event)
        began = event["kind"] in ROLLOUT_STARTS or (
            event["kind"] == "switched" and event.get("strategy") not in ("canary", "ab", "shadow")
        )
        if began:
            break
    return kept


def _canary_of(name: str, events: list[dict[str, Any]]) -> Any:
    """The canary plan of the rollout ``events`` belong to (None: it started none)."""
    from nbdeploy.deployment.traffic.strategies import canary

    plan = canary.read_plan(name)
    if plan is not None and any(
        e["kind"] == "canary-started" and e.get("version") == plan.version for e in events
    ):
        return plan
    return None


def rollout_notice(name: str, store: StateStore | None = None) -> dict[str, Any] | None:
    """What a glance at ``name`` should say of its latest rollout: its canary's progress
    or outcome (status, version, reason, and ``text``, the line every view shows); None
    when it has none."""
    from dataclasses import asdict

    from nbdeploy.deployment.report import canary_line

    deployments = DeploymentStore(store or default_store())
    plan = _canary_of(name, current_rollout(deployments.events(name, 50)))
    if plan is None:
        return None
    return {
        "kind": "canary",
        "version": plan.version,
        "status": plan.status,
        "reason": plan.reason,
        "text": canary_line(asdict(plan)),
    }


def rollout_state(name: str, store: StateStore | None = None) -> dict[str, Any]:
    """What traffic does now, and the latest rollout: the split, its canary (running, or how
    it ended, with the reason) and its events (newest first)."""
    from dataclasses import asdict

    from nbdeploy.deployment import traffic

    deployments = DeploymentStore(store or default_store())
    deployments.get(name)
    config = traffic.read_config(name)
    events = current_rollout(deployments.events(name, 50))
    plan = _canary_of(name, events)
    return {
        "split": traffic.describe_split(name),
        "mode": config.get("mode", "split"),
        "shadow": config.get("shadow"),
        "sticky": config.get("sticky"),
        "auth": "key" if config.get("key_sha256") else "none",
        "canary": asdict(plan) if plan is not None else None,
        "events": events[:10],
    }
