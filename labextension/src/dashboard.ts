/**
 * A deployment's dashboard in the main area: traffic, latency and errors over a window
 * (tiles and a chart), per version and endpoint, input quality and drift; refreshed every
 * 5 seconds while it is visible (a hidden tab does not poll).
 */
import { MainAreaWidget } from '@jupyterlab/apputils';
import { Poll } from '@lumino/polling';
import { Widget } from '@lumino/widgets';

import { api, describeError, IDeploymentDetail, IMetrics } from './api';
import { formatMs, formatNumber, formatPercent, formatValue, h, setText, timeAgo } from './dom';
import { badge, showRollout, updateBadge } from './panel';

export const DASHBOARD_REFRESH_MS = 5000;
const WINDOWS = ['5m', '10m', '1h', '24h'];
const SVG = 'http://www.w3.org/2000/svg';

function table(
  caption: string,
  headers: string[],
  rows: Array<Array<string | HTMLElement>>
): HTMLTableElement {
  return h(
    'table',
    { class: 'nbdl-table' },
    h('caption', { text: caption }),
    h('thead', {}, h('tr', {}, ...headers.map(text => h('th', { scope: 'col', text })))),
    h(
      'tbody',
      {},
      ...rows.map(cells =>
        h('tr', {}, ...cells.map((cell, index) => (index === 0 ? h('th', { scope: 'row' }, cell) : h('td', {}, cell))))
      )
    )
  );
}

function svg<K extends keyof SVGElementTagNameMap>(
  tag: K,
  attributes: Record<string, string | number>
): SVGElementTagNameMap[K] {
  const element = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attributes)) {
    element.setAttribute(key, String(value));
  }
  return element;
}

/** A time of day on the 24-hour clock, as everywhere else in nbdeploy. */
export function clock(seconds: number, withSeconds = false): string {
  return new Date(seconds * 1000).toLocaleTimeString([], {
    hour: '2-digit',
    minute: '2-digit',
    ...(withSeconds ? { second: '2-digit' } : {}),
    hourCycle: 'h23'
  });
}

/**
 * Requests per bucket as bars (left axis) and p99 latency as a line (right axis), with
 * the window's start, middle and end on the time axis.
 */
function chart(series: Array<Record<string, number | null>>): SVGSVGElement {
  const width = 640;
  const height = 150;
  const left = 44;
  const right = 56;
  const top = 8;
  const bottom = 20;
  const plotWidth = width - left - right;
  const plotHeight = height - top - bottom;
  const root = svg('svg', { class: 'nbdl-chart', viewBox: `0 0 ${width} ${height}`, role: 'img' });
  const requests = series.map(point => point.requests ?? 0);
  const p99 = series.map(point => point.p99 ?? null);
  const maxRequests = Math.max(1, ...requests);
  const maxLatency = Math.max(1, ...p99.map(value => value ?? 0));
  const step = plotWidth / Math.max(1, series.length);
  const total = requests.reduce((a, b) => a + b, 0);
  const title = svg('title', {});
  title.textContent = `${total} requests over the window; highest p99 ${formatMs(Math.max(...p99.map(v => v ?? 0)))}`;
  root.append(title);
  const text = (x: number, y: number, content: string, anchor: string, kind: string) => {
    const label = svg('text', { x, y, 'text-anchor': anchor, class: `nbdl-axis-label ${kind}` });
    label.textContent = content;
    root.append(label);
  };
  root.append(
    svg('line', { class: 'nbdl-axis', x1: left, y1: top + plotHeight, x2: left + plotWidth, y2: top + plotHeight }),
    svg('line', { class: 'nbdl-axis', x1: left, y1: top, x2: left, y2: top + plotHeight }),
    svg('line', { class: 'nbdl-axis', x1: left + plotWidth, y1: top, x2: left + plotWidth, y2: top + plotHeight })
  );
  text(left - 4, top + 8, formatNumber(maxRequests, 0), 'end', 'nbdl-axis-requests');
  text(left - 4, top + plotHeight, '0', 'end', 'nbdl-axis-requests');
  text(left + plotWidth + 4, top + 8, formatMs(maxLatency), 'start', 'nbdl-axis-latency');
  text(left + plotWidth + 4, top + plotHeight, '0 ms', 'start', 'nbdl-axis-latency');
  const times = series.map(point => point.t).filter((t): t is number => typeof t === 'number');
  if (times.length) {
    const first = times[0] - (times.length > 1 ? times[1] - times[0] : 60);
    const middle = times[Math.floor((times.length - 1) / 2)];
    text(left, height - 4, clock(first), 'start', 'nbdl-axis-time');
    text(left + plotWidth / 2, height - 4, clock(middle), 'middle', 'nbdl-axis-time');
    text(left + plotWidth, height - 4, clock(times[times.length - 1]), 'end', 'nbdl-axis-time');
  }
  requests.forEach((value, index) => {
    const barHeight = (value / maxRequests) * plotHeight;
    root.append(
      svg('rect', {
        class: 'nbdl-bar',
        x: left + index * step + 1,
        y: top + plotHeight - barHeight,
        width: Math.max(1, step - 2),
        height: barHeight
      })
    );
  });
  const points = p99
    .map((value, index) =>
      value === null
        ? null
        : `${left + index * step + step / 2},${top + plotHeight - (value / maxLatency) * plotHeight}`
    )
    .filter((point): point is string => point !== null);
  if (points.length > 1) {
    root.append(svg('polyline', { class: 'nbdl-line', points: points.join(' ') }));
  }
  return root;
}

