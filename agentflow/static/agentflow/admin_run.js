// The admin's run page, live: agentflow.js follows the run's events from the start and this module renders
// the reducer's state into the page the server rendered (templates/admin/agentflow/workflowrun/
// change_form.html). Without JavaScript, or while the stream cannot be read, the page shows what the
// server rendered from the database.
//
// Each part of the page is one function of (state, config): add a part by adding an element with an id and a
// function to RENDERERS (or call `mountRunPage(...).onRender(fn)` from another module).

import { answerInput, compareIds, stepTree, subscribe } from "./agentflow.js";

const ACTIVE = new Set(["queued", "running", "waiting"]);

export function mountRunPage(root, config) {
  const page = {
    root,
    config,
    state: null,
    connection: "connecting",
    renderers: [...RENDERERS],
    lastEventRow: config.latestPage ? config.lastEventId : null,
    // Where each top-level step or wait first appeared in the stream: the step table's order of them.
    firstSeen: new Map(),
    onRender(fn) {
      this.renderers.push(fn);
      return this;
    },
  };
  let scheduled = false;
  const render = () => {
    scheduled = false;
    for (const fn of page.renderers) fn(page);
  };
  const schedule = () => {
    if (scheduled) return;
    scheduled = true;
    // One render per frame, however many events arrived: a replay of thousands of events renders once.
    (globalThis.requestAnimationFrame || ((f) => setTimeout(f, 16)))(render);
  };
  page.subscription = subscribe(config.run, {
    onEvent(event, state) {
      page.state = state;
      if (event.step && !page.firstSeen.has(event.step)) page.firstSeen.set(event.step, page.firstSeen.size);
      if (page.lastEventRow !== null && compareIds(event.id, page.lastEventRow) > 0) {
        appendEventRow(page, event);
        page.lastEventRow = event.id;
      }
      schedule();
    },
    onConnection(info) {
      page.connection = info.connection === "reconnecting" && info.code
        ? `reconnecting (${info.code})` : info.connection;
      schedule();
    },
    onClose(info) {
      page.connection = info.code === 1000 ? "ended" : `closed (${info.code} ${info.reason || ""})`.trim();
      schedule();
    },
  });
  root.agentflowPage = page; // for the browser's console
  return page;
}

const RENDERERS = [renderSummary, renderFields, renderSteps, renderWaits, renderOutput, renderButtons];

function byId(page, id) {
  return page.root.querySelector(`#${id}`);
}

function badge(config, status, label) {
  const span = document.createElement("span");
  span.className = `agentflow-badge agentflow-status-${status}`;
  span.style.background = config.colours[status] || "#777";
  span.textContent = label || status;
  return span;
}

function setText(node, text) {
  if (node && node.textContent !== text) node.textContent = text;
}

function renderSummary(page) {
  const { state, config } = page;
  if (!state) return;
  const status = byId(page, "agentflow-live-status");
  if (status && status.dataset.rendered !== state.status) {
    status.replaceChildren(badge(config, state.status || "queued", config.statusLabels[state.status]));
    status.dataset.status = state.status || "";
    status.dataset.rendered = state.status || "";
  }
  const progress = byId(page, "agentflow-progress");
  if (progress) {
    const share = state.status === "completed" ? 1 : state.progress || 0;
    progress.value = share;
    progress.textContent = `${Math.round(share * 100)}%`;
  }
  setText(byId(page, "agentflow-status-text"), state.status_text || "");
  setText(byId(page, "agentflow-connection"), page.connection);
  const usage = state.usage;
  setText(byId(page, "agentflow-usage"), usage.calls
    ? `${usage.calls} calls · ${usage.total_tokens.toLocaleString("en")} tokens · ${formatCost(usage.cost_usd)}`
    : "No provider call yet.");
  const error = byId(page, "agentflow-live-error");
  if (error) {
    setText(error, state.error ? errorText(state.error) : "");
    error.hidden = !state.error;
  }
}

