// The reducer of agentflow.js against recordings of real runs: `node --test tests/js/`.
//
// Each fixture holds a run's events as a real worker appended them, the points where a client's connection
// was cut, and the states the Python reducer (agentflow/client_state.py) gives at each cut and at the end.
// tests/test_client_state_fixtures.py writes them: the committed ones are in fixtures/, a fresh set from the
// last pytest run in artifacts/client-state/ (or $AGENTFLOW_CLIENT_FIXTURES). Both are checked here, so the
// two reducers cannot drift apart.

import assert from "node:assert/strict";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

import {
  apply, compareIds, newState, reduce, snapshot, stepTree, subscribe,
} from "../../agentflow/static/agentflow/agentflow.js";

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, "..", "..");
const dirs = [
  join(here, "fixtures"),
  process.env.AGENTFLOW_CLIENT_FIXTURES ? resolve(root, process.env.AGENTFLOW_CLIENT_FIXTURES) : join(root, "artifacts", "client-state"),
];

function fixtures() {
  const found = [];
  for (const dir of dirs) {
    if (!existsSync(dir)) continue;
    for (const name of readdirSync(dir).filter((n) => n.endsWith(".json")).sort()) {
      found.push({ path: join(dir, name), ...JSON.parse(readFileSync(join(dir, name), "utf8")) });
    }
  }
  return found;
}

const all = fixtures();

test("the committed recordings are there", () => {
  const names = new Set(all.filter((f) => f.path.startsWith(join(here, "fixtures"))).map((f) => f.name));
  for (const name of [
    "fanout-retries", "recovered", "llm-cut-streams", "llm-fallback", "input-wait", "failed",
    "resumed-after-failure", "resumed-after-cancel",
  ]) {
    assert.ok(names.has(name), name);
  }
});

for (const fixture of all) {
  test(`${fixture.name} (${fixture.path.slice(root.length + 1)}): the Python reducer's states`, () => {
    const state = newState();
    let done = 0;
    for (const cut of fixture.cuts) {
      reduce(fixture.events.slice(done, cut.at), state);
      done = cut.at;
      assert.deepStrictEqual(snapshot(state), cut.state, `after ${cut.at} events`);
    }
    reduce(fixture.events.slice(done), state);
    assert.deepStrictEqual(snapshot(state), fixture.expected);
    assert.deepStrictEqual(snapshot(reduce(fixture.events)), fixture.expected);
  });

  test(`${fixture.name}: one event at a time gives the same states as whole pages`, () => {
    const state = newState();
    for (const event of fixture.events) apply(state, event);
    assert.deepStrictEqual(snapshot(state), fixture.expected);
    const tree = stepTree(state).map(([, step]) => step.id);
    assert.deepStrictEqual(new Set(tree), new Set(Object.keys(state.steps)));
  });
}

test("event ids compare as numbers, not strings", () => {
  assert.ok(compareIds("999-0", "1000-0") < 0);
  assert.ok(compareIds("1000-10", "1000-9") > 0);
  assert.equal(compareIds("1732390000000-3", "1732390000000-3"), 0);
});

// -- the subscription, against a scripted WebSocket ---------------------------------------------------------

class ScriptedSocket {
  static sockets = [];
  constructor(url, protocols = []) {
    this.url = url;
    this.protocols = protocols;
    ScriptedSocket.sockets.push(this);
    queueMicrotask(() => ScriptedSocket.script(this));
  }
  open() { this.onopen?.({}); }
  send(event) { this.onmessage?.({ data: JSON.stringify(event) }); }
  drop(code, reason = "") { this.onclose?.({ code, reason }); }
  close() { this.closedByClient = true; }
}

function events(n) {
  const list = [{ id: "1-0", type: "run.queued", run: "r", step: null, attempt: null, epoch: 0, ts: "", data: {} }];
  for (let i = 1; i < n; i++) {
    list.push({ id: `1-${i}`, type: "output.delta", run: "r", step: null, attempt: null, epoch: 1, ts: "", data: { text: `${i} ` } });
  }
  list.push({ id: `1-${n}`, type: "run.completed", run: "r", step: null, attempt: null, epoch: 1, ts: "", data: {} });
  return list;
}

function serve(script) {
  ScriptedSocket.sockets = [];
  ScriptedSocket.script = script;
}

const location = { origin: "http://example.test" };

