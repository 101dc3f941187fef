/**
 * The "Deployments" sidebar: every deployment (status, live version, URL, traffic,
 * requests/s and p99, refreshed every few seconds) with its actions, and the recent runs.
 */
import { Dialog, showDialog } from '@jupyterlab/apputils';
import { Poll } from '@lumino/polling';
import { Widget } from '@lumino/widgets';

import { api, describeError, IDeployment, IDeploymentDetail, IRolloutNotice, IRun } from './api';
import {
  copyButton,
  formatMs,
  formatNumber,
  formatPercent,
  formatValue,
  h,
  setText,
  timeAgo
} from './dom';
import { ScheduleList } from './schedules';

export const REFRESH_MS = 3000;
/** The window of the summaries' figures when the server does not say (its default). */
export const DEFAULT_WINDOW = '10m';

export interface IPanelOptions {
  /** Open the dashboard of a deployment in the main area. */
  openDashboard: (name: string) => void;
  /** The path of `absolute` relative to the server root, or null when it is outside. */
  relativeToRoot: (absolute: string) => string | null;
  /** Open a notebook of the server root. */
  openPath: (path: string) => void;
  /** Show a run's output notebook (outside the server root) as a read-only page. */
  openRunOutput: (runId: string, title: string) => void;
}

type Action = 'stop' | 'rollback' | 'promote';

const ACTIONS: Record<Action, { verb: string; done: string; confirm?: (name: string) => string }> =
  {
    stop: {
      verb: 'Stop',
      done: 'stopped',
      confirm: name =>
        `Stop ${name}? Its router and every version stop; requests to its URL fail until it is deployed again.`
    },
    rollback: {
      verb: 'Rollback',
      done: 'rolled back' // asks which version first (chooseRollback)
    },
    promote: {
      verb: 'Promote',
      done: 'promoted',
      confirm: name => `Promote the new version of ${name}? It takes all the traffic now.`
    }
  };

/** The latest rollout's canary in ``line``: its progress, or a rollback in red with the
 * reason (an alert); hidden when there is none (or a stop or a newer rollout ended it). */
export function showRollout(line: HTMLElement, notice: IRolloutNotice | null | undefined): void {
  const text = notice?.text ?? '';
  const failed = notice?.status === 'rolled back';
  setText(line, text);
  line.hidden = !text;
  line.classList.toggle('nbdl-error-text', failed);
  line.setAttribute('role', failed ? 'alert' : 'status');
}

/** A status as a badge whose colour says it. */
export function badge(status: string): HTMLSpanElement {
  const element = h('span', { class: 'nbdl-badge' });
  updateBadge(element, status);
  return element;
}

export function updateBadge(element: HTMLElement, status: string): void {
  setText(element, status);
  element.dataset.status = status;
}

class DeploymentCard {
  readonly node: HTMLLIElement;
  private deployment: IDeployment;
  private readonly badge: HTMLSpanElement;
  private readonly version: HTMLSpanElement;
  private readonly url: HTMLAnchorElement;
  private readonly urlRow: HTMLDivElement;
  private readonly fields: Record<string, HTMLElement> = {};
  private readonly terms: Record<string, HTMLElement> = {};
  private readonly rolloutLine = h('div', { class: 'nbdl-rollout', hidden: true });
  private readonly message: HTMLDivElement;
  private readonly buttons: Record<Action | 'dashboard', HTMLButtonElement>;
  private busy = false;

