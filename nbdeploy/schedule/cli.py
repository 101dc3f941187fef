"""``nbdeploy schedule ...`` and ``%deploy schedule ...``: the same arguments, one parser.

Imports only argparse at module level: ``nbdeploy --help`` and the magic stay fast.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, TextIO

RED, RESET = "\033[31m", "\033[0m"
ACTIONS = ("add", "list", "show", "pause", "resume", "remove", "run-now", "history")


def add_schedule_parser(commands: Any) -> None:
    """``schedule`` as a subcommand of ``commands`` (the CLI's subparsers)."""
    schedule = commands.add_parser(
        "schedule",
        help="run notebooks, pipelines and batch jobs on a schedule or on a health trigger",
        description="Schedules are run by the nbdeploy daemon. --cron takes 5 fields, or 6 "
        "with seconds first ('*/10 * * * * *': every 10 s).",
    )
    add_schedule_arguments(schedule)


def add_schedule_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="schedule_action", metavar="ACTION", required=True)
    plain = actions._parser_class
    actions._parser_class = _command_after_dashes(plain)
    add = actions.add_parser(
        "add",
        help="add a schedule: nbdeploy schedule add NAME --cron '0 2 * * *' -- run nb.ipynb",
        description="Add a schedule that runs an nbdeploy command (run NOTEBOOK ..., run "
        "pipeline.yaml, batch NAME INPUT --output OUTPUT) given after --.",
    )
    add.add_argument("name", metavar="SCHEDULE")
    add.add_argument(
        "--cron",
        help="5 fields (minute hour day month weekday), or 6 with seconds first",
    )
    add.add_argument("--tz", help="IANA time zone, e.g. Europe/Berlin (default: this machine's)")
    add.add_argument(
        "--catch-up",
        choices=["latest", "all", "none"],
        default="latest",
        help="fire times missed while the daemon was down: run once for the latest "
        "(default), once for each (at most 100), or none",
    )
    add.add_argument(
        "--overlap",
        choices=["skip", "queue", "replace"],
        default="skip",
        help="a fire while the previous run still runs: skip it (default), queue it, or "
        "replace the running one",
    )
    add.add_argument(
        "--retries", type=int, default=0, help="run a failed command again up to N times"
    )
    add.add_argument(
        "--on",
        metavar="TRIGGER",
        help="fire on a health condition: drift:NAME, error-rate:NAME>0.05, accuracy:NAME<0.9",
    )
    add.add_argument("--cooldown", default="1h", help="at most one trigger fire per this long (1h)")
    add.add_argument("--replace", action="store_true", help="replace a schedule of this name")
    add.add_argument("--json", action="store_true")
    add.add_argument("words", nargs="*", metavar="-- COMMAND")
    actions._parser_class = plain
    listing = actions.add_parser("list", help="schedules: status, last result, next fire")
    listing.add_argument("--json", action="store_true")
    for action, text in (
        ("show", "a schedule and its last fires"),
        ("pause", "no fires until resumed"),
        ("resume", "fire again"),
        ("remove", "remove a schedule (stops its running fire)"),
        ("run-now", "fire now (the overlap policy applies)"),
        ("history", "a schedule's fires"),
    ):
        sub = actions.add_parser(action, help=text)
        sub.add_argument("name", metavar="SCHEDULE")
        sub.add_argument("--json", action="store_true")
        if action == "history":
            sub.add_argument("--limit", type=int, default=50)


def _command_after_dashes(base: type[argparse.ArgumentParser]) -> Any:
    """A parser class for ``add``: what follows the first ``--`` is the command to
    schedule, whatever options it has (argparse would match it to nothing: the schedule's
    name, a positional, was consumed already)."""

    class CommandAfterDashes(base):  # type: ignore[valid-type,misc]
        def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
            words = list(sys.argv[1:] if args is None else args)
            command: list[str] = []
            if "--" in words:
                cut = words.index("--")
                words, command = words[:cut], words[cut + 1 :]
            parsed, extras = super().parse_known_args(words, namespace)
            parsed.words = [*(getattr(parsed, "words", None) or []), *command]
            return parsed, extras

    return CommandAfterDashes


