"""The ``nbdeploy`` command line: a thin face over the same core as the magic and REST.

Imports stay light until a command runs, so ``nbdeploy --help`` answers at once. User
errors print one message (what, where, what to do) and exit 2; a failed run exits 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nbdeploy import __version__
from nbdeploy.batching.options import add_batch_command
from nbdeploy.deployment.options import DeployOptions, add_deploy_arguments
from nbdeploy.errors import NbdeployError
from nbdeploy.image.options import add_image_commands
from nbdeploy.k8s.options import (
    add_apply_arguments,
    add_batch_arguments,
    add_k8s_arguments,
    add_scoring_arguments,
)
from nbdeploy.monitor.metrics import DEFAULT_WINDOW
from nbdeploy.pipeline.options import add_parameter_option, add_run_arguments, run_request_from_args


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nbdeploy",
        description="Run notebooks as tracked, parameterized pipelines.",
    )
    parser.add_argument("--version", action="version", version=f"nbdeploy {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="run a notebook (or a pipeline.yaml) as a tracked pipeline",
        description="Run a notebook, a sweep of it, or a pipeline.yaml of notebooks.",
    )
    add_run_arguments(run)
    run.add_argument(
        "--sweep-index",
        metavar="N",
        help="run only combination N (from 0, in the sweep's order) of --sweep; env: N from "
        "JOB_COMPLETION_INDEX, as in the pods of nbdeploy k8s --pipeline --sweep",
    )

    params = commands.add_parser("params", help="list a notebook's parameters")
    params.add_argument("notebook")
    params.add_argument("--json", action="store_true")

    runs = commands.add_parser("runs", help="list runs, or show one")
    runs.add_argument("run_id", nargs="?", metavar="ID", help="a run id (or a unique prefix)")
    runs.add_argument("--limit", type=int, default=30)
    runs.add_argument("--json", action="store_true")

    deploy = commands.add_parser(
        "deploy",
        help="run a notebook, then deploy its function as a local service",
        description="Run NOTEBOOK as a tracked pipeline run, then deploy its entry function "
        "(--function, else the function of the cell tagged nbdeploy:serve, else predict) "
        "from that kernel.",
    )
    deploy.add_argument("notebook", nargs="?", help="the notebook (not with --from-mlflow)")
    target = deploy.add_mutually_exclusive_group()
    target.add_argument(
        "--from-mlflow",
        metavar="URI",
        help="serve a registered MLflow model instead: models:/NAME@ALIAS or models:/NAME/N",
    )
    target.add_argument("--function", metavar="NAME", help="the function to deploy")
    target.add_argument(
        "--object",
        metavar="VAR",
        help="deploy the fitted model held in this variable (/predict, /predict_proba)",
    )
    add_deploy_arguments(deploy)
    add_parameter_option(deploy)
    deploy.add_argument("--kernel", metavar="NAME")
    deploy.add_argument("--timeout", type=float, metavar="SECONDS")
    deploy.add_argument("--json", action="store_true")

    status = commands.add_parser("status", help="deployments: status, version, address")
    status.add_argument("name", nargs="?", help="one deployment (default: all)")
    status.add_argument("--json", action="store_true")
    _add_daemon_parser(commands)
    from nbdeploy.schedule.cli import add_schedule_parser

    add_schedule_parser(commands)
    stop = commands.add_parser("stop", help="stop a deployment's servers")
    stop.add_argument("name")
    stop.add_argument("--json", action="store_true")
    logs = commands.add_parser("logs", help="the last lines of a deployment's server log")
    logs.add_argument("name")
    logs.add_argument("--tail", type=int, default=50, metavar="N")
    logs.add_argument(
        "--requests", action="store_true", help="the last logged requests instead of the log"
    )
    logs.add_argument("--limit", type=int, default=20, metavar="N", help="requests shown (20)")
    logs.add_argument("--json", action="store_true", help="with --requests: one per line")
    rollback = commands.add_parser("rollback", help="serve the previous version again")
    rollback.add_argument("name")
    rollback.add_argument(
        "--to", type=int, metavar="N", help="a kept version by number (default: the previous)"
    )
    rollback.add_argument("--json", action="store_true")
    promote = commands.add_parser("promote", help="a canary in progress takes all the traffic now")
    promote.add_argument("name")
    promote.add_argument("--json", action="store_true")
    weights = commands.add_parser(
        "weights", help="split traffic by hand among running versions: NAME v1=90 v2=10"
    )
    weights.add_argument("name")
    weights.add_argument("split", nargs="+", metavar="vN=PERCENT")
    weights.add_argument("--json", action="store_true")
    key = commands.add_parser(
        "key", help="print a deployment's API key (for Authorization: Bearer KEY)"
    )
    key.add_argument("name")
    key.add_argument("--rotate", action="store_true", help="replace it with a new one")
    url = commands.add_parser(
        "url", help="print a deployment's address (for scripts: curl $(nbdeploy url NAME)/predict)"
    )
    url.add_argument("name")
    ab = commands.add_parser(
        "ab", help="an A/B test's arms and its decision (an always-valid sequential test)"
    )
    ab.add_argument("name")
    ab.add_argument("--alpha", type=float, default=0.05, help="false-positive rate (0.05)")
    ab.add_argument(
        "--experiment", metavar="ID", help="an earlier experiment (default: the current or last)"
    )
    ab.add_argument("--json", action="store_true")
    shadow = commands.add_parser(
        "shadow", help="a shadow version's agreement with the live one, latency and errors"
    )
    shadow.add_argument("name")
    shadow.add_argument("--json", action="store_true")
    show = commands.add_parser("show", help="a deployment's versions, or its generated code")
    show.add_argument("name")
    show.add_argument("--code", action="store_true", help="print the generated service.py")
    show.add_argument("--version", type=int, dest="version_number", metavar="N")
    show.add_argument("--json", action="store_true")

    metrics = commands.add_parser(
        "metrics",
        help="a deployment's traffic, latency, errors, input quality and drift",
        description="From the request log of NAME's services over --window: requests, error "
        "rate, latency percentiles, per feature missing values, values outside the training "
        "range and drift against the reference given at deploy time (--reference).",
    )
    metrics.add_argument("name")
    metrics.add_argument(
        "--window",
        default=DEFAULT_WINDOW,
        metavar="DURATION",
        help="e.g. 90s, 10m (default), 1h, 7d",
    )
    metrics.add_argument(
        "--rows", type=int, metavar="N", help="only the last N input rows of the window"
    )
    metrics.add_argument("--json", action="store_true", help="one JSON object")
    report = commands.add_parser(
        "report", help="a static HTML report of a deployment (what the dashboard shows)"
    )
    report.add_argument("name")
    report.add_argument(
        "-o", "--output", metavar="FILE", help="where to write it (default: NAME-report.html)"
    )
    report.add_argument(
        "--window",
        default=DEFAULT_WINDOW,
        metavar="DURATION",
        help="e.g. 90s, 10m (default), 1h, 7d",
    )
    report.add_argument("--json", action="store_true", help="one JSON object")
    k8s = commands.add_parser(
        "k8s",
        help="Kubernetes manifests for a deployment (and its rollout strategy) or a pipeline",
        description="Kubernetes manifests for deployment NAME, its versions served from the "
        "images nbdeploy image build makes; or with --pipeline a Job (a CronJob with "
        "--schedule, an Indexed Job for a --sweep) that runs a notebook or pipeline.yaml. "
        "A deployment's manifests follow what it does here: its live version serves, and a "
        "canary, A/B test or shadow in progress keeps its version and weights; --candidate N "
        "names a version to roll out. "
        "Without --out or --apply they are printed as one YAML stream (nbdeploy k8s NAME | "
        "kubectl apply -f -); with --out the files are written even when --apply fails.",
    )
    k8s.add_argument("name", nargs="?", help="a deployment (or --pipeline instead)")
    add_k8s_arguments(k8s)
    k8s.add_argument("--out", metavar="DIR", help="write a file per object into DIR")
    k8s.add_argument("--json", action="store_true")
    add_batch_arguments(k8s)
    add_scoring_arguments(k8s)
    add_apply_arguments(k8s)

    add_image_commands(commands)
    add_batch_command(commands)
    prune = commands.add_parser(
        "prune", help="remove old versions (never the live one or the rollback target)"
    )
    prune.add_argument("name", nargs="?", help="one deployment (default: all)")
    prune.add_argument("--keep", type=int, default=3, metavar="N", help="newest versions kept")
    prune.add_argument(
        "--registry", action="store_true", help="also delete their MLflow registry versions"
    )
    prune.add_argument("--json", action="store_true")

    delete = commands.add_parser(
        "delete",
        help="stop a deployment and remove its versions, logs and MLflow model (asks first)",
    )
    delete.add_argument("name", help="the deployment")
    delete.add_argument("--yes", action="store_true", help="do not ask (scripts, CI)")
    delete.add_argument(
        "--keep-registry", action="store_true", help="keep its MLflow registered model"
    )
    delete.add_argument("--json", action="store_true")

    ci = commands.add_parser("ci", help="continuous integration helpers")
    ci_commands = ci.add_subparsers(dest="ci_command", metavar="COMMAND", required=True)
    init = ci_commands.add_parser(
        "init",
        help="write a GitHub Actions workflow that runs pipelines",
        description="Write .github/workflows/nbdeploy.yml at the root of the git repository "
        "that holds the current folder (outside one: in the current folder). The workflow "
        "installs nbdeploy (see --install) and the project's requirements, and runs the "
        "targets.",
    )
    init.add_argument(
        "targets",
        nargs="*",
        metavar="NOTEBOOK_OR_PIPELINE",
        help="what the workflow runs, relative to the current folder (default: every "
        "pipeline.yaml in the repository)",
    )
    init.add_argument(
        "--path",
        default=".github/workflows/nbdeploy.yml",
        help="workflow file to write, relative to the repository's root",
    )
    init.add_argument("--python", default="3.11", help="Python version for the runner")
    init.add_argument(
        "--install",
        metavar="SPEC",
        help="how the workflow installs nbdeploy: a release on the package index "
        "(nbdeploy==0.1.0), a Git URL ('nbdeploy @ git+https://github.com/OWNER/nbdeploy@TAG') "
        "or the path of an nbdeploy wheel committed to the repository (default: the Git URL "
        "nbdeploy was installed from here, else nbdeploy==THIS_VERSION)",
    )
    init.add_argument("--force", action="store_true", help="overwrite an existing workflow")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        handler = {
            "run": cmd_run,
            "params": cmd_params,
            "runs": cmd_runs,
            "ci": cmd_ci,
            "deploy": cmd_deploy,
            "status": cmd_status,
            "stop": cmd_stop,
            "logs": cmd_logs,
            "rollback": cmd_rollback,
            "promote": cmd_promote,
            "ab": cmd_ab,
            "key": cmd_key,
            "url": cmd_url,
            "shadow": cmd_shadow,
            "weights": cmd_weights,
            "show": cmd_show,
            "prune": cmd_prune,
            "delete": cmd_delete,
            "k8s": cmd_k8s,
            "image": cmd_image,
            "metrics": cmd_metrics,
            "report": cmd_report,
            "daemon": cmd_daemon,
            "batch": cmd_batch,
            "schedule": cmd_schedule,
        }[args.command]
        return handler(args)
    except NbdeployError as error:
        _error(str(error))
        return error.exit_code
    except KeyboardInterrupt:
        _error("interrupted")
        return 130


def _error(message: str) -> None:
    print(f"nbdeploy: error: {message}", file=sys.stderr)


def _notice(message: str) -> None:
    print(f"nbdeploy: {message}", file=sys.stderr)


def _warn(message: str) -> None:
    print(f"nbdeploy: warning: {message}", file=sys.stderr)


def _print_json(data: Any) -> None:
    print(json.dumps(data, default=str))


def cmd_run(args: argparse.Namespace) -> int:
    from nbdeploy import api
    from nbdeploy.pipeline import summary
    from nbdeploy.pipeline.progress import LiveOutput, NullProgress, TerminalProgress

    request = run_request_from_args(args)
    if args.sweep_index is not None:
        from nbdeploy.k8s.batch import pick_combination

        request, chosen, count = pick_combination(args.notebook, request, args.sweep_index)
        _notice(f"combination {chosen.index} (of {count}, from 0): {chosen.label()}")
    is_pipeline = Path(args.notebook).suffix in api.PIPELINE_SUFFIXES
    quiet = args.json

    def progress_for(key: Any, *rest: Any) -> Any:
        if args.log_output and not quiet:
            return LiveOutput(prefix=f"[{key if is_pipeline else key + 1}] ")
        return NullProgress()

    def on_done(*event: Any) -> None:
        if not quiet:
            _notice(summary.event_line(*event))

    result = api.run(
        args.notebook,
        **request,
        progress=NullProgress() if quiet else TerminalProgress(log_output=args.log_output),
        progress_for=progress_for,
        on_done=on_done,
        notify=_notice,
        warn=_warn,
    )
    if args.junit:
        from nbdeploy.pipeline.junit import write_junit_for_result

        write_junit_for_result(args.junit, args.notebook, result)
    if quiet:
        _print_json(result.to_dict())
    else:
        print(summary.describe_result(result))
    return 0 if result.ok else 1


def cmd_batch(args: argparse.Namespace) -> int:
    from nbdeploy.batching.options import run_command

    return run_command(args, notify=_notice)


def cmd_params(args: argparse.Namespace) -> int:
    from nbdeploy import api
    from nbdeploy.pipeline.summary import params_table

    parameters = api.params(args.notebook)
    if args.json:
        _print_json([p.to_dict() for p in parameters])
    elif not parameters:
        print(f"{args.notebook} declares no parameters (no cell tagged `parameters`)")
    else:
        print(params_table(parameters))
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from nbdeploy import api
    from nbdeploy.pipeline.summary import run_details, runs_table

    if args.run_id:
        record = api.get_run(args.run_id)
        if args.json:
            _print_json(record.to_dict())
        else:
            if record.kind == "batch":
                from nbdeploy.batching.options import batch_run_details

                print(batch_run_details(record))
            else:
                print(run_details(record))
        return 0
    records = api.runs(limit=args.limit)
    if args.json:
        _print_json([record.to_dict() for record in records])
    elif not records:
        print("no runs yet: start one with `nbdeploy run NOTEBOOK`")
    else:
        print(runs_table(records))
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    from nbdeploy.deployment.report import curl_example, needs_key
    from nbdeploy.deployment.verbs import deploy_notebook
    from nbdeploy.deployment.versions.from_mlflow import deploy_mlflow_model
    from nbdeploy.pipeline.progress import NullProgress, TerminalProgress

    if bool(args.notebook) == bool(args.from_mlflow):
        raise NbdeployError(
            "give either a NOTEBOOK or --from-mlflow URI",
            "nbdeploy deploy train.ipynb, or nbdeploy deploy --from-mlflow models:/churn@champion",
        )
    options = DeployOptions.from_args(args)
    if args.from_mlflow:
        deployed = deploy_mlflow_model(
            args.from_mlflow,
            name=options.name,
            host=options.host,
            port=options.port,
            workers=options.workers,
            notify=_notice,
        )
        data = deployed.to_dict()
        if args.json:
            _print_json(data)
        else:
            print(
                f"✓ {data['name']} v{data['version']} serves {args.from_mlflow}: {data['endpoint']}"
            )
            schema = deployed.version.schema
            print("  try: " + curl_example(data["url"], schema, schema.get("example")))
            if not schema.get("width"):
                print("  (the model logged no signature: a row needs as many values as it has")
                print("  features; records, column -> value, are taken too)")
        return 0
    _, result = deploy_notebook(
        args.notebook,
        function=args.function,
        model=args.object,
        options=options,
        text_values={name: value for name, value in args.parameter},
        kernel=args.kernel,
        timeout=args.timeout,
        progress=NullProgress() if args.json else TerminalProgress(),
        notify=_notice,
        warn=_warn,
    )
    if args.json:
        _print_json(result)
    else:
        verb = "built and deployed" if result["built"] else "deployed"
        print(f"✓ {result['name']} v{result['version']} {verb}: {result['endpoint']}")
        schema = {"route": result["endpoint"][len(result["url"]) :], "inputs": result["inputs"]}
        key_of = result["name"] if needs_key(result["name"]) else None
        print("  try: " + curl_example(result["url"], schema, result.get("example"), key_of))
        if result.get("example"):
            from nbdeploy.widgets.deployment import call_example

            status, answer = call_example(result)
            print(f"  example call to v{result['version']}: {status} {answer[:200]}")
        print(f"  run: {result['run_id']}; logs: nbdeploy logs {result['name']}")
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    from nbdeploy import api

    reports = api.prune(args.name, keep=args.keep, registry=args.registry)
    if args.json:
        _print_json([report.to_dict() for report in reports])
        return 0
    for report in reports:
        removed = ", ".join(f"v{v}" for v in report.removed) or "nothing"
        kept = ", ".join(f"v{v}" for v in report.kept) or "-"
        print(
            f"{report.deployment}: removed {removed} ({report.freed_bytes / 2**20:.1f} MiB); "
            f"kept {kept}"
        )
        for error in report.errors:
            _warn(error)
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    from nbdeploy import api

    [deployment] = api.status(args.name)
    what = (
        f"{args.name} ({deployment.status}"
        + (f", v{deployment.live_version} live" if deployment.live_version else "")
        + "): every version, its request and server logs, its router and keys"
        + ("" if args.keep_registry else ", and its MLflow registered model")
    )
    if not args.yes:
        if not sys.stdin.isatty():
            raise NbdeployError(
                f"nbdeploy delete removes {what}; nothing asked, nothing removed",
                f"confirm with: nbdeploy delete {args.name} --yes",
            )
        answer = input(f"Delete {what}? It cannot be undone. Type the name to confirm: ")
        if answer.strip() != args.name:
            print(f"not deleted: {args.name} is as it was")
            return 1
    report = api.delete(args.name, registry=not args.keep_registry)
    if args.json:
        _print_json(report.to_dict())
    else:
        removed = ", ".join(f"v{v}" for v in report.removed) or "no versions"
        registry = f"; MLflow model {args.name} deleted" if report.registry_removed else ""
        print(f"✓ deleted {args.name}: {removed} ({report.freed_bytes / 2**20:.1f} MiB){registry}")
    for error in report.errors:
        _warn(error)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from nbdeploy import api
    from nbdeploy.deployment.report import describe_status, live_version

    deployments = api.status(args.name)
    rollout = api.rollout_state(args.name) if args.name else None
    if args.json:
        entries = []
        for deployment in deployments:
            live = live_version(deployment)
            mlflow_version = live.mlflow_version if live is not None else None
            entries.append(
                {**deployment.to_dict(), "live_mlflow_version": mlflow_version, "rollout": rollout}
            )
        _print_json(entries)  # a list of deployments, always (schedule list --json: schedules)
    else:
        print(describe_status(deployments, rollout))
        for deployment in deployments:
            if deployment.status == "failed":
                _print_last_error(deployment.name)
        schedules = _schedules_for_status(args)
        if schedules:
            from nbdeploy.schedule.cli import table

            print("\nschedules:\n" + table(schedules, color=sys.stdout.isatty()))
    return 0 if all(d.status != "failed" for d in deployments) else 1


def _schedules_for_status(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The schedules part of ``nbdeploy status``'s text (all of them, when no name is
    given); ``nbdeploy schedule list --json`` gives them as data."""
    if args.name:
        return []
    from nbdeploy import schedule

    return schedule.list_schedules()


