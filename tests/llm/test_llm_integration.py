"""The LLM layer end to end: runs on real Celery workers (two processes) calling fake OpenAI servers that run
in processes of their own, with faults injected on the server and every figure checked against what the
server saw (its request log and token counts), not against what the client believes it did.

One configuration serves the whole module: two servers, three providers (``primary`` and ``shared`` on
server 1 with different API keys, ``secondary`` on server 2) and two solo workers. Each test picks its
providers by name (tests/testapp/workflows_llm.py) and uses models of its own, so rate-limit keys, faults
and counts never leak from one test into the next.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import openai
import pytest
import redis
from django.test import override_settings

import agentflow
from agentflow import streams
from agentflow.conf import agentflow_settings
from agentflow.core import events as ev
from agentflow.core.usage import COUNTS
from agentflow.llm.providers import configured_providers
from agentflow.models import StepRun, WorkflowRun
from agentflow.ratelimit import limiter
from agentflow.testing.fake_openai import FakeOpenAI, FakeOpenAIProcess
from tests.conftest import Worker, apply_voiding, running_workers, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

QUEUE = "agentflow-llm"
# The shared limit: LIMIT requests per WINDOW_SECONDS for provider "shared", across both workers; the
# limiter's log spans the window plus JITTER_SECONDS (grant-to-arrival delays vary by less than that here).
LIMIT, WINDOW_SECONDS, JITTER_SECONDS = 4, 1.0, 0.25
# A wait longer than this hands the run back (status waiting) instead of blocking the worker.
SUSPEND_THRESHOLD_SECONDS = 2.0
RETRY_AFTER_SECONDS = 1.2  # below the threshold: the retry waits in-process
PRICES = {
    "m-usage": {"input": 2.5, "output": 10.0},
    "m-usage-embed*": {"input": 0.13},
    "m-budget-usd": {"input": 500.0, "output": 500.0},
}


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[FakeOpenAIProcess, FakeOpenAIProcess]]:
    with FakeOpenAI.spawn(completion_tokens=20) as one, FakeOpenAI.spawn(completion_tokens=20) as two:
        yield one, two


@pytest.fixture(scope="module")
def llm_settings(servers: tuple[FakeOpenAIProcess, FakeOpenAIProcess]) -> dict[str, Any]:
    one, two = servers
    return {
        "TASK_QUEUE": QUEUE,
        "LLM_PROVIDERS": [
            {"name": "primary", "base_url": one.base_url, "api_key": "key-primary"},
            {"name": "secondary", "base_url": two.base_url, "api_key": "key-secondary"},
            {"name": "shared", "base_url": one.base_url, "api_key": "key-shared"},
        ],
        "RATE_LIMITS": {"shared:*": {"requests_per_minute": LIMIT}},
        "RATE_LIMIT_WINDOW_SECONDS": WINDOW_SECONDS,
        "RATE_LIMIT_JITTER_SECONDS": JITTER_SECONDS,
        "LLM_PRICES": PRICES,
        "LLM_STREAM_COALESCE_SECONDS": 0,  # every token its own output.delta event
        "SUSPEND_THRESHOLD_SECONDS": SUSPEND_THRESHOLD_SECONDS,
        # The workers live for the whole module: one test's failures must not open a breaker for the next.
        "LLM_PROVIDER_FAILURE_THRESHOLD": 1000,
    }


@pytest.fixture(scope="module")
def llm_workers(
    django_db_setup: None, redis_client: redis.Redis, llm_settings: dict[str, Any]
) -> Iterator[list[Worker]]:
    """Two solo workers (two processes sharing the limits through Redis) with this module's settings."""
    with running_workers(QUEUE, llm_settings, count=2, name="llm") as workers:
        yield workers


@pytest.fixture(autouse=True)
def _llm(
    llm_workers: list[Worker],
    llm_settings: dict[str, Any],
    servers: tuple[FakeOpenAIProcess, FakeOpenAIProcess],
) -> Iterator[None]:
    # The test process enqueues on the workers' queue and computes keys and prices with their settings.
    with override_settings(AGENTFLOW={**agentflow_settings.user_settings, **llm_settings}):
        for server in servers:
            server.reset()
        yield


