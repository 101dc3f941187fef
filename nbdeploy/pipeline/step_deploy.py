"""A pipeline step that deploys what its notebook produced (``deploy:`` in pipeline.yaml)::

    - name: train
      notebook: train.ipynb
      deploy:
        name: churn                          # the deployment (default: the function's name)
        function: predict                    # or  object: model  (a fitted model)
        reference: X_train                   # optional: the training inputs
        strategy: canary                     # optional, as `nbdeploy deploy --strategy`
        when: "accuracy >= live.accuracy"    # optional gate (see nbdeploy.pipeline.gate)

After the notebook succeeded, the deploy runs in the step's own kernel (as ``nbdeploy
deploy NOTEBOOK`` does, with :func:`nbdeploy.deployment.verbs.deploy_in_kernel_result`), so the
function and objects are the ones this run made, and the version's source records the
step's run id. The gate compares this run's metrics with those of the run that produced
the deployment's live version; the step's run record says what happened in its
``deployed`` field (``{"deployed": false, "note": "not deployed: accuracy 0.91 < live
0.93"}``, or the version deployed with a note). A deploy that fails fails the step with
the deploy's own message, and the live version keeps serving.

The block is checked when pipeline.yaml is read, before anything runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from nbdeploy.errors import PipelineSpecError
from nbdeploy.pipeline.gate import GATE_EXAMPLE, Decision, Gate, GateSyntaxError, parse_gate

# What a deploy block may set besides the target and the gate: the options of `nbdeploy
# deploy` that make sense for a step (not `wait`: a step does not sit through a canary).
_OPTION_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,),
    "reference": (str,),
    "strategy": (str,),
    "host": (str,),
    "port": (int,),
    "workers": (int,),
    "batch": (bool,),
    "requirements": (list,),
    "extra_columns": (str,),
    "mlflow": (bool,),
    "keep_warm": (int, float),
    "steps": (list,),
    "weight": (int, float),
    "interval": (int, float),
    "sticky": (str,),
    "auth": (str,),
    "log_sample": (int, float),
    "redact": (list,),
    "replace": (bool,),
    "from_files": (bool,),
}
DEPLOY_KEYS = frozenset({"function", "object", "when", *_OPTION_TYPES})
NOT_DEPLOYED_CACHE_NOTE = "not deployed: step reused from the cache"


@dataclass
class StepDeploy:
    """A step's checked ``deploy:`` block."""

    target: str  # the function's or the object's name in the notebook
    is_object: bool
    options: dict[str, Any] = field(default_factory=dict)  # DeployOptions fields
    when: str | None = None

    def gate(self) -> Gate | None:
        return parse_gate(self.when) if self.when else None

    def to_dict(self) -> dict[str, Any]:
        kind = "object" if self.is_object else "function"
        return {kind: self.target, **self.options, **({"when": self.when} if self.when else {})}


def parse_deploy_block(raw: Any, label: str) -> StepDeploy:
    """Check a step's ``deploy:`` mapping; PipelineSpecError names the step and the key."""
    from nbdeploy.deployment.options import EXTRA_COLUMNS, STRATEGIES

    if not isinstance(raw, dict):
        raise PipelineSpecError(
            f"{label}: `deploy` must be a mapping",
            'e.g. deploy: {name: churn, function: predict, when: "accuracy >= live.accuracy"}',
        )
    unknown = sorted(str(key) for key in set(raw) - DEPLOY_KEYS)
    if unknown:
        raise PipelineSpecError(
            f"{label}: unknown key(s) in `deploy`: {', '.join(unknown)}",
            f"keys: {', '.join(sorted(DEPLOY_KEYS))}",
        )
    has_function, has_object = raw.get("function") is not None, raw.get("object") is not None
    if has_function == has_object:
        raise PipelineSpecError(
            f"{label}: `deploy` needs exactly one of `function` (a function of the notebook) "
            f"and `object` (a fitted model in its globals); "
            + ("both are given" if has_function else "neither is given"),
            "e.g. deploy: {name: churn, function: predict}",
        )
    key = "object" if has_object else "function"
    target = raw[key]
    if not isinstance(target, str) or not target.isidentifier():
        raise PipelineSpecError(f"{label}: `deploy.{key}` must be a Python name, got {target!r}")
    options: dict[str, Any] = {}
    for option, allowed in _OPTION_TYPES.items():
        if option not in raw or raw[option] is None:
            continue
        value = raw[option]
        if isinstance(value, bool) and bool not in allowed:
            allowed_ok = False
        else:
            allowed_ok = isinstance(value, allowed)
        if not allowed_ok:
            kinds = " or ".join(sorted({_kind_name(k) for k in allowed}))
            raise PipelineSpecError(f"{label}: `deploy.{option}` must be {kinds}, got {value!r}")
        options[option] = value
    _check_option_values(options, label, STRATEGIES, EXTRA_COLUMNS)
    when = raw.get("when")
    if when is not None:
        if not isinstance(when, str):
            raise PipelineSpecError(
                f"{label}: `deploy.when` must be a text (quote it in YAML)", GATE_EXAMPLE
            )
        try:
            parse_gate(when)
        except GateSyntaxError as error:
            raise PipelineSpecError(
                f"{label}: `deploy.when` {when!r}: {error}",
                GATE_EXAMPLE + "; comparisons (>= > <= < == !=) of metrics, live.METRIC "
                "and numbers, joined by `and`",
            ) from None
    return StepDeploy(target=target, is_object=has_object, options=options, when=when)


