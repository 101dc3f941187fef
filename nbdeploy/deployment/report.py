"""Text of deployments for the CLI and the magic: deploy results, status tables, curl examples
(runnable, and compact ones to show)."""

from __future__ import annotations

import json
import math
import shlex
import time
from typing import Any

from nbdeploy.deployment.store import SERVING, Deployment, DeploymentStore, Version
from nbdeploy.deployment.traffic import describe_split
from nbdeploy.pipeline.summary import FAIL_MARK, OK_MARK, table


def example_body(schema: dict[str, Any], example: dict[str, Any] | None = None) -> dict[str, Any]:
    """A request body for the endpoint: the example when known, else placeholders by type."""
    if example:
        return example
    placeholders = {
        "list[list[float]]": [[0.0, 0.0]],
        "list[float]": [0.0],
        "float": 0.0,
        "int": 0,
        "str": "text",
        "bool": True,
        "list[str]": ["text"],
        "list[int]": [0],
        "list[Any]": [[0.0, 0.0]],
    }
    return {
        i["name"]: placeholders.get(i["type"].replace(" ", "")) for i in schema.get("inputs", [])
    }


def describe_input(schema: dict[str, Any]) -> str:
    """The request's shape in one line: records with their columns, rows of a width, or the
    function's parameters."""
    mode = schema.get("mode")
    field = schema.get("parameter", "rows")
    if mode == "records":
        columns = ", ".join(
            f"{c['name']}: {c['kind']}" + (f" {c['categories']}" if c.get("categories") else "")
            for c in schema.get("columns", [])
        )
        extra = "dropped" if schema.get("extra_columns") == "drop" else "refused"
        return f'{{"{field}": [records]}}, each with {columns} (other columns {extra})'
    if mode == "rows":
        width = schema.get("width")
        return f'{{"{field}": [rows]}}, ' + (
            f"each of {width} numbers" if width else "each a list of numbers"
        )
    return ", ".join(f"{i['name']}: {i['type']}" for i in schema.get("inputs", []))


def curl_example(
    url: str,
    schema: dict[str, Any],
    example: dict[str, Any] | None = None,
    key_of: str | None = None,
) -> str:
    """A curl line for the endpoint; ``key_of`` names a deployment whose router needs its
    API key: the line reads it with ``$(nbdeploy key NAME)``, never shows it."""
    return " ".join(_curl_words(url, schema, json.dumps(example_body(schema, example)), key_of))


def compact_curl(
    url: str,
    schema: dict[str, Any],
    example: dict[str, Any] | None = None,
    key_of: str | None = None,
) -> str:
    """:func:`curl_example` to read rather than to run: one option per line, numbers of the
    body rounded to 4 significant digits, long lists and texts cut with an ellipsis."""
    body = compact_json(example_body(schema, example))
    return " \\\n  ".join(_curl_words(url, schema, body, key_of))


def _curl_words(url: str, schema: dict[str, Any], body: str, key_of: str | None) -> list[str]:
    words = [f"curl -X POST {shlex.quote(url + schema.get('route', '/'))}"]
    if key_of:
        words.append(f'-H "Authorization: Bearer $(nbdeploy key {key_of})"')
    words += ["-H 'Content-Type: application/json'", f"-d {shlex.quote(body)}"]
    return words


def compact_json(value: Any, max_items: int = 8, max_chars: int = 160, digits: int = 4) -> str:
    """JSON to show, not to send: floats with ``digits`` significant digits, lists and
    objects cut after ``max_items`` (fewer until the text fits ``max_chars``) with ``…``,
    long strings shortened. Cuts happen between items, never inside a number."""
    text = _compact(value, max_items, digits)
    items = max_items
    while len(text) > max_chars and items > 1:
        items //= 2
        text = _compact(value, items, digits)
    return text if len(text) <= max_chars else text[: max_chars - 1] + "…"


def _compact(value: Any, items: int, digits: int) -> str:
    if isinstance(value, float) and math.isfinite(value):
        return json.dumps(float(f"{value:.{digits}g}"))
    if isinstance(value, str):
        return json.dumps(value if len(value) <= 40 else value[:39] + "…", ensure_ascii=False)
    if isinstance(value, dict):
        shown = [
            f"{_compact(str(k), items, digits)}: {_compact(v, items, digits)}"
            for k, v in list(value.items())[:items]
        ]
        return "{" + ", ".join(shown + (["…"] if len(value) > items else [])) + "}"
    if isinstance(value, (list, tuple)):
        shown = [_compact(v, items, digits) for v in value[:items]]
        return "[" + ", ".join(shown + (["…"] if len(value) > items else [])) + "]"
    return json.dumps(value, default=str)


def needs_key(name: str) -> bool:
    from nbdeploy.deployment import traffic

    return bool(traffic.read_config(name).get("key_sha256"))


