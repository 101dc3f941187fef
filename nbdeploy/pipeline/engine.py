"""The papermill engine behind nbdeploy runs (imports papermill: load it lazily).

On top of papermill's nbclient engine it adds: cells tagged ``nbdeploy:skip`` are left out
and marked in the output; progress and live output go to a :class:`Progress`; one deadline
bounds the whole run; output is saved at most every few seconds rather than twice per
cell; a kernel started beforehand (overlapping this module's import) can be handed in;
Ctrl-C during a cell ends the run as interrupted, with the output notebook saved up to
that cell. Importing it registers papermill's ``nbdeploy`` engine in this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path, PurePath
from queue import Empty
from typing import Any

import nbformat
from jupyter_core.utils import ensure_async as _ensure_async
from nbclient.client import timestamp as _timestamp
from nbclient.exceptions import (
    CellExecutionComplete,
    CellExecutionError,
    CellTimeoutError,
    DeadKernelError,
)
from papermill.clientwrap import PapermillNotebookClient
from papermill.engines import Engine, NotebookExecutionManager, papermill_engines
from papermill.translators import PythonTranslator, papermill_translators
from papermill.utils import find_first_tagged_cell_index

from nbdeploy.notebook.parameters import json_safe
from nbdeploy.notebook.reader import INJECTED_TAG, PARAMETERS_TAG, SKIP_TAG, first_line
from nbdeploy.pipeline.progress import EPILOGUE_LABEL, NullProgress, Progress

SKIPPED_NOTE = "nbdeploy: cell skipped (tagged nbdeploy:skip)\n"
AUTOSAVE_SECONDS = 5.0
INTERRUPTED_NOTE = "interrupted (Ctrl-C) while this cell was running"
REPLY_SLICE_SECONDS = 1.0  # the longest single wait for a message from the kernel
KERNEL_UNRESPONSIVE_ENV = "NBDEPLOY_KERNEL_UNRESPONSIVE_S"
KERNEL_INFO_TIMEOUT_SECONDS = 30.0


@dataclass
class CellFailure:
    """Where and how a run failed. ``cell`` is 1-based in the notebook as the user wrote it."""

    cell: int
    first_line: str
    ename: str
    evalue: str
    kind: str = "error"  # error | timeout | kernel_died | interrupted

    def describe(self, notebook_name: str) -> str:
        where = f"{notebook_name}, cell {self.cell} ({self.first_line})"
        if self.kind in ("timeout", "interrupted"):
            return f"{where}: {self.evalue}"
        if self.kind == "kernel_died":
            return f"{where}: the kernel died while running this cell ({self.evalue})"
        return f"{where}: {self.ename}: {self.evalue}" if self.evalue else f"{where}: {self.ename}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "cell": self.cell,
            "first_line": self.first_line,
            "ename": self.ename,
            "evalue": self.evalue,
            "kind": self.kind,
        }


class NbdeployPythonTranslator(PythonTranslator):
    """papermill's Python translator, plus dates, date-times, paths and tuples, and dictionary
    keys of any of these types (papermill renders every key as a string).

    Values needing a class are built with ``__import__('module')`` so the injected cell
    neither needs an import nor rebinds a name of the user's (``Path``, ``datetime``)."""

    @classmethod
    def translate(cls, val: Any) -> str:
        if isinstance(val, PurePath):
            return f"__import__('pathlib').Path({cls.translate_str(str(val))})"
        if isinstance(val, dt.datetime):
            return f"__import__('datetime').datetime.fromisoformat({val.isoformat()!r})"
        if isinstance(val, dt.date):
            return f"__import__('datetime').date.fromisoformat({val.isoformat()!r})"
        if isinstance(val, tuple):
            items = ", ".join(cls.translate(item) for item in val)
            return f"({items},)" if len(val) == 1 else f"({items})"
        return str(super().translate(val))

    @classmethod
    def translate_dict(cls, val: dict[Any, Any]) -> str:
        items = ", ".join(f"{cls.translate(k)}: {cls.translate(v)}" for k, v in val.items())
        return f"{{{items}}}"


