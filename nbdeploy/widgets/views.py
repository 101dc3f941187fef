"""HTML pieces shared by the deploy card, the dashboard and the static report: one small
CSS block (JupyterLab's theme variables, with fallbacks for a page outside JupyterLab),
status badges, a copy button, and tables rendered from a metrics snapshot
(:func:`nbdeploy.monitor.metrics.snapshot`). Pure functions of their input; every value
that comes from data is HTML-escaped here."""

from __future__ import annotations

import datetime
import html
import itertools
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

# Status words -> the badge colour that says how good they are.
GOOD = {"serving", "ok", "live", "ready", "succeeded", "promoted", "done"}
CAUTION = {"warn", "starting", "canary", "candidate", "shadow", "running", "ab", "standby"}
BAD = {"failed", "drift", "error", "rolled-back", "failed-start"}

CSS = """
.nbd { font-family: var(--jp-ui-font-family, system-ui, sans-serif);
  font-size: var(--jp-ui-font-size1, 13px); color: var(--jp-ui-font-color1, #1f1f1f);
  line-height: 1.45; white-space: normal; text-align: left; }
.nbd * { box-sizing: border-box; }
.nbd code, .nbd pre { font-family: var(--jp-code-font-family, ui-monospace, monospace);
  font-size: var(--jp-code-font-size, 12px); }
.nbd code { background: var(--jp-layout-color2, #eeeeee); padding: 0 3px; border-radius: 3px; }
.nbd pre { margin: 0; padding: 6px 8px; background: var(--jp-layout-color2, #eeeeee);
  border-radius: 4px; white-space: pre-wrap; word-break: break-all; }
.nbd-card, .nbd-panel, .nbd-dashboard { background: var(--jp-layout-color1, #ffffff);
  border: 1px solid var(--jp-border-color2, #e0e0e0); border-radius: 6px; padding: 10px 12px;
  margin: 4px 0; }
.nbd-head { display: flex; align-items: center; gap: 8px; flex-wrap: wrap;
  margin-bottom: 8px; }
.nbd-title { font-size: var(--jp-ui-font-size2, 15px); font-weight: 600; }
.nbd-muted { color: var(--jp-ui-font-color2, #616161); }
.nbd-small { font-size: var(--jp-ui-font-size0, 11px); }
.nbd-grid { display: grid; grid-template-columns: max-content minmax(0, 1fr);
  column-gap: 14px; row-gap: 6px; align-items: start; }
.nbd-key { color: var(--jp-ui-font-color2, #616161); text-align: left; font-weight: 500;
  padding-top: 2px; }
.nbd-val { text-align: left; min-width: 0; display: flex; gap: 6px; align-items: flex-start; }
.nbd-val > pre, .nbd-val > .nbd-grow { flex: 1 1 auto; min-width: 0; }
.nbd-badge { --nbd-c: var(--jp-ui-font-color2, #757575); display: inline-block;
  padding: 0 8px; border-radius: 10px; font-size: var(--jp-ui-font-size0, 11px);
  font-weight: 600; line-height: 18px; color: var(--nbd-c);
  border: 1px solid var(--nbd-c);
  background: color-mix(in srgb, var(--nbd-c) 12%, transparent); }
.nbd-good { --nbd-c: var(--jp-success-color1, #2e7d32); }
.nbd-caution { --nbd-c: var(--jp-warn-color1, #ef6c00); }
.nbd-bad { --nbd-c: var(--jp-error-color1, #c62828); }
.nbd-off { --nbd-c: var(--jp-ui-font-color3, #9e9e9e); }
.nbd-copy { font: inherit; font-size: var(--jp-ui-font-size0, 11px); cursor: pointer;
  padding: 1px 8px; border-radius: 4px; color: var(--jp-ui-font-color1, #1f1f1f);
  background: var(--jp-layout-color2, #eeeeee);
  border: 1px solid var(--jp-border-color1, #bdbdbd); white-space: nowrap; }
.nbd-copy:hover { background: var(--jp-layout-color3, #e0e0e0); }
.nbd table { border-collapse: collapse; margin: 2px 0 8px 0; }
.nbd th, .nbd td { text-align: left; padding: 3px 10px 3px 0; vertical-align: top;
  border-bottom: 1px solid var(--jp-border-color2, #e0e0e0); }
.nbd th { color: var(--jp-ui-font-color2, #616161); font-weight: 500; }
.nbd th.nbd-num, .nbd td.nbd-num { text-align: right; font-variant-numeric: tabular-nums; }
.nbd-tiles { display: flex; flex-wrap: wrap; gap: 8px; margin: 4px 0 8px 0; }
.nbd-tiles.nbd-dim { opacity: 0.5; }
.nbd-tile { border: 1px solid var(--jp-border-color2, #e0e0e0); border-radius: 6px;
  padding: 4px 10px; min-width: 92px; background: var(--jp-layout-color1, #ffffff); }
.nbd-tile-value { font-size: var(--jp-ui-font-size2, 15px); font-weight: 600;
  font-variant-numeric: tabular-nums; }
.nbd-tile-label { color: var(--jp-ui-font-color2, #616161);
  font-size: var(--jp-ui-font-size0, 11px); }
.nbd-section { font-weight: 600; margin: 6px 0 2px 0; }
.nbd-columns { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }
.nbd-warn-text { color: var(--jp-error-color1, #c62828); }
.nbd-ok-text { color: var(--jp-success-color1, #2e7d32); }
"""

