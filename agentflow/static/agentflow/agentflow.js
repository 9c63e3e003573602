// agentflow.js: follow a run's events in a browser and reduce them to what a page shows.
//
//   import { subscribe } from "{% static 'agentflow/agentflow.js' %}";
//   const sub = subscribe(run, { onState: (state) => render(state) });   // run: the REST run, or its id
//
// One dependency-free ES module. `subscribe` reads the run's events over the websocket (server-sent events
// when websockets do not get through), reconnects on the close codes that say so, always from the last id
// it received, and feeds every event to `apply`, the reducer: a pure function of the events that applies
// the voiding rules of docs/topics/events.md. The same reducer is agentflow/client_state.py in Python; both
// are tested against the same recorded runs (tests/js/, tests/test_client_state_fixtures.py).
// Docs: docs/topics/browser.md. Types: agentflow.d.ts beside this file.

// -- the reducer ------------------------------------------------------------------------------------------

export const CONTENT_TYPES = Object.freeze(["status", "data", "output.delta"]);
export const TERMINAL_TYPES = Object.freeze(["run.completed", "run.failed", "run.cancelled"]);
export const EVENT_TYPES = Object.freeze([
  "run.queued", "run.started", "run.recovered", "run.resumed", "run.waiting", "run.continued",
  "step.started", "step.retrying", "step.completed", "step.failed",
  "status", "data", "output.delta", "output",
  "input.requested", "input.received", "input.timed_out", "child.started", "child.completed", "child.failed",
  "run.completed", "run.failed", "run.cancelled",
]);
export const USAGE_KEYS = Object.freeze([
  "calls", "prompt_tokens", "completion_tokens", "total_tokens", "cost_usd", "unpriced_calls", "estimated_calls",
]);
// Events about what a run waits on, by the status they give the wait.
const WAIT_STATUS = {
  "input.requested": "requested",
  "input.received": "received",
  "input.timed_out": "timed_out",
  "child.started": "started",
  "child.completed": "completed",
  "child.failed": "failed",
};

const CONTENT = new Set(CONTENT_TYPES);
const TERMINAL = new Set(TERMINAL_TYPES);
const RUN_STATUS = {
  "run.queued": "queued",
  "run.started": "running",
  "run.recovered": "running",
  "run.resumed": "running",
  "run.continued": "running",
  "run.waiting": "waiting",
  "run.completed": "completed",
  "run.failed": "failed",
  "run.cancelled": "cancelled",
};
const STEP_TYPES = new Set(["step.started", "step.retrying", "step.completed", "step.failed"]);

/** The state before any event (the same keys as agentflow.client_state.new_state()). */
export function newState() {
  const usage = {};
  for (const key of USAGE_KEYS) usage[key] = 0;
  return {
    run: null,
    status: null,
    done: false,
    error: null,
    epoch: 0,
    recoveries: 0,
    waiting: null,
    duration_seconds: null,
    progress: null,
    status_text: null,
    steps: {},
    roots: [],
    output_text: "",
    texts: {},
    data: {},
    has_output: false,
    output: null,
    waits: {},
    usage,
    last_id: null,
    events: 0,
    voided: 0,
    content: [],
  };
}

/** Apply `events` (oldest first) to `state` (a new one by default) and return it. */
export function reduce(events, state = newState()) {
  for (const event of events) apply(state, event);
  return state;
}

/** A deep copy of `state` without its `content` list (what the fixtures compare). */
export function snapshot(state) {
  const copy = JSON.parse(JSON.stringify(state));
  delete copy.content;
  return copy;
}

/** [depth, step] pairs, depth first, children in the order they first appeared; of `roots` (default: the
 * run's top-level steps) and their descendants. */
export function stepTree(state, roots = state.roots) {
  const rows = [];
  const stack = roots.slice().reverse().map((id) => [0, id]);
  while (stack.length) {
    const [depth, id] = stack.pop();
    const step = state.steps[id];
    rows.push([depth, step]);
    for (let i = step.children.length - 1; i >= 0; i--) stack.push([depth + 1, step.children[i]]);
  }
  return rows;
}

