/**
 * A deployment's dashboard in the main area: traffic, latency and errors over a window
 * (tiles and a chart), per version, input quality and drift; refreshed every 5 seconds.
 */
import { MainAreaWidget } from '@jupyterlab/apputils';
import { Poll } from '@lumino/polling';
import { Widget } from '@lumino/widgets';

import { api, describeError, IDeploymentDetail, IMetrics } from './api';
import { formatMs, formatNumber, formatPercent, formatValue, h, setText, timeAgo } from './dom';
import { badge, updateBadge } from './panel';

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

/** Requests per bucket as bars and p99 as a line, over the window. */
function chart(series: Array<Record<string, number | null>>): SVGSVGElement {
  const width = 600;
  const height = 120;
  const root = svg('svg', {
    class: 'nbdl-chart',
    viewBox: `0 0 ${width} ${height}`,
    role: 'img',
    preserveAspectRatio: 'none'
  });
  const requests = series.map(point => point.requests ?? 0);
  const p99 = series.map(point => point.p99 ?? null);
  const maxRequests = Math.max(1, ...requests);
  const maxLatency = Math.max(1, ...p99.map(value => value ?? 0));
  const step = width / Math.max(1, series.length);
  const total = requests.reduce((a, b) => a + b, 0);
  const title = svg('title', {});
  title.textContent = `${total} requests over the window; highest p99 ${formatMs(Math.max(...p99.map(v => v ?? 0)))}`;
  root.append(title);
  requests.forEach((value, index) => {
    const barHeight = (value / maxRequests) * (height - 10);
    root.append(
      svg('rect', {
        class: 'nbdl-bar',
        x: index * step + 1,
        y: height - barHeight,
        width: Math.max(1, step - 2),
        height: barHeight
      })
    );
  });
  const points = p99
    .map((value, index) =>
      value === null ? null : `${index * step + step / 2},${height - (value / maxLatency) * (height - 10)}`
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
      this.tiles,
      this.body
    );
    this.poll = new Poll({
      factory: () => this.load(),
      frequency: { interval: DASHBOARD_REFRESH_MS, backoff: true, max: 60_000 },
      standby: 'when-hidden',
      name: `nbdeploy:dashboard:${deploymentName}`
    });
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
    setText(this.updated, `updated ${new Date().toLocaleTimeString()}`);
    const latency = metrics.latency ?? {};
    const tiles: Array<[string, string]> = [
      [`requests in ${this.window}`, formatNumber(metrics.requests ?? null, 0)],
      ['requests/s', formatNumber(metrics.requests_per_second ?? null, 2)],
      ['errors', formatPercent(metrics.error_rate ?? null)],
      ['p50', formatMs(latency.p50 ?? null)],
      ['p95', formatMs(latency.p95 ?? null)],
      ['p99', formatMs(latency.p99 ?? null)],
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
            text: `requests (bars) and p99 latency (line) over the last ${this.window}`
          })
        )
      );
    }
    const versions = Object.entries(metrics.versions ?? {});
    if (versions.length) {
      parts.push(
        table(
          'traffic by version',
          ['version', 'requests', 'errors', 'p50', 'p99'],
          versions.map(([version, data]) => [
            version,
            formatNumber(data.requests ?? null, 0),
            formatPercent(data.error_rate ?? null),
            formatMs(data.p50 ?? null),
            formatMs(data.p99 ?? null)
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

export function createDashboard(name: string): MainAreaWidget<DashboardView> {
  const content = new DashboardView(name);
  const widget = new MainAreaWidget({ content });
  widget.id = `nbdeploy-dashboard-${name}`;
  widget.title.label = `${name} dashboard`;
  widget.title.caption = `nbdeploy: the dashboard of ${name}`;
  widget.title.closable = true;
  return widget;
}
