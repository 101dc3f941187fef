"""Per-deployment locks: two deploys (or a deploy and a rollback) of one name never run at
once, whichever process starts them (a notebook, the CLI, CI). The lock is an advisory file
lock (``flock``), released by the kernel when its holder exits, so a crashed deploy never
leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from nbdeploy import config
from nbdeploy.errors import NbdeployError
from nbdeploy.private_files import open_private, private_dir

LOCK_TIMEOUT_ENV = "NBDEPLOY_LOCK_TIMEOUT"
DEFAULT_LOCK_TIMEOUT_SECONDS = 600.0


class DeploymentBusyError(NbdeployError):
    """Another process holds the deployment's lock for longer than we wait."""

    exit_code = 1


def lock_path(name: str) -> Path:
    return config.home() / "deployments" / name / ".lock"


@contextlib.contextmanager
def deployment_lock(
    name: str,
    notify: Callable[[str], None] = lambda message: None,
    timeout: float | None = None,
) -> Iterator[None]:
    """Hold ``name``'s lock; wait for another holder (saying so once), up to ``timeout``
    seconds (``NBDEPLOY_LOCK_TIMEOUT``, default 600), then refuse."""
    if timeout is None:
        timeout = float(os.environ.get(LOCK_TIMEOUT_ENV, DEFAULT_LOCK_TIMEOUT_SECONDS))
    path = lock_path(name)
    private_dir(path.parent)
    handle = open_private(path, "a+")  # held for the whole block
    try:
        deadline = time.monotonic() + timeout
        told = False
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = _holder(path)
                if time.monotonic() >= deadline:
                    raise DeploymentBusyError(
                        f"another deploy of {name!r} is in progress{holder}",
                        "wait for it to finish and try again "
                        f"(or raise {LOCK_TIMEOUT_ENV}, in seconds)",
                    ) from None
                if not told:
                    notify(f"waiting for another deploy of {name}{holder} to finish")
                    told = True
                time.sleep(0.2)
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield
    finally:
        handle.close()  # closing releases the lock


def _holder(path: Path) -> str:
    try:
        pid = path.read_text().strip()
    except OSError:
        return ""
    return f" (process {pid})" if pid.isdigit() else ""