/** Apply one event to `state` (in place: a long run's content is not copied per event) and return it. */
export function apply(state, event) {
  const kind = event.type;
  const data = event.data || {};
  state.events += 1;
  if (event.id != null) state.last_id = event.id;
  if (state.run === null && event.run != null) state.run = event.run;
  if (Number.isInteger(event.epoch) && event.epoch > state.epoch) state.epoch = event.epoch;

  if (CONTENT.has(kind)) addContent(state, event);
  else if (kind in RUN_STATUS) runEvent(state, kind, data);
  else if (kind === "output") {
    state.has_output = true;
    state.output = data.value === undefined ? null : data.value;
  } else if (STEP_TYPES.has(kind)) stepEvent(state, event, kind, data);
  else if (kind in WAIT_STATUS && typeof event.step === "string") {
    const wait = state.waits[event.step] || (state.waits[event.step] = { kind: kind.split(".")[0] });
    Object.assign(wait, data, { status: WAIT_STATUS[kind] });
  }
  // Other types (a newer server's) change nothing but the counters.
  return state;
}

function runEvent(state, kind, data) {
  if (state.done) {
    if (TERMINAL.has(kind)) return; // one terminal event per incarnation: a stray duplicate changes nothing
    // A resumed run goes on after its terminal event: a new incarnation, a new outcome to come.
    Object.assign(state, { done: false, error: null, output: null, has_output: false, duration_seconds: null });
  }
  state.status = RUN_STATUS[kind];
  state.waiting = null;
  if (kind === "run.waiting") {
    state.waiting = { reason: orNull(data.reason), wake_at: orNull(data.wake_at) };
  } else if (kind === "run.recovered") {
    state.recoveries = Math.trunc(data.recoveries || state.recoveries + 1);
    runAgain(state, new Set(data.void_steps || []), state.epoch);
  } else if (kind === "run.resumed") {
    state.recoveries = Math.trunc(data.recoveries || 0); // resuming starts the count again
    runAgain(state, new Set(data.void_steps || []), state.epoch);
  } else if (TERMINAL.has(kind)) {
    state.done = true;
    interruptRunning(state);
    state.duration_seconds = orNull(data.duration_seconds);
    if (kind === "run.failed") state.error = orNull(data.error);
  }
}

function runAgain(state, voidSteps, epoch) {
  // Rule 2: the steps a new incarnation runs again (unfinished by a dead one, or failed or unfinished before
  // a resume) lose their earlier content and their open attempts.
  for (const id of voidSteps) {
    const step = state.steps[id];
    if (!step) continue;
    for (const attempt of step.attempts) {
      if (attempt.status === "running" && attempt.epoch < epoch) attempt.status = "lost";
    }
    step.status = "interrupted";
  }
  voidContent(state, (c) => c.step !== null && voidSteps.has(c.step) && c.epoch < epoch);
}

function interruptRunning(state) {
  // At the run's end, a step still running (cut short by a cancellation or by its run's failure) is not.
  for (const step of Object.values(state.steps)) {
    if (step.status !== "running") continue;
    step.status = "interrupted";
    for (const attempt of step.attempts) if (attempt.status === "running") attempt.status = "lost";
  }
}

function getStep(state, id, data) {
  let step = state.steps[id];
  if (!step) {
    const parent = orNull(data.parent);
    step = {
      id,
      component: orNull(data.component),
      parent,
      status: "running",
      attempt: 0,
      cached: false,
      error: null,
      attempts: [],
      usage: null,
      started_at: null,
      finished_at: null,
      children: [],
    };
    state.steps[id] = step;
    const siblings = parent !== null && state.steps[parent] ? state.steps[parent].children : state.roots;
    siblings.push(id);
  }
  return step;
}

function findAttempt(step, number, epoch) {
  const same = step.attempts.filter((a) => a.attempt === number);
  for (let i = same.length - 1; i >= 0; i--) if (same[i].epoch === epoch) return same[i];
  if (same.length) return same[same.length - 1];
  const attempt = { attempt: number, epoch, status: "running", error: null, delay_seconds: null };
  step.attempts.push(attempt);
  return attempt;
}

