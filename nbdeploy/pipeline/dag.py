"""Pipelines of notebooks (``pipeline.yaml``): steps run in dependency order, independent
steps in parallel, outputs handed downstream as parameters, unchanged steps cached.

A step::

    - name: train                 # unique
      notebook: train.ipynb       # relative to pipeline.yaml
      parameters: {n_estimators: 100}
      outputs: {model_path: models/model.joblib}   # files this step writes
      needs: [prepare]            # steps that must succeed first
      inputs: [data/raw.csv]      # with a Dask executor: what travels (default: its folder)
      deploy: {name: churn, function: predict, when: "accuracy >= live.accuracy"}
                                  # deploy what the run made (nbdeploy.pipeline.step_deploy)

and, at the top, ``executor: dask`` (or ``{kind: dask, scheduler: tcp://HOST:8786}``) runs
the steps on a Dask cluster (:mod:`nbdeploy.pipeline.executors`).

Each output is passed as a parameter of the same name to the step itself (where to write)
and to every step that needs it (where to read), when their notebooks declare that name.
A step is cached when its notebook source, parameters and the content of its upstream
outputs equal those of its last successful run and its own outputs are still as it wrote
them. A step with ``deploy:`` is never cached (see :func:`_run_pipeline`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nbdeploy.errors import NbdeployError, PipelineSpecError
from nbdeploy.pipeline.executors import (
    Executor,
    ExecutorSpec,
    parse_executor_field,
    resolve_executor,
    start_executor,
)
from nbdeploy.pipeline.progress import NullProgress, Progress
from nbdeploy.pipeline.runner import (
    Notify,
    PreparedRun,
    RunFiles,
    RunOutcome,
    _ignore,
    file_digest,
    json_safe,
    prepare_run,
)
from nbdeploy.pipeline.step_deploy import StepDeploy, epilogue_for, parse_deploy_block
from nbdeploy.store import StateStore, default_store
from nbdeploy.store.runs import FAILED, SUCCEEDED, RunRecord, RunStore

CACHED, SKIPPED = "cached", "skipped"
_STEP_KEYS = {
    "name", "notebook", "parameters", "outputs", "needs", "kernel", "timeout", "inputs", "deploy"
}  # fmt: skip


@dataclass
class Step:
    name: str
    notebook: Path
    parameters: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Path] = field(default_factory=dict)
    needs: list[str] = field(default_factory=list)
    kernel: str | None = None
    timeout: float | None = None
    inputs: list[Path] | None = None  # what travels to a Dask worker (None: its folder)
    deploy: StepDeploy | None = None  # deploy what the run made, in its kernel


@dataclass
class Pipeline:
    path: Path
    steps: list[Step]
    executor: ExecutorSpec | None = None

    @property
    def root(self) -> Path:
        return self.path.parent


@dataclass
class StepResult:
    name: str
    status: str  # succeeded | failed | cached | skipped
    record: RunRecord | None = None
    message: str | None = None

    @property
    def ok(self) -> bool:
        return self.status in (SUCCEEDED, CACHED)

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.name,
            "status": self.status,
            "message": self.message,
            "run": self.record.to_dict() if self.record else None,
        }


@dataclass
class PipelineResult:
    group_id: str
    pipeline: str
    steps: list[StepResult]

    @property
    def ok(self) -> bool:
        return all(step.ok for step in self.steps)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "pipeline",
            "group_id": self.group_id,
            "pipeline": self.pipeline,
            "ok": self.ok,
            "failed": sum(step.status == FAILED for step in self.steps),
            "steps": [step.to_dict() for step in self.steps],
        }


# -- reading pipeline.yaml -------------------------------------------------------------
def load_pipeline(path: str | Path) -> Pipeline:
    import yaml

    pipeline_path = Path(path).expanduser().resolve()
    try:
        spec = yaml.safe_load(pipeline_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PipelineSpecError(f"pipeline file not found: {pipeline_path}") from None
    except yaml.YAMLError as exc:
        raise PipelineSpecError(f"{pipeline_path.name} is not valid YAML: {exc}") from None
    where = pipeline_path.name
    if not isinstance(spec, dict) or not isinstance(spec.get("steps"), list) or not spec["steps"]:
        raise PipelineSpecError(
            f"{where}: expected a mapping with a non-empty list `steps`",
            "see example_notebooks/pipeline.yaml",
        )
    root = pipeline_path.parent
    steps: list[Step] = []
    for position, raw in enumerate(spec["steps"], start=1):
        steps.append(_parse_step(raw, position, where, root))
    names = [step.name for step in steps]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise PipelineSpecError(
            f"{where}: step names must be unique; repeated: {', '.join(duplicates)}"
        )
    for step in steps:
        unknown = [need for need in step.needs if need not in names]
        if unknown:
            raise PipelineSpecError(
                f"{where}, step {step.name!r}: `needs` names unknown steps: {', '.join(unknown)}",
                f"known steps: {', '.join(names)}",
            )
    executor = None
    if spec.get("executor") is not None:
        executor = parse_executor_field(spec["executor"], where)
    pipeline = Pipeline(path=pipeline_path, steps=steps, executor=executor)
    topological_order(pipeline)  # raises on a cycle
    return pipeline


def _parse_step(raw: Any, position: int, where: str, root: Path) -> Step:
    if not isinstance(raw, dict):
        raise PipelineSpecError(f"{where}, step {position}: expected a mapping, got {raw!r}")
    name = raw.get("name")
    label = f"{where}, step {position}" + (f" ({name!r})" if name else "")
    if not isinstance(name, str) or not name.strip():
        raise PipelineSpecError(f"{label}: `name` is required")
    extra = sorted(set(raw) - _STEP_KEYS)
    if extra:
        raise PipelineSpecError(
            f"{label}: unknown field(s) {', '.join(extra)}",
            f"fields: {', '.join(sorted(_STEP_KEYS))}",
        )
    if not isinstance(raw.get("notebook"), str):
        raise PipelineSpecError(f"{label}: `notebook` (a path relative to {where}) is required")
    parameters = raw.get("parameters") or {}
    outputs = raw.get("outputs") or {}
    needs = raw.get("needs") or []
    if isinstance(needs, str):
        needs = [needs]
    if not isinstance(parameters, dict):
        raise PipelineSpecError(f"{label}: `parameters` must be a mapping of name to value")
    if not isinstance(outputs, dict) or not all(isinstance(v, str) for v in outputs.values()):
        raise PipelineSpecError(f"{label}: `outputs` must map names to file paths")
    if not isinstance(needs, list) or not all(isinstance(n, str) for n in needs):
        raise PipelineSpecError(f"{label}: `needs` must be a list of step names")
    timeout = raw.get("timeout")
    if timeout is not None and (not isinstance(timeout, int | float) or timeout <= 0):
        raise PipelineSpecError(f"{label}: `timeout` must be a positive number of seconds")
    inputs = raw.get("inputs")
    if isinstance(inputs, str):
        inputs = [inputs]
    if inputs is not None and (
        not isinstance(inputs, list) or not all(isinstance(i, str) for i in inputs)
    ):
        raise PipelineSpecError(
            f"{label}: `inputs` must be a list of files or folders (relative to {where})"
        )
    deploy = None if raw.get("deploy") is None else parse_deploy_block(raw["deploy"], label)
    return Step(
        name=name,
        notebook=_inside(root, raw["notebook"], f"{label}: notebook"),
        parameters=parameters,
        outputs={
            key: _inside(root, value, f"{label}: output {key!r}") for key, value in outputs.items()
        },
        needs=needs,
        kernel=raw.get("kernel"),
        timeout=timeout,
        inputs=(
            None
            if inputs is None
            else [_inside(root, item, f"{label}: input {item!r}") for item in inputs]
        ),
        deploy=deploy,
    )


def _inside(root: Path, relative: str, what: str) -> Path:
    """Resolve a path of the pipeline file; it must stay inside the pipeline's directory."""
    path = (root / relative).resolve()
    if not path.is_relative_to(root):
        raise PipelineSpecError(
            f"{what}: {relative!r} points outside the pipeline's directory {root}",
            "keep notebooks and outputs inside the directory of pipeline.yaml",
        )
    return path


