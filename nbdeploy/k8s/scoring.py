"""Batch scoring on Kubernetes: ``nbdeploy k8s NAME --batch INPUT --output OUTPUT --claim PVC``.

One **Indexed Job**: ``--partitions`` pods in all (completions), ``--parallel`` at a time,
each running ``python -m nbdeploy.batching.pod --part env`` (:mod:`nbdeploy.batching.pod`)
in the version's batch image (``nbdeploy image build NAME --batch``: the version image
plus nbdeploy and pyarrow, tagged ``nbdeploy/NAME:vN-batch``). INPUT and OUTPUT are paths
on the PersistentVolumeClaim ``--claim``, mounted at ``/data``; OUTPUT becomes a folder of
parts (``part-KKKKK.parquet`` and ``_errors-KKKKK.jsonl`` per pod), as Spark and Dask
write. A failed pod is retried ``--retries`` times for its partition alone
(``backoffLimitPerIndex``); bad input (exit 2) and too many failed rows (exit 3) fail
the partition at once.

Pods run as the other nbdeploy pods do (non-root 10001, no privilege escalation, no
capabilities, the runtime's seccomp profile, no service-account token), with a read-only
root file system: they write to the claim and to an emptyDir at /tmp only.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

from nbdeploy.errors import NbdeployError
from nbdeploy.k8s import workload
from nbdeploy.k8s.options import MAX_JOB_NAME, ManifestError, _claim_problems, _common_problems

if TYPE_CHECKING:
    from nbdeploy.k8s.plan import Manifests

CLAIM_MOUNT = "/data"  # where the pods see the claim
CONTAINER = "score"
COMPONENT = {"app.kubernetes.io/component": "batch"}
BATCH_TAG_SUFFIX = "-batch"
DEFAULT_CPU = "1"
DEFAULT_MEMORY = "2Gi"
FINISHED_TTL_SECONDS = 86400
MAX_COMPLETIONS = 100_000
FAIL_AT_ONCE_EXIT_CODES = [NbdeployError.exit_code, 3]  # bad input; too many failed rows
_SINGLE_FILE = (".csv", ".jsonl", ".ndjson")
_PATH_CHARACTER = re.compile(r"^[^\x00-\x1f\x7f]+$")


@dataclass
class ScoringJobOptions:
    """How ``nbdeploy k8s NAME --batch`` scores INPUT into OUTPUT on the claim."""

    input: str
    output: str
    claim: str | None = None
    version: int | None = None  # default: the live version
    partitions: int = 1
    parallel: int | None = None
    retries: int = 0
    image: str | None = None  # default: the version's batch image
    namespace: str | None = None
    job_name: str | None = None
    timeout: float | None = None
    cpu: str | None = None
    memory: str | None = None
    schedule: str | None = None  # a cron expression: a CronJob (Forbid) around the Job
    keep: list[str] | None = None  # input columns carried to the output (default: all)
    features: list[str] | None = None  # for a version that takes rows of numbers


def scoring_options_from_args(args: Any) -> ScoringJobOptions:
    """``nbdeploy k8s NAME --batch INPUT --output OUTPUT ...``'s options."""
    return ScoringJobOptions(
        input=args.batch,
        output=args.output,
        claim=args.claim,
        version=args.version,
        partitions=args.partitions if args.partitions is not None else 1,
        parallel=args.parallel,
        retries=args.retries if args.retries is not None else 0,
        image=args.image,
        namespace=args.namespace,
        job_name=args.job_name,
        timeout=args.timeout,
        cpu=args.cpu,
        memory=args.memory,
        schedule=args.schedule,
    )


def batch_image_tag(name: str, version: int) -> str:
    """The batch image of version ``version``: the version image's tag plus ``-batch``."""
    from nbdeploy.image.reference import DEFAULT_REPOSITORY

    return f"{DEFAULT_REPOSITORY.format(name=name)}:v{version}{BATCH_TAG_SUFFIX}"


def claim_path(text: str, option: str) -> str:
    """A path on the claim, relative to its mount: ``in/x.csv`` or ``/data/in/x.csv``;
    refused when it leaves the claim (``..``, another absolute path) or is empty."""
    raw = str(text).strip()
    if not raw or not _PATH_CHARACTER.match(raw):
        raise ManifestError(f"{option} {text!r}: a path on the claim, such as in/2026-12-07/")
    path = PurePosixPath(raw)
    if path.is_absolute():
        if not path.is_relative_to(CLAIM_MOUNT):
            raise ManifestError(
                f"{option} {text}: an absolute path outside the claim (mounted at {CLAIM_MOUNT})",
                f"give a path relative to the claim, e.g. in/scores.csv (seen as "
                f"{CLAIM_MOUNT}/in/scores.csv in the pods)",
            )
        path = path.relative_to(CLAIM_MOUNT)
    if ".." in path.parts:
        raise ManifestError(
            f"{option} {text}: '..' would leave the claim", "give a path inside the claim"
        )
    if str(path) in ("", "."):
        raise ManifestError(f"{option} {text}: names the claim itself; give a file or folder in it")
    return str(path)