export class DashboardView extends Widget {
  private window = '10m';
  private readonly badge: HTMLSpanElement;
  private readonly live: HTMLSpanElement;
  private readonly url: HTMLAnchorElement;
  private readonly problem: HTMLDivElement;
  private readonly rolloutLine: HTMLDivElement;
  private readonly tiles: HTMLDivElement;
  private readonly body: HTMLDivElement;
  private readonly updated: HTMLSpanElement;
  private readonly poll: Poll;

  constructor(readonly deploymentName: string) {
    super();
    this.addClass('nbdl-dashboard');
    this.node.tabIndex = -1;
    this.badge = badge('…');
    this.live = h('span', { class: 'nbdl-version' });
    this.url = h('a', { class: 'nbdl-url', target: '_blank', rel: 'noopener noreferrer' });
    this.updated = h('span', { class: 'nbdl-muted nbdl-updated' });
    const select = h('select', {
      class: 'jp-mod-styled',
      'aria-label': 'time window'
    });
    for (const window of WINDOWS) {
      const option = h('option', { value: window, text: `last ${window}` });
      option.selected = window === this.window;
      select.append(option);
    }
    select.addEventListener('change', () => {
      this.window = select.value;
      void this.poll.refresh();
    });
    this.problem = h('div', { class: 'nbdl-problem', role: 'alert', hidden: true });
    this.rolloutLine = h('div', { class: 'nbdl-rollout', hidden: true });
    this.tiles = h('div', { class: 'nbdl-tiles' });
    this.body = h('div', { class: 'nbdl-dashboard-body' });
    this.node.append(
      h(
        'div',
        { class: 'nbdl-dashboard-head' },
        h('h2', { class: 'nbdl-name', text: deploymentName }),
        this.live,
        this.badge,
        this.url,
        h('span', { class: 'nbdl-spacer' }),
        select,
        this.updated
      ),
      this.problem,
      this.rolloutLine,
      this.tiles,
      this.body
    );
    this.poll = new Poll({
      factory: () => this.load(),
      frequency: { interval: DASHBOARD_REFRESH_MS, backoff: true, max: 60_000 },
      standby: () => !this.isVisible || document.visibilityState === 'hidden',
      name: `nbdeploy:dashboard:${deploymentName}`
    });
  }

