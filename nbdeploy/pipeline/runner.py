"""One tracked notebook run: check parameters, pick the kernel, execute, record.

``prepare_run`` does every check that needs no kernel (so sweeps and pipelines fail before
any kernel starts); ``execute_run`` executes and records the run in the state store and,
unless disabled, in MLflow. A run interrupted by Ctrl-C is recorded as interrupted.

Where the notebook itself executes is ``execute_run``'s ``run_notebook``: by default a
kernel on this machine (:func:`run_here`); the Dask executor
(:mod:`nbdeploy.pipeline.executors`) runs it on a worker and hands back the same files, so
recording is one code path for both.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from nbdeploy import config
from nbdeploy.notebook.parameters import (
    Parameter,
    json_safe,
    parse_parameters,
    resolve_parameters,
)
from nbdeploy.notebook.reader import Notebook, read_notebook
from nbdeploy.pipeline.kernels import KernelChoice, choose_kernel
from nbdeploy.pipeline.progress import NullProgress, Progress
from nbdeploy.private_files import DIR_MODE
from nbdeploy.store import StateStore, default_store
from nbdeploy.store.runs import (
    FAILED,
    INTERRUPTED,
    SUCCEEDED,
    RunRecord,
    RunStore,
    new_id,
)

if TYPE_CHECKING:
    from nbdeploy.pipeline.execute import ExecutionResult
    from nbdeploy.pipeline.tracking import MlflowTracker

Notify = Callable[[str], None]
OnKernel = Callable[[Callable[[], None]], None]
INTERRUPTED_MLFLOW_WAIT_S = 10.0  # MLflow after Ctrl-C: do not keep the user waiting
INTERRUPTED_MESSAGE = "interrupted (Ctrl-C)"


def _ignore(message: str) -> None:
    pass


# Ctrl-C reaches only the main thread, while the runs of a sweep or pipeline execute in
# worker threads: the main thread stops their group, which kills the kernels of its running
# runs (they end interrupted) and of any run whose kernel starts afterwards.
_stop_lock = threading.Lock()
_stopped_groups: set[str] = set()
_group_kernels: dict[str, dict[str, Callable[[], None]]] = {}


def stop_group(group_id: str) -> None:
    """Stop the running runs of a sweep or pipeline: each ends as interrupted."""
    with _stop_lock:
        _stopped_groups.add(group_id)
        kills = list(_group_kernels.get(group_id, {}).values())
    for kill in kills:
        with contextlib.suppress(Exception):
            kill()


def group_stopped(group_id: str | None) -> bool:
    with _stop_lock:
        return group_id is not None and group_id in _stopped_groups


class RunPool(ThreadPoolExecutor):
    """The threads running a sweep's or pipeline's runs. Leaving its ``with`` block on
    Ctrl-C drops the runs not started yet, stops the running ones (each ends interrupted),
    waits for them to be recorded and marks the group interrupted, instead of waiting for
    every run to finish. Another Ctrl-C stops the waiting (runs left behind are settled as
    interrupted when next read)."""

    def __init__(
        self, records: RunStore, group_id: str, max_workers: int, thread_name_prefix: str
    ) -> None:
        super().__init__(max_workers=max_workers, thread_name_prefix=thread_name_prefix)
        self.records = records
        self.group_id = group_id

    def __exit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> Any:
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            stop_group(self.group_id)
            self.shutdown(wait=True, cancel_futures=True)
            self.records.finish_group(self.group_id, INTERRUPTED)
        return super().__exit__(exc_type, exc_val, exc_tb)


def _kernel_started(group_id: str, run_id: str, kill: Callable[[], None]) -> None:
    with _stop_lock:
        stopped = group_id in _stopped_groups
        if not stopped:
            _group_kernels.setdefault(group_id, {})[run_id] = kill
    if stopped:
        kill()


def _kernel_done(group_id: str, run_id: str) -> None:
    with _stop_lock:
        _group_kernels.get(group_id, {}).pop(run_id, None)
        if not _group_kernels.get(group_id, True):
            del _group_kernels[group_id]


@dataclass
class RunFiles:
    """The files a run reads besides its notebook, for executors that run it on another
    machine (see :mod:`nbdeploy.pipeline.executors`); a local run ignores them."""

    root: Path | None = None  # the folder mirrored there (default: the notebook's)
    paths: list[Path] | None = None  # files and folders that travel (None: the notebook's folder)
    exclude: list[Path] = field(default_factory=list)  # never travel (outputs, output folders)
    handed: dict[str, str] = field(default_factory=dict)  # parameters naming upstream outputs


@dataclass
class PreparedRun:
    """A run that passed every check and is ready to execute."""

    notebook: Notebook
    declared: list[Parameter]
    values: dict[str, Any]
    kernel: KernelChoice
    output_path: Path | None = None
    step: str | None = None
    fingerprint: str | None = None
    outputs: dict[str, str] = field(default_factory=dict)
    files: RunFiles = field(default_factory=RunFiles)


class RunNotebook(Protocol):
    """Executes a prepared run's notebook: writes the output notebook to ``output_path``,
    what it logged to ``run_dir`` (results.jsonl, artifacts/) and its declared outputs to
    their paths; calls ``on_kernel`` with a function that stops the run once it is under
    way. Failures inside the notebook are in the result, not raised."""

    def __call__(
        self,
        prepared: PreparedRun,
        *,
        output_path: Path,
        run_dir: Path,
        run_id: str,
        timeout: float | None,
        progress: Progress | None,
        epilogue: str | None,
        on_kernel: OnKernel | None,
    ) -> ExecutionResult: ...


def run_here(
    prepared: PreparedRun,
    *,
    output_path: Path,
    run_dir: Path,
    run_id: str,
    timeout: float | None,
    progress: Progress | None,
    epilogue: str | None,
    on_kernel: OnKernel | None,
) -> ExecutionResult:
    """Execute the notebook in a kernel on this machine, in the notebook's folder."""
    from nbdeploy.pipeline.execute import execute_notebook

    return execute_notebook(
        prepared.notebook,
        prepared.values,
        kernel=prepared.kernel.name,
        output_path=output_path,
        run_dir=run_dir,
        run_id=run_id,
        timeout=timeout,
        progress=progress,
        epilogue=epilogue,
        on_kernel=on_kernel,
    )


