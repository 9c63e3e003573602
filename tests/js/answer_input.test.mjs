// agentflow.js's answerInput against a scripted fetch: `node --test tests/js/`. The browser tests
// (tests/browser/) answer through it against the real API and the admin.

import assert from "node:assert/strict";
import { test } from "node:test";

import { answerInput } from "../../agentflow/static/agentflow/agentflow.js";

function scripted(status, body) {
  const calls = [];
  const fetch = async (url, init) => {
    calls.push({ url, init });
    return { ok: status >= 200 && status < 300, status, json: async () => body };
  };
  return { calls, fetch };
}

test("posts the answer as JSON to the run's input URL, with the session's CSRF token", async () => {
  globalThis.location = { origin: "http://example.test" };
  globalThis.document = { cookie: "theme=dark; csrftoken=abc%3D1", querySelector: () => null };
  try {
    const { calls, fetch } = scripted(200, { key: "outline", status: "answered" });
    const run = { id: "r1", urls: { self: "/api/runs/r1/" } };
    const result = await answerInput(run, "outline", { approved: true }, { fetch });
    assert.deepStrictEqual(result, { ok: true, status: 200, input: { key: "outline", status: "answered" } });
    assert.equal(calls[0].url, "http://example.test/api/runs/r1/input/outline/");
    assert.equal(calls[0].init.method, "POST");
    assert.equal(calls[0].init.credentials, "same-origin");
    assert.equal(calls[0].init.body, '{"approved":true}');
    assert.equal(calls[0].init.headers["X-CSRFToken"], "abc=1");
    assert.equal(calls[0].init.headers["Content-Type"], "application/json");
  } finally {
    delete globalThis.document;
  }
});

test("a run id, another API base, a token header instead of the session, and a form's CSRF field", async () => {
  globalThis.document = { cookie: "", querySelector: () => ({ value: "from-form" }) };
  try {
    const { calls, fetch } = scripted(200, {});
    await answerInput("r2", "a.b", 3, { fetch, apiBase: "/v1/", headers: { Authorization: "Token k" } });
    assert.equal(calls[0].url, "http://example.test/v1/runs/r2/input/a.b/");
    assert.equal(calls[0].init.headers.Authorization, "Token k");
    assert.equal(calls[0].init.headers["X-CSRFToken"], "from-form");
    await answerInput("r2", "k", null, { fetch, csrfToken: null, url: "/admin/x/input/k/" });
    assert.equal(calls[1].url, "/admin/x/input/k/");
    assert.equal(calls[1].init.headers["X-CSRFToken"], undefined);
  } finally {
    delete globalThis.document;
  }
});

test("a 400 gives its field errors by top-level field; a 409 says whether it was answered already", async () => {
  const invalid = {
    code: "invalid_answer",
    message: "the answer does not match the request's schema",
    details: [
      { field: "headings.0", code: "string_too_short", message: "String should have at least 1 character" },
      { field: "headings", code: "too_long", message: "List should have at most 12 items" },
      { field: "", code: "missing", message: "approved is required" },
    ],
  };
  let result = await answerInput("r", "outline", {}, { ...scripted(400, invalid), csrfToken: null });
  assert.equal(result.ok, false);
  assert.equal(result.code, "invalid_answer");
  assert.deepStrictEqual(result.fieldErrors, {
    headings: ["String should have at least 1 character", "List should have at most 12 items"],
    "": ["approved is required"],
  });
  const answered = { code: "input_already_answered", message: "answered already", details: null };
  result = await answerInput("r", "outline", {}, { ...scripted(409, answered), csrfToken: null });
  assert.equal(result.status, 409);
  assert.equal(result.answered, true);
  const finished = { code: "run_finished", message: "the run is cancelled", details: null };
  result = await answerInput("r", "outline", {}, { ...scripted(409, finished), csrfToken: null });
  assert.equal(result.answered, false);
  assert.equal(result.message, "the run is cancelled");
});

test("refuses a bad run or key at once", async () => {
  await assert.rejects(() => answerInput(null, "k", 1), TypeError);
  await assert.rejects(() => answerInput("r", "", 1), TypeError);
});
