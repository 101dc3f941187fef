"""Progress of a notebook run: cells executed, the current cell's first line, live output.

The runner reports to a :class:`Progress`; the terminal gets a tqdm bar (plain lines when
stderr is not a terminal, as in CI logs), a notebook gets an ipywidgets bar
(:mod:`nbdeploy.widgets.progress`), sweeps get one line per finished run.

Every progress ends exactly once, whatever happens: wrap the work in :func:`ending`, which
ends it as failed (with a short reason) or interrupted when an exception leaves the block,
also one raised before the work started (a bad parameter value, an unknown kernel).
"""

from __future__ import annotations

import sys
import threading
from types import TracebackType
from typing import Protocol, TextIO

REASON_MAX_CHARS = 160


EPILOGUE_LABEL = "(nbdeploy: deploy step)"  # what progress shows for the epilogue cell


class Progress(Protocol):
    def start(self, label: str, total_cells: int) -> None: ...

    def cell_started(self, position: int, cell_number: int, first_line: str) -> None: ...

    def output(self, text: str, stream: str) -> None: ...

    def finish(self, ok: bool, summary: str, interrupted: bool = False) -> None: ...


class EndingProgress:
    """A :class:`Progress` that passes the first ``finish`` on and ignores later ones; as a
    context manager it ends the progress when the block leaves without having ended it:
    failed with the exception's reason, interrupted on Ctrl-C, "done" otherwise."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.ended = False
        self._lock = threading.Lock()

    def start(self, label: str, total_cells: int) -> None:
        if not self.ended:
            self.progress.start(label, total_cells)

    def cell_started(self, position: int, cell_number: int, first_line: str) -> None:
        if not self.ended:
            self.progress.cell_started(position, cell_number, first_line)

    def output(self, text: str, stream: str) -> None:
        self.progress.output(text, stream)

    def finish(self, ok: bool, summary: str, interrupted: bool = False) -> None:
        with self._lock:
            if self.ended:
                return
            self.ended = True
        self.progress.finish(ok, summary, interrupted)

    def __enter__(self) -> EndingProgress:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if error is None:
            self.finish(True, "done")
        elif isinstance(error, KeyboardInterrupt):
            self.finish(False, "interrupted", interrupted=True)
        else:
            self.finish(False, failure_reason(error))


def ending(progress: Progress) -> EndingProgress:
    """``with ending(progress) as tracked: ... run(progress=tracked)``: the progress ends on
    every path out of the block (see :class:`EndingProgress`)."""
    return progress if isinstance(progress, EndingProgress) else EndingProgress(progress)


def failure_reason(error: BaseException) -> str:
    """A short reason for a progress that ended by ``error``: the first line of an
    nbdeploy error's message (it names what was wrong), else the exception's type and
    message, cut to :data:`REASON_MAX_CHARS`."""
    from nbdeploy.errors import NbdeployError

    if isinstance(error, NbdeployError):
        text = error.message
    else:
        text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    return shorten(text.strip().splitlines()[0] if text.strip() else type(error).__name__)


def shorten(text: str, limit: int = REASON_MAX_CHARS) -> str:
    """``text`` on one line, cut with an ellipsis past ``limit`` characters."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1].rstrip() + "…"


class NullProgress:
    """Reports nothing (library use, parallel sweeps)."""

    def start(self, label: str, total_cells: int) -> None:
        pass

    def cell_started(self, position: int, cell_number: int, first_line: str) -> None:
        pass

    def output(self, text: str, stream: str) -> None:
        pass

    def finish(self, ok: bool, summary: str, interrupted: bool = False) -> None:
        pass


class LiveOutput(NullProgress):
    """Streams cell output as it arrives and nothing else (parallel sweeps with --log-output)."""

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix

    def output(self, text: str, stream: str) -> None:
        target = sys.stderr if stream == "stderr" else sys.stdout
        for line in text.splitlines():
            target.write(f"{self.prefix}{line}\n")
        target.flush()


class TerminalProgress:
    """A tqdm bar on stderr; one plain line per cell when stderr is not a terminal."""

    def __init__(self, stream: TextIO | None = None, log_output: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.log_output = log_output
        self.interactive = self.stream.isatty()
        self._bar = None
        self._total = 0
        self._label = ""
        self._lock = threading.Lock()

    def start(self, label: str, total_cells: int) -> None:
        self._label, self._total = label, total_cells
        if self.interactive:
            from tqdm import tqdm

            self._bar = tqdm(
                total=total_cells,
                unit="cell",
                desc=label,
                file=self.stream,
                leave=True,
                bar_format="{desc} {bar} {n_fmt}/{total_fmt} [{elapsed}] {postfix}",
            )

    def cell_started(self, position: int, cell_number: int, first_line: str) -> None:
        if self._bar is not None:
            self._bar.n = position - 1
            self._bar.set_postfix_str(f"cell {cell_number}: {first_line}")
        else:
            self.stream.write(f"[{position}/{self._total}] cell {cell_number}: {first_line}\n")
            self.stream.flush()

    def output(self, text: str, stream: str) -> None:
        if not self.log_output:
            return
        with self._lock:
            target = sys.stderr if stream == "stderr" else sys.stdout
            if self._bar is not None:
                self._bar.clear()
            target.write(text if text.endswith("\n") else text + "\n")
            target.flush()
            if self._bar is not None:
                self._bar.refresh()

    def finish(self, ok: bool, summary: str, interrupted: bool = False) -> None:
        if self._bar is not None:
            if ok:
                self._bar.n = self._total
                self._bar.set_postfix_str("done")
            else:
                self._bar.set_postfix_str("interrupted" if interrupted else "failed")
            self._bar.close()
            self._bar = None
