"""Unit tests: reading notebooks, parsing the typed ``parameters`` cell, converting values."""

from __future__ import annotations

import ast
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from nbdeploy.errors import NbdeployError, NotebookError, ParameterError
from nbdeploy.notebook import Parameter, parse_parameters, read_notebook, resolve_parameters
from nbdeploy.notebook.reader import Notebook

PARAMETERS_CELL = """\
from datetime import date, datetime
from typing import Literal, Optional

n: int = 3  # help text
alpha = 0.5  # learning rate
name = "model # not a comment"
flag = True
tags = ["a", "b"]
options = {"k": 1}
ids: list[int] = [1, 2]
weights: dict[str, float] = {"a": 1.0}
limit: int | None = None
ratio: Optional[float] = None
mode: Literal["a", "b"] = "a"
day: date = date(2024, 1, 31)
when: datetime = datetime(2024, 1, 31, 12, 0)
seed = 1 + 2  # derived
anything = None
"""


def code_cell(source: str, tags: list[str] | None = None) -> dict[str, Any]:
    return {
        "cell_type": "code",
        "execution_count": None,
        "metadata": {"tags": tags} if tags else {},
        "outputs": [],
        "source": source,
    }


def write_notebook(
    tmp_path: Path, cells: list[dict[str, Any]], name: str = "train.ipynb", **extra: Any
) -> Path:
    data = {
        "cells": cells,
        "metadata": {
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
        **extra,
    }
    path = tmp_path / name
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def notebook_with_parameters(
    tmp_path: Path, source: str = PARAMETERS_CELL, name: str = "train.ipynb"
) -> Notebook:
    """A notebook whose second cell is the parameters cell (a markdown-free code cell first)."""
    path = write_notebook(
        tmp_path,
        [
            code_cell("import os"),
            code_cell(source, ["parameters"]),
            code_cell("print(n)"),
        ],
        name=name,
    )
    return read_notebook(path)


@pytest.fixture
def notebook(tmp_path: Path) -> Notebook:
    return notebook_with_parameters(tmp_path)


@pytest.fixture
def declared(notebook: Notebook) -> dict[str, Parameter]:
    return {p.name: p for p in parse_parameters(notebook)}


def resolve_text(notebook: Notebook, **text: str) -> dict[str, Any]:
    return resolve_parameters(notebook, parse_parameters(notebook), text_values=text)


def resolve_typed(notebook: Notebook, **values: Any) -> dict[str, Any]:
    return resolve_parameters(notebook, parse_parameters(notebook), values=values)


# -- read_notebook ------------------------------------------------------------------------
def test_read_notebook_loads_cells_kernel_and_tags(tmp_path: Path) -> None:
    path = write_notebook(
        tmp_path,
        [code_cell("x = 1", ["parameters"]), {"cell_type": "markdown", "source": ["# T"]}],
    )
    nb = read_notebook(path)
    assert nb.path == path.resolve()
    assert nb.name == "train.ipynb"
    assert len(nb.cells) == 2
    assert nb.kernel_name == "python3"
    assert nb.language == "python"
    assert nb.tagged("parameters") == [0]
    assert nb.tagged("nbdeploy:skip") == []


def test_read_notebook_accepts_a_str_path_and_list_sources(tmp_path: Path) -> None:
    path = write_notebook(tmp_path, [code_cell(["n: int = 1\n", "m = 2  # two\n"], ["parameters"])])
    nb = read_notebook(str(path))
    assert [(p.name, p.type_name, p.default, p.help) for p in parse_parameters(nb)] == [
        ("n", "int", 1, ""),
        ("m", "int", 2, "two"),
    ]


def test_read_notebook_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.ipynb"
    with pytest.raises(NotebookError) as info:
        read_notebook(missing)
    assert "notebook not found" in str(info.value)
    assert str(missing) in str(info.value)
    assert info.value.hint and "check the path" in info.value.hint


def test_read_notebook_invalid_json(tmp_path: Path) -> None:
    path = tmp_path / "broken.ipynb"
    path.write_text('{"cells": [\n  {"cell_type": ', encoding="utf-8")
    with pytest.raises(NotebookError) as info:
        read_notebook(path)
    message = str(info.value)
    assert str(path) in message
    assert "is not a notebook: invalid JSON at line 2" in message


def test_read_notebook_directory(tmp_path: Path) -> None:
    folder = tmp_path / "folder.ipynb"
    folder.mkdir()
    with pytest.raises(NotebookError, match="is a directory, not a notebook"):
        read_notebook(folder)


def test_read_notebook_json_without_cells(tmp_path: Path) -> None:
    path = tmp_path / "data.ipynb"
    path.write_text(json.dumps({"metadata": {}}), encoding="utf-8")
    with pytest.raises(NotebookError, match="it has no list of cells"):
        read_notebook(path)
    path.write_text(json.dumps([1, 2]), encoding="utf-8")
    with pytest.raises(NotebookError, match="it has no list of cells"):
        read_notebook(path)


def test_read_notebook_old_format(tmp_path: Path) -> None:
    path = write_notebook(tmp_path, [], nbformat=3)
    with pytest.raises(NotebookError, match="notebook format 3"):
        read_notebook(path)


def test_notebook_errors_are_nbdeploy_errors() -> None:
    assert issubclass(NotebookError, NbdeployError)
    assert issubclass(ParameterError, NbdeployError)


# -- parse_parameters ---------------------------------------------------------------------
def test_parse_annotated_parameter_with_help(declared: dict[str, Parameter]) -> None:
    n = declared["n"]
    assert n.type_name == "int"
    assert n.default == 3
    assert n.default_source == "3"
    assert n.help == "help text"
    assert n.annotated is True
    assert n.literal_default is True
    assert n.line == 4  # line within the cell


def test_parse_unannotated_literals_take_the_type_of_the_default(
    declared: dict[str, Parameter],
) -> None:
    expected = {
        "alpha": ("float", 0.5, "learning rate"),
        "name": ("str", "model # not a comment", ""),
        "flag": ("bool", True, ""),
        "tags": ("list", ["a", "b"], ""),
        "options": ("dict", {"k": 1}, ""),
    }
    for name, (type_name, default, help_text) in expected.items():
        parameter = declared[name]
        assert (parameter.type_name, parameter.default, parameter.help) == (
            type_name,
            default,
            help_text,
        ), name
        assert parameter.annotated is False


def test_parse_unannotated_none_default_is_any(declared: dict[str, Parameter]) -> None:
    assert declared["anything"].type_name == "any"
    assert declared["anything"].default is None
    assert declared["anything"].literal_default is True


def test_parse_generic_union_literal_and_date_annotations(
    declared: dict[str, Parameter],
) -> None:
    assert declared["ids"].type_name == "list[int]"
    assert declared["ids"].default == [1, 2]
    assert declared["weights"].type_name == "dict[str, float]"
    assert declared["weights"].default == {"a": 1.0}
    assert declared["limit"].type_name == "int | None"
    assert declared["ratio"].type_name == "float | None"  # Optional[float]
    assert declared["mode"].type_name == "Literal['a', 'b']"
    assert declared["mode"].type.choices == ("a", "b")
    assert declared["day"].type_name == "date"
    assert declared["when"].type_name == "datetime"


def test_parse_non_literal_default_shows_its_source(declared: dict[str, Parameter]) -> None:
    seed = declared["seed"]
    assert seed.type_name == "any"
    assert seed.literal_default is False
    assert seed.default is None
    assert seed.default_source == "1 + 2"
    assert seed.help == "derived"
    day = declared["day"]  # annotated, but the default is a call
    assert day.literal_default is False
    assert day.default_source == "date(2024, 1, 31)"


def test_parse_keeps_declaration_order_and_ignores_non_assignments(
    declared: dict[str, Parameter],
) -> None:
    assert list(declared) == [
        "n",
        "alpha",
        "name",
        "flag",
        "tags",
        "options",
        "ids",
        "weights",
        "limit",
        "ratio",
        "mode",
        "day",
        "when",
        "seed",
        "anything",
    ]


def test_parse_misc_forms(tmp_path: Path) -> None:
    source = (
        "# Parameters\n"
        "a = b = 1\n"  # chained assignment: not a parameter
        "x, y = 1, 2\n"  # tuple unpacking: not a parameter
        "path: Path = 'data.csv'  # input file\n"
        "text: 'list[int]' = [1]\n"  # string annotation
        "bare: int\n"  # annotation without a value
        "custom: MyType = 1\n"  # unknown type name
        "size = (\n"
        "    10\n"
        ")  # multi-line, comment at the end\n"
        "size = 20  # redefined: the later one wins\n"
        "note = 1  # type: ignore\n"
    )
    nb = notebook_with_parameters(tmp_path, source)
    declared = {p.name: p for p in parse_parameters(nb)}
    assert list(declared) == ["path", "text", "bare", "custom", "size", "note"]
    assert declared["path"].type_name == "Path"
    assert declared["path"].type.kind == "path"
    assert declared["path"].help == "input file"
    assert declared["text"].type_name == "list[int]"
    assert declared["bare"].type_name == "int"
    assert declared["bare"].literal_default is False
    assert declared["bare"].default_source == ""
    assert declared["custom"].type_name == "MyType"
    assert declared["custom"].type.kind == "any"
    assert declared["size"].default == 20
    assert declared["size"].help == "redefined: the later one wins"
    assert declared["note"].help == ""  # type comments are not help


def test_parse_help_on_the_last_line_of_a_multiline_statement(tmp_path: Path) -> None:
    nb = notebook_with_parameters(tmp_path, "sizes = [\n    1,\n    2,\n]  # layer sizes\n")
    (sizes,) = parse_parameters(nb)
    assert sizes.default == [1, 2]
    assert sizes.help == "layer sizes"
    assert sizes.line == 1


def test_parse_without_parameters_cell_is_empty(tmp_path: Path) -> None:
    nb = read_notebook(write_notebook(tmp_path, [code_cell("n = 1")]))
    assert parse_parameters(nb) == []


def test_parse_uses_the_first_tagged_cell(tmp_path: Path) -> None:
    path = write_notebook(
        tmp_path,
        [code_cell("a = 1", ["parameters"]), code_cell("b = 2", ["parameters", "other"])],
    )
    assert [p.name for p in parse_parameters(read_notebook(path))] == ["a"]


def test_parse_syntax_error_names_the_cell(tmp_path: Path) -> None:
    nb = notebook_with_parameters(tmp_path, "n = 1\nm = (2\n", name="broken.ipynb")
    with pytest.raises(NotebookError) as info:
        parse_parameters(nb)
    message = str(info.value)
    assert "broken.ipynb, cell 2 (tagged parameters): syntax error" in message
    assert info.value.hint == "fix the parameters cell so that it runs"


def test_to_dict(declared: dict[str, Parameter]) -> None:
    assert declared["n"].to_dict() == {
        "name": "n",
        "type": "int",
        "default": 3,
        "help": "help text",
    }
    assert declared["weights"].to_dict() == {
        "name": "weights",
        "type": "dict[str, float]",
        "default": {"a": 1.0},
        "help": "",
    }
    assert declared["seed"].to_dict() == {
        "name": "seed",
        "type": "any",
        "default": "1 + 2",
        "help": "derived",
    }
    assert declared["day"].to_dict()["default"] == "date(2024, 1, 31)"
    assert declared["mode"].to_dict()["type"] == "Literal['a', 'b']"
    # Everything to_dict returns is JSON-serialisable.
    json.dumps([p.to_dict() for p in declared.values()])


def test_to_dict_makes_tuple_defaults_json_safe(tmp_path: Path) -> None:
    nb = notebook_with_parameters(tmp_path, "shape = (2, 3)\nnested = {1: (1, 2)}\n")
    shape, nested = parse_parameters(nb)
    assert shape.type_name == "tuple"
    assert shape.to_dict()["default"] == [2, 3]
    assert nested.to_dict()["default"] == {"1": [1, 2]}


# -- resolve_parameters: text values (-p NAME VALUE) ---------------------------------------
@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("n", "7", 7),
        ("n", " -12 ", -12),
        ("alpha", "0.25", 0.25),
        ("alpha", "3", 3.0),
        ("alpha", "1e-3", 0.001),
        ("flag", "true", True),
        ("flag", "Yes", True),
        ("flag", "on", True),
        ("flag", "1", True),
        ("flag", "FALSE", False),
        ("flag", "no", False),
        ("flag", "0", False),
        ("name", "hello world", "hello world"),
        ("name", "42", "42"),
        ("name", " padded ", " padded "),
        ("tags", '["x", "y"]', ["x", "y"]),
        ("tags", "x, y ,z", ["x", "y", "z"]),
        ("tags", "", []),
        ("ids", "[3, 4]", [3, 4]),
        ("ids", "3, 4,5", [3, 4, 5]),
        ("ids", "(3, 4)", [3, 4]),
        ("options", '{"a": [1, 2]}', {"a": [1, 2]}),
        ("options", "{'a': 1}", {"a": 1}),
        ("weights", '{"a": 1, "b": 0.5}', {"a": 1.0, "b": 0.5}),
        ("limit", "5", 5),
        ("limit", "none", None),
        ("limit", "null", None),
        ("limit", "None", None),
        ("ratio", "0.1", 0.1),
        ("ratio", "~", None),
        ("mode", "b", "b"),
        ("day", "2024-02-29", dt.date(2024, 2, 29)),
        ("when", "2024-02-29T08:30:00", dt.datetime(2024, 2, 29, 8, 30)),
        ("when", "2024-02-29", dt.datetime(2024, 2, 29)),
        ("seed", "[1, 2]", [1, 2]),
        ("seed", "12", 12),
        ("seed", "free text", "free text"),
        ("anything", '{"k": null}', {"k": None}),
    ],
)
def test_text_values_are_converted(notebook: Notebook, name: str, text: str, expected: Any) -> None:
    result = resolve_text(notebook, **{name: text})
    assert result == {name: expected}
    assert type(result[name]) is type(expected)


