/**
 * Inputs for a notebook's typed parameters (nbdeploy.notebook.parameters type names):
 * the right input per type, the default filled in, a message under a value that does not fit.
 */
import { IParameter } from './api';
import { h } from './dom';

type Kind =
  | 'int'
  | 'float'
  | 'bool'
  | 'str'
  | 'date'
  | 'datetime'
  | 'list'
  | 'dict'
  | 'literal'
  | 'any';

interface IType {
  kind: Kind;
  optional: boolean;
  choices: unknown[];
}

/** "int | None" -> int, optional; "Literal['a', 'b']" -> literal with its choices. */
export function parseType(text: string): IType {
  let rest = (text || 'any').trim();
  let optional = false;
  const members = splitTop(rest, '|').map(part => part.trim());
  if (members.length > 1 && members.includes('None')) {
    optional = true;
    const others = members.filter(part => part !== 'None');
    rest = others.length === 1 ? others[0] : others.join(' | ');
  }
  if (splitTop(rest, '|').length > 1) {
    return { kind: 'any', optional, choices: [] };
  }
  const literal = /^Literal\[(.*)\]$/s.exec(rest);
  if (literal) {
    return { kind: 'literal', optional, choices: splitTop(literal[1], ',').map(parseLiteral) };
  }
  const base = rest.split('[')[0];
  switch (base) {
    case 'int':
    case 'float':
    case 'bool':
    case 'date':
    case 'datetime':
      return { kind: base, optional, choices: [] };
    case 'str':
    case 'Path':
      return { kind: 'str', optional, choices: [] };
    case 'list':
    case 'tuple':
      return { kind: 'list', optional, choices: [] };
    case 'dict':
      return { kind: 'dict', optional, choices: [] };
    case 'None':
      return { kind: 'any', optional: true, choices: [] };
    default:
      return { kind: 'any', optional, choices: [] };
  }
}

/** Split at `separator` outside brackets and quotes. */
function splitTop(text: string, separator: string): string[] {
  const parts: string[] = [];
  let depth = 0;
  let quote: string | null = null;
  let current = '';
  for (let i = 0; i < text.length; i++) {
    const char = text[i];
    if (quote) {
      current += char;
      if (char === '\\') {
        current += text[++i] ?? '';
      } else if (char === quote) {
        quote = null;
      }
      continue;
    }
    if (char === "'" || char === '"') {
      quote = char;
    } else if ('[({'.includes(char)) {
      depth++;
    } else if ('])}'.includes(char)) {
      depth--;
    } else if (char === separator && depth === 0) {
      parts.push(current);
      current = '';
      continue;
    }
    current += char;
  }
  if (current.trim()) {
    parts.push(current);
  }
  return parts;
}

function parseLiteral(text: string): unknown {
  const value = text.trim();
  if (/^'.*'$/s.test(value) || /^".*"$/s.test(value)) {
    return value.slice(1, -1).replace(/\\(.)/g, '$1');
  }
  if (value === 'True' || value === 'False') {
    return value === 'True';
  }
  if (value === 'None') {
    return null;
  }
  const number = Number(value);
  return Number.isNaN(number) ? value : number;
}

/** How a value shows in an input. */
function display(value: unknown, kind: Kind): string {
  if (value === null || value === undefined) {
    return '';
  }
  if (typeof value === 'string' && kind !== 'list' && kind !== 'dict') {
    return value;
  }
  if (kind === 'datetime' && typeof value === 'string') {
    return value.slice(0, 19);
  }
  return typeof value === 'string' ? value : JSON.stringify(value);
}

type Input = HTMLInputElement | HTMLSelectElement | HTMLTextAreaElement;

class Invalid extends Error {}

export class ParameterField {
  readonly node: HTMLDivElement;
  readonly input: Input;
  private readonly type: IType;
  private readonly message: HTMLDivElement;

