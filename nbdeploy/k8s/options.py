"""The options of ``nbdeploy k8s`` (and of :func:`nbdeploy.kubernetes`), checked before
anything is written: those of a deployment's manifests (:class:`K8sOptions`), of a
pipeline's Job or CronJob (:class:`BatchOptions`, with ``--pipeline``) and of ``--apply``.
Kept light: the command line's help imports it."""

from __future__ import annotations

import argparse
import math
import re
from dataclasses import dataclass, fields

from nbdeploy.deployment.options import percentages
from nbdeploy.errors import NbdeployError

STRATEGIES = ("rolling", "blue-green", "canary", "ab", "shadow")
MESHES = ("istio", "gateway-api")
DEFAULT_PROMETHEUS = "http://prometheus-server.monitoring.svc.cluster.local"
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_CLAIM = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")  # a DNS-1123 subdomain
_URL = re.compile(r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~/-]*)?$")


class ManifestError(NbdeployError):
    """The manifests asked for cannot be written as given."""


@dataclass
class K8sOptions:
    strategy: str = "rolling"
    mesh: str = "istio"
    namespace: str | None = None
    replicas: int = 2
    max_replicas: int | None = None  # an autoscaler from replicas up to this
    image: str | None = None  # a repository (tagged vN per version) or one image
    # The version to roll out (default: the one tried here, else the live one serves).
    candidate: int | None = None
    weight: float | None = None  # A/B, canary: the new version's share; shadow: % mirrored
    steps: list[float] | None = None
    interval: float | None = None
    cpu: str | None = None
    memory: str | None = None
    prometheus: str = DEFAULT_PROMETHEUS
    request_log_claim: str | None = None  # a PersistentVolumeClaim for the request logs


def add_k8s_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default="rolling",
        help="rolling (default): one Deployment, updated in place; blue-green, ab, shadow: "
        "a Deployment per version and a route between them; canary: an Argo Rollouts "
        "Rollout with metric analysis",
    )
    parser.add_argument(
        "--mesh",
        choices=MESHES,
        default="istio",
        help="routes as an Istio VirtualService (default) or a Gateway API HTTPRoute",
    )
    parser.add_argument("--namespace", metavar="NS")
    parser.add_argument("--replicas", type=int, default=2, metavar="N", help="default 2")
    parser.add_argument(
        "--max-replicas", type=int, metavar="N", help="add an autoscaler (CPU 70%%) up to N"
    )
    parser.add_argument(
        "--image",
        metavar="IMAGE",
        help="the image repository, each version tagged vN (default nbdeploy/NAME, as "
        "nbdeploy image build tags them); or one image:tag",
    )
    parser.add_argument(
        "--candidate",
        type=int,
        metavar="N",
        help="the version to roll out: rolling and blue-green switch to vN, canary, ab and "
        "shadow try it beside the live version (default: the version a canary, A/B test or "
        "shadow in progress here tries, at its share here; with none in progress the live "
        "version serves, and ab and shadow need --candidate)",
    )
    parser.add_argument(
        "--weight",
        type=float,
        metavar="P",
        help="ab: the new version's share; canary: its first step; shadow: percent of "
        "requests mirrored (default: as here, else ab 50, shadow 100)",
    )
    parser.add_argument("--steps", type=percentages, metavar="P,P,...", help="canary steps")
    parser.add_argument("--interval", type=float, metavar="SECONDS", help="canary step length")
    parser.add_argument("--cpu", metavar="Q", help="CPU requested per pod (default 250m/worker)")
    parser.add_argument(
        "--memory", metavar="Q", help="memory per pod (default: from the model's size)"
    )
    parser.add_argument(
        "--prometheus",
        metavar="URL",
        default=DEFAULT_PROMETHEUS,
        help="canary analysis: the Prometheus that scrapes the pods",
    )
    parser.add_argument(
        "--request-log-claim",
        metavar="CLAIM",
        help="keep the pods' request logs on this PersistentVolumeClaim (a folder per pod; "
        "ReadWriteMany with several replicas) instead of an emptyDir",
    )


