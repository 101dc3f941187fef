"""Progress of a notebook run: cells executed, the current cell's first line, live output.

The runner reports to a :class:`Progress`; the terminal gets a tqdm bar (plain lines when
stderr is not a terminal, as in CI logs), a notebook gets an ipywidgets bar
(:mod:`nbdeploy.widgets.progress`), sweeps get one line per finished run.
"""

from __future__ import annotations

import sys
import threading
from typing import Protocol, TextIO


class Progress(Protocol):
    def start(self, label: str, total_cells: int) -> None: ...

    def cell_started(self, position: int, cell_number: int, first_line: str) -> None: ...

    def output(self, text: str, stream: str) -> None: ...

    def finish(self, ok: bool, summary: str) -> None: ...


class NullProgress:
    """Reports nothing (library use, parallel sweeps)."""

    def start(self, label: str, total_cells: int) -> None:
        pass

    def cell_started(self, position: int, cell_number: int, first_line: str) -> None:
        pass

    def output(self, text: str, stream: str) -> None:
        pass

    def finish(self, ok: bool, summary: str) -> None:
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

    def finish(self, ok: bool, summary: str) -> None:
        if self._bar is not None:
            if ok:
                self._bar.n = self._total
                self._bar.set_postfix_str("done")
            self._bar.close()
            self._bar = None