  constructor(
    deployment: IDeployment,
    private readonly panel: DeploymentsPanel
  ) {
    this.deployment = deployment;
    const name = deployment.name;
    this.badge = badge(deployment.status);
    this.version = h('span', { class: 'nbdl-version' });
    this.url = h('a', { class: 'nbdl-url', target: '_blank', rel: 'noopener noreferrer' });
    this.urlRow = h(
      'div',
      { class: 'nbdl-url-row' },
      this.url,
      copyButton(`Copy the URL of ${name}`, () => this.deployment.url ?? '')
    );
    const list = h('dl', { class: 'nbdl-fields' });
    for (const [key, label] of [
      ['strategy', 'strategy'],
      ['traffic', 'traffic'],
      ['rps', 'requests/s'],
      ['p99', 'p99'],
      ['errors', 'errors'],
      ['updated', 'updated']
    ]) {
      const value = h('dd', { class: `nbdl-field-${key}` });
      const term = h('dt', { class: `nbdl-term-${key}`, text: label });
      this.fields[key] = value;
      this.terms[key] = term;
      list.append(term, value);
    }
    const button = (action: Action | 'dashboard', text: string, label: string) => {
      const node = h('button', {
        class: `nbdl-action nbdl-action-${action} jp-mod-styled`,
        type: 'button',
        'aria-label': label,
        title: label,
        text
      });
      return node;
    };
    this.buttons = {
      stop: button('stop', 'stop', `Stop ${name}`),
      rollback: button('rollback', 'rollback', `Roll back ${name}`),
      promote: button('promote', 'promote', `Promote the new version of ${name}`),
      dashboard: button('dashboard', 'dashboard', `Open the dashboard of ${name}`)
    };
    for (const action of ['stop', 'rollback', 'promote'] as Action[]) {
      this.buttons[action].addEventListener('click', () => void this.act(action));
    }
    this.buttons.dashboard.addEventListener('click', () => panel.options.openDashboard(name));
    this.message = h('div', { class: 'nbdl-message', role: 'status', 'aria-live': 'polite' });
    this.node = h(
      'li',
      { class: 'nbdl-card', 'data-name': name, 'aria-label': `deployment ${name}` },
      h(
        'div',
        { class: 'nbdl-card-head' },
        h('span', { class: 'nbdl-name', text: name }),
        this.version,
        this.badge
      ),
      this.urlRow,
      this.rolloutLine,
      list,
      h(
        'div',
        { class: 'nbdl-actions' },
        this.buttons.stop,
        this.buttons.rollback,
        this.buttons.promote,
        this.buttons.dashboard
      ),
      this.message
    );
    this.update(deployment);
  }