@dataclass
class RunOutcome:
    """A finished run: its record and, when it failed, the reason in one message."""

    record: RunRecord
    message: str | None = None
    cached: bool = False
    epilogue_output: str | None = None

    @property
    def ok(self) -> bool:
        return self.record.status in (SUCCEEDED, "cached")

    def to_dict(self) -> dict[str, Any]:
        data = self.record.to_dict()
        data["message"] = self.message
        return data


def prepare_run(
    notebook: str | Path | Notebook,
    values: Mapping[str, Any] | None = None,
    text_values: Mapping[str, str] | None = None,
    *,
    kernel: str | None = None,
    output_path: str | Path | None = None,
    kernel_choice: KernelChoice | None = None,
) -> PreparedRun:
    """Read the notebook and check the parameters and the kernel; raises NbdeployError."""
    nb = notebook if isinstance(notebook, Notebook) else read_notebook(notebook)
    declared = parse_parameters(nb)
    resolved = resolve_parameters(nb, declared, values, text_values)
    choice = kernel_choice or choose_kernel(nb, kernel)
    return PreparedRun(
        notebook=nb,
        declared=declared,
        values=resolved,
        kernel=choice,
        output_path=Path(output_path).resolve() if output_path else None,
    )


def execute_run(
    prepared: PreparedRun,
    *,
    store: StateStore | None = None,
    timeout: float | None = None,
    progress: Progress | None = None,
    track_mlflow: bool = True,
    group_id: str | None = None,
    notify: Notify = _ignore,
    warn: Notify = _ignore,
    epilogue: str | None = None,
    run_notebook: RunNotebook = run_here,
) -> RunOutcome:
    """Execute a prepared run and record it; failures inside the notebook are outcomes, not
    exceptions. ``run_notebook`` executes the notebook (default: a kernel here).

    Ctrl-C (KeyboardInterrupt) ends the run as interrupted: the record says so, the output
    notebook keeps what ran, and the KeyboardInterrupt is raised again. Any other error out
    of nbdeploy itself marks the run failed before it propagates: a run never stays
    "running" because its runner stopped."""
    records = RunStore(store or default_store())
    run_id = new_id()
    run_dir = config.runs_dir() / run_id
    run_dir.mkdir(mode=DIR_MODE)  # owner-only: the run's outputs, results and artifacts
    output_path = prepared.output_path or run_dir / prepared.notebook.name
    for declared_output in prepared.outputs.values():  # the step writes there: make room
        Path(declared_output).parent.mkdir(parents=True, exist_ok=True)
    nb = prepared.notebook
    tracker = None
    if track_mlflow:
        from nbdeploy.pipeline.tracking import MlflowTracker

        tracker = MlflowTracker(
            experiment=nb.path.stem,
            run_name=f"{prepared.step or nb.path.stem}-{run_id}",
            tags={
                "nbdeploy.run_id": run_id,
                "mlflow.source.name": str(nb.path),
                "mlflow.source.type": "NOTEBOOK",
                **({"nbdeploy.step": prepared.step} if prepared.step else {}),
            },
            run_id=run_id,
        )
        tracker.start()
    records.create(
        str(nb.path),
        json_safe(prepared.values),
        kernel=prepared.kernel.name,
        output_path=str(output_path),
        group_id=group_id,
        step=prepared.step,
        fingerprint=prepared.fingerprint,
        run_id=run_id,
    )
    run = _Run(
        prepared,
        records,
        run_id,
        run_dir,
        output_path,
        tracker,
        progress,
        warn,
        group_id,
        run_notebook,
    )
    try:
        if prepared.kernel.notice:
            notify(prepared.kernel.notice)
        return run.execute(timeout, epilogue)
    except KeyboardInterrupt:
        run.end_abruptly(INTERRUPTED, f"{nb.name}: {INTERRUPTED_MESSAGE}")
        raise
    except Exception as exc:
        run.end_abruptly(FAILED, f"{nb.name}: the run stopped: {type(exc).__name__}: {exc}")
        raise


