// The example project's run page: agentflow.js follows the run's events (from the start: a refresh, a reopened
// tab or a dropped network rebuilds the same state) and this module renders its state: the streamed output,
// each section as it fills in (several at once), the progress bar, the cost, the step tree, and the questions
// the run waits on, each with a form generated from its JSON Schema, answered with agentflow.js's answerInput.

import { answerInput, stepTree, subscribe } from "../agentflow/agentflow.js";

export function mount(root, config) {
  const $ = (id) => root.querySelector(`#${id}`);
  let state = null;
  let connection = "connecting…";
  let scheduled = false;

  const render = () => {
    scheduled = false;
    $("connection").textContent = connection;
    if (!state) return;
    const status = state.status || "queued";
    $("status").textContent = status;
    $("status").className = `badge status-${status}`;
    root.dataset.status = status;
    $("status-text").textContent = state.status_text || "";
    const share = status === "completed" ? 1 : state.progress || 0;
    $("progress-bar").style.width = `${Math.round(share * 100)}%`;
    $("cost").textContent = `$${state.usage.cost_usd.toFixed(6)}`;
    $("tokens").textContent = `${state.usage.total_tokens} tokens`;
    $("calls").textContent = `${state.usage.calls} LLM calls`;
    $("output").textContent = state.output_text;
    renderSections($("sections"), state);
    renderSteps($("step-tree"), state);
    $("error").hidden = !state.error;
    $("error").textContent = state.error ? `${state.error.type || state.error.code}: ${state.error.message}` : "";
    // Requests for input (a person's approval, say) the run waits on, each with its form.
    const questions = state.done
      ? []
      : Object.values(state.waits).filter((w) => w.kind === "input" && w.status === "requested");
    $("questions").hidden = !questions.length;
    syncQuestions($("question-forms"), config, questions, () => state);
    $("final").hidden = !state.has_output;
    if (state.has_output) $("final-output").textContent = JSON.stringify(state.output, null, 2);
    for (const form of root.querySelectorAll("form[data-when]")) {
      form.hidden = !form.dataset.when.split(",").includes(status);
    }
  };
  const schedule = () => {
    if (!scheduled) {
      scheduled = true;
      requestAnimationFrame(render);
    }
  };

  const subscription = subscribe(config.run, {
    onState(next) {
      state = next;
      schedule();
    },
    onConnection(info) {
      connection = info.connection === "open" ? "live" : info.connection;
      root.dataset.connections = String(info.connections);
      schedule();
    },
    onClose(info) {
      connection = info.code === 1000 ? "" : `stopped (${info.code} ${info.reason})`;
      schedule();
    },
  });
  root.subscription = subscription; // for the browser's console
  return subscription;
}

// -- questions ------------------------------------------------------------------------------------------

function syncQuestions(container, config, questions, currentState) {
  const pending = new Set(questions.map((w) => w.key));
  for (const node of [...container.children]) {
    if (!pending.has(node.dataset.key)) node.remove(); // answered (input.received), timed out, or the run ended
  }
  for (const wait of questions) {
    if (container.querySelector(`[data-key="${CSS.escape(wait.key)}"]`)) continue;
    // A placeholder while the form is fetched, so one render's fetch is not repeated by the next.
    const slot = document.createElement("div");
    slot.dataset.key = wait.key;
    slot.className = "question-slot";
    container.append(slot);
    loadQuestion(slot, config, wait.key, currentState);
  }
}

async function loadQuestion(slot, config, key, currentState) {
  // The form is generated on the server from the request's JSON Schema (example_project/web/forms.py).
  let html;
  try {
    const response = await fetch(config.questionUrl.replace("__key__", encodeURIComponent(key)), {
      credentials: "same-origin",
    });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    html = await response.text();
  } catch (error) {
    slot.textContent = `The form for ${key} could not be loaded (${error.message}): reload the page, or answer below.`;
    return;
  }
  if (!slot.isConnected) return;
  const template = document.createElement("template");
  template.innerHTML = html;
  const form = template.content.querySelector("form");
  if (!form) return;
  const wait = currentState().waits[`input:${key}`];
  if (!wait || wait.status !== "requested") {
    slot.remove();
    return;
  }
  // In the schema's order, which the event keeps (the database's JSON does not keep the order of keys).
  const button = form.querySelector("button[type=submit]");
  for (const name of Object.keys((wait.schema && wait.schema.properties) || {})) {
    const field = form.querySelector(`[data-field="${CSS.escape(name)}"]`);
    if (!field) continue;
    const errors = field.nextElementSibling;
    form.insertBefore(field, button);
    if (errors && errors.dataset.errors === name) form.insertBefore(errors, button);
  }
  slot.replaceChildren(form);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    sendAnswer(form, config, key);
  });
}

