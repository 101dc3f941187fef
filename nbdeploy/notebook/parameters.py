"""Typed notebook parameters: parse the ``parameters`` cell, convert and check given values.

Types come from annotations (``n_estimators: int = 100  # trees in the forest``), else from
the literal default. Values given as text (``-p alpha 0.5``) are converted to the declared
type; values from YAML or Python are checked against it. Dictionary keys are converted too
(JSON keys are always text: ``'{"1": 0.5}'`` for ``dict[int, float]`` gives ``{1: 0.5}``), and
``Path`` parameters become :class:`pathlib.Path` objects. Every failure is a
:class:`ParameterError` naming the notebook, the parameter, the expected type and the value.
"""

from __future__ import annotations

import ast
import datetime as dt
import difflib
import io
import json
import os
import pathlib
import tokenize
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from nbdeploy.errors import NotebookError, ParameterError
from nbdeploy.notebook.reader import PARAMETERS_TAG, Notebook, cell_source

_SIMPLE_TYPES = {
    "int": "int",
    "float": "float",
    "bool": "bool",
    "str": "str",
    "list": "list",
    "List": "list",
    "Sequence": "list",
    "dict": "dict",
    "Dict": "dict",
    "Mapping": "dict",
    "tuple": "tuple",
    "Tuple": "tuple",
    "date": "date",
    "datetime": "datetime",
    "None": "none",
    "NoneType": "none",
    "Any": "any",
    "object": "any",
    "Path": "path",
    "PurePath": "path",
    "PosixPath": "path",
    "WindowsPath": "path",
}
_TRUE = {"true", "yes", "y", "on", "1"}
_FALSE = {"false", "no", "n", "off", "0"}
_NONE = {"none", "null", "~"}


@dataclass(frozen=True)
class TypeSpec:
    """A parameter type: ``kind`` plus item types (list/dict/tuple), members (union) or choices."""

    kind: str
    args: tuple[TypeSpec, ...] = ()
    choices: tuple[Any, ...] = ()
    label: str = ""
    variadic: bool = False  # tuple[int, ...]: any length

    def __str__(self) -> str:
        if self.label:
            return self.label
        if self.kind == "union":
            return " | ".join(str(arg) for arg in self.args)
        if self.kind == "literal":
            return "Literal[" + ", ".join(repr(c) for c in self.choices) + "]"
        if self.variadic:
            return f"{self.kind}[{self.args[0]}, ...]"
        if self.args:
            return f"{self.kind}[{', '.join(str(arg) for arg in self.args)}]"
        return {"none": "None", "path": "Path"}.get(self.kind, self.kind)


ANY = TypeSpec("any")


@dataclass(frozen=True)
class Parameter:
    """One parameter of a notebook, as declared in its ``parameters`` cell."""

    name: str
    type: TypeSpec
    default: Any
    default_source: str
    help: str = ""
    annotated: bool = False
    line: int = 0
    literal_default: bool = field(default=True)

    @property
    def type_name(self) -> str:
        return str(self.type)

    def to_dict(self) -> dict[str, Any]:
        default = self.default if self.literal_default else self.default_source
        return {
            "name": self.name,
            "type": self.type_name,
            "default": json_safe(default),
            "help": self.help,
        }


# -- parsing the parameters cell -------------------------------------------------------
def parse_parameters(notebook: Notebook) -> list[Parameter]:
    """The parameters declared in the notebook's cell tagged ``parameters`` (empty if none)."""
    tagged = notebook.tagged(PARAMETERS_TAG)
    if not tagged:
        return []
    index = tagged[0]
    source = cell_source(notebook.cells[index])
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise NotebookError(
            f"{notebook.name}, cell {index + 1} (tagged parameters): syntax error at line "
            f"{exc.lineno}: {exc.msg}",
            "fix the parameters cell so that it runs",
        ) from None
    comments = _comments_by_line(source)
    parameters: dict[str, Parameter] = {}
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            name, annotation, value = node.target.id, node.annotation, node.value
        elif (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
        ):
            name, annotation, value = node.targets[0].id, None, node.value
        else:
            continue
        default_source = ast.get_source_segment(source, value) if value is not None else ""
        try:
            default = ast.literal_eval(value) if value is not None else None
            literal = value is not None
        except (ValueError, SyntaxError, TypeError):
            default, literal = None, False
        if annotation is not None:
            spec = type_from_annotation(annotation)
        elif literal:
            spec = _type_of_value(default)
        else:
            spec = ANY
        end_line = getattr(node, "end_lineno", node.lineno) or node.lineno
        help_text = comments.get(end_line) or comments.get(node.lineno, "")
        parameters[name] = Parameter(
            name=name,
            type=spec,
            default=default,
            default_source=default_source or "",
            help=help_text,
            annotated=annotation is not None,
            line=node.lineno,
            literal_default=literal,
        )
    return list(parameters.values())