# Copies the button's data-copy attribute: the Clipboard API where the page is a secure
# context (127.0.0.1 and https are), else a hidden textarea and execCommand.
_COPY_SCRIPT = (
    "(function(b){var t=b.getAttribute('data-copy');"
    "var done=function(){b.textContent='copied';"
    "setTimeout(function(){b.textContent=b.getAttribute('data-label')},1500)};"
    "var old=function(){var a=document.createElement('textarea');a.value=t;"
    "a.style.position='fixed';a.style.opacity='0';document.body.appendChild(a);a.select();"
    "try{document.execCommand('copy')}finally{a.remove()}done()};"
    "if(navigator.clipboard&&window.isSecureContext){"
    "navigator.clipboard.writeText(t).then(done,old)}else{old()}})(this)"
)

MISSING = "–"
DEFAULT_BUCKET_SECONDS = 60.0  # the spacing of a series' points when it has one point


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def style_tag() -> str:
    return f"<style>{CSS}</style>"


def status_kind(status: str | None) -> str:
    """good, caution, bad or off: the colour of a status word."""
    word = (status or "").lower()
    if word in GOOD:
        return "good"
    if word in CAUTION:
        return "caution"
    if word in BAD:
        return "bad"
    return "off"


def badge(status: str | None, title: str | None = None) -> str:
    word = status or "no data"
    tip = f' title="{esc(title)}"' if title else ""
    return f'<span class="nbd-badge nbd-{status_kind(status)}"{tip}>{esc(word)}</span>'


def copy_button(text: str, label: str = "copy", title: str | None = None) -> str:
    """A button that copies ``text`` (kept whole in an attribute) to the clipboard."""
    tip = esc(title or f"copy to the clipboard: {text[:200]}")
    return (
        f'<button class="nbd-copy" type="button" data-label="{esc(label)}" '
        f'data-copy="{esc(text)}" title="{tip}" onclick="{esc(_COPY_SCRIPT)}">'
        f"{esc(label)}</button>"
    )