def cmd_schedule(args: argparse.Namespace) -> int:
    from nbdeploy.schedule.cli import cmd_schedule as run_schedule_command

    return run_schedule_command(args)


def _print_last_error(name: str) -> None:
    from nbdeploy.deployment.verbs import why_failed

    lines = why_failed(name, 8)
    if lines:
        print(f"last log lines of {name}:")
        print("\n".join(f"  {line}" for line in lines))


def _add_daemon_parser(commands: Any) -> None:
    daemon = commands.add_parser(
        "daemon", help="the process that owns and heals every deployment of NBDEPLOY_HOME"
    )
    daemon.add_argument(
        "action",
        choices=["status", "stop", "restart", "logs", "install"],
        help="status: pid, uptime and what it supervises; stop/restart (deployments keep "
        "serving); logs: its log; install: start it at boot (systemd user unit)",
    )
    daemon.add_argument("--json", action="store_true", help="status as JSON")
    daemon.add_argument("--tail", type=int, default=50, metavar="N", help="log lines (50)")


def cmd_daemon(args: argparse.Namespace) -> int:
    from nbdeploy.deployment.runtime import admin

    if args.action == "logs":
        print("\n".join(admin.log_lines(args.tail)))
        return 0
    if args.action == "install":
        print(admin.install())
        return 0
    if args.action == "stop":
        print("stopped the daemon" if admin.stop() else "no daemon was running")
        return 0
    state = admin.restart() if args.action == "restart" else admin.status()
    if args.json:
        _print_json(state)
    else:
        print(admin.describe(state))
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    from nbdeploy import api

    deployment = api.stop(args.name)
    if args.json:
        _print_json(deployment.to_dict())
    else:
        print(f"stopped {deployment.name}")
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    from nbdeploy import api

    if args.requests:
        from nbdeploy.monitor.requests import print_requests

        print_requests(api.requests(args.name, limit=max(0, args.limit)), as_json=args.json)
        return 0
    lines = api.logs(args.name, args.tail)
    if args.json:
        _print_json({"name": args.name, "lines": lines})
    else:
        print("\n".join(lines))
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from nbdeploy import api

    return _serving_now(args, api.rollback(args.name, notify=_notice, to=args.to))


