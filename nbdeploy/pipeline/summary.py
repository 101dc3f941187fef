"""Text summaries of runs, sweeps, pipelines and parameters, shared by the CLI and the magic."""

from __future__ import annotations

import json
import time
from typing import Any

from nbdeploy.notebook.parameters import Parameter
from nbdeploy.store.runs import RunRecord

OK_MARK, FAIL_MARK = "✓", "✗"


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    return "\n".join(lines)


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, str):
        return value
    return json.dumps(value, default=str)


def format_metrics(metrics: dict[str, float | None]) -> str:
    """``loss=0.4, acc=-``: a metric logged as NaN or infinity is missing (``-``)."""
    return (
        ", ".join(
            f"{name}={'-' if value is None else format_value(value)}"
            for name, value in sorted(metrics.items())
        )
        or "-"
    )


def format_seconds(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.1f}s"


def deploy_note(deployed: dict[str, Any], url: bool = False) -> str:
    """What a run deployed: ``churn v2`` (``at URL``), with a pipeline step's reason in
    parentheses; or ``churn: not deployed: accuracy 0.91 < live 0.93``."""
    note = str(deployed.get("note") or "")
    if deployed.get("version") is None:
        return f"{deployed['name']}: {note or 'not deployed'}"
    where = f" at {deployed['url']}" if url else ""
    why = f" ({note.removeprefix('deployed: ')})" if note and note != "deployed" else ""
    return f"{deployed['name']} v{deployed['version']}{where}{why}"


def deploy_label(deployed: dict[str, Any]) -> str:
    return "deployed" if deployed.get("version") is not None else "deploy"


def describe_run(record: RunRecord, message: str | None = None) -> str:
    """The few lines a user reads after one run."""
    name = record.step or record.notebook.rsplit("/", 1)[-1]
    if record.status == "succeeded":
        lines = [
            f"{OK_MARK} {name} succeeded in {format_seconds(record.duration_s)} (run {record.id})"
        ]
        lines.append(f"  metrics: {format_metrics(record.metrics)}")
        for deployed in record.deployed:
            lines.append(f"  {deploy_label(deployed)}: {deploy_note(deployed)}")
    else:
        took = format_seconds(record.duration_s)
        lines = [f"{FAIL_MARK} {name} {record.status} after {took} (run {record.id})"]
        if message:
            lines.append(f"  {message}")
    lines.append(f"  output: {record.output_path}")
    if record.mlflow_run_id:
        lines.append(f"  mlflow run: {record.mlflow_run_id}")
    return "\n".join(lines)


def sweep_table(swept: list[str], records: list[RunRecord]) -> str:
    metric_names = sorted({name for record in records for name in record.metrics})
    headers = ["#", *swept, "status", "time", *metric_names, "run"]
    rows = []
    for index, record in enumerate(records, start=1):
        rows.append(
            [
                str(index),
                *(format_value(record.parameters.get(name)) for name in swept),
                record.status,
                format_seconds(record.duration_s),
                *(
                    format_value(record.metrics[m]) if record.metrics.get(m) is not None else "-"
                    for m in metric_names
                ),
                record.id,
            ]
        )
    return table(headers, rows)


def runs_table(records: list[RunRecord]) -> str:
    rows = []
    for record in records:
        started = time.strftime("%Y-%m-%d %H:%M", time.localtime(record.created_at))
        rows.append(
            [
                record.id,
                record.step or record.notebook.rsplit("/", 1)[-1],
                record.status,
                started,
                format_seconds(record.duration_s),
                ", ".join(f"{k}={format_value(v)}" for k, v in sorted(record.parameters.items()))
                or "-",
                format_metrics(record.metrics),
            ]
        )
    return table(["id", "notebook", "status", "started", "time", "parameters", "metrics"], rows)


def run_details(record: RunRecord) -> str:
    lines = [
        f"run        {record.id}",
        f"notebook   {record.notebook}",
        f"status     {record.status}",
        f"kernel     {record.kernel}",
        f"started    {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(record.created_at))}",
        f"duration   {format_seconds(record.duration_s)}",
        f"output     {record.output_path}",
    ]
    if record.step:
        lines.append(f"step       {record.step} (group {record.group_id})")
    if record.mlflow_run_id:
        lines.append(f"mlflow     {record.mlflow_run_id}")
    lines.append(
        "parameters "
        + (", ".join(f"{k}={format_value(v)}" for k, v in sorted(record.parameters.items())) or "-")
    )
    lines.append("metrics    " + format_metrics(record.metrics))
    if record.logged_params:
        lines.append(
            "logged     "
            + ", ".join(f"{k}={format_value(v)}" for k, v in sorted(record.logged_params.items()))
        )
    for artifact in record.artifacts:
        lines.append(f"artifact   {artifact}")
    for deployed in record.deployed:
        lines.append(f"{deploy_label(deployed):<10} {deploy_note(deployed, url=True)}")
    if record.error:
        lines.append("error      " + (record.error.get("message") or json.dumps(record.error)))
    return "\n".join(lines)


def params_table(parameters: list[Parameter]) -> str:
    rows = [[p.name, p.type_name, format_value(p.to_dict()["default"]), p.help] for p in parameters]
    return table(["name", "type", "default", "help"], rows)


def describe_result(result: Any) -> str:
    """The closing summary of ``nbdeploy run``: one run, a sweep table or a pipeline table."""
    if hasattr(result, "steps"):
        rows = [
            [
                step.name,
                step.status,
                format_seconds(
                    step.record.duration_s if step.record and step.status != "cached" else None
                ),
                format_metrics(step.record.metrics) if step.record else "-",
                step.record.id if step.record else "-",
            ]
            for step in result.steps
        ]
        lines = [table(["step", "status", "time", "metrics", "run"], rows)]
        lines += [
            f"{FAIL_MARK} {s.name}: {s.message}" for s in result.steps if s.status == "failed"
        ]
        lines += [
            f"{OK_MARK if d.get('version') is not None else '-'} {s.name}: "
            + ("deployed " if d.get("version") is not None else "")
            + deploy_note(d)
            for s in result.steps
            if s.record and s.status == "succeeded"
            for d in s.record.deployed
        ]
        return "\n".join(lines)
    if hasattr(result, "outcomes"):
        lines = [sweep_table(result.swept, [o.record for o in result.outcomes])]
        lines += [
            f"{FAIL_MARK} run {i}: {o.message}"
            for i, o in enumerate(result.outcomes, start=1)
            if not o.ok
        ]
        lines.append(
            f"{len(result.outcomes) - result.failed} of {len(result.outcomes)} runs succeeded"
        )
        return "\n".join(lines)
    return describe_run(result.record, result.message)


def event_line(*event: Any) -> str:
    """One line as each sweep run or pipeline step finishes."""
    if len(event) == 1:  # a pipeline step
        step = event[0]
        detail = f" ({step.message})" if step.message and not step.ok else ""
        if step.record is not None and step.status == "succeeded" and step.record.deployed:
            notes = "; ".join(
                ("deployed " if d.get("version") is not None else "") + deploy_note(d)
                for d in step.record.deployed
            )
            detail = f" ({notes})"
        return f"{OK_MARK if step.ok else FAIL_MARK} step {step.name}: {step.status}{detail}"
    index, outcome = event
    detail = f" ({outcome.message})" if outcome.message else ""
    return (
        f"{OK_MARK if outcome.ok else FAIL_MARK} run {index + 1}: {outcome.record.status}{detail}"
    )