def options_from_args(args: argparse.Namespace) -> K8sOptions:
    return K8sOptions(
        strategy=args.strategy,
        mesh=args.mesh,
        namespace=args.namespace,
        replicas=args.replicas,
        max_replicas=args.max_replicas,
        image=args.image,
        candidate=args.candidate,
        weight=args.weight,
        steps=args.steps,
        interval=args.interval,
        cpu=args.cpu,
        memory=args.memory,
        prometheus=args.prometheus,
        request_log_claim=args.request_log_claim,
    )


def check(options: K8sOptions) -> None:
    problems: list[str] = []
    if options.strategy not in STRATEGIES:
        problems.append(f"--strategy {options.strategy!r}: one of {', '.join(STRATEGIES)}")
    if options.mesh not in MESHES:
        problems.append(f"--mesh {options.mesh!r}: one of {', '.join(MESHES)}")
    if not 1 <= options.replicas <= 1000:
        problems.append(f"--replicas {options.replicas}: between 1 and 1000")
    if options.max_replicas is not None and not (options.replicas <= options.max_replicas <= 1000):
        problems.append(f"--max-replicas {options.max_replicas}: between --replicas and 1000")
    if options.weight is not None and not 0 < options.weight <= 100:
        problems.append(f"--weight {options.weight:g}: a percentage above 0, at most 100")
    if options.interval is not None and not 1 <= options.interval <= 86400:
        problems.append(f"--interval {options.interval:g}: seconds between 1 and 86400")
    if not _URL.match(options.prometheus):
        problems.append(f"--prometheus {options.prometheus!r}: an http(s) URL")
    problems += _common_problems(options.namespace, options.cpu, options.memory)
    problems += _claim_problems(options.request_log_claim, "--request-log-claim")
    if problems:
        raise ManifestError("; ".join(problems), "nbdeploy k8s --help lists the options")


def _common_problems(namespace: str | None, cpu: str | None, memory: str | None) -> list[str]:
    problems: list[str] = []
    if namespace is not None and not _DNS_LABEL.match(namespace):
        problems.append(
            f"--namespace {namespace!r}: lowercase letters, digits and '-' (at most 63)"
        )
    for text, option in ((cpu, "--cpu"), (memory, "--memory")):
        try:
            check_quantity(text, option)
        except ValueError as error:
            problems.append(str(error))
    return problems


def _claim_problems(claim: str | None, option: str) -> list[str]:
    if claim is None or _CLAIM.match(claim):
        return []
    return [
        f"{option} {claim!r}: a PersistentVolumeClaim name (lowercase letters, digits, '-', '.')"
    ]


_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti|k|M|G|T)?$")


def check_quantity(text: str | None, option: str) -> str | None:
    if text is not None and not _QUANTITY.match(text):
        raise ValueError(f"{option} {text!r}: a Kubernetes quantity such as 500m, 2, 512Mi or 1Gi")
    return text


# -- pipelines: a Job or CronJob that runs nbdeploy run (nbdeploy k8s --pipeline) -------
DEFAULT_WORKDIR = "/home/nbdeploy/work"  # where the image holds the project
MAX_JOB_NAME = 52  # a CronJob's name leaves 11 characters for its Jobs' suffix
_WORKDIR = re.compile(r"^(/[A-Za-z0-9_.][A-Za-z0-9_.-]*)+/?$")
_MLFLOW_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*(:[^\s\x00-\x1f\x7f]+)?$")


@dataclass
class BatchOptions:
    """How a pipeline's Job (or CronJob) runs; the notebook or pipeline.yaml, its
    parameters and its sweep are given beside these."""

    schedule: str | None = None  # a cron expression: a CronJob
    namespace: str | None = None
    image: str | None = None  # default nbdeploy/pipeline-NAME:latest
    job_name: str | None = None  # default: from the notebook's (or folder's) name
    parallel: int | None = None  # pods at once for a sweep; kernels at once for a pipeline
    retries: int = 0  # a failed pod (a sweep: a failed combination) is run again this often
    timeout: float | None = None  # seconds for the whole Job: activeDeadlineSeconds
    workdir: str = DEFAULT_WORKDIR
    cpu: str | None = None
    memory: str | None = None
    output_claim: str | None = None  # NBDEPLOY_HOME on this PersistentVolumeClaim
    mlflow_uri: str | None = None  # MLFLOW_TRACKING_URI inside the pods