def _kind_name(kind: type) -> str:
    return {str: "a text", int: "a number", float: "a number", bool: "true or false",
            list: "a list"}[kind]  # fmt: skip


def _check_option_values(
    options: dict[str, Any], label: str, strategies: tuple[str, ...], extra: tuple[str, ...]
) -> None:
    from nbdeploy.errors import NbdeployError

    if "strategy" in options and options["strategy"] not in strategies:
        raise PipelineSpecError(
            f"{label}: `deploy.strategy` {options['strategy']!r} is not a strategy",
            f"strategies: {', '.join(strategies)}",
        )
    if "extra_columns" in options and options["extra_columns"] not in extra:
        raise PipelineSpecError(
            f"{label}: `deploy.extra_columns` must be one of {', '.join(extra)}"
        )
    if "auth" in options and options["auth"] not in ("key", "none"):
        raise PipelineSpecError(f"{label}: `deploy.auth` must be key or none")
    for listed in ("requirements", "redact"):
        if listed in options and not all(isinstance(v, str) for v in options[listed]):
            raise PipelineSpecError(f"{label}: `deploy.{listed}` must be a list of texts")
    if "steps" in options and not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in options["steps"]
    ):
        raise PipelineSpecError(f"{label}: `deploy.steps` must be a list of percentages")
    if "name" in options:
        from nbdeploy.service.package import NAME_PATTERN

        if not NAME_PATTERN.match(options["name"]):
            raise PipelineSpecError(
                f"{label}: `deploy.name` {options['name']!r} cannot name a deployment",
                "use 1-40 lowercase letters, digits and '-', starting with a letter",
            )
    if "sticky" in options:
        from nbdeploy.deployment.options import parse_sticky

        try:
            parse_sticky(options["sticky"])
        except (ValueError, NbdeployError) as error:
            raise PipelineSpecError(f"{label}: `deploy.sticky`: {error}") from None


# -- the epilogue: run in the step's kernel ---------------------------------------------
def epilogue_for(spec: StepDeploy, notebook: str, track_mlflow: bool) -> str:
    """The code run in the step's kernel after its last cell."""
    options = {"mlflow": track_mlflow, **spec.options}
    arguments = {
        "target": spec.target,
        "model": spec.is_object,
        "options": options,
        "notebook": notebook,
        "when": spec.when,
    }
    return (
        "import json as _nbdeploy_json\n"
        "import nbdeploy.pipeline.step_deploy as _nbdeploy_step\n"
        "_nbdeploy_step.deploy_step_in_kernel(\n"
        f"    globals(), _nbdeploy_json.loads({json.dumps(arguments)!r})\n"
        ")\n"
    )


def deploy_step_in_kernel(namespace: dict[str, Any], arguments: dict[str, Any]) -> None:
    """In the step's kernel: decide with the gate, then deploy (or record why not)."""
    from nbdeploy.deployment.options import DeployOptions
    from nbdeploy.deployment.verbs import deploy_in_kernel_result
    from nbdeploy.pipeline.context import current_run_dir, read_results, record_deploy_note
    from nbdeploy.service.package import deployment_name

    options = DeployOptions(**arguments["options"])
    name = (
        deployment_name(options.name, given=True)
        if options.name
        else deployment_name(arguments["target"])
    )
    decision: Decision | None = None
    if arguments.get("when"):
        run_dir = current_run_dir()
        logged = read_results(run_dir)["metrics"] if run_dir is not None else []
        run_metrics: dict[str, float | None] = {}
        for metric, value, _step in sorted(logged, key=lambda entry: entry[2]):
            run_metrics[metric] = value  # the highest step's, the last among equal steps
        decision = gate_decision(parse_gate(arguments["when"]), name, run_metrics)
        if not decision.deploy:
            print(f"nbdeploy: {name}: {decision.note}", flush=True)
            record_deploy_note(name, None, None, decision.note)
            return
        print(f"nbdeploy: {name}: {decision.note}", flush=True)
    result = deploy_in_kernel_result(namespace, arguments)
    note = decision.note if decision is not None else "deployed"
    record_deploy_note(result.deployment.name, result.version.version, result.url, note)


def gate_decision(gate: Gate, name: str, run_metrics: dict[str, float | None]) -> Decision:
    """The gate's decision against the run that produced ``name``'s live version."""
    from nbdeploy.pipeline.gate import evaluate

    live = live_run_metrics(name)
    if live is None:
        return evaluate(gate, run_metrics, None)
    label, metrics = live
    return evaluate(gate, run_metrics, metrics, live_label=label)


def live_run_metrics(name: str) -> tuple[str, dict[str, float | None]] | None:
    """(how to name it, the metrics of its run) of ``name``'s live version; None when
    nothing serves. A live version made outside a recorded run has no metrics."""
    from nbdeploy.deployment.store import SERVING, DeploymentStore
    from nbdeploy.errors import RunNotFoundError
    from nbdeploy.store import default_store
    from nbdeploy.store.runs import RunStore

    store = default_store()
    deployment = DeploymentStore(store).find(name)
    if deployment is None or deployment.status != SERVING or deployment.live_version is None:
        return None
    version = DeploymentStore(store).version(name, deployment.live_version)
    run_id = version.source.get("run_id")
    label = f"the live version {name} v{version.version}"
    if not run_id:
        return label + " (deployed outside a run)", {}
    try:
        record = RunStore(store).get(str(run_id))
    except RunNotFoundError:
        return label + f" (its run {run_id} is no longer recorded)", {}
    return label + f" (run {run_id})", dict(record.metrics)
