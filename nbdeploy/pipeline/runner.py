"""One tracked notebook run: check parameters, pick the kernel, execute, record.

``prepare_run`` does every check that needs no kernel (so sweeps and pipelines fail before
any kernel starts); ``execute_run`` executes and records the run in the state store and,
unless disabled, in MLflow.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nbdeploy import config
from nbdeploy.notebook.parameters import Parameter, parse_parameters, resolve_parameters
from nbdeploy.notebook.reader import Notebook, read_notebook
from nbdeploy.pipeline.kernels import KernelChoice, choose_kernel
from nbdeploy.pipeline.progress import NullProgress, Progress
from nbdeploy.store import StateStore, default_store
from nbdeploy.store.runs import FAILED, SUCCEEDED, RunRecord, RunStore, new_id

Notify = Callable[[str], None]


def _ignore(message: str) -> None:
    pass


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
) -> RunOutcome:
    """Execute a prepared run and record it; failures inside the notebook are outcomes, not
    exceptions."""
    from nbdeploy.pipeline.context import read_results
    from nbdeploy.pipeline.execute import execute_notebook

    records = RunStore(store or default_store())
    run_id = new_id()
    run_dir = config.runs_dir() / run_id
    run_dir.mkdir(parents=True)
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
    if prepared.kernel.notice:
        notify(prepared.kernel.notice)
    result = execute_notebook(
        nb,
        prepared.values,
        kernel=prepared.kernel.name,
        output_path=output_path,
        run_dir=run_dir,
        run_id=run_id,
        timeout=timeout,
        progress=progress,
        epilogue=epilogue,
    )
    if prepared.outputs:
        result.wait_closed()  # the kernel's files are complete only once it has exited
    logged = read_results(run_dir)
    message = result.message
    ok = result.ok
    if ok:
        missing = [
            f"{name} ({path})" for name, path in prepared.outputs.items() if not Path(path).exists()
        ]
        if missing:
            ok = False
            message = (
                f"{nb.name} finished without writing its declared outputs: {', '.join(missing)}"
            )
    error = {**(result.failure or {}), "message": message} if message else None
    recorded_outputs = {
        name: {"path": path, "sha256": file_digest(Path(path)) if Path(path).is_file() else None}
        for name, path in prepared.outputs.items()
    }
    records.finish(
        run_id,
        SUCCEEDED if ok else FAILED,
        error=error,
        metrics=logged["metrics"],
        logged_params=logged["params"],
        artifacts=logged["artifacts"],
        outputs=recorded_outputs,
    )
    (progress or NullProgress()).finish(ok, "succeeded" if ok else (message or "failed"))
    if tracker is not None:
        mlflow_run_id = tracker.finish(
            succeeded=ok,
            parameters={
                **_defaults(prepared.declared),
                **json_safe(prepared.values),
                **logged["params"],
            },
            metrics=logged["metrics"],
            artifacts=[output_path, *map(Path, logged["artifacts"])],
            warn=warn,
        )
        if mlflow_run_id:
            records.set_mlflow_run(run_id, mlflow_run_id)
    result.wait_closed()
    return RunOutcome(
        record=records.get(run_id), message=message, epilogue_output=result.epilogue_output
    )


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _defaults(declared: list[Parameter]) -> dict[str, Any]:
    return {p.name: json_safe(p.default) for p in declared if p.literal_default}


def json_safe(value: Any) -> Any:
    """Values as they are stored and shown: dates as ISO strings, tuples as lists."""
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value
