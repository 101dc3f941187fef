"""What a schedule is, read from what a user typed, with errors that say which part is wrong.

A schedule runs an nbdeploy command (``run NOTEBOOK ...``, ``run pipeline.yaml`` or
``batch NAME INPUT --output OUTPUT``) when its clock fires (``--cron``), when a health
condition of a deployment holds (``--on``), or both.

``--cron`` takes 5 fields (minute hour day-of-month month day-of-week) or 6 fields with
*seconds first* (second minute hour day-of-month month day-of-week), croniter's documented
``second_at_beginning`` form: ``*/2 * * * * *`` fires every two seconds.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from nbdeploy.errors import NbdeployError

CATCH_UP_POLICIES = ("latest", "all", "none")
OVERLAP_POLICIES = ("skip", "queue", "replace")
ALLOWED_COMMANDS = ("run", "batch")
DEFAULT_COOLDOWN_S = 3600.0
DEFAULT_RETRY_BASE_S = 10.0
RETRY_BASE_ENV = "NBDEPLOY_SCHEDULE_RETRY_BASE"
MAX_RETRIES = 20
FIELDS_5 = ("minute", "hour", "day of month", "month", "day of week")
FIELDS_6 = ("second", *FIELDS_5)
NAME_PATTERN = re.compile(r"^[a-z]([a-z0-9-]{0,38}[a-z0-9])?$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_SECONDS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_TRIGGER = re.compile(
    r"^(?P<kind>drift|error-rate|accuracy):(?P<name>[A-Za-z0-9-]+)"
    r"(?:(?P<op>[<>])(?P<threshold>\d+(?:\.\d+)?|\.\d+))?$"
)
# Options of run and batch whose value is a path that may not exist yet (written by it).
_OUTPUT_OPTIONS = ("--output", "-o", "--output-dir", "--out")


class ScheduleError(NbdeployError):
    """A schedule's definition is not valid."""


class ScheduleNotFoundError(ScheduleError):
    """No schedule of that name."""


@dataclass(frozen=True)
class ScheduleSpec:
    """A schedule's definition, as stored (the ``spec`` JSON of table ``schedules``)."""

    cron: str | None
    tz: str
    catch_up: str
    overlap: str
    retries: int
    retry_base_s: float
    command: list[str]
    cwd: str
    on: str | None
    cooldown_s: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScheduleSpec:
        return cls(
            cron=data.get("cron"),
            tz=str(data.get("tz") or "UTC"),
            catch_up=str(data.get("catch_up") or "latest"),
            overlap=str(data.get("overlap") or "skip"),
            retries=int(data.get("retries") or 0),
            retry_base_s=float(data.get("retry_base_s") or DEFAULT_RETRY_BASE_S),
            command=[str(word) for word in data.get("command") or []],
            cwd=str(data.get("cwd") or "/"),
            on=data.get("on"),
            cooldown_s=float(data.get("cooldown_s", DEFAULT_COOLDOWN_S)),
        )

    @property
    def command_text(self) -> str:
        return "nbdeploy " + shlex.join(self.command)


@dataclass(frozen=True)
class Trigger:
    """A health condition: ``drift:NAME``, ``error-rate:NAME>0.05``, ``accuracy:NAME<0.9``."""

    kind: str
    deployment: str
    op: str | None
    threshold: float | None


def schedule_name(text: str) -> str:
    """A schedule name follows the rules of deployment names (a DNS label)."""
    if not isinstance(text, str) or not NAME_PATTERN.match(text):
        raise ScheduleError(
            f"{text!r} cannot name a schedule",
            "use 1-40 lowercase letters, digits and '-', starting with a letter (e.g. nightly)",
        )
    return text


