"""Batch pipelines on Kubernetes: ``nbdeploy k8s --pipeline NOTEBOOK_OR_YAML``.

A notebook or a pipeline.yaml runs on a cluster as it runs here, with ``nbdeploy run``
inside an image that holds nbdeploy, the notebook's packages and the project folder (the
folder of the notebook or of pipeline.yaml) at ``--workdir``:

- a **Job** (``restartPolicy: Never``) that runs ``nbdeploy run NOTEBOOK -p NAME VALUE
  ...`` once, retried ``--retries`` times, limited to ``--timeout`` seconds and removed a
  day after it finished;
- with ``--schedule CRON`` a **CronJob** that starts that Job on the schedule, never two
  at once (``concurrencyPolicy: Forbid``);
- a ``--sweep`` is **one Indexed Job**: a pod per combination, ``--parallel`` at a time;
  each pod runs ``nbdeploy run NOTEBOOK --sweep ... --sweep-index env``, which picks the
  combination numbered by the pod's ``JOB_COMPLETION_INDEX`` in the order ``nbdeploy run
  --sweep`` runs them (:func:`sweep_combinations`). A failed combination does not stop
  the others: retries and failures count per index.

Parameters are checked against the notebook's typed parameters (every step's, for a
pipeline.yaml; every combination, for a sweep) before any YAML is written, with the
errors ``nbdeploy run`` gives. The container's command is an argument list, never a
shell line: every value stays one argument, with ``$`` doubled so that Kubernetes' own
``$(VAR)`` expansion leaves it as given. An exit code of 2 (bad input) fails at once,
without retries.

Pods run like the serving pods (non-root user 10001, no privilege escalation, no
capabilities, the runtime's seccomp profile, no service-account token), with a writable
root file system: notebooks write their outputs beside them in the project folder.
NBDEPLOY_HOME (run records, output notebooks, artifacts, the default MLflow store) is an
emptyDir, or a folder per pod on ``--output-claim``; ``--mlflow-uri`` sets
MLFLOW_TRACKING_URI.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath, PurePosixPath
from typing import TYPE_CHECKING, Any

from nbdeploy.config import HOME_ENV, MLFLOW_URI_ENV
from nbdeploy.errors import NbdeployError, ParameterError, PipelineSpecError
from nbdeploy.k8s import workload
from nbdeploy.k8s.options import MAX_JOB_NAME, BatchOptions, ManifestError, check_batch

if TYPE_CHECKING:
    from nbdeploy.k8s.plan import Manifests

DEFAULT_IMAGE = "nbdeploy/pipeline-{name}:latest"
CONTAINER = "notebook"
HOME_PATH = "/var/lib/nbdeploy/home"  # NBDEPLOY_HOME in the pods
JOB_INDEX_ENV = "JOB_COMPLETION_INDEX"  # set by Kubernetes in each pod of an Indexed Job
INDEX_FROM_ENV = "env"  # nbdeploy run --sweep-index env
COMPONENT = {"app.kubernetes.io/component": "pipeline"}
DEFAULT_CPU = "1"
DEFAULT_MEMORY = "2Gi"
FINISHED_TTL_SECONDS = 86400  # a finished Job (and its pods' logs) stays a day
HISTORY_LIMIT = 3  # a CronJob's finished Jobs kept, succeeded and failed each
STARTING_DEADLINE_SECONDS = 600  # a start missed by more than this is skipped
MAX_COMPLETIONS = 100_000  # Kubernetes' limit for an Indexed Job
_NEGATIVE_NUMBER = re.compile(r"^-\d+$|^-\d*\.\d+$")  # what argparse does not take for an option


# -- sweeps: which combination a pod runs --------------------------------------------------
@dataclass(frozen=True)
class Combination:
    """One combination of a sweep: values of the ``NAME=V1,V2`` axes (command-line text)
    and of the ``NAME=[...]`` axes (typed, from JSON)."""

    index: int
    text: dict[str, str]
    typed: dict[str, Any]

    def label(self) -> str:
        return ", ".join(f"{name}={value}" for name, value in {**self.text, **self.typed}.items())


def sweep_combinations(sweep: Sequence[str]) -> list[Combination]:
    """Every combination of the ``--sweep`` options, numbered from 0 in the order ``nbdeploy
    run --sweep`` runs them: :func:`nbdeploy.pipeline.sweep.grid` over the text axes, then
    the JSON ones, as :func:`nbdeploy.pipeline.sweep.run_sweep` builds its grid."""
    from nbdeploy.pipeline.sweep import grid, parse_sweep_option

    text_axes: dict[str, list[Any]] = {}
    typed_axes: dict[str, list[Any]] = {}
    for option in sweep:
        name, values, is_text = parse_sweep_option(option)
        (text_axes if is_text else typed_axes)[name] = values
    return [
        Combination(
            index,
            {k: v for k, v in combo.items() if k in text_axes},
            {k: v for k, v in combo.items() if k in typed_axes},
        )
        for index, combo in enumerate(grid({**text_axes, **typed_axes}))
    ]


def pick_combination(
    notebook: str | Path, request: Mapping[str, Any], index_text: str
) -> tuple[dict[str, Any], Combination, int]:
    """``nbdeploy run NOTEBOOK --sweep ... --sweep-index N``: the request of ``api.run``
    (as :func:`nbdeploy.pipeline.options.run_request_from_args` gives it) for combination
    N alone; ``env`` takes N from JOB_COMPLETION_INDEX, as in the pods of an Indexed Job.
    Returns the request, the combination and how many the sweep has."""
    from nbdeploy.api import PIPELINE_SUFFIXES
    from nbdeploy.pipeline.sweep import sweep_output_name

    if Path(notebook).suffix in PIPELINE_SUFFIXES:
        raise ParameterError("--sweep-index picks a combination of a notebook's --sweep, "
                             "not of a pipeline.yaml")  # fmt: skip
    if not request.get("sweep"):
        raise ParameterError(
            "--sweep-index picks one combination of a --sweep: give the sweep too",
            "e.g. nbdeploy run train.ipynb --sweep alpha=0.1,0.5 --sweep-index 1",
        )
    combinations = sweep_combinations(request["sweep"])
    index = _sweep_index(index_text)
    if index >= len(combinations):
        raise ParameterError(
            f"--sweep-index {index}: the sweep has {len(combinations)} combinations, "
            f"numbered 0 to {len(combinations) - 1}"
        )
    chosen = combinations[index]
    picked = dict(request)
    picked["sweep"] = []
    picked["text_parameters"] = {**(request.get("text_parameters") or {}), **chosen.text}
    picked["parameters"] = {**(request.get("parameters") or {}), **chosen.typed}
    if request.get("output_dir"):
        name = sweep_output_name(Path(notebook).stem, index, {**chosen.text, **chosen.typed})
        picked["output_path"] = Path(request["output_dir"]) / name
        picked["output_dir"] = None
    return picked, chosen, len(combinations)


def _sweep_index(text: str) -> int:
    raw = text
    if text == INDEX_FROM_ENV:
        raw = os.environ.get(JOB_INDEX_ENV, "")
        if not raw:
            raise ParameterError(
                f"--sweep-index env: {JOB_INDEX_ENV} is not set (Kubernetes sets it in the "
                "pods of an Indexed Job)",
                "give the combination's number instead, e.g. --sweep-index 0",
            )
    if not raw.strip().isdigit():
        shown = f"{JOB_INDEX_ENV}={raw!r}" if text == INDEX_FROM_ENV else repr(text)
        raise ParameterError(
            f"--sweep-index {shown}: a combination's number, from 0, or env",
            "e.g. --sweep-index 0 for the first combination",
        )
    return int(raw)


# -- the Job -------------------------------------------------------------------------------
def pipeline_manifests(
    target: str | Path,
    options: BatchOptions | None = None,
    *,
    parameters: Mapping[str, Any] | None = None,
    sweep: Sequence[str] = (),
) -> Manifests:
    """The Job (or CronJob) that runs the notebook or pipeline.yaml ``target`` with
    ``parameters`` (values as ``-p`` gives them; numbers, booleans, lists and dicts are
    written as ``-p`` would take them) and ``sweep`` (``NAME=V1,V2`` options)."""
    from nbdeploy.api import PIPELINE_SUFFIXES
    from nbdeploy.k8s.plan import Manifests

    options = options or BatchOptions()
    check_batch(options)
    source = Path(target).expanduser()
    is_pipeline = source.suffix in PIPELINE_SUFFIXES
    text_values = {name: _as_text(name, value) for name, value in (parameters or {}).items()}
    if is_pipeline and sweep:
        raise ManifestError(
            "--sweep applies to a notebook, not to a pipeline.yaml",
            "give the notebook to sweep with --pipeline NOTEBOOK",
        )
    combinations = sweep_combinations(sweep) if sweep else []
    if len(combinations) > MAX_COMPLETIONS:
        raise ManifestError(
            f"the sweep has {len(combinations)} combinations; an Indexed Job runs at most "
            f"{MAX_COMPLETIONS}"
        )
    if options.parallel is not None and not (is_pipeline or combinations):
        raise ManifestError(
            "--parallel applies to a sweep (pods at once) or to a pipeline.yaml (notebooks "
            "at once); one notebook runs in one pod"
        )
    if is_pipeline:
        _check_pipeline(source, text_values)
    else:
        _check_notebook(source, text_values, combinations)
    name = options.job_name or job_name_for(source)
    image = options.image or DEFAULT_IMAGE.format(name=name)
    job = _job(name, image, source, options, text_values, list(sweep), len(combinations))
    notices = [
        f"{job['kind']} {name} runs `nbdeploy run` in image {image}: it must hold nbdeploy, "
        f"the notebook's packages and the folder {source.resolve().parent.name}/ at "
        f"{options.workdir}, writable by uid {workload.RUN_AS_USER}"
        + ("" if options.image else " (--image names yours)")
    ]
    if combinations:
        notices.append(
            f"one pod per combination: {len(combinations)}, "
            f"{min(options.parallel or 1, len(combinations))} at a time (--parallel)"
        )
    if options.output_claim is None and options.mlflow_uri is None:
        notices.append(
            "run records and output notebooks stay in the pods (an emptyDir): keep them "
            "with --output-claim CLAIM, or track the runs with --mlflow-uri URI"
        )
    return Manifests([job], notices)


def job_name_for(source: Path) -> str:
    """A Kubernetes name (a DNS-1123 label) from the notebook's name, or for a file named
    pipeline.yaml from its folder's; ManifestError when nothing of it can be one."""
    from nbdeploy.api import PIPELINE_SUFFIXES

    stem = source.stem
    if source.suffix in PIPELINE_SUFFIXES and stem == "pipeline":
        stem = source.resolve().parent.name or stem
    name = dns_label(stem)
    if not name:
        raise ManifestError(
            f"cannot make a Kubernetes name out of {source.name!r}: it has no letters or digits",
            "name the Job with --job-name NAME (lowercase letters, digits and '-')",
        )
    return name


