"""The deploy card as a widget: its HTML (:func:`nbdeploy.widgets.deployment.card_html`),
a line that follows the rollout while it runs (a canary's steps, then promoted, or rolled
back in red with the reason), and a button that opens the deployment's dashboard below it
and closes it again."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import ipywidgets as widgets

from nbdeploy.widgets.views import esc

WATCH_EVERY_SECONDS = 2.0
WATCH_AT_MOST_SECONDS = 24 * 3600.0  # a card never watches longer than this
RolloutState = Callable[[str], Mapping[str, Any]]


class DeploymentCard(widgets.VBox):
    """The card; ``text`` is what a front end without widgets shows instead."""

    def __init__(self, html_value: str, name: str, text: str = "") -> None:
        self.deployment_name = name
        self.text = text
        self.dashboard: Any = None
        self.card_html = widgets.HTML(value=html_value)
        self.rollout_html = widgets.HTML(value="")
        self._stop_watching = threading.Event()
        self._watcher: threading.Thread | None = None
        self.dashboard_button = widgets.Button(
            description="dashboard",
            icon="line-chart",
            tooltip=f'nbdeploy.dashboard("{name}"): live figures, drift, stop / rollback',
            layout=widgets.Layout(width="auto"),
        )
        self.dashboard_button.on_click(lambda _: self.toggle_dashboard())
        self.output = widgets.Output()
        super().__init__(
            children=[
                self.card_html,
                self.rollout_html,
                widgets.HBox([self.dashboard_button]),
                self.output,
            ]
        )
        self.add_class("nbd-deployment-card")

    # -- the rollout line ------------------------------------------------------------------
    def watch_canary(self, version: int, state: RolloutState | None = None) -> None:
        """Follow the canary of ``version`` in the background until it ends (or the card
        closes): its step, then promoted, or rolled back with the reason."""
        read = state or _rollout_state
        self.show_rollout(read(self.deployment_name), version)
        self._watcher = threading.Thread(
            target=self._watch, args=(version, read), name="nbdeploy-card", daemon=True
        )
        self._watcher.start()

    def _watch(self, version: int, read: RolloutState) -> None:
        deadline = time.monotonic() + WATCH_AT_MOST_SECONDS
        while not self._stop_watching.wait(WATCH_EVERY_SECONDS):
            try:
                running = self.show_rollout(read(self.deployment_name), version)
            except Exception:  # the next reading may work; the card never raises
                continue
            if not running or time.monotonic() > deadline:
                return

    def show_rollout(self, state: Mapping[str, Any], version: int) -> bool:
        """Show what the rollout state says of the canary of ``version``; True while it runs."""
        plan = state.get("canary")
        if not plan or plan.get("version") != version:
            replaced = f"v{version}'s canary was replaced by a newer rollout"
            self.rollout_html.value = _line("nbd-muted", replaced) if plan is None else ""
            return False
        self.rollout_html.value = rollout_line(plan)
        return plan.get("status") == "running"

    def toggle_dashboard(self) -> None:
        """Open the dashboard below the card, or close it (which stops its refreshing)."""
        from IPython.display import display

        from nbdeploy.widgets.dashboard import dashboard

        if self.dashboard is not None:
            self.dashboard.close()
            self.dashboard = None
            self.output.clear_output()
            self.dashboard_button.description = "dashboard"
            return
        self.dashboard = dashboard(self.deployment_name)
        self.dashboard_button.description = "hide dashboard"
        with self.output:
            display(self.dashboard)

    def close(self) -> None:
        self._stop_watching.set()
        if self.dashboard is not None:
            self.dashboard.close()
            self.dashboard = None
        super().close()

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return with_text(super()._repr_mimebundle_(**kwargs), self.text)


def with_text(bundle: Any, text: str) -> Any:
    """A widget's display data with ``text`` as its plain-text form (what nbconvert, a
    console or a test reading text/plain shows) instead of the widget's repr."""
    if bundle is not None and text:
        bundle["text/plain"] = text
    return bundle


def _rollout_state(name: str) -> Mapping[str, Any]:
    from nbdeploy import api

    state: Mapping[str, Any] = api.rollout_state(name)
    return state


def rollout_line(plan: Mapping[str, Any] | None) -> str:
    """A canary plan (or a rollout notice) as a coloured line: muted while it runs, green
    when promoted, red (an alert) when rolled back; "" without one."""
    from nbdeploy.deployment.report import canary_line

    if not plan:
        return ""
    status = plan.get("status")
    text = str(plan.get("text") or canary_line(dict(plan)))
    if status == "rolled back":
        return _line("nbd-bad", text, alert=True)
    return _line("nbd-good" if status == "promoted" else "nbd-muted", text)


def _line(kind: str, text: str, alert: bool = False) -> str:
    role = ' role="alert"' if alert else ""
    badge = f'<span class="nbd-badge {kind}"{role}>{esc(text)}</span>'
    return f'<div class="nbd nbd-rollout">{badge}</div>'
