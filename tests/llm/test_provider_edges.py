"""Provider calls at the edges real providers show, on two OpenAI-compatible servers written apart.

Each scenario runs on two real Celery workers against two servers in processes of their own: ours
(``agentflow.testing.FakeOpenAI``) and LLMock (``llmock`` on PyPI: FastAPI under uvicorn, written by people
who never saw agentflow), so a fix tuned to our fake's quirks fails on the other. The scenarios are issue 9's:

- a provider that cuts its stream after forwarding text, with a fallback to the next provider in the same
  call: a client applying the voiding rules of docs/topics/events.md must rebuild each step's result;
- a fan-out of 50 calls under a budget: every call holding a reservation is sent and counted, and the run
  ends ``budget_exceeded`` with the usage of everything sent;
- a stream that ends after its last choice without the usage chunk (and ``[DONE]``): counted, estimated;
- a shared rate limit: no window of the arrival times at the provider, on the provider's clock, holds more
  than the limit, the first window (cold HTTP clients) included;
- an error message that echoes the API key: redacted everywhere agentflow keeps or shows it.

Every figure is read from the server (its request log), not from what the client believes it sent.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
from django.contrib.auth.models import User
from django.test import Client, override_settings
from django.urls import reverse
from rest_framework.test import APIClient

import agentflow
from agentflow import streams
from agentflow.conf import agentflow_settings
from agentflow.core import events as ev
from agentflow.llm.calls import CHAT, estimate_parts
from agentflow.models import RunEvent, StepRun, WorkflowRun
from agentflow.testing.fake_openai import FakeOpenAI, FakeOpenAIProcess
from tests.conftest import ROOT, Worker, apply_voiding, running_workers

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

QUEUE = "agentflow-edges"
LIMIT, WINDOW_SECONDS, JITTER_SECONDS = 4, 1.0, 0.25
COMPLETION_TOKENS = 20  # words in each reply of our fake server
# Not shaped like an OpenAI key (no "sk-"): only the configured-key rule can redact it.
SECRET_KEY = "edge-3f9a7c21d0b84e56-key"


# -- the two servers ------------------------------------------------------------------------------------------


class Ours:
    """Our fake server, driven through its fault script."""

    kind = "fake"

    def __init__(self, server: FakeOpenAIProcess) -> None:
        self.server = server
        self.base_url = server.base_url

    def cut_streams(self, model: str, *, after_chunks: int, times: int) -> None:
        self.server.fail({"drop_after_chunks": after_chunks, "times": times}, model=model)

    def end_after_last_choice(self, model: str) -> None:
        # The role chunk, one chunk a word, the finish_reason chunk; then a clean end: no usage, no [DONE].
        self.server.fail({"end_after_chunks": 1 + COMPLETION_TOKENS + 1}, model=model)

    def fail_with(self, model: str, status: int, message: str) -> None:
        self.server.fail({"status": status, "message": message}, model=model)

    def arrivals(self, model: str) -> list[float]:
        return sorted(e["time"] for e in self.server.stats()["request_log"] if e["model"] == model)


class LLMock:
    """LLMock in its own process (uvicorn), driven through its HTTP control API."""

    kind = "llmock"

    def __init__(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(512)
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.base_url = f"{self.url}/v1"
        cmd = [
            sys.executable, "-m", "uvicorn", "llmock.main:app", "--fd", str(sock.fileno()),
            "--lifespan", "off", "--no-access-log", "--log-level", "warning",
        ]  # fmt: skip
        try:
            self.process = subprocess.Popen(cmd, cwd=ROOT, pass_fds=(sock.fileno(),), env=dict(os.environ))
        finally:
            sock.close()
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    break
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("LLMock did not start")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    def _script(self, *behaviors: dict[str, Any]) -> None:
        httpx.post(f"{self.url}/_llmock/scenario", json={"behaviors": list(behaviors)}).raise_for_status()

    def cut_streams(self, model: str, *, after_chunks: int, times: int) -> None:
        match = {"model": model, "stream": True}
        self._script({"type": "stream_fault", "kind": "disconnect", "after_chunks": after_chunks,
                      "times": times, "match": match})  # fmt: skip

    def end_after_last_choice(self, model: str) -> None:
        text = "Hi there. This is a simulated reply, cut before its usage."
        pieces = re.findall(r"\s*\S+\s*", text)  # how LLMock splits a reply into chunks
        self._script(
            {"type": "reply", "text": text, "match": {"model": model}},
            {"type": "stream_fault", "kind": "truncate", "after_chunks": 1 + len(pieces) + 1,
             "match": {"model": model, "stream": True}},
        )  # fmt: skip

    def fail_with(self, model: str, status: int, message: str) -> None:
        self._script({"type": "fail", "status": status, "message": message, "match": {"model": model}})

    def arrivals(self, model: str) -> list[float]:
        records = httpx.get(f"{self.url}/_llmock/requests", timeout=10).json()["requests"]
        return sorted(r["started_at"] for r in records if r["model"] == model)


@pytest.fixture(scope="module")
def upstreams() -> Iterator[dict[str, Any]]:
    llmock = LLMock()
    try:
        with FakeOpenAI.spawn(completion_tokens=COMPLETION_TOKENS) as fake:
            yield {"fake": Ours(fake), "llmock": llmock}
    finally:
        llmock.stop()


@pytest.fixture(scope="module")
def edge_settings(upstreams: dict[str, Any]) -> dict[str, Any]:
    providers, limits = [], {}
    for kind, upstream in upstreams.items():
        base = upstream.base_url
        providers += [
            {"name": kind, "base_url": base, "api_key": f"key-{kind}"},
            # Serves m-fallback under another name, so that faults can target its requests alone.
            {"name": f"{kind}-cutter", "base_url": base, "api_key": f"key-{kind}-cutter",
             "models": {"m-fallback": "m-fallback-cut"}},
            {"name": f"{kind}-limited", "base_url": base, "api_key": f"key-{kind}-limited"},
            {"name": f"{kind}-secret", "base_url": base, "api_key": SECRET_KEY},
        ]  # fmt: skip
        limits[f"{kind}-limited:*"] = {"requests_per_minute": LIMIT}
    return {
        "TASK_QUEUE": QUEUE,
        "LLM_PROVIDERS": providers,
        "RATE_LIMITS": limits,
        "RATE_LIMIT_WINDOW_SECONDS": WINDOW_SECONDS,
        "RATE_LIMIT_JITTER_SECONDS": JITTER_SECONDS,
        "LLM_STREAM_COALESCE_SECONDS": 0,  # every token its own event: text is forwarded before a cut
        "LLM_PROVIDER_FAILURE_THRESHOLD": 1000,  # no breaker opens across tests
    }


@pytest.fixture(scope="module")
def edge_workers(
    django_db_setup: None, redis_client: redis.Redis, edge_settings: dict[str, Any]
) -> Iterator[list[Worker]]:
    with running_workers(QUEUE, edge_settings, count=2, name="edge") as workers:
        yield workers


@pytest.fixture(autouse=True)
def _edges(edge_workers: list[Worker], edge_settings: dict[str, Any]) -> Iterator[None]:
    with override_settings(AGENTFLOW={**agentflow_settings.user_settings, **edge_settings}):
        yield


@pytest.fixture(params=["fake", "llmock"])
def upstream(request: pytest.FixtureRequest, upstreams: dict[str, Any]) -> Any:
    return upstreams[request.param]


def events_of(run: WorkflowRun) -> list[dict[str, Any]]:
    return streams.read_events(str(run.pk))


def streamed_text(events: list[dict[str, Any]], step: str) -> str:
    return "".join(e["data"]["text"] for e in events if e["type"] == "output.delta" and e["step"] == step)


# -- 1. a fallback after forwarded text voids that text ----------------------------------------------------


def test_a_fallback_after_a_cut_stream_voids_the_text_already_forwarded(upstream: Any) -> None:
    calls, cut = 10, 5
    model = "m-fallback"
    # The cutter's first five streams break after the role chunk and two words.
    upstream.cut_streams("m-fallback-cut", after_chunks=3, times=cut)
    run = agentflow.start(
        "llm-chats",
        {"providers": [f"{upstream.kind}-cutter", upstream.kind], "model": model, "calls": calls,
         "concurrent": True, "stream": True, "max_attempts": 1},
    )  # fmt: skip
    texts = agentflow.wait(run, timeout_seconds=60)

    events = events_of(run)
    kept = apply_voiding(events)
    steps = sorted({e["step"] for e in events if e["type"] == "output.delta"})
    assert len(steps) == calls
    for index, text in enumerate(texts):
        step = f"openai.chat#{index}"
        assert streamed_text(kept, step) == text, step  # every streamed step rebuilds exactly its result
    # Five calls fell back after forwarding text; the stream voided it, then the next provider streamed.
    fell_back = [s for s in StepRun.objects.filter(run=run) if s.usage.get("fallbacks")]
    assert len(fell_back) == cut
    for step in fell_back:
        assert step.usage["provider"] == upstream.kind and step.status == "completed"
        mine = [e for e in events if e["step"] == step.step_id]
        retrying = [e for e in mine if e["type"] == "step.retrying"]
        assert [(e["data"]["reason"], e["data"]["provider"]) for e in retrying] == [
            ("fallback", f"{upstream.kind}-cutter")
        ]
        assert retrying[0]["data"]["delay_seconds"] == 0
        assert streamed_text(mine, step.step_id) != streamed_text(kept, step.step_id)  # the test bit
        # max_attempts=1, yet a second attempt: a fallback does not use up the retry policy's attempts.
        assert step.attempts == 2
        assert [e["attempt"] for e in mine if e["type"] == "step.started"] == [1, 2]


# -- 2. a budget in a fan-out ------------------------------------------------------------------------------


def test_a_budget_in_a_fan_out_sends_every_call_holding_a_reservation(upstream: Any) -> None:
    calls, budget, max_tokens = 50, 200, 20
    model = f"m-budget-{upstream.kind}"
    run = agentflow.start(
        "llm-chats",
        {"providers": [upstream.kind], "model": model, "calls": calls, "concurrent": True,
         "max_tokens": max_tokens},
        budget={"tokens": budget},
    )  # fmt: skip
    with pytest.raises(agentflow.RunFailed):
        agentflow.wait(run, timeout_seconds=60)
    run.refresh_from_db()
    assert run.error["code"] == "budget_exceeded"

    # The reservations granted at once: calls start in order, each holding its estimate, until the estimates
    # fill the budget.
    held = granted = 0
    for index in range(calls):
        request = {"model": model, "max_tokens": max_tokens,
                   "messages": [{"role": "user", "content": f"question number {index} please"}]}  # fmt: skip
        if held >= budget:
            break
        held, granted = held + sum(estimate_parts(CHAT, request)), granted + 1
    sent = len(upstream.arrivals(model))
    assert sent == run.usage["calls"] >= granted >= 2
    assert run.usage["total_tokens"] >= budget  # it stopped because the budget was spent, not estimated
    assert StepRun.objects.filter(run=run, status="completed").count() == sent
    assert sent < calls


# -- 3. a stream without its usage chunk -------------------------------------------------------------------


def test_a_stream_ending_without_its_usage_chunk_is_counted_with_estimated_tokens(upstream: Any) -> None:
    model = f"m-no-usage-{upstream.kind}"
    upstream.end_after_last_choice(model)
    run = agentflow.start("llm-chats", {"providers": [upstream.kind], "model": model, "stream": True})
    [text] = agentflow.wait(run, timeout_seconds=30)

    assert len(upstream.arrivals(model)) == 1
    step = StepRun.objects.get(run=run)
    assert step.attempts == 1 and step.output  # the reply was complete: its last choice had arrived
    assert step.usage["calls"] == 1 and step.usage["estimated_calls"] == 1
    assert step.usage["prompt_tokens"] > 0
    assert step.usage["completion_tokens"] == pytest.approx(len(text) / 4, abs=2)
    run.refresh_from_db()
    assert run.usage["calls"] == 1 and run.usage["estimated_calls"] == 1


def test_a_reply_without_usage_streamed_or_not_is_counted_with_estimated_tokens(upstreams: Any) -> None:
    # A provider ignoring stream_options.include_usage (with [DONE]), and replies without "usage" at all.
    fake = upstreams["fake"]
    fake.server.fail({"no_usage": True, "times": 2}, model="m-no-usage-plain")
    fake.server.fail({"no_usage": True}, model="m-no-usage-streamed")
    run = agentflow.start("llm-chats", {"providers": ["fake"], "model": "m-no-usage-plain", "calls": 2})
    streamed = agentflow.start(
        "llm-chats", {"providers": ["fake"], "model": "m-no-usage-streamed", "stream": True}
    )
    agentflow.wait(run, timeout_seconds=30)
    agentflow.wait(streamed, timeout_seconds=30)
    for one in (run, streamed):
        one.refresh_from_db()
    assert run.usage["calls"] == 2 and run.usage["estimated_calls"] == 2
    assert streamed.usage["calls"] == 1 and streamed.usage["estimated_calls"] == 1
    assert len(fake.arrivals("m-no-usage-plain")) == 2 and len(fake.arrivals("m-no-usage-streamed")) == 1


# -- 4. the shared rate limit on the provider's clock --------------------------------------------------------


def test_a_shared_limit_holds_on_the_providers_clock_from_the_first_window(upstream: Any) -> None:
    n_runs, calls = 2, 6
    model = f"m-limited-{upstream.kind}"
    runs = [
        agentflow.start(
            "llm-chats",
            {"providers": [f"{upstream.kind}-limited"], "model": model, "calls": calls, "concurrent": True},
        )
        for _ in range(n_runs)
    ]
    for run in runs:
        assert len(agentflow.wait(run, timeout_seconds=60)) == calls

    times = upstream.arrivals(model)
    assert len(times) == n_runs * calls
    # Every window of the limiter's length, on the server's clock, starting at any arrival (the first one
    # included: each run's first calls set up a new HTTP client and connection).
    busiest = max(sum(1 for t in times if start <= t < start + WINDOW_SECONDS) for start in times)
    assert busiest == LIMIT
    for run in runs:
        run.refresh_from_db()
    assert len({run.worker for run in runs}) == 2  # two workers shared the limit, each with cold clients


# -- 5. an error message that echoes the key ---------------------------------------------------------------


def test_an_api_key_echoed_in_a_provider_error_is_never_kept_or_shown(
    upstream: Any, edge_workers: list[Worker], redis_client: redis.Redis
) -> None:
    model = f"m-secret-{upstream.kind}"
    upstream.fail_with(
        model, 401, f"Incorrect API key provided: {SECRET_KEY}. Sent: Authorization: Bearer {SECRET_KEY}"
    )
    owner = User.objects.create_user(f"owner-{upstream.kind}", is_staff=True, is_superuser=True)
    run = agentflow.start(
        "llm-chats", {"providers": [f"{upstream.kind}-secret"], "model": model}, owner=owner
    )
    with pytest.raises(agentflow.RunFailed):
        agentflow.wait(run, timeout_seconds=30)
    run.refresh_from_db()
    assert len(upstream.arrivals(model)) == 1

    api = APIClient()
    api.force_authenticate(owner)
    shown = api.get(reverse("agentflow:run-detail", args=[run.pk])).content.decode()
    cause = json.loads(shown)["error"]["cause"]
    assert cause["type"] == "AuthenticationError" and "Incorrect API key provided" in cause["message"]
    admin = Client()
    admin.force_login(owner)
    page = admin.get(reverse("admin:agentflow_workflowrun_change", args=[run.pk])).content.decode()
    assert "Incorrect API key provided" in page

    stored = [
        shown,
        page,
        json.dumps(events_of(run)),
        json.dumps([e.as_event() for e in RunEvent.objects.filter(run=run)]),
        json.dumps([run.error, run.usage]),
        json.dumps([[s.error, s.usage, s.output] for s in StepRun.objects.filter(run=run)]),
        # Every Redis key this run left behind (its stream, its metadata), raw.
        json.dumps([str(redis_client.dump(key)) for key in redis_client.scan_iter(f"*{run.pk}*")]),
        "".join(line for worker in edge_workers for line in worker.log),
    ]
    assert all(SECRET_KEY not in text for text in stored)
    assert any("[redacted]" in text for text in stored[:1])
    assert [e["type"] for e in events_of(run) if e["type"] in ev.TERMINAL_TYPES] == ["run.failed"]
