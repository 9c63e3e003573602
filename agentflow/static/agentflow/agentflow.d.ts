// Types of agentflow.js (docs/topics/browser.md).

export type RunStatus = "queued" | "running" | "waiting" | "completed" | "failed" | "cancelled";
export type StepStatus = "running" | "retrying" | "interrupted" | "completed" | "failed";
export type AttemptStatus = "running" | "failed" | "completed" | "lost";

/** One event of a run's stream (docs/topics/events.md). */
export interface RunEvent {
  id: string;
  type: string;
  run: string;
  step: string | null;
  attempt: number | null;
  epoch: number;
  ts: string;
  data: Record<string, any>;
}

export interface ErrorInfo {
  type?: string;
  message?: string;
  code?: string;
  step?: string;
  [key: string]: unknown;
}

export interface Usage {
  calls: number;
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  cost_usd: number;
  unpriced_calls: number;
  /** Calls whose provider reported no usage: their tokens are estimated. */
  estimated_calls: number;
}

/** What a run waits on: a request for input (input:<key>) or a child run (workflow:<name>#<n>). */
export interface Wait {
  kind: "input" | "child";
  /** input: requested, received, timed_out; child: started, completed, failed. */
  status: string;
  /** The data of its events merged: key, prompt, schema, timeout_at, value...; run, workflow, error... */
  [field: string]: unknown;
}

/** A request for input as the state has it (input.requested, then input.received or input.timed_out):
 *  enough to render the question and a form for its answer (see answerInput). */
export interface InputWait extends Wait {
  kind: "input";
  status: "requested" | "received" | "timed_out";
  key: string;
  prompt: string;
  /** The JSON Schema an answer must match ({}: any JSON). */
  schema: Record<string, any>;
  /** ISO 8601, or null: no time-out. */
  timeout_at: string | null;
  /** Once received: the answer, who gave it and when. */
  value?: unknown;
  answered_by?: string | null;
  answered_at?: string;
}

export interface StepUsage extends Usage {
  provider?: string;
  model?: string;
}

export interface Attempt {
  attempt: number;
  epoch: number;
  status: AttemptStatus;
  error: ErrorInfo | null;
  /** Seconds until the next attempt, from step.retrying. */
  delay_seconds: number | null;
}

export interface Step {
  id: string;
  component: string | null;
  parent: string | null;
  status: StepStatus;
  /** The number of its latest attempt (0: served from the cache). */
  attempt: number;
  cached: boolean;
  error: ErrorInfo | null;
  attempts: Attempt[];
  usage: StepUsage | null;
  /** ts of its latest step.started, and of its step.completed or step.failed. */
  started_at: string | null;
  finished_at: string | null;
  children: string[];
}

export interface ContentPiece {
  type: "status" | "data" | "output.delta";
  step: string | null;
  attempt: number | null;
  epoch: number | null;
  data: Record<string, any>;
}

/** What a page shows of a run: a pure function of its events (the same keys as agentflow.client_state). */
export interface RunState {
  run: string | null;
  status: RunStatus | null;
  /** A terminal event arrived. */
  done: boolean;
  error: ErrorInfo | null;
  epoch: number;
  recoveries: number;
  waiting: { reason: string | null; wake_at: string | null } | null;
  duration_seconds: number | null;
  progress: number | null;
  status_text: string | null;
  steps: Record<string, Step>;
  roots: string[];
  /** The streamed output (output.delta), void parts dropped. */
  output_text: string;
  /** Per data label, its string values joined (a stream forwarded to "data"). */
  texts: Record<string, string>;
  /** Per data label, its latest value. */
  data: Record<string, unknown>;
  has_output: boolean;
  output: unknown;
  /** Wait step id -> the wait (its last event gives its status). */
  waits: Record<string, Wait>;
  usage: Usage;
  last_id: string | null;
  events: number;
  voided: number;
  content: ContentPiece[];
}

export const CONTENT_TYPES: readonly string[];
export const TERMINAL_TYPES: readonly string[];
export const EVENT_TYPES: readonly string[];
export const USAGE_KEYS: readonly (keyof Usage)[];
export const FINAL_CLOSE_CODES: readonly number[];
export const SUBPROTOCOL: string;
export const TOKEN_SUBPROTOCOL_PREFIX: string;
export const RECONNECT_CLOSE_CODES: readonly number[];
/** Keep-alive intervals without any message after which a connection is dropped as dead (2.5). */
export const KEEPALIVE_MISSED_INTERVALS: number;