def check_scoring(options: ScoringJobOptions) -> list[str]:
    problems = _common_problems(options.namespace, options.cpu, options.memory)
    if options.claim is None:
        problems.append(
            "--batch needs --claim PVC: the PersistentVolumeClaim that holds INPUT and "
            f"OUTPUT (mounted at {CLAIM_MOUNT})"
        )
    problems += _claim_problems(options.claim, "--claim")
    if not 1 <= options.partitions <= MAX_COMPLETIONS:
        problems.append(f"--partitions {options.partitions}: between 1 and {MAX_COMPLETIONS}")
    if options.parallel is not None and not 1 <= options.parallel <= 10000:
        problems.append(f"--parallel {options.parallel}: between 1 and 10000")
    if not 0 <= options.retries <= 100:
        problems.append(f"--retries {options.retries}: between 0 and 100")
    if options.timeout is not None and not (math.isfinite(options.timeout) and options.timeout > 0):
        problems.append(f"--timeout {options.timeout:g}: a positive number of seconds")
    if options.image is not None:
        try:
            workload.check_image(options.image)
        except ValueError as error:
            problems.append(str(error))
    if options.job_name is not None and not (
        re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", options.job_name)
        and len(options.job_name) <= MAX_JOB_NAME
    ):
        problems.append(
            f"--job-name {options.job_name!r}: lowercase letters, digits and '-', at most "
            f"{MAX_JOB_NAME} characters"
        )
    return problems


def scoring_manifests(name: str, options: ScoringJobOptions, store: Any = None) -> Manifests:
    """The Indexed Job (a CronJob around it with ``options.schedule``) that scores
    ``options.input`` with version ``options.version`` of deployment ``name``."""
    from nbdeploy.batching.pod import output_kind
    from nbdeploy.k8s.options import check_schedule
    from nbdeploy.k8s.plan import Manifests

    problems = check_scoring(options)
    if options.schedule is not None:
        try:
            options.schedule = check_schedule(options.schedule)
        except ValueError as error:
            problems.append(str(error))
    if problems:
        raise ManifestError("; ".join(problems), "nbdeploy k8s --help lists the options")
    source = claim_path(options.input, "--batch")
    target = claim_path(options.output, "--output")
    try:
        output_kind(target)
    except NbdeployError as error:
        raise ManifestError(
            f"--output {options.output}: parts are written as .parquet, .csv or .jsonl",
            "end OUTPUT (a folder of parts) in .parquet, .csv or .jsonl, or give no extension "
            "(Parquet parts)",
        ) from error
    if source.lower().endswith(_SINGLE_FILE) and options.partitions > 1:
        raise ManifestError(
            f"--partitions {options.partitions}: the input {source} is one CSV or JSON Lines "
            "file, which is one partition",
            "split it into files in a folder (--batch FOLDER, a partition per file or group "
            "of files), or write it as Parquet (its row groups are split)",
        )
    version = _version(name, options.version, store)
    image = options.image or batch_image_tag(name, version.version)
    from nbdeploy.k8s.batch import dns_label

    job_name = options.job_name or dns_label(f"{name}-v{version.version}-batch")
    job = scoring_job(job_name, image, source, target, options, name, version.version)
    notices = [
        f"{job['kind']} {job_name} scores {CLAIM_MOUNT}/{source} on claim {options.claim} with "
        f"{name} v{version.version} in image {image}"
        + (
            ""
            if options.image
            else f" (build it: nbdeploy image build {name}:{version.version} "
            "--batch, then push it where the cluster pulls from)"
        ),
        f"the output is a folder of parts, {CLAIM_MOUNT}/{target}/part-KKKKK.* and "
        "_errors-KKKKK.jsonl per pod: read it whole with pandas.read_parquet(FOLDER) or "
        "pyarrow.dataset.dataset(FOLDER)",
        f"{options.partitions} partition(s), {min(options.parallel or 1, options.partitions)} "
        "pod(s) at a time (--partitions, --parallel)",
    ]
    return Manifests([job], notices)