async function sendAnswer(form, config, key) {
  showErrors(form, {});
  let value;
  try {
    value = answerFrom(form);
  } catch (error) {
    if (!(error instanceof FieldError)) throw error;
    showErrors(form, { [error.field]: [error.message] });
    return;
  }
  const button = form.querySelector("button[type=submit]");
  button.disabled = true;
  let result;
  try {
    result = await answerInput(config.run, key, value);
  } catch (error) {
    result = { ok: false, message: `The answer could not be sent: ${error}`, fieldErrors: {} };
  }
  if (result.ok || result.answered) {
    // The form goes once the run takes the answer up (input.received); until then, say it is sent.
    form.querySelector(".note").textContent = result.ok ? "Sent: the run continues." : "It was answered already.";
    for (const field of form.elements) field.disabled = true;
    return;
  }
  button.disabled = false;
  const errors = Object.keys(result.fieldErrors || {}).length ? result.fieldErrors : { "": [result.message] };
  showErrors(form, errors);
}

class FieldError extends Error {
  constructor(field, message) {
    super(message);
    this.field = field;
  }
}

// The answer the form describes: each widget's value as the JSON its data-kind says (forms.py sets it).
function answerFrom(form) {
  const answer = {};
  for (const widget of form.querySelectorAll("[data-kind]")) {
    const name = widget.closest("[data-field]").dataset.field;
    const kind = widget.dataset.kind;
    if (kind === "boolean") {
      answer[name] = widget.checked;
      continue;
    }
    const text = widget.value;
    if (!text.trim()) {
      if (widget.required) throw new FieldError(name, "This field is required.");
      continue; // left out: the schema's default applies
    }
    if (kind === "integer" || kind === "number") {
      const number = Number(text);
      if (!Number.isFinite(number) || (kind === "integer" && !Number.isInteger(number))) {
        throw new FieldError(name, kind === "integer" ? "Enter a whole number." : "Enter a number.");
      }
      answer[name] = number;
    } else if (kind === "enum") {
      answer[name] = JSON.parse(text);
    } else if (kind === "lines") {
      answer[name] = text.split("\n").map((line) => line.trim()).filter(Boolean);
    } else if (kind === "json") {
      try {
        answer[name] = JSON.parse(text);
      } catch (error) {
        throw new FieldError(name, `Enter valid JSON (${error.message}).`);
      }
    } else {
      answer[name] = text;
    }
  }
  return "single" in form.dataset ? answer.answer : answer;
}

function showErrors(form, errors) {
  for (const list of form.querySelectorAll("[data-errors]")) {
    const messages = errors[list.dataset.errors] || [];
    list.replaceChildren(...messages.map((message) => {
      const item = document.createElement("li");
      item.textContent = message;
      return item;
    }));
    list.hidden = !messages.length;
  }
  // An error about a field this form does not show goes above the fields.
  const shown = new Set([...form.querySelectorAll("[data-errors]")].map((list) => list.dataset.errors));
  const other = Object.entries(errors).filter(([field]) => !shown.has(field));
  if (other.length) {
    const top = form.querySelector('[data-errors=""]');
    for (const [field, messages] of other) {
      for (const message of messages) {
        const item = document.createElement("li");
        item.textContent = field ? `${field}: ${message}` : message;
        top.append(item);
      }
    }
    top.hidden = false;
  }
}

function headingFor(state, label) {
  // The blog post publishes its outline ({"headings": [...]}) before drafting "section <n>".
  const match = /^section (\d+)$/.exec(label);
  const headings = state.data.outline && state.data.outline.headings;
  if (match && Array.isArray(headings) && headings[Number(match[1]) - 1]) return headings[Number(match[1]) - 1];
  return label;
}

function renderSections(container, state) {
  const labels = Object.keys(state.texts).sort((a, b) => a.localeCompare(b, "en", { numeric: true }));
  const existing = new Map([...container.children].map((node) => [node.dataset.label, node]));
  labels.forEach((label, index) => {
    let node = existing.get(label);
    if (!node) {
      node = document.createElement("section");
      node.className = "section";
      node.dataset.label = label;
      node.append(document.createElement("h3"), document.createElement("p"));
      node.lastChild.className = "text";
    }
    if (container.children[index] !== node) container.insertBefore(node, container.children[index] || null);
    node.firstChild.textContent = headingFor(state, label);
    if (node.lastChild.textContent !== state.texts[label]) node.lastChild.textContent = state.texts[label];
    existing.delete(label);
  });
  for (const node of existing.values()) node.remove(); // voided while the page was open
}

function renderSteps(list, state) {
  const items = stepTree(state).map(([depth, step]) => {
    const item = document.createElement("li");
    item.dataset.step = step.id;
    item.dataset.status = step.status;
    item.dataset.attempt = String(step.attempt);
    item.style.marginLeft = `${depth * 1.5}em`;
    const name = document.createElement("code");
    name.textContent = step.id;
    const status = document.createElement("span");
    status.className = `badge status-${step.status}`;
    status.textContent = step.status;
    item.append(name, " ", status, ` attempt ${step.attempt}`);
    for (const attempt of step.attempts) {
      if (attempt.status !== "failed" && attempt.status !== "lost") continue;
      const note = document.createElement("div");
      note.className = "attempt-error";
      const why = attempt.error ? `${attempt.error.type}: ${attempt.error.message}` : "its worker was lost";
      const retry = attempt.delay_seconds != null ? `, retried after ${attempt.delay_seconds} s` : "";
      note.textContent = `attempt ${attempt.attempt} ${attempt.status}: ${why}${retry}`;
      item.append(note);
    }
    return item;
  });
  list.replaceChildren(...items);
}