def cmd_schedule(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Run ``nbdeploy schedule ACTION``; the exit code."""
    from nbdeploy import schedule

    out = out or sys.stdout
    action = args.schedule_action
    as_json = bool(getattr(args, "json", False))
    if action == "add":
        result = schedule.add(
            args.name,
            list(args.words),
            cron=args.cron,
            tz=args.tz,
            catch_up=args.catch_up,
            overlap=args.overlap,
            retries=args.retries,
            on=args.on,
            cooldown=args.cooldown,
            replace=args.replace,
        )
        if as_json:
            _json(result, out)
        else:
            when = f"next fire {result['next_fire']}" if result.get("next_fire") else ""
            on = f"on {result['on']}" if result.get("on") else ""
            detail = "; ".join(part for part in (when, on) if part)
            print(f"✓ schedule {result['name']}: {result['command']} ({detail})", file=out)
        return 0
    if action == "list":
        schedules = schedule.list_schedules()
        if as_json:
            _json(schedules, out)
        else:
            print(table(schedules, color=out.isatty()), file=out)
        return 1 if any(s["failing"] for s in schedules) else 0
    if action == "show":
        shown = schedule.show(args.name)
        if as_json:
            _json(shown, out)
        else:
            print(describe(shown), file=out)
        return 0
    if action == "history":
        fires = schedule.history(args.name, args.limit)
        if as_json:
            _json(fires, out)
        else:
            print(history_table(fires), file=out)
        return 0
    verb = action.replace("-", "_")
    result = getattr(schedule, verb)(args.name)
    if as_json:
        _json(result, out)
    elif action == "run-now":
        fire = result.get("fire") or {}
        if fire.get("queued"):
            print(f"queued a fire of {args.name} behind {fire.get('behind')}", file=out)
        else:
            reason = f": {fire['reason']}" if fire.get("reason") else ""
            print(
                f"fire {fire.get('run_id')} of {args.name}: {fire.get('status')}{reason}", file=out
            )
    elif action == "remove":
        print(f"removed schedule {args.name}", file=out)
    else:
        print(f"schedule {args.name}: {result['status']}", file=out)
    return 0


def _json(data: Any, out: TextIO) -> None:
    print(json.dumps(data, default=str), file=out)


def result_text(entry: dict[str, Any]) -> str:
    last = entry.get("last_status") or "-"
    return "FAILED" if entry.get("failing") else last


def table(schedules: list[dict[str, Any]], color: bool = False) -> str:
    """``nbdeploy schedule list`` (a failing schedule in red on a terminal)."""
    if not schedules:
        return "no schedules (add one: nbdeploy schedule add NAME --cron '0 2 * * *' -- run ...)"
    rows = [("SCHEDULE", "STATUS", "LAST", "NEXT FIRE", "WHEN", "COMMAND")]
    for entry in schedules:
        when = " | ".join(str(x) for x in (entry.get("cron"), entry.get("on")) if x)
        rows.append(
            (
                entry["name"],
                entry["status"],
                result_text(entry),
                entry.get("next_fire") or "-",
                when,
                entry["command"],
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = []
    for index, row in enumerate(rows):
        line = "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:5])) + "  " + row[5]
        if color and index and schedules[index - 1].get("failing"):
            line = f"{RED}{line}{RESET}"
        lines.append(line.rstrip())
    failing = [s for s in schedules if s.get("failing")]
    for entry in failing:
        lines.append(f"{entry['name']} failed: {entry.get('last_error') or 'see its history'}")
    return "\n".join(lines)


def describe(shown: dict[str, Any]) -> str:
    spec = shown["spec"]
    lines = [
        f"schedule {shown['name']}: {shown['status']}, last result {result_text(shown)}",
        f"  command   {shown['command']}  (in {spec['cwd']})",
        f"  cron      {spec['cron'] or '-'} ({spec['tz']})",
        f"  on        {spec['on'] or '-'} (cooldown {spec['cooldown_s']:g} s)",
        f"  policies  catch-up {spec['catch_up']}, overlap {spec['overlap']}, "
        f"retries {spec['retries']}",
        f"  next fire {shown.get('next_fire') or '-'}",
    ]
    if shown.get("last_error"):
        lines.append(f"  last error {shown['last_error']}")
    if shown.get("history"):
        lines.append(history_table(shown["history"]))
    return "\n".join(lines)


def history_table(fires: list[dict[str, Any]]) -> str:
    if not fires:
        return "no fires yet"
    lines = ["RUN                     STATUS       STARTED              ATTEMPT  TRIGGER   RUNS"]
    for fire in fires:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(fire["started_at"] or 0))
        lines.append(
            f"{fire['run_id']:<23} {fire['status']:<12} {started}  {fire['attempt']:<7}  "
            f"{(fire.get('trigger') or '-'):<9} {', '.join(fire['runs']) or '-'}"
        )
        if fire["status"] in ("failed", "skipped", "replaced", "stopped") and fire.get("error"):
            lines.append(f"    {fire['error']}")
    return "\n".join(lines)
