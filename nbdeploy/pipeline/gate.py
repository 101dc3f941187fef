"""The gate of a pipeline step's deploy (``deploy: {when: "accuracy >= live.accuracy"}``).

Grammar (parsed, never evaluated as Python)::

    gate        := comparison ("and" comparison)*
    comparison  := operand OP operand          OP: >= > <= < == !=
    operand     := METRIC | live.METRIC | NUMBER

``METRIC`` is a name the step's notebook logged with ``nbdeploy.log_metric``: a plain name
(letters, digits, ``_ . / -``, not starting with a digit), or any name in single quotes or
backticks (``'val loss'``). ``live.METRIC`` is that metric of the run that produced the
deployment's live version. Each comparison names at least one metric.

This module is imported inside the step's kernel: it uses only the standard library.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
    "==": operator.eq,
    "!=": operator.ne,
}
NEGATED = {">=": "<", ">": "<=", "<=": ">", "<": ">=", "==": "!=", "!=": "=="}
LIVE_PREFIX = "live."
GATE_EXAMPLE = 'e.g. when: "accuracy >= live.accuracy and loss < 0.5"'

_TOKEN = re.compile(
    r"\s*(?:"
    r"(?P<op>>=|<=|==|!=|>|<)"
    r"|(?P<number>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)(?![\w.])"
    r"|(?P<quoted>(?:live\.)?(?:'[^']+'|`[^`]+`))"
    r"|(?P<name>[A-Za-z_][\w./-]*)"
    r")"
)


class GateSyntaxError(ValueError):
    """The gate does not follow the grammar; the message says where."""


@dataclass(frozen=True)
class Operand:
    """A metric of this run, a metric of the live version's run, or a number."""

    kind: str  # "run" | "live" | "number"
    name: str = ""
    number: float = 0.0

    def text(self) -> str:
        if self.kind == "number":
            return format_number(self.number)
        return f"{LIVE_PREFIX}{self.name}" if self.kind == "live" else self.name


@dataclass(frozen=True)
class Comparison:
    left: Operand
    op: str
    right: Operand

    def text(self) -> str:
        return f"{self.left.text()} {self.op} {self.right.text()}"


@dataclass(frozen=True)
class Gate:
    source: str
    comparisons: tuple[Comparison, ...]

    @property
    def uses_live(self) -> bool:
        return any(o.kind == "live" for c in self.comparisons for o in (c.left, c.right))


@dataclass(frozen=True)
class Decision:
    """Whether to deploy, and the line the run records (``deployed: ...`` or ``not
    deployed: ...``)."""

    deploy: bool
    note: str


def format_number(value: float) -> str:
    return f"{value:.6g}"


def parse_gate(text: str) -> Gate:
    """The gate in ``text``; GateSyntaxError says what is wrong and where."""
    if not isinstance(text, str) or not text.strip():
        raise GateSyntaxError("the gate is empty")
    tokens = _tokens(text)
    comparisons: list[Comparison] = []
    position = 0
    while True:
        chunk = tokens[position : position + 3]
        if len(chunk) < 3 or [kind for kind, _ in chunk][1] != "op":
            shown = " ".join(value for _, value in chunk) or "the end"
            raise GateSyntaxError(
                f"expected a comparison like `accuracy >= live.accuracy` at {shown!r}"
            )
        (lk, lv), (_, op), (rk, rv) = chunk
        if lk == "op" or rk == "op" or lk == "and" or rk == "and":
            raise GateSyntaxError(f"expected a metric or a number around {op!r}")
        left, right = _operand(lk, lv), _operand(rk, rv)
        if left.kind == "number" and right.kind == "number":
            raise GateSyntaxError(f"{lv} {op} {rv} compares two numbers: name a metric on one side")
        comparisons.append(Comparison(left, op, right))
        position += 3
        if position == len(tokens):
            return Gate(text.strip(), tuple(comparisons))
        if tokens[position] != ("and", "and"):
            raise GateSyntaxError(
                f"expected `and` between comparisons, found {tokens[position][1]!r} "
                "(only `and` joins comparisons)"
            )
        position += 1


