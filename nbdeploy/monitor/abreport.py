"""The report of an A/B test between the versions behind a router, read from its logs.

In A/B mode the router (:mod:`nbdeploy.deployment.traffic.router.proxy`) appends one JSON line per
routed request to ``ab-requests.jsonl`` in the deployment's folder::

    {"request_id": "...", "arm": "v2", "t": 1718000000.0, "status": 200, "ms": 12.5}

and one line per ``POST /feedback`` to ``ab-feedback.jsonl``::

    {"request_id": "...", "arm": "v2", "t": 1718000042.0, "outcome": 1.0, "kind": "label"}

:func:`read_ab_log` reads both: only the *last* feedback of a request counts (a client may
correct itself), and lines that are not JSON objects with the expected fields (a line cut
short when the router crashed mid-write) are skipped and counted. Labels (0/1) are tested as
binary outcomes; as soon as one counted outcome is a reward, all are tested as real numbers.

:func:`ab_report` summarizes every arm (requests, server errors, latency percentiles,
outcomes) and compares the treatment arm(s) with the control arm using the always-valid
sequential test of :mod:`nbdeploy.monitor.abtest`. :func:`format_ab_report` renders the
report for a terminal; :meth:`AbReport.to_dict` for JSON.

Replayed looks. The always-valid p-value is the running minimum over the looks taken so far,
so its value depends on *when* one looked. A report holds no state between runs; to keep the
p-value honest and reproducible it replays a fixed schedule of looks over the whole log: the
counted outcomes of the two arms are walked in feedback-time order and the test is evaluated
after every ``look_every`` outcomes (both arms together) and once more at the end, each time
with the previous :class:`~nbdeploy.monitor.abtest.Decision`. The looks therefore depend only
on the log, not on how often anyone ran the report: recomputing gives the same p-value, and
as long as the log only grows, a later report replays every look on the ``look_every`` grid
of an earlier one, so its p-value is no larger and a winner, once declared on that grid,
stays declared. (The final look of an earlier report is on the grid only when its count of
outcomes is a multiple of ``look_every``; a report may thus say "no decision yet" after an
earlier one was decided by its off-grid final look alone. Corrected feedback, a later line
for a request id that already had one, changes history too: it keeps the request's place in
the order, the time of its first feedback, and replaces its value.)

Each comparison is tested at level ``alpha``; with several treatment arms, pass
``alpha / number_of_treatments`` to bound the chance of any false winner by ``alpha``.
Replaying costs one test per look, each over the outcomes so far, so it grows as
``outcomes ** 2 / look_every``: with the default schedule, about half a second for 100,000
outcomes and five for 300,000 (reading the logs adds about one second per 100,000 requests).
A larger ``look_every`` is cheaper; keep it fixed for an experiment, as it defines the looks.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, TypeAlias

import numpy as np

from nbdeploy.deployment.traffic.router import CONFIG
from nbdeploy.deployment.traffic.router.proxy import AB_LOG, FEEDBACK_LOG, FEEDBACK_PATH
from nbdeploy.monitor.abtest import (
    DEFAULT_ALPHA,
    Decision,
    OutcomeKind,
    sequential_test,
    summarize_arm,
)
from nbdeploy.numbers import finite_or_none

FeedbackKind: TypeAlias = Literal["label", "reward"]

DEFAULT_LOOK_EVERY: Final = 50
SERVER_ERROR_STATUS: Final = 500  # a request with this status or above counts as an error
LATENCY_PERCENTILES: Final = (50, 99)

__all__ = [
    "AbData",
    "AbReport",
    "ArmReport",
    "Comparison",
    "FeedbackKind",
    "ab_report",
    "format_ab_report",
    "read_ab_log",
]


@dataclass
class AbData:
    """What the router logged for an A/B test, cleaned up.

    ``outcome_sequence`` holds one ``(arm, outcome)`` pair per request that got feedback: the
    value of its last feedback line, at the place of its first, in feedback-time order.
    ``outcome_kind`` is "label" when all of those are labels, "reward" otherwise, and None
    without feedback. ``missing_files`` names the log files that do not exist.
    """

    arm_by_request: dict[str, str] = field(default_factory=dict)
    requests: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    latencies_ms: dict[str, list[float]] = field(default_factory=dict)
    outcome_sequence: list[tuple[str, float]] = field(default_factory=list)
    outcome_kind: FeedbackKind | None = None
    skipped_request_lines: int = 0
    skipped_feedback_lines: int = 0
    missing_files: list[str] = field(default_factory=list)
    experiment: str | None = None  # the experiment read (None: lines without an id)
    experiments: list[str] = field(default_factory=list)  # every id in the log, oldest first

    @property
    def outcomes(self) -> dict[str, list[float]]:
        """The counted outcomes of each arm, in feedback-time order."""
        by_arm: dict[str, list[float]] = {}
        for arm, outcome in self.outcome_sequence:
            by_arm.setdefault(arm, []).append(outcome)
        return by_arm

    @property
    def skipped_lines(self) -> int:
        """Malformed lines skipped in both logs."""
        return self.skipped_request_lines + self.skipped_feedback_lines

    @property
    def arms(self) -> list[str]:
        """Every arm that got a request or feedback, lowest version number first."""
        return sorted({*self.requests, *(arm for arm, _ in self.outcome_sequence)}, key=_by_version)

    @property
    def test_kind(self) -> OutcomeKind:
        """How :func:`~nbdeploy.monitor.abtest.sequential_test` should treat the outcomes."""
        return "binary" if self.outcome_kind == "label" else "continuous"


@dataclass(frozen=True)
class ArmReport:
    """One arm: its traffic, server errors, latency and outcomes.

    ``outcome_mean`` is the rate of positive labels, or the mean reward; rates, means and
    percentiles are None when there is nothing to compute them from.
    """

    arm: str
    requests: int
    errors: int
    error_rate: float | None
    outcomes: int
    outcome_mean: float | None
    p50_ms: float | None
    p99_ms: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "arm": self.arm,
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": self.error_rate,
            "outcomes": self.outcomes,
            "outcome_mean": self.outcome_mean,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
        }


@dataclass(frozen=True)
class Comparison:
    """A treatment arm against the control arm: the decision after the last replayed look."""

    control: str
    treatment: str
    decision: Decision
    looks: int

    def to_dict(self) -> dict[str, Any]:
        decision = self.decision
        return {
            "control": self.control,
            "treatment": self.treatment,
            "decision": decision.decision,
            "p_value": decision.p_value,
            "difference": finite_or_none(decision.difference),
            "lower": finite_or_none(decision.lower),
            "upper": finite_or_none(decision.upper),
            "alpha": decision.alpha,
            "kind": decision.kind,
            "method": decision.method,
            "looks": self.looks,
            "control_outcomes": decision.control.n,
            "treatment_outcomes": decision.treatment.n,
            "note": decision.note,
        }


@dataclass(frozen=True)
class AbReport:
    """The A/B report of one deployment folder; ``notes`` says what is missing, if anything."""

    folder: Path
    arms: list[ArmReport]
    comparisons: list[Comparison]
    outcome_kind: FeedbackKind | None
    alpha: float
    look_every: int
    skipped_lines: int
    missing_files: list[str]
    router_url: str | None = None
    notes: list[str] = field(default_factory=list)
    experiment: str | None = None
    experiments: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data (non-finite numbers become None)."""
        return {
            "folder": str(self.folder),
            "experiment": self.experiment,
            "experiments": self.experiments,
            "router_url": self.router_url,
            "outcome_kind": self.outcome_kind,
            "alpha": self.alpha,
            "look_every": self.look_every,
            "arms": [arm.to_dict() for arm in self.arms],
            "comparisons": [comparison.to_dict() for comparison in self.comparisons],
            "skipped_lines": self.skipped_lines,
            "missing_files": self.missing_files,
            "notes": self.notes,
        }