function stepEvent(state, event, kind, data) {
  const id = event.step;
  if (typeof id !== "string") return;
  const step = getStep(state, id, data);
  const number = Math.trunc(event.attempt || 0);
  const epoch = Math.trunc(event.epoch || 0);
  if (kind === "step.started") {
    step.attempts.push({ attempt: number, epoch, status: "running", error: null, delay_seconds: null });
    Object.assign(step, {
      status: "running", attempt: number, error: null, started_at: orNull(event.ts), finished_at: null,
    });
  } else if (kind === "step.retrying") {
    // Rule 1: the failed attempt's content is void.
    const attempt = findAttempt(step, number, epoch);
    Object.assign(attempt, {
      status: "failed", error: orNull(data.error), delay_seconds: orNull(data.delay_seconds),
    });
    Object.assign(step, { status: "retrying", error: null });
    voidContent(state, (c) => c.step === id && c.attempt === number && c.epoch === epoch);
  } else if (kind === "step.completed") {
    if (number) findAttempt(step, number, epoch).status = "completed";
    Object.assign(step, { status: "completed", attempt: number, error: null, cached: Boolean(data.cached) });
    step.finished_at = orNull(event.ts);
    addUsage(state, step, data.usage);
  } else {
    const attempt = findAttempt(step, number, epoch);
    Object.assign(attempt, { status: "failed", error: orNull(data.error) });
    Object.assign(step, {
      status: "failed", attempt: number, error: orNull(data.error), finished_at: orNull(event.ts),
    });
    addUsage(state, step, data.usage);
  }
}

function addUsage(state, step, usage) {
  if (!usage || typeof usage !== "object" || Array.isArray(usage)) return;
  step.usage = usage;
  const totals = state.usage;
  for (const key of USAGE_KEYS) {
    if (key === "cost_usd") {
      // Rounded to 10 decimals like agentflow.core.usage.merge, so the sum equals the run's stored total.
      totals[key] = Number((totals[key] + Number(usage[key] || 0)).toFixed(10));
    } else {
      totals[key] += Math.trunc(usage[key] || 0);
    }
  }
}

function addContent(state, event) {
  const piece = {
    type: event.type,
    step: orNull(event.step),
    attempt: orNull(event.attempt),
    epoch: orNull(event.epoch),
    data: event.data || {},
  };
  state.content.push(piece);
  show(state, piece);
}

function show(state, piece) {
  const data = piece.data;
  if (piece.type === "output.delta") {
    state.output_text += data.text == null ? "" : String(data.text);
  } else if (piece.type === "status") {
    state.status_text = orNull(data.text);
    if (data.progress != null) state.progress = data.progress;
  } else {
    const label = typeof data.label === "string" ? data.label : JSON.stringify(orNull(data.label));
    const value = orNull(data.value);
    state.data[label] = value;
    if (typeof value === "string") state.texts[label] = (state.texts[label] || "") + value;
  }
}

function voidContent(state, isVoid) {
  const kept = state.content.filter((piece) => !isVoid(piece));
  const dropped = state.content.length - kept.length;
  if (!dropped) return;
  state.voided += dropped;
  state.content = kept;
  Object.assign(state, { output_text: "", texts: {}, data: {}, status_text: null, progress: null });
  for (const piece of kept) show(state, piece);
}

function orNull(value) {
  return value === undefined ? null : value;
}

// -- event ids --------------------------------------------------------------------------------------------

/** Compare two event ids ("<ms>-<seq>") numerically: negative, 0 or positive. */
export function compareIds(a, b) {
  const [am, as] = a.split("-").map(BigInt);
  const [bm, bs] = b.split("-").map(BigInt);
  if (am !== bm) return am < bm ? -1 : 1;
  return as === bs ? 0 : as < bs ? -1 : 1;
}

// -- answering a request for input ----------------------------------------------------------------------

/**
 * Answer a run's request for input (`agentflow.wait_for_input`): POST the answer as JSON to
 * `<run's REST URL>input/<key>/`, with the session and its CSRF token (or the `headers` given, such as an API
 * token's `Authorization`). The state's `waits["input:<key>"]` has what to ask (`prompt`, `schema`,
 * `timeout_at`); the run goes on once it is answered (`input.received` follows).
 *
 * Resolves to `{ok: true, status: 200, input}` (the answered request), or `{ok: false, status, code,
 * message, details, fieldErrors}` for a refusal: `400 invalid_answer` with `fieldErrors` (top-level field
 * name, "" for the whole answer -> messages), `409 input_already_answered` (a double submit: `answered` is
 * true), `409 input_timed_out` or `run_finished`, `404`... Rejects only when the request could not be made.
 */