def _tokens(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    index = 0
    while index < len(text):
        if text[index:].strip() == "":
            break
        match = _TOKEN.match(text, index)
        if match is None or match.end() == index:
            rest = text[index:].strip()
            raise GateSyntaxError(f"unexpected {rest[:20]!r} at character {index + 1}")
        kind = match.lastgroup or ""
        value = match.group(kind)
        if kind == "name" and value == "and":
            kind = "and"
        elif kind == "name" and value in ("or", "not"):
            raise GateSyntaxError(f"`{value}` is not supported: join comparisons with `and`")
        tokens.append((kind, value))
        index = match.end()
    if not tokens:
        raise GateSyntaxError("the gate is empty")
    return tokens


def _operand(kind: str, value: str) -> Operand:
    if kind == "number":
        return Operand("number", number=float(value))
    live = value.startswith(LIVE_PREFIX)
    name = value[len(LIVE_PREFIX) :] if live else value
    if kind == "quoted":
        name = name[1:-1]
    if not name:
        raise GateSyntaxError(f"{value!r} names no metric")
    return Operand("live" if live else "run", name=name)


def evaluate(
    gate: Gate,
    run_metrics: Mapping[str, float | None],
    live_metrics: Mapping[str, float | None] | None,
    live_label: str = "the live version",
) -> Decision:
    """Decide on ``gate`` with this run's metrics and the live version's run's (None: no
    live version, so a gate that reads the live version lets the first deploy through)."""
    if live_metrics is None and gate.uses_live:
        return Decision(True, "deployed: no live version to compare with")
    live = live_metrics or {}
    missing: list[str] = []
    for comparison in gate.comparisons:
        for operand in (comparison.left, comparison.right):
            if operand.kind == "run" and _value(run_metrics, operand.name) is None:
                missing.append(f"metric {operand.name!r} is missing in this run")
            elif operand.kind == "live" and _value(live, operand.name) is None:
                missing.append(f"metric {operand.name!r} is missing in {live_label}'s run")
    if missing:
        return Decision(False, "not deployed: " + "; ".join(dict.fromkeys(missing)))
    held: list[str] = []
    failed: list[str] = []
    for comparison in gate.comparisons:
        left = _resolve(comparison.left, run_metrics, live)
        right = _resolve(comparison.right, run_metrics, live)
        holds = OPERATORS[comparison.op](left, right)
        op = comparison.op if holds else NEGATED[comparison.op]
        shown = (
            f"{_shown(comparison.left, left, comparison.right)} {op} "
            f"{_shown(comparison.right, right, comparison.left)}"
        )
        (held if holds else failed).append(shown)
    if failed:
        return Decision(False, "not deployed: " + ", ".join(failed))
    return Decision(True, "deployed: " + ", ".join(held))


def _value(metrics: Mapping[str, float | None], name: str) -> float | None:
    value = metrics.get(name)
    if value is None or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _resolve(
    operand: Operand, run: Mapping[str, float | None], live: Mapping[str, float | None]
) -> float:
    if operand.kind == "number":
        return operand.number
    value = _value(run if operand.kind == "run" else live, operand.name)
    assert value is not None  # checked for missing metrics first
    return value


def _shown(operand: Operand, value: float, other: Operand) -> str:
    """``accuracy 0.91``, ``live 0.93`` (the same metric as the other side), ``live.loss
    0.2``, or the number itself."""
    if operand.kind == "number":
        return format_number(value)
    if operand.kind == "live":
        same = other.kind == "run" and other.name == operand.name
        return f"live {format_number(value)}" if same else f"live.{operand.name} {value:.6g}"
    return f"{operand.name} {format_number(value)}"
