"""ipywidgets progress bars for runs started from a notebook (``%deploy run``): one bar
for a run, one bar per run of a sweep or step of a pipeline.

Updated from the thread that executes the run; ipykernel sends widget updates from any
thread. The bar always ends (see :func:`nbdeploy.pipeline.progress.ending`): green and
full when the run succeeded, red with the reason when it failed (also before any kernel
started), amber when it was interrupted.
"""

from __future__ import annotations

import html
import threading
from typing import Any

from nbdeploy.pipeline.progress import EndingProgress, NullProgress, ending, shorten

# bar_style and description of a bar that ended, by how it ended
ENDED_SUCCEEDED = ("success", "done")
ENDED_FAILED = ("danger", "failed")
ENDED_INTERRUPTED = ("warning", "interrupted")


class WidgetProgress:
    """Cells executed, the current cell's first line, and (optionally) live output."""

    def __init__(self, title: str, log_output: bool = False, show: bool = True) -> None:
        import ipywidgets as widgets
        from IPython.display import display

        self.log_output = log_output
        self._lock = threading.Lock()
        self.bar = widgets.IntProgress(value=0, min=0, max=1, description="", bar_style="info")
        self.title = widgets.HTML(value=f"<b>{html.escape(title)}</b>")
        self.label = widgets.Label(value="starting kernel…")
        self.output_area: Any = widgets.Output() if log_output else None
        children: list[Any] = [widgets.HBox([self.title, self.bar, self.label])]
        if self.output_area is not None:
            children.append(self.output_area)
        self.box = widgets.VBox(children)
        if show:
            display(self.box)

    def start(self, label: str, total_cells: int) -> None:
        self.bar.max = max(1, total_cells)
        self.bar.value = 0
        self.label.value = "running…"

    def cell_started(self, position: int, cell_number: int, first_line: str) -> None:
        self.bar.value = position - 1
        self.label.value = f"{position}/{self.bar.max} · cell {cell_number}: {first_line}"

    def output(self, text: str, stream: str) -> None:
        if self.output_area is None:
            return
        with self._lock:
            if stream == "stderr":
                self.output_area.append_stderr(text)
            else:
                self.output_area.append_stdout(text)

    def finish(self, ok: bool, summary: str, interrupted: bool = False) -> None:
        style, word = ENDED_SUCCEEDED if ok else ENDED_INTERRUPTED if interrupted else ENDED_FAILED
        # A full bar in the outcome's colour: a red bar at 0 % (a failure before the first
        # cell) would not show at all. How far the run got is in the summary.
        self.bar.value = self.bar.max
        self.bar.bar_style = style
        self.bar.description = word
        self.label.value = shorten(summary)
        self.label.tooltip = summary


# A deploy's steps, recognized by the start of what it says: the version is written and
# built, its server started, then traffic routed to it.
DEPLOY_STEPS = (
    ("unchanged since", 1),
    ("building", 1),
    ("requirements", 1),
    ("starting", 2),
    ("moving", 2),
)
DEPLOY_STEP_COUNT = 3


class DeployProgress(WidgetProgress):
    """The bar of ``%deploy``: capture, build, start, route. Its ``note`` is the deploy's
    ``notify``: each message moves the bar to its step, shows as the label and is
    printed as before (the notices among them must stay readable)."""

    def __init__(self, title: str, echo: Any = None) -> None:
        super().__init__(title)
        self.echo = echo
        self.start(title, DEPLOY_STEP_COUNT)
        self.label.value = "capturing the function and its objects…"

    def note(self, message: str) -> None:
        step = next((n for prefix, n in DEPLOY_STEPS if message.startswith(prefix)), 0)
        if step:
            self.bar.value = max(self.bar.value, step)
        self.label.value = shorten(message)
        if self.echo is not None:
            self.echo(message)


class WidgetProgressGroup(NullProgress):
    """Bars for a sweep or a pipeline: each run (or step) gets its bar when it starts
    (``progress_for``). Ending the group ends the bars still open the same way, so that a
    sweep stopped by an error or Ctrl-C leaves no bar running."""

    def __init__(self, title: str, log_output: bool = False, show: bool = True) -> None:
        import ipywidgets as widgets
        from IPython.display import display

        self.log_output = log_output
        self.bars: list[EndingProgress] = []
        self._lock = threading.Lock()
        self.box = widgets.VBox([widgets.HTML(value=f"<b>{html.escape(title)}</b>")])
        if show:
            display(self.box)

    def bar_for(self, key: Any, *rest: Any) -> EndingProgress:
        """A sweep's ``progress_for(index, combination)`` or a pipeline's
        ``progress_for(step)``."""
        if rest and isinstance(rest[0], dict):
            values = ", ".join(f"{name}={value}" for name, value in rest[0].items())
            title = f"run {int(key) + 1}: {values}"
        else:
            title = str(key)
        bar = WidgetProgress(title, log_output=self.log_output, show=False)
        tracked = ending(bar)
        with self._lock:
            self.bars.append(tracked)
            self.box.children = (*self.box.children, bar.box)
        return tracked

    def finish(self, ok: bool, summary: str, interrupted: bool = False) -> None:
        with self._lock:
            open_bars = [bar for bar in self.bars if not bar.ended]
        for bar in open_bars:
            bar.finish(ok, summary, interrupted)