def _comments_by_line(source: str) -> dict[int, str]:
    comments: dict[int, str] = {}
    try:
        for token in tokenize.generate_tokens(io.StringIO(source).readline):
            if token.type == tokenize.COMMENT:
                text = token.string.lstrip("#").strip()
                if not text.startswith("type:"):
                    comments[token.start[0]] = text
    except (tokenize.TokenError, IndentationError):
        pass
    return comments


def type_from_annotation(node: ast.expr) -> TypeSpec:
    """A :class:`TypeSpec` for an annotation; unknown names become ``any`` (labelled)."""
    if isinstance(node, ast.Constant):
        if node.value is None:
            return TypeSpec("none")
        if isinstance(node.value, str):  # a string annotation: "list[int]"
            try:
                return type_from_annotation(ast.parse(node.value, mode="eval").body)
            except SyntaxError:
                return TypeSpec("any", label=node.value)
    if isinstance(node, ast.Name | ast.Attribute):
        name = node.id if isinstance(node, ast.Name) else node.attr
        kind = _SIMPLE_TYPES.get(name)
        return TypeSpec(kind) if kind else TypeSpec("any", label=ast.unparse(node))
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _union([type_from_annotation(node.left), type_from_annotation(node.right)])
    if isinstance(node, ast.Subscript):
        base = (
            node.value.id if isinstance(node.value, ast.Name) else getattr(node.value, "attr", "")
        )
        items = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        if base == "Optional":
            return _union([type_from_annotation(items[0]), TypeSpec("none")])
        if base == "Union":
            return _union([type_from_annotation(item) for item in items])
        if base == "Literal":
            choices = []
            for item in items:
                try:
                    choices.append(ast.literal_eval(item))
                except ValueError:
                    return TypeSpec("any", label=ast.unparse(node))
            return TypeSpec("literal", choices=tuple(choices))
        kind = _SIMPLE_TYPES.get(base)
        if kind in {"list", "dict", "tuple"}:
            variadic = any(isinstance(i, ast.Constant) and i.value is Ellipsis for i in items)
            args = tuple(
                type_from_annotation(item)
                for item in items
                if not (isinstance(item, ast.Constant) and item.value is Ellipsis)
            )
            return TypeSpec(kind, args=args, variadic=variadic and kind == "tuple")
    return TypeSpec("any", label=ast.unparse(node))


def _union(members: list[TypeSpec]) -> TypeSpec:
    flat: list[TypeSpec] = []
    for member in members:
        flat.extend(member.args if member.kind == "union" else [member])
    return TypeSpec("union", args=tuple(flat))


def _type_of_value(value: Any) -> TypeSpec:
    if value is None:
        return ANY  # no annotation and a None default: any value is accepted
    for python_type, kind in (
        (bool, "bool"),
        (int, "int"),
        (float, "float"),
        (str, "str"),
        (list, "list"),
        (dict, "dict"),
        (tuple, "tuple"),
    ):
        if isinstance(value, python_type):
            return TypeSpec(kind)
    return ANY


# -- converting and checking values ----------------------------------------------------
class _Mismatch(Exception):
    """A value does not fit a type; ``reason`` says why, when there is more to say."""

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason)
        self.reason = reason


