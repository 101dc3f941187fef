"""Batch scoring: files scored with a deployed version's own function, without HTTP.

:func:`run_batch` is the one entry; ``nbdeploy batch``, ``nbdeploy.batch(...)`` and
``%deploy batch`` are thin faces over it. (The package is ``batching``, not ``batch``: a
subpackage named as a public function would replace ``nbdeploy.batch`` once imported.)
A module per concern:

- :mod:`~nbdeploy.batching.inputs`: the input files, streamed in chunks;
- :mod:`~nbdeploy.batching.columns`: which columns feed the function, which are carried, and
  the checks of values;
- :mod:`~nbdeploy.batching.scoring`: the worker side (the version loaded once per process,
  a chunk scored, raising rows found by bisection);
- :mod:`~nbdeploy.batching.executors`: a local process pool or a Dask cluster;
- :mod:`~nbdeploy.batching.jobs`: the job folder of finished parts, for resuming;
- :mod:`~nbdeploy.batching.output`: the output and errors files, assembled from the parts;
- :mod:`~nbdeploy.batching.monitoring`: drift and input quality of a sample of the input;
- :mod:`~nbdeploy.batching.options`: the command line's options and its text.

Nothing heavy is imported here: the CLI's ``--help`` imports this package.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nbdeploy.errors import NbdeployError

DEFAULT_CHUNK_ROWS = 50_000
DEFAULT_MAX_ERROR_SHARE = 0.01
EXPERIMENT = "nbdeploy-batch"

ProgressCallback = Callable[[int, "int | None"], None]


class BatchError(NbdeployError):
    """A batch job cannot start: an option, the deployment or the version is wrong."""


class BatchFailedError(NbdeployError):
    """The job ran, but failed (too many failed rows, or the version failed): exit 1."""

    exit_code = 1


@dataclass
class BatchResult:
    run_id: str
    deployment: str
    version: int
    rows_in: int
    rows_out: int
    rows_failed: int
    seconds: float
    output: str
    errors: str
    drift: dict[str, Any] = field(default_factory=dict)
    ok: bool = True
    message: str | None = None
    resumed_chunks: int = 0
    mlflow_run_id: str | None = None

    @property
    def rows_per_s(self) -> float:
        return self.rows_in / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["rows_per_s"] = round(self.rows_per_s, 1)
        return data


def _ignore(message: str) -> None:
    """The default ``notify``: say nothing."""


def run_batch(
    name: str,
    input: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    version: int | None = None,
    keep: Sequence[str] | None = None,
    features: Sequence[str] | None = None,
    errors: str | os.PathLike[str] | None = None,
    max_error_share: float = DEFAULT_MAX_ERROR_SHARE,
    executor: str = "local",
    scheduler: str | None = None,
    workers: int | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    resume: bool = False,
    mlflow: bool = True,
    on_progress: ProgressCallback | None = None,
    notify: Callable[[str], None] = _ignore,
) -> BatchResult:
    """Score every row of ``input`` with version ``version`` (default: the live one) of the
    deployment ``name``; write the kept columns and the predictions to ``output`` and the
    failed rows to ``errors``. Raises NbdeployError (exit 2) before any work for a wrong
    option, deployment, version, column or file. ``result.ok`` is False when the share of
    failed rows is above ``max_error_share`` (the output is written all the same)."""
    from nbdeploy.batching import jobs, monitoring
    from nbdeploy.batching.columns import plan_columns
    from nbdeploy.batching.inputs import count_rows, input_columns, resolve_inputs
    from nbdeploy.batching.output import check_output, default_errors_path
    from nbdeploy.service.runtime import read_manifest

    _check_options(chunk_rows, workers, max_error_share, executor, scheduler)
    output_path = Path(output).expanduser().resolve()
    kind = check_output(output_path)
    errors_path = (
        Path(errors).expanduser().resolve() if errors else default_errors_path(output_path)
    )
    if errors_path == output_path:
        raise BatchError("--errors and --output name the same file", "give the errors file its own")
    files = resolve_inputs(input)
    names, input_schema = input_columns(files)
    chosen = _version(name, version)
    service_dir = chosen.service_dir
    manifest = read_manifest(Path(service_dir))
    profile = monitoring.load_profile(service_dir)
    plan = plan_columns(
        service_dir=service_dir,
        manifest=manifest,
        input_names=names,
        input_schema=input_schema,
        features=list(features) if features else None,
        keep=list(keep) if keep is not None else None,
        profile_columns=list(profile.columns) if profile is not None else None,
    )
    spec = {
        "deployment": name,
        "version": chosen.version,
        "content_hash": chosen.content_hash,
        "files": [f.fingerprint() for f in files],
        "keep": plan.kept,
        "features": plan.features,
        "chunk_rows": chunk_rows,
    }
    key = jobs.fingerprint(spec)
    job = jobs.JobFolder(key, spec)
    if resume and not job.finished():
        raise BatchError(
            f"nothing to resume: no finished chunks of this job (deployment {name} "
            f"v{chosen.version}, input {input}, these options)",
            "run it without --resume; a job killed before its first chunk starts over",
        )
    return _run(
        name=name,
        version_number=chosen.version,
        input_label=str(input),
        files=files,
        plan=plan,
        manifest=manifest,
        profile=profile,
        job=job,
        key=key,
        kind=kind,
        output_path=output_path,
        errors_path=errors_path,
        max_error_share=max_error_share,
        executor=executor,
        scheduler=scheduler,
        workers=workers,
        chunk_rows=chunk_rows,
        mlflow=mlflow,
        on_progress=on_progress,
        notify=notify,
        rows_total=count_rows(files),
        input_schema=input_schema,
    )


def _check_options(
    chunk_rows: int,
    workers: int | None,
    max_error_share: float,
    executor: str,
    scheduler: str | None,
) -> None:
    from nbdeploy.batching.executors import DASK, LOCAL

    if not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise BatchError(f"--chunk-rows must be a whole number >= 1, got {chunk_rows!r}")
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise BatchError(f"--workers must be a whole number >= 1, got {workers!r}")
    if not 0.0 <= float(max_error_share) <= 1.0:
        raise BatchError(
            f"--max-error-share must be between 0 and 1, got {max_error_share!r}",
            "e.g. 0.01: the job fails when more than 1% of the rows fail",
        )
    if executor not in (LOCAL, DASK):
        raise BatchError(f"unknown executor {executor!r}", "choose local or dask")
    if scheduler and executor != DASK:
        raise BatchError(
            f"--scheduler {scheduler} applies to the dask executor", "add --executor dask"
        )


def _version(name: str, number: int | None) -> Any:
    from nbdeploy.deployment.store import DeploymentNotFoundError, DeploymentStore
    from nbdeploy.store import default_store

    store = DeploymentStore(default_store())
    deployment = store.get(name)  # an unknown name: the error lists the deployments
    known = [v.version for v in store.versions(name)]
    listed = ", ".join(f"v{n}" for n in known) or "none"
    if number is None:
        number = deployment.live_version
        if number is None:
            raise DeploymentNotFoundError(
                f"deployment {name!r} has no live version (versions: {listed})",
                "name one with --version N",
            )
    if number not in known:
        raise DeploymentNotFoundError(
            f"deployment {name!r} has no version {number} (versions: {listed})",
            "name one of them with --version N, or leave --version out for the live one",
        )
    return store.version(name, number)


def _run(
    *,
    name: str,
    version_number: int,
    input_label: str,
    files: list[Any],
    plan: Any,
    manifest: dict[str, Any],
    profile: Any,
    job: Any,
    key: str,
    kind: str,
    output_path: Path,
    errors_path: Path,
    max_error_share: float,
    executor: str,
    scheduler: str | None,
    workers: int | None,
    chunk_rows: int,
    mlflow: bool,
    on_progress: ProgressCallback | None,
    notify: Callable[[str], None],
    rows_total: int | None,
    input_schema: Any,
) -> BatchResult:
    import pyarrow as pa

    from nbdeploy.batching import monitoring
    from nbdeploy.batching.executors import DASK, score_locally, score_on_dask
    from nbdeploy.batching.inputs import Chunk, iter_chunks
    from nbdeploy.batching.jobs import abandoned_temporaries
    from nbdeploy.batching.output import OutputStream, write_errors
    from nbdeploy.store import default_store
    from nbdeploy.store.runs import FAILED, SUCCEEDED, RunStore

    started = time.monotonic()
    records = RunStore(default_store())
    parameters = {
        "deployment": name,
        "version": version_number,
        "input": input_label,
        "output": str(output_path),
        "input_fingerprint": key,
    }
    record = records.create(
        f"{name} v{version_number}", parameters, output_path=str(output_path), kind="batch"
    )
    tracker = None
    if mlflow:
        from nbdeploy.pipeline.tracking import MlflowTracker

        tracker = MlflowTracker(
            EXPERIMENT,
            f"{name} v{version_number}",
            {"nbdeploy.run_id": record.id, "nbdeploy.kind": "batch"},
            record.id,
        )
        tracker.start()
    reservoir = monitoring.Reservoir()
    counts = {"rows_in": 0, "chunks": 0, "done_rows": 0}
    progress = on_progress or (lambda done, total: None)
    try:
        with job:
            abandoned_temporaries(job.path)
            finished = job.finished()
            if finished:
                notify(f"resuming: {len(finished)} chunk(s) already scored in {job.path}")

            def fresh_chunks() -> Any:
                for chunk in iter_chunks(files, plan_input_names(plan, input_schema), chunk_rows):
                    counts["rows_in"] += chunk.table.num_rows
                    counts["chunks"] = chunk.index + 1
                    if plan.features:
                        reservoir.add(chunk.table.select(plan.features))
                    if chunk.index in finished:
                        counts["done_rows"] += chunk.table.num_rows
                        progress(counts["done_rows"], rows_total)
                        continue
                    yield Chunk(chunk.index, chunk.first_row, chunk.table)

            kept_schema = pa.schema([pa.field(n, plan.kept_types[n]) for n in plan.kept])
            stream = OutputStream(output_path, kind, kept_schema, job.read_part)
            stream.finished_before = set(finished)
            count = max(1, workers or os.cpu_count() or 1)
            if executor == DASK:
                results = score_on_dask(plan, fresh_chunks(), scheduler, workers, None, notify)
            else:
                results = score_locally(plan, fresh_chunks(), count, in_flight=2 * count)
            try:
                for scored in results:
                    job.write_part(scored.index, scored.table, scored.errors)
                    stream.add(scored.index, scored.table)
                    counts["done_rows"] += scored.rows_in
                    progress(counts["done_rows"], rows_total)
                chunks = counts["chunks"]
                rows_out = stream.finish(
                    chunks, lambda: job.part_schemas(chunks), job.tables(chunks)
                )
            except BaseException:
                stream.abandon()
                raise
            rows_failed = write_errors(errors_path, job.error_lines(chunks))
            sample = reservoir.frame
            drift = monitoring.drift_summary(profile, sample, plan.mode == "records")
            job.remove()
    except BaseException as error:
        said = (
            str(error) if isinstance(error, NbdeployError) else f"{type(error).__name__}: {error}"
        )
        kind_of = "interrupted" if isinstance(error, KeyboardInterrupt) else "error"
        records.finish(record.id, FAILED, error={"kind": kind_of, "message": said})
        if tracker is not None:
            tracker.finish(
                succeeded=False, parameters=parameters, metrics=[], artifacts=[], warn=notify
            )
        if isinstance(error, NbdeployError | KeyboardInterrupt):
            raise
        raise BatchFailedError(
            f"batch job of {name} v{version_number} failed: {said}",
            f"the finished chunks are kept; run the same command again to resume (run {record.id})",
        ) from error
    seconds = time.monotonic() - started
    rows_in = counts["rows_in"]
    share = rows_failed / rows_in if rows_in else 0.0
    ok = share <= max_error_share
    message: str | None = None
    if not ok:
        message = (
            f"{rows_failed} of {rows_in} rows failed ({share:.2%}), more than "
            f"--max-error-share {max_error_share:g}: see {errors_path}"
        )
    result = BatchResult(
        run_id=record.id,
        deployment=name,
        version=version_number,
        rows_in=rows_in,
        rows_out=rows_out,
        rows_failed=rows_failed,
        seconds=round(seconds, 3),
        output=str(output_path),
        errors=str(errors_path),
        drift=drift,
        ok=ok,
        message=message,
        resumed_chunks=len(finished),
    )
    metrics: list[tuple[str, float | None, int]] = [
        ("rows_in", float(rows_in), 0),
        ("rows_out", float(rows_out), 0),
        ("rows_failed", float(rows_failed), 0),
        ("seconds", round(seconds, 3), 0),
        ("rows_per_s", round(result.rows_per_s, 1), 0),
        ("drifted_features", float(len(drift.get("drifted", []))), 0),
    ]
    outputs = {"output": str(output_path), "errors": str(errors_path), "drift": drift}
    records.finish(
        record.id,
        SUCCEEDED if ok else FAILED,
        error=None if ok else {"kind": "errors", "message": message},
        metrics=metrics,
        outputs=outputs,
    )
    if tracker is not None:
        result.mlflow_run_id = tracker.finish(
            succeeded=ok,
            parameters=parameters,
            metrics=metrics,
            artifacts=[],
            warn=notify,
        )
        if result.mlflow_run_id:
            records.set_mlflow_run(record.id, result.mlflow_run_id)
    return result


def plan_input_names(plan: Any, input_schema: Any) -> list[str]:
    """The input columns a chunk needs: the kept ones and those fed to the function."""
    wanted = set(plan.kept) | set(plan.features)
    return [name for name in input_schema.names if name in wanted]
