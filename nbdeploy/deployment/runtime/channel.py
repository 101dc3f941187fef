"""Private Unix sockets inside NBDEPLOY_HOME: how nbdeploy's own processes talk.

The socket lives in ``NBDEPLOY_HOME/run`` (mode 0700, owned by the user). Both ends check
the other: the listener accepts only peers of its own uid (``SO_PEERCRED``), and a client
refuses a folder or socket that another user owns or can write, and a listener of another
uid, before it sends anything (a request may carry the caller's environment).

Unix socket paths are limited to about 100 bytes, and NBDEPLOY_HOME can be deeper than
that: a long path is reached through the folder's descriptor (``/proc/self/fd/N/NAME``)
on Linux. Messages are JSON, one per line.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nbdeploy.errors import NbdeployError

RUN_DIR = "run"
MAX_DIRECT_PATH = 100  # sun_path holds 108 bytes on Linux, 104 on macOS
LINE_LIMIT = 16 << 20


class ChannelError(NbdeployError):
    """The other end is missing, not ours, or broke the protocol."""

    exit_code = 1


def run_dir(home: Path) -> Path:
    """``HOME/run``, created 0700; refused when it belongs to another user."""
    folder = home / RUN_DIR
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = folder.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise ChannelError(f"{folder} is not a folder of this user", "remove it and try again")
    if stat.S_IMODE(info.st_mode) != 0o700:
        os.chmod(folder, 0o700)
    return folder


@contextlib.contextmanager
def _short(path: Path) -> Iterator[str]:
    """A path of ``path`` short enough for a Unix socket address."""
    text = str(path)
    if len(text.encode()) <= MAX_DIRECT_PATH or not Path("/proc/self/fd").is_dir():
        yield text
        return
    descriptor = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{descriptor}/{path.name}"
    finally:
        os.close(descriptor)


def listen(path: Path, backlog: int = 128) -> socket.socket:
    """A listening socket at ``path`` (mode 0600) in a private folder."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # left by a process that died; the caller's lock says none runs
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with _short(path) as address:
        listener.bind(address)
    os.chmod(path, 0o600)
    listener.listen(backlog)
    return listener


def check_private(path: Path) -> None:
    """Refuse a socket (or its folder) that another user owns or may write."""
    for item in (path.parent, path):
        info = item.lstat()
        if info.st_uid != os.getuid():
            raise ChannelError(f"{item} belongs to another user: not talking to it")
        if stat.S_IMODE(info.st_mode) & 0o077:
            raise ChannelError(f"{item} is open to other users: not talking to it")


def connect(path: Path, timeout: float) -> socket.socket:
    """A connection to the listener at ``path``, checked to be ours at both ends."""
    try:
        check_private(path)
    except FileNotFoundError as error:
        raise ChannelError(f"nothing listens at {path}") from error
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    connection.settimeout(timeout)
    try:
        with _short(path) as address:
            connection.connect(address)
        if not same_user(connection):
            raise ChannelError(f"the process at {path} runs as another user: not talking to it")
    except BaseException:
        connection.close()
        raise
    return connection


def same_user(connection: socket.socket) -> bool:
    """The peer runs as this user (where the platform tells; elsewhere the folder's mode
    protects the socket)."""
    if not hasattr(socket, "SO_PEERCRED"):
        return True
    credentials = connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
    _pid, uid, _gid = struct.unpack("3i", credentials)
    return bool(uid == os.getuid())


def peer_pid(connection: socket.socket) -> int | None:
    if not hasattr(socket, "SO_PEERCRED"):
        return None
    credentials = connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
    return int(struct.unpack("3i", credentials)[0])


def send(connection: socket.socket, message: dict[str, Any]) -> None:
    connection.sendall(json.dumps(message, default=str).encode() + b"\n")


class LineReader:
    """Reads one JSON message per line from a connection (keeps what follows a line)."""

    def __init__(self, connection: socket.socket) -> None:
        self.connection = connection
        self.buffer = bytearray()

    def line(self) -> bytes | None:
        """The next line without its newline; None at the end of the stream."""
        while b"\n" not in self.buffer:
            chunk = self.connection.recv(65536)
            if not chunk:
                return None
            self.buffer += chunk
            if len(self.buffer) > LINE_LIMIT:
                raise ChannelError("a message longer than the limit")
        line, _, rest = bytes(self.buffer).partition(b"\n")
        self.buffer = bytearray(rest)
        return line

    def message(self) -> dict[str, Any] | None:
        line = self.line()
        if line is None:
            return None
        try:
            value = json.loads(line)
        except ValueError as error:
            raise ChannelError(f"not a JSON message: {line[:80]!r}") from error
        if not isinstance(value, dict):
            raise ChannelError("a message must be a JSON object")
        return value