export async function answerInput(run, key, value, options = {}) {
  const info = typeof run === "string" ? { id: run } : run;
  if (!info || !info.id) throw new TypeError("answerInput(run, ...): run must be a run id or a run with an id");
  if (typeof key !== "string" || !key) throw new TypeError("answerInput(run, key, ...): key must be a string");
  const env = globalThis;
  const origin = env.location ? env.location.origin : "http://localhost";
  const apiBase = (options.apiBase || "/api").replace(/\/$/, "");
  const detail = (info.urls && info.urls.self) || `${apiBase}/runs/${info.id}/`;
  const url = options.url || new URL(`${detail.replace(/\/?$/, "/")}input/${encodeURIComponent(key)}/`, origin).href;
  const headers = { "Content-Type": "application/json", Accept: "application/json", ...(options.headers || {}) };
  const csrf = options.csrfToken !== undefined ? options.csrfToken : csrfToken(options.csrfCookieName);
  if (csrf) headers["X-CSRFToken"] = csrf;
  const fetchImpl = options.fetch || (env.fetch && env.fetch.bind(env));
  const response = await fetchImpl(url, {
    method: "POST",
    credentials: options.credentials || "same-origin",
    headers,
    body: JSON.stringify(value === undefined ? null : value),
  });
  let body = null;
  try {
    body = await response.json();
  } catch (error) {
    body = null; // a proxy's HTML error page, say
  }
  if (response.ok) return { ok: true, status: response.status, input: body };
  const error = body && typeof body === "object" ? body : {};
  const details = Array.isArray(error.details) ? error.details : [];
  const fieldErrors = {};
  for (const item of details) {
    const field = item && item.field != null ? String(item.field).split(".")[0] : "";
    (fieldErrors[field] || (fieldErrors[field] = [])).push(String((item && item.message) || error.message || ""));
  }
  if (response.status === 400 && !details.length) fieldErrors[""] = [String(error.message || "invalid answer")];
  return {
    ok: false,
    status: response.status,
    code: error.code || null,
    message: error.message || `HTTP ${response.status}`,
    details: error.details === undefined ? null : error.details,
    fieldErrors,
    answered: error.code === "input_already_answered",
  };
}

/** The CSRF token of this page: Django's cookie, else a form's `csrfmiddlewaretoken` field. */
function csrfToken(cookieName = "csrftoken") {
  const doc = globalThis.document;
  if (!doc) return null;
  for (const part of (doc.cookie || "").split(";")) {
    const [name, ...rest] = part.trim().split("=");
    if (name === cookieName) return decodeURIComponent(rest.join("="));
  }
  const field = doc.querySelector && doc.querySelector("input[name=csrfmiddlewaretoken]");
  return field ? field.value : null;
}

// -- the subscription -------------------------------------------------------------------------------------

/** Close codes after which the subscription stops (docs/topics/streaming.md). */
export const FINAL_CLOSE_CODES = Object.freeze([1000, 4400, 4403, 4404]);
/** Close codes after which it reconnects with `after`, with jittered backoff. */
export const RECONNECT_CLOSE_CODES = Object.freeze([1001, 1005, 1006, 1011, 1012, 1013, 4500, 4503]);
const UNAUTHENTICATED = 4401;
/** How many keep-alive intervals without any message make a connection dead (docs/topics/streaming.md). */
export const KEEPALIVE_MISSED_INTERVALS = 2.5;
/** The websocket subprotocols: the token offered as `agentflow.token.<token>`, next to `agentflow.v1`. */
export const SUBPROTOCOL = "agentflow.v1";
export const TOKEN_SUBPROTOCOL_PREFIX = "agentflow.token.";

/**
 * Follow a run's events until its terminal event (or `close()`), reducing them into `state`.
 *
 * `run` is the run as the REST API returns it ({id, urls, stream_token}) or its id. Options: see
 * agentflow.d.ts and docs/topics/browser.md.
 */
export function subscribe(run, options = {}) {
  return new Subscription(run, options);
}