def cmd_promote(args: argparse.Namespace) -> int:
    from nbdeploy import api

    return _serving_now(args, api.promote(args.name, notify=_notice))


def _serving_now(args: argparse.Namespace, deployment: Any) -> int:
    if args.json:
        _print_json(deployment.to_dict())
    else:
        print(f"{deployment.name} is serving v{deployment.live_version} at {deployment.url}")
    return 0


def cmd_weights(args: argparse.Namespace) -> int:
    from nbdeploy import api
    from nbdeploy.errors import NbdeployError

    split: dict[str, float] = {}
    for item in args.split:
        key, _, value = item.partition("=")
        try:
            split[key.strip()] = float(value)
        except ValueError:
            raise NbdeployError(f"{item!r}: write VERSION=PERCENT, such as v2=10") from None
    deployment = api.weights(args.name, split)
    if args.json:
        _print_json(deployment.to_dict())
    else:
        shares = ", ".join(f"{k} {v:g}%" for k, v in split.items())
        print(f"{deployment.name}: {shares} at {deployment.url}")
    return 0


def cmd_url(args: argparse.Namespace) -> int:
    from nbdeploy import api

    [deployment] = api.status(args.name)
    if deployment.status == "stopped":
        raise NbdeployError(
            f"{args.name} is stopped: nothing answers at {deployment.url}",
            f"deploy it again (nbdeploy deploy NOTEBOOK --name {args.name}, or %deploy in "
            "its notebook)",
        )
    print(deployment.url)
    return 0