function renderFields(page) {
  const { state, config } = page;
  if (!state) return;
  const field = (name) => document.querySelector(`.field-${name} .readonly`);
  const status = field("status_display");
  if (status && status.dataset.status !== state.status && state.status) {
    status.replaceChildren(badge(config, state.status, config.statusLabels[state.status]));
    status.dataset.status = state.status;
  }
  // What the run list counts: the checkpoints, a wait's included from its first event (written before it).
  const finished = Object.values(state.steps).filter((s) => s.status === "completed" || s.status === "failed");
  setText(field("steps_display"), String(finished.length + Object.keys(state.waits).length));
  setText(field("last_event"), state.last_id || "");
}

function renderSteps(page) {
  const { state, config } = page;
  const table = byId(page, "agentflow-steps");
  if (!state || !table || !(Object.keys(state.steps).length || Object.keys(state.waits).length)) return;
  const rows = tableRows(page);
  setText(table.querySelector("h2"), `Steps (${rows.length})`);
  let body = table.querySelector("tbody");
  if (!body) {
    table.querySelector(".help")?.remove();
    const template = byId(page, "agentflow-steps-table");
    table.append(template.content.cloneNode(true));
    body = table.querySelector("tbody");
  }
  const fresh = rows.map(([depth, step, wait]) => (wait ? waitRow(config, step, wait) : stepRow(config, depth, step)));
  body.replaceChildren(...fresh);
}

// [depth, step] for steps, [0, id, wait] for waits (requests for input, child runs): top-level steps and waits
// in the order they first appeared, each step followed by its children depth first.
function tableRows(page) {
  const { state } = page;
  const order = (id) => (page.firstSeen.has(id) ? page.firstSeen.get(id) : Infinity);
  const top = [...state.roots, ...Object.keys(state.waits)].sort((a, b) => order(a) - order(b));
  const rows = [];
  for (const id of top) {
    if (state.waits[id]) rows.push([0, id, state.waits[id]]);
    else rows.push(...stepTree(state, [id]));
  }
  return rows;
}

// A wait's status as its checkpoint has it (the server renders the same rows from the checkpoints).
const WAIT_CHECKPOINT = {
  requested: "waiting", received: "completed", timed_out: "failed",
  started: "waiting", completed: "completed", failed: "failed",
};

// A cell of `row` holding `content` (a node, or text; null and undefined are empty).
function appendCell(row, content, className) {
  const td = document.createElement("td");
  if (className) td.className = className;
  if (content instanceof Node) td.append(content);
  else td.textContent = content == null ? "" : String(content);
  row.append(td);
  return td;
}

function waitRow(config, id, wait) {
  const extra = config.stepExtras[id] || {};
  const status = WAIT_CHECKPOINT[wait.status] || "waiting";
  const row = document.createElement("tr");
  row.className = "agentflow-step agentflow-wait";
  row.dataset.depth = "0";
  row.dataset.step = id;
  row.dataset.status = status;
  const cell = (content, className) => appendCell(row, content, className);
  const code = document.createElement("code");
  code.textContent = id;
  cell(code);
  cell(wait.kind === "input" ? "input" : `workflow:${wait.workflow || ""}`);
  cell(badge(config, status, config.statusLabels[status] || status));
  // Its checkpoint's attempts: 0 for a request for input; a child run's is 1 once it ended.
  cell(wait.kind === "child" && status !== "waiting" ? 1 : 0);
  cell(extra.duration || "-");
  cell("");
  cell(extra.tokens || "", "agentflow-tokens");
  cell(extra.cost || "", "agentflow-cost");
  cell("", "agentflow-provider");
  let error = "";
  if (wait.status === "timed_out") error = `InputTimeout: no answer by ${wait.timeout_at || "its time-out"}`;
  else if (wait.status === "failed") error = errorText(wait.error);
  cell(error, "agentflow-error");
  return row;
}