def test_text_values_for_union_and_literal_types(tmp_path: Path) -> None:
    source = (
        "from typing import Literal, Union\n"
        "num: int | float = 1\n"
        "either: Union[int, str] = 1\n"
        "opt_list: list[int] | None = None\n"
        "level: Literal[1, 2, 3] = 1\n"
        "pair: tuple[int, str] = (1, 'a')\n"
    )
    nb = notebook_with_parameters(tmp_path, source)
    assert resolve_text(nb, num="2") == {"num": 2}
    assert type(resolve_text(nb, num="2")["num"]) is int
    assert resolve_text(nb, num="2.5") == {"num": 2.5}
    assert resolve_text(nb, either="7") == {"either": 7}
    assert resolve_text(nb, either="seven") == {"either": "seven"}  # str is tried last
    assert resolve_text(nb, opt_list="1,2") == {"opt_list": [1, 2]}
    assert resolve_text(nb, opt_list="null") == {"opt_list": None}
    assert resolve_text(nb, level="2") == {"level": 2}
    assert resolve_text(nb, pair="5, x") == {"pair": (5, "x")}
    assert resolve_text(nb, pair='[5, "x"]') == {"pair": (5, "x")}


def test_text_and_typed_values_combine_text_on_top(notebook: Notebook) -> None:
    result = resolve_parameters(
        notebook,
        parse_parameters(notebook),
        values={"n": 1, "alpha": 2},
        text_values={"n": "5"},
    )
    assert result == {"n": 5, "alpha": 2.0}


