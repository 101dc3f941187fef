/**
 * Small helpers for building the panel's DOM by hand (no framework: the views are lists
 * of cards updated in place, so that focus and selection survive a refresh).
 */
import { Clipboard } from '@jupyterlab/apputils';

type Attributes = Record<string, string | number | boolean | null | undefined>;

/** An element with classes, attributes and children; `null` attributes are left out. */
export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attributes: Attributes = {},
  ...children: Array<Node | string | null | undefined>
): HTMLElementTagNameMap[K] {
  const element = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) {
      continue;
    }
    if (key === 'class') {
      element.className = String(value);
    } else if (key === 'text') {
      element.textContent = String(value);
    } else {
      element.setAttribute(key, value === true ? '' : String(value));
    }
  }
  for (const child of children) {
    if (child !== null && child !== undefined) {
      element.append(child);
    }
  }
  return element;
}

/** Replace the text of an element only when it changed (no flicker, no lost selection). */
export function setText(element: Element, value: string): void {
  if (element.textContent !== value) {
    element.textContent = value;
  }
}

/** Copy text to the clipboard; the button says "copied" for a moment. */
export async function copyText(text: string, button?: HTMLButtonElement): Promise<void> {
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    Clipboard.copyToSystem(text);
  }
  if (button) {
    const label = button.dataset.label ?? button.textContent ?? 'copy';
    button.dataset.label = label;
    button.textContent = 'copied';
    window.setTimeout(() => {
      button.textContent = label;
    }, 1500);
  }
}

/** A "copy" button for `value()` with an accessible name. */
export function copyButton(ariaLabel: string, value: () => string): HTMLButtonElement {
  const button = h('button', {
    class: 'nbdl-copy jp-mod-styled',
    type: 'button',
    'aria-label': ariaLabel,
    title: ariaLabel,
    text: 'copy'
  });
  button.addEventListener('click', () => void copyText(value(), button));
  return button;
}

export function formatNumber(value: number | null | undefined, digits = 1): string {
  if (value === null || value === undefined || Number.isNaN(value)) {
    return '–';
  }
  if (Number.isInteger(value)) {
    return String(value);
  }
  return value.toFixed(digits);
}

export function formatPercent(rate: number | null | undefined): string {
  if (rate === null || rate === undefined || Number.isNaN(rate)) {
    return '–';
  }
  const percent = rate * 100;
  return `${percent < 10 && percent !== 0 ? percent.toFixed(1) : Math.round(percent)}%`;
}

export function formatMs(value: number | null | undefined): string {
  return value === null || value === undefined ? '–' : `${formatNumber(value, 1)} ms`;
}

/** Unix seconds, milliseconds or an ISO text as "12 s ago", "3 min ago", or a date. */
export function timeAgo(value: number | string | null | undefined): string {
  if (value === null || value === undefined || value === '') {
    return '';
  }
  let millis: number;
  if (typeof value === 'number') {
    millis = value > 1e12 ? value : value * 1000;
  } else {
    millis = Date.parse(value);
  }
  if (Number.isNaN(millis)) {
    return String(value);
  }
  const seconds = Math.max(0, (Date.now() - millis) / 1000);
  if (seconds < 60) {
    return `${Math.round(seconds)} s ago`;
  }
  if (seconds < 3600) {
    return `${Math.round(seconds / 60)} min ago`;
  }
  if (seconds < 86400) {
    return `${Math.round(seconds / 3600)} h ago`;
  }
  return new Date(millis).toLocaleString();
}

/** A value of a parameter or a metric, short. */
export function formatValue(value: unknown): string {
  if (typeof value === 'number') {
    return Number.isInteger(value) ? String(value) : String(Number(value.toPrecision(4)));
  }
  if (typeof value === 'string') {
    return value === '' ? '""' : value;
  }
  return JSON.stringify(value);
}