def cmd_key(args: argparse.Namespace) -> int:
    from nbdeploy import api

    print(api.key(args.name, rotate=args.rotate))
    return 0


def cmd_ab(args: argparse.Namespace) -> int:
    from nbdeploy import api
    from nbdeploy.monitor.abreport import format_ab_report

    report = api.ab_report(args.name, alpha=args.alpha, experiment=args.experiment)
    return _report(args, report, format_ab_report)


def cmd_shadow(args: argparse.Namespace) -> int:
    from nbdeploy import api
    from nbdeploy.monitor.shadow import format_shadow_report

    report = api.shadow_report(args.name)
    return _report(args, report, lambda r: format_shadow_report(args.name, r))


def _report(args: argparse.Namespace, report: Any, formatted: Any) -> int:
    if args.json:
        _print_json(report.to_dict())
    else:
        print(formatted(report))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from nbdeploy import api
    from nbdeploy.deployment.verbs import versions_of

    if args.code:
        print(api.show_code(args.name, args.version_number), end="")
        return 0
    versions = versions_of(args.name)
    if args.json:
        _print_json([v.to_dict() for v in versions])
        return 0
    from nbdeploy.deployment.report import version_label
    from nbdeploy.pipeline.summary import table

    rows = [
        [
            version_label(v),
            v.function,
            v.bento_tag,
            ", ".join(v.requirements),
            "batch" if v.options.get("batch") else "-",
        ]
        for v in versions
    ]
    print(table(["version", "function", "bento", "requirements", "batching"], rows))
    return 0


