"""The live dashboard of deployments inside a notebook: ``nbdeploy.dashboard("churn")``.

Status and versions, the traffic split (an A/B test's experiment), the latest rollout's
canary, requests/s, latency percentiles and error rate, charts over time (a plotly
``FigureWidget``), the input quality and drift tables, and buttons to stop, roll back or
promote. Figures come from
:func:`nbdeploy.monitor.metrics.snapshot`; a background thread reads them every ``refresh``
seconds and assigns only the widget values that changed (and the charts in one batch), so
the kernel's iopub channel carries a few small messages a second at most. The thread ends
when the dashboard is closed, when its comm closes, or when its views have been gone for
:data:`HIDDEN_GRACE_SECONDS` (its output was cleared, its notebook closed).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ipywidgets as widgets

from nbdeploy.deployment.store import SERVING, STOPPED
from nbdeploy.monitor.metrics import DEFAULT_WINDOW_SECONDS
from nbdeploy.widgets import views
from nbdeploy.widgets.card import rollout_line

MIN_REFRESH_SECONDS = 0.5  # at most 2 Hz
JOIN_SECONDS = 5.0
HIDDEN_GRACE_SECONDS = 30.0  # a notebook closed and opened again within this keeps it live
OTHERS_EVERY_SECONDS = 5.0  # the overview reads deployments not selected this often

Fetch = Callable[[str, float], Mapping[str, Any]]
ListDeployments = Callable[[str | None], Sequence[Any]]
Action = Callable[[str], Any]


def dashboard(
    name: str | None = None, refresh: float = 1.0, window_seconds: float = DEFAULT_WINDOW_SECONDS
) -> Any:
    """A live view of one deployment (``name``) or of all: display it (it is the last
    expression of a cell, or ``display(...)``); ``close()`` stops its refreshing.

    ``refresh`` is the time between two readings in seconds (at least 0.5);
    ``window_seconds`` the span of the figures and charts. An unknown ``name`` raises
    at once (the error lists the deployments there are)."""
    if name is not None:
        list_deployments(name)
    return Dashboard(name, refresh=refresh, window_seconds=window_seconds)


def fetch_snapshot(name: str, window_seconds: float) -> Mapping[str, Any]:
    """The figures of deployment ``name`` (see :mod:`nbdeploy.monitor.metrics`)."""
    from nbdeploy.monitor.metrics import snapshot

    return snapshot(name, window_seconds=window_seconds)


def list_deployments(name: str | None) -> Sequence[Any]:
    from nbdeploy import api

    return list(api.status(name))


def default_actions() -> dict[str, Action]:
    from nbdeploy import api

    return {"stop": api.stop, "rollback": api.rollback, "promote": api.promote}


class Dashboard(widgets.VBox):
    """See :func:`dashboard`. ``fetch``, ``deployments`` and ``actions`` replace the
    sources of figures, of the deployments' status, and the stop/rollback/promote calls."""

    def __init__(
        self,
        name: str | None = None,
        *,
        refresh: float = 1.0,
        window_seconds: float = DEFAULT_WINDOW_SECONDS,
        fetch: Fetch | None = None,
        deployments: ListDeployments | None = None,
        actions: Mapping[str, Action] | None = None,
        start: bool = True,
    ) -> None:
        self.deployment_name = name
        self.refresh_seconds = max(MIN_REFRESH_SECONDS, float(refresh))
        self.window_seconds = float(window_seconds)
        self._fetch = fetch or fetch_snapshot
        self._deployments = deployments or list_deployments
        self._actions = dict(actions) if actions is not None else default_actions()
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._seen_view = False
        self._hidden_since: float | None = None
        self._chart_key: Any = None
        self._choosing = False  # the picker is being set by the dashboard, not by a click
        self._fetched_at: dict[str, float] = {}
        self.snapshots: dict[str, Mapping[str, Any]] = {}
        self.errors: dict[str, str] = {}
        self.statuses: list[Any] = []
        self.updated_at: float | None = None
        self.refreshes = 0

        self.css_html = widgets.HTML(value=views.style_tag())
        self.overview_html = widgets.HTML()
        self.picker = widgets.Dropdown(
            description="details", options=[], layout=widgets.Layout(width="320px")
        )
        self.picker.observe(self._on_pick, names="value")
        self.header_html = widgets.HTML()
        self.rollout_html = widgets.HTML()
        self.tiles_html = widgets.HTML()
        actions_row = self._make_actions()
        # plotly's FigureWidget takes a few seconds to import the first time: the refreshing
        # thread makes it, so that the dashboard shows at once and its charts a moment later.
        self.chart: Any = None
        self.chart_note = widgets.HTML(_wrap('<div class="nbd-muted">loading the charts…</div>'))
        self.chart_box = widgets.Box([self.chart_note])
        self.tables_html = widgets.HTML()
        self.footer_html = widgets.HTML()
        self.detail = widgets.VBox(
            [
                self.header_html,
                self.rollout_html,
                self.tiles_html,
                actions_row,
                self.confirm_box,
                self.chart_box,
                self.tables_html,
                self.footer_html,
            ]
        )
        top = [] if name is not None else [self.overview_html, self.picker]
        # _view_count=0: the front end counts the views it shows (see _hidden_too_long)
        super().__init__(children=[self.css_html, *top, self.detail], _view_count=0)
        self.add_class("nbd-dashboard")
        if self.comm is not None:
            self.comm.on_close(lambda _message: self._stopping.set())
        self.refresh()
        if not start:
            self._add_chart()
        else:
            self._thread = threading.Thread(
                target=self._run, name=f"nbdeploy-dashboard-{name or 'all'}", daemon=True
            )
            self._thread.start()

    def _make_actions(self) -> Any:
        """The stop, rollback and promote buttons, where their outcome shows, and the
        question stop asks first."""
        self.stop_button = widgets.Button(description="stop", icon="stop", tooltip="stop serving")
        self.rollback_button = widgets.Button(
            description="rollback", icon="undo", tooltip="serve the previous version"
        )
        self.promote_button = widgets.Button(
            description="promote", icon="forward", tooltip="a canary or A/B version takes all"
        )
        self.outcome_html = widgets.HTML()
        self.confirm_html = widgets.HTML()
        self.confirm_button = widgets.Button(description="stop it", button_style="danger")
        self.cancel_button = widgets.Button(description="cancel")
        self.confirm_box = widgets.HBox(
            [self.confirm_html, self.confirm_button, self.cancel_button],
            layout=widgets.Layout(display="none", align_items="center"),
        )
        self.stop_button.on_click(lambda _: self._ask_to_stop())
        self.confirm_button.on_click(lambda _: self._act("stop"))
        self.cancel_button.on_click(lambda _: self._hide_confirmation())
        self.rollback_button.on_click(lambda _: self._act("rollback"))
        self.promote_button.on_click(lambda _: self._act("promote"))
        return widgets.HBox(
            [self.stop_button, self.rollback_button, self.promote_button, self.outcome_html],
            layout=widgets.Layout(align_items="center", flex_flow="row wrap"),
        )

    # -- the selected deployment -------------------------------------------------------
    @property
    def selected(self) -> str | None:
        return self.deployment_name or self.picker.value or None

    def _on_pick(self, change: dict[str, Any]) -> None:
        if not self._choosing and change.get("new") and change.get("new") != change.get("old"):
            self._chart_key = None
            self._hide_confirmation()
            _assign(self.outcome_html, "")
            self.refresh()

    # -- reading and showing -----------------------------------------------------------
    def refresh(self) -> None:
        """Read the figures once and update the widgets whose values changed."""
        with self._lock:  # the refreshing thread, and button clicks in the kernel's
            self._refresh()

    def _refresh(self) -> None:
        now = time.monotonic()
        try:
            statuses = list(self._deployments(self.deployment_name))
            status_error = None
        except Exception as error:  # shown in the dashboard, never raised from a thread
            statuses, status_error = self.statuses, _describe_error(error)
        selected = self._choose(statuses)
        for deployment in statuses:
            name = deployment.name
            due = now - self._fetched_at.get(name, -1e9) >= OTHERS_EVERY_SECONDS
            if name == selected or due:
                self._read(name, now)
        if self._stopping.is_set():
            return
        self.statuses = statuses
        self.updated_at = time.time()
        self.refreshes += 1
        if status_error:
            self.errors[""] = status_error
        else:
            self.errors.pop("", None)
        self._show(selected)

    def _read(self, name: str, now: float) -> None:
        try:
            self.snapshots[name] = dict(self._fetch(name, self.window_seconds) or {})
            self.errors.pop(name, None)
        except ModuleNotFoundError as error:
            self.errors[name] = f"no metrics: {error}"
        except Exception as error:
            self.errors[name] = _describe_error(error)
        self._fetched_at[name] = now

    def _choose(self, statuses: Sequence[Any]) -> str | None:
        if self.deployment_name is not None:
            return self.deployment_name
        names = tuple(deployment.name for deployment in statuses)
        if tuple(self.picker.options) != names:
            serving = [d.name for d in statuses if d.status == SERVING]
            keep = self.picker.value if self.picker.value in names else None
            self._choosing = True
            try:
                self.picker.options = names
                self.picker.value = keep or (serving or list(names) or [None])[0]
            finally:
                self._choosing = False
        return self.picker.value or None

    def _show(self, name: str | None) -> None:
        if self.deployment_name is None:
            rows = [(d, self.snapshots.get(d.name, {})) for d in self.statuses]
            _assign(self.overview_html, _wrap(views.overview_table(rows)))
        _assign(self.detail.layout, None if name else "none", "display")
        if not name:
            return
        deployment = next((d for d in self.statuses if d.name == name), None)
        snapshot = self.snapshots.get(name, {})
        status = deployment.status if deployment is not None else snapshot.get("status")
        header = views.header(
            name,
            status,
            snapshot.get("live_version") or getattr(deployment, "live_version", None),
            (snapshot.get("url") or getattr(deployment, "url", None))
            if status == SERVING
            else None,
            snapshot.get("split"),
        )
        _assign(self.header_html, _wrap(header))
        serving = status == SERVING
        _assign(self.rollout_html, rollout_line(snapshot.get("rollout")) if serving else "")
        _assign(self.tiles_html, _wrap(views.tiles(snapshot)))
        _assign(self.tables_html, _wrap(views.tables(snapshot)))
        errors = [text for key, text in self.errors.items() if key in ("", name)]
        footer = views.footer(snapshot, self.updated_at)
        if errors:
            footer += "".join(
                f'<div class="nbd-warn-text nbd-small">{views.esc(text)}</div>' for text in errors
            )
        _assign(self.footer_html, _wrap(footer))
        stopped = deployment is not None and deployment.status == STOPPED
        split = str(snapshot.get("split") or "")
        _assign(self.stop_button, stopped, "disabled")
        _assign(self.rollback_button, stopped, "disabled")
        candidate = split.count("%") >= 2 or "shadow" in split  # a version to promote
        _assign(self.promote_button, stopped or not candidate, "disabled")
        self._update_chart(snapshot.get("series") or [])

    def _add_chart(self) -> None:
        try:
            chart = _make_chart()
        except Exception as error:  # the figures and tables still refresh
            _assign(self.chart_note, _note(f"no charts: {_describe_error(error)}", "nbd-muted"))
            return
        with self._lock:
            if self._stopping.is_set():  # closed while plotly was being imported
                chart.close()
                return
            self.chart = chart
            self.chart_box.children = [chart]
            name = self.selected
            if name:
                self._update_chart(self.snapshots.get(name, {}).get("series") or [])

    def _update_chart(self, series: Sequence[Mapping[str, Any]]) -> None:
        data = views.chart_data(series)
        key = _chart_key(data)
        if self.chart is None or key == self._chart_key:
            return
        self._chart_key = key
        x, p50, p99, throughput, errors = data
        with self.chart.batch_update():
            for trace, values in zip(self.chart.data, (p50, p99, throughput, errors), strict=True):
                trace.x, trace.y = x, values
            self.chart.layout.annotations[-1].visible = not x

    # -- actions -----------------------------------------------------------------------
    def _ask_to_stop(self) -> None:
        name = self.selected
        if not name:
            return
        _assign(
            self.confirm_html,
            f'<span class="nbd">Stop <b>{views.esc(name)}</b>? Its address and every version '
            "stop serving.</span>",
        )
        self.confirm_box.layout.display = None

    def _hide_confirmation(self) -> None:
        self.confirm_box.layout.display = "none"

    def _act(self, verb: str) -> None:
        """Stop, roll back or promote the selected deployment; say what happened."""
        from nbdeploy.deployment.report import describe_switch

        name = self.selected
        self._hide_confirmation()
        if not name:
            return
        buttons = (self.stop_button, self.rollback_button, self.promote_button)
        for button in buttons:
            button.disabled = True
        _assign(self.outcome_html, _note(f"{verb}: {name}…", "nbd-muted"))
        try:
            result = self._actions[verb](name)
            text = f"stopped {name}" if verb == "stop" else describe_switch(result)
            _assign(self.outcome_html, _note(text, "nbd-ok-text"))
        except Exception as error:  # said in words next to the buttons
            _assign(
                self.outcome_html,
                _note(f"could not {verb} {name}: {_describe_error(error)}", "nbd-warn-text"),
            )
        finally:
            for button in buttons:
                button.disabled = False
            self._fetched_at.pop(name, None)
            self.refresh()

    # -- the refreshing thread ---------------------------------------------------------
    def _run(self) -> None:
        self._add_chart()
        while not self._stopping.wait(self.refresh_seconds):
            if self._hidden_too_long():
                self.close()
                return
            if self._hidden_since is None:
                try:
                    self.refresh()
                except Exception as error:  # a widget closed under us: keep the thread quiet
                    self.errors[""] = _describe_error(error)

    def _hidden_too_long(self) -> bool:
        """Whether the views a front end showed are gone (for the grace period): a front
        end that never reports views (papermill, a console) keeps the dashboard live."""
        if self._view_count:
            self._seen_view, self._hidden_since = True, None
            return False
        if not self._seen_view:
            return False
        now = time.monotonic()
        if self._hidden_since is None:
            self._hidden_since = now
        return now - self._hidden_since > HIDDEN_GRACE_SECONDS

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def close(self) -> None:
        """Stop refreshing (the thread ends) and close the dashboard's widgets."""
        self._stopping.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(JOIN_SECONDS)
        with self._lock:
            for child in _descendants(self):
                child.close()
            super().close()

    # -- without a widget front end ----------------------------------------------------
    def text(self) -> str:
        """The status table (and, for one deployment, its rollout) as text."""
        from nbdeploy.deployment.report import describe_status

        rollout = None
        if self.deployment_name is not None:
            try:
                from nbdeploy import api

                rollout = api.rollout_state(self.deployment_name)
            except Exception:
                rollout = None
        return describe_status(list(self.statuses), rollout)

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        from nbdeploy.widgets.card import with_text

        return with_text(super()._repr_mimebundle_(**kwargs), self.text())


