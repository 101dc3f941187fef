"""Capture what a notebook function (or a fitted model) needs from the live kernel.

The function is kept as the live object and later pickled by value (see
:mod:`nbdeploy.service.serialize`), so closures, decorated helpers, defaults that name
globals and notebook classes at any depth all travel as they are in the kernel. This
module finds the parts that are treated apart:

- the *objects*: the global data the function reaches (models, arrays, frames, tables),
  saved and hashed one by one (framework savers for models);
- the *modules* it uses (for pinned requirements), and among them the user's *local
  modules* (files beside the notebook, or anywhere outside installed distributions), which
  are snapshotted into the version;
- the *source* of the function and its notebook helpers, kept for display only.
"""

from __future__ import annotations

import ast
import dis
import inspect
import sys
import sysconfig
import textwrap
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nbdeploy.service.requirements import provided_by_distribution
from nbdeploy.service.serialize import (
    NOTEBOOK_MODULES,
    CaptureError,
    is_lru_wrapper,
    without_lru_cache,
)

# Values small and immutable enough to travel inside the function's own pickle.
_INLINE_TYPES = (int, float, complex, str, bytes, bool, type(None), range, slice)
PREDICT_METHODS = ("predict", "predict_proba")

__all__ = ["CaptureError", "Captured", "capture_function", "capture_model"]


@dataclass
class Captured:
    """Everything a version is made of, before anything is written."""

    name: str  # the entry function's name, or the model variable's
    kind: str  # "function" or "model"
    function: Any  # the live function (kind "function") or None
    source: str  # the function's source, for display
    helpers: list[tuple[str, str]] = field(default_factory=list)  # (name, source) for display
    objects: dict[str, Any] = field(default_factory=dict)  # global name -> value
    modules: set[str] = field(default_factory=set)  # top-level modules used
    local_modules: dict[str, Path] = field(default_factory=dict)  # name -> file or package dir
    methods: list[str] = field(default_factory=list)  # kind "model": predict, predict_proba
    cells: list[str] = field(default_factory=list)  # the notebook's executed cells

    @property
    def signature(self) -> inspect.Signature:
        return inspect.signature(self.function)


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


def is_notebook_definition(value: Any) -> bool:
    """A function or class defined in the notebook (pickled by value)."""
    value = without_lru_cache(value)
    return (
        isinstance(value, types.FunctionType | type)
        and getattr(value, "__module__", None) in NOTEBOOK_MODULES
    )


def capture_function(
    function: Any, namespace: Mapping[str, Any] | None = None, history: Iterable[str] = ()
) -> Captured:
    """Capture ``function`` (defined in the notebook) with everything it reaches."""
    entry = inspect.unwrap(function) if callable(function) else function  # lru_cache too
    if not isinstance(entry, types.FunctionType):
        raise CaptureError(
            f"{function!r} is not a function defined with `def`",
            "deploy a function, e.g. def predict(rows: list[list[float]]) -> list[int], "
            "or a fitted model: %deploy model --reference X_train",
        )
    if entry.__name__ == "<lambda>":
        raise CaptureError("a lambda cannot be deployed", "give the function a name with `def`")
    if inspect.iscoroutinefunction(entry) or inspect.isgeneratorfunction(entry):
        raise CaptureError(
            f"{entry.__name__} is async or a generator",
            "deploy a plain `def` function that returns its answer",
        )
    cells = list(history)
    captured = Captured(
        name=entry.__name__,
        kind="function",
        function=function,
        source=_source_of(entry, cells),
        cells=cells,
    )
    _walk(captured, [function], cells)
    return captured


def capture_model(name: str, model: Any, history: Iterable[str] = ()) -> Captured:
    """Capture a fitted model held in the variable ``name``: served as /predict (and
    /predict_proba when it has one)."""
    methods = [m for m in PREDICT_METHODS if callable(getattr(model, m, None))]
    if "predict" not in methods:
        raise CaptureError(
            f"{name} is a {type(model).__name__}, which has no predict method",
            "deploy a fitted model (scikit-learn API, LightGBM, XGBoost, an MLflow pyfunc) "
            "or a function: %deploy predict",
        )
    if isinstance(model, type):
        raise CaptureError(
            f"{name} is a class, not a fitted model", f"fit it first: {name}().fit(X, y)"
        )
    captured = Captured(
        name=name,
        kind="model",
        function=None,
        source="",
        objects={name: model},
        methods=methods,
        cells=list(history),
    )
    captured.modules.update(_modules_of_type(model))
    return captured