test("reconnects after a lost connection from the last id it received, with the same token", async () => {
  const stream = events(6);
  serve((socket) => {
    const after = new URL(socket.url).searchParams.get("after");
    const from = after ? stream.findIndex((e) => e.id === after) + 1 : 0;
    socket.open();
    if (ScriptedSocket.sockets.length === 1) {
      stream.slice(0, 3).forEach((e) => socket.send(e));
      socket.drop(1006);
    } else {
      stream.slice(from).forEach((e) => socket.send(e));
      socket.drop(1000, "run ended");
    }
  });
  globalThis.location = location;
  const sub = subscribe({ id: "r", stream_token: "t1" }, { WebSocket: ScriptedSocket, backoff: { initialMs: 1 } });
  const result = await sub.done;
  assert.equal(result.code, 1000);
  assert.equal(result.state.output_text, "1 2 3 4 5 ");
  const urls = ScriptedSocket.sockets.map((s) => new URL(s.url));
  assert.deepStrictEqual(urls.map((u) => u.searchParams.get("after")), [null, "1-2"]);
  // The token is a subprotocol, never in the URL.
  assert.deepStrictEqual(urls.map((u) => u.searchParams.get("token")), [null, null]);
  for (const socket of ScriptedSocket.sockets) {
    assert.deepStrictEqual(socket.protocols, ["agentflow.v1", "agentflow.token.t1"]);
  }
  assert.equal(urls[0].origin + urls[0].pathname, "ws://example.test/ws/runs/r/");
  assert.equal(sub.stats.duplicates, 0);
});

test("fetches a fresh stream token after 4401 and stops on 4403", async () => {
  serve((socket) => {
    socket.open();
    const token = (socket.protocols[1] || "").slice("agentflow.token.".length);
    socket.drop(token === "fresh" ? 4403 : 4401);
  });
  const asked = [];
  const fetch = async (url) => {
    asked.push(url);
    return { ok: true, status: 200, json: async () => ({ stream_token: "fresh" }) };
  };
  const sub = subscribe("r", { WebSocket: ScriptedSocket, fetch, backoff: { initialMs: 1 } });
  const result = await sub.done;
  assert.equal(result.code, 4403);
  assert.deepStrictEqual(asked, ["http://example.test/api/runs/r/"]);
  assert.equal(ScriptedSocket.sockets.length, 2);
});

test("stops on 4404 and 4400 without reconnecting; reconnects on 4500, 4503, 1001, 1011, 1012, 1013", async () => {
  for (const code of [4404, 4400]) {
    serve((socket) => { socket.open(); socket.drop(code); });
    const result = await subscribe("r", { WebSocket: ScriptedSocket }).done;
    assert.equal(result.code, code);
    assert.equal(ScriptedSocket.sockets.length, 1);
  }
  const stream = events(2);
  const codes = [4500, 4503, 1001, 1011, 1012, 1013];
  serve((socket) => {
    socket.open();
    const n = ScriptedSocket.sockets.length;
    if (n <= codes.length) socket.drop(codes[n - 1]);
    else { stream.forEach((e) => socket.send(e)); socket.drop(1000); }
  });
  const result = await subscribe("r", { WebSocket: ScriptedSocket, backoff: { initialMs: 1, maxMs: 4 } }).done;
  assert.equal(result.code, 1000);
  assert.equal(ScriptedSocket.sockets.length, codes.length + 1);
});

test("a 1000 close before the terminal event is no end: it reconnects", async () => {
  const stream = events(3);
  serve((socket) => {
    socket.open();
    if (ScriptedSocket.sockets.length === 1) { socket.send(stream[0]); socket.drop(1000); }
    else { stream.slice(1).forEach((e) => socket.send(e)); socket.drop(1000); }
  });
  const result = await subscribe("r", { WebSocket: ScriptedSocket, backoff: { initialMs: 1 } }).done;
  assert.equal(result.state.status, "completed");
  assert.equal(ScriptedSocket.sockets.length, 2);
});

test("falls back to server-sent events when websockets never open", async () => {
  serve((socket) => socket.drop(1006));
  const stream = events(3);
  class ScriptedSource {
    constructor(url) {
      this.url = url;
      this.listeners = {};
      ScriptedSource.made = url;
      queueMicrotask(() => {
        for (const event of stream) this.listeners[event.type]?.forEach((f) => f({ data: JSON.stringify(event) }));
        this.listeners.error?.forEach((f) => f({})); // the response ends after the terminal event
      });
    }
    addEventListener(type, listener) { (this.listeners[type] ||= []).push(listener); }
    close() {}
  }
  const sub = subscribe({ id: "r", stream_token: "t" }, {
    WebSocket: ScriptedSocket, EventSource: ScriptedSource, backoff: { initialMs: 1 },
  });
  const result = await sub.done;
  assert.equal(result.state.output_text, "1 2 ");
  assert.equal(sub.transport, "sse");
  assert.equal(ScriptedSource.made, "http://example.test/api/runs/r/events/?token=t&keepalive=1");
});