def convert_text(spec: TypeSpec, text: str) -> Any:
    """Convert a command-line value to ``spec`` (raises _Mismatch)."""
    kind = spec.kind
    stripped = text.strip()
    if kind == "str":
        return text
    if kind == "path":
        if not text:
            raise _Mismatch("give a file or folder path")
        return pathlib.Path(text)
    if kind == "int":
        try:
            return int(stripped)
        except ValueError:
            raise _Mismatch() from None
    if kind == "float":
        try:
            return float(stripped)
        except ValueError:
            raise _Mismatch() from None
    if kind == "bool":
        if stripped.lower() in _TRUE:
            return True
        if stripped.lower() in _FALSE:
            return False
        raise _Mismatch("use true or false")
    if kind == "none":
        if stripped.lower() in _NONE or stripped == "":
            return None
        raise _Mismatch()
    if kind in {"date", "datetime"}:
        return check_value(spec, stripped)
    if kind in {"list", "tuple"}:
        if stripped.startswith(("[", "(")):
            return check_value(spec, _parse_structured(stripped))
        items = [item.strip() for item in stripped.split(",")] if stripped else []
        item_spec = spec.args[0] if spec.args and (kind == "list" or spec.variadic) else ANY
        if kind == "tuple" and spec.args and not spec.variadic:
            if len(spec.args) != len(items):
                raise _Mismatch(f"expected {len(spec.args)} items, got {len(items)}")
            return tuple(
                convert_text(arg, item) for arg, item in zip(spec.args, items, strict=True)
            )
        converted = [convert_text(item_spec, item) for item in items]
        return tuple(converted) if kind == "tuple" else converted
    if kind == "dict":
        return check_value(spec, _parse_structured(stripped))
    if kind == "union":
        if stripped.lower() in _NONE and any(arg.kind == "none" for arg in spec.args):
            return None
        for arg in sorted(spec.args, key=lambda a: a.kind == "str"):  # str last: it takes anything
            if arg.kind == "none":
                continue
            try:
                return convert_text(arg, text)
            except _Mismatch:
                continue
        raise _Mismatch()
    if kind == "literal":
        for choice in spec.choices:
            if str(choice) == stripped:
                return choice
        raise _Mismatch("choose one of " + ", ".join(repr(c) for c in spec.choices))
    # any: a JSON or Python literal when it parses as one, else the text itself
    try:
        return _parse_structured(stripped)
    except _Mismatch:
        return text