def cmd_ci(args: argparse.Namespace) -> int:
    from nbdeploy.ci import write_github_workflow

    path = write_github_workflow(
        args.targets,
        path=args.path,
        python_version=args.python,
        install=args.install,
        overwrite=args.force,
        notify=_notice,
    )
    print(f"wrote {path}")
    return 0


def cmd_metrics(args: argparse.Namespace) -> int:
    from nbdeploy import api
    from nbdeploy.monitor.metrics import summary_lines

    data = api.metrics(args.name, args.window, rows=args.rows)
    if args.json:
        _print_json(data)
    else:
        print("\n".join(summary_lines(data)))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from nbdeploy.monitor.metrics import parse_window
    from nbdeploy.widgets.report_html import write_report

    output = args.output or f"{args.name}-report.html"
    path = write_report(args.name, output, parse_window(args.window))
    if args.json:
        _print_json({"name": args.name, "path": str(path.resolve())})
    else:
        print(f"✓ report of {args.name} written to {path}")
    return 0


def cmd_k8s(args: argparse.Namespace) -> int:
    from nbdeploy import k8s

    result = k8s.from_args(args)
    files = k8s.write_and_apply(
        result,
        out=args.out,
        apply=args.apply,
        context=args.context,
        namespace=args.namespace,
        dry_run=args.dry_run,
    )
    for notice in result.notices:
        _notice(notice)
    applied = [
        {
            "kind": obj.get("kind"),
            "name": obj.get("metadata", {}).get("name"),
            "namespace": obj.get("metadata", {}).get("namespace"),
        }
        for obj in result.applied
    ]
    if args.json:
        _print_json(
            {
                "objects": [
                    {"kind": obj["kind"], "name": obj["metadata"]["name"]} for obj in result.objects
                ],
                "files": [str(path) for path in files],
                "notices": result.notices,
                "applied": applied,
                "dry_run": args.dry_run,
            }
        )
        return 0
    for path in files:
        print(path)
    if not args.apply:
        if not files:
            sys.stdout.write(k8s.to_yaml(result.objects))
        return 0
    verb = "accepted (dry run: nothing changed)" if args.dry_run else "applied"
    for entry in applied:
        where = f" in namespace {entry['namespace']}" if entry["namespace"] else ""
        print(f"{verb}: {entry['kind']}/{entry['name']}{where}")
    return 0