  update(deployment: IDeployment): void {
    this.deployment = deployment;
    updateBadge(this.badge, deployment.status);
    setText(this.version, deployment.live_version ? `v${deployment.live_version}` : '');
    // A stopped deployment answers nothing: no URL, no figures, greyed.
    const serving = deployment.status !== 'stopped';
    this.node.classList.toggle('nbdl-stopped', !serving);
    const url = serving ? (deployment.url ?? '') : '';
    setText(this.url, url.replace(/^https?:\/\//, '')); // host and port, never cut off
    this.url.title = url;
    if (this.url.getAttribute('href') !== url) {
      this.url.setAttribute('href', url);
    }
    this.urlRow.hidden = !url;
    const summary = serving ? deployment.summary : null;
    const window = summary?.window ?? DEFAULT_WINDOW;
    setText(this.terms.rps, `requests/s (${window})`);
    setText(this.terms.p99, `p99 (${window})`);
    setText(this.terms.errors, `errors (${window})`);
    setText(this.fields.strategy, deployment.strategy ?? '–');
    setText(this.fields.traffic, serving ? deployment.traffic || '–' : '–');
    setText(this.fields.rps, summary ? formatNumber(summary.requests_per_s, 2) : '–');
    setText(this.fields.p99, summary ? formatMs(summary.p99_ms) : '–');
    setText(this.fields.errors, summary ? formatPercent(summary.error_rate) : '–');
    setText(this.fields.updated, timeAgo(deployment.updated_at));
    showRollout(this.rolloutLine, serving ? deployment.notice : null);
    this.enableButtons();
  }

  private enableButtons(): void {
    const deployment = this.deployment;
    const running = deployment.status !== 'stopped';
    const traffic = deployment.traffic ?? '';
    const split = traffic.split('%').length > 2 || traffic.includes('shadow'); // a candidate
    this.buttons.stop.disabled = this.busy || !running;
    this.buttons.rollback.disabled = this.busy || !running;
    this.buttons.promote.disabled = this.busy || !running || !split;
  }

  private say(text: string, error = false): void {
    setText(this.message, text);
    this.message.classList.toggle('nbdl-error-text', error);
    this.message.setAttribute('role', error ? 'alert' : 'status');
  }

  /** Ask which kept version a rollback serves (the previous one chosen); null: cancelled. */
  private async chooseRollback(name: string): Promise<number | null | undefined> {
    let detail: IDeploymentDetail;
    try {
      detail = await api.deployment(name);
    } catch (error) {
      this.say(`Could not read ${name}: ${describeError(error)}`, true);
      return null;
    }
    const kept = [...detail.versions]
      .filter(version => version.version !== detail.live_version || detail.status === 'stopped')
      .reverse();
    if (!kept.length) {
      return undefined; // the server says why (nothing to roll back to, an experiment ends)
    }
    const select = h('select', { class: 'jp-mod-styled nbdl-rollback-to', 'aria-label': 'version' });
    for (const version of kept) {
      const option = h('option', {
        value: String(version.version),
        text: `v${version.version} · ${timeAgo(version.created_at)}${version.function ? ` · ${version.function}` : ''}`
      });
      option.selected = version.version === (detail.rollback_to ?? kept[0].version);
      select.append(option);
    }
    const body = new Widget({
      node: h(
        'div',
        { class: 'nbdl-rollback' },
        h('p', {
          text: `Serve an earlier version of ${name} again (v${detail.live_version ?? '?'} serves now). No rebuild: it takes all the traffic once it is ready.`
        }),
        h('label', {}, h('span', { text: 'version ' }), select)
      )
    });
    const answer = await showDialog({
      title: `Rollback ${name}`,
      body,
      buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: 'Rollback', ariaLabel: `Rollback ${name}` })]
    });
    return answer.button.accept ? Number(select.value) : null;
  }

  async act(action: Action): Promise<void> {
    const name = this.deployment.name;
    const { verb, done, confirm } = ACTIONS[action];
    let to: number | undefined;
    if (action === 'rollback') {
      const chosen = await this.chooseRollback(name);
      if (chosen === null) {
        return;
      }
      to = chosen;
    } else if (confirm) {
      const answer = await showDialog({
        title: `${verb} ${name}`,
        body: confirm(name),
        buttons: [
          Dialog.cancelButton(),
          Dialog.warnButton({ label: verb, ariaLabel: `${verb} ${name}` })
        ]
      });
      if (!answer.button.accept) {
        return;
      }
    }
    this.busy = true;
    this.enableButtons();
    this.say(`${verb.toLowerCase()}…`);
    try {
      const result = action === 'rollback' ? await api.rollback(name, to) : await api[action](name);
      this.update(result);
      const live = result.status !== 'stopped' && result.live_version;
      this.say(live ? `${done}: v${result.live_version} is live` : done);
    } catch (error) {
      this.say(`Could not ${verb.toLowerCase()} ${name}: ${describeError(error)}`, true);
    } finally {
      this.busy = false;
      this.enableButtons();
      void this.panel.refresh();
    }
  }
}

/** What a run is, in a few words: its notebook, "batch churn v2", "schedule nightly". */
export function runLabel(run: IRun): string {
  if (run.kind === 'batch') {
    return `batch ${run.notebook}`;
  }
  if (run.kind === 'schedule') {
    return `schedule ${run.step ?? ''}`.trim();
  }
  return run.notebook.split('/').pop() ?? run.notebook;
}

class RunItem {
  readonly node: HTMLLIElement;
  private readonly badge: HTMLSpanElement;
  private readonly when: HTMLSpanElement;
  private readonly metrics: HTMLDivElement;
  private readonly output: HTMLDivElement;
  private outputPath: string | null = null;

