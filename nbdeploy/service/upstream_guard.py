"""A version answers only its deployment's router: an ASGI middleware that refuses every
request without the secret the router sends in ``X-Nbdeploy-Upstream``.

A version listens on a loopback port of its own, and 127.0.0.1 is not private on a shared
host: without this, any local user could call a version straight (``nbdeploy status``
lists its port) and bypass the router's API key. nbdeploy generates a secret for each
start of a version and gives it to the version (``NBDEPLOY_UPSTREAM_SECRET``) and to the
router (``router.json``, mode 0600). Health paths and ``/metrics`` stay open: readiness
probes and scrapers call them, and they disclose no prediction.

Without ``NBDEPLOY_UPSTREAM_SECRET`` (a container image, ``bentoml serve`` by hand) there
is no check. Copied into every version as ``nbdeploy_upstream_guard.py``; standard library
only, so that it costs a served version nothing to import.
"""

from __future__ import annotations

import hmac
import json
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

SECRET_ENV = "NBDEPLOY_UPSTREAM_SECRET"
HEADER = "X-Nbdeploy-Upstream"
# The refusal carries HEADER: REFUSED, so that a router whose secret is not this version's
# (another server took the port of the one it knew) tries another version instead.
REFUSED = "refused"
OPEN_PATHS = frozenset({"/livez", "/readyz", "/healthz", "/metrics"})
REFUSAL = json.dumps(
    {
        "error": "this version answers only its deployment's router",
        "hint": "call the deployment's URL (nbdeploy status NAME)",
    }
).encode()

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

_HEADER_KEY = HEADER.lower().encode("latin-1")  # ASGI header names are lower-case bytes


class Middleware:
    """Refuses (403) any HTTP request and any WebSocket without the upstream secret, when
    one is configured (``secret``, else ``NBDEPLOY_UPSTREAM_SECRET``)."""

    def __init__(self, app: App, secret: str | None = None) -> None:
        self.app = app
        configured = os.environ.get(SECRET_ENV, "") if secret is None else secret
        self.secret = configured.encode("latin-1") if configured else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.secret is None or scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)  # lifespan events, or no check configured
        elif scope.get("path") in OPEN_PATHS or self._carries_secret(scope):
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})  # policy violation
        else:
            await _refuse(send)

    def _carries_secret(self, scope: Scope) -> bool:
        assert self.secret is not None
        for key, value in scope.get("headers") or ():
            if key == _HEADER_KEY:
                # Constant time: the answer's timing tells nothing about the secret.
                return hmac.compare_digest(bytes(value), self.secret)
        return False


async def _refuse(send: Send) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 403,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(REFUSAL)).encode()),
                (_HEADER_KEY, REFUSED.encode("latin-1")),
            ],
        }
    )
    await send({"type": "http.response.body", "body": REFUSAL})