def check_cron(expression: str) -> str:
    """``expression`` when croniter reads it (5 fields, or 6 with seconds first); else an
    error naming the field that is wrong."""
    from croniter import croniter

    fields = expression.split()
    if len(fields) not in (5, 6):
        raise ScheduleError(
            f"--cron {expression!r} has {len(fields)} fields; it needs 5 "
            "(minute hour day-of-month month day-of-week) or 6 with seconds first",
            'e.g. --cron "0 2 * * *" (02:00 every day) or "*/10 * * * * *" (every 10 s)',
        )
    names = FIELDS_5 if len(fields) == 5 else FIELDS_6
    for index, field in enumerate(fields):
        probe = ["*"] * len(fields)
        probe[index] = field
        if not _cron_ok(croniter, " ".join(probe)):
            raise ScheduleError(
                f"--cron {expression!r}: field {index + 1} ({names[index]}) {field!r} is not valid",
                _field_hint(names[index]),
            )
    if not _cron_ok(croniter, expression):
        raise ScheduleError(
            f"--cron {expression!r} never fires or cannot be read",
            "check that day of month and month go together (e.g. not 31 in February)",
        )
    return expression


def _cron_ok(croniter: Any, expression: str) -> bool:
    from datetime import datetime

    try:
        croniter(expression, datetime(2026, 1, 1), second_at_beginning=True).get_next(datetime)
    except (ValueError, KeyError, TypeError):
        return False
    return True


def _field_hint(field: str) -> str:
    ranges = {
        "second": "0-59",
        "minute": "0-59",
        "hour": "0-23",
        "day of month": "1-31",
        "month": "1-12 or jan-dec",
        "day of week": "0-6 (Sunday is 0) or sun-sat",
    }
    return f"{field} takes {ranges[field]}, '*', lists (1,15), ranges (1-5) and steps (*/5)"