  constructor(
    run: IRun,
    private readonly panel: DeploymentsPanel
  ) {
    const notebook = runLabel(run);
    this.badge = badge(run.status);
    this.when = h('span', { class: 'nbdl-when' });
    const parameters = Object.entries(run.parameters ?? {})
      .map(([key, value]) => `${key}=${formatValue(value)}`)
      .join(' ');
    this.metrics = h('div', { class: 'nbdl-run-metrics' });
    this.output = h('div', { class: 'nbdl-run-output' });
    this.node = h(
      'li',
      { class: 'nbdl-run', 'data-id': run.id, 'aria-label': `run ${run.id} of ${notebook}` },
      h(
        'div',
        { class: 'nbdl-run-head' },
        h('span', { class: 'nbdl-run-notebook', title: run.notebook, text: notebook }),
        this.badge,
        this.when
      ),
      h('div', {
        class: 'nbdl-run-params',
        title: 'parameters',
        text: parameters || 'default parameters'
      }),
      this.metrics,
      this.output
    );
    this.update(run);
  }

  update(run: IRun): void {
    updateBadge(this.badge, run.status);
    setText(this.when, timeAgo(run.finished_at ?? run.started_at ?? run.created_at ?? null));
    const metrics = Object.entries(run.metrics ?? {})
      .map(([key, value]) => `${key} ${formatValue(value)}`)
      .join(' · ');
    setText(this.metrics, metrics);
    this.metrics.hidden = !metrics;
    if (run.output_path !== this.outputPath) {
      this.outputPath = run.output_path;
      this.renderOutput(run);
    }
  }

  private renderOutput(run: IRun): void {
    this.output.replaceChildren();
    const path = run.output_path;
    if (!path) {
      return;
    }
    const relative = this.panel.options.relativeToRoot(path);
    if (relative !== null) {
      const open = h('button', {
        class: 'nbdl-link',
        type: 'button',
        'aria-label': `Open the output notebook of run ${run.id}`,
        title: relative,
        text: 'open output notebook'
      });
      open.addEventListener('click', () => this.panel.options.openPath(relative));
      this.output.append(open);
    } else {
      // Outside the server root JupyterLab cannot open it as a document: show it as a
      // read-only page rendered by the server, and say where it is.
      const view = h('button', {
        class: 'nbdl-link',
        type: 'button',
        'aria-label': `Show the output notebook of run ${run.id}`,
        title: path,
        text: 'open output notebook'
      });
      const title = `${run.notebook.split('/').pop() ?? 'run'} (${run.id})`;
      view.addEventListener('click', () => this.panel.options.openRunOutput(run.id, title));
      this.output.append(
        view,
        h('span', { class: 'nbdl-muted', text: ' · ' }),
        h('code', { class: 'nbdl-path', title: path, text: path }),
        copyButton(`Copy the output notebook path of run ${run.id}`, () => path)
      );
    }
  }
}

export class DeploymentsPanel extends Widget {
  private readonly cards = new Map<string, DeploymentCard>();
  private readonly runs = new Map<string, RunItem>();
  private readonly deploymentList: HTMLUListElement;
  private readonly runList: HTMLUListElement;
  private readonly emptyDeployments: HTMLParagraphElement;
  private readonly emptyRuns: HTMLParagraphElement;
  private readonly problem: HTMLDivElement;
  private readonly schedules: ScheduleList;
  private readonly poll: Poll;

