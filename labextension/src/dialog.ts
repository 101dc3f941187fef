/**
 * The "Deploy" and "Run pipeline" dialogs: a form built from the notebook's typed
 * parameters; on submit the dialog stays open and shows the operation's progress, then
 * its result or its error in words (a value the server refuses is shown at its field).
 */
import { Dialog } from '@jupyterlab/apputils';
import { Widget } from '@lumino/widgets';

import {
  api,
  ApiError,
  describeError,
  FunctionInfo,
  INotebookParams,
  IOperation,
  STRATEGIES
} from './api';
import { formatValue, h } from './dom';
import { ParameterForm } from './form';

const POLL_MS = 1000;

const STRATEGY_HELP: Record<string, string> = {
  'blue-green':
    'start the new version beside the live one, check it, switch all traffic at once; the old one stays warm for rollback',
  recreate: 'stop the old version first (a moment without service)',
  canary: 'a growing share of traffic while it answers as well as the live version',
  ab: 'split traffic between the versions and compare their outcomes',
  shadow: 'mirror requests to the new version; only the live one answers'
};

type Kind = 'deploy' | 'run';

let counter = 0;

/** The body of a dialog: the form, then the operation's progress and outcome. */
export class OperationBody extends Widget {
  /** Set when the operation succeeded: the dialog's accept button closes it then. */
  finished = false;
  private running = false;
  private form: ParameterForm | null = null;
  private functionSelect: HTMLSelectElement | null = null;
  private nameInput: HTMLInputElement | null = null;
  private strategySelect: HTMLSelectElement | null = null;
  private referenceSelect: HTMLSelectElement | null = null;
  private mlflowInput: HTMLInputElement | null = null;
  private readonly formArea: HTMLDivElement;
  private readonly progress: HTMLProgressElement;
  private readonly stepText: HTMLSpanElement;
  private readonly log: HTMLOListElement;
  private readonly outcome: HTMLDivElement;
  private readonly progressArea: HTMLDivElement;
  private readonly prefix: string;
  private loaded = false;
  /** Buttons of the enclosing dialog, found once it is attached. */
  dialog: OperationDialog | null = null;

  constructor(
    readonly kind: Kind,
    readonly path: string,
    private readonly onDone: (operation: IOperation) => void
  ) {
    super();
    this.prefix = `nbdl-${kind}-${++counter}`;
    this.addClass('nbdl-dialog');
    this.addClass(`nbdl-dialog-${kind}`);
    this.formArea = h(
      'div',
      { class: 'nbdl-form', 'aria-busy': 'true' },
      h('p', { class: 'nbdl-muted', text: 'Reading the notebook’s parameters…' })
    );
    this.progress = h('progress', {
      class: 'nbdl-progress',
      'aria-label': kind === 'deploy' ? 'deploy progress' : 'run progress'
    });
    this.stepText = h('span', { class: 'nbdl-step' });
    this.log = h('ol', { class: 'nbdl-log', 'aria-label': 'messages' });
    this.outcome = h('div', { class: 'nbdl-outcome', 'aria-live': 'polite' });
    this.progressArea = h(
      'div',
      { class: 'nbdl-progress-area', hidden: true, role: 'status' },
      h('div', { class: 'nbdl-progress-row' }, this.progress, this.stepText),
      this.log
    );
    this.node.append(
      h('div', { class: 'nbdl-path', text: path }),
      this.formArea,
      this.progressArea,
      this.outcome
    );
    void this.load();
  }

  private async load(): Promise<void> {
    let info: INotebookParams;
    if (/\.ya?ml$/i.test(this.path)) {
      // A pipeline file: its steps' notebooks and parameters are in the file itself.
      info = { path: this.path, parameters: [], functions: [] };
      this.showForm(info, 'A pipeline: each step runs its notebook with the parameters the file gives it.');
      return;
    }
    try {
      info = await api.params(this.path);
    } catch (error) {
      this.formArea.replaceChildren(
        h('p', {
          class: 'nbdl-error-text',
          role: 'alert',
          text: `Could not read ${this.path}: ${describeError(error)}`
        })
      );
      this.formArea.removeAttribute('aria-busy');
      return;
    }
    this.showForm(info);
  }

