"""Schedules: cron timing across DST, specs and their errors (unit), and the daemon firing
real ``nbdeploy run`` commands on a clock, by overlap, retry and catch-up policy, across a
daemon restart and on a drift trigger (integration, the real daemon)."""

from __future__ import annotations

import itertools
import json
import os
import signal
import stat
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from nbdeploy.schedule.spec import (
    ScheduleError,
    build_spec,
    check_command,
    check_cron,
    check_zone,
    parse_trigger,
    schedule_name,
)
from nbdeploy.schedule.timing import fire_times, local_text, missed, place

BERLIN, NEW_YORK = "Europe/Berlin", "America/New_York"
EVERY_2S = "*/2 * * * * *"
NEVER_SOON = "0 0 1 1 *"  # fires on New Year only: the tests fire with run-now


def at(zone: str, *fields: int) -> float:
    return datetime(*fields, tzinfo=ZoneInfo(zone)).timestamp()  # type: ignore[misc]


def wall(instant: float, zone: str) -> str:
    return datetime.fromtimestamp(instant, ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M:%S %Z")


# -- unit: timing ----------------------------------------------------------------------
def test_daily_time_skipped_by_spring_forward_fires_once_at_the_end_of_the_gap() -> None:
    # Europe/Berlin 2026-03-29: 02:00 CET -> 03:00 CEST; 02:30 does not exist that day.
    fires = fire_times("30 2 * * *", BERLIN, at(BERLIN, 2026, 3, 28, 12, 0), 3)
    assert [wall(t, BERLIN) for t in fires] == [
        "2026-03-29 03:00:00 CEST",
        "2026-03-30 02:30:00 CEST",
        "2026-03-31 02:30:00 CEST",
    ]
    # Every 20 minutes: 02:00, 02:20 and 02:40 all fall into the gap: one fire at 03:00.
    fires = fire_times("*/20 * * * *", BERLIN, at(BERLIN, 2026, 3, 29, 1, 30), 4)
    assert [wall(t, BERLIN) for t in fires] == [
        "2026-03-29 01:40:00 CET",
        "2026-03-29 03:00:00 CEST",
        "2026-03-29 03:20:00 CEST",
        "2026-03-29 03:40:00 CEST",
    ]


def test_repeated_hour_of_fall_back_fires_once() -> None:
    # Europe/Berlin 2026-10-25: 03:00 CEST -> 02:00 CET; 02:30 happens twice.
    fires = fire_times("30 2 * * *", BERLIN, at(BERLIN, 2026, 10, 24, 12, 0), 2)
    assert [wall(t, BERLIN) for t in fires] == [
        "2026-10-25 02:30:00 CEST",
        "2026-10-26 02:30:00 CET",
    ]
    # Half-hourly through the repeated hour: each wall time once, none twice.
    fires = fire_times("*/30 * * * *", BERLIN, at(BERLIN, 2026, 10, 25, 1, 10), 5)
    assert [wall(t, BERLIN) for t in fires] == [
        "2026-10-25 01:30:00 CEST",
        "2026-10-25 02:00:00 CEST",
        "2026-10-25 02:30:00 CEST",
        "2026-10-25 03:00:00 CET",
        "2026-10-25 03:30:00 CET",
    ]
    # Asked from inside the second pass of the hour: the next fire is 03:00 CET.
    second_pass = at(BERLIN, 2026, 10, 25, 2, 40) + 3600  # 02:40 CET
    assert wall(fire_times("*/30 * * * *", BERLIN, second_pass)[0], BERLIN) == (
        "2026-10-25 03:00:00 CET"
    )
    # New York 2026-03-08 02:30 does not exist: fires at 03:00 EDT.
    gap = place(datetime(2026, 3, 8, 2, 30), NEW_YORK)
    assert wall(gap, NEW_YORK) == "2026-03-08 03:00:00 EDT"


def test_six_fields_take_seconds_first_and_catch_up_is_bounded() -> None:
    start = at("UTC", 2026, 1, 1, 0, 0, 0)
    assert [t - start for t in fire_times(EVERY_2S, "UTC", start, 3)] == [2.0, 4.0, 6.0]
    assert [t - start for t in missed(EVERY_2S, "UTC", start, start + 7)] == [2.0, 4.0, 6.0]
    many = missed("* * * * * *", "UTC", start, start + 3 * 86400)
    assert len(many) == 100 and many[-1] == start + 3 * 86400  # the latest 100
    assert local_text(start, BERLIN) == "2026-01-01 01:00:00 CET"


# -- unit: spec ------------------------------------------------------------------------
def test_spec_errors_say_what_and_where(tmp_path: Path) -> None:
    with pytest.raises(ScheduleError, match=r"field 2 \(hour\) '25'"):
        check_cron("0 25 * * *")
    with pytest.raises(ScheduleError, match=r"field 1 \(second\) '61'"):
        check_cron("61 * * * * *")
    with pytest.raises(ScheduleError, match="has 7 fields"):
        check_cron("0 0 2 * * * *")
    with pytest.raises(ScheduleError) as zone:
        check_zone("Berlin")
    assert "Europe/Berlin" in str(zone.value)
    with pytest.raises(ScheduleError, match="not 'deploy'"):
        check_command(["deploy", "x"], str(tmp_path))
    with pytest.raises(ScheduleError, match="unrecognized arguments: --bogus"):
        check_command(["run", "nb.ipynb", "--bogus"], str(tmp_path))
    with pytest.raises(ScheduleError, match="cannot name a schedule"):
        schedule_name("Nightly_Job")
    with pytest.raises(ScheduleError, match="error-rate is written"):
        parse_trigger("error-rate:model<0.1")
    assert parse_trigger("accuracy:model<0.9").threshold == 0.9
    with pytest.raises(ScheduleError, match="needs --cron, --on or both"):
        build_spec(command=["run", "nb.ipynb"])


def test_command_paths_become_absolute(tmp_path: Path) -> None:
    (tmp_path / "nb.ipynb").write_text("{}")
    words = check_command(
        ["--", "run", "nb.ipynb", "-p", "x", "1", "--output-dir", "out"], str(tmp_path)
    )
    assert words == [
        "run",
        str(tmp_path / "nb.ipynb"),
        "-p",
        "x",
        "1",
        "--output-dir",
        str(tmp_path / "out"),
    ]


# -- integration -------------------------------------------------------------------------
def _integration(function: Any) -> Any:
    return pytest.mark.integration(function)


@pytest.fixture
def notebooks(make_notebook: Any, python_kernel: str, tmp_path: Path) -> dict[str, Path]:
    return {
        "quick": make_notebook("quick.ipynb", [("x = 0", ["parameters"]), "print('x', x)"]),
        "slow": make_notebook(
            "slow.ipynb", [("seconds = 5.0", ["parameters"]), "import time; time.sleep(seconds)"]
        ),
        "fails": make_notebook("fails.ipynb", ["raise ValueError('scheduled failure')"]),
    }


@pytest.fixture
def ends_everything(home: Path) -> Iterator[None]:
    """After the test: the daemon stops (no new fires), then every process of this home
    that is left (fires, their commands, kernels) is killed."""
    yield
    import psutil

    from nbdeploy.deployment.runtime import client

    client.shutdown(home)
    for process in psutil.process_iter():
        try:
            if process.pid != os.getpid() and process.environ().get("NBDEPLOY_HOME") == str(home):
                process.kill()
        except psutil.Error:
            continue


Cli = Callable[..., Any]


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def history(cli: Cli, name: str) -> list[dict[str, Any]]:
    result = cli("schedule", "history", name, "--json")
    assert result.code == 0, result
    fires: list[dict[str, Any]] = result.json
    return fires


def fires_of(name: str) -> list[dict[str, Any]]:
    from nbdeploy import schedules

    return schedules.history(name)


def ended(fires: list[dict[str, Any]], status: str | None = None) -> list[dict[str, Any]]:
    return [
        f for f in fires if f["status"] != "running" and (status is None or f["status"] == status)
    ]


def add(cli: Cli, name: str, *options: str, command: tuple[str, ...], cwd: Path) -> Any:
    result = cli("schedule", "add", name, *options, "--", *command, cwd=cwd)
    assert result.code == 0, result
    return result


@_integration
def test_a_schedule_fires_and_links_its_runs(
    cli: Cli, notebooks: dict[str, Path], tmp_path: Path, home: Path, ends_everything: None
) -> None:
    import nbdeploy

    command = ("run", "quick.ipynb", "-p", "x", "1", "--no-mlflow")
    added = add(cli, "every2", "--cron", EVERY_2S, "--tz", "UTC", command=command, cwd=tmp_path)
    assert "next fire" in added.out
    fire = wait_for(lambda: ended(fires_of("every2"), "succeeded"), 120, "a fire")[-1]
    fires = history(cli, "every2")
    shown = next(f for f in fires if f["run_id"] == fire["run_id"])
    for key in ("run_id", "status", "started_at", "scheduled_for", "finished_at", "attempt"):
        assert key in shown
    assert shown["attempt"] == 1 and shown["scheduled_for"] % 2 == 0
    assert (
        shown["scheduled_for"] <= shown["started_at"] < shown["scheduled_for"] + 5
    )  # LATE_SECONDS
    [run_id] = shown["runs"]
    run = nbdeploy.get_run(run_id)
    assert run.trigger_id == fire["run_id"] and run.status == "succeeded"
    assert run.parameters == {"x": 1} and run.notebook == str(notebooks["quick"])
    record = nbdeploy.get_run(fire["run_id"])
    assert record.kind == "schedule" and record.step == "every2"
    log = Path(shown["log"])
    assert log.parent == home / "schedules" / "every2"
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    assert "succeeded" in log.read_text()
    listed = cli("schedule", "list", "--json")
    assert listed.code == 0 and listed.json[0]["status"] == "active"
    assert listed.json[0]["last_status"] == "succeeded" and listed.json[0]["next_fire_at"]
    # a duplicate name needs --replace
    again = cli("schedule", "add", "every2", "--cron", EVERY_2S, "--", *command, cwd=tmp_path)
    assert again.code == 2 and "exists already" in again.err and "--replace" in again.err
    # pause: no fires; resume; run-now; remove
    assert cli("schedule", "pause", "every2").code == 0
    wait_for(lambda: not [f for f in fires_of("every2") if f["status"] == "running"], 30, "idle")
    count = len(fires_of("every2"))
    time.sleep(4.5)
    assert len(fires_of("every2")) == count
    assert cli("schedule", "list", "--json").json[0]["status"] == "paused"
    assert cli("schedule", "resume", "every2").code == 0
    now = cli("schedule", "run-now", "every2", "--json")
    assert now.code == 0, now
    assert now.json["fire"]["status"] in ("running", "skipped")
    assert cli("schedule", "remove", "every2").code == 0
    gone = cli("schedule", "show", "every2")
    assert gone.code == 2 and "no schedule named 'every2'" in gone.err


@_integration
def test_overlap_skip_queue_and_replace(
    cli: Cli, notebooks: dict[str, Path], tmp_path: Path, ends_everything: None
) -> None:
    import psutil

    slow = ("run", "slow.ipynb", "--no-mlflow")
    add(cli, "skips", "--cron", EVERY_2S, command=slow, cwd=tmp_path)
    add(cli, "queues", "--cron", NEVER_SOON, "--overlap", "queue", command=slow, cwd=tmp_path)
    add(cli, "replaces", "--cron", NEVER_SOON, "--overlap", "replace", command=slow, cwd=tmp_path)
    for name in ("queues", "replaces"):
        assert cli("schedule", "run-now", name).code == 0
    wait_for(lambda: fires_of("replaces")[0]["status"] == "running", 30, "the first fire")
    first_replaced = fires_of("replaces")[0]
    pid = next(r for r in _running_fire_pids() if r[0] == first_replaced["run_id"])[1]
    queued = cli("schedule", "run-now", "queues")
    assert "queued" in queued.out, queued
    assert cli("schedule", "run-now", "replaces").code == 0

    replaced = nbdeploy_fire(first_replaced["run_id"])
    assert replaced["status"] == "replaced"
    wait_for(lambda: not psutil.pid_exists(pid) or _zombie(pid), 40, "the replaced run's end")
    done = wait_for(lambda: ended(fires_of("replaces"), "succeeded"), 120, "the replacing fire")
    assert done[0]["started_at"] >= first_replaced["started_at"]

    queues = wait_for(
        lambda: len(ended(fires_of("queues"), "succeeded")) == 2 and fires_of("queues"),
        120,
        "both queued fires",
    )
    later, earlier = queues[0], queues[1]
    assert later["started_at"] >= earlier["finished_at"] - 0.5  # one after the other

    skips = wait_for(lambda: ended(fires_of("skips"), "skipped"), 30, "a skipped fire")
    assert "still runs (--overlap skip)" in skips[0]["error"]
    assert cli("schedule", "remove", "skips").code == 0


def nbdeploy_fire(run_id: str) -> dict[str, Any]:
    import nbdeploy

    record = nbdeploy.get_run(run_id)
    return {"status": record.status, "error": record.error}


def _running_fire_pids() -> list[tuple[str, int]]:
    from nbdeploy.schedule.store import ScheduleStore
    from nbdeploy.store import default_store

    return [(f.id, f.pid or 0) for f in ScheduleStore(default_store()).running_fires()]


def _zombie(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


@_integration
def test_retries_with_backoff_then_the_schedule_shows_failed(
    cli: Cli,
    notebooks: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    ends_everything: None,
) -> None:
    monkeypatch.setenv("NBDEPLOY_SCHEDULE_RETRY_BASE", "1")
    failing = ("run", "fails.ipynb", "--no-mlflow")
    add(cli, "flaky", "--cron", NEVER_SOON, "--retries", "2", command=failing, cwd=tmp_path)
    assert cli("schedule", "run-now", "flaky").code == 0
    fires = wait_for(
        lambda: len(ended(fires_of("flaky"), "failed")) == 3 and fires_of("flaky"), 150, "3 tries"
    )
    fires = sorted(fires, key=lambda f: f["attempt"])
    assert [f["attempt"] for f in fires] == [1, 2, 3]
    assert {f["scheduled_for"] for f in fires} == {fires[0]["scheduled_for"]}
    assert fires[1]["started_at"] - fires[0]["finished_at"] >= 1.0  # base
    assert fires[2]["started_at"] - fires[1]["finished_at"] >= 2.0  # doubled
    assert fires[2]["exit_code"] == 1 and "exit code 1" in fires[2]["error"]
    assert any("scheduled failure" in line for line in fires[2]["log_tail"])
    wait_for(
        lambda: cli("schedule", "list", "--json").json[0]["last_status"] == "failed", 30, "status"
    )
    listed = cli("schedule", "list", "--json")
    assert listed.code == 1 and listed.json[0]["failing"] is True
    assert "exit code 1" in listed.json[0]["last_error"]
    text = cli("schedule", "list")
    assert "FAILED" in text.out and "flaky failed: the command failed" in text.out
    assert cli("status", "--json").json == []  # deployments only, whatever schedules exist
    status = cli("status").out
    assert "schedules:" in status and "flaky" in status and "FAILED" in status


@_integration
def test_catch_up_after_the_daemon_was_down(
    cli: Cli, notebooks: dict[str, Path], tmp_path: Path, ends_everything: None
) -> None:
    quick = ("run", "quick.ipynb", "--no-mlflow")
    for policy in ("latest", "none", "all"):
        options = ("--cron", EVERY_2S, "--catch-up", policy, "--overlap", "skip")
        add(cli, f"up-{policy}", *options, command=quick, cwd=tmp_path)
    assert cli("daemon", "stop").code == 0
    stopped = time.time()
    time.sleep(7)
    assert cli("schedule", "list").code == 0  # any command starts the daemon again
    restarted = time.time()

    def catch_ups(name: str) -> list[dict[str, Any]]:
        return [f for f in fires_of(name) if f["trigger"] == "catch-up"]

    wait_for(lambda: len(ended(catch_ups("up-all"))) >= 3, 120, "the catch-up of all")
    wait_for(lambda: ended(catch_ups("up-latest")), 60, "the catch-up of latest")
    for name in ("up-latest", "up-none", "up-all"):
        assert cli("schedule", "pause", name).code == 0
    latest, none, every = catch_ups("up-latest"), catch_ups("up-none"), catch_ups("up-all")
    assert len(latest) == 1 and none == []
    times = sorted(f["scheduled_for"] for f in every)
    assert len(times) >= 3 and all(b - a == 2 for a, b in itertools.pairwise(times))
    assert all(stopped - 2 < t < restarted for t in times)
    # The newest time missed when its own catch-up was decided: the daemon takes the
    # schedules one after another, and a fire time may pass between two of them.
    assert times[-1] <= latest[0]["scheduled_for"] <= times[-1] + 2
    assert {f["status"] for f in every} <= {"succeeded", "running"}  # one after another


@_integration
def test_fires_survive_a_killed_daemon(
    cli: Cli, notebooks: dict[str, Path], tmp_path: Path, ends_everything: None
) -> None:
    slow = ("run", "slow.ipynb", "--no-mlflow")
    add(cli, "lasting", "--cron", NEVER_SOON, command=slow, cwd=tmp_path)
    quick = ("run", "quick.ipynb", "--no-mlflow")
    add(cli, "ticking", "--cron", EVERY_2S, command=quick, cwd=tmp_path)
    assert cli("schedule", "run-now", "lasting").code == 0
    fire = fires_of("lasting")[0]
    assert fire["status"] == "running"
    daemon = cli("daemon", "status", "--json").json
    os.kill(daemon["pid"], signal.SIGKILL)
    killed = time.time()
    time.sleep(0.5)
    assert cli("schedule", "list").code == 0  # a new daemon
    assert cli("daemon", "status", "--json").json["pid"] != daemon["pid"]
    # The fire outlived the daemon and recorded its own end; the new daemon read it.
    wait_for(lambda: nbdeploy_fire(fire["run_id"])["status"] == "succeeded", 60, "its end")
    wait_for(
        lambda: cli("schedule", "show", "lasting", "--json").json["last_status"] == "succeeded",
        30,
        "the schedule's last result",
    )
    wait_for(
        lambda: [f for f in ended(fires_of("ticking"), "succeeded") if f["started_at"] > killed],
        120,
        "a fire after the restart",
    )


@_integration
def test_drift_trigger_fires_once_per_cooldown(
    cli: Cli,
    notebooks: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    ends_everything: None,
) -> None:
    import numpy as np
    import pandas as pd
    from sklearn.linear_model import LinearRegression
    from support import post

    import nbdeploy

    monkeypatch.setenv("NBDEPLOY_SCHEDULE_TRIGGER_INTERVAL", "0.5")
    features = ["f0", "f1", "f2"]
    rng = np.random.default_rng(3)
    X = pd.DataFrame(rng.normal(size=(500, 3)), columns=features)
    model = LinearRegression().fit(X, 2.0 * X["f1"])
    deployed = nbdeploy.deploy(
        model, name="drifty", namespace={"X": X, "model": model}, reference="X", mlflow=False
    )
    try:
        quick = ("run", "quick.ipynb", "--no-mlflow")
        add(
            cli, "on-drift", "--on", "drift:drifty", "--cooldown", "1h", command=quick, cwd=tmp_path
        )
        time.sleep(2)
        assert fires_of("on-drift") == []  # no traffic: no drift, nothing fires
        shifted = rng.normal(size=(300, 3))
        shifted[:, 1] += 3.0
        rows = [dict(zip(features, map(float, row), strict=True)) for row in shifted]
        for start in range(0, len(rows), 50):
            assert post(deployed.url + "/predict", {"rows": rows[start : start + 50]})[0] == 200
        fired = wait_for(lambda: fires_of("on-drift"), 120, "the drift trigger")
        assert fired[0]["trigger"] == "drift:drifty"
        time.sleep(3)  # six more evaluations: the condition still holds, the cooldown not over
        assert len(fires_of("on-drift")) == 1
        shown = cli("schedule", "show", "on-drift", "--json").json
        assert shown["last_triggered_at"] is not None
    finally:
        nbdeploy.stop("drifty")


@_integration
def test_the_magic_and_python_api_manage_schedules(
    notebooks: dict[str, Path], tmp_path: Path, ends_everything: None, capsys: Any
) -> None:
    from IPython.core.interactiveshell import InteractiveShell

    import nbdeploy

    added = nbdeploy.schedules.add(
        "py-api", ["run", str(notebooks["quick"])], cron=NEVER_SOON, tz="Europe/Berlin"
    )
    assert added["tz"] == "Europe/Berlin" and added["next_fire"].endswith("CET")
    shell = InteractiveShell.instance()
    try:
        shell.run_line_magic("load_ext", "nbdeploy")
        shell.run_line_magic("deploy", "schedule pause py-api")
        assert "schedule py-api: paused" in capsys.readouterr().out
        shell.run_line_magic("deploy", "schedule list --json")
        assert json.loads(capsys.readouterr().out)[0]["status"] == "paused"
    finally:
        InteractiveShell.clear_instance()
    assert [s["name"] for s in nbdeploy.schedules.list()] == ["py-api"]
    nbdeploy.schedules.remove("py-api")
    assert nbdeploy.schedules.list() == []
