"""Turn a capture into a version folder: the pickled function and objects, snapshots of
local modules, ``service.py`` rendered from ``templates/service.py.j2``, the runtime, the
requirements and a manifest.

Planning hashes everything first and writes nothing, so that an unchanged redeploy (the
same code, objects and requirements) is recognised without saving a byte; only a new
version is written.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import keyword
import re
import shutil
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nbdeploy.errors import NbdeployError
from nbdeploy.private_files import make_private, private_dir, write_private_text
from nbdeploy.service import requestlog_runtime, runtime, serialize, upstream_guard
from nbdeploy.service.capture import Captured, add_reached_modules, source_or_none
from nbdeploy.service.schema import InputSchema, function_schema, model_schema, parameter_hints

NAME_PATTERN = re.compile(r"^[a-z]([a-z0-9-]{0,38}[a-z0-9])?$")
MANIFEST = runtime.MANIFEST
RUNTIME_FILE = "nbdeploy_runtime.py"
REQUEST_LOG_FILE = "nbdeploy_requestlog.py"  # nbdeploy/service/requestlog_runtime.py
UPSTREAM_GUARD_FILE = "nbdeploy_upstream_guard.py"  # nbdeploy/service/upstream_guard.py
SOURCE_FILE = "notebook_source.py"
GENERATED_FILES = (("service.py.j2", "service.py"), ("mlflow_model.py.j2", "mlflow_model.py"))
# Files a bento carries (besides local_modules/): the service, its runtime and pickles.
BENTO_FILES = (
    "service.py",
    RUNTIME_FILE,
    REQUEST_LOG_FILE,
    UPSTREAM_GUARD_FILE,
    SOURCE_FILE,
    MANIFEST,
    runtime.FUNCTION,
    runtime.SIGNATURE,
    runtime.DEFINITIONS,
)
LOCAL_MODULES_LIMIT_BYTES = 50 * 1024 * 1024
FRAMEWORK_KINDS = ("sklearn", "lightgbm", "xgboost", "pytorch")


class ServiceDefinitionError(NbdeployError):
    """The function's signature or the deployment's name cannot make a service."""


@dataclass
class ServiceOptions:
    name: str
    workers: int = 1
    batch: bool | None = None  # None: on when each request row gets one result
    timeout: int = 60
    max_batch_size: int = 100
    extra_columns: str = "refuse"  # records: an unknown column is refused or dropped
    log_sample: float = 1.0  # the share of requests the request log records
    redact: list[str] = field(default_factory=list)  # keys never stored in the request log


@dataclass
class VersionPlan:
    """A version before it is written: what it holds and the hashes that name it."""

    captured: Captured
    options: ServiceOptions
    schema: InputSchema
    batch: bool
    source_label: str
    object_specs: list[dict[str, Any]]
    object_hashes: dict[str, str]
    definitions: dict[str, Any]
    rendered: dict[str, str]
    signature: dict[str, Any] = field(default_factory=dict)
    base_hash: str = ""  # code, objects, local modules, schema; not requirements
    requirements: list[str] = field(default_factory=list)
    content_hash: str = ""

    @property
    def name(self) -> str:
        return self.options.name

    @property
    def routes(self) -> list[str]:
        return [endpoint["route"] for endpoint in self.endpoints]

    @property
    def endpoints(self) -> list[dict[str, str]]:
        return _endpoints(self.captured)

    def manifest(self) -> dict[str, Any]:
        return {
            "name": self.options.name,
            "kind": self.captured.kind,
            "entry": self.captured.name,
            "function": self.captured.name,
            "batch": self.batch,
            "objects": self.object_specs,
            "content_hash": self.content_hash,
            "requirements": self.requirements,
            "schema": self.schema.to_dict(),
            "routes": self.routes,
            "inputs": self.inputs(),
            "local_modules": sorted(self.captured.local_modules),
            "request_log": self.request_log,
        }

    @property
    def request_log(self) -> dict[str, Any]:
        """How the service logs its requests (see nbdeploy_requestlog.py)."""
        return {
            "sample": float(self.options.log_sample),
            "redact": sorted(set(self.options.redact)),
        }

    def inputs(self) -> list[dict[str, Any]]:
        """The request's fields, for display (widget, curl example, status)."""
        if self.schema.mode == "records":
            return [{"name": self.schema.parameter, "type": "list[record]"}]
        if self.schema.mode == "rows":
            width = self.schema.width
            return [
                {
                    "name": self.schema.parameter,
                    "type": f"list[list[float]] (rows of {width})"
                    if width
                    else "list[list[float]]",
                }
            ]
        hints = self.signature.get("annotations", {})
        return [{"name": name, "type": _type_text(hint)} for name, hint in hints.items()]


