"""An ipywidgets progress bar for runs started from a notebook (``%deploy run``).

Updated from the thread that executes the run; ipykernel sends widget updates from any
thread.
"""

from __future__ import annotations

import threading
from typing import Any


class WidgetProgress:
    """Cells executed, the current cell's first line, and (optionally) live output."""

    def __init__(self, title: str, log_output: bool = False) -> None:
        import ipywidgets as widgets
        from IPython.display import display

        self.log_output = log_output
        self._lock = threading.Lock()
        self.bar = widgets.IntProgress(value=0, min=0, max=1, description="", bar_style="info")
        self.title = widgets.HTML(value=f"<b>{_escape(title)}</b>")
        self.label = widgets.Label(value="starting kernel…")
        self.output_area: Any = widgets.Output() if log_output else None
        children: list[Any] = [widgets.HBox([self.title, self.bar, self.label])]
        if self.output_area is not None:
            children.append(self.output_area)
        self.box = widgets.VBox(children)
        display(self.box)

    def start(self, label: str, total_cells: int) -> None:
        self.bar.max = max(1, total_cells)
        self.bar.value = 0

    def cell_started(self, position: int, cell_number: int, first_line: str) -> None:
        self.bar.value = position - 1
        self.label.value = f"{position}/{self.bar.max} · cell {cell_number}: {first_line}"

    def output(self, text: str, stream: str) -> None:
        if self.output_area is None:
            return
        with self._lock:
            self.output_area.append_stdout(
                text
            ) if stream != "stderr" else self.output_area.append_stderr(text)

    def finish(self, ok: bool, summary: str) -> None:
        if ok:
            self.bar.value = self.bar.max
        self.bar.bar_style = "success" if ok else "danger"
        self.label.value = summary


def _escape(text: str) -> str:
    import html

    return html.escape(text)