  constructor(
    readonly parameter: IParameter,
    prefix: string
  ) {
    this.type = parseType(parameter.type);
    const id = `${prefix}-${parameter.name}`;
    this.input = this.makeInput(id);
    this.input.classList.add('nbdl-input');
    this.input.dataset.parameter = parameter.name;
    this.message = h('div', {
      class: 'nbdl-field-error',
      id: `${id}-error`,
      'aria-live': 'polite'
    });
    const help = parameter.help
      ? h('div', { class: 'nbdl-help', id: `${id}-help`, text: parameter.help })
      : null;
    this.input.setAttribute(
      'aria-describedby',
      [help ? `${id}-help` : '', `${id}-error`].filter(Boolean).join(' ')
    );
    const label = h(
      'label',
      { class: 'nbdl-label', for: id },
      h('span', { class: 'nbdl-param-name', text: parameter.name }),
      h('span', { class: 'nbdl-type', text: parameter.type || 'any' })
    );
    this.node = h(
      'div',
      {
        class: `nbdl-param nbdl-param-${this.type.kind}`,
        'data-name': parameter.name
      },
      label,
      this.input,
      help,
      this.message
    );
    const check = () => {
      this.validate();
    };
    this.input.addEventListener('input', check);
    this.input.addEventListener('change', check);
  }

  private makeInput(id: string): Input {
    const { kind, choices } = this.type;
    const initial = this.parameter.default;
    const name = this.parameter.name;
    if (kind === 'bool') {
      const input = h('input', { id, type: 'checkbox', name });
      input.checked = initial === true;
      return input;
    }
    if (kind === 'literal') {
      const select = h('select', { id, name, class: 'jp-mod-styled' });
      const options = this.type.optional && !choices.includes(null) ? [...choices, null] : choices;
      options.forEach((choice, index) => {
        const option = h('option', {
          value: String(index),
          text: choice === null ? 'None' : display(choice, 'any')
        });
        if (JSON.stringify(choice) === JSON.stringify(initial)) {
          option.selected = true;
        }
        select.append(option);
      });
      return select;
    }
    if (kind === 'list' || kind === 'dict') {
      const area = h('textarea', { id, name, rows: 2, spellcheck: 'false' });
      area.value = display(initial, kind);
      area.placeholder = kind === 'list' ? '[1, 2, 3]' : '{"key": "value"}';
      return area;
    }
    // Numbers are text fields with a numeric keyboard: a browser's number field hides what
    // was typed when it is not a number ("lots" reads as empty), and the check below must
    // see it to refuse it.
    const type = kind === 'date' ? 'date' : kind === 'datetime' ? 'datetime-local' : 'text';
    const input = h('input', { id, name, type, class: 'jp-mod-styled' });
    if (kind === 'int') {
      input.inputMode = 'numeric';
    } else if (kind === 'float') {
      input.inputMode = 'decimal';
    } else if (kind === 'datetime') {
      input.step = '1';
    }
    input.value = display(initial, kind);
    if (this.type.optional) {
      input.placeholder = 'None';
    }
    return input;
  }

  /** The value as the parameter's type; throws Invalid with words for the user. */
  private read(): unknown {
    const { kind, optional, choices } = this.type;
    const input = this.input;
    if (kind === 'bool') {
      return (input as HTMLInputElement).checked;
    }
    if (kind === 'literal') {
      const options =
        this.type.optional && !choices.includes(null) ? [...choices, null] : choices;
      return options[Number(input.value)];
    }
    const raw = input.value;
    const text = raw.trim();
    if (text === '' && optional) {
      return null;
    }
    switch (kind) {
      case 'int': {
        if (!/^[-+]?\d+$/.test(text)) {
          throw new Invalid('enter a whole number (int)');
        }
        return Number(text);
      }
      case 'float': {
        const number = Number(text);
        if (!/^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/.test(text) || !Number.isFinite(number)) {
          throw new Invalid('enter a number (float), e.g. 0.25');
        }
        return number;
      }
      case 'date':
        if (!/^\d{4}-\d{2}-\d{2}$/.test(text)) {
          throw new Invalid('enter a date (YYYY-MM-DD)');
        }
        return text;
      case 'datetime':
        if (Number.isNaN(Date.parse(text))) {
          throw new Invalid('enter a date and time');
        }
        return text;
      case 'list':
      case 'dict': {
        let value: unknown;
        try {
          value = JSON.parse(text);
        } catch {
          throw new Invalid(
            kind === 'list' ? 'enter a JSON list, e.g. [1, 2, 3]' : 'enter a JSON object, e.g. {"a": 1}'
          );
        }
        if (kind === 'list' && !Array.isArray(value)) {
          throw new Invalid('enter a list in brackets, e.g. [1, 2, 3]');
        }
        if (kind === 'dict' && (typeof value !== 'object' || value === null || Array.isArray(value))) {
          throw new Invalid('enter an object in braces, e.g. {"a": 1}');
        }
        return value;
      }
      case 'str':
        return raw;
      default:
        // any: JSON when it reads as JSON (numbers, lists, true), otherwise the text
        try {
          return JSON.parse(text);
        } catch {
          return raw;
        }
    }
  }