def events_of(run: WorkflowRun) -> list[dict[str, Any]]:
    return streams.read_events(str(run.pk))


def types_of(run: WorkflowRun) -> set[str]:
    return {event["type"] for event in events_of(run)}


def ts(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["ts"]).timestamp()


def arrivals(server: FakeOpenAIProcess, *, model: str | None = None, key: str | None = None) -> list[float]:
    """When the server received each API request (its own clock), oldest first."""
    return sorted(
        entry["time"]
        for entry in server.stats()["request_log"]
        if (model is None or entry["model"] == model) and (key is None or entry["key"] == key)
    )


def joined_deltas(events: list[dict[str, Any]]) -> str:
    return "".join(event["data"]["text"] for event in events if event["type"] == "output.delta")


def probe_reply(server: FakeOpenAIProcess, model: str, prompt: str) -> str:
    """The reply the server gives this request (its replies are a function of the request), asked directly."""
    with openai.OpenAI(base_url=server.base_url, api_key="probe", max_retries=0) as client:
        reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}])
    return str(reply.choices[0].message.content)


def counts_of(usage: dict[str, Any]) -> dict[str, int]:
    return {key: usage.get(key, 0) for key in COUNTS}


def server_counts(counts: dict[str, int]) -> dict[str, int]:
    return {"calls": counts["requests"], **{key: counts[key] for key in COUNTS if key != "calls"}}


# -- retries -------------------------------------------------------------------------------------------------


def test_a_429_with_retry_after_delays_the_next_attempt_at_least_that_long(servers):
    primary, _ = servers
    primary.fail({"status": 429, "retry_after": RETRY_AFTER_SECONDS}, model="m-429")
    run = agentflow.start("llm-chats", {"providers": ["primary"], "model": "m-429"})
    [text] = agentflow.wait(run, timeout_seconds=30)

    # On the server's clock: the second request came at least Retry-After after the first.
    first, second = arrivals(primary, model="m-429")
    assert second - first >= RETRY_AFTER_SECONDS
    events = [e for e in events_of(run) if e["step"] == "openai.chat#0"]
    started = [e for e in events if e["type"] == "step.started"]
    [retrying] = [e for e in events if e["type"] == "step.retrying"]
    assert [e["attempt"] for e in started] == [1, 2]
    assert retrying["data"]["error"]["type"] == "RateLimitError"
    assert retrying["data"]["delay_seconds"] >= RETRY_AFTER_SECONDS
    assert ts(started[1]) - ts(started[0]) >= RETRY_AFTER_SECONDS
    step = StepRun.objects.get(run=run)
    assert (step.status, step.attempts) == ("completed", 2)
    # Only the answered request is billed; the 429 was counted as a fault.
    stats = primary.stats()
    assert stats["faults_injected"] == 1 and stats["by_key"]["key-primary"]["requests"] == 1
    assert step.usage["calls"] == 1 and len(text.split()) == 20