def _walk(captured: Captured, start: list[Any], cells: list[str]) -> None:
    """Follow notebook functions and classes through their globals, closures, defaults,
    wrapped functions, methods and bases; sort what they reach into objects and modules."""
    pending = list(start)
    entry = inspect.unwrap(captured.function) if captured.function is not None else None
    visited: set[int] = set()
    while pending:
        current = pending.pop()
        if id(current) in visited:
            continue
        visited.add(id(current))
        for name, value in _references(current):
            if isinstance(value, types.ModuleType):
                _use_module(captured, value.__name__)
            elif is_notebook_definition(value):
                target = without_lru_cache(value)
                if target is not entry and value is not captured.function:
                    source = source_or_none(target, cells)
                    if source and all(n != target.__name__ for n, _ in captured.helpers):
                        captured.helpers.append((target.__name__, source))
                pending.append(value)
            elif isinstance(value, types.FunctionType | type | types.BuiltinFunctionType):
                _use_module(captured, getattr(value, "__module__", None) or "")
            elif isinstance(value, types.MethodType):
                pending.append(value.__func__)
                if name is not None and not isinstance(value.__self__, type):
                    captured.objects.setdefault(f"{name}.__self__", value.__self__)
            elif name is not None and not isinstance(value, _INLINE_TYPES):
                captured.objects.setdefault(name, value)
                captured.modules.update(_modules_of_type(value))
            elif isinstance(value, tuple | list | dict | set | frozenset):
                captured.modules.update(_modules_of_type(value))
    captured.helpers.sort(key=lambda item: _definition_rank(item[0], cells))
    _find_local_modules(captured)


def _references(value: Any) -> list[tuple[str | None, Any]]:
    """(global name or None, value) pairs that a notebook function or class refers to."""
    found: list[tuple[str | None, Any]] = []
    if is_lru_wrapper(value):
        return [(None, value.__wrapped__)]
    if isinstance(value, types.FunctionType):
        scope = value.__globals__
        for name in global_names(value.__code__):
            if name in scope:
                found.append((name, scope[name]))
        for cell in value.__closure__ or ():
            try:
                found.append((None, cell.cell_contents))
            except ValueError:  # an empty cell: the variable was never assigned
                continue
        found.extend((None, d) for d in value.__defaults__ or ())
        found.extend((None, d) for d in (value.__kwdefaults__ or {}).values())
        found.extend((None, a) for a in _annotation_values(value))
        wrapped = getattr(value, "__wrapped__", None)
        if wrapped is not None:
            found.append((None, wrapped))
    elif isinstance(value, type):
        found.extend((None, base) for base in value.__bases__ if base is not object)
        for attribute in vars(value).values():
            if isinstance(attribute, classmethod | staticmethod):
                attribute = attribute.__func__
            if isinstance(attribute, property):
                found.extend((None, f) for f in (attribute.fget, attribute.fset) if f)
            elif isinstance(attribute, types.FunctionType | type | types.ModuleType):
                found.append((None, attribute))
    return found


def _annotation_values(function: types.FunctionType) -> list[Any]:
    try:
        hints = typing.get_type_hints(function)
    except Exception:
        hints = {k: v for k, v in function.__annotations__.items() if not isinstance(v, str)}
    values: list[Any] = []
    stack = list(hints.values())
    while stack:
        hint = stack.pop()
        values.append(hint)
        stack.extend(typing.get_args(hint))
    return [v for v in values if isinstance(v, type)]


def _modules_of_type(value: Any) -> set[str]:
    """Top-level modules of an object's classes (and, for containers, its items')."""
    found: set[str] = set()
    stack = [value]
    seen = 0
    while stack and seen < 1000:
        item = stack.pop()
        seen += 1
        for klass in type(item).__mro__:
            module = getattr(klass, "__module__", "") or ""
            if module and module != "builtins" and module not in NOTEBOOK_MODULES:
                found.add(module.split(".")[0])
        if isinstance(item, dict):
            stack.extend(list(item.values())[:50])
        elif isinstance(item, list | tuple | set | frozenset):
            stack.extend(list(item)[:50])
    return found