def _chart_key(data: tuple[tuple[Any, ...], ...]) -> Any:
    """What makes the charts worth sending again: their values, and their times moved by a
    whole bucket. A snapshot's buckets end at the time it was read, so their times move a
    little at every reading; the charts follow once a bucket (or when a value changes)."""
    x, *values = data
    if len(x) < 2:
        return (x, *values)
    width = (x[-1] - x[0]).total_seconds() / (len(x) - 1) or 1.0
    return (len(x), int(x[0].timestamp() // width), *values)


def _make_chart() -> Any:
    """Latency, throughput and errors side by side; transparent so that it sits on a light
    or a dark JupyterLab theme alike."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    figure = make_subplots(
        rows=1,
        cols=3,
        subplot_titles=("latency (ms)", "requests/s", "errors (%)"),
        horizontal_spacing=0.07,
    )
    traces = [
        ("p50", "#1f77b4", 1),
        ("p99", "#ff7f0e", 1),
        ("requests/s", "#2ca02c", 2),
        ("errors %", "#d62728", 3),
    ]
    for label, colour, column in traces:
        figure.add_trace(
            go.Scatter(
                x=[],
                y=[],
                name=label,
                mode="lines+markers",
                line={"color": colour},
                marker={"size": 4},
            ),
            row=1,
            col=column,
        )
    grid = "rgba(128,128,128,0.25)"
    figure.update_layout(
        autosize=True,
        height=240,
        margin={"l": 40, "r": 10, "t": 28, "b": 20},
        paper_bgcolor="rgba(0,0,0,0)",
        plot_bgcolor="rgba(0,0,0,0)",
        font={"color": "#888888", "size": 11},
        legend={"orientation": "h", "x": 0, "y": -0.14, "yanchor": "top"},
        hovermode="x unified",
    )
    # "date": an empty axis (no requests yet) is not linear, where "%H:%M" is a bad format
    figure.update_xaxes(type="date", gridcolor=grid, zeroline=False, tickformat="%H:%M", nticks=5)
    figure.update_yaxes(gridcolor=grid, rangemode="tozero", zeroline=False)
    figure.add_annotation(
        text="no requests in this window",
        xref="paper",
        yref="paper",
        x=0.5,
        y=0.5,
        showarrow=False,
        font={"size": 12},
    )
    return go.FigureWidget(figure)


def _wrap(body: str) -> str:
    return f'<div class="nbd">{body}</div>'


def _note(text: str, cls: str) -> str:
    return f'<span class="nbd {cls}">{views.esc(text)}</span>'


def _assign(widget: Any, value: Any, trait: str = "value") -> None:
    """Set a widget's trait only when the value differs: an unchanged value sends nothing."""
    if getattr(widget, trait) != value:
        setattr(widget, trait, value)


def _describe_error(error: BaseException) -> str:
    from nbdeploy.errors import NbdeployError

    if isinstance(error, NbdeployError):
        return error.message + (f" ({error.hint})" if error.hint else "")
    return f"{type(error).__name__}: {error}"


def _descendants(box: Any) -> list[Any]:
    """The widgets inside ``box`` (their layouts and styles are widgets too), innermost
    first."""
    found = []
    for child in getattr(box, "children", ()):
        found.extend(_descendants(child))
        found.append(child)
    parts = [getattr(w, key, None) for w in [*found, box] for key in ("layout", "style")]
    return found + [part for part in parts if isinstance(part, widgets.Widget)]