def test_a_stream_cut_midway_is_retried_and_its_partial_output_voided(servers):
    primary, _ = servers
    primary.fail({"drop_after_chunks": 3}, model="m-drop")
    run = agentflow.start(
        "llm-chats",
        {
            "providers": ["primary"],
            "model": "m-drop",
            "stream": True,
            "retry_delay_seconds": 0.05,
            # Paced, so the worker forwards the first tokens before the connection drops.
            "headers": {"X-Fake-Tokens-Per-Second": "200"},
        },
    )
    [text] = agentflow.wait(run, timeout_seconds=30)
    reply = probe_reply(primary, "m-drop", "question number 0 please")
    assert text == reply

    events = events_of(run)
    mine = [
        e for e in events if e["step"] == "openai.chat#0" and e["type"] in {"output.delta", "step.retrying"}
    ]
    order = [(e["type"], e["attempt"]) for e in mine]
    cut = order.index(("step.retrying", 1))
    assert order[cut + 1 :] == [("output.delta", 2)] * (len(order) - cut - 1)
    partial = joined_deltas(mine[:cut])
    assert order[:cut] == [("output.delta", 1)] * cut and cut >= 1
    assert reply.startswith(partial) and len(partial) < len(reply)
    retried = [e["data"]["text"] for e in mine[cut + 1 :]]
    assert "".join(retried) == reply and len(retried) == len(reply.split())  # one event per token

    # The stream as a subscriber sees it: attempt 1's text, then attempt 2's. Voided, the reply exactly once.
    assert joined_deltas(events) == partial + reply
    assert joined_deltas(apply_voiding(events)) == reply
    assert [e["data"]["value"] for e in events if e["type"] == "output"] == [[reply]]
    assert StepRun.objects.get(run=run).attempts == 2


def test_a_failing_provider_falls_back_to_the_next_within_the_attempt(servers):
    primary, secondary = servers
    primary.fail({"status": 500, "times": 10}, model="m-fallback")
    run = agentflow.start(
        "llm-chats", {"providers": ["primary", "secondary"], "model": "m-fallback", "calls": 2}
    )
    texts = agentflow.wait(run, timeout_seconds=30)

    assert len(texts) == 2
    steps = list(StepRun.objects.filter(run=run).order_by("step_id"))
    assert [s.step_id for s in steps] == ["openai.chat#0", "openai.chat#1"]
    for step in steps:
        assert (step.status, step.attempts) == ("completed", 1)  # no retry: the fallback was immediate
        notes = {key: step.usage[key] for key in ("provider", "model", "calls")}
        assert notes == {"provider": "secondary", "model": "m-fallback", "calls": 1}
        [fallback] = step.usage["fallbacks"]
        assert (fallback["provider"], fallback["model"]) == ("primary", "m-fallback")
        assert (fallback["error"]["type"], fallback["error"]["status"]) == ("InternalServerError", 500)
    assert "step.retrying" not in types_of(run)
    # Server 2 served both calls; server 1 was asked twice and answered neither.
    assert secondary.stats()["by_key"]["key-secondary"]["requests"] == 2
    stats = primary.stats()
    assert len(arrivals(primary, model="m-fallback")) == 2 and stats["faults_injected"] == 2
    assert "key-primary" not in stats["by_key"]
    run.refresh_from_db()
    assert run.usage["calls"] == 2


def test_a_reply_with_text_the_database_cannot_store_is_kept_with_replacement_characters(servers):
    # U+0000 and a lone surrogate in a provider's reply (streamed and not): before, the checkpoint of the
    # reply failed (or the stream's writer stalled on the surrogate, leaving the run running for good).
    primary, _ = servers
    words = ["nul\x00here", "half\ud83d", "fine"]
    primary.fail({"words": words, "times": 2}, model="m-unstorable")
    runs = [
        agentflow.start("llm-chats", {"providers": ["primary"], "model": "m-unstorable", "stream": stream})
        for stream in (False, True)
    ]
    expected = "nul\ufffdhere half\ufffd fine"
    for run, strings in zip(runs, (1, 2), strict=True):  # the message's content; two chunks' deltas
        assert agentflow.wait(run, timeout_seconds=30) == [expected]
        step = StepRun.objects.get(run=run)
        assert (step.status, step.attempts) == ("completed", 1)  # kept, not retried: the provider was paid
        assert json.dumps(step.output, ensure_ascii=False).count("\ufffd") == 2
        assert step.usage["replaced"]["count"] == strings
        assert step.usage["replaced"]["code"] == "null_character"
    # The streamed reply's deltas hold the same text as its checkpoint and its return value.
    assert joined_deltas(events_of(runs[1])) == expected
    assert primary.stats()["faults_injected"] == 2


# -- the shared rate limit -----------------------------------------------------------------------------------