def dns_label(text: str, limit: int = MAX_JOB_NAME) -> str:
    """``text`` as a DNS-1123 label: accents dropped, lowercase, runs of other characters
    as one '-', at most ``limit`` characters; empty when nothing is left."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    label = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")
    return label[:limit].rstrip("-")


def _as_text(name: str, value: Any) -> str:
    """A parameter's value as the text ``-p NAME VALUE`` takes, one argument of the pod's
    command; refused when nbdeploy run's parser would read it as an option."""
    from nbdeploy.notebook.parameters import json_safe

    if isinstance(value, str):
        text = value
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif value is None:
        text = "none"
    elif isinstance(value, int | float):
        text = repr(value)
    elif isinstance(value, dt.date | PurePath):
        text = json_safe(value)
    else:
        try:
            text = json.dumps(json_safe(value))
        except (TypeError, ValueError):
            raise ParameterError(
                f"parameter {name!r}: {type(value).__name__} values cannot be passed to the "
                "pod; give text, a number, a boolean, a date, a list or a dict"
            ) from None
    if "\0" in text:
        raise ParameterError(f"parameter {name!r}: a value cannot hold a NUL character")
    if text.startswith("-") and not _NEGATIVE_NUMBER.match(text):
        raise ParameterError(
            f"parameter {name!r}: the value {text!r} starts with '-', which nbdeploy run "
            "would read as an option",
            "give it as the parameter's default in the notebook, or in pipeline.yaml",
        )
    return text