def test_no_values_resolve_to_nothing(notebook: Notebook) -> None:
    assert resolve_parameters(notebook, parse_parameters(notebook)) == {}
    assert resolve_parameters(notebook, [], values={}, text_values={}) == {}


@pytest.mark.parametrize(
    ("name", "text", "expected_type", "reason"),
    [
        ("n", "3.5", "int", ""),
        ("n", "three", "int", ""),
        ("alpha", "fast", "float", ""),
        ("flag", "maybe", "bool", "use true or false"),
        ("ids", "1, x", "list[int]", ""),
        ("ids", '[1, "x"]', "list[int]", ""),
        ("weights", "a=1", "dict[str, float]", "not valid JSON or a Python literal"),
        ("weights", '{"a": "heavy"}', "dict[str, float]", ""),
        ("limit", "lots", "int | None", ""),
        ("mode", "c", "Literal['a', 'b']", "choose one of 'a', 'b'"),
        ("day", "31/01/2024", "date", "use an ISO date such as 2024-01-31"),
        ("day", "2024-01-31T10:00:00", "date", "use an ISO date such as 2024-01-31"),
        ("when", "noon", "datetime", "use an ISO date-time such as 2024-01-31T12:00:00"),
    ],
)
def test_bad_text_values_name_parameter_type_and_value(
    notebook: Notebook, name: str, text: str, expected_type: str, reason: str
) -> None:
    with pytest.raises(ParameterError) as info:
        resolve_text(notebook, **{name: text})
    message = info.value.message
    assert message.startswith(f"parameter {name!r} of train.ipynb expects {expected_type}, got ")
    assert f"got {text}" in message
    if reason:
        assert message.endswith(f"({reason})")
    assert info.value.hint is not None
    assert info.value.hint.startswith(f"e.g. -p {name} ")
    assert str(info.value) == f"{message}\n  hint: {info.value.hint}"


