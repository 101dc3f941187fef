"""An nbdeploy schedule as a Kubernetes CronJob: ``nbdeploy k8s --schedule NAME``.

The schedule (``nbdeploy schedule add NAME --cron ... -- run|batch ...``) keeps its clock
and policies; its command becomes the CronJob's Job:

- ``run NOTEBOOK ...``: the pipeline Job of ``nbdeploy k8s --pipeline`` (:mod:`.batch`);
- ``batch NAME INPUT --output OUTPUT``: the Indexed scoring Job of ``nbdeploy k8s NAME
  --batch`` (:mod:`.scoring`), its paths taken relative to the schedule's folder, which the
  claim holds (or given again with ``--batch`` and ``--output``).

What maps, and how:

- cron → ``spec.schedule`` (5 fields; a schedule with seconds is refused: a CronJob fires
  at most once a minute); tz → ``spec.timeZone``;
- overlap: skip → ``concurrencyPolicy: Forbid``, replace → ``Replace``, queue → ``Forbid``
  with a notice (Kubernetes does not queue a start: it skips it);
- catch-up: none → ``startingDeadlineSeconds: 60`` (a start missed by more is skipped);
  latest → a day, with a notice that Kubernetes starts at most the latest missed time;
  all → mapped to latest, with a notice (Kubernetes never runs every missed time);
- retries → the Job's retries (``backoffLimit``, per partition for a scoring Job), unless
  ``--retries`` says otherwise;
- ``--on`` (a health trigger): Kubernetes has none; a schedule with only ``--on`` is
  refused, one with both keeps its clock alone, with a notice.
"""

from __future__ import annotations

import argparse
import contextlib
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nbdeploy.k8s.options import ManifestError

if TYPE_CHECKING:
    from nbdeploy.k8s.plan import Manifests

NO_CATCH_UP_DEADLINE_SECONDS = 60
LATEST_CATCH_UP_DEADLINE_SECONDS = 86400
CONCURRENCY = {"skip": "Forbid", "replace": "Replace", "queue": "Forbid"}


def names_a_schedule(value: str | None) -> bool:
    """``--schedule`` names an nbdeploy schedule (one word, not a cron macro) rather than
    giving a cron expression (which has spaces)."""
    return bool(value) and len(str(value).split()) == 1 and not str(value).startswith("@")


def schedule_manifests(name: str, args: argparse.Namespace, store: Any = None) -> Manifests:
    """The CronJob of the nbdeploy schedule ``name``; ``args`` are ``nbdeploy k8s``'s
    (--claim, --image, --namespace, --retries, ... apply to its Job)."""
    from nbdeploy.k8s.options import check_schedule
    from nbdeploy.schedule.store import ScheduleStore
    from nbdeploy.store import default_store

    schedules = ScheduleStore(store or default_store())
    schedule = schedules.find(name)
    if schedule is None:
        known = ", ".join(s.name for s in schedules.all()) or "none"
        raise ManifestError(
            f"--schedule {name}: no nbdeploy schedule of that name (schedules: {known})",
            'a cron expression has spaces: --schedule "0 3 * * *" with --pipeline NOTEBOOK '
            "or NAME --batch INPUT; nbdeploy schedule list shows the schedules",
        )
    spec = schedule.spec
    if not spec.cron:
        raise ManifestError(
            f"schedule {name} fires on --on {spec.on} only: a health trigger has no "
            "Kubernetes equivalent (a CronJob fires on a clock)",
            "keep it on this machine (the daemon runs it), or give the schedule a --cron "
            "for the cluster",
        )
    fields = spec.cron.split()
    if len(fields) == 6:
        raise ManifestError(
            f"schedule {name}: its cron {spec.cron!r} has 6 fields (seconds first); a "
            "Kubernetes CronJob takes 5 (minute hour day-of-month month day-of-week) and "
            "fires at most once a minute",
            "add a schedule with a 5-field --cron for the cluster, e.g. --cron '*/5 * * * *'",
        )
    try:
        cron = check_schedule(spec.cron)
    except ValueError as error:
        raise ManifestError(f"schedule {name}: {error}") from None
    retries = args.retries if args.retries is not None else spec.retries
    words = list(spec.command)
    parsed = _parse(words, name)
    if words[0] == "run":
        result = _run_job(name, parsed, args, cron, retries)
    else:
        result = _batch_job(name, parsed, args, cron, retries, Path(spec.cwd))
    [cronjob] = result.objects
    cronjob["metadata"].setdefault("annotations", {})["nbdeploy.io/schedule"] = name
    cronjob_spec = cronjob["spec"]
    cronjob_spec["timeZone"] = spec.tz
    cronjob_spec["concurrencyPolicy"] = CONCURRENCY[spec.overlap]
    notices = list(result.notices)
    if spec.overlap == "queue":
        notices.append(
            f"schedule {name} queues a fire that overlaps a running one (--overlap queue); "
            "Kubernetes cannot queue: the CronJob skips that start (concurrencyPolicy Forbid)"
        )
    if spec.catch_up == "none":
        cronjob_spec["startingDeadlineSeconds"] = NO_CATCH_UP_DEADLINE_SECONDS
    else:
        cronjob_spec["startingDeadlineSeconds"] = LATEST_CATCH_UP_DEADLINE_SECONDS
        mapped = " (--catch-up all is mapped to latest)" if spec.catch_up == "all" else ""
        notices.append(
            f"schedule {name}: missed times are caught up within a day, and Kubernetes "
            f"starts at most the latest of them{mapped}"
        )
    if spec.on:
        notices.append(
            f"schedule {name} also fires on --on {spec.on}: a health trigger has no "
            "Kubernetes equivalent; the CronJob keeps the clock alone"
        )
    notices.insert(
        0, f"CronJob {cronjob['metadata']['name']}: {cron} ({spec.tz}), {spec.command_text}"
    )
    result.notices = notices
    return result