  constructor(readonly options: IPanelOptions) {
    super();
    this.id = 'nbdeploy-deployments';
    this.addClass('nbdl-panel');
    this.title.caption = 'Deployments';
    this.node.setAttribute('role', 'region');
    this.node.setAttribute('aria-label', 'nbdeploy deployments, runs and schedules');
    const refresh = h('button', {
      class: 'nbdl-refresh jp-mod-styled',
      type: 'button',
      'aria-label': 'Refresh deployments and runs',
      title: 'Refresh',
      text: 'refresh'
    });
    refresh.addEventListener('click', () => void this.poll.refresh());
    this.problem = h('div', { class: 'nbdl-problem', role: 'alert', hidden: true });
    this.deploymentList = h('ul', { class: 'nbdl-cards', 'aria-label': 'Deployments' });
    this.emptyDeployments = h('p', {
      class: 'nbdl-muted nbdl-empty',
      text: 'No deployments yet: use "Deploy" on a notebook\'s toolbar, or %deploy in a notebook.'
    });
    this.runList = h('ul', { class: 'nbdl-runs', 'aria-label': 'Recent runs' });
    this.emptyRuns = h('p', {
      class: 'nbdl-muted nbdl-empty',
      text: 'No runs yet: use "Run pipeline" on a notebook\'s toolbar.'
    });
    this.schedules = new ScheduleList({
      openRunOutput: (runId, title) => this.options.openRunOutput(runId, title),
      refresh: () => this.refresh()
    });
    this.node.append(
      h(
        'div',
        { class: 'nbdl-panel-head' },
        h('h2', { class: 'nbdl-title', text: 'Deployments' }),
        refresh
      ),
      this.problem,
      this.deploymentList,
      this.emptyDeployments,
      h('h2', { class: 'nbdl-title nbdl-runs-title', text: 'Runs' }),
      this.runList,
      this.emptyRuns,
      this.schedules.node
    );
    this.poll = new Poll({
      factory: () => this.load(),
      frequency: { interval: REFRESH_MS, backoff: true, max: 30_000 },
      // Nothing is asked while the sidebar is closed (after the first load) or the page
      // is in the background; opening it refreshes at once.
      standby: () =>
        (!this.isVisible && this.cards.size + this.runs.size > 0) || document.visibilityState === 'hidden',
      name: 'nbdeploy:deployments'
    });
  }

  protected onAfterShow(): void {
    void this.poll.refresh();
  }

  /** Load now (after an action or a deploy). */
  refresh(): Promise<void> {
    return this.poll.refresh();
  }

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    this.poll.dispose();
    super.dispose();
  }

  private async load(): Promise<void> {
    if (!this.isVisible && this.cards.size + this.runs.size > 0) {
      return;
    }
    try {
      const [deployments, runs, schedules] = await Promise.all([
        api.deployments(),
        api.runs(20),
        api.schedules()
      ]);
      this.problem.hidden = true;
      this.renderDeployments(deployments);
      this.renderRuns(runs);
      this.schedules.render(schedules);
    } catch (error) {
      setText(this.problem, `Could not load deployments: ${describeError(error)}`);
      this.problem.hidden = false;
      throw error; // the poll backs off
    }
  }

  private renderDeployments(deployments: IDeployment[]): void {
    const names = new Set(deployments.map(d => d.name));
    for (const [name, card] of this.cards) {
      if (!names.has(name)) {
        card.node.remove();
        this.cards.delete(name);
      }
    }
    deployments.forEach((deployment, index) => {
      let card = this.cards.get(deployment.name);
      if (card) {
        card.update(deployment);
      } else {
        card = new DeploymentCard(deployment, this);
        this.cards.set(deployment.name, card);
      }
      if (this.deploymentList.children[index] !== card.node) {
        this.deploymentList.insertBefore(card.node, this.deploymentList.children[index] ?? null);
      }
    });
    this.emptyDeployments.hidden = deployments.length > 0;
  }

  private renderRuns(runs: IRun[]): void {
    const ids = new Set(runs.map(r => r.id));
    for (const [id, item] of this.runs) {
      if (!ids.has(id)) {
        item.node.remove();
        this.runs.delete(id);
      }
    }
    runs.forEach((run, index) => {
      let item = this.runs.get(run.id);
      if (item) {
        item.update(run);
      } else {
        item = new RunItem(run, this);
        this.runs.set(run.id, item);
      }
      if (this.runList.children[index] !== item.node) {
        this.runList.insertBefore(item.node, this.runList.children[index] ?? null);
      }
    });
    this.emptyRuns.hidden = runs.length > 0;
  }
}