# -- reading the logs ----------------------------------------------------------------------


def read_ab_log(folder: Path, experiment: str | None = None) -> AbData:
    """Read the router's A/B request and feedback logs in ``folder`` for one experiment
    (``experiment``; default: the deployment's current one, else the newest in the log;
    lines of earlier logs without an id form an experiment of their own, read when the log
    has no other); missing files are empty.

    Feedback is ordered by its time ``t`` (ties in the order of the file); of several lines
    for one request id, the latest counts. Never raises on bad content: lines that are not
    JSON objects with the expected fields and types are skipped and counted (blank lines are
    ignored).
    """
    data = AbData()
    requests = _read_json_lines(folder / AB_LOG, data)
    for record in requests:
        named = record.get("experiment") if isinstance(record, dict) else None
        if isinstance(named, str) and named not in data.experiments:
            data.experiments.append(named)
    data.experiment = experiment or _current_experiment(folder, data.experiments)
    if experiment is None and data.experiment and data.experiment not in data.experiments:
        data.experiments.append(data.experiment)  # running, nothing logged yet
    for record in requests:
        if isinstance(record, dict) and record.get("experiment") != data.experiment:
            continue  # another experiment's request
        request = _parse_request(record)
        if request is None:
            data.skipped_request_lines += 1
            continue
        request_id, arm, status, milliseconds = request
        data.arm_by_request[request_id] = arm
        data.requests[arm] = data.requests.get(arm, 0) + 1
        data.errors[arm] = data.errors.get(arm, 0) + int(status >= SERVER_ERROR_STATUS)
        data.latencies_ms.setdefault(arm, []).append(milliseconds)
    feedback: list[tuple[float, str, str, float, FeedbackKind]] = []
    for record in _read_json_lines(folder / FEEDBACK_LOG, data):
        if isinstance(record, dict) and record.get("experiment") != data.experiment:
            continue
        parsed = _parse_feedback(record)
        if parsed is None:
            data.skipped_feedback_lines += 1
        else:
            feedback.append(parsed)
    feedback.sort(key=lambda line: line[0])  # stable: ties keep the order of the file
    counted: dict[str, tuple[str, float, FeedbackKind]] = {}  # first place, last value
    for _time, request_id, arm, outcome, kind in feedback:
        counted[request_id] = (arm, outcome, kind)
    data.outcome_sequence = [(arm, outcome) for arm, outcome, _kind in counted.values()]
    kinds = {kind for _arm, _outcome, kind in counted.values()}
    if kinds:
        data.outcome_kind = "label" if kinds == {"label"} else "reward"
    return data