def add_batch_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``nbdeploy k8s --pipeline`` (``-p`` and ``--sweep`` come from
    ``nbdeploy run``'s own definitions, so that they read the same)."""
    from nbdeploy.pipeline.options import add_parameter_option

    group = parser.add_argument_group(
        "pipelines (--pipeline)",
        "a Job that runs `nbdeploy run` inside an image holding nbdeploy, the notebook's "
        "packages and the project folder (that of the notebook or pipeline.yaml) at "
        "--workdir; -p NAME VALUE sets a parameter, as for nbdeploy run",
    )
    group.add_argument(
        "--pipeline",
        metavar="NOTEBOOK_OR_YAML",
        help="write a Job (a CronJob with --schedule) that runs this notebook or pipeline.yaml",
    )
    group.add_argument(
        "--schedule",
        metavar="CRON|SCHEDULE",
        help='a CronJob: a cron expression (5 fields, with spaces: "0 3 * * *") around the '
        "Job of --pipeline or NAME --batch; or the name of an nbdeploy schedule (one word, no "
        "spaces; nbdeploy schedule list), alone: its cron, time zone, overlap, catch-up and "
        "retries go into the CronJob and its `run ...` or `batch ...` command becomes the Job",
    )
    add_parameter_option(parser)
    group.add_argument(
        "--sweep",
        action="append",
        default=[],
        metavar="NAME=V1,V2,...",
        help="as nbdeploy run --sweep: one Indexed Job, a pod per combination; repeatable",
    )
    group.add_argument(
        "--parallel",
        type=int,
        metavar="N",
        help="a sweep: pods at once (default 1); a pipeline.yaml: notebooks at once in its pod",
    )
    group.add_argument(
        "--retries",
        type=int,
        metavar="N",
        help="run a failed pod (a sweep: a failed combination) again up to N times (default 0)",
    )
    group.add_argument("--timeout", type=float, metavar="SECONDS", help="a limit for the whole Job")
    group.add_argument(
        "--workdir",
        metavar="DIR",
        help=f"where the image holds the project folder (default {DEFAULT_WORKDIR})",
    )
    group.add_argument(
        "--output-claim",
        metavar="CLAIM",
        help="keep NBDEPLOY_HOME (run records, output notebooks, artifacts) on this "
        "PersistentVolumeClaim, a folder per pod (default: an emptyDir, gone with the pod)",
    )
    group.add_argument("--mlflow-uri", metavar="URI", help="MLFLOW_TRACKING_URI inside the pods")
    group.add_argument(
        "--job-name",
        metavar="NAME",
        help="the Job's name (default: from the notebook's name, or pipeline.yaml's folder)",
    )


def add_scoring_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``nbdeploy k8s NAME --batch INPUT --output OUTPUT`` (an Indexed Job
    that scores files on a PersistentVolumeClaim; --parallel, --retries, --timeout,
    --job-name, --schedule, --image, --cpu and --memory apply too)."""
    group = parser.add_argument_group(
        "batch scoring (NAME --batch)",
        "an Indexed Job that scores INPUT with the version's batch image (nbdeploy image "
        "build NAME --batch); INPUT and OUTPUT are paths on --claim, mounted at /data. OUTPUT "
        "becomes a folder of parts (part-KKKKK.parquet, or .csv/.jsonl after OUTPUT's "
        "extension, and _errors-KKKKK.jsonl per pod), read whole with "
        "pandas.read_parquet(FOLDER). Partitions: INPUT's files, sorted, in --partitions "
        "contiguous groups; a single Parquet file's row groups in contiguous ranges; a "
        "single CSV or JSON Lines file is one partition (split it into files first)",
    )
    group.add_argument("--batch", metavar="INPUT", help="a file, folder or glob on the claim")
    group.add_argument("--output", metavar="OUTPUT", help="the folder of parts on the claim")
    group.add_argument("--claim", metavar="PVC", help="the PersistentVolumeClaim of the data")
    group.add_argument(
        "--partitions", type=int, metavar="N", help="pods in all (completions; default 1)"
    )
    group.add_argument("--version", type=int, metavar="N", help="default: the live version")


def add_apply_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("applying (--apply)")
    group.add_argument(
        "--apply",
        action="store_true",
        help="send the objects to the cluster of your kubeconfig (server-side apply; needs "
        "pip install 'nbdeploy[k8s]')",
    )
    group.add_argument("--context", metavar="NAME", help="the kubeconfig context to apply to")
    group.add_argument(
        "--dry-run",
        action="store_true",
        help="with --apply: the cluster checks and admits the objects but changes nothing",
    )


_SERVING_ONLY = ("strategy", "mesh", "replicas", "max_replicas", "candidate", "weight",
                 "steps", "interval", "prometheus", "request_log_claim")  # fmt: skip
_PIPELINE_ONLY = ("schedule", "parameter", "sweep", "parallel", "retries", "timeout",
                  "workdir", "output_claim", "mlflow_uri", "job_name")  # fmt: skip


_SCORING_ONLY = ("batch", "output", "claim", "partitions", "version")
_NOT_FOR_SCORING = ("parameter", "sweep", "workdir", "output_claim", "mlflow_uri")


def _given(args: argparse.Namespace, names: tuple[str, ...]) -> list[str]:
    return [name for name in names if getattr(args, name, None) not in (None, [])]


def _refuse(given: list[str], where: str) -> None:
    if given:
        options = ", ".join("-p" if n == "parameter" else "--" + n.replace("_", "-") for n in given)
        raise ManifestError(f"{options}: only for {where}")


def _serving_given(args: argparse.Namespace) -> list[str]:
    defaults = K8sOptions()
    return [name for name in _SERVING_ONLY if getattr(args, name) != getattr(defaults, name)]


def check_command(args: argparse.Namespace) -> None:
    """``nbdeploy k8s``: a deployment NAME (with --batch: a scoring Job), --pipeline, or
    --schedule SCHEDULE alone, each with its own options."""
    from nbdeploy.k8s.schedules import names_a_schedule

    if names_a_schedule(args.schedule):
        if args.name or args.pipeline:
            raise ManifestError(
                f"--schedule {args.schedule} names an nbdeploy schedule, whose command says "
                f"what runs: leave out {'NAME' if args.name else '--pipeline'}",
                'for a CronJob of your own, give a cron expression: --schedule "0 3 * * *"',
            )
        _refuse(_serving_given(args), "a deployment's manifests (nbdeploy k8s NAME)")
        if not args.apply and (args.context or args.dry_run):
            raise ManifestError("--context and --dry-run go with --apply")
        return
    if bool(args.name) == bool(args.pipeline):
        raise ManifestError(
            "give either a deployment NAME or --pipeline NOTEBOOK_OR_YAML",
            "nbdeploy k8s churn (a deployment's manifests), or nbdeploy k8s --pipeline "
            "train.ipynb (a Job that runs the notebook)",
        )
    if args.pipeline:
        _refuse(_given(args, _SCORING_ONLY), "a scoring Job (nbdeploy k8s NAME --batch INPUT)")
        given = _serving_given(args)
        where = "a deployment's manifests (nbdeploy k8s NAME), not with --pipeline"
    elif args.batch:
        _refuse(_serving_given(args), "a deployment's manifests, not with --batch")
        given = _given(args, _NOT_FOR_SCORING)
        where = "--pipeline NOTEBOOK_OR_YAML, not for a scoring Job"
        if args.output is None:
            raise ManifestError("--batch INPUT needs --output OUTPUT (a folder of parts)")
    else:
        _refuse(_given(args, _SCORING_ONLY), "a scoring Job (nbdeploy k8s NAME --batch INPUT)")
        given = [name for name in _PIPELINE_ONLY if getattr(args, name) not in (None, [])]
        where = "--pipeline NOTEBOOK_OR_YAML, not for a deployment's manifests"
    if given:
        options = ", ".join("-p" if n == "parameter" else "--" + n.replace("_", "-") for n in given)
        raise ManifestError(f"{options}: only for {where}")
    if not args.apply and (args.context or args.dry_run):
        raise ManifestError("--context and --dry-run go with --apply")


def batch_options_from_args(args: argparse.Namespace) -> BatchOptions:
    given = {f.name: getattr(args, f.name) for f in fields(BatchOptions)}
    return BatchOptions(**{name: value for name, value in given.items() if value is not None})


def check_batch(options: BatchOptions) -> None:
    problems = _common_problems(options.namespace, options.cpu, options.memory)
    if options.schedule is not None:
        try:
            options.schedule = check_schedule(options.schedule)
        except ValueError as error:
            problems.append(str(error))
    if options.image is not None:
        from nbdeploy.k8s.workload import check_image

        try:
            check_image(options.image)
        except ValueError as error:
            problems.append(str(error))
    if options.job_name is not None and not (
        _DNS_LABEL.match(options.job_name) and len(options.job_name) <= MAX_JOB_NAME
    ):
        problems.append(
            f"--job-name {options.job_name!r}: lowercase letters, digits and '-', starting "
            f"and ending with a letter or digit, at most {MAX_JOB_NAME} characters"
        )
    if options.parallel is not None and not 1 <= options.parallel <= 10000:
        problems.append(f"--parallel {options.parallel}: between 1 and 10000")
    if not 0 <= options.retries <= 100:
        problems.append(f"--retries {options.retries}: between 0 and 100")
    if options.timeout is not None and not (math.isfinite(options.timeout) and options.timeout > 0):
        problems.append(f"--timeout {options.timeout:g}: a positive number of seconds")
    if not _WORKDIR.match(options.workdir) or "/../" in options.workdir + "/":
        problems.append(
            f"--workdir {options.workdir!r}: an absolute path of letters, digits, '.', '_', "
            "'-' and '/' (without '..')"
        )
    problems += _claim_problems(options.output_claim, "--output-claim")
    if options.mlflow_uri is not None and not _MLFLOW_URI.match(options.mlflow_uri):
        problems.append(
            f"--mlflow-uri {options.mlflow_uri!r}: a tracking URI such as "
            "http://mlflow.ml.svc.cluster.local:5000 (no spaces or control characters)"
        )
    if problems:
        raise ManifestError("; ".join(problems), "nbdeploy k8s --help lists the options")


_CRON_MACROS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
# (what, lowest, highest, names from the lowest on)
_CRON_FIELDS: tuple[tuple[str, int, int, tuple[str, ...]], ...] = (
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day of month", 1, 31, ()),
    ("month", 1, 12, _MONTHS),
    ("day of week", 0, 7, _DAYS),
)


def check_schedule(text: str) -> str:
    """A CronJob's schedule as Kubernetes reads it: five fields (minute, hour, day of
    month, month, day of week), or one of @hourly, @daily, @weekly, @monthly, @yearly.
    Returns it with single spaces; ValueError says what is wrong."""
    parts = text.split()
    if len(parts) == 1 and parts[0].lower() in _CRON_MACROS:
        return parts[0].lower()
    example = 'e.g. "0 3 * * *" (03:00 every day) or "*/15 * * * 1-5"'
    if len(parts) != 5:
        raise ValueError(
            f"--schedule {text!r}: a cron expression has 5 fields (minute, hour, day of "
            f"month, month, day of week), this one has {len(parts)}; {example}"
        )
    for part, (what, low, high, names) in zip(parts, _CRON_FIELDS, strict=True):
        for item in part.split(","):
            problem = _cron_item(item, low, high, names)
            if problem:
                raise ValueError(f"--schedule {text!r}: {what} {item!r}: {problem}; {example}")
    return " ".join(parts)


def _cron_item(item: str, low: int, high: int, names: tuple[str, ...]) -> str | None:
    base, slash, step = item.partition("/")
    if slash and not (step.isdigit() and int(step) >= 1):
        return "the step after '/' is a whole number of at least 1"
    if base in ("*", "?"):
        return None
    bounds = base.split("-")
    if len(bounds) > 2:
        return "a value, a range A-B, or *"
    values = []
    for bound in bounds:
        if bound.isdigit():
            values.append(int(bound))
        elif bound.lower() in names:
            values.append(low + names.index(bound.lower()))
        else:
            allowed = f"a number from {low} to {high}"
            return allowed + (f" or a name ({names[0]}...{names[-1]})" if names else "")
    if any(not low <= value <= high for value in values):
        return f"out of range: {low} to {high}"
    if len(values) == 2 and values[0] > values[1]:
        return "a range's start is after its end"
    return None