def check_zone(name: str | None) -> str:
    """An IANA time zone name (default: this machine's local zone)."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    if not name:
        return local_zone_name()
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ScheduleError(
            f"--tz {name!r} is not a time zone of the IANA database",
            "write a zone name in the form Europe/Berlin, America/New_York or UTC",
        ) from None
    return name


def local_zone_name() -> str:
    """This machine's time zone as an IANA name (TZ, /etc/timezone, /etc/localtime), else
    UTC."""
    from zoneinfo import ZoneInfo

    candidates = [os.environ.get("TZ", "").lstrip(":")]
    with contextlib.suppress(OSError):
        candidates.append(Path("/etc/timezone").read_text(encoding="utf-8").strip())
    with contextlib.suppress(OSError):
        target = os.path.realpath("/etc/localtime")
        if "zoneinfo/" in target:
            candidates.append(target.split("zoneinfo/", 1)[1])
    for candidate in candidates:
        if not candidate:
            continue
        try:
            ZoneInfo(candidate)
        except (ValueError, OSError, KeyError):
            continue
        return candidate
    return "UTC"


def parse_duration(text: str | float | int, option: str = "--cooldown") -> float:
    """Seconds, or a number with s, m, h or d ("30s", "15m", "1h")."""
    if isinstance(text, int | float):
        seconds = float(text)
    else:
        match = _DURATION.match(str(text))
        if not match:
            raise ScheduleError(f"{option} {text!r} is not a duration", "write 90s, 15m or 1h")
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds < 0:
        raise ScheduleError(f"{option} {text!r} is negative", "write 90s, 15m or 1h")
    return seconds


def parse_trigger(text: str) -> Trigger:
    """``--on``: ``drift:NAME``, ``error-rate:NAME>RATE`` or ``accuracy:NAME<ACCURACY``."""
    match = _TRIGGER.match(text.strip())
    usage = "write --on drift:NAME, --on error-rate:NAME>0.05 or --on accuracy:NAME<0.9"
    if not match:
        raise ScheduleError(f"--on {text!r} is not a health trigger", usage)
    kind, op = match.group("kind"), match.group("op")
    threshold = float(match.group("threshold")) if match.group("threshold") else None
    expected = {"drift": None, "error-rate": ">", "accuracy": "<"}[kind]
    if op != expected:
        form = f"{kind}:NAME{expected}VALUE" if expected else f"{kind}:NAME"
        raise ScheduleError(f"--on {text!r}: {kind} is written {form}", usage)
    return Trigger(kind, match.group("name"), op, threshold)


def check_command(command: list[str], cwd: str) -> list[str]:
    """The nbdeploy command to schedule, parsed by nbdeploy's own parser (not run): only
    ``run`` and ``batch``; paths that exist (and output options) made absolute from ``cwd``,
    since the daemon runs elsewhere."""
    words = list(command)
    if words and words[0] == "--":
        words = words[1:]
    if words and words[0] == "nbdeploy":
        words = words[1:]
    if not words:
        raise ScheduleError(
            "no command to schedule",
            "put it after --: nbdeploy schedule add NAME --cron '0 2 * * *' -- run train.ipynb",
        )
    if words[0] not in ALLOWED_COMMANDS:
        raise ScheduleError(
            f"a schedule runs `nbdeploy run ...` or `nbdeploy batch ...`, not {words[0]!r}",
            "e.g. -- run train.ipynb -p epochs 3, or -- batch NAME input.csv --output out.csv",
        )
    if any(word in ("-h", "--help") for word in words):
        raise ScheduleError("the command to schedule asks for help; give the command itself")
    from nbdeploy.cli import _parser

    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
            _parser().parse_args(words)
    except SystemExit:
        usage = errors.getvalue().strip()
        raise ScheduleError(
            f"the command to schedule does not parse: nbdeploy {shlex.join(words)}\n{usage}",
            f"check it with: nbdeploy {words[0]} --help",
        ) from None
    return _absolute_paths(words, Path(cwd))


def _absolute_paths(words: list[str], cwd: Path) -> list[str]:
    made: list[str] = [words[0]]
    after_output = False
    for word in words[1:]:
        if after_output:
            made.append(str((cwd / word).resolve()) if not os.path.isabs(word) else word)
            after_output = False
            continue
        if word in _OUTPUT_OPTIONS:
            after_output = True
            made.append(word)
            continue
        option, equals, value = word.partition("=")
        if equals and option in _OUTPUT_OPTIONS and value and not os.path.isabs(value):
            made.append(f"{option}={(cwd / value).resolve()}")
            continue
        relative = not word.startswith("-") and not os.path.isabs(word)
        if relative and ("/" in word or "." in word) and (cwd / word).exists():
            made.append(str((cwd / word).resolve()))
        else:
            made.append(word)
    return made


def build_spec(
    *,
    command: list[str],
    cron: str | None = None,
    tz: str | None = None,
    catch_up: str = "latest",
    overlap: str = "skip",
    retries: int = 0,
    on: str | None = None,
    cooldown: str | float = DEFAULT_COOLDOWN_S,
    cwd: str | None = None,
    retry_base_s: float | None = None,
) -> ScheduleSpec:
    """Check every option; the spec as it is stored."""
    if not cron and not on:
        raise ScheduleError(
            "a schedule needs --cron, --on or both",
            "e.g. --cron '0 2 * * *' (02:00 daily) or --on drift:NAME",
        )
    if catch_up not in CATCH_UP_POLICIES:
        raise ScheduleError(f"--catch-up {catch_up!r}: choose {', '.join(CATCH_UP_POLICIES)}")
    if overlap not in OVERLAP_POLICIES:
        raise ScheduleError(f"--overlap {overlap!r}: choose {', '.join(OVERLAP_POLICIES)}")
    if not isinstance(retries, int) or not 0 <= retries <= MAX_RETRIES:
        raise ScheduleError(f"--retries {retries!r}: a whole number from 0 to {MAX_RETRIES}")
    if on:
        parse_trigger(on)
    base = retry_base_s
    if base is None:
        base = parse_duration(os.environ.get(RETRY_BASE_ENV) or DEFAULT_RETRY_BASE_S, "retry base")
    folder = str(Path(cwd or os.getcwd()).resolve())
    return ScheduleSpec(
        cron=check_cron(cron) if cron else None,
        tz=check_zone(tz),
        catch_up=catch_up,
        overlap=overlap,
        retries=retries,
        retry_base_s=max(float(base), 0.01),
        command=check_command(command, folder),
        cwd=folder,
        on=on.strip() if on else None,
        cooldown_s=parse_duration(cooldown),
    )