class Subscription {
  constructor(run, options) {
    const info = typeof run === "string" ? { id: run } : run;
    if (!info || !info.id) throw new TypeError("subscribe(run): run must be a run id or a run with an id");
    const env = globalThis;
    const origin = env.location ? env.location.origin : "http://localhost";
    const apiBase = (options.apiBase || "/api").replace(/\/$/, "");
    const urls = info.urls || {};
    this.runId = String(info.id);
    this.options = options;
    this.urls = {
      websocket: options.websocketUrl || urls.websocket || wsUrl(origin, `/ws/runs/${this.runId}/`),
      events: options.eventsUrl || urls.events || new URL(`${apiBase}/runs/${this.runId}/events/`, origin).href,
      detail: options.detailUrl || urls.self || new URL(`${apiBase}/runs/${this.runId}/`, origin).href,
    };
    this.token = options.token !== undefined ? options.token : info.stream_token || null;
    this.state = options.state || newState();
    this.lastId = options.after !== undefined ? options.after : this.state.last_id;
    this.transport = options.transport === "sse" ? "sse" : "websocket";
    this.autoFallback = !options.transport || options.transport === "auto";
    this.WebSocket = options.WebSocket || env.WebSocket;
    this.EventSource = options.EventSource || env.EventSource;
    this.fetch = options.fetch || (env.fetch && env.fetch.bind(env));
    this.backoff = { initialMs: 300, maxMs: 5000, ...(options.backoff || {}) };
    // Ask the server for keep-alives: a connection that died without a close (a laptop that slept, a NAT that
    // forgot it) is noticed after KEEPALIVE_MISSED_INTERVALS of silence, not when TCP gives up minutes later.
    this.keepalive = options.keepalive !== false;
    this.watchdog = null;
    this.lastMessageAt = 0;
    this.stats = { connections: 0, reconnects: 0, tokenRefreshes: 0, events: 0, duplicates: 0, fallbacks: 0 };
    this.closed = false;
    this.failures = 0; // connection attempts in a row that delivered no event
    this.refreshesWithoutEvent = 0;
    this.neverOpened = 0; // websocket attempts that never opened, before any ever did
    this.everOpened = false;
    this.socket = null;
    this.timer = null;
    this.done = new Promise((resolve) => { this.resolveDone = resolve; });
    // A browser that goes offline keeps its sockets open, silent, until the network comes back (or TCP gives
    // up, minutes later): drop the connection at once and connect again, from the last id, when it is back.
    this.offline = false;
    this.onOffline = () => {
      this.offline = true;
      if (this.socket) this.drop({ code: 1006, reason: "the browser went offline" });
    };
    this.onOnline = () => {
      this.offline = false;
      if (this.closed || this.socket) return;
      clearTimeout(this.timer);
      this.timer = null;
      this.connect();
    };
    if (env.addEventListener) {
      env.addEventListener("online", this.onOnline);
      env.addEventListener("offline", this.onOffline);
    }
    this.connect();
  }

  /** Stop following (the run goes on). */
  close() {
    this.finish({ code: 1000, reason: "closed by the client", final: true, byClient: true });
  }

  notify(connection, extra = {}) {
    if (this.options.onConnection) {
      this.options.onConnection({ connection, transport: this.transport, ...this.stats, ...extra });
    }
  }

  connect() {
    if (this.closed) return;
    this.stats.connections += 1;
    this.delivered = 0;
    this.notify(this.stats.connections === 1 ? "connecting" : "reconnecting");
    if (this.transport === "sse") this.connectSse();
    else this.connectWebsocket();
  }

  query(withToken) {
    const params = new URLSearchParams();
    if (this.lastId) params.set("after", this.lastId);
    if (withToken && this.token) params.set("token", this.token);
    if (this.keepalive) params.set("keepalive", "1");
    const text = params.toString();
    return text ? `?${text}` : "";
  }

  connectWebsocket() {
    let socket;
    // The token travels as a subprotocol, out of the URL (and so out of access logs); EventSource has no such
    // way and sends it as ?token=.
    const protocols = this.token ? [SUBPROTOCOL, TOKEN_SUBPROTOCOL_PREFIX + this.token] : [];
    try {
      socket = new this.WebSocket(this.urls.websocket.split("?")[0] + this.query(false), protocols);
    } catch (error) {
      this.report(error);
      this.lost({ code: 1006, reason: String(error) }, false);
      return;
    }
    this.socket = socket;
    let opened = false;
    socket.onopen = () => {
      opened = true;
      this.everOpened = true;
      this.notify("open");
    };
    socket.onmessage = (message) => {
      this.lastMessageAt = Date.now();
      const event = this.parse(message.data);
      if (event === undefined) return;
      if (isKeepalive(event)) this.keptAlive(event);
      else this.receive(event);
    };
    socket.onclose = (close) => {
      if (this.socket !== socket) return;
      this.socket = null;
      this.stopWatchdog();
      this.closedWith({ code: close.code, reason: close.reason }, opened);
    };
  }