def _use_module(captured: Captured, module: str) -> None:
    top = module.split(".")[0]
    if top and top not in NOTEBOOK_MODULES and top != "builtins":
        captured.modules.add(top)


# -- the user's own modules ---------------------------------------------------------------
def _installed_roots() -> list[Path]:
    names = ("stdlib", "platstdlib", "purelib", "platlib")
    roots = {Path(p).resolve() for p in (sysconfig.get_paths().get(n) for n in names) if p}
    roots.update(
        Path(p).resolve() for p in sys.path if "site-packages" in p or "dist-packages" in p
    )
    return sorted(roots)


def local_module_path(name: str) -> Path | None:
    """The file (or package folder) of a module that is the user's own: imported from
    outside every installed distribution and the standard library; None otherwise."""
    top = name.split(".")[0]
    module = sys.modules.get(top)
    if module is None or top in sys.stdlib_module_names or top in NOTEBOOK_MODULES:
        return None
    file = getattr(module, "__file__", None)
    if not file:
        return None
    path = Path(file).resolve()
    if any(path.is_relative_to(root) for root in _installed_roots()):
        return None
    if provided_by_distribution(top, path):
        return None  # an installed (maybe editable) distribution: a requirement instead
    return path.parent if path.name == "__init__.py" else path


def changed_since_import(name: str) -> list[str]:
    """The parts of local module ``name`` (and of its submodules, for a package) whose code
    on disk is no longer what the kernel loaded: functions, methods and module-level literal
    values that differ, as ``module.name``. Empty when the files hold what runs (line moves
    and comments do not count)."""
    changed: list[str] = []
    prefix = name + "."
    for module_name, module in sorted(sys.modules.items()):
        if module is None or (module_name != name and not module_name.startswith(prefix)):
            continue
        file = getattr(module, "__file__", None)
        if not file or not str(file).endswith(".py") or not _plain_source_loader(module):
            continue
        try:
            source = Path(file).read_text(encoding="utf-8")
            tree = ast.parse(source, filename=file)
            compiled = compile(tree, file, "exec")
        except (OSError, SyntaxError, ValueError, UnicodeDecodeError):
            changed.append(f"{module_name} (its file can no longer be read or compiled)")
            continue
        on_disk = {_code_key(code) for code in _code_objects(compiled)}
        for label, code in _loaded_code(module, module_name):
            if _code_key(code) not in on_disk:
                changed.append(label)
        for variable, value in _literal_assignments(tree).items():
            loaded = getattr(module, variable, _MISSING)
            if loaded is not _MISSING and _is_literal(loaded) and loaded != value:
                changed.append(f"{module_name}.{variable}")
    return changed


_MISSING = object()


def _plain_source_loader(module: types.ModuleType) -> bool:
    """Loaded by Python's own loader from source (or its cache): its code is what compiling
    the file gives. Import hooks (pytest's assertion rewriting, transpilers) change the code,
    and such a module cannot be compared with its file."""
    import importlib.machinery

    loader = getattr(getattr(module, "__spec__", None), "loader", None)
    return type(loader) in (
        importlib.machinery.SourceFileLoader,
        importlib.machinery.SourcelessFileLoader,
    )


def _code_objects(code: types.CodeType) -> Iterable[types.CodeType]:
    yield code
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType):
            yield from _code_objects(constant)


def _code_key(code: types.CodeType) -> tuple[Any, ...]:
    """What a function does, without where it sits in its file."""
    constants = tuple(
        _code_key(c) if isinstance(c, types.CodeType) else repr(c) for c in code.co_consts
    )
    return (code.co_name, code.co_code, constants, code.co_names, code.co_varnames)