def test_two_workers_together_never_exceed_the_shared_limit_in_any_window(servers):
    primary, _ = servers
    n_runs, calls = 4, 5
    runs = [
        agentflow.start(
            "llm-chats", {"providers": ["shared"], "model": "m-limited", "calls": calls, "concurrent": True}
        )
        for _ in range(n_runs)
    ]
    for run in runs:
        assert len(agentflow.wait(run, timeout_seconds=60)) == calls

    times = arrivals(primary, key="key-shared")
    assert len(times) == n_runs * calls
    # On the server's clock, every window of the limit's length: grants are timed by Redis and arrive a little
    # later, by a delay that varies less than the limiter's jitter allowance. Without sharing, both workers
    # would each take LIMIT at once, 2 * LIMIT within milliseconds.
    busiest = max(sum(1 for t in times if start <= t < start + WINDOW_SECONDS) for start in times)
    assert busiest == LIMIT  # never above the limit, and the limit was reached (the test bit)
    # Both workers took part, at the same time.
    for run in runs:
        run.refresh_from_db()
    assert len({run.worker for run in runs}) == 2
    assert any(
        a.worker != b.worker and a.started_at < b.finished_at and b.started_at < a.finished_at
        for a in runs
        for b in runs
    )


def test_a_long_capacity_wait_frees_the_worker_and_does_not_use_up_attempts(servers):
    primary, _ = servers
    provider = next(p for p in configured_providers() if p.name == "primary")
    block_seconds = SUSPEND_THRESHOLD_SECONDS + 2.0
    # As a 429's Retry-After seen by another worker would: every worker must wait that long for this key.
    blocked_until = time.time() + block_seconds
    limiter.penalize(provider.limit_key("m-blocked"), block_seconds)
    # One blocked run per worker, each allowed a single attempt.
    blocked = [
        agentflow.start("llm-chats", {"providers": ["primary"], "model": "m-blocked", "max_attempts": 1})
        for _ in range(2)
    ]
    for run in blocked:
        wait_for(
            lambda run=run: types_of(run) & {"run.waiting", *ev.TERMINAL_TYPES},
            10,
            "the run handed back or ended",
        )
        assert "run.waiting" in types_of(run), types_of(run)
    # Neither worker is held: another run completes while the blocked ones wait.
    quick = agentflow.start("llm-chats", {"providers": ["primary"], "model": "m-free"})
    agentflow.wait(quick, timeout_seconds=10)
    quick.refresh_from_db()
    for run in blocked:
        run.refresh_from_db()
        assert run.status == "waiting" and quick.finished_at < run.wake_at

    for run in blocked:
        assert len(agentflow.wait(run, timeout_seconds=20)) == 1
        events = events_of(run)
        [waiting] = [e for e in events if e["type"] == "run.waiting"]
        assert waiting["data"]["reason"] == "retry"
        [retrying] = [e for e in events if e["type"] == "step.retrying"]
        assert retrying["data"]["error"]["type"] == "RateLimited"
        step = StepRun.objects.get(run=run)
        assert (step.status, step.attempts) == ("completed", 2)  # max_attempts=1: the wait was not an attempt
    # The provider was not called while the key was blocked: one request per run, after the block.
    times = arrivals(primary, model="m-blocked")
    assert len(times) == 2 and times[0] >= blocked_until


# -- usage, cost and budgets ---------------------------------------------------------------------------------