test("a resumed run's stream goes on after its first terminal event: the subscription follows it", async () => {
  const first = events(2);
  const failed = { ...first[2], id: "1-2", type: "run.failed", data: { error: { message: "no" } } };
  const resumed = [
    failed,
    { id: "1-3", type: "run.resumed", run: "r", step: null, attempt: null, epoch: 3, ts: "", data: { void_steps: [] } },
    { id: "1-4", type: "run.completed", run: "r", step: null, attempt: null, epoch: 3, ts: "", data: {} },
  ];
  serve((socket) => {
    socket.open();
    [...first.slice(0, 2), ...resumed].forEach((e) => socket.send(e));
    socket.drop(1000);
  });
  const result = await subscribe("r", { WebSocket: ScriptedSocket }).done;
  assert.equal(result.state.status, "completed");
  assert.equal(result.state.error, null);
});

test("going offline drops the connection; coming back online reconnects at once from the last id", async () => {
  const stream = events(4);
  const target = new EventTarget();
  const saved = { add: globalThis.addEventListener, remove: globalThis.removeEventListener };
  globalThis.addEventListener = target.addEventListener.bind(target);
  globalThis.removeEventListener = target.removeEventListener.bind(target);
  try {
    serve((socket) => {
      socket.open();
      if (ScriptedSocket.sockets.length === 1) {
        stream.slice(0, 2).forEach((e) => socket.send(e));
        target.dispatchEvent(new Event("offline"));
        setTimeout(() => target.dispatchEvent(new Event("online")), 20);
      } else {
        const after = new URL(socket.url).searchParams.get("after");
        stream.slice(stream.findIndex((e) => e.id === after) + 1).forEach((e) => socket.send(e));
        socket.drop(1000);
      }
    });
    const sub = subscribe("r", { WebSocket: ScriptedSocket, backoff: { initialMs: 60_000 } });
    const result = await sub.done;
    assert.equal(result.state.output_text, "1 2 3 ");
    assert.ok(ScriptedSocket.sockets[0].closedByClient);
    assert.equal(new URL(ScriptedSocket.sockets[1].url).searchParams.get("after"), "1-1");
  } finally {
    globalThis.addEventListener = saved.add;
    globalThis.removeEventListener = saved.remove;
  }
});

// -- keep-alives --------------------------------------------------------------------------------------------

const keepalive = (seconds) => ({ type: "keepalive", interval_seconds: seconds });
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

test("a connection silent for 2.5 keep-alive intervals is dropped, and followed again from the last id", async () => {
  const stream = events(5);
  serve(async (socket) => {
    socket.open();
    if (ScriptedSocket.sockets.length === 1) {
      socket.send(keepalive(0.05));
      stream.slice(0, 3).forEach((e) => socket.send(e));
      return; // then nothing, and no close: a half-open connection
    }
    const after = new URL(socket.url).searchParams.get("after");
    socket.send(keepalive(0.05));
    stream.slice(stream.findIndex((e) => e.id === after) + 1).forEach((e) => socket.send(e));
    socket.drop(1000);
  });
  const seen = [];
  const sub = subscribe("r", {
    WebSocket: ScriptedSocket,
    backoff: { initialMs: 1 },
    onConnection: (info) => info.connection === "reconnecting" && seen.push(info),
  });
  const result = await sub.done;
  assert.equal(result.code, 1000);
  assert.equal(result.state.output_text, "1 2 3 4 ");
  assert.equal(ScriptedSocket.sockets.length, 2);
  assert.ok(ScriptedSocket.sockets[0].closedByClient);
  const urls = ScriptedSocket.sockets.map((socket) => new URL(socket.url).searchParams);
  assert.deepStrictEqual(urls.map((q) => [q.get("after"), q.get("keepalive")]), [[null, "1"], ["1-2", "1"]]);
  assert.equal(seen[0].code, 1006);
  assert.match(seen[0].reason, /no message for/);
  // Keep-alives are not events: the reducer never saw them.
  assert.equal(result.state.events, stream.length);
  assert.equal(sub.stats.events, stream.length);
});

test("keep-alives keep a quiet connection; a server that sends none is never timed out", async () => {
  const stream = events(2);
  for (const beat of [true, false]) {
    serve(async (socket) => {
      socket.open();
      for (let i = 0; i < 10; i++) {
        if (beat) socket.send(keepalive(0.05));
        await sleep(30); // 300 ms of no event: six keep-alive intervals
      }
      stream.forEach((e) => socket.send(e));
      socket.drop(1000);
    });
    const result = await subscribe("r", { WebSocket: ScriptedSocket }).done;
    assert.equal(result.code, 1000);
    assert.equal(ScriptedSocket.sockets.length, 1, beat ? "with keep-alives" : "without");
  }
});

test("keepalive: false asks for none", async () => {
  serve((socket) => { socket.open(); events(1).forEach((e) => socket.send(e)); socket.drop(1000); });
  await subscribe("r", { WebSocket: ScriptedSocket, keepalive: false }).done;
  assert.equal(new URL(ScriptedSocket.sockets[0].url).searchParams.get("keepalive"), null);
});