def test_wrong_type_message_in_full(notebook: Notebook) -> None:
    with pytest.raises(ParameterError) as info:
        resolve_text(notebook, n="abc")
    assert str(info.value) == (
        "parameter 'n' of train.ipynb expects int, got abc\n  hint: e.g. -p n 3"
    )
    with pytest.raises(ParameterError) as info:
        resolve_typed(notebook, n="3")
    assert str(info.value) == (
        "parameter 'n' of train.ipynb expects int, got '3' (str)\n  hint: e.g. -p n 3"
    )


def test_hint_examples(notebook: Notebook) -> None:
    def hint(**text: str) -> str:
        with pytest.raises(ParameterError) as info:
            resolve_text(notebook, **text)
        return str(info.value.hint)

    assert hint(flag="x") == "e.g. -p flag true"
    assert hint(ids="x") == "e.g. -p ids '[1, 2]'"
    assert hint(weights="x") == "e.g. -p weights '{\"a\": 1.0}'"
    assert hint(day="x") == "e.g. -p day 2024-01-31"  # no literal default: a typed example
    assert hint(limit="x") == "e.g. -p limit VALUE"


# -- resolve_parameters: typed values (YAML / Python) --------------------------------------
@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("n", 4, 4),
        ("alpha", 2, 2.0),  # int widened to float
        ("alpha", 0.5, 0.5),
        ("flag", False, False),
        ("name", "text", "text"),
        ("tags", ("x", "y"), ["x", "y"]),
        ("ids", [7, 8], [7, 8]),
        ("weights", {"a": 1, "b": 2.5}, {"a": 1.0, "b": 2.5}),
        ("options", {"any": ["thing"]}, {"any": ["thing"]}),
        ("limit", None, None),
        ("limit", 9, 9),
        ("ratio", 1, 1.0),
        ("ratio", None, None),
        ("mode", "b", "b"),
        ("day", dt.date(2024, 3, 1), dt.date(2024, 3, 1)),
        ("day", "2024-03-01", dt.date(2024, 3, 1)),
        ("when", dt.datetime(2024, 3, 1, 9, 15), dt.datetime(2024, 3, 1, 9, 15)),
        ("when", dt.date(2024, 3, 1), dt.datetime(2024, 3, 1)),
        ("when", "2024-03-01T09:15:00", dt.datetime(2024, 3, 1, 9, 15)),
        ("seed", object, object),
        ("anything", [1, "x"], [1, "x"]),
    ],
)
def test_typed_values_are_checked(notebook: Notebook, name: str, value: Any, expected: Any) -> None:
    result = resolve_typed(notebook, **{name: value})
    assert result == {name: expected}
    assert type(result[name]) is type(expected)