def _parse(words: list[str], name: str) -> argparse.Namespace:
    from nbdeploy.cli import _parser

    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
            return _parser().parse_args(words)
    except SystemExit:
        raise ManifestError(
            f"schedule {name}: its command does not parse: {errors.getvalue().strip()}"
        ) from None


def _run_job(
    name: str, parsed: argparse.Namespace, args: argparse.Namespace, cron: str, retries: int
) -> Manifests:
    from nbdeploy.k8s.batch import pipeline_manifests
    from nbdeploy.k8s.options import DEFAULT_WORKDIR, BatchOptions

    options = BatchOptions(
        schedule=cron,
        namespace=args.namespace,
        image=args.image,
        job_name=args.job_name or name,
        parallel=args.parallel if args.parallel is not None else parsed.parallel,
        retries=retries,
        timeout=args.timeout if args.timeout is not None else parsed.timeout,
        workdir=args.workdir or DEFAULT_WORKDIR,
        cpu=args.cpu,
        memory=args.memory,
        output_claim=args.output_claim,
        mlflow_uri=args.mlflow_uri,
    )
    result = pipeline_manifests(
        parsed.notebook, options, parameters=dict(parsed.parameter), sweep=parsed.sweep
    )
    if parsed.parameters_file:
        result.notices.append(
            f"the schedule's -f {parsed.parameters_file} is not passed to the pod: give its "
            "values with -p in the schedule's command"
        )
    return result


def _batch_job(
    name: str,
    parsed: argparse.Namespace,
    args: argparse.Namespace,
    cron: str,
    retries: int,
    cwd: Path,
) -> Manifests:
    from nbdeploy.k8s.scoring import ScoringJobOptions, scoring_manifests

    source = args.batch or _on_claim(parsed.input, cwd, "--batch", name)
    target = args.output or _on_claim(parsed.output, cwd, "--output", name)
    options = ScoringJobOptions(
        input=source,
        output=target,
        claim=args.claim,
        version=args.version if args.version is not None else parsed.version,
        partitions=args.partitions or 1,
        parallel=args.parallel,
        retries=retries,
        image=args.image,
        namespace=args.namespace,
        job_name=args.job_name or name,
        timeout=args.timeout,
        cpu=args.cpu,
        memory=args.memory,
        schedule=cron,
        keep=parsed.keep,
        features=parsed.features,
    )
    return scoring_manifests(parsed.name, options)


def _on_claim(path: str, cwd: Path, option: str, name: str) -> str:
    """A path of the schedule's command, relative to the schedule's folder (which the
    claim holds)."""
    try:
        return str(Path(path).resolve().relative_to(cwd.resolve()))
    except ValueError:
        raise ManifestError(
            f"schedule {name}: {path} is outside the schedule's folder {cwd}, so its place "
            "on the claim is unknown",
            f"say where it is on the claim: {option} PATH",
        ) from None