def inject_parameters(
    nb: nbformat.NotebookNode, values: dict[str, Any], kernel_name: str, language: str
) -> int:
    """Insert the ``injected-parameters`` cell after the ``parameters`` cell (papermill's
    layout), rendering values with papermill's translators. Returns its index, or -1."""
    if not values:
        return -1
    translator = (
        NbdeployPythonTranslator
        if language == "python"
        else papermill_translators.find_translator(kernel_name, language)
    )
    content = translator.codify(values, comment="Parameters injected by nbdeploy")
    cell = nbformat.v4.new_code_cell(source=content)
    cell.metadata["tags"] = [INJECTED_TAG]
    injected = find_first_tagged_cell_index(nb, INJECTED_TAG)
    if injected >= 0:
        nb.cells[injected] = cell
        index = int(injected)
    else:
        index = int(find_first_tagged_cell_index(nb, PARAMETERS_TAG)) + 1
        nb.cells.insert(index, cell)
    nb.metadata.setdefault("papermill", {})["parameters"] = json_safe(values)
    return index


class RunExecutionManager(NotebookExecutionManager):
    """papermill's execution manager, saving at most every few seconds and at the end."""

    def __init__(self, nb: nbformat.NotebookNode, output_path: str | None) -> None:
        super().__init__(nb, output_path=output_path, progress_bar=False, autosave_cell_every=0)
        self._last_write = 0.0

    def save(self, **kwargs: Any) -> None:
        finished = self.end_time is not None
        if not self.output_path:
            return
        if not finished and time.monotonic() - self._last_write < AUTOSAVE_SECONDS:
            return
        write_notebook_atomically(self.nb, Path(self.output_path))
        self._last_write = time.monotonic()