def run() -> None:
    """Console entry point: ``main()``, then a fast exit.

    Everything is written and committed when ``main`` returns; skipping interpreter
    teardown (atexit hooks and finalizers of the large libraries loaded on the way) saves
    most of a second per command.
    """
    # jsonschema's IRI format support (imported with nbformat) costs 0.7 s and is unused.
    sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]
    try:
        code = main()
    except KeyboardInterrupt:  # Ctrl-C before a command started (main handles it after)
        _error("interrupted")
        code = 130
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def cmd_image(args: argparse.Namespace) -> int:
    if args.image_command == "run":
        from nbdeploy.image.container import run_image

        running = run_image(args.spec, image=args.image, port=args.port)
        name = running.server.deployment
        if args.json:
            _print_json(running.to_dict())
        else:
            print(f"✓ {running.image} serving on {running.url}")
            print(f"  stop: nbdeploy stop {name}; logs: nbdeploy logs {name}")
        return 0
    from nbdeploy.image.build import build_image
    from nbdeploy.image.options import image_build_arguments
    from nbdeploy.pipeline.progress import NullProgress, TerminalProgress

    progress = NullProgress() if args.json else TerminalProgress(sys.stderr)
    result = build_image(
        args.spec, progress=progress, notify=_notice, **image_build_arguments(args)
    )
    if args.json:
        _print_json(result.to_dict())
    elif result.context_dir:
        print(f"✓ Dockerfile and build context of {result.image} in {result.context_dir}")
        print(f"  build it: docker build -t {result.image} {result.context_dir}")
    else:
        reused = " (dependencies reused)" if result.dependencies_reused else ""
        print(
            f"✓ built {result.image}: {result.size / 1e6:.0f} MB in {result.seconds:.1f} s{reused}"
        )
        if result.pushed:
            print(f"  pushed {result.pushed} {result.digest or ''}".rstrip())
        if args.pipeline:
            print(f"  its Job: nbdeploy k8s --pipeline {args.pipeline}")
        elif args.batch:
            print(f"  its Job: nbdeploy k8s {result.deployment} --batch INPUT --output OUTPUT")
        else:
            print(f"  run it here: nbdeploy image run {result.deployment}:{result.version}")
    return 0


if __name__ == "__main__":
    run()