def _current_experiment(folder: Path, logged: list[str]) -> str | None:
    """The experiment the router runs (its configuration names it), else the newest."""
    try:
        config = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = {}
    current = config.get("experiment") if isinstance(config, dict) else None
    if isinstance(current, str):
        return current
    return logged[-1] if logged else None


def _read_json_lines(path: Path, data: AbData) -> list[Any]:
    """The parsed lines of ``path``; an unparsable line becomes None, a missing file noted."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except (FileNotFoundError, NotADirectoryError):
        data.missing_files.append(path.name)
        return []
    records: list[Any] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            records.append(None)
    return records


def _parse_request(record: Any) -> tuple[str, str, int, float] | None:
    """``(request_id, arm, status, ms)`` of a request line, or None when it is malformed."""
    if not isinstance(record, dict):
        return None
    request_id, arm, status = record.get("request_id"), record.get("arm"), record.get("status")
    milliseconds = _finite_number(record.get("ms"))
    if (
        not isinstance(request_id, str)
        or not isinstance(arm, str)
        or not arm
        or not isinstance(status, int)
        or isinstance(status, bool)
        or milliseconds is None
        or _finite_number(record.get("t")) is None
    ):
        return None
    return request_id, arm, status, milliseconds


def _parse_feedback(record: Any) -> tuple[float, str, str, float, FeedbackKind] | None:
    """``(t, request_id, arm, outcome, kind)`` of a feedback line, or None when malformed."""
    if not isinstance(record, dict):
        return None
    request_id, arm, kind = record.get("request_id"), record.get("arm"), record.get("kind")
    time, outcome = _finite_number(record.get("t")), _finite_number(record.get("outcome"))
    if (
        not isinstance(request_id, str)
        or not isinstance(arm, str)
        or not arm
        or time is None
        or outcome is None
    ):
        return None
    if kind == "label" and outcome in (0.0, 1.0):
        return time, request_id, arm, outcome, "label"
    if kind == "reward":
        return time, request_id, arm, outcome, "reward"
    return None


def _finite_number(value: Any) -> float | None:
    """``value`` as a float if it is a finite JSON number (not a boolean or a string)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return finite_or_none(value)


def _by_version(arm: str) -> tuple[int, tuple[int, ...], str]:
    """Sort key of an arm: by the numbers in its name ("v2" < "v10"), unnumbered last."""
    numbers = tuple(int(number) for number in re.findall(r"\d+", arm))
    return (0 if numbers else 1, numbers, arm)


# -- the report ----------------------------------------------------------------------------


