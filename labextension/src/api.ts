/**
 * The nbdeploy REST API of the Jupyter Server extension (under `nbdeploy/api/`), typed.
 * Every call goes through ServerConnection.makeRequest, so the token, cookies and the
 * XSRF header are handled by JupyterLab.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

export type DeploymentStatus = 'serving' | 'stopped' | 'failed' | string;

export interface ISummary {
  requests_per_s: number | null;
  p99_ms: number | null;
  error_rate: number | null;
  requests: number | null;
  /** The window the figures are over ("10m"). */
  window?: string;
}

/** What the latest rollout's canary did (nbdeploy.deployment.verbs.rollout_notice). */
export interface IRolloutNotice {
  kind: 'canary' | string;
  version: number;
  status: 'running' | 'promoted' | 'rolled back' | 'superseded' | string;
  reason: string | null;
  /** The line every view shows, e.g. "canary v8: running at 25% (step 2 of 4)". */
  text: string;
}

export interface IDeployment {
  name: string;
  status: DeploymentStatus;
  notice?: IRolloutNotice | null;
  live_version: number | null;
  url: string | null;
  strategy: string | null;
  traffic: string | null;
  updated_at: number | string | null;
  servers: unknown[];
  summary: ISummary | null;
}

export interface IVersion {
  version: number;
  created_at: number | string | null;
  function: string | null;
  requirements: unknown;
  bento_tag: string | null;
  source: unknown;
}

export interface IDeploymentDetail extends IDeployment {
  versions: IVersion[];
  rollout: Record<string, unknown> | null;
  /** The version a rollback serves by default (the one before the live one). */
  rollback_to?: number | null;
}

export interface IRun {
  id: string;
  notebook: string;
  status: string;
  parameters: Record<string, unknown>;
  metrics: Record<string, number | null>;
  output_path: string | null;
  created_at?: number | null;
  started_at?: number | null;
  finished_at?: number | null;
  error?: Record<string, unknown> | null;
  /** "notebook" (nbdeploy run), "batch" (nbdeploy batch) or "schedule" (a schedule's fire). */
  kind?: string;
  /** A pipeline's step, or the schedule a fire belongs to. */
  step?: string | null;
  /** The schedule fire that started this run, if any. */
  trigger_id?: string | null;
}

export interface IParameter {
  name: string;
  type: string;
  default: unknown;
  help: string;
}

export type FunctionInfo = string | { name: string; [key: string]: unknown };

export interface INotebookParams {
  path: string;
  parameters: IParameter[];
  functions: FunctionInfo[];
  /** Variables the notebook assigns that could hold its training inputs, likeliest first. */
  references?: string[];
}

export interface IOperation {
  id: string;
  kind: string;
  status: 'running' | 'succeeded' | 'failed' | string;
  messages: string[];
  step: number | string | null;
  steps: number | null;
  result: unknown;
  error: { error: string; hint?: string | null; field?: string | null } | null;
}

export interface IDeployRequest {
  path: string;
  name: string | null;
  function: string | null;
  parameters: Record<string, unknown> | null;
  strategy: string | null;
  /** Record the notebook run and the version in MLflow (the server's default: true). */
  mlflow?: boolean;
  /** Take over a name another notebook serves (the server refuses with 409 otherwise). */
  replace?: boolean;
  /** The variable with the training inputs: drift and input-quality monitoring. */
  reference?: string | null;
}

export interface IRunRequest {
  path: string;
  parameters: Record<string, unknown> | null;
  sweep: Record<string, unknown[]> | null;
  mlflow?: boolean;
}

/** The metrics snapshot of one deployment (nbdeploy.monitor.metrics.snapshot). */
export interface IMetrics {
  name?: string;
  status?: string;
  live_version?: number | null;
  url?: string | null;
  split?: unknown;
  window_seconds?: number;
  requests?: number | null;
  requests_per_second?: number | null;
  error_rate?: number | null;
  client_error_rate?: number | null;
  latency?: Record<string, number | null>;
  versions?: Record<string, Record<string, number | null>>;
  series?: Array<Record<string, number | null>>;
  missing?: Record<string, number | null>;
  type_errors?: Record<string, number | null>;
  out_of_range?: Record<string, number | null>;
  drift?: Record<string, Record<string, number | string | null>>;
  drift_status?: string | null;
  rows?: number;
  /** Per endpoint: requests, error and refusal rates, latency percentiles. */
  endpoints?: Record<string, Record<string, number | null>>;
  /** Per endpoint of the live version: what clients sent that did not fit the reference. */
  findings?: Record<string, IFindings>;
  [key: string]: unknown;
}

export interface IFindings {
  rows?: number;
  unreadable_bodies?: number;
  misfit_rows?: number;
  misfit_predictions?: number;
  drift_status?: string | null;
  note?: string | null;
}

/** A schedule (nbdeploy schedule list --json). */
export interface ISchedule {
  name: string;
  status: 'active' | 'paused' | string;
  command: string;
  cron: string | null;
  tz: string;
  on: string | null;
  next_fire: string | null;
  last_status: string | null;
  last_error: string | null;
  /** Its last fire failed (after its retries): shown red. */
  failing: boolean;
}