def deployment_name(text: str, given: bool = False) -> str:
    """A deployment name usable as a DNS label, a bento name and a directory name. One
    derived from a function or model name is made so (``predict_churn`` -> ``predict-churn``);
    a ``given`` one (--name) is used as it is, or refused with the form it could take."""
    candidate = text.strip().lower().replace("_", "-")
    allowed = "use 1-40 lowercase letters, digits and '-', starting with a letter"
    if not NAME_PATTERN.match(candidate):
        raise ServiceDefinitionError(
            f"{text!r} cannot name a deployment", allowed + " (e.g. churn-model)"
        )
    if given and candidate != text:
        raise ServiceDefinitionError(
            f"{text!r} cannot name a deployment: {allowed}", f"did you mean {candidate}?"
        )
    return candidate


def object_kind(value: Any) -> str:
    """Which BentoML framework saver stores an object (``generic``: nbdeploy's own pickle)."""
    klass = type(value)
    top = (klass.__module__ or "").split(".")[0]
    if top in ("lightgbm", "xgboost") and klass.__name__ == "Booster":
        return top  # native boosters have their own savers
    if any((base.__module__ or "").startswith("torch.nn") for base in klass.__mro__):
        return "pytorch"
    if top in ("sklearn", "lightgbm", "xgboost") and hasattr(value, "get_params"):
        return "sklearn"  # estimators with the scikit-learn API
    return "generic"


def _endpoints(captured: Captured) -> list[dict[str, str]]:
    if captured.kind == "model":
        return [{"route": f"/{m}", "method": m, "handler": f"_{m}"} for m in captured.methods]
    method = captured.name if not captured.name.startswith("_") else "predict"
    return [
        {"route": f"/{captured.name.strip('_') or 'predict'}", "method": method, "handler": "_rows"}
    ]


def plan_version(
    captured: Captured,
    options: ServiceOptions,
    reference: Any,
    source_label: str,
) -> VersionPlan:
    """Hash and describe the version; nothing is written. Refuses (CaptureError) what
    cannot be copied into a service, naming the variable."""
    if captured.kind == "model":
        schema = model_schema(captured.objects[captured.name], reference, options.extra_columns)
    else:
        schema = function_schema(
            captured.function, captured.objects, reference, options.extra_columns
        )
    batch = _decide_batch(captured, schema, options.batch)
    reached = serialize.Reached()
    specs: list[dict[str, Any]] = []
    hashes: dict[str, str] = {}
    for index, (name, value) in enumerate(sorted(captured.objects.items())):
        label = f"the variable {name!r}" if name.isidentifier() else f"the object {name!r}"
        object_hash = serialize.content_hash(value, label=label, reached=reached)
        hashes[name] = object_hash
        specs.append(
            {
                "name": name,
                "kind": object_kind(value),
                "file": f"obj{index}.pkl",
                "attribute": f"_nbd_obj{index}",
                "tag": f"nbd-{options.name}-obj{index}:{object_hash[:16]}",
            }
        )
    add_reached_modules(captured, reached.modules)
    digest = hashlib.sha256()
    for name in sorted(hashes):
        digest.update(f"object {name} {hashes[name]}\n".encode())
    signature: dict[str, Any] = {}
    # Only classes and functions met inside the objects are put on __main__ for the
    # framework savers; the entry function carries its own definitions by value.
    definitions = reached.definitions
    reached = serialize.Reached(modules=set(reached.modules))
    if captured.kind == "function":
        references = {id(value): name for name, value in captured.objects.items()}
        function_hash = serialize.content_hash(
            captured.function,
            label=f"the function {captured.name}",
            reached=reached,
            references=references,
        )
        digest.update(f"function {function_hash}\n".encode())
        signature = _signature_payload(captured)
        signature_hash = serialize.content_hash(
            signature, label=f"the type hints of {captured.name}", reached=reached
        )
        digest.update(f"signature {signature_hash}\n".encode())
        add_reached_modules(captured, reached.modules)
    for name, path in sorted(captured.local_modules.items()):
        digest.update(f"module {name} {_tree_hash(path)}\n".encode())
    plan = VersionPlan(
        captured=captured,
        options=options,
        schema=schema,
        batch=batch,
        source_label=source_label,
        object_specs=specs,
        object_hashes=hashes,
        definitions=definitions,
        rendered={},
        signature=signature,
    )
    plan.rendered = _render(plan)
    for file_name, text in sorted(plan.rendered.items()):
        if file_name != SOURCE_FILE:  # for reading only: what runs is hashed above
            digest.update(f"file {file_name}\n{text}\n".encode())
    digest.update(json.dumps(schema.to_dict(), sort_keys=True, default=str).encode())
    # What the request log keeps is part of the version: a new --redact is a new version.
    digest.update(json.dumps(plan.request_log, sort_keys=True).encode())
    plan.base_hash = digest.hexdigest()
    set_requirements(plan, [])
    return plan


