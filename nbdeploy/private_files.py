"""Owner-only folders and files under NBDEPLOY_HOME (issue 17).

NBDEPLOY_HOME holds request logs (inputs and predictions), pickled objects, the state store
and server logs: on a shared machine (a JupyterHub node) none of it may be readable by other
local users. :func:`nbdeploy.config.home` keeps the home itself at 0700, which protects
what third-party libraries write inside it; these helpers give what nbdeploy writes itself
explicit modes, so that a file stays private wherever it is copied or the home is opened up.

Processes nbdeploy starts as programs of their own call :func:`restrict_umask` first: all
they create is then private without further care. The user's own process (a notebook
kernel, the CLI) keeps its umask, so what it creates goes through these helpers.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path
from typing import IO, Any

DIR_MODE = 0o700
FILE_MODE = 0o600
PRIVATE_UMASK = 0o077
_SHARED_BITS = stat.S_IRWXG | stat.S_IRWXO  # what no file or folder of ours may have
# open() modes to os.open() flags; "b" and "t" only change what os.fdopen returns.
_FLAGS = {
    "r": os.O_RDONLY,
    "w": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
    "a": os.O_WRONLY | os.O_CREAT | os.O_APPEND,
    "x": os.O_WRONLY | os.O_CREAT | os.O_EXCL,
}


def restrict_umask() -> None:
    """Make everything this process (and the processes it starts) creates owner-only; for
    the ``main`` of the programs nbdeploy starts, never for a user's kernel."""
    os.umask(PRIVATE_UMASK)


def private_dir(path: Path | str) -> Path:
    """``path`` and any missing parent made with mode 0700 (``Path.mkdir`` gives parents the
    default mode); an existing folder is left as it is."""
    path = Path(path)
    missing = []
    for folder in (path, *path.parents):
        if folder.is_dir():
            break
        missing.append(folder)
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another process made it meanwhile
            folder.mkdir(mode=DIR_MODE)
    return path


def open_private(path: Path | str, mode: str = "ab", encoding: str | None = None) -> IO[Any]:
    """``open(path, mode)``, creating the file with mode 0600; an existing file of ours
    that others can read is made 0600 too (one fstat: cheap enough for every open)."""
    flags = _FLAGS[mode.replace("b", "").replace("t", "").replace("+", "")]
    if "+" in mode:
        flags = (flags & ~(os.O_WRONLY | os.O_RDONLY)) | os.O_RDWR
    descriptor = os.open(path, flags | getattr(os, "O_CLOEXEC", 0), FILE_MODE)
    try:
        _restrict_descriptor(descriptor)
        if "b" in mode:
            return os.fdopen(descriptor, mode)
        return os.fdopen(descriptor, mode, encoding=encoding or "utf-8")
    except BaseException:
        os.close(descriptor)
        raise


def create_private(path: Path | str) -> Path:
    """Make sure ``path`` exists as a file with mode 0600 (an empty one when it did not):
    for files another library opens afterwards (SQLite copies a database's mode to its
    -wal and -shm files)."""
    # Never opens an existing file: closing any descriptor of a file drops every POSIX
    # lock this process holds on it, and SQLite's connections in other threads hold some.
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
    except FileExistsError:
        make_private(path)
    return Path(path)


def write_private_bytes(path: Path | str, data: bytes) -> None:
    """Replace ``path`` atomically with ``data``, mode 0600 (``mkstemp`` creates it so):
    readers see the old content or the new one, never a part."""
    path = Path(path)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def write_private_text(path: Path | str, text: str) -> None:
    """:func:`write_private_bytes` of ``text`` in UTF-8."""
    write_private_bytes(path, text.encode("utf-8"))


def make_private(path: Path | str) -> None:
    """chmod an existing file of ours to 0600 (a folder to 0700) when others have any
    access; a missing path is fine (SQLite makes its -wal and -shm files only when it needs
    them), and another user's file is not ours to change."""
    with contextlib.suppress(FileNotFoundError):
        status = os.stat(path)
        if status.st_mode & _SHARED_BITS and status.st_uid == os.getuid():
            os.chmod(path, DIR_MODE if stat.S_ISDIR(status.st_mode) else FILE_MODE)


def _restrict_descriptor(descriptor: int) -> None:
    status = os.fstat(descriptor)
    if status.st_mode & _SHARED_BITS and status.st_uid == os.getuid():
        os.fchmod(descriptor, FILE_MODE)