def _check_notebook(
    source: Path, text_values: dict[str, str], combinations: list[Combination]
) -> None:
    """What ``nbdeploy run`` checks before a kernel starts: the names and types of the
    parameters, with each combination of the sweep."""
    from nbdeploy.notebook.parameters import parse_parameters, resolve_parameters
    from nbdeploy.notebook.reader import read_notebook

    notebook = read_notebook(source)
    declared = parse_parameters(notebook)
    for combination in combinations or [Combination(0, {}, {})]:
        resolve_parameters(
            notebook, declared, combination.typed, {**text_values, **combination.text}
        )


def _check_pipeline(source: Path, text_values: dict[str, str]) -> None:
    """pipeline.yaml is read as ``nbdeploy run`` reads it; each ``-p`` value must be
    declared by some step, and fit the type of every step that declares it."""
    from nbdeploy.notebook.parameters import parse_parameters, resolve_parameters
    from nbdeploy.notebook.reader import read_notebook
    from nbdeploy.pipeline.dag import load_pipeline

    pipeline = load_pipeline(source)
    deploying = [step.name for step in pipeline.steps if step.deploy is not None]
    if deploying:  # refused, not ignored: a Job that silently skips a deploy surprises
        raise PipelineSpecError(
            f"{pipeline.path.name}, step {deploying[0]!r}: `deploy` updates a deployment on "
            "this machine from the step's kernel; a Kubernetes Job has no such deployment to "
            "update (there is no cluster-side deploy)",
            "run this pipeline here with `nbdeploy run`, or use a pipeline.yaml without "
            "`deploy:` blocks for the Job (serve on the cluster with `nbdeploy k8s NAME`)",
        )
    steps = []
    for step in pipeline.steps:
        notebook = read_notebook(step.notebook)
        steps.append((step.name, notebook, parse_parameters(notebook)))
    declared = {parameter.name for _, _, parameters in steps for parameter in parameters}
    unused = [name for name in text_values if name not in declared]
    if unused:
        raise PipelineSpecError(
            f"no step of {pipeline.path.name} declares the parameter(s) {', '.join(unused)}"
        )
    for step_name, notebook, parameters in steps:
        names = {parameter.name for parameter in parameters}
        given = {name: value for name, value in text_values.items() if name in names}
        try:
            resolve_parameters(notebook, parameters, None, given)
        except NbdeployError as error:
            raise PipelineSpecError(
                f"{pipeline.path.name}, step {step_name!r}: {error.message}", error.hint
            ) from None