def set_requirements(plan: VersionPlan, requirements: list[str]) -> None:
    """The requirements complete the content hash that names the version."""
    plan.requirements = sorted(set(requirements), key=str.lower)
    text = "".join(f"{line}\n" for line in plan.requirements)
    plan.content_hash = hashlib.sha256((plan.base_hash + "\n" + text).encode()).hexdigest()


def _decide_batch(captured: Captured, schema: InputSchema, asked: bool | None) -> bool:
    can = schema.mode in ("records", "rows") and (schema.per_row or captured.kind == "model")
    if asked and not can:
        raise ServiceDefinitionError(
            f"--batch needs {captured.name} to take one list (or array, or DataFrame) of rows "
            "and return one result per row (e.g. -> list[int])",
            "drop --batch, or change the signature",
        )
    return can if asked is None else asked


def _signature_payload(captured: Captured) -> dict[str, Any]:
    signature, hints = parameter_hints(captured.function)
    annotations: dict[str, Any] = {}
    defaults: dict[str, Any] = {}
    for name, parameter in signature.parameters.items():
        if (
            not name.isidentifier()
            or keyword.iskeyword(name)
            or name == "self"
            or name.startswith("_nbd")
        ):
            raise ServiceDefinitionError(
                f"parameter {name!r} of {captured.name} cannot be a request field",
                "rename it (not `self`, and not starting with `_nbd`: nbdeploy's own names)",
            )
        annotations[name] = hints.get(name, Any)
        if parameter.default is not inspect.Parameter.empty:
            defaults[name] = parameter.default
    return {
        "annotations": annotations,
        "defaults": defaults,
        "returns": hints.get("return"),
        "keyword_only": [
            n for n, p in signature.parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY
        ],
    }


def _signature_text(plan: VersionPlan) -> tuple[str, str, str]:
    """(", a: _HINT['a'], *, b: _HINT['b'] = _DEFAULT['b']", " -> ...", "a=a, b=b")."""
    payload = plan.signature
    parts: list[str] = []
    starred = False
    for name, _hint in payload["annotations"].items():
        if name in payload["keyword_only"] and not starred:
            parts.append("*")
            starred = True
        text = f"{name}: _HINT[{json.dumps(name)}]"
        if name in payload["defaults"]:
            text += f" = _DEFAULT[{json.dumps(name)}]"
        parts.append(text)
    returns = ' -> _SIGNATURE["returns"]' if payload.get("returns") is not None else ""
    calls = ", ".join(f"{name}={name}" for name in payload["annotations"])
    return (", " + ", ".join(parts)) if parts else "", returns, calls


def _render(plan: VersionPlan) -> dict[str, str]:
    from nbdeploy.templating import render

    captured = plan.captured
    signature, returns, calls = _signature_text(plan) if plan.signature else ("", "", "")
    values = dict(
        deployment=plan.options.name,
        source_label=plan.source_label,
        kind=captured.kind,
        mode=plan.schema.mode,
        parameter=plan.schema.parameter,
        model_name=captured.name,
        methods=captured.methods,
        endpoints=plan.endpoints,
        object_specs=plan.object_specs,
        service_name=f"nbd-{plan.options.name}",
        workers=int(plan.options.workers),
        timeout=int(plan.options.timeout),
        batch=plan.batch,
        max_batch_size=int(plan.options.max_batch_size),
        signature=signature,
        returns=returns,
        call_arguments=calls,
    )
    rendered = {}
    for template, file_name in GENERATED_FILES:
        text = render(template, **values)
        compile(text, file_name, "exec")  # generated code must at least parse
        rendered[file_name] = text
    rendered[RUNTIME_FILE] = Path(runtime.__file__).read_text(encoding="utf-8")
    rendered[REQUEST_LOG_FILE] = Path(requestlog_runtime.__file__).read_text(encoding="utf-8")
    rendered[UPSTREAM_GUARD_FILE] = Path(upstream_guard.__file__).read_text(encoding="utf-8")
    rendered[SOURCE_FILE] = _display_source(plan)
    return rendered


