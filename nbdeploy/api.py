"""The Python face of nbdeploy's pipelines: ``nbdeploy.run``, ``params``, ``runs``.

The CLI and the ``%deploy`` magic call these same functions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from nbdeploy.monitor.metrics import DEFAULT_WINDOW
from nbdeploy.notebook.parameters import Parameter
from nbdeploy.pipeline.progress import Progress
from nbdeploy.pipeline.runner import Notify, RunOutcome, _ignore
from nbdeploy.schedule import Schedules
from nbdeploy.store.runs import RunRecord

PIPELINE_SUFFIXES = (".yaml", ".yml")
schedules = Schedules()  # nbdeploy.schedules.add/list/pause/...: nbdeploy.schedule


def params(notebook: str | Path) -> list[Parameter]:
    """The typed parameters a notebook declares in its cell tagged ``parameters``."""
    from nbdeploy.notebook.parameters import parse_parameters
    from nbdeploy.notebook.reader import read_notebook

    return parse_parameters(read_notebook(notebook))


def run(
    notebook: str | Path,
    parameters: Mapping[str, Any] | None = None,
    *,
    text_parameters: Mapping[str, str] | None = None,
    sweep: Sequence[str] = (),
    parallel: int | None = None,
    output_dir: str | Path | None = None,
    output_path: str | Path | None = None,
    kernel: str | None = None,
    timeout: float | None = None,
    mlflow: bool = True,
    force: bool = False,
    progress: Progress | None = None,
    progress_for: Callable[..., Progress] | None = None,
    on_done: Callable[..., None] | None = None,
    notify: Notify = _ignore,
    warn: Notify = _ignore,
    executor: str | None = None,
    scheduler: str | None = None,
    inputs: Sequence[str | Path] = (),
) -> Any:
    """Run a notebook (or a ``pipeline.yaml``) as a tracked pipeline.

    Parameters
    ----------
    notebook
        A ``.ipynb`` file, or a ``pipeline.yaml`` of several notebooks.
    parameters
        Typed values for the notebook's declared parameters (checked against their types).
    text_parameters
        Values as command-line text, converted to the declared types (``-p`` in the CLI).
    sweep
        ``"NAME=V1,V2"`` options: run the cartesian product of the values.
    parallel
        How many kernels run at once (sweeps and pipelines); default 1, with the dask
        executor one per worker.
    output_dir, output_path
        Where output notebooks go (default: the run's folder under NBDEPLOY_HOME).
    kernel
        Kernel name; default: the notebook's own when installed, else ``python3``.
    timeout
        Limit in seconds for a whole notebook run.
    mlflow
        Record the run in MLflow (``MLFLOW_TRACKING_URI``, else a SQLite store in
        NBDEPLOY_HOME).
    force
        Pipelines: re-run steps whose inputs are unchanged instead of reusing them.
    executor, scheduler
        ``"local"`` (default; a pipeline.yaml's ``executor:`` otherwise) or ``"dask"``:
        each run is a task on the Dask cluster at ``scheduler`` (default:
        ``NBDEPLOY_DASK_SCHEDULER``, else a ``distributed.LocalCluster`` here). A scheduler
        alone means ``"dask"``.
    inputs
        With the dask executor, a notebook's files and folders that travel with each run
        (default: the notebook's folder). Pipeline steps name theirs in ``inputs:``.

    Returns
    -------
    RunOutcome, SweepResult or PipelineResult; each has ``ok`` and ``to_dict()``.
    Bad input (unknown parameter, wrong type, unknown kernel, malformed pipeline) raises
    an ``NbdeployError`` before any kernel starts.
    """
    from nbdeploy.errors import ParameterError

    if Path(notebook).suffix in PIPELINE_SUFFIXES:
        if sweep:
            raise ParameterError("--sweep applies to a notebook, not to a pipeline.yaml")
        if inputs:
            raise ParameterError(
                "--input applies to a notebook; in a pipeline.yaml each step names its "
                "files in `inputs:`"
            )
        from nbdeploy.pipeline.dag import run_pipeline

        return run_pipeline(
            notebook,
            values=parameters,
            text_values=text_parameters,
            parallel=parallel,
            force=force,
            timeout=timeout,
            kernel=kernel,
            output_dir=output_dir,
            track_mlflow=mlflow,
            progress_for=progress_for,
            on_event=on_done,
            notify=notify,
            warn=warn,
            executor=executor,
            scheduler=scheduler,
        )
    from nbdeploy.pipeline.executors import resolve_executor, start_executor

    spec = resolve_executor(executor, scheduler)
    if inputs and spec.kind != "dask":
        raise ParameterError(
            "--input names the files that travel to Dask workers: use it with --executor dask",
            "a local run's kernel works in the notebook's folder and reads any file there",
        )
    input_paths = [Path(item).expanduser().resolve() for item in inputs] if inputs else None
    if sweep:
        from nbdeploy.pipeline.sweep import run_sweep

        return run_sweep(
            notebook,
            list(sweep),
            values=parameters,
            text_values=text_parameters,
            parallel=parallel,
            kernel=kernel,
            output_dir=output_dir,
            timeout=timeout,
            track_mlflow=mlflow,
            progress_for=progress_for,
            on_done=on_done,
            notify=notify,
            warn=warn,
            executor=spec.kind,
            scheduler=spec.scheduler,
            inputs=input_paths,
        )
    from nbdeploy.pipeline.runner import RunFiles, prepare_run

    if output_path is None and output_dir is not None:
        output_path = Path(output_dir) / Path(notebook).name
    prepared = prepare_run(
        notebook, parameters, text_parameters, kernel=kernel, output_path=output_path
    )
    prepared.files = RunFiles(paths=input_paths)
    with start_executor(spec, parallel or 1, notify=notify) as engine:
        engine.check([prepared])
        engine.ready()
        outcome: RunOutcome = engine.execute_run(
            prepared,
            timeout=timeout,
            progress=progress,
            track_mlflow=mlflow,
            notify=notify,
            warn=warn,
        )
    return outcome


def runs(limit: int = 50) -> list[RunRecord]:
    """The latest runs, newest first, with their metrics."""
    from nbdeploy.store import default_store
    from nbdeploy.store.runs import RunStore

    return RunStore(default_store()).recent(limit=limit)


def get_run(run_id: str) -> RunRecord:
    """One run by id (or a unique prefix of it)."""
    from nbdeploy.store import default_store
    from nbdeploy.store.runs import RunStore

    return RunStore(default_store()).get(run_id)


# -- services ----------------------------------------------------------------------------
def deploy(
    target: Any,
    name: str | None = None,
    *,
    namespace: Mapping[str, Any] | None = None,
    history: Sequence[str] | None = None,
    source: Mapping[str, Any] | None = None,
    notify: Notify = _ignore,
    **options: Any,
) -> Any:
    """Deploy a notebook function, or a fitted model, as a local HTTP service (see
    ``%deploy``).

    ``target`` is a function defined in the notebook (served at ``/<its name>``) or a
    fitted model with ``predict`` (served at ``/predict`` and, when it has one,
    ``/predict_proba``). Options are those of ``%deploy``: ``port``, ``host`` (127.0.0.1
    unless NBDEPLOY_ALLOW_REMOTE is set), ``workers``, ``batch``, ``reference`` (the name of
    the variable holding the training inputs), ``requirements``, ``extra_columns``
    ("refuse" or "drop") and ``mlflow``. ``namespace`` defaults to the notebook's globals.
    Returns a DeployResult with ``url``, ``version`` and ``to_dict()``.
    """
    from nbdeploy.deployment.options import DeployOptions
    from nbdeploy.deployment.verbs import deploy_function, deploy_model, is_model

    settings = DeployOptions.from_keywords({"name": name, **options})
    scope = namespace if namespace is not None else _kernel_namespace(target)
    if is_model(target):
        return deploy_model(target, namespace=scope, options=settings, source=source, notify=notify)
    return deploy_function(
        target,
        namespace=scope,
        history=list(history) if history is not None else _kernel_history(),
        options=settings,
        source=source,
        notify=notify,
    )


def _kernel_namespace(target: Any) -> Mapping[str, Any]:
    try:
        from IPython import get_ipython
    except ImportError:
        get_ipython = None
    shell = get_ipython() if get_ipython is not None else None
    if shell is not None:
        return shell.user_ns
    return getattr(target, "__globals__", {})


def _kernel_history() -> list[str]:
    """The cells this IPython kernel has executed (where notebook classes are found)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return []
    shell = get_ipython()
    return list(shell.user_ns.get("In", [])) if shell is not None else []


def status(name: str | None = None) -> Any:
    """Deployments (or one) with their live version, address and servers."""
    from nbdeploy.deployment.verbs import status as deployment_status

    return deployment_status(name)


def stop(name: str) -> Any:
    from nbdeploy.deployment.verbs import stop as stop_deployment

    return stop_deployment(name)


def logs(name: str, lines: int = 50) -> list[str]:
    from nbdeploy.deployment.verbs import logs as deployment_logs

    return deployment_logs(name, lines)


def requests(
    name: str,
    *,
    since: Any = None,
    until: Any = None,
    version: int | None = None,
    limit: int | None = None,
    frame: bool = False,
) -> Any:
    """The requests a deployment's services logged, oldest first: dicts with time (unix
    seconds), request_id, version, arm, endpoint, latency_ms, status, inputs, prediction,
    error; with ``frame=True`` a pandas DataFrame. ``since``/``until``: unix seconds or
    datetimes; ``limit``: the newest N."""
    from nbdeploy.monitor.requests import read_requests, requests_frame

    reader = requests_frame if frame else read_requests
    return reader(name, since=since, until=until, version=version, limit=limit)


def rollback(name: str, notify: Notify = _ignore, to: int | None = None) -> Any:
    """Serve the previous version of ``name`` again, or its kept version ``to``."""
    from nbdeploy.deployment.verbs import rollback as rollback_deployment

    return rollback_deployment(name, notify=notify, to=to)


def promote(name: str, notify: Notify = _ignore) -> Any:
    """A canary in progress takes all the traffic now."""
    from nbdeploy.deployment.verbs import promote as promote_canary

    return promote_canary(name, notify=notify)


def weights(name: str, split: dict[str, float]) -> Any:
    """Split traffic by hand among running versions: ``weights("churn", {"v1": 90, "v2": 10})``."""
    from nbdeploy.deployment.verbs import set_weights

    return set_weights(name, split)


def key(name: str, rotate: bool = False) -> str:
    """The API key of ``name``'s router (``--auth key``); ``rotate`` replaces it."""
    from nbdeploy.deployment.traffic import keys
    from nbdeploy.deployment.verbs import rotate_key
    from nbdeploy.deployment.verbs import status as deployment_status
    from nbdeploy.errors import DeployError

    deployment_status(name)
    if rotate:
        return rotate_key(name)
    existing = keys.read_key(name)
    if existing is None:
        raise DeployError(f"{name} needs no API key", "deploy it with --auth key to require one")
    return existing


def rollout_state(name: str) -> dict[str, Any]:
    """The traffic split, a canary in progress or its outcome, and the latest events."""
    from nbdeploy.deployment.verbs import rollout_state as state_of

    return state_of(name)


def ab_report(name: str, alpha: float = 0.05, experiment: str | None = None) -> Any:
    """The A/B test of ``name`` (its current or last experiment, or ``experiment`` by id):
    arms, outcomes and the always-valid decision."""
    from nbdeploy.deployment import traffic
    from nbdeploy.deployment.verbs import status as deployment_status
    from nbdeploy.monitor.abreport import ab_report as report

    deployment_status(name)  # a clear error for an unknown name
    return report(traffic.folder(name), alpha=alpha, experiment=experiment)


def shadow_report(name: str) -> Any:
    """The shadow version of ``name``: agreement, latency difference, errors."""
    from nbdeploy.deployment import traffic
    from nbdeploy.deployment.verbs import status as deployment_status
    from nbdeploy.monitor.shadow import shadow_report as report

    deployment_status(name)
    return report(traffic.folder(name))


def metrics(
    name: str, window: str | float = DEFAULT_WINDOW, rows: int | None = None
) -> dict[str, Any]:
    """``name``'s health over the last ``window`` (seconds, or "15m", "1h", "7d") and, with
    ``rows``, over its last that many input rows: requests, error rate, latency percentiles,
    per-feature missing values, values out of the training range and drift, prediction
    quality, CPU and memory, as ``nbdeploy metrics --json``."""
    from nbdeploy.monitor.metrics import MetricsError, parse_window, snapshot

    if rows is not None and rows < 1:
        raise MetricsError(f"--rows {rows}: at least 1")
    return snapshot(name, parse_window(window), last_rows=rows)


def kubernetes(
    name: str | None = None,
    out: str | Path | None = None,
    *,
    pipeline: str | Path | None = None,
    parameters: Mapping[str, Any] | None = None,
    sweep: Sequence[str] = (),
    apply: bool = False,
    context: str | None = None,
    dry_run: bool = False,
    **options: Any,
) -> Any:
    """Kubernetes manifests (``nbdeploy k8s``) for deployment ``name``, or with ``pipeline``
    for a notebook or pipeline.yaml: a Job that runs it with ``parameters`` (values as
    ``-p`` takes them; numbers, booleans, lists and dicts are converted), a CronJob with
    ``schedule="0 3 * * *"``, one Indexed Job for a ``sweep`` (``["NAME=V1,V2", ...]``).

    ``options`` are :class:`nbdeploy.k8s.K8sOptions` fields for a deployment (strategy,
    mesh, namespace, replicas, image, ...) and :class:`nbdeploy.k8s.BatchOptions` fields
    for a pipeline (schedule, namespace, image, parallel, retries, timeout, output_claim,
    mlflow_uri, ...). With ``out``, a file per object is written there; with ``apply``,
    the objects are applied to the cluster of the kubeconfig's ``context`` (server-side;
    ``dry_run``: checked by the cluster, nothing changed). Returns the
    :class:`nbdeploy.k8s.Manifests` (objects, notices, and what the cluster applied)."""
    from nbdeploy import k8s

    if (name is None) == (pipeline is None):
        raise k8s.ManifestError(
            "kubernetes(): give either a deployment name or pipeline=NOTEBOOK_OR_YAML",
            'kubernetes("churn", strategy="canary") or kubernetes(pipeline="train.ipynb")',
        )
    try:
        if pipeline is not None:
            batch = k8s.BatchOptions(**options)
        else:
            settings = k8s.K8sOptions(**options)
    except TypeError as error:
        kind = "BatchOptions" if pipeline is not None else "K8sOptions"
        raise k8s.ManifestError(
            f"kubernetes(): {error}", f"the options are those of nbdeploy.k8s.{kind}"
        ) from None
    if pipeline is not None:
        result = k8s.pipeline_manifests(pipeline, batch, parameters=parameters, sweep=sweep)
        namespace = batch.namespace
    elif parameters or sweep:
        raise k8s.ManifestError("kubernetes(): parameters and sweep go with pipeline=...")
    else:
        assert name is not None
        result = k8s.manifests(name, settings)
        namespace = settings.namespace
    k8s.write_and_apply(
        result,
        out=out,
        apply=apply,
        context=context,
        namespace=namespace,
        dry_run=dry_run,
    )
    return result


def show_code(name: str, version: int | None = None) -> str:
    from nbdeploy.deployment.verbs import show_code as code_of

    return code_of(name, version)


def delete(name: str, *, registry: bool = True) -> Any:
    """Stop ``name`` and remove everything it left: its versions (nbdeploy's and BentoML's
    stores), request and server logs, router configuration and keys, and its MLflow
    registered model (``registry=False`` keeps that). It cannot be undone."""
    from nbdeploy.deployment.versions.prune import delete as delete_deployment

    return delete_deployment(name, registry=registry)


def prune(name: str | None = None, *, keep: int = 3, registry: bool = False) -> list[Any]:
    """Remove all but the newest ``keep`` versions (never the live one or the rollback
    target) from nbdeploy's and BentoML's stores; MLflow registry versions too with
    ``registry=True``."""
    from nbdeploy.deployment.versions.prune import prune as prune_versions

    return prune_versions(name, keep=keep, registry=registry)


def batch(
    name: str,
    input: str | Path,
    output: str | Path,
    **options: Any,
) -> Any:
    """Score the rows of ``input`` (a CSV, Parquet or JSON Lines file, a folder of them, or
    a glob) with the live version of deployment ``name`` (or ``version=N``), without HTTP,
    and write the kept columns and the predictions to ``output`` (.parquet, .csv, .jsonl).
    Options are those of ``nbdeploy batch``: ``version``, ``keep``, ``features``,
    ``errors``, ``max_error_share``, ``executor`` ("local" or "dask"), ``scheduler``,
    ``workers``, ``chunk_rows``, ``resume``, ``mlflow``; and ``on_progress(rows_done,
    rows_total or None)``, ``notify(message)``. Returns a BatchResult (``ok`` is False when
    more than ``max_error_share`` of the rows failed; the output is written anyway)."""
    from nbdeploy.batching import run_batch

    return run_batch(name, input, output, **options)
