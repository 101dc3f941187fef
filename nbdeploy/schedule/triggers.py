"""Health triggers: a schedule that fires when a deployment's health says so.

- ``drift:NAME``: the live version's drift status over the window is "drift"
  (:func:`nbdeploy.monitor.metrics.snapshot`, ``drift_status``);
- ``error-rate:NAME>0.05``: the share of server errors (5xx) over the window is above 5%;
- ``accuracy:NAME<0.9``: the live accuracy from labels posted to the router's ``/feedback``
  (the share of label feedback with outcome 1 over the window) is below 0.9; no labels in
  the window: nothing fires.

The daemon evaluates them every ``NBDEPLOY_SCHEDULE_TRIGGER_INTERVAL`` seconds (15). A
schedule fires when its condition holds and its cooldown has passed since its last
trigger, so a condition that stays true fires once per cooldown.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from nbdeploy.schedule.spec import Trigger, parse_trigger

INTERVAL_ENV = "NBDEPLOY_SCHEDULE_TRIGGER_INTERVAL"
WINDOW_ENV = "NBDEPLOY_SCHEDULE_TRIGGER_WINDOW"
DEFAULT_INTERVAL_S = 15.0


def interval() -> float:
    return max(float(os.environ.get(INTERVAL_ENV) or DEFAULT_INTERVAL_S), 0.2)


def window() -> float:
    from nbdeploy.monitor.metrics import DEFAULT_WINDOW_SECONDS

    return float(os.environ.get(WINDOW_ENV) or DEFAULT_WINDOW_SECONDS)


def holds(on: str, now: float | None = None) -> tuple[bool, str]:
    """Whether the condition ``on`` holds now, and what was seen."""
    trigger = parse_trigger(on)
    value = measure(trigger, now)
    if value is None:
        return False, f"{trigger.kind} of {trigger.deployment}: nothing to judge"
    if trigger.kind == "drift":
        return value == "drift", f"drift status of {trigger.deployment}: {value}"
    number = float(value)
    threshold = float(trigger.threshold or 0.0)
    hit = number > threshold if trigger.op == ">" else number < threshold
    return hit, f"{trigger.kind} of {trigger.deployment}: {number:.4g} {trigger.op} {threshold:g}"


def measure(trigger: Trigger, now: float | None = None) -> Any:
    """The figure a trigger looks at: the drift status, the 5xx share, the accuracy."""
    if trigger.kind == "accuracy":
        return accuracy(trigger.deployment, window(), now)
    from nbdeploy.monitor.metrics import snapshot

    data = snapshot(trigger.deployment, window(), now=now)
    if trigger.kind == "drift":
        return data.get("drift_status")
    return data.get("error_rate") if data.get("requests") else None


def accuracy(name: str, seconds: float, now: float | None = None) -> float | None:
    """The share of correct labels (outcome 1) among the label feedback of the last
    ``seconds`` (the last label of a request counts); None without labels."""
    from nbdeploy.deployment.traffic import folder
    from nbdeploy.deployment.traffic.router.proxy import FEEDBACK_LOG

    until = time.time() if now is None else now
    since = until - seconds
    labels: dict[str, float] = {}
    try:
        text = (folder(name) / FEEDBACK_LOG).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict) or record.get("kind") != "label":
            continue
        moment, outcome = record.get("t"), record.get("outcome")
        if not isinstance(moment, int | float) or not since <= moment <= until:
            continue
        if outcome in (0, 1) and isinstance(record.get("request_id"), str):
            labels[record["request_id"]] = float(outcome)
    if not labels:
        return None
    return sum(labels.values()) / len(labels)
