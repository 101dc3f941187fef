"""The router process: ``python -m nbdeploy.deployment.traffic.router FOLDER`` (see the package's
docstring for what it does and how it is told)."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import hashlib
import hmac
import json
import math
import os
import random
import re
import signal
import socket
import sys
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from nbdeploy.deployment.traffic.router import CONFIG, LISTEN_FD_ENV, LIVE_PATH, STATE, STATUS_PATH
from nbdeploy.deployment.traffic.router.http import (
    HEAD_LIMIT,
    HOP_BY_HOP,
    BadRequest,
    Request,
    Response,
    declares_body,
    encode,
    read_body,
    read_request_head,
    read_response,
    respond,
    same_answer,
    simple,
)
from nbdeploy.service.upstream_guard import HEADER as UPSTREAM_HEADER
from nbdeploy.service.upstream_guard import REFUSED

AB_LOG = "ab-requests.jsonl"
FEEDBACK_LOG = "ab-feedback.jsonl"
SHADOW_LOG = "shadow.jsonl"
FEEDBACK_PATH = "/feedback"
HEALTH_PATHS = frozenset({"/livez", "/readyz", "/healthz"})
# Latency buckets (upper bounds, ms) for per-version histograms: windows of them give the
# p99 that canary analysis compares.
BUCKETS_MS = (
    1, 2, 3, 5, 7, 10, 15, 20, 30, 50, 75, 100, 150, 200, 300, 500, 750, 1000, 1500, 2000,
    3000, 5000, 10000, math.inf,
)  # fmt: skip
STATE_INTERVAL_S = 0.5
DRAIN_TIMEOUT_S = 30.0
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
IDLE_SECONDS = 4.0  # below the versions' keep-alive timeout (uvicorn's default: 5 s)
RECENT_IDS = 200_000  # A/B request ids kept to check feedback against
RECALL_BYTES = 64 << 20  # how much of the A/B request log a starting router reads back
# What a failed attempt to reach a version raises (refused, reset, cut short, garbled).
UNREACHABLE = (OSError, asyncio.IncompleteReadError, BadRequest)
# When no version could answer, every one is tried again after each of these pauses (about
# 1.5 s in all): a worker that died is restarted on the same port within about a second.
RETRY_PAUSES_S = (0.1, 0.2, 0.4, 0.8)
# A refused request's body is not read, but discarded this long at most before the
# connection closes: closing with unread data resets it, and the client may lose the answer.
LINGER_S = 1.0
UPSTREAM_HEADER_KEY = UPSTREAM_HEADER.lower().encode("latin-1")
REFUSED_MARK = (UPSTREAM_HEADER_KEY, REFUSED.encode("latin-1"))
SECRET_PATTERN = re.compile(r"[!-~]{16,256}")  # visible ASCII: a header value as it is


class Misrouted(ConnectionError):
    """The server on an upstream's port refused the upstream's secret: it is not the
    version the router knew there (that one died, and another server took its port)."""


@dataclass
class Counters:
    requests: int = 0
    errors: int = 0
    buckets: list[int] = field(default_factory=lambda: [0] * len(BUCKETS_MS))
    latency_sum_ms: float = 0.0

    def record(self, milliseconds: float, error: bool) -> None:
        self.requests += 1
        self.errors += int(error)
        self.latency_sum_ms += milliseconds
        self.buckets[bisect.bisect_left(BUCKETS_MS, milliseconds)] += 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "latency_sum_ms": round(self.latency_sum_ms, 3),
            "buckets": self.buckets,
        }


@dataclass
class Upstream:
    name: str
    host: str
    port: int
    secret: bytes | None = None  # sent in X-Nbdeploy-Upstream: the version answers only it
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = field(
        default_factory=list
    )
    inflight: int = 0
    counters: Counters = field(default_factory=Counters)
    retired: bool = False

    def take_idle(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """A kept-alive connection young enough that the version has not closed it (BentoML
        closes them after 5 s idle)."""
        while self.idle:
            reader, writer, since = self.idle.pop()
            if time.monotonic() - since < IDLE_SECONDS and not reader.at_eof():
                return reader, writer
            writer.close()
        return None

    def close_idle(self) -> None:
        for _, writer, _since in self.idle:
            writer.close()
        self.idle.clear()


class Router:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.upstreams: dict[str, Upstream] = {}
        self.weights: list[tuple[str, int]] = []  # cumulative basis points
        self.sticky: dict[str, str] | None = None
        self.shadow: tuple[str, float] | None = None
        self.mode = "split"
        self.key_hash: bytes | None = None
        self.generation = 0
        self.name = folder.name
        self.started_at = time.time()
        self.shadow_stats = {
            "mirrored": 0,
            "compared": 0,
            "agreed": 0,
            "errors": 0,
            "live_ms_sum": 0.0,
            "shadow_ms_sum": 0.0,
        }
        # A/B request id -> (arm, experiment), to check feedback against; rebuilt from the
        # request log when the router starts, so feedback survives a restart.
        self.recent: OrderedDict[str, tuple[str, str | None]] = OrderedDict()
        self.experiment: str | None = None
        self.logs: dict[str, TextIO] = {}
        self.standby: dict[str, dict[str, Any]] = {}
        self.background: set[asyncio.Future[Any]] = set()  # shadow requests in flight
        self.changed = True
        self.stopping = False

    # -- configuration -------------------------------------------------------------------
    def reload(self) -> None:
        config = json.loads((self.folder / CONFIG).read_text(encoding="utf-8"))
        wanted = config.get("upstreams", {})
        wanted_secrets = {name: upstream_secret(spec) for name, spec in wanted.items()}
        for name, upstream in list(self.upstreams.items()):
            spec = wanted.get(name)
            if spec is None or (spec["host"], spec["port"], wanted_secrets[name]) != (
                upstream.host,
                upstream.port,
                upstream.secret,
            ):
                upstream.retired = True
                upstream.close_idle()
                if upstream.inflight == 0:
                    del self.upstreams[name]
                else:
                    self.upstreams[f"{name}@retired-{id(upstream)}"] = self.upstreams.pop(name)
        for name, spec in wanted.items():
            if name not in self.upstreams:
                self.upstreams[name] = Upstream(
                    name, spec["host"], int(spec["port"]), secret=wanted_secrets[name]
                )
        total, cumulative = 0, []
        for name, weight in sorted(config.get("weights", {}).items()):
            if weight > 0 and name in wanted:
                total += round(weight * 100)
                cumulative.append((name, total))
        self.weights = cumulative
        self.sticky = config.get("sticky")
        shadow = config.get("shadow")
        self.shadow = (shadow["version"], float(shadow.get("percent", 100))) if shadow else None
        self.mode = config.get("mode", "split")
        self.experiment = config.get("experiment")
        key = config.get("key_sha256")
        self.key_hash = bytes.fromhex(key) if key else None
        self.generation = int(config.get("generation", 0))
        self.standby = {
            name: entry for name, entry in config.get("standby", {}).items() if name in wanted
        }
        self.changed = True

    def retire_expired_standby(self) -> None:
        """Stop a warm standby (the version before the live one, kept for an instant
        rollback) once its time is up and nothing is in flight to it."""
        now = time.time()
        for name, entry in list(self.standby.items()):
            upstream = self.upstreams.get(name)
            if now < float(entry["until"]) or (upstream is not None and upstream.inflight):
                continue
            from nbdeploy.deployment.runtime.processes import stop_process

            del self.standby[name]
            if upstream is not None:
                upstream.retired = True
                upstream.close_idle()
                del self.upstreams[name]
            stop_process(int(entry["pid"]), entry.get("start_ticks"), marker=entry.get("log"))
            print(f"nbdeploy router: standby {name} retired after its keep-warm time", flush=True)
            self.changed = True

    # -- choosing --------------------------------------------------------------------------
    def choose(self, request: Request) -> str | None:
        if not self.weights:
            return None
        total = self.weights[-1][1]
        point = self._sticky_point(request, total)
        if point is None:
            point = random.randrange(total)
        for name, bound in self.weights:
            if point < bound:
                return name
        return self.weights[-1][0]

    def _sticky_point(self, request: Request, total: int) -> int | None:
        if not self.sticky:
            return None
        key: bytes | None = None
        if "header" in self.sticky:
            key = request.header(self.sticky["header"].lower().encode("latin-1"))
        elif "field" in self.sticky and request.body:
            with contextlib.suppress(ValueError, AttributeError, TypeError):
                value = json.loads(request.body).get(self.sticky["field"])
                if value is not None:
                    key = json.dumps(value, sort_keys=True).encode()
        if not key:
            return None
        digest = hashlib.sha256(key).digest()
        return int.from_bytes(digest[:8], "big") % total

    # -- serving -----------------------------------------------------------------------------
    async def client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while not self.stopping:
                try:
                    request = await read_request_head(reader)
                    if request is None:
                        break
                    early = self.answer_head(request)
                    if early is None:
                        request.body = await read_body(reader, request.headers)
                except BadRequest as error:
                    writer.write(simple(error.status, {"error": str(error)}, close=True))
                    await writer.drain()
                    break
                response = early or await self.dispatch(request)
                keep_alive = request.keep_alive and not response.close
                writer.write(encode(response, keep_alive=keep_alive))
                await writer.drain()
                if early is not None and declares_body(request.headers):
                    await linger(reader, writer)
                if not keep_alive:
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    def answer_head(self, request: Request) -> Response | None:
        """The answer to a request that its head alone decides: the router's own paths, and
        the refusal of a request without the API key, before a byte of its body is read.
        None for a request to read on and forward. A body left unread ends the connection
        (the next request would start inside it)."""
        path = request.path
        if path == LIVE_PATH:
            response = respond(200, {"ok": True, "generation": self.generation})
        elif not self._admitted(request):
            response = respond(
                401,
                {
                    "error": "missing or wrong API key",
                    "hint": "send Authorization: Bearer $(nbdeploy key NAME)",
                },
                [(b"WWW-Authenticate", b"Bearer")],
            )
            response.close = True  # nothing more from a client without the key
        elif path == STATUS_PATH:
            response = respond(200, self.state())
        else:
            return None
        response.close = response.close or declares_body(request.headers)
        return response

    async def dispatch(self, request: Request) -> Response:
        """The answer to a request read whole, that :meth:`answer_head` let through."""
        path = request.path
        if path == FEEDBACK_PATH and request.method == b"POST":
            return self.feedback(request)
        request_id = (request.header(b"x-request-id") or b"").decode("latin-1")[:64]
        if not REQUEST_ID.fullmatch(request_id):  # the client's own, when it is sane
            request_id = uuid.uuid4().hex
        chosen = self.choose(request)
        if chosen is None:
            return respond(503, {"error": f"{self.name} has no version serving"})
        shadow_task = None
        if self._mirrors(chosen):
            assert self.shadow is not None
            shadow_task = asyncio.ensure_future(
                self.timed(self.upstreams[self.shadow[0]], request, request_id)
            )
        started = time.perf_counter()
        response, served_by = await self.forward_with_failover(chosen, request, request_id)
        elapsed = (time.perf_counter() - started) * 1000
        response.headers.append((b"X-Request-ID", request_id.encode()))
        if served_by:
            response.headers.append((b"X-Nbdeploy-Version", served_by.encode()))
        if self.mode == "ab" and served_by:
            self.remember(request_id, served_by, self.experiment)
            self.log(
                AB_LOG,
                {
                    "request_id": request_id,
                    "arm": served_by,
                    "t": time.time(),
                    "status": response.status,
                    "ms": round(elapsed, 3),
                    "experiment": self.experiment,
                },
            )
        if shadow_task is not None:
            # The loop keeps only weak references to tasks: hold it until it is done.
            self.background.add(shadow_task)
            shadow_task.add_done_callback(self.background.discard)
            shadow_task.add_done_callback(
                lambda task: self.compare(task, request_id, response, elapsed)
            )
        return response

    def _mirrors(self, chosen: str) -> bool:
        """This request also goes to the shadow version (its answer is only recorded)."""
        if self.shadow is None or self.shadow[0] == chosen or self.shadow[0] not in self.upstreams:
            return False
        return random.random() * 100 < self.shadow[1]

    def _admitted(self, request: Request) -> bool:
        """No key is needed, or the request carries it (health paths need none)."""
        return self.key_hash is None or request.path in HEALTH_PATHS or self._authorized(request)

    def _authorized(self, request: Request) -> bool:
        header = request.header(b"authorization") or b""
        scheme, _, token = header.partition(b" ")
        if scheme.lower() != b"bearer" or not token:
            return False
        assert self.key_hash is not None
        return hmac.compare_digest(hashlib.sha256(token.strip()).digest(), self.key_hash)

    async def forward_with_failover(
        self, chosen: str, request: Request, request_id: str
    ) -> tuple[Response, str | None]:
        """Send ``request`` to ``chosen``; when it cannot be reached, to the other versions
        in turn (:meth:`failover_order`), and when none can, to all of them again after
        short pauses (bounded: about 1.5 s) before answering 502."""
        last_error = ""
        for pause in (0.0, *RETRY_PAUSES_S):
            if pause:
                await asyncio.sleep(pause)
            for name in self.failover_order(chosen):
                upstream = self.upstreams.get(name)
                if upstream is None:  # removed by a new configuration meanwhile
                    continue
                try:
                    return await self.counted(upstream, request, request_id), name
                except UNREACHABLE as error:
                    last_error = f"{name}: {error}"
        return respond(502, {"error": "no version could answer", "detail": last_error}), None

    def failover_order(self, chosen: str) -> list[str]:
        """The upstreams a request for ``chosen`` may go to, in order: ``chosen``, the other
        versions of the split, then the others that are not retired (a warm standby first).
        Never the shadow outside the split: its answers are never returned."""
        split = [name for name, _ in self.weights]
        shadow = self.shadow[0] if self.shadow else None
        spare = sorted(
            (name for name in self.upstreams if name not in split and name != shadow),
            key=lambda name: name not in self.standby,
        )
        order = dict.fromkeys([chosen, *split, *spare])  # in order, once each
        return [
            name
            for name in order
            if (upstream := self.upstreams.get(name)) is not None and not upstream.retired
        ]

    async def counted(self, upstream: Upstream, request: Request, request_id: str) -> Response:
        started = time.perf_counter()
        upstream.inflight += 1
        error = True
        try:
            response = await forward(upstream, request, request_id)
            error = response.status >= 500
            return response
        finally:
            upstream.inflight -= 1
            upstream.counters.record((time.perf_counter() - started) * 1000, error)
            self.changed = True
            if upstream.retired and upstream.inflight == 0:
                for key, value in list(self.upstreams.items()):
                    if value is upstream:
                        del self.upstreams[key]

    async def timed(
        self, upstream: Upstream, request: Request, request_id: str
    ) -> tuple[Response | None, float]:
        started = time.perf_counter()
        try:
            response: Response | None = await self.counted(upstream, request, request_id)
        except (OSError, asyncio.IncompleteReadError, BadRequest):
            response = None
        return response, (time.perf_counter() - started) * 1000

    def compare(
        self, task: asyncio.Future[Any], request_id: str, live: Response, live_ms: float
    ) -> None:
        stats = self.shadow_stats
        stats["mirrored"] += 1
        shadow, shadow_ms = task.result()
        if shadow is None or shadow.status >= 500:
            stats["errors"] += 1
        agree = None
        if shadow is not None and live.status < 400:
            agree = same_answer(live.body, shadow.body)
            stats["compared"] += 1
            stats["agreed"] += int(agree)
        stats["live_ms_sum"] += live_ms
        stats["shadow_ms_sum"] += shadow_ms
        self.log(
            SHADOW_LOG,
            {
                "request_id": request_id,
                "t": time.time(),
                "live_status": live.status,
                "shadow_status": shadow.status if shadow else None,
                "live_ms": round(live_ms, 3),
                "shadow_ms": round(shadow_ms, 3),
                "agree": agree,
            },
        )
        self.changed = True

    # -- A/B feedback ----------------------------------------------------------------------
    def remember(self, request_id: str, arm: str, experiment: str | None) -> None:
        self.recent[request_id] = (arm, experiment)
        if len(self.recent) > RECENT_IDS:
            self.recent.popitem(last=False)

    def recall_requests(self) -> list[tuple[str, str, str | None]]:
        """The A/B requests at the end of the log (at most RECENT_IDS): feedback for requests
        answered before a restart is still taken. Read in a thread as the router serves."""
        found: list[tuple[str, str, str | None]] = []
        path = self.folder / AB_LOG
        try:
            with open(path, "rb") as handle:
                handle.seek(0, os.SEEK_END)
                size = handle.tell()
                handle.seek(max(0, size - RECALL_BYTES))
                tail = handle.read()
        except OSError:
            return found
        lines = tail.split(b"\n")
        if size > RECALL_BYTES:
            lines = lines[1:]  # the first one is cut
        for line in lines[-RECENT_IDS:]:
            try:
                record = json.loads(line)
                request_id, arm = record["request_id"], record["arm"]
            except (ValueError, KeyError, TypeError):
                continue
            if isinstance(request_id, str) and isinstance(arm, str):
                experiment = record.get("experiment")
                found.append((request_id, arm, experiment if isinstance(experiment, str) else None))
        return found

    def merge_recalled(self, recalled: list[tuple[str, str, str | None]]) -> None:
        """Recalled requests, older than any answered since the start."""
        since_start = self.recent
        self.recent = OrderedDict((rid, (arm, exp)) for rid, arm, exp in recalled)
        for request_id, known in since_start.items():
            self.recent.pop(request_id, None)
            self.recent[request_id] = known
        while len(self.recent) > RECENT_IDS:
            self.recent.popitem(last=False)

    def feedback(self, request: Request) -> Response:
        try:
            body = json.loads(request.body)
        except ValueError:
            return respond(
                400,
                {"error": 'the body must be JSON: {"request_id": ..., "reward": NUMBER}'},
            )
        if not isinstance(body, dict) or not isinstance(body.get("request_id"), str):
            return respond(400, {"error": "request_id (a string) is required"})
        outcome: float | None = None
        for key in ("reward", "label"):
            value = body.get(key)
            if isinstance(value, bool) or (
                isinstance(value, (int, float)) and math.isfinite(value)
            ):
                outcome = float(value)
                break
        if outcome is None:
            return respond(
                400, {"error": "reward (a finite number) or label (true/false, 0/1) is required"}
            )
        if "label" in body and "reward" not in body and outcome not in (0.0, 1.0):
            return respond(400, {"error": "label must be true/false or 0/1"})
        known = self.recent.get(body["request_id"])
        if known is None:
            return respond(
                404,
                {
                    "error": f"unknown request_id {body['request_id'][:64]!r}",
                    "hint": "send the X-Request-ID of an A/B response",
                },
            )
        arm, experiment = known
        self.log(
            FEEDBACK_LOG,
            {
                "request_id": body["request_id"],
                "arm": arm,
                "t": time.time(),
                "outcome": outcome,
                "kind": "label" if "label" in body and "reward" not in body else "reward",
                "experiment": experiment,
            },
        )
        return respond(200, {"ok": True, "arm": arm, "experiment": experiment})

    def log(self, name: str, record: dict[str, Any]) -> None:
        handle = self.logs.get(name)
        if handle is None:
            handle = self.logs[name] = open(self.folder / name, "a", encoding="utf-8")  # noqa: SIM115
        handle.write(json.dumps(record) + "\n")
        self.changed = True  # written out with the state, within half a second

    # -- state -----------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        versions: dict[str, Any] = {}
        for upstream in self.upstreams.values():
            entry = versions.setdefault(
                upstream.name,
                {
                    "inflight": 0,
                    "retired_inflight": 0,
                    **upstream.counters.to_dict(),
                    "port": upstream.port,
                },
            )
            if upstream.retired:
                entry["retired_inflight"] += upstream.inflight
            else:
                entry["inflight"] += upstream.inflight
        return {
            "name": self.name,
            "pid": os.getpid(),
            "generation": self.generation,
            "started_at": self.started_at,
            "weights": {n: b for n, b in self.weights},
            "mode": self.mode,
            "versions": versions,
            "shadow": dict(self.shadow_stats) if self.shadow else None,
            "buckets_ms": [b if b != math.inf else None for b in BUCKETS_MS],
        }

    def write_state(self) -> None:
        for handle in self.logs.values():
            handle.flush()
        path = self.folder / STATE
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.state()), encoding="utf-8")
        os.replace(temporary, path)
        self.changed = False

    async def keep_state(self, stopped: asyncio.Future[None]) -> None:
        while True:
            await asyncio.sleep(STATE_INTERVAL_S)
            if not self.folder.is_dir():  # the deployment (or NBDEPLOY_HOME) was deleted
                if not stopped.done():
                    stopped.set_result(None)
                return
            if self.standby:
                await asyncio.get_running_loop().run_in_executor(None, self.retire_expired_standby)
            if self.changed:
                self.write_state()


def upstream_secret(spec: dict[str, Any]) -> bytes | None:
    """The secret an upstream of ``router.json`` answers to (None: it checks none)."""
    secret = spec.get("secret")
    if not secret:
        return None
    if not isinstance(secret, str) or not SECRET_PATTERN.fullmatch(secret):
        raise ValueError(f"the secret of upstream {spec.get('port')} is not a header value")
    return secret.encode("ascii")


async def linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """After answering a request whose body stays unread: half-close, then discard what the
    client still sends (never keeping it) until it closes, for LINGER_S at most. Closing a
    socket with unread data resets the connection, which may lose the answer on its way."""
    with contextlib.suppress(OSError, RuntimeError):
        if writer.can_write_eof():
            writer.write_eof()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + LINGER_S
    with contextlib.suppress(OSError, asyncio.TimeoutError):
        while (left := deadline - loop.time()) > 0:
            if not await asyncio.wait_for(reader.read(64 * 1024), left):
                return  # the client closed


async def forward(upstream: Upstream, request: Request, request_id: str) -> Response:
    lines = [request.method + b" " + request.target + b" HTTP/1.1"]
    for key, value in request.headers:
        # A client's own X-Nbdeploy-Upstream is dropped: only the router's may reach a version.
        if key not in HOP_BY_HOP and key not in (b"x-request-id", UPSTREAM_HEADER_KEY):
            lines.append(key + b": " + value)
    lines.append(b"Content-Length: " + str(len(request.body)).encode())
    lines.append(b"X-Request-ID: " + request_id.encode())
    if upstream.secret:
        lines.append(UPSTREAM_HEADER.encode("latin-1") + b": " + upstream.secret)
    payload = b"\r\n".join(lines) + b"\r\n\r\n" + request.body
    while True:
        connection = upstream.take_idle()
        reused = connection is not None
        if connection is None:
            connection = await asyncio.open_connection(
                upstream.host, upstream.port, limit=HEAD_LIMIT
            )
        reader, writer = connection
        try:
            writer.write(payload)
            await writer.drain()
            response = await read_response(reader)
        except (OSError, asyncio.IncompleteReadError):
            writer.close()
            if reused:
                # The version closed a kept-alive connection (its keep-alive timeout ran
                # out, or it restarted): the others are as old; a fresh one, once.
                upstream.close_idle()
                continue
            raise
        if response.status == 403 and REFUSED_MARK in response.headers:
            writer.close()
            raise Misrouted(f"the server on port {upstream.port} refused the router's secret")
        if response.close or upstream.retired:
            writer.close()
        else:
            upstream.idle.append((reader, writer, time.monotonic()))
        return response


async def run(folder: Path) -> None:
    router = Router(folder)
    router.reload()
    config = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
    listen = config["listen"]
    inherited = os.environ.get(LISTEN_FD_ENV)
    if inherited:
        # The daemon holds the address across our restarts (connections wait in the
        # backlog meanwhile) and hands us the socket.
        server = await asyncio.start_server(
            router.client, sock=socket.socket(fileno=int(inherited)), limit=HEAD_LIMIT
        )
    else:
        server = await asyncio.start_server(
            router.client,
            listen["host"].strip("[]"),
            int(listen["port"]),
            limit=HEAD_LIMIT,
            reuse_address=True,
            backlog=2048,
        )
    loop = asyncio.get_running_loop()
    stopped = loop.create_future()

    def reload() -> None:
        try:
            router.reload()
        except (OSError, ValueError, KeyError) as error:
            print(f"nbdeploy router: configuration not applied: {error}", flush=True)
        router.write_state()

    loop.add_signal_handler(signal.SIGHUP, reload)

    def stop() -> None:
        if not stopped.done():
            stopped.set_result(None)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop)
    router.write_state()
    keeper = asyncio.ensure_future(router.keep_state(stopped))
    recalling = loop.run_in_executor(None, router.recall_requests)
    recalling.add_done_callback(
        lambda done: router.merge_recalled(done.result()) if not done.exception() else None
    )
    print(f"nbdeploy router: {router.name} on {listen['host']}:{listen['port']}", flush=True)
    await stopped
    server.close()
    router.stopping = True
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while any(u.inflight for u in router.upstreams.values()) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    keeper.cancel()
    with contextlib.suppress(OSError):
        router.write_state()


def main() -> None:
    try:
        import uvloop  # about a quarter less CPU per proxied request

        uvloop.run(run(Path(sys.argv[1])))
    except ImportError:
        asyncio.run(run(Path(sys.argv[1])))


if __name__ == "__main__":
    main()