@dataclass
class _Run:
    """One recorded run being executed (see :func:`execute_run`)."""

    prepared: PreparedRun
    records: RunStore
    run_id: str
    run_dir: Path
    output_path: Path
    tracker: MlflowTracker | None
    progress: Progress | None
    warn: Notify
    group_id: str | None = None
    run_notebook: RunNotebook = run_here

    def execute(self, timeout: float | None, epilogue: str | None) -> RunOutcome:
        from nbdeploy.pipeline.context import read_results

        prepared, nb, run_id, group_id = (
            self.prepared,
            self.prepared.notebook,
            self.run_id,
            self.group_id,
        )
        try:
            result = self.run_notebook(
                prepared,
                output_path=self.output_path,
                run_dir=self.run_dir,
                run_id=run_id,
                timeout=timeout,
                progress=self.progress,
                epilogue=epilogue,
                on_kernel=(
                    (lambda kill: _kernel_started(group_id, run_id, kill)) if group_id else None
                ),
            )
        finally:
            if group_id:
                _kernel_done(group_id, run_id)
        # Ctrl-C in this thread (a single run), or its sweep or pipeline was stopped.
        interrupted = bool(result.failure and result.failure.get("kind") == INTERRUPTED)
        stopped = not interrupted and not result.ok and group_stopped(group_id)
        if stopped:
            result.failure = {**(result.failure or {}), "kind": INTERRUPTED}
            failure = result.failure
            if "cell" in failure:
                result.message = (
                    f"{nb.name}, cell {failure['cell']} ({failure['first_line']}): "
                    f"{INTERRUPTED_MESSAGE} while this cell was running"
                )
            else:
                result.message = f"{nb.name}: {INTERRUPTED_MESSAGE}"
        if prepared.outputs or interrupted or stopped:
            result.wait_closed()  # the kernel's files are complete only once it has exited
        logged = read_results(self.run_dir)
        message = result.message
        ok = result.ok
        if ok:
            missing = [
                f"{name} ({path})"
                for name, path in prepared.outputs.items()
                if not Path(path).exists()
            ]
            if missing:
                ok = False
                names = ", ".join(missing)
                message = f"{nb.name} finished without writing its declared outputs: {names}"
        error = {**(result.failure or {}), "message": message} if message else None
        recorded_outputs = {
            name: {
                "path": path,
                "sha256": file_digest(Path(path)) if Path(path).is_file() else None,
            }
            for name, path in prepared.outputs.items()
        }
        status = INTERRUPTED if interrupted or stopped else SUCCEEDED if ok else FAILED
        self.records.finish(
            run_id,
            status,
            error=error,
            metrics=logged["metrics"],
            logged_params=logged["params"],
            artifacts=logged["artifacts"],
            outputs=recorded_outputs,
            deployed=logged["deployed"],
        )
        (self.progress or NullProgress()).finish(
            ok, "succeeded" if ok else (message or status), interrupted=status == INTERRUPTED
        )
        for name, logged_as in logged["missing"].items():
            self.warn(
                f"{nb.name}: metric {name!r} was logged as {logged_as}, not a finite number: "
                "recorded as missing"
            )
        if self.tracker is not None:
            mlflow_run_id = self.tracker.finish(
                succeeded=ok,
                status="KILLED" if status == INTERRUPTED else None,
                parameters={
                    **_defaults(prepared.declared),
                    **json_safe(prepared.values),
                    **logged["params"],
                },
                metrics=logged["metrics"],
                artifacts=[self.output_path, *map(Path, logged["artifacts"])],
                warn=self.warn,
                timeout=INTERRUPTED_MLFLOW_WAIT_S if status == INTERRUPTED else None,
            )
            if mlflow_run_id:
                self.records.set_mlflow_run(run_id, mlflow_run_id)
        result.wait_closed()
        if interrupted:
            raise KeyboardInterrupt(message)
        return RunOutcome(
            record=self.records.get(run_id),
            message=message,
            epilogue_output=result.epilogue_output,
        )

    def end_abruptly(self, status: str, message: str) -> None:
        """The run stopped outside the notebook's cells: record that, if it is not recorded
        yet, and close its MLflow run. Best effort: never hides the original exception."""
        try:
            ended = self.records.end_if_running(
                self.run_id, status, {"kind": status, "message": message}, finished_at=time.time()
            )
            if not ended:
                return
            (self.progress or NullProgress()).finish(
                False, message, interrupted=status == INTERRUPTED
            )
            if self.tracker is not None:
                from nbdeploy.pipeline.context import read_results

                logged = read_results(self.run_dir)
                mlflow_run_id = self.tracker.finish(
                    succeeded=False,
                    status="KILLED" if status == INTERRUPTED else "FAILED",
                    parameters={**_defaults(self.prepared.declared), **logged["params"]},
                    metrics=logged["metrics"],
                    artifacts=[self.output_path],
                    warn=self.warn,
                    timeout=INTERRUPTED_MLFLOW_WAIT_S,
                )
                if mlflow_run_id:
                    self.records.set_mlflow_run(self.run_id, mlflow_run_id)
        except (Exception, KeyboardInterrupt):  # a second Ctrl-C: stop recording, go on
            pass


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _defaults(declared: list[Parameter]) -> dict[str, Any]:
    return {p.name: json_safe(p.default) for p in declared if p.literal_default}