def _loaded_code(module: types.ModuleType, module_name: str) -> Iterable[tuple[str, Any]]:
    """The code objects of the functions, and of the methods of the classes, defined in
    ``module``'s file as the kernel loaded it (a decorator's wrapper is looked through;
    code from another file, such as a wrapper a base class puts around a method, is left
    out: it is not in this file to compare with)."""
    file = str(getattr(module, "__file__", ""))

    def code_of(value: Any) -> types.CodeType | None:
        try:
            function = inspect.unwrap(getattr(value, "__func__", value))
        except Exception:  # a cycle of __wrapped__, an object whose attributes raise
            return None
        code = getattr(function, "__code__", None)
        if isinstance(function, types.FunctionType) and code is not None:
            return code if code.co_filename == file else None
        return None

    for attribute, value in list(vars(module).items()):
        if getattr(value, "__module__", None) != module_name:
            continue
        if isinstance(value, type):
            for member, item in list(vars(value).items()):
                code = code_of(item)
                if code is not None:
                    yield f"{module_name}.{attribute}.{member}", code
        elif (code := code_of(value)) is not None:
            yield f"{module_name}.{attribute}", code


def _literal_assignments(tree: ast.Module) -> dict[str, Any]:
    """``NAME = literal`` at the top of a module (thresholds, labels, settings)."""
    found: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        else:
            continue
        if isinstance(target, ast.Name):
            try:
                found[target.id] = ast.literal_eval(value)
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                continue
    return found


def _is_literal(value: Any) -> bool:
    """An immutable literal: a module's lists, dicts and sets may be filled as it runs (a
    cache, a registry), which is no edit of its file."""
    if isinstance(value, (str, bytes, int, float, complex, bool, type(None))):
        return True
    if isinstance(value, (tuple, frozenset)):
        return all(_is_literal(item) for item in value)
    return False


def _find_local_modules(captured: Captured) -> None:
    """Snapshot candidates: local modules used directly, and local modules they use."""
    pending = sorted(captured.modules)
    while pending:
        name = pending.pop()
        if name in captured.local_modules:
            continue
        path = local_module_path(name)
        if path is None:
            continue
        captured.local_modules[name] = path
        for value in vars(sys.modules[name]).values():
            module = (
                value.__name__
                if isinstance(value, types.ModuleType)
                else getattr(value, "__module__", None)
            )
            top = (module or "").split(".")[0]
            if top and top not in captured.local_modules and local_module_path(top):
                captured.modules.add(top)
                pending.append(top)


def add_reached_modules(captured: Captured, modules: Iterable[str]) -> None:
    """Modules met while pickling the objects (classes deep inside models)."""
    before = set(captured.modules)
    for module in modules:
        _use_module(captured, module)
    if captured.modules != before:
        _find_local_modules(captured)


# -- source, for display --------------------------------------------------------------------
def source_or_none(value: Any, cells: list[str]) -> str | None:
    """The source of a notebook function or class, or None when it cannot be found."""
    try:
        return _source_of(value, cells)
    except CaptureError:
        return None


def _source_of(value: Any, cells: list[str]) -> str:
    name = value.__name__
    try:
        return textwrap.dedent(inspect.getsource(value))
    except (OSError, TypeError):
        pass
    # A class's own cell first (its methods' code names it, and IPython keeps the text in
    # linecache), so that a later redefinition of the name is not shown; then the newest
    # definition in the history, as in the kernel.
    own = _defining_cells(value) if isinstance(value, type) else []
    for cell in [*own, *reversed(cells)]:
        found = _definition_in(cell, name)
        if found:
            return found
    if isinstance(value, types.FunctionType):
        return f"# the source of {name} is not available (defined with exec?)\n"
    raise CaptureError(f"the source of {name} cannot be found")


def _defining_cells(klass: type) -> list[str]:
    import linecache

    cells = []
    for attribute in vars(klass).values():
        function = getattr(attribute, "__func__", attribute)
        code = getattr(function, "__code__", None)
        if code is not None:
            lines = linecache.getlines(code.co_filename)
            if lines:
                cells.append("".join(lines))
    return cells


def _definition_in(cell: str, name: str) -> str | None:
    try:
        tree = ast.parse(cell)
    except SyntaxError:
        return None
    for node in reversed(tree.body):
        definition = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef
        if isinstance(node, definition) and node.name == name:
            segment = ast.get_source_segment(cell, node, padded=False)
            if segment:
                decorators = "".join(
                    f"@{ast.get_source_segment(cell, d)}\n" for d in node.decorator_list
                )
                return decorators + segment
    return None


def _definition_rank(name: str, cells: list[str]) -> int:
    for index, cell in enumerate(cells):
        if f"def {name}" in cell or f"class {name}" in cell:
            return index
    return len(cells)
