"""The faces' side of schedules: a change is a ``schedule`` request to the daemon (started
when none runs), answered at once."""

from __future__ import annotations

from typing import Any

REQUEST_TIMEOUT_SECONDS = 30.0


def request(action: str, name: str, **fields: Any) -> dict[str, Any]:
    """Ask the daemon to ``action`` (add, pause, resume, remove, run_now) schedule
    ``name``; its result, or its error raised as an :class:`NbdeployError`."""
    from nbdeploy.deployment.runtime import client

    answer = client.ask_daemon(
        "schedule", {"action": action, "name": name, **fields}, REQUEST_TIMEOUT_SECONDS
    )
    if not answer.get("ok"):
        raise client.rebuild_error(answer)
    result: dict[str, Any] = answer.get("result") or {}
    return result