# -- numbers -----------------------------------------------------------------------------
def number(value: Any) -> float | None:
    """A finite float, or None for anything else (missing, NaN, text)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        result = float(value)
    except (TypeError, ValueError):
        return None
    return result if math.isfinite(result) else None


def fmt_ms(value: Any) -> str:
    ms = number(value)
    if ms is None:
        return MISSING
    if ms >= 1000:
        return f"{ms / 1000:.3g} s"
    return f"{ms:.3g} ms" if ms < 100 else f"{ms:.0f} ms"


def fmt_share(value: Any) -> str:
    """A share (0..1) as a percentage."""
    share = number(value)
    if share is None:
        return MISSING
    if share == 0:
        return "0 %"
    if share < 0.001:
        return "<0.1 %"
    return f"{share * 100:.3g} %"


def fmt_count(value: Any) -> str:
    count = number(value)
    if count is None:
        return MISSING
    return f"{count:,.0f}" if count == int(count) else f"{count:.4g}"


def fmt_rate(value: Any) -> str:
    """Requests per second."""
    rate = number(value)
    return MISSING if rate is None else f"{rate:.3g}/s"


def fmt_float(value: Any) -> str:
    figure = number(value)
    return MISSING if figure is None else f"{figure:.4g}"


def fmt_window(seconds: Any) -> str:
    value = number(seconds)
    if value is None:
        return MISSING
    if value >= 3600 and value % 3600 == 0:
        return f"{value / 3600:g} h"
    if value >= 60 and value % 60 == 0:
        return f"{value / 60:g} min"
    return f"{value:g} s"


def fmt_time(unix_seconds: float) -> str:
    return datetime.datetime.fromtimestamp(unix_seconds).strftime("%H:%M:%S")


# -- pieces ------------------------------------------------------------------------------
def header(
    name: str,
    status: str | None,
    version: Any = None,
    url: str | None = None,
    split: str | None = None,
    copy: bool = True,
) -> str:
    """A deployment's name, status badge, live version, address and traffic split."""
    parts = [f'<span class="nbd-title">{esc(name)}</span>', badge(status)]
    number = esc(str(version).lstrip("v")) if version else None
    if number and status == "serving":
        parts.append(f"<span>serving <b>v{number}</b></span>")
    elif number:  # stopped or failed: the version it would serve again
        parts.append(f'<span class="nbd-muted">last served v{number}</span>')
    if url:
        parts.append(f"<code>{esc(url)}</code>" + (copy_button(url) if copy else ""))
    if split and status == "serving":
        parts.append(f'<span class="nbd-muted">traffic {esc(split)}</span>')
    return f'<div class="nbd-head">{"".join(parts)}</div>'


def section(title: str, body: str) -> str:
    return f'<div class="nbd-section">{esc(title)}</div>{body}'


def tables(snapshot: Mapping[str, Any]) -> str:
    """The versions, then input quality and drift side by side."""
    return (
        section("versions", versions_table(snapshot))
        + '<div class="nbd-columns"><div>'
        + section("input quality", quality_table(snapshot))
        + "</div><div>"
        + section("drift", drift_table(snapshot))
        + "</div></div>"
    )


def chart_data(series: Sequence[Mapping[str, Any]]) -> tuple[tuple[Any, ...], ...]:
    """The charts' (times, p50, p99, requests/s, error %) from a snapshot's series, oldest
    first; requests/s divides each point's count by the points' spacing (their median
    gap); times are local datetimes."""
    points = sorted((p for p in series if number(p.get("t")) is not None), key=lambda p: p["t"])
    times = [float(p["t"]) for p in points]
    gaps = [b - a for a, b in itertools.pairwise(times) if b > a]
    bucket = statistics.median(gaps) if gaps else DEFAULT_BUCKET_SECONDS
    x = tuple(datetime.datetime.fromtimestamp(t) for t in times)
    p50 = tuple(number(p.get("p50")) for p in points)
    p99 = tuple(number(p.get("p99")) for p in points)
    throughput = tuple(round((number(p.get("requests")) or 0) / bucket, 4) for p in points)
    errors = tuple(_percent(p.get("errors"), p.get("requests")) for p in points)
    return x, p50, p99, throughput, errors


def _percent(part: Any, whole: Any) -> float | None:
    total = number(whole)
    if not total:
        return None
    return round(100 * (number(part) or 0) / total, 3)