  /** The form of a notebook's parameters (none for a pipeline file: ``note`` says why). */
  private showForm(info: INotebookParams, note?: string): void {
    this.form = new ParameterForm(info.parameters, this.prefix, note);
    const children: HTMLElement[] = [];
    if (this.kind === 'deploy') {
      children.push(this.deployOptions(info.functions, info.references ?? []));
    }
    children.push(this.form.node);
    if (this.kind === 'run') {
      this.mlflowInput = h('input', { type: 'checkbox', id: `${this.prefix}-mlflow` });
      this.mlflowInput.checked = true;
    }
    if (this.mlflowInput) {
      children.push(
        h(
          'label',
          { class: 'nbdl-check', for: this.mlflowInput.id },
          this.mlflowInput,
          h('span', { text: 'record in MLflow' })
        )
      );
    }
    this.formArea.replaceChildren(...children);
    this.formArea.removeAttribute('aria-busy');
    this.loaded = true;
    // The accept button (Deploy, Run) only while every value fits its parameter.
    const refresh = () => {
      if (!this.running && !this.finished) {
        this.dialog?.setAcceptEnabled(this.form?.isValid() ?? true);
      }
    };
    this.formArea.addEventListener('input', refresh);
    this.formArea.addEventListener('change', refresh);
    const first = this.formArea.querySelector<HTMLElement>('input, select, textarea');
    first?.focus();
  }

  private deployOptions(functions: FunctionInfo[], references: string[]): HTMLElement {
    const names = functions.map(f => (typeof f === 'string' ? f : f.name));
    const id = (part: string) => `${this.prefix}-${part}`;
    this.functionSelect = h('select', { id: id('function'), class: 'jp-mod-styled' });
    if (!names.length) {
      this.functionSelect.append(
        h('option', { value: '', text: 'the cell tagged nbdeploy:serve' })
      );
    }
    names.forEach((name, index) => {
      this.functionSelect?.append(
        h('option', { value: name, text: index === 0 ? `${name} (default)` : name })
      );
    });
    this.nameInput = h('input', {
      id: id('name'),
      type: 'text',
      class: 'jp-mod-styled',
      placeholder: 'the function’s name',
      pattern: '[a-z0-9][a-z0-9-]{0,39}',
      spellcheck: 'false',
      'aria-describedby': id('name-help')
    });
    this.strategySelect = h('select', {
      id: id('strategy'),
      class: 'jp-mod-styled',
      'aria-describedby': id('strategy-help')
    });
    for (const strategy of STRATEGIES) {
      this.strategySelect.append(h('option', { value: strategy, text: strategy }));
    }
    const strategyHelp = h('div', {
      class: 'nbdl-help',
      id: id('strategy-help'),
      text: STRATEGY_HELP['blue-green']
    });
    this.strategySelect.addEventListener('change', () => {
      strategyHelp.textContent = STRATEGY_HELP[this.strategySelect?.value ?? ''] ?? '';
    });
    this.referenceSelect = h('select', {
      id: id('reference'),
      class: 'jp-mod-styled',
      'aria-describedby': id('reference-help')
    });
    this.referenceSelect.append(h('option', { value: '', text: 'none' }));
    const likely = references.find(name => /train/i.test(name));
    for (const name of references) {
      const option = h('option', { value: name, text: name });
      option.selected = name === likely;
      this.referenceSelect.append(option);
    }
    this.mlflowInput = h('input', { type: 'checkbox', id: id('mlflow') });
    this.mlflowInput.checked = true;
    const row = (label: string, input: HTMLElement, ...rest: HTMLElement[]) =>
      h(
        'div',
        { class: 'nbdl-option' },
        h('label', { class: 'nbdl-label', for: input.id, text: label }),
        input,
        ...rest
      );
    return h(
      'fieldset',
      { class: 'nbdl-deploy-options' },
      h('legend', { text: 'Service' }),
      row('function', this.functionSelect),
      row(
        'name',
        this.nameInput,
        h('div', {
          class: 'nbdl-help',
          id: id('name-help'),
          text: 'the deployment to create or update (a-z, 0-9, -); empty: the function’s name'
        }),
        h('div', { class: 'nbdl-field-error', id: id('name-error'), 'aria-live': 'polite' })
      ),
      row('strategy', this.strategySelect, strategyHelp),
      row(
        'reference',
        this.referenceSelect,
        h('div', {
          class: 'nbdl-help',
          id: id('reference-help'),
          text: 'the training inputs (a DataFrame or array): requests are checked against them and drift is watched; none: neither'
        })
      )
    );
  }

