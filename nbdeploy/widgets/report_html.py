"""A static, self-contained HTML report of one deployment (``nbdeploy report NAME -o
report.html``): what the dashboard shows, as one file with its CSS and inline SVG charts,
no script and nothing fetched from the network. Every value from the data is escaped."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from nbdeploy.monitor.metrics import DEFAULT_WINDOW_SECONDS
from nbdeploy.widgets import views

CHART_WIDTH, CHART_HEIGHT = 340, 170
PAD_LEFT, PAD_RIGHT, PAD_TOP, PAD_BOTTOM = 44, 10, 22, 24
PAGE_CSS = """
body { margin: 24px; background: var(--jp-layout-color0, #ffffff); }
@media (prefers-color-scheme: dark) {
  :root { --jp-layout-color0: #111111; --jp-layout-color1: #1b1b1b;
    --jp-layout-color2: #2a2a2a; --jp-layout-color3: #3a3a3a;
    --jp-ui-font-color1: #e6e6e6; --jp-ui-font-color2: #b0b0b0; --jp-ui-font-color3: #8a8a8a;
    --jp-border-color1: #555555; --jp-border-color2: #3a3a3a; }
}
.nbd-charts { display: flex; flex-wrap: wrap; gap: 12px; margin: 6px 0 10px 0; }
.nbd-chart text { fill: var(--jp-ui-font-color2, #616161); font-size: 10px; }
.nbd-chart .nbd-chart-title { font-size: 11px; font-weight: 600; }
.nbd-chart line { stroke: var(--jp-border-color2, #e0e0e0); }
"""
SERIES_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728")


def render_report(snapshot: Mapping[str, Any], status: Any = None) -> str:
    """The report as one HTML document. ``snapshot`` is
    :func:`nbdeploy.monitor.metrics.snapshot`'s dict; ``status`` the deployment (a
    :class:`~nbdeploy.deployment.store.Deployment`, its ``to_dict()``, or None)."""
    facts = _status_facts(status)
    name = str(snapshot.get("name") or facts.get("name") or "deployment")
    header = views.header(
        name,
        facts.get("status") or snapshot.get("status"),
        snapshot.get("live_version") or facts.get("live_version"),
        snapshot.get("url") or facts.get("url"),
        snapshot.get("split"),
        copy=False,
    )
    generated = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
    window = views.fmt_window(snapshot.get("window_seconds"))
    note = f"report generated {generated} · the last {window}"
    body = (
        header
        + f'<div class="nbd-muted nbd-small">{views.esc(note)}</div>'
        + views.tiles(snapshot)
        + charts_svg(snapshot.get("series") or [])
        + views.tables(snapshot)
        + views.footer(snapshot)
    )
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{views.esc(name)}: nbdeploy report</title>"
        f"<style>{views.CSS}{PAGE_CSS}</style></head>"
        f'<body><div class="nbd nbd-panel nbd-report">{body}</div></body></html>\n'
    )


def write_report(
    name: str, path: str | Path, window_seconds: float = DEFAULT_WINDOW_SECONDS, store: Any = None
) -> Path:
    """Write the report of deployment ``name`` to ``path`` (what ``nbdeploy report``
    does); returns the path."""
    from nbdeploy import api
    from nbdeploy.monitor.metrics import snapshot

    [deployment] = api.status(name)
    figures = snapshot(name, window_seconds=window_seconds, store=store)
    html_text = render_report(figures, deployment)
    target = Path(path)
    target.write_text(html_text, encoding="utf-8")
    return target


def charts_svg(series: Sequence[Mapping[str, Any]]) -> str:
    """Latency, throughput and errors over time, as three inline SVG line charts."""
    x, p50, p99, throughput, errors = views.chart_data(series)
    if not x:
        return '<div class="nbd-muted">no requests in this window</div>'
    times = [moment.timestamp() for moment in x]
    charts = [
        line_chart("latency (ms)", times, [("p50", p50), ("p99", p99)]),
        line_chart("requests/s", times, [("requests/s", throughput)]),
        line_chart("errors (%)", times, [("errors %", errors)]),
    ]
    return f'<div class="nbd-charts">{"".join(charts)}</div>'


def line_chart(
    title: str, times: Sequence[float], lines: Sequence[tuple[str, Sequence[float | None]]]
) -> str:
    """One SVG chart: lines over ``times`` (unix seconds), from 0 to the highest value; a
    missing value (None) breaks its line."""
    values = [v for _, ys in lines for v in ys if v is not None]
    top = max(values, default=0.0) or 1.0
    start, end = min(times), max(times)
    span = (end - start) or 1.0
    inner_w = CHART_WIDTH - PAD_LEFT - PAD_RIGHT
    inner_h = CHART_HEIGHT - PAD_TOP - PAD_BOTTOM

    def point(t: float, v: float) -> str:
        px = PAD_LEFT + (t - start) / span * inner_w
        py = PAD_TOP + inner_h - v / top * inner_h
        return f"{px:.1f},{py:.1f}"

    shapes = []
    for index, (label, ys) in enumerate(lines):
        colour = SERIES_COLOURS[index % len(SERIES_COLOURS)]
        for run in _runs(times, ys):
            if len(run) == 1:
                cx, cy = point(*run[0]).split(",")
                shapes.append(f'<circle cx="{cx}" cy="{cy}" r="2" fill="{colour}"/>')
            else:
                points = " ".join(point(t, v) for t, v in run)
                shapes.append(
                    f'<polyline points="{points}" fill="none" stroke="{colour}" '
                    f'stroke-width="1.5"><title>{views.esc(label)}</title></polyline>'
                )
    base_y, left_x = PAD_TOP + inner_h, PAD_LEFT
    legend = (
        " ".join(
            f'<tspan fill="{SERIES_COLOURS[i % len(SERIES_COLOURS)]}">{views.esc(label)}</tspan>'
            for i, (label, _) in enumerate(lines)
        )
        if len(lines) > 1
        else ""
    )
    texts = [
        f'<text class="nbd-chart-title" x="{left_x}" y="14">{views.esc(title)}</text>',
        f'<text x="{CHART_WIDTH - PAD_RIGHT}" y="14" text-anchor="end">{legend}</text>',
        f'<text x="{left_x - 4}" y="{PAD_TOP + 4}" text-anchor="end">{top:.3g}</text>',
        f'<text x="{left_x - 4}" y="{base_y}" text-anchor="end">0</text>',
        f'<text x="{left_x}" y="{CHART_HEIGHT - 6}">{views.fmt_time(start)}</text>',
        f'<text x="{CHART_WIDTH - PAD_RIGHT}" y="{CHART_HEIGHT - 6}" text-anchor="end">'
        f"{views.fmt_time(end)}</text>",
    ]
    grid = (
        f'<line x1="{left_x}" y1="{base_y}" x2="{CHART_WIDTH - PAD_RIGHT}" y2="{base_y}"/>'
        f'<line x1="{left_x}" y1="{PAD_TOP}" x2="{CHART_WIDTH - PAD_RIGHT}" y2="{PAD_TOP}"/>'
    )
    return (
        f'<svg class="nbd-chart" role="img" aria-label="{views.esc(title)}" '
        f'width="{CHART_WIDTH}" height="{CHART_HEIGHT}" '
        f'viewBox="0 0 {CHART_WIDTH} {CHART_HEIGHT}" xmlns="http://www.w3.org/2000/svg">'
        f"{grid}{''.join(shapes)}{''.join(texts)}</svg>"
    )


def _runs(
    times: Sequence[float], values: Sequence[float | None]
) -> list[list[tuple[float, float]]]:
    """The stretches of consecutive values that are present."""
    runs: list[list[tuple[float, float]]] = [[]]
    for t, v in zip(times, values, strict=True):
        if v is None:
            if runs[-1]:
                runs.append([])
        else:
            runs[-1].append((t, v))
    return [run for run in runs if run]


def _status_facts(status: Any) -> dict[str, Any]:
    if status is None:
        return {}
    if isinstance(status, Mapping):
        return dict(status)
    return {key: getattr(status, key, None) for key in ("name", "status", "live_version", "url")}