@pytest.mark.parametrize(
    ("name", "value", "shown", "expected_type", "reason"),
    [
        ("n", True, "True (bool)", "int", ""),
        ("n", "3", "'3' (str)", "int", ""),
        ("n", 3.0, "3.0 (float)", "int", ""),
        ("alpha", True, "True (bool)", "float", ""),
        ("alpha", "0.5", "'0.5' (str)", "float", ""),
        ("flag", 1, "1 (int)", "bool", ""),
        ("flag", "true", "'true' (str)", "bool", ""),
        ("name", 5, "5 (int)", "str", "quote it to pass it as text"),
        ("name", ["a"], "['a'] (list)", "str", ""),
        ("tags", "a,b", "'a,b' (str)", "list", ""),
        ("ids", [1, "2"], "[1, '2'] (list)", "list[int]", ""),
        ("ids", [1, True], "[1, True] (list)", "list[int]", ""),
        ("weights", {"a": "x"}, "{'a': 'x'} (dict)", "dict[str, float]", ""),
        ("weights", [1.0], "[1.0] (list)", "dict[str, float]", ""),
        ("limit", 1.5, "1.5 (float)", "int | None", ""),
        ("limit", False, "False (bool)", "int | None", ""),
        ("mode", "c", "'c' (str)", "Literal['a', 'b']", "choose one of 'a', 'b'"),
        (
            "day",
            dt.datetime(2024, 1, 1, 10),
            "datetime.datetime(2024, 1, 1, 10, 0) (datetime)",
            "date",
            "a date has no time of day",
        ),
        ("day", 20240101, "20240101 (int)", "date", "use an ISO date such as 2024-01-31"),
        ("day", "yesterday", "'yesterday' (str)", "date", "use an ISO date such as 2024-01-31"),
        (
            "when",
            "soon",
            "'soon' (str)",
            "datetime",
            "use an ISO date-time such as 2024-01-31T12:00:00",
        ),
    ],
)
def test_bad_typed_values_name_parameter_type_and_value(
    notebook: Notebook, name: str, value: Any, shown: str, expected_type: str, reason: str
) -> None:
    with pytest.raises(ParameterError) as info:
        resolve_typed(notebook, **{name: value})
    expected = f"parameter {name!r} of train.ipynb expects {expected_type}, got {shown}"
    if reason:
        expected += f" ({reason})"
    assert info.value.message == expected


