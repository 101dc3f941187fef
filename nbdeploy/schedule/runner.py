"""The daemon's scheduler: fires schedules on time, by policy, and watches their runs.

One thread wakes every ``TICK_SECONDS`` and, under one lock:

- ends the fires whose process recorded its end (see :mod:`nbdeploy.schedule.fire`), or
  whose process is gone without doing so (interrupted); a failed fire with retries left is
  run again after ``retry_base_s * 2**(attempt-1)`` seconds (capped at ``RETRY_CAP_S``);
- fires the schedules whose next fire time has come. Times more than ``LATE_SECONDS`` past
  (the daemon was down, the machine asleep) and every due time found when a daemon starts
  are *missed*: ``--catch-up latest`` fires once (for the last of them), ``all`` once for
  each (at most 100, run one after another), ``none`` fires nothing and records nothing;
- starts the next queued fire of a schedule whose run ended.

A schedule runs at most one fire at a time. A fire while one runs: ``--overlap skip``
records a fire with status ``skipped`` (and why); ``queue`` runs it after; ``replace``
stops the running one (SIGTERM to its whole process tree, SIGKILL after
``NBDEPLOY_SCHEDULE_GRACE`` seconds, 10) and records it ``replaced``.

Each fire runs in a process of its own session, which records its own end: a fire outlives
a daemon stopped or killed, and the next daemon adopts it (by pid and start time) and reads
its end. ``remove`` stops a running fire (recorded ``stopped``); ``pause`` lets it finish.
A second thread evaluates the health triggers (:mod:`nbdeploy.schedule.triggers`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nbdeploy.schedule.spec import ScheduleError, ScheduleSpec, schedule_name
from nbdeploy.schedule.store import ACTIVE, PAUSED, REPLACED, SKIPPED, STOPPED, ScheduleStore

if TYPE_CHECKING:
    from nbdeploy.deployment.runtime.daemon import Daemon
    from nbdeploy.schedule.store import Schedule

TICK_SECONDS = 0.2
LATE_SECONDS = 5.0
RETRY_CAP_S = 600.0
GONE_GRACE_SECONDS = 2.0
GRACE_ENV = "NBDEPLOY_SCHEDULE_GRACE"
DEFAULT_GRACE_S = 10.0
MAX_QUEUED = 100
FIRE_BOOTSTRAP = (
    "import sys; del sys.path[0]; from nbdeploy.schedule.fire import main; sys.exit(main())"
)
SCHEDULES_DIR = "schedules"


@dataclass
class Active:
    """A fire in progress: its run record and the process that runs it."""

    name: str
    run_id: str
    pid: int
    create_time: float | None
    attempt: int
    scheduled_for: float
    trigger: str
    gone_since: float | None = None


@dataclass
class Request:
    """A fire asked for (by the clock, a trigger, run-now, a retry or a catch-up)."""

    scheduled_for: float
    trigger: str
    attempt: int = 1


class Scheduler:
    def __init__(self, daemon: Daemon) -> None:
        self.home = daemon.home
        self.lock = threading.RLock()
        self.stopped = threading.Event()
        self.active: dict[str, Active] = {}
        self.queued: dict[str, list[Request]] = {}
        self.retries: dict[str, tuple[float, Request]] = {}  # name -> (when, what)
        self.thread = threading.Thread(target=self._loop, name="scheduler", daemon=True)
        self.watcher = threading.Thread(target=self._trigger_loop, name="triggers", daemon=True)
        self._store: ScheduleStore | None = None

    @property
    def store(self) -> ScheduleStore:
        if self._store is None:
            from nbdeploy.store import default_store

            self._store = ScheduleStore(default_store())
        return self._store

    # -- life --------------------------------------------------------------------------
    def start(self) -> None:
        from nbdeploy.store.runs import TRIGGER_ENV

        os.environ.pop(TRIGGER_ENV, None)  # inherited from a scheduled command's client
        with self.lock:
            self._recover()
        self.thread.start()
        self.watcher.start()

    def stop(self) -> None:
        """Stop firing; fires in progress keep running and record their own end."""
        self.stopped.set()

    def has_work(self) -> bool:
        """An active schedule or a fire in progress keeps the daemon from idling out."""
        with self.lock:
            if self.active or self.retries or any(self.queued.values()):
                return True
        return any(s.status == ACTIVE for s in self.store.all())

    def _recover(self) -> None:
        """Adopt the fires that outlived the previous daemon, settle the rest, and catch up
        the fire times missed while no daemon ran."""
        from nbdeploy.store.runs import RUNNING

        for fire in self.store.running_fires():
            if fire.status != RUNNING or not fire.pid or not fire.step:
                continue  # settled as interrupted on reading: its process is gone
            parameters = fire.parameters or {}
            self.active[fire.step] = Active(
                fire.step,
                fire.id,
                fire.pid,
                fire.pid_create_time,
                int(parameters.get("attempt") or 1),
                float(parameters.get("scheduled_for") or fire.created_at),
                str(parameters.get("trigger") or "cron"),
            )
        now = time.time()
        for schedule in self.store.all():
            self._refresh_last_status(schedule)
            if schedule.status != ACTIVE or not schedule.spec.cron:
                continue
            due = self._due(schedule, now)
            if due:
                self._catch_up(schedule, due)
            self._advance(schedule, now)

    def _refresh_last_status(self, schedule: Schedule) -> None:
        """The result of the newest fire that ended (it may have ended while no daemon ran)."""
        for fire in self.store.fires(schedule.name, 20):
            if fire.status in ("running", SKIPPED):
                continue
            message = (fire.error or {}).get("message")
            if fire.status != schedule.last_status or message != schedule.last_error:
                self.store.update(schedule.name, last_status=fire.status, last_error=message)
            return

    # -- the loop ----------------------------------------------------------------------
    def _loop(self) -> None:
        while not self.stopped.wait(TICK_SECONDS):
            try:
                with self.lock:
                    self._tick(time.time())
            except Exception as error:  # the loop outlives any one bad turn
                traceback.print_exc()
                print(f"nbdeploy daemon: scheduler: {type(error).__name__}: {error}", flush=True)

    def _tick(self, now: float) -> None:
        for active in list(self.active.values()):
            self._watch(active, now)
        for name, (when, request) in list(self.retries.items()):
            if when <= now:
                del self.retries[name]
                schedule = self.store.find(name)
                if schedule is not None and schedule.status == ACTIVE:
                    self._launch(schedule, request)
        for schedule in self.store.all():
            if schedule.status != ACTIVE:
                continue
            if schedule.spec.cron and schedule.next_fire_at and schedule.next_fire_at <= now:
                due = self._due(schedule, now)
                late = [t for t in due if now - t > LATE_SECONDS]
                if late:
                    self._catch_up(schedule, late)
                for moment in [t for t in due if now - t <= LATE_SECONDS]:
                    self.request(schedule, Request(moment, "cron"))
                self._advance(schedule, now)
            if schedule.name not in self.active and schedule.name not in self.retries:
                waiting = self.queued.get(schedule.name)
                if waiting:
                    self._launch(schedule, waiting.pop(0))

    def _due(self, schedule: Schedule, now: float) -> list[float]:
        from nbdeploy.schedule.timing import missed

        spec = schedule.spec
        if not spec.cron or not schedule.next_fire_at or schedule.next_fire_at > now:
            return []
        return missed(spec.cron, spec.tz, schedule.next_fire_at - 0.001, now)

    def _advance(self, schedule: Schedule, now: float) -> None:
        from nbdeploy.schedule.timing import next_fire

        if schedule.spec.cron:
            upcoming = next_fire(schedule.spec.cron, schedule.spec.tz, now)
            self.store.update(schedule.name, next_fire_at=upcoming)

    def _catch_up(self, schedule: Schedule, missed_times: list[float]) -> None:
        policy = schedule.spec.catch_up
        print(
            f"nbdeploy daemon: schedule {schedule.name}: {len(missed_times)} fire time(s) "
            f"missed; catch-up {policy}",
            flush=True,
        )
        if policy == "none" or not missed_times:
            return
        chosen = missed_times[-1:] if policy == "latest" else missed_times
        for moment in chosen:  # one after another, whatever --overlap says
            self.queued.setdefault(schedule.name, []).append(Request(moment, "catch-up"))
        if schedule.name not in self.active and schedule.name not in self.retries:
            self._launch(schedule, self.queued[schedule.name].pop(0))

    # -- firing ------------------------------------------------------------------------
    def request(self, schedule: Schedule, request: Request) -> dict[str, Any]:
        """Fire now, by the schedule's overlap policy; the fire's record as a dict."""
        name = schedule.name
        busy = self.active.get(name)
        if busy is None and name not in self.retries:
            return self._launch(schedule, request)
        overlap = schedule.spec.overlap
        what = f"fire {busy.run_id} still runs" if busy else "a retry of the last fire is due"
        if overlap == "queue" and len(self.queued.get(name, [])) < MAX_QUEUED:
            self.queued.setdefault(name, []).append(request)
            return {"queued": True, "behind": busy.run_id if busy else None}
        if overlap == "replace":
            self.retries.pop(name, None)
            if busy is not None:
                self._end_on_purpose(
                    busy, REPLACED, f"replaced by a newer fire ({request.trigger})"
                )
            return self._launch(schedule, request)
        why = f"skipped: {what} (--overlap {overlap})"
        if overlap == "queue":
            why = f"skipped: {MAX_QUEUED} fires are queued already"
        return self._record_only(schedule, request, SKIPPED, why)

    def _record_only(
        self, schedule: Schedule, request: Request, status: str, why: str
    ) -> dict[str, Any]:
        from nbdeploy.store.runs import new_id

        run_id = new_id()
        self.store.create_fire(schedule.name, schedule.spec, self._parameters(request), run_id)
        self.store.end_fire(run_id, status, {"kind": status, "message": why}, force=True)
        return {"run_id": run_id, "status": status, "reason": why}

    def _parameters(self, request: Request, log: Path | None = None) -> dict[str, Any]:
        return {
            "scheduled_for": request.scheduled_for,
            "attempt": request.attempt,
            "trigger": request.trigger,
            "log": str(log) if log else None,
        }

    def _launch(self, schedule: Schedule, request: Request) -> dict[str, Any]:
        import psutil

        from nbdeploy import config
        from nbdeploy.private_files import open_private, private_dir
        from nbdeploy.store.runs import TRIGGER_ENV, new_id

        spec = schedule.spec
        run_id = new_id()
        folder = private_dir(self.home / SCHEDULES_DIR / schedule.name)
        log = folder / f"{run_id}.log"
        self.store.create_fire(schedule.name, spec, self._parameters(request, log), run_id)
        self.store.update(schedule.name, last_fire_at=time.time())
        env = {**os.environ, TRIGGER_ENV: run_id, config.HOME_ENV: str(self.home)}
        try:
            with open_private(log, "ab") as handle:
                process = subprocess.Popen(
                    [sys.executable, "-c", FIRE_BOOTSTRAP, run_id, str(log), "--", *spec.command],
                    cwd=spec.cwd,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=handle,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    umask=0o022,  # what the command writes is the user's, as from a shell
                )
        except OSError as error:
            message = f"could not start the command in {spec.cwd}: {error}"
            self.store.end_fire(run_id, "failed", {"kind": "failed", "message": message})
            self.store.update(schedule.name, last_status="failed", last_error=message)
            return {"run_id": run_id, "status": "failed", "reason": message}
        try:
            create_time: float | None = psutil.Process(process.pid).create_time()
        except psutil.Error:
            create_time = None
        self.store.set_fire_owner(run_id, process.pid, create_time)
        self.active[schedule.name] = Active(
            schedule.name,
            run_id,
            process.pid,
            create_time,
            request.attempt,
            request.scheduled_for,
            request.trigger,
        )
        return {"run_id": run_id, "status": "running", "log": str(log)}

    def _watch(self, active: Active, now: float) -> None:
        from nbdeploy.store.runs import INTERRUPTED, owner_is_gone

        status = self._status_of(active.run_id)
        if status == "running":
            if not owner_is_gone(active.pid, active.create_time, None):
                active.gone_since = None
                return
            if active.gone_since is None:
                active.gone_since = now
                return
            if now - active.gone_since < GONE_GRACE_SECONDS:
                return
            message = f"the fire's process (pid {active.pid}) ended without recording an end"
            self.store.end_fire(
                active.run_id, INTERRUPTED, {"kind": INTERRUPTED, "message": message}
            )
            status = self._status_of(active.run_id)
        self.active.pop(active.name, None)
        self._ended(active, status or INTERRUPTED, now)

    def _status_of(self, run_id: str) -> str | None:
        row = (
            self.store.store.connection()
            .execute("SELECT status FROM runs WHERE id = ?", (run_id,))
            .fetchone()
        )
        return str(row["status"]) if row else None

    def _ended(self, active: Active, status: str, now: float) -> None:
        schedule = self.store.find(active.name)
        if schedule is None:
            return
        if status in (REPLACED, STOPPED):
            return
        error = self.store.fire(active.run_id).error or {}
        message = error.get("message")
        if status == "failed" and active.attempt <= schedule.spec.retries:
            delay = min(schedule.spec.retry_base_s * 2 ** (active.attempt - 1), RETRY_CAP_S)
            retry = Request(active.scheduled_for, "retry", active.attempt + 1)
            self.retries[active.name] = (now + delay, retry)
            self.store.update(
                active.name,
                last_status="retrying",
                last_error=f"attempt {active.attempt} failed; retry in {delay:g} s: {message}",
            )
            return
        self.store.update(active.name, last_status=status, last_error=message)

    def _end_on_purpose(self, active: Active, status: str, why: str) -> None:
        """Record the fire's end as the daemon decided it, then stop its process tree."""
        self.store.end_fire(active.run_id, status, {"kind": status, "message": why}, force=True)
        self.active.pop(active.name, None)
        stop_tree(active.pid, active.create_time)

    # -- requests from clients ---------------------------------------------------------
    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        """The ``schedule`` query: add, pause, resume, remove, run_now."""
        action = str(request.get("action"))
        name = schedule_name(str(request.get("name") or ""))
        with self.lock:
            if action == "add":
                return {"ok": True, "result": self._add(name, request)}
            schedule = self.store.get(name)
            if action == "pause":
                self.store.update(name, status=PAUSED)
                self.queued.pop(name, None)
                self.retries.pop(name, None)
            elif action == "resume":
                self.store.update(name, status=ACTIVE)
                if schedule.status != ACTIVE:
                    self._advance(schedule, time.time())
            elif action == "remove":
                self.queued.pop(name, None)
                self.retries.pop(name, None)
                running = self.active.get(name)
                if running is not None:
                    self._end_on_purpose(running, STOPPED, "stopped: the schedule was removed")
                self.store.delete(name)
                return {"ok": True, "result": {"name": name, "removed": True}}
            elif action == "run_now":
                fired = self.request(schedule, Request(time.time(), "run-now"))
                return {"ok": True, "result": {"name": name, "fire": fired}}
            else:
                raise ScheduleError(f"unknown schedule action {action!r}")
            return {"ok": True, "result": self.store.get(name).to_dict()}

    def _add(self, name: str, request: dict[str, Any]) -> dict[str, Any]:
        from nbdeploy.schedule.timing import next_fire

        spec = ScheduleSpec.from_dict(dict(request.get("spec") or {}))
        existing = self.store.find(name)
        if existing is not None and not request.get("replace"):
            raise ScheduleError(
                f"a schedule named {name!r} exists already",
                f"add --replace to replace it, or remove it: nbdeploy schedule remove {name}",
            )
        upcoming = next_fire(spec.cron, spec.tz, time.time()) if spec.cron else None
        self.queued.pop(name, None)
        self.retries.pop(name, None)
        return self.store.put(name, spec, upcoming).to_dict()

    # -- health triggers ---------------------------------------------------------------
    def _trigger_loop(self) -> None:
        from nbdeploy.schedule import triggers

        while not self.stopped.wait(triggers.interval()):
            try:
                self._evaluate_triggers()
            except Exception as error:
                print(f"nbdeploy daemon: triggers: {type(error).__name__}: {error}", flush=True)

    def _evaluate_triggers(self) -> None:
        from nbdeploy.schedule import triggers

        for schedule in self.store.all():
            on = schedule.spec.on
            if schedule.status != ACTIVE or not on:
                continue
            now = time.time()
            last = schedule.last_triggered_at
            if last is not None and now - last < schedule.spec.cooldown_s:
                continue
            try:
                hit, seen = triggers.holds(on, now)
            except Exception as error:  # a deployment gone or not serving: judged next time
                print(f"nbdeploy daemon: trigger {on}: {type(error).__name__}: {error}")
                continue
            if not hit:
                continue
            print(f"nbdeploy daemon: schedule {schedule.name} triggered: {seen}", flush=True)
            with self.lock:
                current = self.store.find(schedule.name)
                if current is None or current.status != ACTIVE:
                    continue
                self.store.update(schedule.name, last_triggered_at=now)
                self.request(current, Request(now, on))


def grace_seconds() -> float:
    return float(os.environ.get(GRACE_ENV) or DEFAULT_GRACE_S)


def stop_tree(pid: int, create_time: float | None, grace: float | None = None) -> None:
    """SIGTERM to a fire's process and everything under it (kernels run in sessions of
    their own, so the whole tree is taken, not a process group), SIGKILL to what is left
    after ``grace`` seconds; in a thread of its own, the scheduler goes on meanwhile."""
    import psutil

    try:
        root = psutil.Process(pid)
        if create_time is not None and abs(root.create_time() - create_time) > 5.0:
            return  # the pid now belongs to another process
        tree = [root, *root.children(recursive=True)]
    except psutil.Error:
        return
    for process in tree:
        with contextlib.suppress(psutil.Error):
            process.send_signal(signal.SIGTERM)
    wait = grace_seconds() if grace is None else grace

    def finish() -> None:
        _, alive = psutil.wait_procs(tree, timeout=wait)
        for process in alive:
            with contextlib.suppress(psutil.Error):
                process.kill()
        psutil.wait_procs(alive, timeout=5.0)

    threading.Thread(target=finish, name=f"stop-{pid}", daemon=True).start()
