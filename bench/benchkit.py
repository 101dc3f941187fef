"""What every benchmark here shares: its errors, progress log, and finding and ending the
processes it started (each carries a token in its environment, which children inherit, so
that leftovers are found whatever their session or parent)."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Sequence

TOKEN_ENV = "NBDEPLOY_BENCH_TOKEN"


class BenchError(Exception):
    """A measurement failed: nothing is reported for it."""


def log(message: str) -> None:
    """Progress goes to stderr, so that with --json stdout ends with the JSON line."""
    print(message, file=sys.stderr, flush=True)


def tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def marked_pids(token: str) -> list[int]:
    """Live processes, other than this one, whose environment carries the token (Linux
    /proc)."""
    needle = f"{TOKEN_ENV}={token}".encode()
    found: list[int] = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                environ = handle.read()
            with open(f"/proc/{entry}/stat", "rb") as handle:
                state = handle.read().rsplit(b")", 1)[1].split()[0]
        except (OSError, IndexError):  # gone meanwhile, or not ours to read
            continue
        if state != b"Z" and needle in environ.split(b"\0"):
            found.append(int(entry))
    return found


def end_processes(pids: Sequence[int], grace: float = 10.0) -> None:
    """Terminate, then kill after ``grace`` seconds, the given processes (all started by
    the benchmark)."""
    import psutil

    processes = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            processes.append(psutil.Process(pid))
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.terminate()
    _, alive = psutil.wait_procs(processes, timeout=grace)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(alive, timeout=5)


def base_environment(token: str) -> dict[str, str]:
    """The caller's environment without anything that would point nbdeploy, MLflow,
    BentoML or Jupyter at state outside this run, and with the token."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("NBDEPLOY_", "MLFLOW_", "BENTOML_", "JPY_"))
    }
    env[TOKEN_ENV] = token
    return env
