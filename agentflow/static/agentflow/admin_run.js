// The admin's run page, live: agentflow.js follows the run's events from the start and this module renders
// the reducer's state into the page the server rendered (templates/admin/agentflow/workflowrun/
// change_form.html). Without JavaScript, or while the stream cannot be read, the page shows what the
// server rendered from the database.
//
// Each part of the page is one function of (state, config): add a part by adding an element with an id and a
// function to RENDERERS (or call `mountRunPage(...).onRender(fn)` from another module).

import { compareIds, stepTree, subscribe } from "./agentflow.js";

const ACTIVE = new Set(["queued", "running", "waiting"]);

export function mountRunPage(root, config) {
  const page = {
    root,
    config,
    state: null,
    connection: "connecting",
    renderers: [...RENDERERS],
    lastEventRow: config.latestPage ? config.lastEventId : null,
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

const RENDERERS = [renderSummary, renderFields, renderSteps, renderOutput, renderButtons];

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
  const finished = Object.values(state.steps).filter((s) => s.status === "completed" || s.status === "failed");
  setText(field("steps_display"), String(finished.length));
  setText(field("last_event"), state.last_id || "");
}

function renderSteps(page) {
  const { state, config } = page;
  const table = byId(page, "agentflow-steps");
  if (!state || !table || !Object.keys(state.steps).length) return;
  const rows = stepTree(state);
  setText(table.querySelector("h2"), `Steps (${rows.length})`);
  let body = table.querySelector("tbody");
  if (!body) {
    table.querySelector(".help")?.remove();
    const template = byId(page, "agentflow-steps-table");
    table.append(template.content.cloneNode(true));
    body = table.querySelector("tbody");
  }
  const fresh = rows.map(([depth, step]) => stepRow(config, depth, step));
  body.replaceChildren(...fresh);
}

function stepRow(config, depth, step) {
  const extra = config.stepExtras[step.id] || {};
  const row = document.createElement("tr");
  row.className = "agentflow-step";
  row.dataset.depth = String(depth);
  row.dataset.step = step.id;
  row.dataset.status = step.status;
  const cell = (text, className) => {
    const td = document.createElement("td");
    if (className) td.className = className;
    if (text instanceof Node) td.append(text);
    else td.textContent = text == null ? "" : String(text);
    row.append(td);
    return td;
  };
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
