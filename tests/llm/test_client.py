"""The wrapped OpenAI clients against the fake server (in a thread, real HTTP), runs in memory.

The cross-process checks (Celery workers, the server as its own process, PostgreSQL) are in
test_llm_integration.py; these pin the client's behaviour call by call.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import threading
import time
from typing import Any

import openai
import pytest
from django.test import override_settings
from openai.types.chat import ChatCompletion, ChatCompletionChunk

import agentflow
from agentflow.conf import agentflow_settings
from agentflow.core.errors import BudgetExceeded, StepFailed
from agentflow.core.memory import MemoryCache, MemorySink, MemoryStore, run_in_memory
from agentflow.llm import AsyncOpenAI, OpenAI, Provider, RecordedStream
from agentflow.llm.calls import estimate_parts, pack, retry_after_seconds, unpack
from agentflow.llm.pricing import cost, find_price, validate_prices
from agentflow.llm.providers import parse_providers
from agentflow.llm.slots import Slots
from agentflow.testing import FakeOpenAI, run_inline

MESSAGES = [{"role": "user", "content": "write about durable workflows"}]


_names = iter(range(1_000_000))


def workflow(fn: Any) -> agentflow.Workflow[Any, Any]:
    """Register ``fn`` under a fresh name (these tests define many small workflows)."""
    return agentflow.workflow(name=f"llm-test-{next(_names)}")(fn)


def reply_of(fake: FakeOpenAI, model: str = "fake-model") -> str:
    with openai.OpenAI(base_url=fake.base_url, api_key="other", max_retries=0) as sdk:
        content = sdk.chat.completions.create(model=model, messages=MESSAGES).choices[0].message.content
    return content or ""


def requests_for(fake: FakeOpenAI, model: str) -> int:
    """Requests the server counted for ``model``: a test's own, whatever another test's abandoned call (a sync
    step left running after its time-out) sends the shared server later."""
    return int(fake.stats()["by_model"].get(model, {}).get("requests", 0))


def deltas(events: list[dict[str, Any]], step: str | None = None) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == "output.delta" and (step is None or e["step"] == step)]


# -- outside a workflow: the plain SDK -------------------------------------------------------------------


def test_outside_a_workflow_the_sync_client_is_the_plain_sdk(fake: FakeOpenAI) -> None:
    client = OpenAI(base_url=fake.base_url, api_key="test-key")
    fake.fail({"status": 500})  # the SDK's own retries absorb it
    reply = client.chat.completions.create(model="fake-model", messages=MESSAGES)
    assert isinstance(reply, ChatCompletion)
    assert reply.choices[0].message.content == reply_of(fake)
    stream = client.chat.completions.create(model="fake-model", messages=MESSAGES, stream=True)
    assert isinstance(stream, openai.Stream)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == reply_of(fake)
    client.close()
    assert fake.stats()["faults_injected"] == 1


def test_outside_a_workflow_the_async_client_is_the_plain_sdk(fake: FakeOpenAI) -> None:
    async def main() -> tuple[str, int]:
        async with AsyncOpenAI(base_url=fake.base_url, api_key="test-key") as client:
            reply = await client.chat.completions.create(model="fake-model", messages=MESSAGES)
            embedded = await client.embeddings.create(model="fake-embedding", input=["a", "b", "c"])
            return reply.choices[0].message.content or "", len(embedded.data)

    assert asyncio.run(main()) == (reply_of(fake), 3)


def test_outside_a_workflow_the_first_provider_maps_the_model(fake: FakeOpenAI) -> None:
    client = OpenAI(
        providers=[
            {"name": "p", "base_url": fake.base_url, "api_key": "k", "models": {"small": "fake-model"}}
        ]
    )
    reply = client.chat.completions.create(model="small", messages=MESSAGES)
    assert reply.model == "fake-model"
    client.close()


# -- inside a workflow: steps ----------------------------------------------------------------------------


def test_each_call_is_a_checkpointed_step_and_replay_calls_nothing(fake: FakeOpenAI, providers: Any) -> None:
    client = AsyncOpenAI()

    @workflow
    async def flow() -> dict[str, Any]:
        reply = await client.chat.completions.create(model="fake-model", messages=MESSAGES)
        answer = await client.responses.create(model="fake-model", input="hello there")
        vectors = await client.embeddings.create(model="fake-embedding", input=["a", "b"])
        assert isinstance(reply, ChatCompletion)
        return {
            "chat": reply.choices[0].message.content,
            "responses": answer.output_text,
            "dimensions": [len(item.embedding) for item in vectors.data],
        }

    store, sink = MemoryStore(), MemorySink()
    output, _ = run_in_memory(flow, store=store, sink=sink)
    assert output["chat"] == reply_of(fake)
    assert output["dimensions"] == [16, 16]
    assert set(store.records) == {"openai.chat#0", "openai.responses#0", "openai.embeddings#0"}
    requests = fake.stats()["requests"]
    # A new incarnation replays from the checkpoints: the same answers, no request.
    again, ctx = run_in_memory(flow, store=store, sink=MemorySink())
    assert again == output
    assert fake.stats()["requests"] == requests
    assert ctx.steps_replayed == 3


def test_usage_is_recorded_per_step_and_per_run_with_prices(fake: FakeOpenAI, providers: Any) -> None:
    client = OpenAI()

    @workflow
    def flow() -> None:
        client.chat.completions.create(model="fake-model", messages=MESSAGES)
        client.chat.completions.create(model="fake-model", messages=MESSAGES, stream=True)
        client.embeddings.create(model="fake-embedding", input="some text")

    prices = {"fake-model": {"input": 1.0, "output": 2.0}, "fake-*": {"input": 0.5}}
    with override_settings(AGENTFLOW={**agentflow_settings.user_settings, "LLM_PRICES": prices}):
        run = run_inline(flow)
    served = fake.stats()["by_key"]["test-key"]
    assert run.usage["calls"] == served["requests"] == 3
    assert run.usage["prompt_tokens"] == served["prompt_tokens"]
    assert run.usage["completion_tokens"] == served["completion_tokens"] == 24
    chat = run.steps["openai.chat#0"].usage
    assert chat is not None and chat["provider"] == "fake" and chat["model"] == "fake-model"
    expected = (2 * chat["prompt_tokens"] * 1.0 + 24 * 2.0) / 1e6
    embedding = run.steps["openai.embeddings#0"].usage
    assert embedding is not None
    expected += embedding["prompt_tokens"] * 0.5 / 1e6
    assert run.usage["cost_usd"] == pytest.approx(expected)
    assert run.usage["by_model"]["fake-embedding"]["calls"] == 1
    assert "unpriced_calls" not in run.usage


def test_a_streamed_call_forwards_coalesced_tokens_and_returns_the_chunks(
    fake: FakeOpenAI, providers: Any
) -> None:
    client = AsyncOpenAI()

    @workflow
    async def flow() -> list[str]:
        stream = await client.chat.completions.create(model="fake-model", messages=MESSAGES, stream=True)
        assert isinstance(stream, RecordedStream)
        chunks = [chunk async for chunk in stream]
        assert all(isinstance(chunk, ChatCompletionChunk) for chunk in chunks)
        # The usage chunk the client asked for on the caller's behalf is not handed back.
        assert all(chunk.choices for chunk in chunks)
        return [stream.text, "".join(c.choices[0].delta.content or "" for c in chunks)]

    settings = agentflow_settings.user_settings
    with override_settings(AGENTFLOW={**settings, "LLM_STREAM_COALESCE_SECONDS": 0}):
        each = run_inline(flow)
    with override_settings(AGENTFLOW={**settings, "LLM_STREAM_COALESCE_SECONDS": 60}):
        coalesced = run_inline(flow)
    text = reply_of(fake)
    assert each.output == [text, text]
    assert coalesced.output == [text, text]
    assert len(deltas(each.events)) == 12  # one event per token
    assert 1 <= len(deltas(coalesced.events)) <= 2  # the first token at once, the rest in one event
    for run in (each, coalesced):
        assert "".join(e["data"]["text"] for e in deltas(run.events, "openai.chat#0")) == text
        assert all(e["attempt"] == 1 for e in deltas(run.events))


def test_stream_to_data_with_a_label_or_nowhere(fake: FakeOpenAI, providers: Any) -> None:
    base = AsyncOpenAI()
    labelled, silent = base.with_step(stream_to="data", label="draft"), base.with_step(stream_to=None)

    @workflow
    async def flow() -> str:
        first = await labelled.responses.create(model="fake-model", input="hi", stream=True)
        second = await silent.chat.completions.create(model="fake-model", messages=MESSAGES, stream=True)
        return first.text + "|" + second.text

    run = run_inline(flow)
    data = run.of_type("data")
    assert {e["data"]["label"] for e in data} == {"draft"}
    assert "".join(e["data"]["value"] for e in data) == run.output.split("|")[0]
    assert not deltas(run.events)
    assert run.output.split("|")[1] == reply_of(fake)


def test_a_429_is_retried_after_retry_after(fake: FakeOpenAI, providers: Any) -> None:
    client = OpenAI()

    @workflow
    def flow() -> str:
        return client.chat.completions.create(model="fake-model", messages=MESSAGES).id

    fake.fail({"status": 429, "retry_after": 0.4})
    run = run_inline(flow)
    retrying = run.of_type("step.retrying")
    assert len(retrying) == 1
    assert retrying[0]["data"]["delay_seconds"] >= 0.4
    assert retrying[0]["data"]["error"]["type"] == "RateLimitError"
    started = [e for e in run.of_type("step.started")]
    assert [e["attempt"] for e in started] == [1, 2]
    assert run.steps["openai.chat#0"].attempts == 2


@pytest.mark.parametrize(
    ("fault", "outcome"),
    [
        ({"status": 400, "message": "bad request"}, "BadRequestError after 1"),
        ({"status": 401}, "AuthenticationError after 1"),
        ({"status": 404}, "NotFoundError after 1"),
        # Waiting does not refill a quota.
        ({"status": 429, "code": "insufficient_quota"}, "ProviderQuotaExceeded after 1"),
    ],
)
def test_errors_that_another_attempt_cannot_fix_are_not_retried(
    fake: FakeOpenAI, providers: Any, fault: dict[str, Any], outcome: str
) -> None:
    client = OpenAI()

    @workflow
    def flow() -> str:
        try:
            client.chat.completions.create(model="fake-model", messages=MESSAGES)
        except StepFailed as exc:
            return f"{exc.error_type} after {exc.attempts}"
        return "no error"

    fake.fail(fault)
    assert run_inline(flow).output == outcome
    assert fake.stats()["requests"] == 1


def test_a_dropped_stream_is_retried_and_its_tokens_voided_first(fake: FakeOpenAI, providers: Any) -> None:
    client = AsyncOpenAI().with_step(retry=agentflow.RetryPolicy(max_attempts=3, initial_delay_seconds=0))

    @workflow
    async def flow() -> str:
        stream = await client.chat.completions.create(model="fake-model", messages=MESSAGES, stream=True)
        return stream.text

    fake.fail({"drop_after_chunks": 4})
    with override_settings(AGENTFLOW={**agentflow_settings.user_settings, "LLM_STREAM_COALESCE_SECONDS": 0}):
        run = run_inline(flow)
    assert run.output == reply_of(fake)
    kinds = [(e["type"], e["attempt"]) for e in run.events if e["type"] in ("output.delta", "step.retrying")]
    retry_at = kinds.index(("step.retrying", 1))
    assert retry_at >= 1 and all(kind == ("output.delta", 1) for kind in kinds[:retry_at])
    assert all(kind == ("output.delta", 2) for kind in kinds[retry_at + 1 :])
    # A client dropping the voided attempt's deltas rebuilds the reply exactly once.
    kept = [e["data"]["text"] for e in deltas(run.events) if e["attempt"] == 2]
    assert "".join(kept) == run.output


def test_fallback_to_the_next_provider_is_recorded_on_the_step(fake: FakeOpenAI, backup: FakeOpenAI) -> None:
    backup.reset()
    client = AsyncOpenAI(
        providers=[
            {"name": "primary", "base_url": fake.base_url, "api_key": "k1"},
            {
                "name": "secondary",
                "base_url": backup.base_url,
                "api_key": "k2",
                "models": {"m": "fake-model"},
            },
        ]
    )

    @workflow
    async def flow() -> str:
        reply = await client.chat.completions.create(model="m", messages=MESSAGES)
        return reply.model

    fake.fail({"status": 500, "times": 5})
    run = run_inline(flow)
    assert run.output == "fake-model"  # the secondary's name for "m"
    usage = run.steps["openai.chat#0"].usage
    assert usage is not None
    assert usage["provider"] == "secondary" and usage["model"] == "fake-model"
    assert [(f["provider"], f["error"]["status"]) for f in usage["fallbacks"]] == [("primary", 500)]
    assert not run.of_type("step.retrying")  # the fallback happened within the attempt
    assert backup.stats()["by_key"]["k2"]["requests"] == 1
    assert fake.stats()["totals"]["requests"] == 0


def test_an_attempt_past_its_time_out_is_retried(fake: FakeOpenAI, providers: Any) -> None:
    client = AsyncOpenAI().with_step(
        timeout_seconds=0.3, retry=agentflow.RetryPolicy(max_attempts=2, initial_delay_seconds=0)
    )
    slow = client.with_options(default_headers={"X-Fake-Latency-Ms": "2000"})

    @workflow
    async def flow() -> str:
        try:
            await slow.chat.completions.create(model="fake-model", messages=MESSAGES)
        except StepFailed as exc:
            return f"{exc.error_type} after {exc.attempts}"
        return "answered"

    run = run_inline(flow)
    assert run.output == "StepTimeout after 2"
    assert [e["data"]["error"]["type"] for e in run.of_type("step.retrying")] == ["StepTimeout"]


def test_a_provider_failing_repeatedly_is_skipped_until_its_cool_down_ends(
    fake: FakeOpenAI, backup: FakeOpenAI
) -> None:
    backup.reset()
    client = OpenAI(
        providers=[
            {"name": "primary", "base_url": fake.base_url, "api_key": "k1"},
            {"name": "secondary", "base_url": backup.base_url, "api_key": "k2"},
        ]
    )

    @workflow
    def flow(calls: int) -> list[dict[str, Any]]:
        for i in range(calls):
            client.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": str(i)}])
        return []

    fake.fail({"status": 503, "times": 100})
    breaker = {"LLM_PROVIDER_FAILURE_THRESHOLD": 2, "LLM_PROVIDER_COOLDOWN_SECONDS": 0.5}
    with override_settings(AGENTFLOW={**agentflow_settings.user_settings, **breaker}):
        run = run_inline(flow, {"calls": 4})
        # Two failures open primary's breaker: calls 3 and 4 go straight to secondary.
        assert fake.stats()["requests"] == 2
        usages = [run.steps[f"openai.chat#{i}"].usage or {} for i in range(4)]
        assert [u["provider"] for u in usages] == ["secondary"] * 4
        assert [len(u.get("fallbacks", [])) for u in usages] == [1, 1, 0, 0]
        assert [u.get("skipped") for u in usages] == [None, None, ["primary"], ["primary"]]
        time.sleep(0.6)  # the cool-down is over: primary is tried again, fails, and is skipped again
        run_inline(flow, {"calls": 2})
        assert fake.stats()["requests"] == 3
    assert backup.stats()["totals"]["requests"] == 6


def test_a_hanging_provider_is_left_after_its_time_out(fake: FakeOpenAI, backup: FakeOpenAI) -> None:
    backup.reset()
    client = AsyncOpenAI(
        providers=[
            {
                "name": "slow",
                "base_url": fake.base_url,
                "api_key": "k1",
                "timeout_seconds": 0.3,
                "default_headers": {"X-Fake-Latency-Ms": "5000"},
            },
            {"name": "fast", "base_url": backup.base_url, "api_key": "k2"},
        ]
    )

    @workflow
    async def flow() -> str:
        reply = await client.chat.completions.create(model="fake-model", messages=MESSAGES)
        return reply.choices[0].message.content or ""

    started = time.monotonic()
    run = run_inline(flow)
    assert time.monotonic() - started < 3
    usage = run.steps["openai.chat#0"].usage or {}
    assert usage["provider"] == "fast"
    assert usage["fallbacks"][0]["error"]["type"] == "APITimeoutError"
    with pytest.raises(TypeError, match="timeout_seconds must be"):
        Provider(name="p", timeout_seconds=0)


def test_a_model_no_provider_serves_fails_the_step(fake: FakeOpenAI) -> None:
    client = OpenAI(providers=[{"name": "only", "base_url": fake.base_url, "models": {"a": "fake-model"}}])

    @workflow
    def flow() -> str:
        try:
            client.chat.completions.create(model="b", messages=MESSAGES)
        except StepFailed as exc:
            return exc.error_type + ": " + exc.error_message
        return "served"

    assert run_inline(flow).output == "NoProvider: no provider serves model 'b': only (a)"


def test_concurrent_calls_respect_the_per_run_limit(fake: FakeOpenAI, providers: Any) -> None:
    client = AsyncOpenAI().with_options(default_headers={"X-Fake-Latency-Ms": "150"})

    @workflow
    async def flow() -> int:
        replies = await asyncio.gather(
            *(
                client.chat.completions.create(
                    model="fake-model", messages=[{"role": "user", "content": str(i)}]
                )
                for i in range(9)
            )
        )
        return len(replies)

    with override_settings(AGENTFLOW={**agentflow_settings.user_settings, "LLM_MAX_CONCURRENCY_PER_RUN": 3}):
        run = run_inline(flow)
    assert run.output == 9
    assert [f"openai.chat#{i}" for i in range(9)] == sorted(run.steps, key=lambda s: int(s.split("#")[1]))
    times = sorted(entry["time"] for entry in fake.stats()["request_log"])
    # At most 3 in flight and each takes >= 150 ms: any 4 consecutive arrivals span at least 150 ms.
    assert all(times[i + 3] - times[i] >= 0.14 for i in range(len(times) - 3))


def test_the_cache_serves_an_identical_request_once(fake: FakeOpenAI, providers: Any) -> None:
    client = OpenAI().with_step(cache_ttl_seconds=60)
    question = [{"role": "user", "content": "cache me"}]
    model = f"cache-{time.time()}"

    @workflow
    def flow() -> str:
        return client.chat.completions.create(model=model, messages=question).choices[0].message.content

    cache = MemoryCache()
    first, second = run_inline(flow, cache=cache), run_inline(flow, cache=cache)
    assert first.output == second.output
    assert requests_for(fake, model) == 1
    assert second.steps["openai.chat#0"].cached


def test_a_cached_streamed_call_still_streams_its_text_to_the_new_run(
    fake: FakeOpenAI, providers: Any
) -> None:
    client = OpenAI().with_step(cache_ttl_seconds=60)
    question = [{"role": "user", "content": "cache my stream"}]
    model = f"cache-stream-{time.time()}"

    @workflow
    def flow() -> str:
        return client.chat.completions.create(model=model, messages=question, stream=True).text

    cache = MemoryCache()
    first, second = run_inline(flow, cache=cache), run_inline(flow, cache=cache)
    assert requests_for(fake, model) == 1
    assert "".join(e["data"]["text"] for e in deltas(second.events)) == second.output == first.output
    assert [e["attempt"] for e in deltas(second.events)] == [0]
    # Replaying the run that was served from the cache forwards nothing again.
    store = MemoryStore()
    run_in_memory(flow, store=store, cache=cache)
    sink = MemorySink()
    run_in_memory(flow, store=store, sink=sink, cache=cache)
    assert not deltas(sink.events)


def test_a_budget_stops_the_run_before_the_next_call(fake: FakeOpenAI, providers: Any) -> None:
    client = OpenAI()

    @workflow
    def flow() -> None:
        for i in range(10):
            client.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": str(i)}])

    with pytest.raises(BudgetExceeded) as caught:
        run_inline(flow, budget={"tokens": 30})
    # 13 tokens a call: the third call reaches 39 >= 30, and the fourth never starts.
    assert fake.stats()["totals"]["requests"] == 3
    assert caught.value.details["limit"] == "tokens"
    assert caught.value.details["usage"]["total_tokens"] == 39
    assert caught.value.code == "budget_exceeded"


def test_calls_in_flight_hold_their_estimate_against_the_budget(fake: FakeOpenAI, providers: Any) -> None:
    client = AsyncOpenAI().with_options(default_headers={"X-Fake-Latency-Ms": "200"})

    @workflow
    async def flow() -> None:
        calls = (
            client.chat.completions.create(
                model="fake-model", messages=[{"role": "user", "content": str(i)}], max_tokens=30
            )
            for i in range(10)
        )
        await asyncio.gather(*calls)

    # Each call holds ~40 tokens while in flight: three fill the budget although none has answered yet, so
    # the fourth waits for them instead of being sent. They answer with 13 tokens each: room is left, and
    # the calls go on in smaller waves until the usage itself reaches the budget. Every call sent is counted.
    with pytest.raises(BudgetExceeded) as stopped:
        run_inline(flow, budget={"tokens": 100})
    usage = stopped.value.details["usage"]
    assert usage["total_tokens"] >= 100 and "in_flight" not in usage
    stats = fake.stats()
    assert stats["requests"] == usage["calls"] == usage["total_tokens"] // 13 < 10
    times = sorted(stats["request_times"])
    assert sum(1 for t in times if t < times[0] + 0.1) == 3  # the first wave: the three reservations


def test_a_budget_in_usd_from_the_workflow(fake: FakeOpenAI, providers: Any) -> None:
    client = OpenAI()

    @agentflow.workflow(name="llm-test-usd-budget", budget={"usd": 0.0001})
    def flow() -> None:
        for i in range(10):
            client.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": str(i)}])

    prices = {"fake-model": {"input": 1000.0, "output": 1000.0}}  # $0.013 a call
    settings = override_settings(AGENTFLOW={**agentflow_settings.user_settings, "LLM_PRICES": prices})
    with settings, pytest.raises(BudgetExceeded, match=re.escape("budget of $0.0001")):
        run_inline(flow)
    assert fake.stats()["totals"]["requests"] == 1


def test_a_recorded_usage_outside_the_llm_client_counts_too() -> None:
    @workflow
    def flow() -> int:
        agentflow.record_usage("other-model", prompt_tokens=5, completion_tokens=7, cost_usd=0.25)
        return 1

    run = run_inline(flow)
    assert run.usage["total_tokens"] == 12 and run.usage["cost_usd"] == 0.25
    assert agentflow.record_usage("m", prompt_tokens=1) is None  # outside a workflow: nothing to record
    with pytest.raises(TypeError, match="prompt_tokens must be an int"):
        agentflow.record_usage("m", prompt_tokens=-1)


def test_a_sync_client_in_threads_of_agentflow_map(fake: FakeOpenAI, providers: Any) -> None:
    client = OpenAI()

    @agentflow.component
    def summarize(topic: str) -> str:
        reply = client.chat.completions.create(
            model="fake-model", messages=[{"role": "user", "content": topic}]
        )
        return reply.choices[0].message.content or ""

    @workflow
    async def flow() -> list[str]:
        return await agentflow.map(summarize, ["a", "b", "c", "d"], concurrency=4)

    run = run_inline(flow)
    assert len(run.output) == 4
    assert {f"summarize#{i}/openai.chat#0" for i in range(4)} <= set(run.steps)


# -- configuration mistakes --------------------------------------------------------------------------------


def test_configuration_mistakes_raise_type_errors_naming_them(fake: FakeOpenAI) -> None:
    client = OpenAI(base_url=fake.base_url, api_key="k")
    with pytest.raises(TypeError, match="stream_to must be"):
        client.with_step(stream_to="somewhere")
    with pytest.raises(TypeError, match="label must be"):
        client.with_step(label="")
    with pytest.raises(TypeError, match="ttl_seconds must be"):
        client.with_step(cache_ttl_seconds=-1)
    with pytest.raises(TypeError, match="timeout seconds"):
        client.with_step(timeout_seconds=0)
    with pytest.raises(TypeError, match="retry must be a RetryPolicy"):
        client.with_step(retry={"max_attempts": 2})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="component name"):
        client.with_step(name="a/b")
    with pytest.raises(TypeError, match="either providers"):
        OpenAI(api_key="k", providers=[{"name": "a"}])
    with pytest.raises(TypeError, match="unknown provider options \\['key'\\]"):
        OpenAI(providers=[{"name": "a", "key": "k"}])
    with pytest.raises(TypeError, match="unique"):
        parse_providers([{"name": "a"}, {"name": "a"}])
    with pytest.raises(TypeError, match="must not be empty"):
        parse_providers([])
    with pytest.raises(TypeError, match="base_url must be an http"):
        Provider(name="a", base_url="ftp://x")
    with pytest.raises(TypeError, match="without ':'"):
        Provider(name="a:b")
    with pytest.raises(TypeError, match="budget usd must be"):
        agentflow.Budget(usd=-1)
    with pytest.raises(TypeError, match="a budget needs"):
        agentflow.Budget()
    with pytest.raises(TypeError, match="'usd' and/or 'tokens'"):
        agentflow.Budget.parse({"dollars": 1})


def test_the_api_key_is_never_in_the_representation() -> None:
    provider = Provider(name="p", api_key="sk-secret-value")
    assert "sk-secret" not in repr(provider)
    assert "sk-secret" not in provider.limit_key("m")


# -- helpers -----------------------------------------------------------------------------------------------


class _Response:
    def __init__(self, headers: dict[str, str]) -> None:
        self.headers = headers


def test_retry_after_parsing() -> None:
    assert retry_after_seconds(_Response({"retry-after-ms": "250"})) == 0.25
    assert retry_after_seconds(_Response({"retry-after": "1.5"})) == 1.5
    in_ten = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 10))
    assert 8 <= (retry_after_seconds(_Response({"retry-after": in_ten})) or 0) <= 10
    assert retry_after_seconds(_Response({"retry-after": "soon"})) is None
    assert retry_after_seconds(_Response({})) is None
    assert retry_after_seconds(None) is None


def test_prices_most_specific_wins_and_unknown_models_cost_none() -> None:
    prices = {"gpt-4o": {"input": 2.5, "output": 10}, "gpt-4o*": {"input": 1, "output": 1}, "*": {"input": 9}}
    assert find_price(prices, "gpt-4o") == prices["gpt-4o"]
    assert find_price(prices, "gpt-4o-mini") == prices["gpt-4o*"]
    assert find_price(prices, "llama") == prices["*"]
    assert cost(prices, "gpt-4o", 1_000_000, 100_000) == pytest.approx(3.5)
    assert cost({}, "gpt-4o", 10, 10) is None
    assert validate_prices({"m": {"input": 1}}) == []
    assert validate_prices({"m": {"inputs": 1}}) and validate_prices({"m": {"input": -1}})
    assert validate_prices([1])


def test_streamed_chunks_are_stored_without_repeating_shared_fields() -> None:
    chunks = [{"id": "x", "model": "m", "n": i} for i in range(3)]
    packed = pack(chunks)
    assert packed["common"] == {"id": "x", "model": "m"}
    assert list(unpack(packed)) == chunks
    assert list(unpack(pack(chunks[:1]))) == chunks[:1]


def test_token_estimates_cover_the_prompt_and_the_completion_limit() -> None:
    assert sum(estimate_parts("chat", {"messages": MESSAGES, "max_tokens": 100})) > 100
    assert sum(estimate_parts("responses", {"input": "x" * 400, "max_output_tokens": 5})) >= 100
    assert sum(estimate_parts("embeddings", {"input": ["a"]})) >= 1


def test_slots_hand_over_across_threads_and_event_loops() -> None:
    slots = Slots(2)
    peak, inside, lock = [0], [0], threading.Lock()

    def enter() -> None:
        with lock:
            inside[0] += 1
            peak[0] = max(peak[0], inside[0])

    def leave() -> None:
        with lock:
            inside[0] -= 1

    def in_thread() -> None:
        for _ in range(20):
            with slots:
                enter()
                time.sleep(0.001)
                leave()

    async def in_loop() -> None:
        async def one() -> None:
            async with slots:
                enter()
                await asyncio.sleep(0.001)
                leave()

        await asyncio.gather(*(one() for _ in range(20)))

    workers = [threading.Thread(target=in_thread) for _ in range(2)]
    workers += [threading.Thread(target=lambda: asyncio.run(in_loop())) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    assert peak[0] == 2 and slots.in_use == 0


def test_a_cancelled_async_waiter_does_not_leak_its_slot() -> None:
    slots = Slots(1)

    async def main() -> None:
        await slots.aacquire()
        waiter = asyncio.ensure_future(slots.aacquire())
        await asyncio.sleep(0)
        waiter.cancel()
        slots.release()
        await asyncio.gather(waiter, return_exceptions=True)
        async with slots:
            assert slots.in_use == 1

    asyncio.run(main())
    assert slots.in_use == 0


def test_a_sync_waiter_stops_when_its_check_raises() -> None:
    slots = Slots(1)
    slots.acquire()

    def check() -> None:
        raise RuntimeError("cancelled")

    with pytest.raises(RuntimeError):
        slots.acquire(check)
    slots.release()
    assert slots.in_use == 0
    with pytest.raises(TypeError, match="concurrency limit"):
        Slots(0)


def test_without_django_settings_the_client_is_the_sdk_configured_by_the_environment(
    fake: FakeOpenAI,
) -> None:
    script = (
        "from agentflow.llm import OpenAI\n"
        "reply = OpenAI().chat.completions.create(model='fake-model', messages=[{'role': 'user', 'content': 'x'}])\n"
        "print(reply.choices[0].message.content)\n"
    )
    env = {**os.environ, "OPENAI_BASE_URL": fake.base_url, "OPENAI_API_KEY": "env-key"}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() and fake.stats()["by_key"]["env-key"]["requests"] == 1


def test_holding_two_limits_gives_the_first_back_when_the_second_wait_is_interrupted() -> None:
    run_limit, worker_limit = Slots(2), Slots(1)
    worker_limit.acquire()  # another run holds the worker's only slot

    def cancelled() -> None:
        raise RuntimeError("cancelled")

    with pytest.raises(RuntimeError), run_limit.held(cancelled), worker_limit.held(cancelled):
        pass
    assert run_limit.in_use == 0 and worker_limit.in_use == 1