def test_usage_and_cost_match_the_servers_own_counts(servers):
    primary, _ = servers
    run = agentflow.start(
        "llm-usage-mix",
        {"providers": ["primary"], "chat_model": "m-usage", "embedding_model": "m-usage-embed"},
    )
    output = agentflow.wait(run, timeout_seconds=30)
    assert output["embeddings"] == 3 and all(
        output[k] for k in ("chat", "stream", "response", "response_stream")
    )

    stats = primary.stats()
    run.refresh_from_db()
    usage = run.usage
    assert counts_of(usage) == server_counts(stats["by_key"]["key-primary"])
    assert usage["calls"] == 6
    for model in ("m-usage", "m-usage-embed"):
        assert counts_of(usage["by_model"][model]) == server_counts(stats["by_model"][model])

    # Each call's usage is on its own step; the component holding a call spends nothing itself.
    steps = {s.step_id: s.usage for s in StepRun.objects.filter(run=run)}
    assert not (steps["summarize#0"] or {}).get("calls")
    assert steps["summarize#0/openai.chat#0"]["calls"] == 1
    summed = {key: sum((u or {}).get(key, 0) for u in steps.values()) for key in COUNTS}
    assert summed == counts_of(usage)

    # Priced by LLM_PRICES (USD per million tokens), from the server's token counts.
    chat, embed = stats["by_model"]["m-usage"], stats["by_model"]["m-usage-embed"]
    expected = (
        chat["prompt_tokens"] * 2.5 + chat["completion_tokens"] * 10.0 + embed["prompt_tokens"] * 0.13
    ) / 1e6
    assert usage["cost_usd"] == pytest.approx(expected, rel=1e-6)
    assert sum((u or {}).get("cost_usd") or 0 for u in steps.values()) == pytest.approx(expected, rel=1e-6)
    assert not usage.get("unpriced_calls")


def stopped_by_budget(run: WorkflowRun, server: FakeOpenAIProcess, model: str) -> int:
    """Check the run failed with ``budget_exceeded``, keeping what it completed; return the calls it made."""
    with pytest.raises(agentflow.RunFailed):
        agentflow.wait(run, timeout_seconds=30)
    run.refresh_from_db()
    assert run.status == "failed" and run.error["code"] == "budget_exceeded"
    made = server.stats()["by_model"][model]["requests"]
    assert 0 < made < 10  # the workflow would have made 10 calls
    assert run.usage["calls"] == made
    # What completed stays checkpointed (a resume would not call again).
    done = StepRun.objects.filter(run=run, status="completed").order_by("finished_at")
    assert [s.step_id for s in done] == [f"openai.chat#{i}" for i in range(made)]
    assert all(s.output for s in done)
    events = events_of(run)
    terminal = [e for e in events if e["type"] in ev.TERMINAL_TYPES]
    assert [e["type"] for e in terminal] == ["run.failed"] and terminal[0] == events[-1]
    assert terminal[0]["data"]["error"]["code"] == "budget_exceeded"
    return int(made)


def test_a_token_budget_given_at_start_stops_the_run(servers):
    primary, _ = servers
    tokens = 60
    run = agentflow.start(
        "llm-chats", {"providers": ["primary"], "model": "m-budget", "calls": 10}, budget={"tokens": tokens}
    )
    made = stopped_by_budget(run, primary, "m-budget")
    counts = primary.stats()["by_model"]["m-budget"]
    # Calls are made one after another: it stops after the first call that reaches the budget.
    per_call = counts["total_tokens"] / made
    assert made == math.ceil(tokens / per_call)
    assert run.budget == {"tokens": tokens} and run.error["details"]["limit"] == "tokens"
    assert run.usage["total_tokens"] == counts["total_tokens"] >= tokens


def test_the_workflows_own_usd_budget_stops_the_run(servers):
    primary, _ = servers
    run = agentflow.start("llm-chats-budgeted", {"providers": ["primary"], "model": "m-budget-usd"})
    made = stopped_by_budget(run, primary, "m-budget-usd")
    counts = primary.stats()["by_model"]["m-budget-usd"]
    per_call_usd = counts["total_tokens"] * 500.0 / 1e6 / made  # PRICES: $500 per million tokens
    assert made == math.ceil(0.05 / per_call_usd)
    assert run.budget == {"usd": 0.05} and run.error["details"]["limit"] == "usd"
    assert run.usage["cost_usd"] == pytest.approx(counts["total_tokens"] * 500.0 / 1e6)
    assert run.usage["cost_usd"] >= 0.05
