"""The worker side of ``--executor dask``: one notebook run as one Dask task.

:func:`run_task` is sent to the workers by reference (nbdeploy must be installed there, as
must the notebook's packages and its kernel). It receives the notebook, its parameter
values and the files that travel with it, mirrors them in a temporary folder, runs the
notebook there with nbdeploy's own papermill engine (skip tags, timeout, failure cells)
and returns, as plain data, what a local run leaves on disk: the output notebook, the
results the notebook logged (metrics, params), its artifacts and its declared outputs.
It never touches a state store or MLflow: the client records the run.

A run is stopped (Ctrl-C on the client, or its task cancelled or released) by killing its
kernel; the task then returns what ran so far. :func:`dask_setup` is the workers'
preload on a local cluster: the workers leave Ctrl-C to the client and import the engine
while they wait for their first task.

This module imports neither dask nor distributed at import time.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path, PurePath, PurePosixPath
from typing import Any

from nbdeploy.pipeline.context import ARTIFACTS_DIR, RESULTS_FILE
from nbdeploy.pipeline.progress import NullProgress, Progress
from nbdeploy.pipeline.runner import _kernel_done, _kernel_started, stop_group
from nbdeploy.private_files import restrict_umask

WATCH_INTERVAL_S = 1.0
GONE_STATES = ("cancelled", "released", "forgotten", "error")


class _EventProgress(NullProgress):
    """Sends a run's progress (cells and, if asked, output) to the client as Dask events."""

    def __init__(self, worker: Any, topic: str, outputs: bool) -> None:
        self.worker = worker
        self.topic = topic
        self.outputs = outputs

    def _send(self, *event: Any) -> None:
        with contextlib.suppress(Exception):  # progress never fails a run
            self.worker.log_event(self.topic, list(event))

    def start(self, label: str, total_cells: int) -> None:
        self._send("start", label, total_cells)

    def cell_started(self, position: int, cell_number: int, first_line: str) -> None:
        self._send("cell", position, cell_number, first_line)

    def output(self, text: str, stream: str) -> None:
        if self.outputs:
            self._send("output", text, stream)


def relative_path(text: str) -> PurePosixPath:
    """A path sent by the client, checked to stay inside the task's folder."""
    path = PurePosixPath(text)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise ValueError(f"refusing to write {text!r} outside the task's folder")
    return path


def _write(base: Path, relative: str, data: bytes) -> Path:
    target = base.joinpath(*relative_path(relative).parts)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return target


def run_task(task: dict[str, Any], bundle: dict[str, bytes] | None = None) -> dict[str, Any]:
    """Run one notebook in a temporary folder of this worker; see the module docstring.

    ``task``: run_id, key, notebook_path (relative), notebook (bytes of its JSON), values,
    relocate {parameter: relative path}, kernel, timeout, epilogue, outputs {name: relative
    path}, handed {relative path: bytes}, output_name, max_bytes, progress_topic (None: no
    progress events) and progress_output (cell output in them too).
    ``bundle``: {relative path: bytes}, the files shared by the runs of a sweep or step."""
    from nbdeploy.notebook.reader import Notebook
    from nbdeploy.pipeline.execute import execute_notebook

    worker = _current_worker()
    scratch = getattr(worker, "local_directory", None) if worker is not None else None
    base = Path(tempfile.mkdtemp(prefix="nbdeploy-task-", dir=scratch))
    run_id = task["run_id"]
    finished = threading.Event()
    try:
        workspace, run_dir, out_dir = base / "work", base / "run", base / "out"
        for folder in (workspace, run_dir, out_dir):
            folder.mkdir()
        for relative, data in {**(bundle or {}), **task["handed"]}.items():
            _write(workspace, relative, data)
        notebook_path = _write(workspace, task["notebook_path"], task["notebook"])
        values = dict(task["values"])
        for name, relative in task["relocate"].items():
            if name in values:
                where = workspace.joinpath(*relative_path(relative).parts)
                values[name] = where if isinstance(values[name], PurePath) else str(where)
        for relative in task["outputs"].values():
            workspace.joinpath(*relative_path(relative).parts).parent.mkdir(
                parents=True, exist_ok=True
            )
        notebook = Notebook(path=notebook_path, data=json.loads(task["notebook"]))
        progress: Progress = NullProgress()
        if task.get("progress_topic") and worker is not None:
            progress = _EventProgress(
                worker, task["progress_topic"], bool(task.get("progress_output"))
            )
        if worker is not None and task.get("key"):
            threading.Thread(
                target=_watch,
                args=(worker, task["key"], run_id, finished),
                name="nbdeploy-task-watch",
                daemon=True,
            ).start()
        try:
            result = execute_notebook(
                notebook,
                values,
                kernel=task["kernel"],
                output_path=out_dir / task["output_name"],
                run_dir=run_dir,
                run_id=run_id,
                timeout=task["timeout"],
                progress=progress,
                epilogue=task["epilogue"],
                on_kernel=lambda kill: _kernel_started(run_id, run_id, kill),
                environment=kernel_environment(),
            )
        finally:
            _kernel_done(run_id, run_id)
        result.wait_closed()  # the kernel's files are complete only once it has exited
        payload: dict[str, Any] = {
            "ok": result.ok,
            "failure": result.failure,
            "message": result.message,
            "epilogue_output": result.epilogue_output,
            "host": _host(worker),
        }
        payload.update(_collect(result.output_path, run_dir, workspace, task))
        return payload
    finally:
        finished.set()
        shutil.rmtree(base, ignore_errors=True)