  /** Start the operation (the dialog's accept button); it stays open to show progress.
   * ``replace``: the user agreed to take over a name another notebook serves. */
  async start(replace = false): Promise<void> {
    if (this.running || !this.loaded || !this.form) {
      return;
    }
    const parameters = this.form.values();
    if (parameters === undefined) {
      this.say('Some values do not fit their parameter: see the messages above.', true);
      return;
    }
    const nameError = this.node.querySelector<HTMLElement>(`#${this.prefix}-name-error`);
    const name = this.nameInput?.value.trim() ?? '';
    if (this.nameInput && name && !/^[a-z0-9][a-z0-9-]{0,39}$/.test(name)) {
      const message = 'name: 1 to 40 of a-z, 0-9 and -, starting with a letter or digit';
      if (nameError) {
        nameError.textContent = message;
      }
      this.nameInput.setAttribute('aria-invalid', 'true');
      this.nameInput.focus();
      this.say(message, true);
      return;
    }
    if (nameError) {
      nameError.textContent = '';
    }
    this.nameInput?.removeAttribute('aria-invalid');
    this.setRunning(true);
    this.say('');
    this.log.replaceChildren();
    this.progressArea.hidden = false;
    this.progress.removeAttribute('value');
    this.stepText.textContent = 'starting…';
    this.progressArea.scrollIntoView({ block: 'nearest' }); // where the user is looking
    let operation: IOperation;
    try {
      const mlflow = this.mlflowInput?.checked ?? true;
      if (this.kind === 'deploy') {
        ({ operation } = await api.deploy({
          path: this.path,
          name: name || null,
          function: this.functionSelect?.value || null,
          parameters,
          strategy: this.strategySelect?.value || null,
          reference: this.referenceSelect?.value || null,
          ...(mlflow ? {} : { mlflow: false }),
          ...(replace ? { replace: true } : {})
        }));
      } else {
        ({ operation } = await api.run({
          path: this.path,
          parameters,
          sweep: null,
          ...(mlflow ? {} : { mlflow: false })
        }));
      }
    } catch (error) {
      this.progressArea.hidden = true;
      this.setRunning(false);
      if (error instanceof ApiError && error.status === 409 && error.field === 'replace') {
        // The name is served from another notebook: ask before taking it over (here, in
        // this dialog: JupyterLab shows a second dialog only once this one has closed).
        const replace = await this.ask(
          `Replace the deployment? ${error.message}. Deploying replaces it with a version from this notebook.`,
          'Replace',
          'Replace the deployment'
        );
        if (replace) {
          return this.start(true);
        }
        this.say(`Not deployed: ${describeError(error)}`, true);
        return;
      }
      if (error instanceof ApiError && error.field === 'parameters') {
        this.form.showServerError(error.message);
      } else if (error instanceof ApiError && error.field === 'name' && nameError) {
        nameError.textContent = error.message;
        this.nameInput?.focus();
      }
      this.say(describeError(error), true);
      return;
    }
    await this.follow(operation);
  }

  /** Poll the operation until it ends. */
  private async follow(operation: IOperation): Promise<void> {
    let current = operation;
    while (current.status === 'running' && !this.isDisposed) {
      this.showOperation(current);
      await new Promise(resolve => window.setTimeout(resolve, POLL_MS));
      if (this.isDisposed) {
        break;
      }
      try {
        current = await api.operation(current.id);
      } catch (error) {
        this.say(`Lost track of the operation: ${describeError(error)}`, true);
        this.setRunning(false);
        return;
      }
    }
    this.onDone(current);
    if (this.isDisposed) {
      return;
    }
    this.showOperation(current);
    this.setRunning(false);
    if (current.status === 'succeeded') {
      this.finished = true;
      this.progress.max = 1;
      this.progress.value = 1;
      this.stepText.textContent = 'done';
      this.outcome.replaceChildren(this.describeResult(current.result));
      this.outcome.scrollIntoView({ block: 'nearest' });
      this.outcome.classList.add('nbdl-success');
      this.dialog?.setAcceptLabel('Close');
    } else {
      const error = current.error;
      const text = error
        ? error.hint
          ? `${error.error}. ${error.hint}`
          : error.error
        : 'The operation failed';
      this.stepText.textContent = 'failed';
      this.say(text, true);
    }
  }

  private showOperation(operation: IOperation): void {
    const step = Number(operation.step ?? 0);
    const steps = Number(operation.steps ?? 0);
    if (steps > 0) {
      this.progress.max = steps;
      this.progress.value = Math.min(step, steps);
      this.stepText.textContent = `${Math.min(step, steps)} of ${steps}`;
    } else {
      this.stepText.textContent = this.kind === 'deploy' ? 'deploying…' : 'running…';
    }
    const messages = operation.messages ?? [];
    while (this.log.children.length < messages.length) {
      this.log.append(h('li', { text: messages[this.log.children.length] }));
    }
    this.log.scrollTop = this.log.scrollHeight;
  }