def test_typed_tuple_with_fixed_items(tmp_path: Path) -> None:
    nb = notebook_with_parameters(tmp_path, "pair: tuple[int, float] = (1, 2.0)\n")
    assert resolve_typed(nb, pair=[3, 4]) == {"pair": (3, 4.0)}
    with pytest.raises(ParameterError, match=r"expected 2 items, got 3"):
        resolve_typed(nb, pair=[1, 2, 3])
    with pytest.raises(ParameterError, match=r"expected 2 items, got 1"):
        resolve_text(nb, pair="1")


def test_variadic_tuple_accepts_any_length(tmp_path: Path) -> None:
    nb = notebook_with_parameters(tmp_path, "shape: tuple[int, ...] = (1, 2)\n")
    assert resolve_typed(nb, shape=(1, 2)) == {"shape": (1, 2)}
    assert resolve_text(nb, shape="1,2,3") == {"shape": (1, 2, 3)}


def test_bool_is_not_an_int_literal_choice(tmp_path: Path) -> None:
    nb = notebook_with_parameters(
        tmp_path, "from typing import Literal\nlevel: Literal[1, 2] = 1\n"
    )
    with pytest.raises(ParameterError, match=r"expects Literal\[1, 2\], got True \(bool\)"):
        resolve_typed(nb, level=True)


# -- resolve_parameters: unknown parameters, no parameters cell ----------------------------
def test_unknown_parameter_lists_known_ones_and_suggests_a_close_name(tmp_path: Path) -> None:
    nb = notebook_with_parameters(tmp_path, "n_estimators: int = 100\nmax_depth = 3\n")
    with pytest.raises(ParameterError) as info:
        resolve_text(nb, n_estimator="10")
    assert info.value.message == (
        "unknown parameter 'n_estimator' for train.ipynb; "
        "known parameters: n_estimators (int), max_depth (int)"
    )
    assert info.value.hint == "did you mean 'n_estimators'?"


def test_unknown_parameter_without_close_name_points_to_params(tmp_path: Path) -> None:
    nb = notebook_with_parameters(tmp_path, "n_estimators: int = 100\nmax_depth = 3\n")
    with pytest.raises(ParameterError) as info:
        resolve_typed(nb, zzz=1)
    assert "unknown parameter 'zzz'" in info.value.message
    assert "n_estimators (int), max_depth (int)" in info.value.message
    assert info.value.hint == "see `nbdeploy params NOTEBOOK`"


def test_parameters_for_a_notebook_without_parameters_cell(tmp_path: Path) -> None:
    path = write_notebook(tmp_path, [code_cell("n = 1")], name="plain.ipynb")
    nb = read_notebook(path)
    declared = parse_parameters(nb)
    with pytest.raises(ParameterError) as info:
        resolve_parameters(nb, declared, values={"n": 2}, text_values={"alpha": "1", "n": "3"})
    assert info.value.message == (
        "plain.ipynb has no parameters cell, so it takes no parameter (given: alpha, n)"
    )
    assert info.value.hint is not None
    assert "tag the cell" in info.value.hint
    assert "`parameters`" in info.value.hint


# -- rendering values into the injected cell ----------------------------------------------
HOSTILE_STRINGS = [
    "",
    'a "quoted" word',
    "it's",
    "'''",
    '"""',
    "back\\slash",
    "trailing backslash\\",
    "\\",
    '\\"',
    "new\nline",
    "tab\tand\rcarriage",
    "\"; import os; os.system('x') #",
    '\'; import os; os.system("x") #',
    '")\nimport os\nos.system("x")\n("',
    "{0} %s {name}",
    "unicode é 日本 \u2028 \x00 \U0001f600",
]