  protected onAfterShow(): void {
    void this.poll.refresh(); // figures of now, not of when it was hidden
  }

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    this.poll.dispose();
    super.dispose();
  }

  private async load(): Promise<void> {
    let metrics: IMetrics;
    let detail: IDeploymentDetail;
    try {
      [metrics, detail] = await Promise.all([
        api.metrics(this.deploymentName, this.window),
        api.deployment(this.deploymentName)
      ]);
    } catch (error) {
      setText(this.problem, `Could not read ${this.deploymentName}: ${describeError(error)}`);
      this.problem.hidden = false;
      throw error;
    }
    this.problem.hidden = true;
    this.render(metrics, detail);
  }

  private render(metrics: IMetrics, detail: IDeploymentDetail): void {
    updateBadge(this.badge, detail.status);
    setText(this.live, detail.live_version ? `v${detail.live_version}` : '');
    setText(this.url, detail.url ?? '');
    this.url.href = detail.url ?? '';
    setText(this.updated, `updated ${clock(Date.now() / 1000, true)}`);
    showRollout(this.rolloutLine, detail.status === 'stopped' ? null : detail.notice);
    const latency = metrics.latency ?? {};
    const window = this.window;
    const tiles: Array<[string, string]> = [
      [`requests in ${window}`, formatNumber(metrics.requests ?? null, 0)],
      [`requests/s over ${window}`, formatNumber(metrics.requests_per_second ?? null, 2)],
      [`errors over ${window}`, formatPercent(metrics.error_rate ?? null)],
      [`p50 over ${window}`, formatMs(latency.p50 ?? null)],
      [`p95 over ${window}`, formatMs(latency.p95 ?? null)],
      [`p99 over ${window}`, formatMs(latency.p99 ?? null)],
      ['traffic', detail.traffic || '–']
    ];
    this.tiles.replaceChildren(
      ...tiles.map(([label, value]) =>
        h(
          'div',
          { class: 'nbdl-tile' },
          h('div', { class: 'nbdl-tile-value', text: value }),
          h('div', { class: 'nbdl-tile-label', text: label })
        )
      )
    );
    const parts: HTMLElement[] = [];
    const series = metrics.series ?? [];
    if (series.length) {
      parts.push(
        h(
          'figure',
          { class: 'nbdl-figure' },
          chart(series),
          h('figcaption', {
            class: 'nbdl-muted',
            text: `requests per ${bucket(series)} (bars, left axis) and p99 latency (line, right axis) over the last ${this.window}`
          })
        )
      );
    }
    const versions = Object.entries(metrics.versions ?? {});
    for (const [caption, label, rows] of [
      ['traffic by version', 'version', versions],
      ['traffic by endpoint', 'endpoint', Object.entries(metrics.endpoints ?? {})]
    ] as const) {
      if (rows.length) {
        parts.push(trafficTable(caption, label, rows));
      }
    }
    const findings = Object.entries(metrics.findings ?? {}).filter(
      ([, found]) => found.unreadable_bodies || found.misfit_rows || found.misfit_predictions || found.note
    );
    if (findings.length) {
      parts.push(
        table(
          'what clients sent that was left out of drift',
          ['endpoint', 'bodies not rows', 'rows that do not fit', 'answers not one per row', 'note'],
          findings.map(([endpoint, found]) => [
            endpoint,
            formatNumber(found.unreadable_bodies ?? 0, 0),
            formatNumber(found.misfit_rows ?? 0, 0),
            formatNumber(found.misfit_predictions ?? 0, 0),
            found.note ?? ''
          ])
        )
      );
    }
    const drift = Object.entries(metrics.drift ?? {});
    if (drift.length) {
      parts.push(
        table(
          `drift against the training data${metrics.drift_status ? `: ${metrics.drift_status}` : ''}`,
          ['feature', 'PSI', 'KS p', 'status'],
          drift.map(([feature, data]) => [
            feature,
            formatNumber(typeof data.psi === 'number' ? data.psi : null, 3),
            formatNumber(typeof data.ks_p === 'number' ? data.ks_p : null, 3),
            badge(String(data.status ?? 'no-data'))
          ])
        )
      );
    }
    const features = Object.keys({
      ...(metrics.missing ?? {}),
      ...(metrics.type_errors ?? {}),
      ...(metrics.out_of_range ?? {})
    });
    if (features.length) {
      parts.push(
        table(
          'input quality',
          ['feature', 'missing', 'type errors', 'out of range'],
          features.map(feature => [
            feature,
            formatValue(metrics.missing?.[feature] ?? 0),
            formatValue(metrics.type_errors?.[feature] ?? 0),
            formatValue(metrics.out_of_range?.[feature] ?? 0)
          ])
        )
      );
    }
    if (detail.versions?.length) {
      parts.push(
        table(
          'versions',
          ['version', 'created', 'function', 'bento'],
          [...detail.versions]
            .reverse()
            .map(version => [
              `v${version.version}${version.version === detail.live_version ? ' (live)' : ''}`,
              timeAgo(version.created_at),
              version.function ?? '–',
              version.bento_tag ?? '–'
            ])
        )
      );
    }
    if (!series.length && !versions.length) {
      parts.push(h('p', { class: 'nbdl-muted', text: `No requests in the last ${this.window}.` }));
    }
    this.body.replaceChildren(...parts);
  }
}

/** Requests, errors, refusals and latency per version or per endpoint. */
function trafficTable(
  caption: string,
  label: string,
  rows: ReadonlyArray<[string, Record<string, number | null>]>
): HTMLTableElement {
  return table(
    caption,
    [label, 'requests', 'errors', 'refused (4xx)', 'p50', 'p99'],
    rows.map(([name, data]) => [
      name,
      formatNumber(data.requests ?? null, 0),
      formatPercent(data.error_rate ?? null),
      formatPercent(data.client_error_rate ?? null),
      formatMs(data.p50 ?? null),
      formatMs(data.p99 ?? null)
    ])
  );
}

/** The spacing of a series' points, in words ("10 s", "1 min"). */
function bucket(series: Array<Record<string, number | null>>): string {
  const first = series[0]?.t;
  const second = series[1]?.t;
  if (typeof first !== 'number' || typeof second !== 'number') {
    return 'interval';
  }
  const seconds = Math.round(second - first);
  return seconds % 60 === 0 ? `${seconds / 60} min` : `${seconds} s`;
}

export function createDashboard(name: string): MainAreaWidget<DashboardView> {
  const content = new DashboardView(name);
  const widget = new MainAreaWidget({ content });
  widget.id = `nbdeploy-dashboard-${name}`;
  widget.title.label = `${name} dashboard`;
  widget.title.caption = `nbdeploy: the dashboard of ${name}`;
  widget.title.closable = true;
  return widget;
}
