// The example project's run page: agentflow.js follows the run's events (from the start: a refresh, a reopened
// tab or a dropped network rebuilds the same state) and this module renders its state: the streamed output,
// each section as it fills in (several at once), the progress bar, the cost, the step tree.

import { stepTree, subscribe } from "../agentflow/agentflow.js";

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
    // Requests for input (a person's approval, say) the run waits on.
    const questions = Object.values(state.waits).filter((w) => w.kind === "input" && w.status === "requested");
    $("questions").hidden = !questions.length || state.done;
    $("question-list").textContent = questions.map((w) => w.prompt || w.key).join("; ");
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