# -- tables ------------------------------------------------------------------------------
def table(
    headers: Sequence[str], rows: Iterable[Sequence[str]], numeric: Iterable[int] = ()
) -> str:
    """A table of cells that are HTML already; columns in ``numeric`` align right."""
    right = set(numeric)

    def cell(tag: str, index: int, content: str) -> str:
        cls = ' class="nbd-num"' if index in right else ""
        return f"<{tag}{cls}>{content}</{tag}>"

    head = "".join(cell("th", i, esc(h)) for i, h in enumerate(headers))
    body = "".join(
        "<tr>" + "".join(cell("td", i, c) for i, c in enumerate(row)) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def tiles(snapshot: Mapping[str, Any]) -> str:
    """The headline figures of a snapshot's window."""
    latency = snapshot.get("latency") or {}
    window = fmt_window(snapshot.get("window_seconds"))
    figures = [
        (fmt_rate(snapshot.get("requests_per_second")), f"requests/s over {window}"),
        (fmt_ms(latency.get("p50")), "p50 latency"),
        (fmt_ms(latency.get("p95")), "p95 latency"),
        (fmt_ms(latency.get("p99")), "p99 latency"),
        (fmt_share(snapshot.get("error_rate")), f"errors over {window}"),
        (fmt_count(snapshot.get("requests")), f"requests in {window}"),
    ]
    dim = " nbd-dim" if snapshot.get("status") == "stopped" else ""  # nothing answers now
    return (
        f'<div class="nbd-tiles{dim}">'
        + "".join(
            f'<div class="nbd-tile"><div class="nbd-tile-value">{esc(value)}</div>'
            f'<div class="nbd-tile-label">{esc(label)}</div></div>'
            for value, label in figures
        )
        + "</div>"
    )


def versions_table(snapshot: Mapping[str, Any]) -> str:
    versions = snapshot.get("versions") or {}
    if not versions:
        return '<div class="nbd-muted">no requests per version in this window</div>'
    live = snapshot.get("live_version")
    live_key = f"v{live}" if live is not None and not str(live).startswith("v") else live
    rows = []
    for key in sorted(versions, key=_version_order):
        figures = versions[key] or {}
        label = esc(key) + (" " + badge("live") if str(key) == str(live_key) else "")
        rows.append(
            [
                label,
                esc(fmt_count(figures.get("requests"))),
                esc(fmt_share(figures.get("error_rate"))),
                esc(fmt_ms(figures.get("p50"))),
                esc(fmt_ms(figures.get("p99"))),
            ]
        )
    return table(["version", "requests", "errors", "p50", "p99"], rows, numeric=(1, 2, 3, 4))


def quality_table(snapshot: Mapping[str, Any]) -> str:
    """Per feature: the shares of missing values, type errors and values out of range."""
    parts = {key: snapshot.get(key) or {} for key in ("missing", "type_errors", "out_of_range")}
    features = _ordered_features(*parts.values())
    if not features:
        return '<div class="nbd-muted">no input quality figures yet</div>'
    rows = [
        [esc(feature)] + [_share_cell(parts[key].get(feature)) for key in parts]
        for feature in features
    ]
    return table(["feature", "missing", "type errors", "out of range"], rows, numeric=(1, 2, 3))


def drift_table(snapshot: Mapping[str, Any]) -> str:
    """Per feature (and for the predictions): PSI, the test's p-value and the status."""
    drift = snapshot.get("drift") or {}
    rows = []
    for feature in _ordered_features(drift):
        figures = drift.get(feature) or {}
        rows.append(_drift_row(esc(feature), figures))
    prediction = snapshot.get("prediction") or {}
    if prediction:
        detail = _prediction_detail(prediction)
        label = "<i>prediction</i>" + (
            f' <span class="nbd-muted nbd-small">{esc(detail)}</span>' if detail else ""
        )
        rows.append(_drift_row(label, prediction))
    if not rows:
        return (
            '<div class="nbd-muted">no drift figures: deploy with --reference X_train to '
            "compare served inputs with the training data</div>"
        )
    return table(["feature", "PSI", "p-value", "status"], rows, numeric=(1, 2))


def footer(snapshot: Mapping[str, Any], updated_at: float | None = None) -> str:
    """When the figures were read, the window, the service's processes and request log."""
    parts = []
    if updated_at is not None:
        parts.append(f"updated {fmt_time(updated_at)}")
    parts.append(f"window {fmt_window(snapshot.get('window_seconds'))}")
    processes = snapshot.get("processes") or {}
    if processes:
        parts.append(
            f"CPU {fmt_float(processes.get('cpu_percent'))} %, "
            f"memory {fmt_count(processes.get('memory_mb'))} MB"
        )
    log = snapshot.get("log") or {}
    if log:
        parts.append(
            f"request log: {fmt_count(log.get('written'))} written, "
            f"{fmt_count(log.get('dropped'))} dropped"
        )
    text = esc(" · ".join(parts))
    if log.get("last_error"):
        text += f' · <span class="nbd-warn-text">log error: {esc(log["last_error"])}</span>'
    return f'<div class="nbd-muted nbd-small">{text}</div>'


def overview_table(rows: Sequence[tuple[Any, Mapping[str, Any]]]) -> str:
    """All deployments: (deployment status object, its snapshot) pairs."""
    if not rows:
        return (
            '<div class="nbd-muted">no deployments yet: <code>%deploy FUNCTION</code> in a '
            "notebook, or <code>nbdeploy deploy NOTEBOOK</code></div>"
        )
    cells = []
    for deployment, snapshot in rows:
        latency = snapshot.get("latency") or {}
        serving = deployment.status == "serving"
        cells.append(
            [
                f"<b>{esc(deployment.name)}</b>",
                badge(deployment.status),
                esc(f"v{deployment.live_version}" if deployment.live_version else MISSING),
                esc(snapshot.get("split") or MISSING) if serving else MISSING,
                esc(fmt_rate(snapshot.get("requests_per_second"))),
                esc(fmt_ms(latency.get("p50"))),
                esc(fmt_ms(latency.get("p95"))),
                esc(fmt_ms(latency.get("p99"))),
                esc(fmt_share(snapshot.get("error_rate"))),
                f"<code>{esc(deployment.url)}</code>" if serving else MISSING,
            ]
        )
    window = fmt_window(rows[0][1].get("window_seconds"))
    headers = ["name", "status", "version", "traffic", f"req/s ({window})", "p50", "p95", "p99"]
    headers.append(f"errors ({window})")
    return table([*headers, "url"], cells, numeric=(4, 5, 6, 7, 8))


def _drift_row(label: str, figures: Mapping[str, Any]) -> list[str]:
    p_value = figures.get("ks_p", figures.get("chi2_p"))
    status = figures.get("status") or "no-data"
    return [label, esc(fmt_float(figures.get("psi"))), esc(fmt_float(p_value)), badge(status)]


def _prediction_detail(prediction: Mapping[str, Any]) -> str:
    parts = []
    if prediction.get("mean") is not None:
        parts.append(f"mean {fmt_float(prediction.get('mean'))}")
    classes = prediction.get("classes") or {}
    if classes:
        top = sorted(classes.items(), key=lambda item: -(number(item[1]) or 0))[:3]
        parts.append(", ".join(f"{name} {fmt_share(share)}" for name, share in top))
    if number(prediction.get("null_rate")):
        parts.append(f"null {fmt_share(prediction.get('null_rate'))}")
    return "; ".join(parts)


def _share_cell(value: Any) -> str:
    share = number(value)
    text = esc(fmt_share(value))
    return f'<span class="nbd-warn-text">{text}</span>' if share else text


def _ordered_features(*tables: Mapping[str, Any]) -> list[str]:
    """Features in the order the snapshot first names them (the reference's column order)."""
    seen: dict[str, None] = {}
    for part in tables:
        for feature in part:
            seen.setdefault(str(feature), None)
    return list(seen)


def _version_order(key: Any) -> tuple[int, str]:
    text = str(key).lstrip("v")
    return (int(text), "") if text.isdigit() else (10**9, str(key))