def describe_deploy(result: Any) -> str:
    data = result.to_dict()
    verb = "built and deployed" if data["built"] else "deployed"
    lines = [f"{OK_MARK} {data['name']} v{data['version']} {verb}: {data['endpoint']}"]
    lines.append("  input: " + describe_input(result.version.schema))
    key_of = data["name"] if needs_key(data["name"]) else None
    lines.append(
        "  try: " + curl_example(data["url"], result.version.schema, data.get("example"), key_of)
    )
    lines.append("  requirements: " + (", ".join(data["requirements"]) or "none"))
    lines.append(f"  took {data['seconds']:.1f}s; logs: nbdeploy logs {data['name']}")
    return "\n".join(lines)


def status_table(deployments: list[Deployment]) -> str:
    if not deployments:
        return "no deployments yet: %deploy FUNCTION in a notebook, or nbdeploy deploy NOTEBOOK"
    rows = []
    for deployment in deployments:
        mark = (
            OK_MARK
            if deployment.status == SERVING
            else FAIL_MARK
            if deployment.status == "failed"
            else "-"
        )
        since = time.strftime("%Y-%m-%d %H:%M", time.localtime(deployment.updated_at))
        serving = deployment.status == SERVING
        state = deployment.status
        if getattr(deployment, "recovering", False):  # the daemon restarts what is down now
            down = [s for s in deployment.servers if s.status in ("down", "starting")]
            state = "recovering: " + ", ".join(
                f"{'the router' if s.role == 'router' else f'v{s.version}'} {s.status}"
                for s in down
            )
            if deployment.answering_version != deployment.live_version:
                state += f", v{deployment.answering_version} answers"
        rows.append(
            [
                f"{mark} {deployment.name}",
                state,
                f"v{deployment.live_version}" if deployment.live_version else "-",
                deployment.url if serving else "-",
                describe_split(deployment.name) if serving else "-",
                since,
            ]
        )
        for server in getattr(deployment, "servers", []):
            if server.container:  # nbdeploy image run: beside the router, not behind it
                started = time.strftime("%Y-%m-%d %H:%M", time.localtime(server.started_at))
                rows.append(
                    [
                        f"  ↳ {deployment.name} (container {server.container[:12]})",
                        server.status,
                        f"v{server.version}",
                        server.url,
                        "-",
                        started,
                    ]
                )
    return table(["name", "status", "version", "url", "traffic", "since"], rows)


def describe_switch(deployment: Deployment) -> str:
    """What serves after a rollback or a promotion."""
    return f"{deployment.name} is serving v{deployment.live_version} at {deployment.url}"


def describe_status(deployments: list[Deployment], rollout: dict[str, Any] | None = None) -> str:
    """``nbdeploy status [NAME]`` as text: the table, and for one deployment its live
    version (with its MLflow registry version) and its rollout."""
    text = status_table(deployments)
    if rollout is not None and len(deployments) == 1:
        live = live_version(deployments[0])
        if live is not None:
            text += f"\n{live.deployment}: live {version_label(live)}"
        text += "\n" + describe_rollout(deployments[0].name, rollout)
    return text


def version_label(version: Version) -> str:
    """A version as nbdeploy and the MLflow registry both name it: "v3 (MLflow predict
    version 7)" (nbdeploy's v3 is not the registry's version 3 in a shared store); "v3"
    when it is not registered."""
    label = f"v{version.version}"
    if version.mlflow_version:
        label += f" (MLflow {version.deployment} version {version.mlflow_version})"
    return label


def live_version(deployment: Deployment) -> Version | None:
    """The record of the version that serves (None before the first), from the default
    store."""
    from nbdeploy.store import default_store

    if deployment.live_version is None:
        return None
    return DeploymentStore(default_store()).version(deployment.name, deployment.live_version)


def canary_line(plan: dict[str, Any]) -> str:
    """A canary as every view says it: "canary v8: running at 25% (step 2 of 4)",
    "canary v8: rolled back: error rate 30.5% > 5%", "canary v8: promoted"."""
    steps = plan.get("steps") or [0]
    step_index = min(int(plan.get("step") or 0), len(steps) - 1)
    running = plan.get("status") == "running"
    where = f" at {steps[step_index]:g}% (step {step_index + 1} of {len(steps)})"
    reason = plan.get("reason")
    return (
        f"canary v{plan.get('version')}: {plan.get('status')}"
        + (where if running else "")
        + (f": {reason}" if reason else "")
    )


def describe_rollout(name: str, state: dict[str, Any]) -> str:
    """The rollout part of ``nbdeploy status NAME``: traffic, a canary, the last events."""
    lines = [f"{name}: traffic {state['split']} (API key: {state['auth']})"]
    plan = state.get("canary")
    if plan is not None:
        lines.append("  " + canary_line(plan))
    for event in state.get("events", [])[:5]:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(event["at"]))
        detail = ", ".join(f"{k} {v}" for k, v in event.items() if k not in ("at", "kind"))
        lines.append(f"  {when}  {event['kind']}" + (f": {detail}" if detail else ""))
    return "\n".join(lines)
