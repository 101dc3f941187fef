"""Capture a notebook function from a live kernel: its source, the notebook-defined helper
functions and classes it calls, the modules it uses and the objects it references.

Global names are found from the bytecode (``LOAD_GLOBAL``/``LOAD_NAME``), not guessed from
the text, and helpers are followed transitively. Nothing is executed.
"""

from __future__ import annotations

import ast
import dis
import inspect
import textwrap
import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from nbdeploy.errors import NbdeployError

NOTEBOOK_MODULES = {"__main__", "__mp_main__"}


class CaptureError(NbdeployError):
    """The function cannot be turned into a service as it is."""


@dataclass
class Captured:
    """Everything a generated service needs to rebuild the function."""

    name: str
    source: str
    helpers: list[str] = field(default_factory=list)  # sources, in definition order
    imports: list[str] = field(default_factory=list)  # import statements
    objects: dict[str, Any] = field(default_factory=dict)  # name -> value to save
    modules: set[str] = field(default_factory=set)  # top-level modules used
    helper_names: list[str] = field(default_factory=list)

    @property
    def signature(self) -> inspect.Signature:
        namespace: dict[str, Any] = {}
        return inspect.signature(_compile_stub(self.source, self.name, namespace))


def global_names(code: types.CodeType) -> list[str]:
    """Global names a code object (and the functions, lambdas and comprehensions nested in
    it) reads, in first-use order."""
    seen: dict[str, None] = {}
    stack = [code]
    while stack:
        current = stack.pop()
        for instruction in dis.get_instructions(current):
            if instruction.opname in {"LOAD_GLOBAL", "LOAD_NAME"}:
                seen.setdefault(str(instruction.argval), None)
        stack.extend(const for const in current.co_consts if isinstance(const, types.CodeType))
    return list(seen)


def capture_function(
    function: Any, namespace: Mapping[str, Any], history: Iterable[str] = ()
) -> Captured:
    """Capture ``function`` as defined in ``namespace`` (the kernel's globals).

    ``history`` holds the source of the notebook's executed cells (newest last); it is
    where the source of notebook-defined classes is found.
    """
    if not isinstance(function, types.FunctionType):
        raise CaptureError(
            f"{function!r} is not a function defined with `def`",
            "deploy a function: def predict(rows: list[list[float]]) -> list[int]: ...",
        )
    if function.__module__ not in NOTEBOOK_MODULES:
        raise CaptureError(
            f"{function.__name__} is defined in module {function.__module__}, not in the notebook",
            "define the entry function in the notebook (it may call library code)",
        )
    if function.__name__ == "<lambda>":
        raise CaptureError("a lambda cannot be deployed", "give the function a name with `def`")
    if function.__closure__:
        raise CaptureError(
            f"{function.__name__} is a nested function that uses variables of its enclosing "
            "function",
            "define it at the top level of a cell",
        )
    cells = list(history)
    captured = Captured(name=function.__name__, source=_source_of(function, cells))
    pending: list[Any] = [function]
    visited: set[str] = {function.__name__}
    helper_sources: dict[str, str] = {}
    while pending:
        current = pending.pop()
        code = current.__code__ if isinstance(current, types.FunctionType) else None
        names = (
            global_names(code)
            if code is not None
            else _class_global_names(current, helper_sources.get(current.__name__, ""))
        )
        if current is function:  # type hints become the service's schema: their names too
            names = names + annotation_names(captured.source, function.__name__)
        for name in names:
            if name in visited or name not in namespace:
                continue  # builtins, and names the function only assigns
            visited.add(name)
            value = namespace[name]
            kind = _classify(value)
            if kind == "module":
                captured.imports.append(_import_module(name, value))
                captured.modules.add(value.__name__.split(".")[0])
            elif kind == "notebook":
                helper_sources[name] = _source_of(value, cells)
                pending.append(value)
            elif kind == "imported":
                module = value.__module__
                captured.imports.append(_import_from(module, value.__qualname__, name))
                captured.modules.add(module.split(".")[0])
            else:
                captured.objects[name] = value
                captured.modules.update(modules_of_object(value) - NOTEBOOK_MODULES)
                # An instance of a notebook class needs the class to be loaded again.
                for klass in type(value).__mro__:
                    if klass.__module__ in NOTEBOOK_MODULES and klass.__name__ not in visited:
                        visited.add(klass.__name__)
                        helper_sources[klass.__name__] = _source_of(klass, cells)
                        pending.append(klass)
    # Helpers in the order the notebook defined them (by first line in history), stable.
    captured.helper_names = sorted(helper_sources, key=lambda n: _definition_rank(n, cells))
    captured.helpers = [helper_sources[n] for n in captured.helper_names]
    captured.imports = sorted(set(captured.imports))
    return captured