def _display_source(plan: VersionPlan) -> str:
    captured = plan.captured
    lines = [
        f"# The notebook code of {plan.options.name!r}, for reading: the service runs the",
        "# function pickled by value (function.pkl), exactly as it was in the kernel.",
        f"# Source: {json.dumps(plan.source_label)}",
        "",
    ]
    if captured.kind == "model":
        model = captured.objects[captured.name]
        lines.append(
            f"# Serves the fitted model {captured.name!r} ({type(model).__module__}."
            f"{type(model).__qualname__}): " + ", ".join(f"/{m}" for m in captured.methods)
        )
    for name, helper in captured.helpers:
        lines += [f"# -- helper {name}", helper.rstrip(), ""]
    listed = {name for name, _ in captured.helpers}
    for name, value in sorted(plan.definitions.items()):
        target = serialize.without_lru_cache(value)
        inside = source_or_none(target, captured.cells)
        if name not in listed and inside:
            lines += [f"# -- {name}, used inside the saved objects", inside.rstrip(), ""]
    if captured.source:
        lines += ["# -- the entry function", captured.source.rstrip(), ""]
    if captured.objects:
        lines.append("# -- objects (saved apart, loaded at start-up)")
        for spec in plan.object_specs:
            value = captured.objects[spec["name"]]
            lines.append(
                f"# {spec['name']}: {type(value).__module__}.{type(value).__qualname__} "
                f"({spec['kind']}, {spec['tag']})"
            )
    return "\n".join(lines) + "\n"


def _type_text(hint: Any) -> str:
    if isinstance(hint, type) and not getattr(hint, "__args__", None):
        return hint.__name__
    return str(hint).replace("typing.", "")


def _tree_hash(path: Path) -> str:
    digest = hashlib.sha256()
    for file in _module_files(path):
        digest.update(str(file.relative_to(path.parent)).encode() + b"\0")
        digest.update(file.read_bytes())
    return digest.hexdigest()


def _module_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = [
        f
        for f in sorted(path.rglob("*"))
        if f.is_file()
        and "__pycache__" not in f.parts
        and not any(part.startswith(".") for part in f.relative_to(path).parts)
    ]
    size = sum(f.stat().st_size for f in files)
    if size > LOCAL_MODULES_LIMIT_BYTES:
        raise ServiceDefinitionError(
            f"the local package {path.name} holds {size // 2**20} MiB of files; nbdeploy "
            "snapshots local modules into every version",
            "move data files out of the package folder (load them into a variable instead)",
        )
    return files


def write_version(plan: VersionPlan, directory: Path) -> None:
    """Write the planned version into ``directory`` (replaced), owner-only: its pickles
    hold the notebook's objects."""
    if directory.exists():
        shutil.rmtree(directory)
    private_dir(directory / "objects")
    captured = plan.captured
    functions = {
        id(value)
        for value in plan.definitions.values()
        if isinstance(value, types.FunctionType) or serialize.is_lru_wrapper(value)
    }
    for spec in plan.object_specs:
        serialize.save(
            captured.objects[spec["name"]],
            directory / "objects" / spec["file"],
            label=f"the variable {spec['name']!r}",
            by_name=functions,
        )
    serialize.save(plan.definitions, directory / runtime.DEFINITIONS, label="notebook classes")
    if captured.kind == "function":
        references = {id(value): name for name, value in captured.objects.items()}
        serialize.save(
            captured.function,
            directory / runtime.FUNCTION,
            label=f"the function {captured.name}",
            references=references,
        )
        serialize.save(
            plan.signature, directory / runtime.SIGNATURE, label=f"the hints of {captured.name}"
        )
    for name, path in captured.local_modules.items():
        target = directory / runtime.LOCAL_MODULES
        for file in _module_files(path):
            destination = target / file.relative_to(path.parent)
            private_dir(destination.parent)
            shutil.copyfile(file, destination)
            make_private(destination)
        del name
    for file_name, text in plan.rendered.items():
        write_private_text(directory / file_name, text)
    write_manifest(plan, directory)


def write_manifest(plan: VersionPlan, directory: Path) -> None:
    text = "".join(f"{line}\n" for line in plan.requirements)
    write_private_text(directory / "requirements.txt", text)
    write_private_text(directory / MANIFEST, json.dumps(plan.manifest(), indent=2, default=str))
