/**
 * The "Schedules" part of the sidebar: every schedule (when it fires, its last result, red
 * when its last fire failed), with Pause/Resume, Run now, and its history, whose fires link
 * to the runs they made.
 */
import { api, describeError, IFire, ISchedule, ScheduleAction } from './api';
import { h, setText, timeAgo } from './dom';

/** What the list needs from the panel that holds it. */
export interface IScheduleHost {
  /** Show a run's output notebook. */
  openRunOutput: (runId: string, title: string) => void;
  /** Load the sidebar again (after an action). */
  refresh: () => Promise<void>;
}

/** The badge of a schedule: paused, active, or failed (its last fire failed). */
export function scheduleState(schedule: ISchedule): string {
  if (schedule.failing) {
    return 'failed';
  }
  return schedule.status;
}

/** When a schedule fires, in words: "0 2 * * * (Europe/Berlin)", "on drift:churn", both. */
export function firesWhen(schedule: ISchedule): string {
  const parts: string[] = [];
  if (schedule.cron) {
    parts.push(`${schedule.cron} (${schedule.tz})`);
  }
  if (schedule.on) {
    parts.push(`on ${schedule.on}`);
  }
  return parts.join(' · ');
}

class ScheduleItem {
  readonly node: HTMLLIElement;
  private schedule: ISchedule;
  private readonly badge: HTMLSpanElement;
  private readonly when: HTMLDivElement;
  private readonly next: HTMLDivElement;
  private readonly last: HTMLDivElement;
  private readonly message: HTMLDivElement;
  private readonly pause: HTMLButtonElement;
  private readonly runNow: HTMLButtonElement;
  private readonly historyButton: HTMLButtonElement;
  private readonly history: HTMLUListElement;
  private busy = false;

  constructor(
    schedule: ISchedule,
    private readonly host: IScheduleHost
  ) {
    this.schedule = schedule;
    const name = schedule.name;
    this.badge = h('span', { class: 'nbdl-badge' });
    this.when = h('div', { class: 'nbdl-schedule-when' });
    this.next = h('div', { class: 'nbdl-schedule-next nbdl-muted' });
    this.last = h('div', { class: 'nbdl-schedule-last' });
    this.message = h('div', { class: 'nbdl-message', role: 'status', hidden: true });
    this.pause = this.button('pause', `Pause or resume ${name}`, () =>
      this.act(this.schedule.status === 'paused' ? 'resume' : 'pause')
    );
    this.runNow = this.button('run-now', `Run ${name} now`, () => this.act('run-now'));
    setText(this.runNow, 'Run now');
    this.historyButton = this.button('history', `Show the history of ${name}`, () =>
      this.toggleHistory()
    );
    setText(this.historyButton, 'History');
    this.history = h('ul', {
      class: 'nbdl-fires',
      'aria-label': `Fires of ${name}`,
      hidden: true
    });
    this.node = h(
      'li',
      { class: 'nbdl-run nbdl-schedule', 'data-name': name, 'aria-label': `schedule ${name}` },
      h(
        'div',
        { class: 'nbdl-run-head' },
        h('span', { class: 'nbdl-name', text: name }),
        this.badge
      ),
      this.when,
      h('code', { class: 'nbdl-path nbdl-schedule-command', title: schedule.command, text: schedule.command }),
      this.next,
      this.last,
      h('div', { class: 'nbdl-actions' }, this.pause, this.runNow, this.historyButton),
      this.message,
      this.history
    );
    this.update(schedule);
  }

  update(schedule: ISchedule): void {
    this.schedule = schedule;
    const state = scheduleState(schedule);
    setText(this.badge, state === 'failed' ? 'failing' : state);
    this.badge.dataset.status = state === 'active' ? 'ok' : state === 'paused' ? 'stopped' : state;
    setText(this.when, firesWhen(schedule));
    setText(this.next, schedule.next_fire ? `next: ${schedule.next_fire}` : 'next: —');
    const last = schedule.last_status
      ? `last: ${schedule.last_status}${schedule.last_error ? ` (${schedule.last_error})` : ''}`
      : 'last: never fired';
    setText(this.last, last);
    this.last.classList.toggle('nbdl-error-text', schedule.failing);
    this.last.setAttribute('role', schedule.failing ? 'alert' : 'status');
    setText(this.pause, schedule.status === 'paused' ? 'Resume' : 'Pause');
    this.enable();
    if (!this.history.hidden) {
      void this.loadHistory();
    }
  }

  private button(kind: string, label: string, onClick: () => void): HTMLButtonElement {
    const button = h('button', {
      class: `nbdl-action nbdl-action-${kind} jp-mod-styled`,
      type: 'button',
      'aria-label': label
    });
    button.addEventListener('click', onClick);
    return button;
  }