def annotation_names(source: str, name: str) -> list[str]:
    """Global names used in a function's parameter and return annotations."""
    found: list[str] = []
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == name:
            arguments = node.args
            every = [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]
            annotations = [a.annotation for a in every if a.annotation is not None]
            annotations += [node.returns] if node.returns is not None else []
            for annotation in annotations:
                for inner in ast.walk(annotation):
                    if isinstance(inner, ast.Name) and inner.id not in found:
                        found.append(inner.id)
    return found


def _classify(value: Any) -> str:
    if isinstance(value, types.ModuleType):
        return "module"
    if isinstance(value, types.FunctionType | type):
        module = getattr(value, "__module__", None)
        if module in NOTEBOOK_MODULES:
            return "notebook"
        if module and "<" not in getattr(value, "__qualname__", "<"):
            return "imported"
    if isinstance(value, types.BuiltinFunctionType) and getattr(value, "__module__", None):
        return "imported"
    return "object"


def _import_module(name: str, module: types.ModuleType) -> str:
    full = module.__name__
    if full == name:
        return f"import {full}"
    if "." in full and full.rsplit(".", 1)[1] == name:
        parent, leaf = full.rsplit(".", 1)
        return f"from {parent} import {leaf}"
    return f"import {full} as {name}"


def _import_from(module: str, qualname: str, name: str) -> str:
    top = qualname.split(".")[0]
    if top == name:
        return f"from {module} import {top}"
    return f"from {module} import {top} as {name}"


def modules_of_object(value: Any) -> set[str]:
    """Top-level modules an object's type (and, for containers, its items' types) come from."""
    found: set[str] = set()
    stack = [value]
    seen = 0
    while stack and seen < 1000:
        item = stack.pop()
        seen += 1
        for klass in type(item).__mro__:
            module = getattr(klass, "__module__", "") or ""
            if module and module != "builtins":
                found.add(module.split(".")[0])
        if isinstance(item, dict):
            stack.extend(list(item.values())[:50])
        elif isinstance(item, list | tuple | set):
            stack.extend(list(item)[:50])
    return found


def _source_of(value: Any, cells: list[str]) -> str:
    name = value.__name__
    try:
        return textwrap.dedent(inspect.getsource(value))
    except (OSError, TypeError):
        pass
    for cell in reversed(cells):  # newest definition wins, as in the kernel
        try:
            tree = ast.parse(cell)
        except SyntaxError:
            continue
        for node in reversed(tree.body):
            if (
                isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
                and node.name == name
            ):
                segment = ast.get_source_segment(cell, node, padded=False)
                if segment:
                    decorators = "".join(
                        f"@{ast.get_source_segment(cell, d)}\n" for d in node.decorator_list
                    )
                    return decorators + segment
    raise CaptureError(
        f"the source of {name} cannot be found",
        "define it in a notebook cell (not with exec or in another kernel session)",
    )


def _class_global_names(klass: type, source: str) -> list[str]:
    """Names a class needs: those in its bases, decorators and field annotations (pydantic
    models, dataclasses) and the globals its methods read."""
    names: dict[str, None] = {}
    try:
        tree = ast.parse(source)
    except SyntaxError:
        tree = ast.Module(body=[], type_ignores=[])
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == klass.__name__:
            parts: list[ast.AST] = [*node.bases, *node.keywords, *node.decorator_list]
            parts += [s.annotation for s in node.body if isinstance(s, ast.AnnAssign)]
            for part in parts:
                for inner in ast.walk(part):
                    if isinstance(inner, ast.Name):
                        names.setdefault(inner.id, None)
    for attribute in vars(klass).values():
        function = (
            attribute.__func__ if isinstance(attribute, classmethod | staticmethod) else attribute
        )
        if isinstance(function, types.FunctionType):
            for name in global_names(function.__code__):
                names.setdefault(name, None)
    return list(names)


def _definition_rank(name: str, cells: list[str]) -> int:
    for index, cell in enumerate(cells):
        if f"def {name}" in cell or f"class {name}" in cell:
            return index
    return len(cells)


def _compile_stub(source: str, name: str, namespace: dict[str, Any]) -> Any:
    """The function's signature without running its body or resolving its annotations."""
    tree = ast.parse(source)
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == name:
            node.body = [ast.Pass()]
            node.decorator_list = []
            stub = ast.Module(body=[node], type_ignores=[])
            exec(compile(ast.fix_missing_locations(stub), "<signature>", "exec"), namespace)
            return namespace[name]
    raise CaptureError(f"no function {name} in its own source")
