"""The canary's plan (canary.json) is changed only by read-modify-write under one lock: a
request written by a user or a newer deploy is never overwritten by the controller's
progress, and a plan that ended stays ended."""

from __future__ import annotations

import threading

from support import canary_plan

from nbdeploy.deployment import traffic
from nbdeploy.deployment.traffic.strategies import canary


def running_plan() -> canary.CanaryPlan:
    traffic.folder("scale").mkdir(parents=True, exist_ok=True)
    plan: canary.CanaryPlan = canary_plan()
    canary.write_plan(plan)
    return plan


def test_a_superseded_canary_is_not_brought_back_by_its_controllers_progress(home):
    controllers_copy = running_plan()  # what the controller holds in memory
    canary.supersede("scale")  # a new deploy took over meanwhile
    assert not canary.update(controllers_copy, only_running=True, step=1)
    on_disk = canary.read_plan("scale")
    assert on_disk is not None
    assert (on_disk.status, on_disk.request, on_disk.step) == ("superseded", "superseded", 0)


def test_a_users_abort_survives_the_controllers_history_entry(home):
    controllers_copy = running_plan()
    users_copy = canary.read_plan("scale")
    assert users_copy is not None
    assert canary.update(users_copy, only_running=True, request="abort")
    canary.update(controllers_copy, history=[{"share": 10, "requests": 40, "breach": None}])
    on_disk = canary.read_plan("scale")
    assert on_disk is not None and on_disk.request == "abort"
    assert on_disk.history == [{"share": 10, "requests": 40, "breach": None}]


def test_a_stopped_canary_stays_stopped_whatever_runs_at_once(home):
    running_plan()
    copies = [canary.read_plan("scale") for _ in range(8)]
    stopper = threading.Thread(target=canary.stop_controller, args=("scale", "stopped by test"))
    writers = [
        threading.Thread(
            target=canary.update, args=(copy,), kwargs={"only_running": True, "step": 2}
        )
        for copy in copies
    ]
    for thread in [stopper, *writers]:
        thread.start()
    for thread in [stopper, *writers]:
        thread.join(timeout=10)
    on_disk = canary.read_plan("scale")
    assert on_disk is not None
    assert (on_disk.status, on_disk.reason) == (canary.ROLLED_BACK, "stopped by test")


def test_no_controller_runs_for_a_plan_this_process_does_not_run(home):
    running_plan()
    assert not canary.controller_running("scale")
    assert canary.ask("scale", "promote") is None  # nobody would answer: not waited for
    on_disk = canary.read_plan("scale")
    assert on_disk is not None and on_disk.request is None
