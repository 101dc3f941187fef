"""Execute one notebook in a fresh kernel: the raw run behind every pipeline.

Start-up and shut-down are overlapped with other work: the kernel process is launched
first (jupyter_client is cheap to import) and papermill, nbclient and nbformat are imported
while it boots; and the kernel's exit is awaited in the background
(:meth:`ExecutionResult.wait_closed`). Kernels talk over IPC sockets in a private
directory (no TCP ports), and their own stderr goes to ``kernel.log`` in the run directory
instead of the user's terminal. A run that is interrupted (Ctrl-C) or does not end
normally kills its kernel at once.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nbdeploy.notebook.reader import Notebook
from nbdeploy.pipeline.context import DEPLOY_STEP_ENV, RUN_DIR_ENV, RUN_ID_ENV
from nbdeploy.pipeline.progress import NullProgress, Progress
from nbdeploy.private_files import open_private

KERNEL_LOG = "kernel.log"
SHUTDOWN_WAIT_SECONDS = 5.0


@dataclass
class ExecutionResult:
    ok: bool
    output_path: Path
    kernel: str
    failure: dict[str, Any] | None = None
    message: str | None = None
    closing: threading.Thread | None = field(default=None, repr=False)
    epilogue_output: str | None = None

    def wait_closed(self) -> None:
        """Wait until the kernel process has exited (its files are flushed and closed)."""
        if self.closing is not None:
            self.closing.join()


def execute_notebook(
    notebook: Notebook,
    values: dict[str, Any],
    *,
    kernel: str,
    output_path: Path,
    run_dir: Path,
    run_id: str,
    timeout: float | None = None,
    progress: Progress | None = None,
    start_timeout: int = 60,
    epilogue: str | None = None,
    on_kernel: Callable[[Callable[[], None]], None] | None = None,
    environment: Mapping[str, str] | None = None,
) -> ExecutionResult:
    """Run ``notebook`` with ``values`` injected; the output notebook is written even when a
    cell fails. ``epilogue`` is code run in the same kernel after the last cell (as
    ``nbdeploy deploy`` does); its printed output is ``ExecutionResult.epilogue_output``.
    ``on_kernel`` gets, once the kernel has started, a function that kills it (from any
    thread: the run then ends with the kernel dead). ``environment``: the kernel's
    (default: this process's). Never raises for failures inside the notebook: see
    ``ExecutionResult``."""
    from jupyter_client.manager import AsyncKernelManager
    from jupyter_core.utils import run_sync

    env = dict(os.environ if environment is None else environment)
    env[RUN_DIR_ENV] = str(run_dir)
    env[RUN_ID_ENV] = run_id
    env.pop(DEPLOY_STEP_ENV, None)
    if epilogue:  # nbdeploy deploys after the last cell: the notebook's own %deploy does not
        env[DEPLOY_STEP_ENV] = "1"
    env.pop("JPY_SESSION_NAME", None)  # the run's kernel is not the notebook's own kernel
    socket_dir = tempfile.mkdtemp(prefix="nbd-")
    km = AsyncKernelManager(kernel_name=kernel, transport="ipc", ip=os.path.join(socket_dir, "k"))
    result = ExecutionResult(ok=False, output_path=output_path, kernel=kernel)
    with open_private(run_dir / KERNEL_LOG, "ab") as kernel_log:
        try:
            run_sync(km.start_kernel)(
                env=env, cwd=str(notebook.path.parent), stdout=kernel_log, stderr=kernel_log
            )
        except Exception as exc:
            shutil.rmtree(socket_dir, ignore_errors=True)
            result.message = f"kernel {kernel!r} failed to start: {exc}"
            return result
        except BaseException:  # Ctrl-C while it starts
            _close_kernel(km, run_sync, socket_dir, immediate=True)
            raise
    if on_kernel is not None:
        on_kernel(lambda: _kill_kernel(km))
    ended = False
    try:
        _execute_in(km, notebook, values, result, timeout, progress, start_timeout, epilogue)
        ended = True
    finally:
        # A kernel that timed out, died, was interrupted or whose run raised is killed.
        immediate = not ended or bool(result.failure and result.failure.get("kind") != "error")
        result.closing = _close_kernel(km, run_sync, socket_dir, immediate)
    return result


def _execute_in(
    km: Any,
    notebook: Notebook,
    values: dict[str, Any],
    result: ExecutionResult,
    timeout: float | None,
    progress: Progress | None,
    start_timeout: int,
    epilogue: str | None,
) -> None:
    # Imported while the kernel boots.
    import nbformat
    from nbformat.v4.rwbase import rejoin_lines

    from nbdeploy.pipeline.engine import CellFailure, NbdeployEngine, inject_parameters

    nb = nbformat.v4.upgrade(rejoin_lines(nbformat.from_dict(notebook.data)))
    nb.metadata.setdefault("papermill", {})
    nb.metadata.setdefault("kernelspec", {})["name"] = result.kernel
    for cell in nb.cells:  # papermill expects every cell to carry a tags list
        cell.metadata.setdefault("tags", [])
        if "id" not in cell:  # nbformat 4.5 requires ids; hand-written files lack them
            cell["id"] = uuid.uuid4().hex[:8]
    injected_index = inject_parameters(nb, values, result.kernel, notebook.language)
    try:
        nb = NbdeployEngine.execute_notebook(
            nb,
            result.kernel,
            output_path=str(result.output_path),
            progress=progress or NullProgress(),
            run_timeout=timeout,
            injected_index=injected_index,
            epilogue=epilogue,
            km=km,
            start_timeout=start_timeout,
        )
    except Exception as exc:  # the kernel died outside a cell, failed to answer, ...
        result.message = f"{notebook.name}: execution stopped: {type(exc).__name__}: {exc}"
        return
    failure = nb.metadata.get("nbdeploy", {}).get("failure")
    if failure:
        result.failure = dict(failure)
        result.message = CellFailure(**failure).describe(notebook.name)
        return
    result.epilogue_output = nb.metadata.get("nbdeploy", {}).get("epilogue_output")
    result.ok = True


def _kill_kernel(km: Any) -> None:
    process = getattr(km.provisioner, "process", None) if km.has_kernel else None
    if process is not None:
        with contextlib.suppress(OSError):
            process.kill()


def _close_kernel(km: Any, run_sync: Any, socket_dir: str, immediate: bool) -> threading.Thread:
    """Ask the kernel to exit (kill it when it is stuck in a cell) and wait for the process
    in a background thread, so recording the run overlaps the kernel's exit."""
    process = getattr(km.provisioner, "process", None) if km.has_kernel else None
    if process is not None and not immediate:
        with contextlib.suppress(Exception):
            run_sync(km.request_shutdown)()
    elif process is not None:
        process.kill()

    def wait() -> None:
        if process is not None:
            try:
                process.wait(timeout=SHUTDOWN_WAIT_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        with contextlib.suppress(Exception):
            km.cleanup_connection_file()
        shutil.rmtree(socket_dir, ignore_errors=True)

    closing = threading.Thread(target=wait, name="nbdeploy-kernel-exit")
    closing.start()
    return closing