export function newState(): RunState;
/** Applies one event to `state` in place and returns it. */
export function apply(state: RunState, event: RunEvent): RunState;
export function reduce(events: Iterable<RunEvent>, state?: RunState): RunState;
export function snapshot(state: RunState): Omit<RunState, "content">;
export function stepTree(state: RunState, roots?: string[]): [number, Step][];
export function compareIds(a: string, b: string): number;

/** A run as the REST API returns it, or enough of it. */
export interface RunRef {
  id: string;
  urls?: { self?: string; events?: string; websocket?: string };
  stream_token?: string;
}

export interface ConnectionInfo {
  connection: "connecting" | "open" | "reconnecting" | "closed";
  transport: "websocket" | "sse";
  connections: number;
  reconnects: number;
  tokenRefreshes: number;
  events: number;
  duplicates: number;
  fallbacks: number;
  code?: number;
  reason?: string;
  delayMs?: number;
}

export interface CloseInfo {
  /** 1000 after the terminal event (or close()); else the code that ended it (4403, 4404, 4400...). */
  code: number;
  reason: string;
  state: RunState;
  byClient: boolean;
}

export interface SubscribeOptions {
  /** Resume after this event id (default: the state's last_id, so from the start with a new state). */
  after?: string | null;
  /** A state to continue (default: a new one). */
  state?: RunState;
  /** The run's stream token (default: run.stream_token; none: the session authenticates). Sent as the
   *  websocket subprotocol agentflow.token.<token> (next to agentflow.v1), as ?token= on the event stream. */
  token?: string | null;
  /** "auto" (default: websocket, event stream if websockets never open), "websocket" or "sse". */
  transport?: "auto" | "websocket" | "sse";
  /** Where the REST API is mounted, for URLs the run does not carry (default "/api"). */
  apiBase?: string;
  websocketUrl?: string;
  eventsUrl?: string;
  detailUrl?: string;
  /** A fresh stream token after a 4401 (default: GET the run's detail URL, same-origin credentials). */
  fetchToken?: (runId: string) => Promise<string>;
  backoff?: { initialMs?: number; maxMs?: number };
  /** Ask for keep-alives (?keepalive=1) and reconnect after KEEPALIVE_MISSED_INTERVALS of silence (default true). */
  keepalive?: boolean;
  onEvent?: (event: RunEvent, state: RunState) => void;
  onState?: (state: RunState, event: RunEvent) => void;
  onConnection?: (info: ConnectionInfo) => void;
  onClose?: (info: CloseInfo) => void;
  onError?: (error: unknown) => void;
  /** Implementations to use instead of the globals (tests, Node). */
  WebSocket?: any;
  EventSource?: any;
  fetch?: typeof fetch;
}

export interface Subscription {
  readonly runId: string;
  readonly state: RunState;
  readonly lastId: string | null;
  readonly transport: "websocket" | "sse";
  readonly stats: Omit<ConnectionInfo, "connection" | "transport" | "code" | "reason" | "delayMs">;
  /** Resolves once the subscription ended: the run's terminal event, a final close code, or close(). */
  readonly done: Promise<CloseInfo>;
  /** Stop following (the run goes on). */
  close(): void;
}

export function subscribe(run: RunRef | string, options?: SubscribeOptions): Subscription;

export interface AnswerOptions {
  /** Where to POST (default: `<run.urls.self or apiBase/runs/<id>/>input/<key>/`). */
  url?: string;
  apiBase?: string;
  /** Sent as X-CSRFToken (default: the `csrftoken` cookie, else a form's csrfmiddlewaretoken field; null: none). */
  csrfToken?: string | null;
  csrfCookieName?: string;
  /** Extra headers, such as `Authorization: Token <key>` (then no session is needed). */
  headers?: Record<string, string>;
  /** fetch's credentials (default "same-origin": the session cookie). */
  credentials?: RequestCredentials;
  fetch?: typeof fetch;
}

export type AnswerResult =
  | { ok: true; status: number; input: Record<string, any> | null }
  | {
      ok: false;
      status: number;
      /** invalid_answer, input_already_answered, input_timed_out, run_finished, input_not_found, run_not_found... */
      code: string | null;
      message: string;
      details: unknown;
      /** Top-level field name ("" for the whole answer) -> messages, from a 400's details. */
      fieldErrors: Record<string, string[]>;
      /** 409 input_already_answered: the question was answered (a double submit is harmless). */
      answered: boolean;
    };

/** Answer a run's request for input (POST the answer as JSON); resolves to the outcome, rejects only when
 *  the request could not be made. */
export function answerInput(
  run: RunRef | string, key: string, value: unknown, options?: AnswerOptions,
): Promise<AnswerResult>;
