"""Turn a captured function into a service source directory: ``service.py`` rendered from
``templates/service.py.j2``, the notebook's objects saved beside it, requirements, and a
manifest. The directory's content hash names the build, so an unchanged function is never
built twice.
"""

from __future__ import annotations

import ast
import hashlib
import json
import pickle
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nbdeploy.errors import NbdeployError
from nbdeploy.service.capture import Captured
from nbdeploy.service.requirements import Requirements

NAME_PATTERN = re.compile(r"^[a-z]([a-z0-9-]{0,38}[a-z0-9])?$")
# DataFrames are not batched: BentoML 1.4.39's batching of DataFrame inputs fails in its
# batch-size optimizer and leaves the request hanging.
BATCHABLE_INPUTS = {"list", "List", "ndarray", "np.ndarray", "numpy.ndarray"}
MANIFEST = "manifest.json"
GENERATED_FILES = (
    ("nbdeploy_function.py.j2", "nbdeploy_function.py"),
    ("service.py.j2", "service.py"),
    ("mlflow_model.py.j2", "mlflow_model.py"),
)


class ServiceDefinitionError(NbdeployError):
    """The function's signature or the deployment's name cannot make a service."""


@dataclass
class ServiceOptions:
    name: str
    workers: int = 1
    batch: bool | None = None  # None: on when the function maps rows to results
    timeout: int = 60
    max_batch_size: int = 100
    # A bound on queueing, not a wait: above it BentoML sheds load with 503 (20 ms did so
    # for a 100-tree forest at 32 concurrent requests).
    max_latency_ms: int = 1000


@dataclass
class ServiceSource:
    directory: Path
    content_hash: str
    code_hash: str
    name: str
    function: str
    batch: bool
    requirements: list[str]
    objects: list[dict[str, Any]] = field(default_factory=list)
    schema: dict[str, Any] = field(default_factory=dict)

    @property
    def bento_name(self) -> str:
        return f"nbd-{self.name}"


def deployment_name(text: str) -> str:
    """A deployment name usable as a DNS label, a bento name and a directory name."""
    candidate = text.strip().lower().replace("_", "-")
    if not NAME_PATTERN.match(candidate):
        raise ServiceDefinitionError(
            f"{text!r} cannot name a deployment",
            "use 1-40 lowercase letters, digits and '-', starting with a letter (e.g. churn-model)",
        )
    return candidate


def _function_node(captured: Captured) -> ast.FunctionDef:
    tree = ast.parse(captured.source)
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == captured.name:
            return node
    raise ServiceDefinitionError(f"{captured.name} must be a plain `def` function (not async)")


def api_signature(captured: Captured) -> tuple[str, str, str, list[dict[str, str]]]:
    """(", a: int, b: float = 1.0", " -> list[int]", "a=a, b=b", inputs) for the API method."""
    node = _function_node(captured)
    args = node.args
    if args.vararg or args.kwarg or args.posonlyargs:
        raise ServiceDefinitionError(
            f"{captured.name} takes *args, **kwargs or positional-only parameters",
            "an HTTP endpoint needs named parameters: def predict(rows: list[list[float]])",
        )
    if not args.args and not args.kwonlyargs:
        raise ServiceDefinitionError(f"{captured.name} takes no parameters: nothing to send it")
    parts, calls, inputs = [], [], []
    positional = args.args
    defaults: list[ast.expr | None] = [None] * (len(positional) - len(args.defaults)) + list(
        args.defaults
    )
    every = [
        *zip(positional, defaults, strict=True),
        *zip(args.kwonlyargs, args.kw_defaults, strict=True),
    ]
    for argument, default in every:
        if argument.annotation is None:
            raise ServiceDefinitionError(
                f"parameter {argument.arg!r} of {captured.name} has no type hint",
                f"annotate it, e.g. {argument.arg}: list[list[float]]; "
                "the hints define the service's input schema",
            )
        text = f"{argument.arg}: {ast.unparse(argument.annotation)}"
        if default is not None:
            text += f" = {ast.unparse(default)}"
        parts.append(text)
        calls.append(f"{argument.arg}={argument.arg}")
        inputs.append({"name": argument.arg, "type": ast.unparse(argument.annotation)})
    returns = f" -> {ast.unparse(node.returns)}" if node.returns is not None else ""
    return ", " + ", ".join(parts), returns, ", ".join(calls), inputs


def batchable(captured: Captured) -> bool:
    """True when the function maps one list/array/frame of rows to a list/array of results."""
    node = _function_node(captured)
    params = node.args.args + node.args.kwonlyargs
    if len(params) != 1 or params[0].annotation is None or node.returns is None:
        return False

    def base(annotation: ast.expr) -> str:
        target = annotation.value if isinstance(annotation, ast.Subscript) else annotation
        return ast.unparse(target)

    return base(params[0].annotation) in BATCHABLE_INPUTS and base(node.returns) in BATCHABLE_INPUTS