  connectSse() {
    if (!this.EventSource) {
      this.finish({ code: 0, reason: "neither WebSocket nor EventSource works here", final: true });
      return;
    }
    const source = new this.EventSource(this.urls.events.split("?")[0] + this.query(true), { withCredentials: true });
    this.socket = source;
    const onEvent = (message) => {
      this.lastMessageAt = Date.now();
      if (!message.data) return;
      const event = this.parse(message.data);
      if (event === undefined) return;
      if (event && typeof event.type === "string" && event.id) this.receive(event);
      else if (event && event.code) this.sseError = event; // the API's JSON error, as `event: error`
    };
    for (const type of EVENT_TYPES) source.addEventListener(type, onEvent);
    source.addEventListener("keepalive", (message) => {
      this.lastMessageAt = Date.now();
      const body = this.parse(message.data);
      if (body !== undefined) this.keptAlive(body);
    });
    source.addEventListener("message", onEvent);
    source.addEventListener("open", () => this.notify("open"));
    source.addEventListener("error", (message) => {
      if (message && message.data) {
        onEvent(message);
        return;
      }
      // EventSource would reconnect by itself with the URL it started with; reconnect ourselves instead, from
      // the last id we have, with a fresh token if the server refused the old one.
      if (this.socket !== source) return;
      source.close();
      this.socket = null;
      this.stopWatchdog();
      const error = this.sseError;
      this.sseError = null;
      if (this.closed) return;
      // The server ends the stream after the run's last terminal event.
      if (this.state.done && !error) this.finish({ code: 1000, reason: "run ended", final: true });
      else if (error && error.code === "run_not_found") this.finish({ code: 4404, reason: error.message, final: true });
      else if (error && error.code === "permission_denied") this.finish({ code: 4403, reason: error.message, final: true });
      else if (error && /auth|token/.test(error.code)) this.refreshToken();
      else this.lost({ code: 1006, reason: "event stream interrupted" }, true);
    });
  }

  receive(event) {
    if (this.closed) return;
    if (this.lastId && event.id && compareIds(event.id, this.lastId) <= 0) {
      this.stats.duplicates += 1; // never expected: the server replays strictly after `after`
      return;
    }
    if (event.id) this.lastId = event.id;
    this.delivered += 1;
    this.failures = 0;
    this.refreshesWithoutEvent = 0;
    this.stats.events += 1;
    apply(this.state, event);
    if (this.options.onEvent) this.options.onEvent(event, this.state);
    if (this.options.onState) this.options.onState(this.state, event);
    // A terminal event is not the end of the subscription yet: a resumed run's stream goes on after it, and
    // the server sends what follows before it closes with 1000 (or ends the event stream).
  }

  closedWith(close, opened) {
    if (this.closed) return;
    const code = close.code;
    if (code === 1000) {
      // The server closes with 1000 right after the terminal event, which `receive` has seen already; a 1000
      // without it (a proxy's) is no end: reconnect.
      if (this.state.done) this.finish({ ...close, final: true });
      else this.lost(close, opened);
    } else if (code === UNAUTHENTICATED) {
      this.refreshToken(close);
    } else if (FINAL_CLOSE_CODES.includes(code) || (code >= 4000 && code < 5000 && !RECONNECT_CLOSE_CODES.includes(code))) {
      this.finish({ ...close, final: true });
    } else {
      this.lost(close, opened);
    }
  }

  lost(close, opened) {
    if (this.closed) return;
    if (this.transport === "websocket" && !opened && !this.everOpened) {
      this.neverOpened += 1;
      // Websockets that never open (a proxy that drops them): the event stream carries the same events.
      if (this.autoFallback && this.neverOpened >= 2 && this.EventSource) {
        this.transport = "sse";
        this.stats.fallbacks += 1;
      }
    }
    if (!this.delivered) this.failures += 1;
    // Full jitter: a random wait up to a ceiling that doubles with each attempt in a row that got nothing, so
    // clients that lost the same server do not come back all at once.
    const ceiling = Math.min(this.backoff.maxMs, this.backoff.initialMs * 2 ** Math.min(this.failures, 16));
    const delay = Math.random() * ceiling;
    this.stats.reconnects += 1;
    this.notify("reconnecting", { code: close.code, reason: close.reason, delayMs: Math.round(delay) });
    this.schedule(delay);
  }

