"""The HTTP/1.1 the router speaks: reading requests and responses from asyncio streams
(Content-Length and chunked bodies), writing them back, JSON answers of its own.

A request is read in two steps, its head and then its body, so that the router can refuse
it (a missing API key) before it reads a byte of a body that may be hundreds of MiB."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

HEAD_LIMIT = 64 * 1024
BODY_LIMIT = 256 * 1024 * 1024
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
    }
)
REASONS = {
    400: b"Bad Request",
    401: b"Unauthorized",
    404: b"Not Found",
    413: b"Payload Too Large",
    431: b"Request Header Fields Too Large",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    200: b"OK",
}


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Request:
    method: bytes
    target: bytes
    version: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    @property
    def path(self) -> str:
        return self.target.split(b"?", 1)[0].decode("latin-1")

    @property
    def keep_alive(self) -> bool:
        connection = (self.header(b"connection") or b"").lower()
        if self.version == b"HTTP/1.0":
            return connection == b"keep-alive"
        return connection != b"close"


@dataclass
class Response:
    status: int
    status_line: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    close: bool = False


async def read_request_head(reader: asyncio.StreamReader) -> Request | None:
    """A request's line and headers; its body, still unread, is left empty (:func:`read_body`
    reads it). None when the client closed the connection between requests."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as error:
        if error.partial.strip():
            raise BadRequest(400, "incomplete request") from None
        return None
    except asyncio.LimitOverrunError:
        raise BadRequest(431, "request headers too large") from None
    lines = head[:-4].split(b"\r\n")
    try:
        method, target, version = lines[0].split(b" ", 2)
    except ValueError:
        raise BadRequest(400, "malformed request line") from None
    return Request(method, target, version, parse_headers(lines[1:]), b"")


def declares_body(headers: list[tuple[bytes, bytes]]) -> bool:
    """The request's head announces a body (which the router has then not read yet)."""
    lookup = dict(headers)
    if b"chunked" in lookup.get(b"transfer-encoding", b"").lower():
        return True
    return lookup.get(b"content-length", b"0").strip() not in (b"", b"0")


def parse_headers(lines: list[bytes]) -> list[tuple[bytes, bytes]]:
    headers = []
    for line in lines:
        key, separator, value = line.partition(b":")
        if not separator:
            raise BadRequest(400, "malformed header line")
        headers.append((key.strip().lower(), value.strip()))
    return headers


async def read_body(reader: asyncio.StreamReader, headers: list[tuple[bytes, bytes]]) -> bytes:
    lookup = dict(headers)
    if b"chunked" in lookup.get(b"transfer-encoding", b"").lower():
        chunks: list[bytes] = []
        size_total = 0
        while True:
            line = await reader.readuntil(b"\r\n")
            try:
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
            except ValueError:
                raise BadRequest(400, "bad chunk size") from None
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass  # trailers: dropped
                return b"".join(chunks)
            size_total += size
            if size_total > BODY_LIMIT:
                raise BadRequest(413, "body too large")
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)
    length = lookup.get(b"content-length")
    if not length:
        return b""
    try:
        size = int(length)
    except ValueError:
        raise BadRequest(400, "bad Content-Length") from None
    if size < 0 or size > BODY_LIMIT:
        raise BadRequest(413, "body too large")
    return await reader.readexactly(size)


async def read_response(reader: asyncio.StreamReader) -> Response:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head[:-4].split(b"\r\n")
    status_line = lines[0]
    status = int(status_line.split(b" ", 2)[1])
    headers = parse_headers(lines[1:])
    body = await read_body(reader, headers) if status not in (204, 304) else b""
    close = (dict(headers).get(b"connection") or b"").lower() == b"close"
    kept = [(k, v) for k, v in headers if k not in HOP_BY_HOP]
    return Response(status, status_line, kept, body, close)


def encode(response: Response, keep_alive: bool) -> bytes:
    lines = [b"HTTP/1.1 " + response.status_line.split(b" ", 1)[1]]
    lines += [key + b": " + value for key, value in response.headers]
    lines.append(b"Content-Length: " + str(len(response.body)).encode())
    lines.append(b"Connection: keep-alive" if keep_alive else b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + response.body


def respond(
    status: int, payload: Any, headers: list[tuple[bytes, bytes]] | None = None
) -> Response:
    body = json.dumps(payload).encode()
    reason = REASONS.get(status, b"Error")
    return Response(
        status,
        b"HTTP/1.1 " + str(status).encode() + b" " + reason,
        [(b"Content-Type", b"application/json"), *(headers or [])],
        body,
    )


def simple(status: int, payload: Any, close: bool) -> bytes:
    return encode(respond(status, payload), keep_alive=not close)


def same_answer(first: bytes, second: bytes) -> bool:
    if first == second:
        return True
    try:
        return bool(json.loads(first) == json.loads(second))
    except ValueError:
        return False
