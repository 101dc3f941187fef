"""Jinja2 rendering of the files nbdeploy generates, from the ``templates/`` directory.

Templates ship inside the wheel as ``nbdeploy/templates``; in a source checkout they are
read from the top-level ``templates/``. Autoescaping is off (the outputs are code and YAML,
not HTML): every value that reaches a template must be validated or quoted by its caller.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any


def templates_dir() -> Path:
    packaged = Path(__file__).parent / "templates"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "templates"


@cache
def _environment() -> Any:
    import jinja2

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )


def render(name: str, **values: Any) -> str:
    return str(_environment().get_template(name).render(**values))
