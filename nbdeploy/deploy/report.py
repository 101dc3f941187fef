"""Text of deployments for the CLI and the magic: deploy results, status tables, curl examples."""

from __future__ import annotations

import json
import shlex
import time
from typing import Any

from nbdeploy.deploy.store import SERVING, Deployment
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


def example_rows(reference: Any) -> Any:
    """The first row of a reference data set, as a list of rows (for an example call)."""
    if reference is None:
        return None
    head = reference.iloc[:1].to_numpy() if hasattr(reference, "iloc") else reference[:1]
    return head.tolist() if hasattr(head, "tolist") else list(head)


def curl_example(url: str, schema: dict[str, Any], example: dict[str, Any] | None = None) -> str:
    body = json.dumps(example_body(schema, example))
    return (
        f"curl -X POST {shlex.quote(url + schema.get('route', '/'))} "
        f"-H 'Content-Type: application/json' -d {shlex.quote(body)}"
    )


def describe_deploy(result: Any) -> str:
    data = result.to_dict()
    verb = "built and deployed" if data["built"] else "deployed"
    lines = [f"{OK_MARK} {data['name']} v{data['version']} {verb}: {data['endpoint']}"]
    lines.append("  try: " + curl_example(data["url"], result.version.schema))
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
        pids = ",".join(str(s.pid) for s in deployment.servers) or "-"
        rows.append(
            [
                f"{mark} {deployment.name}",
                deployment.status,
                f"v{deployment.live_version}" if deployment.live_version else "-",
                deployment.url if deployment.status == SERVING else "-",
                pids,
                since,
            ]
        )
    return table(["name", "status", "version", "url", "pid", "since"], rows)