def _parse_structured(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise _Mismatch("not valid JSON or a Python literal") from None


def check_value(spec: TypeSpec, value: Any) -> Any:
    """Check a typed value (from YAML or Python) against ``spec``; widen int to float."""
    kind = spec.kind
    if kind == "any":
        return value
    if kind == "none":
        if value is None:
            return None
        raise _Mismatch()
    if kind == "bool":
        if isinstance(value, bool):
            return value
        raise _Mismatch()
    if kind == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Mismatch()
    if kind == "float":
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise _Mismatch()
    if kind == "str":
        if isinstance(value, str):
            return value
        raise _Mismatch("quote it to pass it as text" if not isinstance(value, list | dict) else "")
    if kind == "path":
        if isinstance(value, str | os.PathLike) and not isinstance(value, bytes):
            text = os.fspath(value)
            if isinstance(text, str) and text:
                return pathlib.Path(text)
        raise _Mismatch("give a file or folder path as text")
    if kind == "date":
        if isinstance(value, dt.datetime):
            raise _Mismatch("a date has no time of day")
        if isinstance(value, dt.date):
            return value
        if isinstance(value, str):
            try:
                return dt.date.fromisoformat(value)
            except ValueError:
                raise _Mismatch("use an ISO date such as 2024-01-31") from None
        raise _Mismatch("use an ISO date such as 2024-01-31")
    if kind == "datetime":
        if isinstance(value, dt.datetime):
            return value
        if isinstance(value, dt.date):
            return dt.datetime(value.year, value.month, value.day)
        if isinstance(value, str):
            try:
                return dt.datetime.fromisoformat(value)
            except ValueError:
                raise _Mismatch("use an ISO date-time such as 2024-01-31T12:00:00") from None
        raise _Mismatch("use an ISO date-time such as 2024-01-31T12:00:00")
    if kind in {"list", "tuple"}:
        if not isinstance(value, list | tuple):
            raise _Mismatch()
        if kind == "tuple" and spec.args and not spec.variadic:
            if len(spec.args) != len(value):
                raise _Mismatch(f"expected {len(spec.args)} items, got {len(value)}")
            return tuple(check_value(arg, item) for arg, item in zip(spec.args, value, strict=True))
        item_spec = spec.args[0] if spec.args else ANY
        items = [check_value(item_spec, item) for item in value]
        return tuple(items) if kind == "tuple" else items
    if kind == "dict":
        if not isinstance(value, dict):
            raise _Mismatch()
        key_spec = spec.args[0] if len(spec.args) == 2 else ANY
        value_spec = spec.args[1] if len(spec.args) == 2 else ANY
        return {_check_key(key_spec, k): check_value(value_spec, v) for k, v in value.items()}
    if kind == "union":
        for arg in spec.args:
            try:
                return check_value(arg, value)
            except _Mismatch:
                continue
        raise _Mismatch()
    if kind == "literal":
        # Compare types too: True == 1 in Python, but True is not the choice 1.
        if any(type(value) is type(choice) and value == choice for choice in spec.choices):
            return value
        raise _Mismatch("choose one of " + ", ".join(repr(c) for c in spec.choices))
    return value


def _check_key(spec: TypeSpec, key: Any) -> Any:
    """A dictionary key checked against ``spec``; a text key (JSON and YAML mappings from
    text have them) is converted as command-line text would be: ``"1"`` for an int key."""
    try:
        return check_value(spec, key)
    except _Mismatch:
        if not isinstance(key, str):
            raise
    converted = convert_text(spec, key)
    try:
        hash(converted)
    except TypeError:
        raise _Mismatch(f"the key {key!r} does not make a valid dictionary key") from None
    return converted


def resolve_parameters(
    notebook: Notebook,
    declared: list[Parameter],
    values: Mapping[str, Any] | None = None,
    text_values: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Typed values for the given parameters: ``values`` (typed, from YAML or Python) first,
    then ``text_values`` (command-line text) on top. Raises :class:`ParameterError`.
    """
    by_name = {parameter.name: parameter for parameter in declared}
    given: list[tuple[str, Any, bool]] = [(k, v, False) for k, v in (values or {}).items()]
    given += [(k, v, True) for k, v in (text_values or {}).items()]
    if given and not declared:
        has_cell = bool(notebook.tagged(PARAMETERS_TAG))
        raise ParameterError(
            f"{notebook.name} "
            + (
                "declares no parameters in its parameters cell"
                if has_cell
                else "has no parameters cell"
            )
            + ", so it takes no parameter "
            f"(given: {', '.join(sorted({name for name, _, _ in given}))})",
            "tag the cell that assigns the parameters with `parameters` "
            "(JupyterLab: property inspector, Cell Tags)",
        )
    resolved: dict[str, Any] = {}
    for name, value, is_text in given:
        parameter = by_name.get(name)
        if parameter is None:
            raise _unknown_parameter(notebook, name, declared)
        try:
            resolved[name] = (
                convert_text(parameter.type, value)
                if is_text
                else check_value(parameter.type, value)
            )
        except _Mismatch as mismatch:
            shown = value if is_text else f"{value!r} ({type(value).__name__})"
            reason = f" ({mismatch.reason})" if mismatch.reason else ""
            raise ParameterError(
                f"parameter {name!r} of {notebook.name} expects {parameter.type_name}, "
                f"got {shown}{reason}",
                f"e.g. -p {name} {_example(parameter)}",
            ) from None
    return resolved


def _unknown_parameter(notebook: Notebook, name: str, declared: list[Parameter]) -> ParameterError:
    known = ", ".join(f"{p.name} ({p.type_name})" for p in declared)
    close = difflib.get_close_matches(name, [p.name for p in declared], n=1)
    hint = f"did you mean {close[0]!r}?" if close else "see `nbdeploy params NOTEBOOK`"
    return ParameterError(
        f"unknown parameter {name!r} for {notebook.name}; known parameters: {known}", hint
    )


def _example(parameter: Parameter) -> str:
    if parameter.literal_default and parameter.default is not None:
        value = parameter.default
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, list | dict):
            return "'" + json.dumps(value) + "'"
        return str(value)
    examples = {
        "int": "10",
        "float": "0.5",
        "bool": "true",
        "str": "text",
        "date": "2024-01-31",
        "path": "data/input.csv",
    }
    return examples.get(parameter.type.kind, "VALUE")


def json_safe(value: Any) -> Any:
    """Values as they are stored and shown: dates as ISO strings, paths as text, tuples as
    lists, dictionary keys as text."""
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, pathlib.PurePath):
        return str(value)
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    if isinstance(value, dict):
        return {_json_key(k): json_safe(v) for k, v in value.items()}
    return value


def _json_key(key: Any) -> str:
    safe = json_safe(key)
    return safe if isinstance(safe, str) else str(key)