  private describeResult(result: unknown): HTMLElement {
    const data = (typeof result === 'object' && result !== null ? result : {}) as Record<
      string,
      unknown
    >;
    if (this.kind === 'deploy') {
      const name = typeof data.name === 'string' ? data.name : '';
      const version = data.version ?? data.live_version;
      const url = typeof data.url === 'string' ? data.url : '';
      const head = `${name}${version !== undefined && version !== null ? ` v${version}` : ''} is serving`;
      return h(
        'p',
        {},
        head,
        url ? ' at ' : '',
        url ? h('a', { href: url, target: '_blank', rel: 'noopener noreferrer', text: url }) : ''
      );
    }
    if (data.kind === 'pipeline' && Array.isArray(data.steps)) {
      const steps = data.steps as Array<Record<string, unknown>>;
      const done = steps.filter(step => step.status === 'succeeded' || step.status === 'cached').length;
      return h(
        'p',
        {},
        `pipeline ${String(data.pipeline ?? '')} succeeded: ${done} of ${steps.length} steps (` +
          steps.map(step => `${String(step.step)} ${String(step.status)}`).join(' · ') +
          ')'
      );
    }
    const id = typeof data.id === 'string' ? data.id : '';
    const status = typeof data.status === 'string' ? data.status : 'succeeded';
    const metrics = data.metrics && typeof data.metrics === 'object' ? data.metrics : {};
    const shown = Object.entries(metrics as Record<string, unknown>)
      .map(([key, value]) => `${key} ${formatValue(value)}`)
      .join(' · ');
    return h('p', {}, `run ${id} ${status}${shown ? `: ${shown}` : ''}`.replace('  ', ' '));
  }

  /** A question in the dialog's outcome area, answered by one of two buttons. */
  private ask(question: string, yes: string, yesLabel: string): Promise<boolean> {
    return new Promise(resolve => {
      const answer = (value: boolean) => () => {
        this.outcome.replaceChildren();
        resolve(value);
      };
      const confirm = h('button', {
        class: 'jp-mod-styled jp-mod-warn nbdl-ask-yes',
        type: 'button',
        'aria-label': yesLabel,
        text: yes
      });
      const cancel = h('button', { class: 'jp-mod-styled nbdl-ask-no', type: 'button', text: 'Cancel' });
      confirm.addEventListener('click', answer(true));
      cancel.addEventListener('click', answer(false));
      this.outcome.classList.remove('nbdl-success');
      this.outcome.replaceChildren(
        h('div', { class: 'nbdl-ask', role: 'alertdialog', 'aria-label': question }, h('p', { text: question }), confirm, cancel)
      );
      this.outcome.scrollIntoView({ block: 'nearest' });
      confirm.focus();
    });
  }

  private say(text: string, error = false): void {
    this.outcome.classList.remove('nbdl-success');
    this.outcome.replaceChildren(
      text ? h('p', { class: error ? 'nbdl-error-text' : '', role: error ? 'alert' : null, text }) : ''
    );
    if (text) {
      this.outcome.scrollIntoView({ block: 'nearest' });
    }
  }

  private setRunning(running: boolean): void {
    this.running = running;
    this.formArea.querySelectorAll<HTMLInputElement>('input, select, textarea').forEach(input => {
      input.disabled = running;
    });
    this.dialog?.setAcceptEnabled(!running);
    this.node.setAttribute('aria-busy', running ? 'true' : 'false');
  }
}

/** A dialog whose accept button starts the operation instead of closing. */
export class OperationDialog extends Dialog<void> {
  private readonly acceptIndex: number;

  constructor(
    private readonly operationBody: OperationBody,
    title: string,
    acceptLabel: string
  ) {
    const buttons = [
      Dialog.cancelButton({ label: 'Close', ariaLabel: 'Close this dialog' }),
      Dialog.okButton({ label: acceptLabel, ariaLabel: acceptLabel })
    ];
    super({ title, body: operationBody, buttons, defaultButton: 1, focusNodeSelector: 'input' });
    this.acceptIndex = 1;
    this.addClass('nbdl-operation-dialog');
    operationBody.dialog = this;
  }

  resolve(index?: number): void {
    const chosen = index ?? this.acceptIndex;
    if (chosen === this.acceptIndex && !this.operationBody.finished) {
      void this.operationBody.start();
      return;
    }
    super.resolve(index);
  }

  private acceptButton(): HTMLButtonElement | null {
    return this.node.querySelector<HTMLButtonElement>('.jp-Dialog-footer .jp-mod-accept');
  }

  setAcceptEnabled(enabled: boolean): void {
    const button = this.acceptButton();
    if (button) {
      button.disabled = !enabled;
    }
  }

  setAcceptLabel(label: string): void {
    const button = this.acceptButton();
    if (!button) {
      return;
    }
    const text = button.querySelector('.jp-Dialog-buttonLabel') ?? button;
    text.textContent = label;
    button.setAttribute('aria-label', label);
    button.title = label;
    button.focus();
  }
}

/** Open the dialog for `path`; resolves when it closes. */
export async function openOperationDialog(
  kind: Kind,
  path: string,
  onDone: (operation: IOperation) => void
): Promise<void> {
  const body = new OperationBody(kind, path, onDone);
  const name = path.split('/').pop() ?? path;
  const dialog =
    kind === 'deploy'
      ? new OperationDialog(body, `Deploy ${name}`, 'Deploy')
      : new OperationDialog(body, `Run ${name}`, 'Run');
  await dialog.launch();
}