  // A keep-alive (not an event): the server says how often they come; silence for longer means a dead
  // connection. The watchdog is one timer per subscription, armed by the first keep-alive (a server that sends
  // none never arms it), so nothing is done per event but noting the time.
  keptAlive(message) {
    const seconds = Number(message && message.interval_seconds);
    if (!(seconds > 0) || !this.socket) return;
    const intervalMs = seconds * 1000;
    if (this.watchdog && this.watchdog.intervalMs === intervalMs) return;
    this.stopWatchdog();
    const socket = this.socket;
    const limitMs = intervalMs * KEEPALIVE_MISSED_INTERVALS;
    const timer = setInterval(() => {
      if (this.socket !== socket) {
        this.stopWatchdog();
        return;
      }
      const silentMs = Date.now() - this.lastMessageAt;
      if (silentMs > limitMs) {
        this.stopWatchdog();
        this.drop({ code: 1006, reason: `no message for ${Math.round(silentMs / 1000)} s: the connection is dead` });
      }
    }, Math.max(50, intervalMs / 2));
    this.watchdog = { timer, intervalMs };
  }

  stopWatchdog() {
    if (this.watchdog) clearInterval(this.watchdog.timer);
    this.watchdog = null;
  }

  drop(close) {
    const socket = this.socket;
    this.socket = null;
    this.stopWatchdog();
    try {
      socket.close();
    } catch (error) {
      this.report(error);
    }
    this.lost(close, true);
  }

  schedule(delayMs) {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = null;
      // Offline: wait for the browser's online event rather than fail attempt after attempt.
      if (this.offline && globalThis.navigator && globalThis.navigator.onLine === false) return;
      this.connect();
    }, delayMs);
  }

  async refreshToken(close = { code: UNAUTHENTICATED, reason: "not authenticated" }) {
    // A fresh token refused again before any event arrived means the client may not read the run: stop.
    if (this.refreshesWithoutEvent >= 2) {
      this.finish({ ...close, final: true });
      return;
    }
    this.refreshesWithoutEvent += 1;
    this.stats.tokenRefreshes += 1;
    try {
      const fetchToken = this.options.fetchToken || (() => this.fetchToken());
      this.token = await fetchToken(this.runId);
    } catch (error) {
      this.report(error);
      if (error && error.final) this.finish({ code: error.code || close.code, reason: String(error.message || error), final: true });
      else this.lost(close, true);
      return;
    }
    this.connect();
  }

  async fetchToken() {
    const response = await this.fetch(this.urls.detail, {
      credentials: "same-origin",
      headers: { Accept: "application/json" },
    });
    if (response.status === 401 || response.status === 403 || response.status === 404) {
      const error = new Error(`cannot read run ${this.runId}: HTTP ${response.status}`);
      error.final = true;
      error.code = response.status === 404 ? 4404 : response.status === 403 ? 4403 : UNAUTHENTICATED;
      throw error;
    }
    if (!response.ok) throw new Error(`GET ${this.urls.detail}: HTTP ${response.status}`);
    const body = await response.json();
    if (!body.stream_token) throw new Error("the run's representation has no stream_token");
    return body.stream_token;
  }

  parse(data) {
    // A message's JSON; undefined (and the error reported) when it is not JSON.
    try {
      return JSON.parse(data);
    } catch (error) {
      this.report(error);
      return undefined;
    }
  }

  report(error) {
    if (this.options.onError) this.options.onError(error);
  }

  finish(close) {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.timer);
    this.stopWatchdog();
    const env = globalThis;
    if (env.removeEventListener) {
      env.removeEventListener("online", this.onOnline);
      env.removeEventListener("offline", this.onOffline);
    }
    if (this.socket) {
      const socket = this.socket;
      this.socket = null;
      try {
        socket.close();
      } catch (error) {
        this.report(error);
      }
    }
    this.notify("closed", { code: close.code, reason: close.reason });
    const result = { code: close.code, reason: close.reason || "", state: this.state, byClient: Boolean(close.byClient) };
    if (this.options.onClose) this.options.onClose(result);
    this.resolveDone(result);
  }
}

function isKeepalive(message) {
  // Not an event: events have an id.
  return Boolean(message) && message.type === "keepalive" && message.id == null;
}

function wsUrl(origin, path) {
  const url = new URL(path, origin);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  return url.href;
}