@pytest.fixture(scope="module")
def translator() -> Any:
    from nbdeploy.pipeline.engine import NbdeployPythonTranslator

    return NbdeployPythonTranslator


@pytest.mark.parametrize("value", HOSTILE_STRINGS)
def test_string_rendering_is_injection_safe(translator: Any, value: str) -> None:
    rendered = translator.translate(value)
    assert ast.literal_eval(rendered) == value
    # One expression, nothing else: parsing it as a module gives a single string constant.
    tree = ast.parse(rendered)
    assert len(tree.body) == 1
    assert isinstance(tree.body[0], ast.Expr)
    assert isinstance(tree.body[0].value, ast.Constant)


@pytest.mark.parametrize(
    "value",
    [
        HOSTILE_STRINGS,
        {"key \"'\\\n": "value \"'\\\n", "nested": {"x": ["a\nb"]}},
        [1, 2.5, True, None, "x"],
    ],
)
def test_nested_strings_render_to_literals(translator: Any, value: Any) -> None:
    assert ast.literal_eval(translator.translate(value)) == value


def test_codify_renders_one_assignment_per_parameter(translator: Any) -> None:
    values = {"a": "\"; import os; os.system('x') #", "b": "x\ny", "d": dt.date(2024, 1, 31)}
    code = translator.codify(values, comment="Parameters injected by nbdeploy")
    namespace: dict[str, Any] = {}
    exec(compile(code, "<injected>", "exec"), namespace)
    assert {k: namespace[k] for k in values} == values
    tree = ast.parse(code)
    assert [type(node).__name__ for node in tree.body] == ["Assign"] * 3


@pytest.mark.parametrize(
    "value",
    [
        dt.date(2024, 1, 31),
        dt.datetime(2024, 1, 31, 12, 30, 5, 123),
        dt.datetime(2024, 1, 31, 23, 59, tzinfo=dt.timezone.utc),
        dt.datetime(2024, 1, 31, tzinfo=dt.timezone(dt.timedelta(hours=-5))),
        (),
        (1,),
        ("a'\"\\\n",),
        (1, "x", (2.5, None)),
        (dt.date(2024, 1, 1), dt.datetime(2024, 1, 1, 1)),
        [dt.date(2024, 1, 1), (1, 2)],
        {"when": dt.datetime(2024, 5, 6, 7, 8, 9), "pair": (1, 2)},
    ],
)
def test_dates_datetimes_and_tuples_evaluate_back(translator: Any, value: Any) -> None:
    rendered = translator.translate(value)
    result = eval(rendered, {"__builtins__": {"__import__": __import__}})
    assert result == value
    assert type(result) is type(value)
    if isinstance(value, dt.datetime):
        assert result.tzinfo == value.tzinfo


# -- dictionary keys and paths ------------------------------------------------------------
KEYED_PARAMETERS = """\
from pathlib import Path
import datetime
weights: dict[int, float] = {1: 0.5}
nested: dict[str, dict[int, list[float]]] = {}
by_day: dict[datetime.date, int] = {}
by_pair: dict[tuple[int, int], str] = {}
either: dict[int | str, int] = {}
data: Path = "data.csv"
out: Path | None = None
"""


@pytest.fixture
def keyed(tmp_path: Path) -> Notebook:
    return notebook_with_parameters(tmp_path, KEYED_PARAMETERS)


def test_text_dict_keys_are_converted_to_the_declared_key_type(keyed: Notebook) -> None:
    weights = resolve_text(keyed, weights='{"1": 0.5, "2": 1}')["weights"]
    assert weights == {1: 0.5, 2: 1.0}
    assert [type(k) for k in weights] == [int, int]
    assert [type(v) for v in weights.values()] == [float, float]
    nested = resolve_text(keyed, nested='{"a": {"2": [1, 2.5]}}')["nested"]
    assert nested == {"a": {2: [1.0, 2.5]}}
    assert list(nested["a"]) == [2]
    assert type(next(iter(nested["a"]))) is int
    assert resolve_text(keyed, by_day='{"2024-02-29": 3}')["by_day"] == {dt.date(2024, 2, 29): 3}
    assert resolve_text(keyed, by_pair='{"1,2": "x"}')["by_pair"] == {(1, 2): "x"}
    # A key type that takes text keeps text keys as they are.
    assert resolve_text(keyed, either='{"1": 1, "b": 2}')["either"] == {"1": 1, "b": 2}