function stepRow(config, depth, step) {
  const extra = config.stepExtras[step.id] || {};
  const row = document.createElement("tr");
  row.className = "agentflow-step";
  row.dataset.depth = String(depth);
  row.dataset.step = step.id;
  row.dataset.status = step.status;
  const cell = (content, className) => appendCell(row, content, className);
  const code = document.createElement("code");
  code.textContent = step.id;
  cell(code).style.paddingLeft = `${(1.5 * depth).toFixed(1)}em`;
  cell(step.component);
  cell(badge(config, step.status, config.statusLabels[step.status] || step.status));
  cell(step.attempt);
  cell(duration(step) || extra.duration || "-");
  cell(step.cached ? "yes" : "");
  const usage = step.usage;
  cell(usage ? usage.total_tokens.toLocaleString("en") : extra.tokens || "", "agentflow-tokens");
  cell(usage ? formatCost(usage.cost_usd) : extra.cost || "", "agentflow-cost");
  const provider = cell(usage ? [usage.provider, usage.model].filter(Boolean).join(" / ") : extra.provider || "", "agentflow-provider");
  for (const fallback of extra.fallbacks || []) {
    const div = document.createElement("div");
    div.className = "agentflow-fallback";
    div.textContent = `failed: ${fallback}`;
    provider.append(div);
  }
  const errors = cell("", "agentflow-error");
  for (const attempt of step.attempts) {
    if (attempt.status !== "failed" && attempt.status !== "lost") continue;
    if (step.status === "failed" && attempt === step.attempts[step.attempts.length - 1]) continue;
    const div = document.createElement("div");
    div.className = "agentflow-attempt-error";
    const why = attempt.error ? errorText(attempt.error) : "its worker was lost";
    const retry = attempt.delay_seconds != null ? `, retried after ${attempt.delay_seconds} s` : "";
    div.textContent = `attempt ${attempt.attempt}: ${why}${retry}`;
    errors.append(div);
  }
  if (step.error) {
    const div = document.createElement("div");
    div.textContent = errorText(step.error);
    errors.append(div);
  }
  return row;
}

// -- requests for input: the questions the run waits on, answered from the page --------------------------

const INPUT_STATUS = { received: "answered", timed_out: "timed_out" };

function renderWaits(page) {
  const { state, config } = page;
  const fieldset = byId(page, "agentflow-input");
  if (!state || !fieldset) return;
  const inputs = config.inputs || {};
  const requests = Object.entries(state.waits).filter(([, wait]) => wait.kind === "input");
  const pending = state.done ? [] : requests.filter(([, wait]) => wait.status === "requested");
  fieldset.hidden = !pending.length;
  setText(fieldset.querySelector("h2"), `Waiting for input (${pending.length})`);
  const list = fieldset.querySelector(".agentflow-input-requests") || fieldset;
  const blocks = new Map(
    [...list.querySelectorAll(".agentflow-input-request")].map((block) => [block.dataset.key, block]),
  );
  for (const [, wait] of pending) {
    let block = blocks.get(wait.key);
    if (!block) {
      block = inputBlock(wait, inputs.canAnswer);
      list.append(block);
    }
    blocks.delete(wait.key);
    const form = block.querySelector("form");
    if (form && !form.dataset.live) {
      form.dataset.live = "1";
      form.addEventListener("submit", (submitted) => {
        submitted.preventDefault();
        sendAnswer(page, wait.key, form);
      });
    }
  }
  for (const block of blocks.values()) block.remove(); // answered, timed out, or the run ended
  renderAnsweredInputs(page, requests);
}