def ab_report(
    folder: Path,
    control: str | None = None,
    treatment: str | None = None,
    alpha: float = DEFAULT_ALPHA,
    look_every: int = DEFAULT_LOOK_EVERY,
    experiment: str | None = None,
) -> AbReport:
    """The A/B report of the deployment in ``folder``: every arm, and the test of each
    treatment arm against the control arm.

    By default the control is the arm with the lowest version number and every other arm is a
    treatment; ``control`` and ``treatment`` pick arms by name (naming only ``treatment``
    compares it with the lowest other arm). Each comparison replays the looks of the
    sequential test deterministically over the log (every ``look_every`` outcomes of the two
    arms, and at the end; see the module docstring), so its always-valid p-value is the same
    however often the report is computed. Missing logs give a report without arms that says
    so; an arm name that is not in the logs raises ValueError.
    """
    if look_every < 1:
        raise ValueError(f"look_every must be at least 1, got {look_every!r}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be strictly between 0 and 1, got {alpha!r}")
    folder = Path(folder)
    data = read_ab_log(folder, experiment)
    if experiment is not None and experiment not in data.experiments:
        known = ", ".join(data.experiments) or "none"
        raise ValueError(f"no A/B experiment {experiment!r} in the log (there are: {known})")
    pairs = _pairs_to_compare(data.arms, control, treatment)
    comparisons = [
        _replay_comparison(data, pair, alpha, look_every, data.test_kind) for pair in pairs
    ]
    router_url = _router_url(folder)
    return AbReport(
        folder=folder,
        arms=[_arm_report(data, arm, data.test_kind) for arm in data.arms],
        comparisons=comparisons,
        outcome_kind=data.outcome_kind,
        alpha=alpha,
        look_every=look_every,
        skipped_lines=data.skipped_lines,
        missing_files=data.missing_files,
        router_url=router_url,
        notes=_notes(data, router_url),
        experiment=data.experiment,
        experiments=data.experiments,
    )


def _pairs_to_compare(
    arms: list[str], control: str | None, treatment: str | None
) -> list[tuple[str, str]]:
    """``(control, treatment)`` pairs to test, checking the names the caller gave."""
    for role, name in (("control", control), ("treatment", treatment)):
        if name is not None and name not in arms:
            known = ", ".join(arms) if arms else "none: the logs have no requests or feedback"
            raise ValueError(f"{role} arm {name!r} is not in the A/B logs; arms: {known}")
    if control is not None and control == treatment:
        raise ValueError(f"control and treatment are the same arm {control!r}")
    if control is None:
        candidates = [arm for arm in arms if arm != treatment]
        if not candidates:
            return []
        control = candidates[0]
    treatments = [treatment] if treatment is not None else [a for a in arms if a != control]
    return [(control, name) for name in treatments]


def _replay_comparison(
    data: AbData, pair: tuple[str, str], alpha: float, look_every: int, kind: OutcomeKind
) -> Comparison:
    """Replay the looks of the sequential test of ``pair`` over the whole log."""
    control, treatment = pair
    sequence = [(arm, value) for arm, value in data.outcome_sequence if arm in pair]
    values = np.asarray([value for _arm, value in sequence], dtype=float)
    is_treatment = np.asarray([arm == treatment for arm, _value in sequence], dtype=bool)
    control_values, treatment_values = values[~is_treatment], values[is_treatment]
    treatment_seen = np.cumsum(is_treatment)  # [k]: treatment outcomes in the first k + 1
    total = len(sequence)
    looks = list(range(look_every, total + 1, look_every))
    if total % look_every:
        looks.append(total)
    decision: Decision | None = None
    for seen in looks:
        in_treatment = int(treatment_seen[seen - 1])
        decision = sequential_test(
            control_values[: seen - in_treatment],
            treatment_values[:in_treatment],
            alpha,
            kind,
            previous=decision,
        )
    if decision is None:  # no outcomes: a test of nothing says "no decision yet", p = 1
        decision = sequential_test(control_values, treatment_values, alpha, kind)
    return Comparison(control=control, treatment=treatment, decision=decision, looks=len(looks))