def _version(name: str, number: int | None, store: Any) -> Any:
    from nbdeploy.deployment.store import DeploymentNotFoundError, DeploymentStore
    from nbdeploy.store import default_store

    deployments = DeploymentStore(store or default_store())
    deployment = deployments.get(name)  # an unknown name: the error lists the deployments
    known = [v.version for v in deployments.versions(name)]
    listed = ", ".join(f"v{n}" for n in known) or "none"
    if number is None:
        number = deployment.live_version or (max(known) if known else None)
    if number is None or number not in known:
        raise DeploymentNotFoundError(
            f"deployment {name!r} has no version {number} (versions: {listed})"
            if number is not None
            else f"deployment {name!r} has no version yet",
            "name one of its versions with --version N",
        )
    return deployments.version(name, number)


def _literal(text: str) -> str:
    return text.replace("$", "$$")  # Kubernetes expands $(VAR) in args; $$ is one $


def pod_arguments(source: str, target: str, options: ScoringJobOptions) -> list[str]:
    """The pod's arguments after ``python -m nbdeploy.batching.pod``, before escaping."""
    from nbdeploy.batching.pod import IMAGE_VERSION_DIR

    columns: list[str] = []
    for option, names in (("--keep", options.keep), ("--features", options.features)):
        if names:
            columns += [option, *names]
    return [
        "--version-dir", IMAGE_VERSION_DIR,
        "--input", f"{CLAIM_MOUNT}/{source}",
        "--output", f"{CLAIM_MOUNT}/{target}",
        "--part", "env",
        "--partitions", str(options.partitions),
        "--root", CLAIM_MOUNT,
        *columns,
    ]  # fmt: skip


def scoring_job(
    job_name: str,
    image: str,
    source: str,
    target: str,
    options: ScoringJobOptions,
    deployment: str,
    version: int,
) -> dict[str, Any]:
    labels = {workload.NAME_LABEL: job_name, **COMPONENT, **workload.MANAGED_BY}
    memory = options.memory or DEFAULT_MEMORY
    container = {
        "name": CONTAINER,
        "image": image,
        "command": ["python", "-m", "nbdeploy.batching.pod"],
        "args": [_literal(a) for a in pod_arguments(source, target, options)],
        "env": [{"name": "PYTHONUNBUFFERED", "value": "1"}],
        "resources": {
            "requests": {"cpu": options.cpu or DEFAULT_CPU, "memory": memory},
            "limits": {"memory": memory},
        },
        "securityContext": workload.container_security(read_only_root=True),
        "volumeMounts": [
            {"name": "data", "mountPath": CLAIM_MOUNT},
            {"name": "scratch", "mountPath": "/tmp"},
        ],
    }
    template = {
        "metadata": {"labels": dict(labels)},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "securityContext": workload.pod_security(),
            "containers": [container],
            "volumes": [
                {"name": "data", "persistentVolumeClaim": {"claimName": options.claim}},
                {"name": "scratch", "emptyDir": {"sizeLimit": "1Gi"}},
            ],
        },
    }
    parallelism = min(options.parallel or 1, options.partitions)
    spec: dict[str, Any] = {
        "completionMode": "Indexed",
        "completions": options.partitions,
        "parallelism": parallelism,
        "backoffLimitPerIndex": options.retries,  # a partition's retries, each on its own
        "podFailurePolicy": {
            "rules": [
                {  # a pod evicted or preempted does not count as a failure
                    "action": "Ignore",
                    "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
                },
                {  # bad input or too many failed rows: the same every time
                    "action": "FailIndex",
                    "onExitCodes": {
                        "containerName": CONTAINER,
                        "operator": "In",
                        "values": list(FAIL_AT_ONCE_EXIT_CODES),
                    },
                },
            ]
        },
    }
    if options.timeout is not None:
        spec["activeDeadlineSeconds"] = math.ceil(options.timeout)
    if options.schedule is None:
        spec["ttlSecondsAfterFinished"] = FINISHED_TTL_SECONDS
    spec["template"] = template
    annotations = {
        "nbdeploy.io/deployment": deployment,
        "nbdeploy.io/version": str(version),
        "nbdeploy.io/input": source,
        "nbdeploy.io/output": target,
    }
    meta = workload.metadata(job_name, options.namespace, labels=labels, annotations=annotations)
    if options.schedule is None:
        job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": spec}
    else:
        from nbdeploy.k8s.batch import HISTORY_LIMIT, STARTING_DEADLINE_SECONDS

        job = {
            "apiVersion": "batch/v1",
            "kind": "CronJob",
            "metadata": meta,
            "spec": {
                "schedule": options.schedule,
                "concurrencyPolicy": "Forbid",
                "startingDeadlineSeconds": STARTING_DEADLINE_SECONDS,
                "successfulJobsHistoryLimit": HISTORY_LIMIT,
                "failedJobsHistoryLimit": HISTORY_LIMIT,
                "jobTemplate": {"metadata": {"labels": dict(labels)}, "spec": spec},
            },
        }
    return job