def _collect(
    output_path: Path, run_dir: Path, workspace: Path, task: dict[str, Any]
) -> dict[str, Any]:
    """What the client writes back where a local run leaves it, within ``max_bytes``."""
    notebook = output_path.read_bytes() if output_path.is_file() else None
    results_lines: list[str] = []
    results = run_dir / RESULTS_FILE
    if results.is_file():
        for line in results.read_text(encoding="utf-8", errors="replace").splitlines():
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                entry = json.loads(line)
                if entry.get("kind") == "artifact" and isinstance(entry.get("path"), str):
                    entry["path"] = f"{ARTIFACTS_DIR}/{Path(entry['path']).name}"
                    line = json.dumps(entry)
            results_lines.append(line)
    artifacts: dict[str, bytes] = {}
    folder = run_dir / ARTIFACTS_DIR
    if folder.is_dir():
        artifacts = {item.name: item.read_bytes() for item in folder.iterdir() if item.is_file()}
    outputs: dict[str, bytes] = {}
    for name, relative in task["outputs"].items():
        path = workspace.joinpath(*relative_path(relative).parts)
        if path.is_file():
            outputs[name] = path.read_bytes()
    log = run_dir / "kernel.log"
    kernel_log = log.read_bytes()[-(1 << 20) :] if log.is_file() else b""
    collected: dict[str, Any] = {
        "notebook": notebook,
        "results": results_lines,
        "artifacts": artifacts,
        "outputs": outputs,
        "kernel_log": kernel_log,
        "too_large": None,
    }
    sizes = {
        **({"the output notebook": len(notebook)} if notebook else {}),
        **{f"artifact {name}": len(data) for name, data in artifacts.items()},
        **{f"output {name}": len(data) for name, data in outputs.items()},
    }
    total = sum(sizes.values())
    if total > task["max_bytes"]:
        largest = sorted(sizes, key=sizes.__getitem__, reverse=True)[:3]
        collected["too_large"] = {"total": total, "largest": {k: sizes[k] for k in largest}}
        collected["artifacts"], collected["outputs"] = {}, {}
        if notebook is not None and len(notebook) > task["max_bytes"]:
            collected["notebook"] = None
    return collected


def _watch(worker: Any, key: str, run_id: str, finished: threading.Event) -> None:
    """Stop the run when its task is no longer wanted (cancelled by the client, or the
    client went away and the scheduler released it)."""
    while not finished.wait(WATCH_INTERVAL_S):
        try:
            state = worker.state.tasks.get(key)
        except Exception:
            return
        if state is None or state.state in GONE_STATES:
            stop_group(run_id)
            return


def kernel_environment() -> dict[str, str]:
    """This worker's environment for a kernel, without the limits Dask's nanny sets for its
    own threads (OMP_NUM_THREADS=1, ...): a kernel gets the machine's threads, as it
    does when the notebook runs locally."""
    environment = dict(os.environ)
    preset: dict[str, Any] = {}
    with contextlib.suppress(Exception):
        import dask

        preset = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}) or {})
    for name, value in preset.items():
        if environment.get(name) == str(value):
            del environment[name]
    return environment


def _current_worker() -> Any:
    try:
        from distributed import get_worker

        return get_worker()
    except (ImportError, ValueError):
        return None


def _host(worker: Any) -> str | None:
    return str(worker.address) if worker is not None else None


def worker_info() -> dict[str, Any]:
    """What the client checks on a cluster's workers: nbdeploy's version and the kernels."""
    from nbdeploy import __version__
    from nbdeploy.pipeline.kernels import installed_kernels

    return {"version": __version__, "kernels": sorted(installed_kernels())}


def warm_up() -> None:
    """Import what a run needs (papermill, nbclient, nbformat, the engine) ahead of it."""
    with contextlib.suppress(Exception):
        import jupyter_client.manager  # noqa: F401

        import nbdeploy.notebook.reader
        import nbdeploy.pipeline.engine
        import nbdeploy.pipeline.execute  # noqa: F401


def warm_up_in_background() -> None:
    """:func:`warm_up` in a thread of this worker (the client calls it on connecting)."""
    threading.Thread(target=warm_up, name="nbdeploy-warm-up", daemon=True).start()


def _leave_ctrl_c_to_the_client(signum: int, frame: Any) -> None:
    """SIGINT handler of local-cluster workers: a terminal's Ctrl-C reaches every process of
    its group, and the client stops the runs (the kernels it starts get the default)."""


def dask_setup(worker: Any) -> None:
    """Preload of a local cluster's workers (``preload=["nbdeploy.pipeline.dask_worker"]``)."""
    restrict_umask()  # a worker process of nbdeploy's own: what its runs write is private
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _leave_ctrl_c_to_the_client)
    # As the nbdeploy command does: jsonschema's IRI format support (imported with nbformat)
    # costs a second or more to import, and nbformat never needs it.
    sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]
    warm_up_in_background()