def topological_order(pipeline: Pipeline) -> list[Step]:
    by_name = {step.name: step for step in pipeline.steps}
    order: list[Step] = []
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(name: str, trail: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = [*trail[trail.index(name) :], name]
            raise PipelineSpecError(
                f"{pipeline.path.name}: the steps depend on each other in a cycle: "
                + " -> ".join(cycle)
            )
        state[name] = 1
        for need in by_name[name].needs:
            visit(need, [*trail, name])
        state[name] = 2
        order.append(by_name[name])

    for step in pipeline.steps:
        visit(step.name, [])
    return order


# -- running ---------------------------------------------------------------------------
def run_pipeline(
    path: str | Path,
    *,
    text_values: Mapping[str, str] | None = None,
    values: Mapping[str, Any] | None = None,
    parallel: int | None = None,
    force: bool = False,
    timeout: float | None = None,
    kernel: str | None = None,
    output_dir: str | Path | None = None,
    track_mlflow: bool = True,
    store: StateStore | None = None,
    progress_for: Callable[[str], Progress] | None = None,
    on_event: Callable[[StepResult], None] | None = None,
    notify: Notify = _ignore,
    warn: Notify = _ignore,
    executor: str | None = None,
    scheduler: str | None = None,
) -> PipelineResult:
    """Run every step of ``path``; a failed step skips its dependents, not the others.

    ``executor``/``scheduler`` (as for sweeps) override the file's ``executor:``."""
    pipeline = load_pipeline(path)
    spec = resolve_executor(executor, scheduler, pipeline.executor)
    with start_executor(spec, parallel, notify=notify) as engine:
        return _run_pipeline(
            engine,
            pipeline,
            text_values=text_values,
            values=values,
            force=force,
            timeout=timeout,
            kernel=kernel,
            output_dir=output_dir,
            track_mlflow=track_mlflow,
            store=store,
            progress_for=progress_for,
            on_event=on_event,
            notify=notify,
            warn=warn,
        )


def _run_pipeline(
    engine: Executor,
    pipeline: Pipeline,
    *,
    text_values: Mapping[str, str] | None,
    values: Mapping[str, Any] | None,
    force: bool,
    timeout: float | None,
    kernel: str | None,
    output_dir: str | Path | None,
    track_mlflow: bool,
    store: StateStore | None,
    progress_for: Callable[[str], Progress] | None,
    on_event: Callable[[StepResult], None] | None,
    notify: Notify,
    warn: Notify,
) -> PipelineResult:
    from nbdeploy.notebook.parameters import parse_parameters
    from nbdeploy.notebook.reader import read_notebook

    order = topological_order(pipeline)
    store = store or default_store()
    records = RunStore(store)
    # Check every step's notebook and parameters before any kernel starts.
    notebooks = {step.name: read_notebook(step.notebook) for step in order}
    declared_names = {
        name: {p.name for p in parse_parameters(nb)} for name, nb in notebooks.items()
    }
    cli_values = {**(values or {}), **(text_values or {})}
    unused = [name for name in cli_values if not any(name in d for d in declared_names.values())]
    if unused:
        raise PipelineSpecError(
            f"no step of {pipeline.path.name} declares the parameter(s) {', '.join(unused)}"
        )
    checked = [
        _prepare_step(
            step,
            notebooks[step.name],
            declared_names[step.name],
            pipeline,
            {},
            values,
            text_values,
            kernel,
            output_dir,
        )
        for step in order
    ]
    deploying = [step.name for step in order if step.deploy is not None]
    if deploying and engine.kind != "local":
        raise PipelineSpecError(
            f"{pipeline.path.name}, step {deploying[0]!r}: `deploy` runs in the step's kernel "
            f"on this machine, and the {engine.kind} executor runs kernels elsewhere",
            "run this pipeline with --executor local (or move `deploy` to a step of its own "
            "pipeline run locally)",
        )
    engine.check(checked)
    engine.ready()

    group = records.create_group(
        "pipeline", str(pipeline.path), {"steps": [s.name for s in order], **engine.group_spec()}
    )
    results: dict[str, StepResult] = {}
    pending = {step.name: step for step in order}
    running: dict[Future[StepResult], str] = {}

    def finished(result: StepResult) -> None:
        results[result.name] = result
        if on_event:
            on_event(result)

    parallel = engine.parallel
    with engine.pool(records, group.id, thread_name_prefix="nbdeploy-step") as pool:
        while pending or running:
            for name, step in list(pending.items()):
                if any(need in pending or need in running.values() for need in step.needs):
                    continue
                if not all(results[need].ok for need in step.needs):
                    failed = [need for need in step.needs if not results[need].ok]
                    del pending[name]
                    finished(
                        StepResult(name, SKIPPED, message=f"{', '.join(failed)} did not succeed")
                    )
                    continue
                if len(running) >= parallel:
                    break
                del pending[name]
                upstream = {
                    key: out
                    for need in step.needs
                    for key, out in _step_outputs(pipeline, need).items()
                }
                try:
                    prepared = _prepare_step(
                        step,
                        notebooks[name],
                        declared_names[name],
                        pipeline,
                        upstream,
                        values,
                        text_values,
                        kernel,
                        output_dir,
                    )
                except NbdeployError as exc:
                    finished(StepResult(name, FAILED, message=str(exc)))
                    continue
                # A deploy step is never reused from the cache: what it deploys exists only
                # in the kernel of a run, and its gate compares with the live version as it
                # is now, which the fingerprint cannot cover. A cached step would silently
                # deploy nothing; running it again deploys the same content as the same
                # version (built once), or lets the gate decide against today's live one.
                reusable = not force and step.deploy is None
                cached = _cached_run(records, prepared) if reusable else None
                if cached is not None:
                    finished(
                        StepResult(
                            name,
                            CACHED,
                            record=cached,
                            message=f"cached: unchanged since run {cached.id}",
                        )
                    )
                    continue
                progress = progress_for(name) if progress_for else NullProgress()
                future = pool.submit(
                    _run_step,
                    engine,
                    prepared,
                    store,
                    step.timeout or timeout,
                    progress,
                    track_mlflow,
                    group.id,
                    notify,
                    warn,
                    step.deploy,
                )
                running[future] = name
            if not running:
                continue
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for future in done:
                running.pop(future)
                finished(future.result())
    ordered = [results[step.name] for step in order]
    result = PipelineResult(group_id=group.id, pipeline=str(pipeline.path), steps=ordered)
    records.finish_group(group.id, SUCCEEDED if result.ok else FAILED)
    return result


def _step_outputs(pipeline: Pipeline, name: str) -> dict[str, Path]:
    return next(step.outputs for step in pipeline.steps if step.name == name)


def _prepare_step(
    step: Step,
    notebook: Any,
    declared: set[str],
    pipeline: Pipeline,
    upstream: dict[str, Path],
    values: Mapping[str, Any] | None,
    text_values: Mapping[str, str] | None,
    kernel: str | None,
    output_dir: str | Path | None,
) -> PreparedRun:
    handed = {
        key: str(path) for key, path in {**upstream, **step.outputs}.items() if key in declared
    }
    step_values = {**step.parameters, **handed}
    step_values.update({k: v for k, v in (values or {}).items() if k in declared})
    step_text = {k: v for k, v in (text_values or {}).items() if k in declared}
    try:
        prepared = prepare_run(
            notebook,
            step_values,
            step_text,
            kernel=step.kernel or kernel,
            output_path=Path(output_dir) / f"{step.name}.ipynb" if output_dir else None,
        )
    except NbdeployError as exc:
        raise PipelineSpecError(
            f"{pipeline.path.name}, step {step.name!r}: {exc.message}", exc.hint
        ) from None
    prepared.step = step.name
    prepared.outputs = {key: str(path) for key, path in step.outputs.items()}
    prepared.files = RunFiles(
        root=pipeline.root,
        paths=step.inputs,
        exclude=[
            *(path for other in pipeline.steps for path in other.outputs.values()),
            *([Path(output_dir).resolve()] if output_dir else []),
        ],
        handed={key: str(path) for key, path in upstream.items()},
    )
    prepared.fingerprint = _fingerprint(prepared, upstream)
    return prepared


def _fingerprint(prepared: PreparedRun, upstream: dict[str, Path]) -> str:
    upstream_digests = {
        key: file_digest(path) if path.exists() else None for key, path in sorted(upstream.items())
    }
    material = {
        "notebook": str(prepared.notebook.path),
        "source": prepared.notebook.source_digest(),
        "kernel": prepared.kernel.name,
        "parameters": json_safe(prepared.values),
        "upstream": upstream_digests,
        "outputs": prepared.outputs,
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()


def _cached_run(records: RunStore, prepared: PreparedRun) -> RunRecord | None:
    assert prepared.fingerprint is not None
    previous = records.latest_success(prepared.fingerprint)
    if previous is None:
        return None
    for key, path in prepared.outputs.items():
        recorded = previous.outputs.get(key)
        if not isinstance(recorded, dict) or not Path(path).is_file():
            return None
        if recorded.get("sha256") != file_digest(Path(path)):
            return None  # the output was changed or replaced since that run
    return previous


def _run_step(
    engine: Executor,
    prepared: PreparedRun,
    store: StateStore,
    timeout: float | None,
    progress: Progress,
    track_mlflow: bool,
    group_id: str,
    notify: Notify,
    warn: Notify,
    deploy: StepDeploy | None = None,
) -> StepResult:
    epilogue = epilogue_for(deploy, str(prepared.notebook.path), track_mlflow) if deploy else None
    outcome: RunOutcome = engine.execute_run(
        prepared,
        store=store,
        timeout=timeout,
        progress=progress,
        track_mlflow=track_mlflow,
        group_id=group_id,
        notify=notify,
        warn=warn,
        epilogue=epilogue,
    )
    status = SUCCEEDED if outcome.ok else FAILED
    return StepResult(prepared.step or "", status, record=outcome.record, message=outcome.message)
