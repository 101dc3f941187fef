"""One fire of a schedule, as a process of its own: runs the scheduled nbdeploy command and
records the fire's end itself.

The daemon starts it (in a session of its own, in the schedule's folder) for each attempt,
with ``NBDEPLOY_TRIGGER_RUN`` set to the fire's run id, so the runs the command makes are
linked to the fire. Because this process writes the fire's end (succeeded, or failed with
the exit code and the last lines of the log), a fire outlives a daemon that is stopped or
killed: the next daemon finds it running, watches it, and reads its end from the store.
A fire the daemon ended on purpose (replaced, stopped) keeps that status.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

# The nbdeploy console script, without the current folder on sys.path (a notebook folder
# may hold a module named like one nbdeploy imports).
CLI_BOOTSTRAP = "import sys; del sys.path[0]; from nbdeploy.cli import run; run()"
TAIL_LINES = 20
POLL_SECONDS = 0.2


def tail(path: Path, lines: int = TAIL_LINES) -> list[str]:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 32 * 1024))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    return text.splitlines()[-lines:]


def main(argv: list[str] | None = None) -> int:
    """``fire.py RUN_ID LOG -- COMMAND...``"""
    words = list(sys.argv[1:] if argv is None else argv)
    run_id, log, command = words[0], Path(words[1]), words[3:]
    from nbdeploy.private_files import open_private, restrict_umask

    restrict_umask()
    started = time.time()
    with open_private(log, "ab") as handle:
        handle.write(f"$ nbdeploy {' '.join(command)}\n".encode())
        handle.flush()
        child = subprocess.Popen(
            [sys.executable, "-c", CLI_BOOTSTRAP, *command],
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )

    def forward(signum: int, frame: FrameType | None) -> None:
        if child.poll() is None:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while True:  # a scheduled command may run for hours: bounded by the command itself
        try:
            code = child.wait(POLL_SECONDS)
            break
        except subprocess.TimeoutExpired:
            continue
    _record_end(run_id, code, log, time.time() - started)
    return 0


def _record_end(run_id: str, code: int, log: Path, seconds: float) -> None:
    from nbdeploy.schedule.store import ScheduleStore
    from nbdeploy.store import default_store

    if code == 0:
        status, error = "succeeded", None
    else:
        how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
        error = {
            "kind": "failed",
            "exit_code": code,
            "message": f"the command failed ({how}) after {seconds:.1f} s; its log: {log}",
            "log_tail": tail(log),
        }
        status = "failed"
    ScheduleStore(default_store()).end_fire(run_id, status, error)


if __name__ == "__main__":
    sys.exit(main())
