"""Helpers shared by the integration tests: HTTP calls to services and code run in a live
kernel through jupyter_client."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

LAST_HEADERS: dict[str, str] = {}


def post(url: str, body: object) -> tuple[int, str]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            LAST_HEADERS.update({k.lower(): v for k, v in answer.headers.items()})
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        LAST_HEADERS.update({k.lower(): v for k, v in error.headers.items()})
        return error.code, error.read().decode()


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/readyz", timeout=5) as answer:
            return answer.status == 200
    except OSError:
        return False


def execute(kc: Any, code: str, ok: bool = True, timeout: float = 300) -> str:
    chunks: list[str] = []

    def collect(msg: dict[str, Any]) -> None:
        content = msg["content"]
        if msg["msg_type"] == "stream":
            chunks.append(content["text"])
        elif msg["msg_type"] == "error":
            chunks.append(f"{content['ename']}: {content['evalue']}")
        elif msg["msg_type"] == "display_data":
            chunks.append(content["data"].get("text/plain", ""))

    reply = kc.execute_interactive(code, timeout=timeout, output_hook=collect)
    assert (reply["content"]["status"] == "ok") == ok, "".join(chunks)
    return "".join(chunks)


def canary_plan(**changes: Any) -> Any:
    """A canary plan of "scale" from v1 to v2 (ten, fifty, then all percent), as a deploy
    writes it; ``changes`` replace its fields."""
    from nbdeploy.deployment.traffic.strategies.canary import CanaryPlan

    fields: dict[str, Any] = {
        "name": "scale",
        "version": 2,
        "stable": 1,
        "candidate_server": 2,
        "stable_server": 1,
        "steps": [10.0, 50.0, 100.0],
        "interval": 30.0,
        "keep_warm": 60.0,
    }
    return CanaryPlan(**{**fields, **changes})