def write_notebook_atomically(nb: nbformat.NotebookNode, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            nbformat.write(nb, handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class RunNotebookClient(PapermillNotebookClient):
    """Executes cells like papermill's client, with skip tags, progress and a deadline."""

    def __init__(
        self,
        nb_man: RunExecutionManager,
        progress: Progress,
        deadline: float | None,
        run_timeout: float | None,
        injected_index: int,
        epilogue: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(nb_man, **kwargs)
        self.progress = progress
        self.deadline = deadline
        self.run_timeout = run_timeout
        self.injected_index = injected_index
        self.failure: CellFailure | None = None
        self._silent_since: float | None = None  # when the kernel's heartbeat stopped
        self.epilogue = epilogue
        self._runnable = 0

    def user_cell_number(self, index: int) -> int:
        """1-based position of a cell in the notebook as written; the injected cell counts as
        the parameters cell it follows."""
        if self.injected_index >= 0 and index >= self.injected_index:
            return index
        return index + 1

    def execute(self, **kwargs: Any) -> nbformat.NotebookNode:
        """papermill's ``execute``, but a kernel that timed out or died is not asked for its
        language info afterwards (it would not answer)."""
        self.reset_execution_trackers()
        with self.setup_kernel(**kwargs):
            self.papermill_execute_cells()
            if self.epilogue and self.failure is None:
                self._execute_epilogue()
            if self.failure is None or self.failure.kind == "error":
                info = self._language_info()
                if info is not None:
                    self.nb.metadata["language_info"] = info
            self.set_widgets_metadata()
        return self.nb

    def _language_info(self) -> dict[str, Any] | None:
        """The kernel's language info for the notebook's metadata, asked for in bounded
        slices like every other wait (an idle kernel answers at once); None, with a
        warning, when no answer comes within KERNEL_INFO_TIMEOUT_SECONDS."""
        from nbclient.util import run_sync

        assert self.kc is not None
        request = self.kc.kernel_info()
        deadline = time.monotonic() + KERNEL_INFO_TIMEOUT_SECONDS

        async def reply() -> dict[str, Any] | None:
            assert self.kc is not None
            while time.monotonic() < deadline:
                try:
                    msg = await _ensure_async(
                        self.kc.shell_channel.get_msg(timeout=_slice(deadline))
                    )
                except Empty:
                    self._check_heartbeat()
                    continue
                if msg["parent_header"].get("msg_id") == request:
                    info: dict[str, Any] = msg["content"].get("language_info") or {}
                    return info
            return None

        info = run_sync(reply)()
        if info is None:
            self.log.warning(
                "the kernel did not tell its language within %s s: the notebook's "
                "language_info is left as it was",
                KERNEL_INFO_TIMEOUT_SECONDS,
            )
        return info

    def _execute_epilogue(self) -> None:
        """Run extra code in the same kernel, as a last cell tagged ``nbdeploy:epilogue``."""
        cell = nbformat.v4.new_code_cell(source=self.epilogue or "")
        cell.metadata["tags"] = ["nbdeploy:epilogue"]
        cell.metadata["papermill"] = {"status": "pending"}
        self.nb.cells.append(cell)
        index = len(self.nb.cells) - 1
        self.progress.cell_started(self._runnable, index + 1, EPILOGUE_LABEL)
        try:
            self.nb_man.cell_start(cell, index)
            self.execute_cell(cell, index)
        except CellExecutionError as error:
            self.nb_man.cell_exception(cell, cell_index=index, exception=error)
            self.failure = self._failure_from_outputs(cell, index)
        except KeyboardInterrupt:
            self._interrupted(cell, index, index + 1)
        finally:
            self.nb_man.cell_complete(cell, cell_index=index)
        text = "".join(
            "".join(o.get("text", ""))
            for o in cell.get("outputs", [])
            if o.get("output_type") == "stream"
        )
        self.nb.metadata.setdefault("nbdeploy", {})["epilogue_output"] = text

    def papermill_execute_cells(self) -> None:
        cells = self.nb.cells
        runnable = [
            i
            for i, cell in enumerate(cells)
            if cell.cell_type == "code" and SKIP_TAG not in cell.metadata.get("tags", [])
        ]
        self._runnable = len(runnable)
        self.progress.start("", len(runnable))
        position = 0
        for index, cell in enumerate(cells):
            if cell.cell_type != "code":
                continue
            if SKIP_TAG in cell.metadata.get("tags", []):
                mark_skipped(cell)
                continue
            position += 1
            number = self.user_cell_number(index)
            label = first_line(cell)
            if index == self.injected_index:
                label = "parameters given: " + _assignments(cell.source)
            elif index == self.injected_index - 1:
                label = "parameters (defaults)"
            self.progress.cell_started(position, number, label)
            try:
                if self.deadline is not None:
                    remaining = self.deadline - time.monotonic()
                    if remaining <= 0:
                        raise CellTimeoutError("deadline reached before the cell started")
                    self.timeout = max(1, int(remaining + 0.999))
                self.nb_man.cell_start(cell, index)
                self.execute_cell(cell, index)
            except CellExecutionError as error:
                self.nb_man.cell_exception(cells[index], cell_index=index, exception=error)
                self.failure = self._failure_from_outputs(cells[index], number)
                break
            except CellTimeoutError:
                message = f"timed out after {_seconds(self.run_timeout)} s"
                cells[index].outputs.append(
                    nbformat.v4.new_output(
                        "error", ename="TimeoutError", evalue=message, traceback=[message]
                    )
                )
                self.nb_man.cell_exception(cells[index], cell_index=index)
                self.failure = CellFailure(
                    number, first_line(cell), "TimeoutError", message, "timeout"
                )
                break
            except DeadKernelError as error:
                self.nb_man.cell_exception(cells[index], cell_index=index)
                self.failure = CellFailure(
                    number, first_line(cell), "DeadKernelError", str(error), "kernel_died"
                )
                break
            except KeyboardInterrupt:
                self._interrupted(cells[index], index, number)
                break
            finally:
                self.nb_man.cell_complete(cells[index], cell_index=index)

    def _interrupted(self, cell: nbformat.NotebookNode, index: int, number: int) -> None:
        """Ctrl-C while ``cell`` ran: mark it in the output and end the run as interrupted
        (the caller kills the kernel: it may still be busy in the cell)."""
        _cancel_leftover_tasks()
        cell.setdefault("outputs", []).append(
            nbformat.v4.new_output(
                "error",
                ename="KeyboardInterrupt",
                evalue=INTERRUPTED_NOTE,
                traceback=[f"KeyboardInterrupt: {INTERRUPTED_NOTE}"],
            )
        )
        self.nb_man.cell_exception(cell, cell_index=index)
        self.failure = CellFailure(
            number, first_line(cell), "KeyboardInterrupt", INTERRUPTED_NOTE, "interrupted"
        )

    def _failure_from_outputs(self, cell: nbformat.NotebookNode, number: int) -> CellFailure:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                return CellFailure(
                    number, first_line(cell), output.get("ename", "Error"), output.get("evalue", "")
                )
        return CellFailure(number, first_line(cell), "CellExecutionError", "")

    # -- waiting for the kernel in bounded slices ------------------------------------------
    # nbclient's own waits for a cell's execute_reply and outputs block in get_msg without a
    # timeout; both are replaced here.
    # zmq can lose the wake-up of such a wait while the message is already queued (nbclient
    # issue 312): a notebook with widgets hung in about 1 run of 6, forever. Here each wait
    # lasts at most REPLY_SLICE_SECONDS; between slices the kernel must still be alive (its
    # process and its heartbeat), else the run ends as failed, with the cell named.
    async def _async_poll_for_reply(
        self,
        msg_id: str,
        cell: nbformat.NotebookNode,
        timeout: int | None,
        task_poll_output_msg: asyncio.Future[Any],
        task_poll_kernel_alive: asyncio.Future[Any],
    ) -> dict[str, Any]:
        assert self.kc is not None
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                msg: dict[str, Any] = await _ensure_async(
                    self.kc.shell_channel.get_msg(timeout=_slice(deadline))
                )
            except Empty:
                await self._async_check_alive()  # DeadKernelError when it died
                self._check_heartbeat()  # ... or stopped answering
                if deadline is None or time.monotonic() < deadline:
                    continue
                task_poll_kernel_alive.cancel()
                assert timeout is not None
                reply = await self._async_handle_timeout(timeout, cell)  # raises, or:
                msg = {**(reply or {}), "parent_header": {"msg_id": msg_id}}
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if self.record_timing:
                cell["metadata"]["execution"]["shell.execute_reply"] = _timestamp(msg)
            try:
                await asyncio.wait_for(task_poll_output_msg, self.iopub_timeout)
            except (asyncio.TimeoutError, Empty):
                if self.raise_on_iopub_timeout:
                    task_poll_kernel_alive.cancel()
                    raise CellTimeoutError.error_from_timeout_and_cell(
                        "Timeout waiting for IOPub output", self.iopub_timeout, cell
                    ) from None
                self.log.warning("Timeout waiting for IOPub output")
            task_poll_kernel_alive.cancel()
            return msg

    def _check_heartbeat(self) -> None:
        """A kernel whose process runs but that has not answered a heartbeat for
        ``unresponsive_after()`` seconds (stopped, wedged) ends the run: DeadKernelError.
        The heartbeat is answered by a thread of its own in the kernel, busy or not."""
        assert self.kc is not None
        channel = self.kc.hb_channel
        if not channel.is_alive() or channel.is_beating():
            self._silent_since = None
            return
        now = time.monotonic()
        if self._silent_since is None:
            self._silent_since = now
        elif now - self._silent_since > unresponsive_after():
            raise DeadKernelError(
                f"the kernel stopped answering (no heartbeat for {now - self._silent_since:.0f} "
                f"s); its process still exists: {KERNEL_UNRESPONSIVE_ENV} sets the limit"
            )

    async def _async_poll_output_msg(
        self, parent_msg_id: str, cell: nbformat.NotebookNode, cell_index: int
    ) -> None:
        assert self.kc is not None
        while True:
            try:
                msg = await _ensure_async(
                    self.kc.iopub_channel.get_msg(timeout=REPLY_SLICE_SECONDS)
                )
            except Empty:
                continue  # the reply's wait checks that the kernel lives
            if msg["parent_header"].get("msg_id") == parent_msg_id:
                try:
                    self.process_message(msg, cell, cell_index)  # raises when complete
                except CellExecutionComplete:
                    return

    def process_message(self, *args: Any, **kwargs: Any) -> Any:
        output = super().process_message(*args, **kwargs)
        if output is not None:
            if output.get("output_type") == "stream":
                self.progress.output("".join(output.get("text", "")), output.get("name", "stdout"))
            elif "text/plain" in output.get("data", {}):
                self.progress.output("".join(output["data"]["text/plain"]), "stdout")
        return output


def unresponsive_after() -> float:
    """Seconds without a heartbeat after which a kernel counts as dead (default 30)."""
    try:
        return max(1.0, float(os.environ.get(KERNEL_UNRESPONSIVE_ENV, "") or 30.0))
    except ValueError:
        return 30.0


def _slice(deadline: float | None) -> float:
    """How long the next wait for the kernel may last."""
    if deadline is None:
        return REPLY_SLICE_SECONDS
    return max(0.0, min(REPLY_SLICE_SECONDS, deadline - time.monotonic()))


def _cancel_leftover_tasks() -> None:
    """Ctrl-C stops this thread's event loop in the middle of a cell: cancel the tasks it
    left pending (waiting for the kernel's reply), so none lingers or is reported later."""
    from jupyter_core.utils import ensure_event_loop

    with contextlib.suppress(Exception):
        loop = ensure_event_loop()
        if loop.is_running():
            return
        tasks = [task for task in asyncio.all_tasks(loop) if not task.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            loop.run_until_complete(asyncio.wait(tasks, timeout=2))
        for task in tasks:  # nbclient turns the cancellation into DeadKernelError: retrieve it
            if task.done() and not task.cancelled():
                task.exception()


def _assignments(source: str, width: int = 60) -> str:
    """``a = 1, b = 'x'`` from an injected parameters cell, shortened."""
    lines = [
        line.strip() for line in source.splitlines() if line.strip() and not line.startswith("#")
    ]
    text = ", ".join(lines)
    return text if len(text) <= width else text[: width - 1] + "…"


def mark_skipped(cell: nbformat.NotebookNode) -> None:
    cell.execution_count = None
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=SKIPPED_NOTE)]
    cell.metadata.setdefault("nbdeploy", {})["skipped"] = True
    cell.metadata.setdefault("papermill", {})["status"] = "skipped"


def _seconds(value: float | None) -> str:
    if value is None:
        return "?"
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


class NbdeployEngine(Engine):
    """papermill engine: ``papermill -e nbdeploy`` gets skip tags; nbdeploy passes more."""

    @classmethod
    def execute_notebook(
        cls,
        nb: nbformat.NotebookNode,
        kernel_name: str,
        output_path: str | None = None,
        progress_bar: bool = True,
        log_output: bool = False,
        autosave_cell_every: int = 30,
        *,
        progress: Progress | None = None,
        run_timeout: float | None = None,
        injected_index: int = -1,
        epilogue: str | None = None,
        km: Any = None,
        start_timeout: int = 60,
        execution_timeout: float | None = None,
        **kwargs: Any,
    ) -> nbformat.NotebookNode:
        timeout = run_timeout if run_timeout is not None else execution_timeout
        nb_man = RunExecutionManager(nb, output_path=output_path)
        nb_man.notebook_start()
        client = RunNotebookClient(
            nb_man,
            progress=progress or NullProgress(),
            deadline=time.monotonic() + timeout if timeout else None,
            run_timeout=timeout,
            injected_index=injected_index,
            epilogue=epilogue,
            km=km,
            kernel_name=kernel_name,
            startup_timeout=start_timeout,
            # No time limit per cell (training may take hours; --timeout bounds the run,
            # through ``deadline``). The wait itself is bounded all the same: every wait
            # for the kernel lasts at most REPLY_SLICE_SECONDS and checks between slices
            # that the kernel lives and answers its heartbeat (_async_poll_for_reply).
            timeout=None,
        )
        try:
            client.execute()
        finally:
            nb_man.notebook_complete()
        nb_man.nb.metadata.setdefault("nbdeploy", {})["failure"] = (
            client.failure.to_dict() if client.failure else None
        )
        return nb_man.nb


papermill_engines.register("nbdeploy", NbdeployEngine)
