"""What every benchmark here shares: its errors, progress log, and finding and ending the
processes it started (each carries a token in its environment, which children inherit, so
that leftovers are found whatever their session or parent)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

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


# --- wrk ---------------------------------------------------------------------------------


@dataclass
class WrkResult:
    """What one wrk run measured."""

    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    non2xx: int  # wrk's "Non-2xx or 3xx responses" (status >= 400)
    socket_errors: dict[str, int]
    counts: dict[str, Any] = field(default_factory=dict)  # from the counting Lua script

    @property
    def failed(self) -> int:
        """Non-2xx answers (the larger of wrk's count and the script's) and socket errors."""
        return max(self.non2xx, int(self.counts.get("bad", 0))) + sum(self.socket_errors.values())

    @property
    def min_second_rps(self) -> int | None:
        """The fewest answers in any whole second (the first and last seconds are partial)."""
        per_second = self.counts.get("seconds") or {}
        counts = [per_second[k] for k in sorted(per_second, key=int)][1:-1]
        return min(counts) if counts else None

    def summary(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "requests": self.requests,
            "seconds": round(self.seconds, 2),
            "rps": round(self.rps, 1),
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "non2xx": self.non2xx,
            "socket_errors": self.socket_errors,
        }
        if self.counts:
            data["min_second_rps"] = self.min_second_rps
            per_second = self.counts.get("seconds") or {}
            data["answers_per_second"] = [per_second[k] for k in sorted(per_second, key=int)]
            data["answers_by_version"] = self.counts.get("versions", {})
            data["answers_by_status"] = self.counts.get("statuses", {})
        return data


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _duration_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        raise BenchError(f"wrk printed a duration I cannot read: {text!r}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def parse_wrk(out: str) -> WrkResult:
    def find(pattern: str) -> re.Match[str]:
        match = re.search(pattern, out)
        if match is None:
            raise BenchError(f"no {pattern!r} in wrk's output:\n{tail(out)}")
        return match

    total = find(r"(\d+) requests in ([\d.]+(?:us|ms|s|m)),")
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    counts: dict[str, Any] = {}
    marked = re.search(r"^BENCH-COUNTS (.*)$", out, re.MULTILINE)
    if marked is not None:
        counts = json.loads(marked.group(1))
    return WrkResult(
        requests=int(total.group(1)),
        seconds=_duration_ms(total.group(2)) / 1000,
        rps=float(find(r"Requests/sec:\s+([\d.]+)").group(1)),
        p50_ms=round(_duration_ms(find(r"50%\s+([\d.]+(?:us|ms|s|m))").group(1)), 3),
        p99_ms=round(_duration_ms(find(r"99%\s+([\d.]+(?:us|ms|s|m))").group(1)), 3),
        non2xx=int(non2xx.group(1)) if non2xx else 0,
        socket_errors=dict(
            zip(
                ("connect", "read", "write", "timeout"),
                (int(g) for g in socket.groups()) if socket else (0, 0, 0, 0),
                strict=True,
            )
        ),
        counts=counts,
    )