  private enable(): void {
    for (const button of [this.pause, this.runNow, this.historyButton]) {
      button.disabled = this.busy;
    }
  }

  private say(text: string, error = false): void {
    setText(this.message, text);
    this.message.hidden = !text;
    this.message.classList.toggle('nbdl-error-text', error);
    this.message.setAttribute('role', error ? 'alert' : 'status');
  }

  private async act(action: ScheduleAction): Promise<void> {
    if (this.busy) {
      return;
    }
    this.busy = true;
    this.enable();
    const name = this.schedule.name;
    const done: Record<ScheduleAction, string> = {
      pause: 'paused',
      resume: 'resumed',
      'run-now': 'fired',
      remove: 'removed'
    };
    try {
      await api.scheduleAction(name, action);
      this.say(`${name} ${done[action]}`);
      if (action === 'run-now' && this.history.hidden) {
        await this.toggleHistory();
      }
    } catch (error) {
      this.say(`Could not ${action.replace('-', ' ')} ${name}: ${describeError(error)}`, true);
    } finally {
      this.busy = false;
      this.enable();
      void this.host.refresh();
    }
  }

  private async toggleHistory(): Promise<void> {
    this.history.hidden = !this.history.hidden;
    setText(this.historyButton, this.history.hidden ? 'History' : 'Hide history');
    if (!this.history.hidden) {
      await this.loadHistory();
    }
  }

  private async loadHistory(): Promise<void> {
    try {
      const fires = await api.scheduleHistory(this.schedule.name, 10);
      this.renderHistory(fires);
    } catch (error) {
      this.history.replaceChildren(
        h('li', { class: 'nbdl-error-text', text: `Could not load the history: ${describeError(error)}` })
      );
    }
  }

  private renderHistory(fires: IFire[]): void {
    if (!fires.length) {
      this.history.replaceChildren(h('li', { class: 'nbdl-muted', text: 'No fires yet.' }));
      return;
    }
    this.history.replaceChildren(...fires.map(fire => this.fireItem(fire)));
  }

  private fireItem(fire: IFire): HTMLLIElement {
    const status = h('span', { class: 'nbdl-badge', text: fire.status });
    status.dataset.status = fire.status;
    const runs = fire.runs.map(runId => {
      const link = h('button', {
        class: 'nbdl-link',
        type: 'button',
        'aria-label': `Open run ${runId} of ${this.schedule.name}`,
        title: `the output of run ${runId}`,
        text: runId
      });
      link.addEventListener('click', () =>
        this.host.openRunOutput(runId, `${this.schedule.name} (${runId})`)
      );
      return link;
    });
    const attempt = fire.attempt > 1 ? ` · attempt ${fire.attempt}` : '';
    return h(
      'li',
      { class: 'nbdl-fire', 'data-id': fire.run_id },
      status,
      h('span', {
        class: 'nbdl-when',
        text: ` ${timeAgo(fire.started_at ?? fire.scheduled_for)} · ${fire.trigger ?? ''}${attempt}`
      }),
      fire.error ? h('div', { class: 'nbdl-error-text', text: fire.error }) : null,
      runs.length ? h('div', { class: 'nbdl-fire-runs' }, 'runs: ', ...runs) : null
    );
  }
}

/** The schedules of the sidebar, updated in place on every refresh. */
export class ScheduleList {
  readonly node: HTMLDivElement;
  private readonly items = new Map<string, ScheduleItem>();
  private readonly list: HTMLUListElement;
  private readonly empty: HTMLParagraphElement;

  constructor(private readonly host: IScheduleHost) {
    this.list = h('ul', { class: 'nbdl-runs nbdl-schedules', 'aria-label': 'Schedules' });
    this.empty = h('p', {
      class: 'nbdl-muted nbdl-empty',
      text: "No schedules yet: %deploy schedule add NAME --cron '0 2 * * *' -- run NOTEBOOK"
    });
    this.node = h(
      'div',
      { class: 'nbdl-schedules-part' },
      h('h2', { class: 'nbdl-title nbdl-runs-title', text: 'Schedules' }),
      this.list,
      this.empty
    );
  }

  get size(): number {
    return this.items.size;
  }

  render(schedules: ISchedule[]): void {
    const names = new Set(schedules.map(s => s.name));
    for (const [name, item] of this.items) {
      if (!names.has(name)) {
        item.node.remove();
        this.items.delete(name);
      }
    }
    schedules.forEach((schedule, index) => {
      let item = this.items.get(schedule.name);
      if (item) {
        item.update(schedule);
      } else {
        item = new ScheduleItem(schedule, this.host);
        this.items.set(schedule.name, item);
      }
      if (this.list.children[index] !== item.node) {
        this.list.insertBefore(item.node, this.list.children[index] ?? null);
      }
    });
    this.empty.hidden = schedules.length > 0;
  }
}