/** One fire of a schedule (nbdeploy schedule history NAME --json). */
export interface IFire {
  run_id: string;
  status: string;
  started_at: number | null;
  finished_at: number | null;
  scheduled_for: number | null;
  attempt: number;
  trigger: string | null;
  /** The runs its command made (a notebook run, a pipeline's steps, a batch job). */
  runs: string[];
  error: string | null;
}

export type ScheduleAction = 'pause' | 'resume' | 'run-now' | 'remove';

/** The strategies nbdeploy.deployment.options.STRATEGIES knows, the default first. */
export const STRATEGIES = ['blue-green', 'recreate', 'canary', 'ab', 'shadow'] as const;

/** An answer of the API that is not a success, in words. */
export class ApiError extends Error {
  constructor(
    message: string,
    readonly status: number,
    readonly field: string | null = null,
    readonly hint: string | null = null
  ) {
    super(message);
    this.name = 'ApiError';
  }

  /** The message and its hint, one sentence after the other. */
  describe(): string {
    return this.hint ? `${this.message}. ${this.hint}` : this.message;
  }
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function text(value: unknown): string | null {
  return typeof value === 'string' && value ? value : null;
}

/** Call `nbdeploy/api/<endpoint>`; JSON in, JSON out; an ApiError for anything else. */
export async function requestAPI<T>(
  endpoint: string,
  init: RequestInit = {},
  settings: ServerConnection.ISettings = ServerConnection.makeSettings()
): Promise<T> {
  const url = URLExt.join(settings.baseUrl, 'nbdeploy', 'api', endpoint);
  if (init.body !== undefined && init.body !== null) {
    init = { ...init, headers: { 'Content-Type': 'application/json', ...init.headers } };
  }
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, init, settings);
  } catch (error) {
    const reason = error instanceof Error ? error.message : String(error);
    throw new ApiError(`Could not reach the Jupyter server (${reason})`, 0);
  }
  const body = await response.text();
  let data: unknown = null;
  if (body) {
    try {
      data = JSON.parse(body);
    } catch {
      data = body;
    }
  }
  if (!response.ok) {
    if (isRecord(data)) {
      throw new ApiError(
        text(data.error) ?? text(data.message) ?? `${response.status} ${response.statusText}`,
        response.status,
        text(data.field),
        text(data.hint)
      );
    }
    if (response.status === 404) {
      throw new ApiError(
        'The nbdeploy server extension does not answer',
        404,
        null,
        'Is nbdeploy installed in the environment of this Jupyter server? Restart JupyterLab after installing it'
      );
    }
    throw new ApiError(
      `${response.status} ${response.statusText}`.trim() || 'The request failed',
      response.status
    );
  }
  return data as T;
}

function post<T>(endpoint: string, body: unknown = {}): Promise<T> {
  return requestAPI<T>(endpoint, { method: 'POST', body: JSON.stringify(body) });
}

const enc = encodeURIComponent;

export const api = {
  deployments: (): Promise<IDeployment[]> => requestAPI<IDeployment[]>('deployments'),
  deployment: (name: string): Promise<IDeploymentDetail> =>
    requestAPI<IDeploymentDetail>(`deployments/${enc(name)}`),
  deploy: (request: IDeployRequest): Promise<{ operation: IOperation }> =>
    post('deployments', request),
  stop: (name: string): Promise<IDeployment> => post(`deployments/${enc(name)}/stop`),
  rollback: (name: string, to?: number): Promise<IDeployment> =>
    post(`deployments/${enc(name)}/rollback`, to ? { to } : {}),
  promote: (name: string): Promise<IDeployment> => post(`deployments/${enc(name)}/promote`),
  weights: (name: string, weights: Record<string, number>): Promise<IDeployment> =>
    post(`deployments/${enc(name)}/weights`, { weights }),
  metrics: (name: string, window = '10m'): Promise<IMetrics> =>
    requestAPI<IMetrics>(`deployments/${enc(name)}/metrics?window=${enc(window)}`),
  runs: (limit = 20): Promise<IRun[]> => requestAPI<IRun[]>(`runs?limit=${limit}`),
  run: (request: IRunRequest): Promise<{ operation: IOperation }> => post('runs', request),
  params: (path: string): Promise<INotebookParams> =>
    requestAPI<INotebookParams>(`notebooks/params?path=${enc(path)}`),
  operation: (id: string): Promise<IOperation> => requestAPI<IOperation>(`operations/${enc(id)}`),
  schedules: (): Promise<ISchedule[]> => requestAPI<ISchedule[]>('schedules'),
  scheduleHistory: (name: string, limit = 10): Promise<IFire[]> =>
    requestAPI<IFire[]>(`schedules/${enc(name)}/history?limit=${limit}`),
  scheduleAction: (name: string, action: ScheduleAction): Promise<unknown> =>
    post(`schedules/${enc(name)}/${action}`)
};

/** Words for an error of any kind. */
export function describeError(error: unknown): string {
  if (error instanceof ApiError) {
    return error.describe();
  }
  if (error instanceof Error) {
    return error.message;
  }
  return String(error);
}