FRAMEWORK_KINDS = ("sklearn", "lightgbm", "xgboost", "pytorch")


def object_kind(value: Any) -> str:
    """Which BentoML framework saver stores an object (``generic``: joblib in a model of
    nbdeploy's own)."""
    klass = type(value)
    top = (klass.__module__ or "").split(".")[0]
    if top in ("lightgbm", "xgboost") and klass.__name__ == "Booster":
        return top  # native boosters have their own savers
    if any((base.__module__ or "").startswith("torch.nn") for base in klass.__mro__):
        return "pytorch"
    if top in ("sklearn", "lightgbm", "xgboost") and hasattr(value, "get_params"):
        return "sklearn"  # estimators with the scikit-learn API
    return "generic"


def package_service(
    captured: Captured,
    options: ServiceOptions,
    requirements: Requirements,
    directory: Path,
    source_label: str,
) -> ServiceSource:
    """Write the service source into ``directory`` (replaced) and return its description."""
    from nbdeploy.templating import render

    batch = batchable(captured) if options.batch is None else options.batch
    if batch and not batchable(captured):
        raise ServiceDefinitionError(
            f"--batch needs {captured.name} to take one list (or numpy array) of rows "
            "and return a list of results of the same length",
            "drop --batch, or change the signature",
        )
    signature, returns, call_arguments, inputs = api_signature(captured)
    if directory.exists():
        shutil.rmtree(directory)
    (directory / "objects").mkdir(parents=True)
    digest = hashlib.sha256()
    specs: list[dict[str, Any]] = []
    for index, (name, value) in enumerate(sorted(captured.objects.items())):
        try:
            payload = pickle.dumps(value, protocol=5)
        except Exception as exc:
            raise ServiceDefinitionError(
                f"the object {name!r} used by {captured.name} cannot be saved: {exc}",
                "services can use objects that pickle (models, arrays, frames, plain data); "
                "open connections or files must be created inside the function",
            ) from None
        object_hash = hashlib.sha256(payload).hexdigest()
        digest.update(name.encode() + object_hash.encode())
        kind = object_kind(value)
        file_name = f"obj{index}.joblib"
        _dump(value, directory / "objects" / file_name)
        specs.append(
            {
                "name": name,
                "kind": kind,
                "file": file_name,
                "attribute": f"obj{index}",
                "tag": f"nbd-{options.name}-obj{index}:{object_hash[:16]}",
            }
        )
    values = dict(
        deployment=options.name,
        source_label=source_label,
        imports=captured.imports,
        helpers=captured.helpers,
        helper_names=captured.helper_names,
        function_source=captured.source.rstrip(),
        function_name=captured.name,
        object_specs=specs,
        service_name=f"nbd-{options.name}",
        workers=int(options.workers),
        timeout=int(options.timeout),
        route=f"/{captured.name}",
        batch=batch,
        max_batch_size=int(options.max_batch_size),
        max_latency_ms=int(options.max_latency_ms),
        signature=signature,
        returns=returns,
        call_arguments=call_arguments,
        batch_argument=inputs[0]["name"],
        parameter_names=[i["name"] for i in inputs],
    )
    generated = ""
    for template, file_name in GENERATED_FILES:
        text = render(template, **values)
        compile(text, file_name, "exec")  # generated code must at least parse
        (directory / file_name).write_text(text, encoding="utf-8")
        generated += text
    digest.update(generated.encode())
    source = ServiceSource(
        directory=directory,
        content_hash="",
        code_hash=digest.hexdigest(),
        name=options.name,
        function=captured.name,
        batch=batch,
        requirements=[],
        objects=specs,
        schema={"route": f"/{captured.name}", "inputs": inputs, "output": returns[4:] or None},
    )
    set_requirements(source, requirements.pinned)
    return source


def set_requirements(source: ServiceSource, requirements: list[str]) -> None:
    """Write the requirements and the manifest; the content hash covers code, objects and
    requirements."""
    source.requirements = sorted(set(requirements), key=str.lower)
    text = "".join(f"{line}\n" for line in source.requirements)
    (source.directory / "requirements.txt").write_text(text, encoding="utf-8")
    source.content_hash = hashlib.sha256((source.code_hash + "\n" + text).encode()).hexdigest()
    manifest = {
        "name": source.name,
        "function": source.function,
        "batch": source.batch,
        "objects": source.objects,
        "content_hash": source.content_hash,
        "requirements": source.requirements,
        "schema": source.schema,
    }
    (source.directory / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")


def _dump(value: Any, path: Path) -> None:
    import joblib

    joblib.dump(value, path)