def _literal(text: str) -> str:
    """``text`` as Kubernetes passes it on: it expands ``$(VAR)`` in a container's args and
    env values, and reads ``$$`` as one ``$``."""
    return text.replace("$", "$$")


def run_arguments(
    source: Path,
    options: BatchOptions,
    text_values: Mapping[str, str],
    sweep: Sequence[str],
) -> list[str]:
    """``nbdeploy run``'s arguments in the pod, one item per argument, before Kubernetes'
    escaping: the notebook (or pipeline.yaml) where the image holds it, then the values."""
    # --log-output: the cells' output in the pod's log (kubectl logs), as they run
    arguments = ["run", str(PurePosixPath(options.workdir) / source.name), "--log-output"]
    for name, value in text_values.items():
        arguments += ["-p", name, value]
    for option in sweep:
        arguments += ["--sweep", option]
    if sweep:
        arguments += ["--sweep-index", INDEX_FROM_ENV]
    elif options.parallel is not None:  # a pipeline.yaml: its notebooks at once
        arguments += ["--parallel", str(options.parallel)]
    return arguments


def _job(
    name: str,
    image: str,
    source: Path,
    options: BatchOptions,
    text_values: Mapping[str, str],
    sweep: list[str],
    combinations: int,
) -> dict[str, Any]:
    labels = {workload.NAME_LABEL: name, **COMPONENT, **workload.MANAGED_BY}
    arguments = run_arguments(source, options, text_values, sweep)
    template = _pod_template(image, arguments, options, labels)
    spec: dict[str, Any] = {}
    if combinations:
        spec["completionMode"] = "Indexed"
        spec["completions"] = combinations
        spec["parallelism"] = min(options.parallel or 1, combinations)
        spec["backoffLimitPerIndex"] = options.retries  # one combination's failures
        give_up = "FailIndex"
    else:
        spec["backoffLimit"] = options.retries
        give_up = "FailJob"
    spec["podFailurePolicy"] = {
        "rules": [
            {  # a pod evicted or preempted does not count as a failure
                "action": "Ignore",
                "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
            },
            {  # bad input (nbdeploy's exit code 2) fails the same way every time
                "action": give_up,
                "onExitCodes": {
                    "containerName": CONTAINER,
                    "operator": "In",
                    "values": [NbdeployError.exit_code],
                },
            },
        ]
    }
    if options.timeout is not None:
        spec["activeDeadlineSeconds"] = math.ceil(options.timeout)
    if options.schedule is None:
        spec["ttlSecondsAfterFinished"] = FINISHED_TTL_SECONDS
    spec["template"] = template
    annotations = {"nbdeploy.io/source": source.name}
    if combinations:
        annotations["nbdeploy.io/combinations"] = str(combinations)
    meta = workload.metadata(name, options.namespace, labels=labels, annotations=annotations)
    if options.schedule is None:
        return {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": spec}
    return {
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


def _pod_template(
    image: str, arguments: list[str], options: BatchOptions, labels: dict[str, str]
) -> dict[str, Any]:
    home_volume, home_mount, home_env = workload.writable_volume(
        "home", HOME_PATH, claim=options.output_claim, size=None
    )
    env = [
        *home_env,
        {"name": HOME_ENV, "value": HOME_PATH},
        {"name": "PYTHONUNBUFFERED", "value": "1"},  # the log shows each line as it comes
    ]
    if options.mlflow_uri is not None:
        env.append({"name": MLFLOW_URI_ENV, "value": _literal(options.mlflow_uri)})
    memory = options.memory or DEFAULT_MEMORY
    container = {
        "name": CONTAINER,
        "image": image,
        "command": ["nbdeploy"],
        "args": [_literal(argument) for argument in arguments],
        "workingDir": options.workdir,
        "env": env,
        "resources": {
            "requests": {"cpu": options.cpu or DEFAULT_CPU, "memory": memory},
            "limits": {"memory": memory},
        },
        "securityContext": workload.container_security(read_only_root=False),
        "volumeMounts": [home_mount, {"name": "scratch", "mountPath": "/tmp"}],
    }
    return {
        "metadata": {"labels": dict(labels)},  # copies: YAML would write shared ones as aliases
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "securityContext": workload.pod_security(),
            "containers": [container],
            "volumes": [home_volume, {"name": "scratch", "emptyDir": {"sizeLimit": "1Gi"}}],
        },
    }