def _arm_report(data: AbData, arm: str, kind: OutcomeKind) -> ArmReport:
    requests, errors = data.requests.get(arm, 0), data.errors.get(arm, 0)
    latencies = data.latencies_ms.get(arm, [])
    p50_ms = p99_ms = None
    if latencies:
        p50_ms, p99_ms = (float(value) for value in np.percentile(latencies, LATENCY_PERCENTILES))
    outcomes = summarize_arm(arm, data.outcomes.get(arm, []), kind)
    return ArmReport(
        arm=arm,
        requests=requests,
        errors=errors,
        error_rate=errors / requests if requests else None,
        outcomes=outcomes.n,
        outcome_mean=finite_or_none(outcomes.mean),
        p50_ms=p50_ms,
        p99_ms=p99_ms,
    )


def _router_url(folder: Path) -> str | None:
    """The router's address from its configuration in ``folder``, if it can be read."""
    try:
        listen = json.loads((folder / CONFIG).read_text(encoding="utf-8"))["listen"]
        return f"http://{listen['host']}:{int(listen['port'])}"
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _notes(data: AbData, router_url: str | None) -> list[str]:
    notes = []
    if len(data.missing_files) == 2:
        notes.append(
            f"no A/B logs in {AB_LOG} or {FEEDBACK_LOG}: "
            "is the deployment in A/B mode, and has it served requests?"
        )
    elif AB_LOG in data.missing_files:
        notes.append(f"no {AB_LOG}: request counts and latencies are unknown")
    if not data.outcome_sequence:
        notes.append(
            "no outcomes yet: POST {request_id, label|reward} to "
            f"{router_url or '<router>'}{FEEDBACK_PATH}"
        )
    if len(data.arms) == 1:
        notes.append(f"only one arm ({data.arms[0]}): nothing to compare")
    if data.skipped_lines:
        notes.append(
            f"skipped {data.skipped_lines} malformed lines "
            f"({data.skipped_request_lines} in {AB_LOG}, "
            f"{data.skipped_feedback_lines} in {FEEDBACK_LOG})"
        )
    return notes


# -- text ----------------------------------------------------------------------------------


def format_ab_report(report: AbReport) -> str:
    """The report as plain text: a table of the arms, one line per comparison, then notes."""
    labels = report.outcome_kind == "label"
    header = ("arm", "requests", "errors", "outcomes", "rate" if labels else "mean")
    rows = [
        (
            arm.arm,
            str(arm.requests),
            str(arm.errors),
            str(arm.outcomes),
            _number(arm.outcome_mean, ".3f" if labels else ".4g"),
            _number(arm.p50_ms, ".1f"),
            _number(arm.p99_ms, ".1f"),
        )
        for arm in report.arms
    ]
    lines = [f"experiment {report.experiment}"] if report.experiment else []
    earlier = [e for e in report.experiments if e != report.experiment]
    if earlier:
        lines.append(f"  earlier: {', '.join(earlier[-3:])} (--experiment ID)")
    lines += _table([(*header, "p50 ms", "p99 ms"), *rows]) if rows else []
    lines += [_comparison_line(comparison) for comparison in report.comparisons]
    lines += report.notes
    return "\n".join(lines)


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    """Rows as aligned columns: the first to the left, the others (numbers) to the right."""
    widths = [max(len(cell) for cell in column) for column in zip(*rows, strict=True)]
    return [
        "  ".join(
            cell.ljust(width) if index == 0 else cell.rjust(width)
            for index, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]


def _comparison_line(comparison: Comparison) -> str:
    """``v2 vs v1: treatment better (p = 0.003, difference +0.051 [0.012, 0.090], ...)``."""
    decision = comparison.decision
    spec = ".3f" if decision.kind == "binary" else ".4g"
    details = f"p = {_p_value(decision.p_value)}"
    if math.isfinite(decision.difference):
        details += (
            f", difference {decision.difference:+{spec}} "
            f"[{_number(decision.lower, spec)}, {_number(decision.upper, spec)}]"
        )
    details += f", alpha {decision.alpha:g}, {comparison.looks} looks"
    line = f"{comparison.treatment} vs {comparison.control}: {decision.decision} ({details})"
    return f"{line}; {decision.note}" if decision.note else line


def _p_value(p_value: float) -> str:
    return f"{p_value:.2g}" if p_value >= 0.001 else f"{p_value:.1e}"


def _number(value: float | None, spec: str) -> str:
    """``value`` formatted with ``spec``; "-" when it is missing and "inf" kept readable."""
    if value is None:
        return "-"
    if math.isinf(value):
        return "-inf" if value < 0 else "inf"
    return format(value, spec)
