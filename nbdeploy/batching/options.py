"""``nbdeploy batch`` and ``%deploy batch``: their options, the call of
:func:`nbdeploy.batching.run_batch` from parsed arguments, and the text they print.

Light to import (argparse only): the CLI's ``--help`` and the magic load it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import IO, Any

from nbdeploy.batching import DEFAULT_CHUNK_ROWS, DEFAULT_MAX_ERROR_SHARE, BatchResult

PROGRESS_EVERY_S = 3.0

DESCRIPTION = (
    "Score INPUT (a CSV, Parquet or JSON Lines file, a folder of them, or a glob) with the "
    "live version of deployment NAME (or --version N), without HTTP: the version's own code "
    "and objects in a process per core (or on Dask). OUTPUT gets the kept columns and the "
    "predictions, in input order; rows that fail go to the errors file (JSON Lines: row, "
    "column, reason). Exit 1 when more than --max-error-share of the rows fail. A killed "
    "job resumes from its finished chunks when the same command runs again."
)


def add_batch_job_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of a batch job (``nbdeploy batch`` and ``%deploy batch``)."""
    parser.add_argument("name", help="the deployment")
    parser.add_argument("input", help="a .csv, .parquet or .jsonl file, a folder, or a glob")
    parser.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="FILE",
        help="where to write: .parquet (.pq), .csv or .jsonl (.ndjson)",
    )
    parser.add_argument("--version", type=int, metavar="N", help="default: the live version")
    parser.add_argument(
        "--keep",
        nargs="+",
        metavar="COL",
        help="input columns carried to the output (default: every input column)",
    )
    parser.add_argument(
        "--features",
        nargs="+",
        metavar="COL",
        help="for a version that takes rows of numbers: the input columns, in order "
        "(default: the reference's feature names, else every column)",
    )
    parser.add_argument(
        "--errors", metavar="FILE", help="the failed rows (default: OUTPUT.errors.jsonl)"
    )
    parser.add_argument(
        "--max-error-share",
        type=float,
        default=DEFAULT_MAX_ERROR_SHARE,
        metavar="SHARE",
        help=f"exit 1 above this share of failed rows (default {DEFAULT_MAX_ERROR_SHARE})",
    )
    parser.add_argument("--executor", choices=("local", "dask"), default="local")
    parser.add_argument(
        "--scheduler", metavar="ADDR", help="a Dask scheduler, tcp://HOST:PORT (with dask)"
    )
    parser.add_argument(
        "--workers", type=int, metavar="N", help="processes (default: one per core)"
    )
    parser.add_argument(
        "--chunk-rows",
        type=int,
        default=DEFAULT_CHUNK_ROWS,
        metavar="N",
        help=f"rows per chunk: memory follows it (default {DEFAULT_CHUNK_ROWS})",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="resume a killed job (fails when it has nothing to resume)",
    )
    parser.add_argument("--no-mlflow", action="store_true", help="do not record it in MLflow")


def add_batch_command(commands: Any) -> None:
    """``nbdeploy batch`` in the CLI's subcommands."""
    parser = commands.add_parser(
        "batch",
        help="score files with a deployed version, without HTTP",
        description=DESCRIPTION,
    )
    add_batch_job_arguments(parser)
    parser.add_argument("--json", action="store_true", help="end with one JSON object")


def batch_keywords(args: argparse.Namespace) -> dict[str, Any]:
    """Parsed arguments as :func:`nbdeploy.batching.run_batch`'s keywords."""
    return {
        "version": args.version,
        "keep": args.keep,
        "features": args.features,
        "errors": args.errors,
        "max_error_share": args.max_error_share,
        "executor": args.executor,
        "scheduler": args.scheduler,
        "workers": args.workers,
        "chunk_rows": args.chunk_rows,
        "resume": args.resume,
        "mlflow": not args.no_mlflow,
    }


class ProgressLine:
    """``on_progress`` that prints a line to ``stream`` every few seconds (and at the end)."""

    def __init__(self, stream: IO[str] | None = None, every: float = PROGRESS_EVERY_S) -> None:
        self.stream = stream or sys.stderr
        self.every = every
        self.started = time.monotonic()
        self.last = 0.0

    def __call__(self, done: int, total: int | None) -> None:
        now = time.monotonic()
        if now - self.last < self.every and (total is None or done < total):
            return
        self.last = now
        print(f"nbdeploy: {progress_text(done, total, now - self.started)}", file=self.stream)
        self.stream.flush()


def progress_text(done: int, total: int | None, seconds: float) -> str:
    rate = done / seconds if seconds > 0 else 0.0
    if total:
        return f"scored {done:,} of {total:,} rows ({done / total:.0%}), {rate:,.0f} rows/s"
    return f"scored {done:,} rows, {rate:,.0f} rows/s"


def describe_result(result: BatchResult) -> str:
    """The lines a user reads after a batch job."""
    mark = "✓" if result.ok else "✗"
    lines = [
        f"{mark} {result.deployment} v{result.version}: {result.rows_out:,} of "
        f"{result.rows_in:,} rows scored in {result.seconds:.1f}s "
        f"({result.rows_per_s:,.0f} rows/s; run {result.run_id})",
        f"  output: {result.output}",
        f"  failed rows: {result.rows_failed:,}"
        + (f" (see {result.errors})" if result.rows_failed else ""),
        f"  drift: {drift_text(result.drift)}",
    ]
    if result.resumed_chunks:
        lines.append(f"  resumed: {result.resumed_chunks} chunk(s) were already scored")
    if result.message:
        lines.append(f"  {result.message}")
    return "\n".join(lines)