  /** Check the value; shows or clears the message. */
  validate(): boolean {
    try {
      this.read();
      this.showError(null);
      return true;
    } catch (error) {
      if (error instanceof Invalid) {
        this.showError(`${this.parameter.name}: ${error.message}`);
        return false;
      }
      throw error;
    }
  }

  showError(message: string | null): void {
    // The field's own validity too: JupyterLab's dialog keeps its accept button disabled
    // while a field of its body is invalid.
    (this.input as HTMLInputElement).setCustomValidity?.(message ?? '');
    this.message.textContent = message ?? '';
    this.node.classList.toggle('nbdl-invalid', message !== null);
    if (message === null) {
      this.input.removeAttribute('aria-invalid');
    } else {
      this.input.setAttribute('aria-invalid', 'true');
    }
  }

  /** The value when it differs from the default, else undefined (the notebook's own). */
  changed(): unknown {
    const value = this.read();
    const initial = this.parameter.default;
    if (this.type.kind === 'str' && (initial === null || initial === undefined) && value === '') {
      return undefined;
    }
    if (this.type.kind === 'any' && typeof initial === 'string' && value !== initial) {
      // a default given as source text (an expression): unchanged when the text is
      if (display(initial, 'any') === this.input.value) {
        return undefined;
      }
    }
    return JSON.stringify(value) === JSON.stringify(initial) ? undefined : value;
  }
}

/** All the fields of a notebook's parameters. */
export class ParameterForm {
  readonly node: HTMLFieldSetElement;
  readonly fields: ParameterField[];

  constructor(parameters: IParameter[], prefix: string, note?: string) {
    this.fields = parameters.map(parameter => new ParameterField(parameter, prefix));
    this.node = h(
      'fieldset',
      { class: 'nbdl-params' },
      h('legend', { text: 'Parameters' }),
      ...this.fields.map(field => field.node)
    );
    if (!parameters.length) {
      this.node.append(
        h('p', {
          class: 'nbdl-muted',
          text: note ?? 'This notebook declares no parameters (a cell tagged "parameters").'
        })
      );
    }
  }

  /** The changed values, or null when none changed; undefined when a value is invalid. */
  values(): Record<string, unknown> | null | undefined {
    let valid = true;
    let first: ParameterField | null = null;
    const values: Record<string, unknown> = {};
    for (const field of this.fields) {
      if (!field.validate()) {
        valid = false;
        first = first ?? field;
        continue;
      }
      const value = field.changed();
      if (value !== undefined) {
        values[field.parameter.name] = value;
      }
    }
    if (!valid) {
      first?.input.focus();
      return undefined;
    }
    return Object.keys(values).length ? values : null;
  }

  /** No field shows an error (each checks itself as it is edited). */
  isValid(): boolean {
    return this.fields.every(field => !field.node.classList.contains('nbdl-invalid'));
  }

  /** Show a server's message at its parameter when it names one; true when it did. */
  showServerError(message: string): boolean {
    for (const field of this.fields) {
      if (new RegExp(`\\b${field.parameter.name}\\b`).test(message)) {
        field.showError(message);
        field.input.focus();
        return true;
      }
    }
    return false;
  }
}