function inputBlock(wait, canAnswer) {
  const block = document.createElement("div");
  block.className = "agentflow-input-request";
  block.dataset.key = wait.key;
  block.style.cssText = "padding: 8px 10px; border-bottom: 1px solid var(--hairline-color, #eee)";
  const title = document.createElement("p");
  const strong = document.createElement("strong");
  const code = document.createElement("code");
  code.textContent = wait.key;
  strong.append(code);
  title.append(strong, wait.prompt ? `: ${wait.prompt}` : "");
  block.append(title);
  if (wait.timeout_at) {
    const help = document.createElement("p");
    help.className = "help";
    help.textContent = `Times out at ${wait.timeout_at}.`;
    block.append(help);
  }
  if (wait.schema && Object.keys(wait.schema).length) {
    const details = document.createElement("details");
    const summary = document.createElement("summary");
    summary.textContent = "JSON Schema of the answer";
    const pre = document.createElement("pre");
    pre.style.whiteSpace = "pre-wrap";
    pre.textContent = JSON.stringify(wait.schema, null, 2);
    details.append(summary, pre);
    block.append(details);
  }
  if (!canAnswer) {
    const help = document.createElement("p");
    help.className = "help";
    help.textContent = "You may not answer: answering needs the permission to change runs.";
    block.append(help);
    return block;
  }
  const form = document.createElement("form");
  const id = `agentflow-answer-${wait.key}`;
  const label = document.createElement("label");
  label.htmlFor = id;
  label.textContent = "Answer (JSON)";
  const answer = document.createElement("textarea");
  Object.assign(answer, { id, name: "answer", rows: 3, cols: 60, required: true, placeholder: '{"approved": true}' });
  const send = document.createElement("input");
  Object.assign(send, { type: "submit", value: "Send answer", className: "default" });
  send.style.float = "none";
  form.append(label, answer, send);
  block.append(form);
  return block;
}

async function sendAnswer(page, key, form) {
  const text = form.querySelector("textarea[name=answer]").value;
  const button = form.querySelector("[type=submit]");
  let value;
  try {
    value = JSON.parse(text);
  } catch (error) {
    showAnswerErrors(form, [`The answer is not JSON: ${error.message}. Nothing was sent.`]);
    return;
  }
  showAnswerErrors(form, []);
  button.disabled = true;
  let result;
  try {
    const url = page.config.inputs.answerUrl.replace("__key__", encodeURIComponent(key));
    result = await answerInput(page.config.run, key, value, { url });
  } catch (error) {
    result = { ok: false, message: `The answer could not be sent: ${error}`, fieldErrors: {} };
  }
  if (result.ok || result.answered) {
    // The block goes once input.received arrives; until then, say it is on its way.
    note(form, result.ok ? `Answered ${key}: the run continues.` : `${key} was answered already.`);
    return;
  }
  button.disabled = false;
  const lines = Object.entries(result.fieldErrors || {}).flatMap(
    ([field, messages]) => messages.map((message) => `${field || "(answer)"}: ${message}`),
  );
  showAnswerErrors(form, lines.length ? lines : [result.message], result.code === "invalid_answer");
}

function showAnswerErrors(form, lines, waiting = true) {
  let list = form.querySelector(".errorlist");
  if (!lines.length) {
    if (list) list.remove();
    return;
  }
  if (!list) {
    list = document.createElement("ul");
    list.className = "errorlist";
    form.prepend(list);
  }
  list.replaceChildren(...lines.map((line) => {
    const item = document.createElement("li");
    item.textContent = line;
    return item;
  }));
  if (waiting) {
    const item = document.createElement("li");
    item.textContent = "The run keeps waiting.";
    list.append(item);
  }
}

function note(form, text) {
  showAnswerErrors(form, []);
  let line = form.querySelector(".agentflow-answer-note");
  if (!line) {
    line = document.createElement("p");
    line.className = "agentflow-answer-note help";
    form.append(line);
  }
  line.textContent = text;
}