def drift_text(drift: dict[str, Any]) -> str:
    status = drift.get("status", "-")
    drifted = drift.get("drifted") or []
    if drifted:
        return f"{status}: {', '.join(drifted)} drifted"
    return str(status)


def run_command(args: argparse.Namespace, notify: Callable[[str], None]) -> int:
    """``nbdeploy batch``: run the job, print its summary (or JSON); the exit code."""
    from nbdeploy import api

    result = api.batch(
        args.name,
        args.input,
        args.output,
        **batch_keywords(args),
        on_progress=ProgressLine(),
        notify=notify,
    )
    if args.json:
        summary = {
            key: value
            for key, value in result.to_dict().items()
            if key
            in (
                "run_id",
                "deployment",
                "version",
                "rows_in",
                "rows_out",
                "rows_failed",
                "seconds",
                "output",
                "errors",
                "drift",
            )
        }
        print(json.dumps(summary, default=str))
    else:
        print(describe_result(result))
    if not result.ok:
        notify(f"error: {result.message}")
        return 1
    return 0


def batch_run_details(record: Any) -> str:
    """``nbdeploy runs ID`` for a batch run (its deployment, files and row counts)."""
    from nbdeploy.pipeline.summary import format_metrics, format_seconds

    parameters = record.parameters
    outputs = record.outputs or {}
    lines = [
        f"run        {record.id} (batch)",
        f"deployment {parameters.get('deployment')} v{parameters.get('version')}",
        f"status     {record.status}",
        f"started    {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(record.created_at))}",
        f"duration   {format_seconds(record.duration_s)}",
        f"input      {parameters.get('input')}",
        f"output     {outputs.get('output') or parameters.get('output')}",
    ]
    if outputs.get("errors"):
        lines.append(f"errors     {outputs['errors']}")
    if record.mlflow_run_id:
        lines.append(f"mlflow     {record.mlflow_run_id}")
    lines.append("metrics    " + format_metrics(record.metrics))
    if "drift" in outputs:
        lines.append(f"drift      {drift_text(outputs['drift'])}")
    if record.trigger_id:
        lines.append(f"trigger    {record.trigger_id}")
    if record.error:
        lines.append("error      " + (record.error.get("message") or json.dumps(record.error)))
    return "\n".join(lines)


class WidgetProgressBar:
    """``on_progress`` for a notebook: an ipywidgets bar (rows scored of the total, when
    known) and a line of text, like the bars of ``%deploy run``."""

    def __init__(self, title: str) -> None:
        import html

        import ipywidgets as widgets
        from IPython.display import display

        self.started = time.monotonic()
        self.last = 0.0
        self.bar = widgets.IntProgress(value=0, min=0, max=1, bar_style="info")
        self.label = widgets.HTML(value="starting…")
        title_widget = widgets.HTML(value=f"<b>{html.escape(title)}</b>")
        display(widgets.HBox([title_widget, self.bar, self.label]))

    def __call__(self, done: int, total: int | None) -> None:
        now = time.monotonic()
        if now - self.last < 0.2 and (total is None or done < total):
            return
        self.last = now
        if total:
            self.bar.max = max(1, total)
            self.bar.value = min(done, total)
        else:
            self.bar.max = max(1, done)
            self.bar.value = done
        self.label.value = progress_text(done, total, now - self.started)

    def finish(self, result: BatchResult | None, error: str | None = None) -> None:
        self.bar.value = self.bar.max
        if result is not None and result.ok:
            self.bar.bar_style = "success"
            self.label.value = f"{result.rows_out:,} rows scored, {result.rows_failed:,} failed"
        else:
            self.bar.bar_style = "danger"
            self.label.value = (result.message if result is not None else error) or "failed"


class TextProgress(ProgressLine):
    """``on_progress`` without widgets: a line on stdout every few seconds."""

    def __init__(self) -> None:
        super().__init__(stream=sys.stdout)


def run_magic(words: list[str], parser: argparse.ArgumentParser, in_kernel: bool) -> BatchResult:
    """``%deploy batch``: parse, run with a progress bar (plain text without widgets), print
    the summary; raises BatchFailedError when too many rows failed."""
    from nbdeploy import api
    from nbdeploy.batching import BatchFailedError

    add_batch_job_arguments(parser)
    args = parser.parse_args(words)
    progress: Any = TextProgress()
    if in_kernel:
        try:
            progress = WidgetProgressBar(f"{args.name} → {args.output}")
        except ImportError:
            progress = TextProgress()
    try:
        result = api.batch(
            args.name,
            args.input,
            args.output,
            **batch_keywords(args),
            on_progress=progress,
            notify=lambda message: print(f"nbdeploy: {message}", flush=True),
        )
    except BaseException as error:
        if isinstance(progress, WidgetProgressBar):
            progress.finish(None, str(error).splitlines()[0])
        raise
    if isinstance(progress, WidgetProgressBar):
        progress.finish(result)
    print(describe_result(result))
    if not result.ok:
        raise BatchFailedError(result.message or "too many rows failed")
    return result