def test_typed_dict_keys_from_yaml_are_converted_too(keyed: Notebook) -> None:
    assert resolve_typed(keyed, weights={"3": 1}) == {"weights": {3: 1.0}}
    assert list(resolve_typed(keyed, weights={"3": 1})["weights"]) == [3]
    assert resolve_typed(keyed, weights={4: 2.0}) == {"weights": {4: 2.0}}


def test_bad_dict_keys_name_the_parameter_and_type(keyed: Notebook) -> None:
    with pytest.raises(ParameterError) as info:
        resolve_text(keyed, weights='{"one": 0.5}')
    assert info.value.message == (
        "parameter 'weights' of train.ipynb expects dict[int, float], got {\"one\": 0.5}"
    )
    with pytest.raises(ParameterError, match=r"expects dict\[int, float\], got \{True: 1\}"):
        resolve_typed(keyed, weights={True: 1})


def test_path_parameters_become_path_objects(keyed: Notebook) -> None:
    declared = {p.name: p for p in parse_parameters(keyed)}
    assert declared["data"].type_name == "Path"
    assert declared["out"].type_name == "Path | None"
    text = resolve_text(keyed, data="in/my file.csv", out="results")
    assert text == {"data": Path("in/my file.csv"), "out": Path("results")}
    assert isinstance(text["data"], Path)
    assert isinstance(text["out"], Path)
    assert resolve_text(keyed, out="none") == {"out": None}
    typed = resolve_typed(keyed, data="x.csv", out=Path("y"))
    assert typed == {"data": Path("x.csv"), "out": Path("y")}
    assert all(isinstance(v, Path) for v in typed.values())
    with pytest.raises(ParameterError, match=r"expects Path, got 5 \(int\)"):
        resolve_typed(keyed, data=5)
    with pytest.raises(ParameterError) as info:
        resolve_text(keyed, data="")
    assert info.value.hint == "e.g. -p data data.csv"


def test_path_and_keyed_values_are_json_safe_for_the_store() -> None:
    from nbdeploy.notebook.parameters import json_safe

    value = {"p": Path("a/b"), "d": {1: 0.5, (1, 2): [Path("c")], dt.date(2024, 1, 2): 1}}
    safe = json_safe(value)
    assert json.loads(json.dumps(safe)) == {
        "p": "a/b",
        "d": {"1": 0.5, "(1, 2)": ["c"], "2024-01-02": 1},
    }


@pytest.mark.parametrize(
    "value",
    [
        Path("data/in.csv"),
        Path("/abs/with space/and'quote\"s\\"),
        {1: 0.5, 2: 1.5},
        {(1, 2): "pair", 3.5: None, True: [1], None: "none"},
        {dt.date(2024, 1, 2): {7: Path("x")}},
        [{1: {2: (3, Path("y"))}}],
    ],
)
def test_paths_and_typed_dict_keys_evaluate_back(translator: Any, value: Any) -> None:
    rendered = translator.translate(value)
    result = eval(rendered, {"__builtins__": {"__import__": __import__}})
    assert result == value

    def shape(item: Any) -> Any:  # types all the way down, dictionary keys included
        if isinstance(item, dict):
            return [(shape(k), shape(v)) for k, v in item.items()]
        if isinstance(item, list | tuple):
            return (type(item), [shape(i) for i in item])
        return type(item)

    assert shape(result) == shape(value)


@pytest.mark.parametrize("value", [text for text in HOSTILE_STRINGS if text])
def test_path_rendering_is_injection_safe(translator: Any, value: str) -> None:
    rendered = translator.translate(Path(value))
    tree = ast.parse(rendered, mode="eval")
    call = tree.body
    assert isinstance(call, ast.Call)
    assert ast.unparse(call.func) == "__import__('pathlib').Path"
    assert len(call.args) == 1
    assert isinstance(call.args[0], ast.Constant)
    assert call.args[0].value == str(Path(value))


def test_codify_with_a_path_binds_no_other_name(translator: Any) -> None:
    code = translator.codify({"data": Path("x.csv"), "w": {1: 0.5}}, comment="injected")
    namespace: dict[str, Any] = {}
    exec(compile(code, "<injected>", "exec"), namespace)
    assert set(namespace) - {"__builtins__"} == {"data", "w"}
    assert namespace["data"] == Path("x.csv")
    assert list(namespace["w"]) == [1]