function renderAnsweredInputs(page, requests) {
  const fieldset = byId(page, "agentflow-inputs");
  if (!fieldset) return;
  const done = page.state.done;
  const over = requests.filter(([, wait]) => wait.status !== "requested" || done);
  fieldset.hidden = !over.length;
  const body = fieldset.querySelector("tbody");
  if (!body) return;
  body.replaceChildren(...over.map(([, wait]) => {
    const row = document.createElement("tr");
    row.dataset.key = wait.key;
    const value = wait.status === "received" ? JSON.stringify(wait.value) : "";
    const cells = [wait.key, INPUT_STATUS[wait.status] || "closed", value, wait.answered_by || "", wait.answered_at || ""];
    cells.forEach((text, index) => {
      const td = document.createElement("td");
      if (index === 0) {
        const code = document.createElement("code");
        code.textContent = text;
        td.append(code);
      } else {
        td.textContent = text;
      }
      if (index === 2) td.className = "agentflow-data";
      row.append(td);
    });
    return row;
  }));
}

function renderOutput(page) {
  const { state } = page;
  if (!state) return;
  const output = byId(page, "agentflow-output");
  if (output) {
    setText(output, state.output_text);
    output.closest(".agentflow-output-block").hidden = !state.output_text;
  }
  const texts = byId(page, "agentflow-texts");
  if (!texts) return;
  for (const [label, text] of Object.entries(state.texts)) {
    let block = [...texts.children].find((child) => child.dataset.label === label);
    if (!block) {
      block = document.createElement("div");
      block.className = "agentflow-text";
      block.dataset.label = label;
      const heading = document.createElement("h3");
      heading.textContent = label;
      const pre = document.createElement("pre");
      block.append(heading, pre);
      texts.append(block);
    }
    setText(block.querySelector("pre"), text);
  }
  for (const child of [...texts.children]) {
    if (!(child.dataset.label in state.texts)) child.remove(); // voided while the page was open
  }
}

function renderButtons(page) {
  const { state } = page;
  if (!state || !state.status) return;
  for (const form of page.root.ownerDocument.querySelectorAll("[data-agentflow-when]")) {
    form.hidden = !form.dataset.agentflowWhen.split(",").includes(state.status);
  }
}

function appendEventRow(page, event) {
  const table = byId(page, "agentflow-events");
  if (!table) return;
  let body = table.querySelector("tbody");
  if (!body) {
    table.querySelector(".help")?.remove();
    table.append(byId(page, "agentflow-events-table").content.cloneNode(true));
    body = table.querySelector("tbody");
  }
  const row = document.createElement("tr");
  row.className = "agentflow-event";
  const data = event.data && Object.keys(event.data).length ? JSON.stringify(event.data) : "";
  const values = [event.id, event.type, event.step, event.attempt, event.epoch, data.slice(0, 1000)];
  values.forEach((value, index) => {
    const td = document.createElement("td");
    if (index === 0 || (index === 2 && value)) {
      const code = document.createElement("code");
      code.textContent = value;
      td.append(code);
    } else {
      td.textContent = value == null ? "" : String(value);
    }
    if (index === 5) td.className = "agentflow-data";
    row.append(td);
  });
  body.append(row);
  // A long run would grow the page without end: keep the latest rows (older ones are a page back).
  while (body.children.length > page.config.eventRowsMax) body.firstElementChild.remove();
  setText(table.querySelector("h2"), `Events (${body.children.length})`);
}

function duration(step) {
  if (!step.started_at || !step.finished_at) return "";
  const seconds = (Date.parse(step.finished_at) - Date.parse(step.started_at)) / 1000;
  if (!(seconds >= 0)) return "";
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 59.95) return `${seconds.toFixed(1)} s`;
  const whole = Math.round(seconds);
  return `${Math.floor(whole / 60)} min ${whole % 60} s`;
}

export function formatCost(usd) {
  if (usd === 0 || Math.abs(usd) >= 1) return `$${usd.toFixed(2)}`;
  const [whole, cents] = usd.toFixed(10).replace(/0+$/, "").split(".");
  return `$${whole}.${(cents || "").padEnd(2, "0")}`;
}

function errorText(error) {
  if (!error || typeof error !== "object") return String(error || "");
  const kind = error.type || error.code || "";
  const message = error.message || "";
  return kind && message ? `${kind}: ${message}` : String(kind || message);
}

export { ACTIVE };
