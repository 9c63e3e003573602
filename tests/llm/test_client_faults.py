"""The wrapped clients when providers misbehave, call by call (runs in memory, our fake server in a thread):
text forwarded before a fallback is voided, replies without usage are counted as estimated, and errors
echoing API keys are redacted. The same behaviours across processes, and against a server we did not write,
are in test_provider_edges.py."""

from __future__ import annotations

from typing import Any

import openai
import pytest
from django.test import override_settings

import agentflow
from agentflow.conf import agentflow_settings
from agentflow.core.errors import StepFailed
from agentflow.llm import AsyncOpenAI, OpenAI
from agentflow.llm.calls import StreamState
from agentflow.llm.providers import Provider
from agentflow.llm.redaction import redact, redact_error, secrets_of
from agentflow.testing import FakeOpenAI, run_inline
from tests.conftest import apply_voiding
from tests.llm.test_client import MESSAGES, deltas, workflow


@pytest.mark.parametrize("sync", [True, False], ids=["sync", "async"])
def test_a_fallback_after_forwarded_text_voids_it_in_a_new_attempt(
    fake: FakeOpenAI, backup: FakeOpenAI, sync: bool
) -> None:
    backup.reset()
    providers = [
        {"name": "primary", "base_url": fake.base_url, "api_key": "k1"},
        {"name": "secondary", "base_url": backup.base_url, "api_key": "k2"},
    ]
    retry = agentflow.RetryPolicy(max_attempts=1)  # a fallback is no failure: one attempt is enough
    if sync:
        client = OpenAI(providers=providers).with_step(retry=retry)

        @workflow
        def flow() -> str:
            return client.chat.completions.create(model="fake-model", messages=MESSAGES, stream=True).text

    else:
        aclient = AsyncOpenAI(providers=providers).with_step(retry=retry)

        @workflow
        async def flow() -> str:
            stream = await aclient.chat.completions.create(model="fake-model", messages=MESSAGES, stream=True)
            return stream.text

    fake.fail({"drop_after_chunks": 4})  # the role chunk and three words, then the connection drops
    with override_settings(AGENTFLOW={**agentflow_settings.user_settings, "LLM_STREAM_COALESCE_SECONDS": 0}):
        run = run_inline(flow)

    forwarded = [e["data"]["text"] for e in deltas(run.events) if e["attempt"] == 1]
    assert len(forwarded) == 3  # the primary's first words reached the stream
    [retrying] = run.of_type("step.retrying")
    assert retrying["attempt"] == 1 and retrying["data"]["delay_seconds"] == 0
    assert (retrying["data"]["reason"], retrying["data"]["provider"]) == ("fallback", "primary")
    assert retrying["data"]["error"]["type"] == "APIConnectionError"
    assert [e["attempt"] for e in run.of_type("step.started")] == [1, 2]
    kept = [e["data"]["text"] for e in deltas(apply_voiding(run.events))]
    assert "".join(kept) == run.output and all(e["attempt"] == 2 for e in deltas(apply_voiding(run.events)))
    step = run.steps["openai.chat#0"]
    assert step.attempts == 2 and step.usage is not None
    assert step.usage["provider"] == "secondary" and step.usage["calls"] == 1
    assert [f["provider"] for f in step.usage["fallbacks"]] == ["primary"]
    assert backup.stats()["totals"]["requests"] == 1


def test_a_fallback_before_any_text_stays_within_the_attempt(fake: FakeOpenAI, backup: FakeOpenAI) -> None:
    backup.reset()
    client = AsyncOpenAI(
        providers=[
            {"name": "primary", "base_url": fake.base_url, "api_key": "k1"},
            {"name": "secondary", "base_url": backup.base_url, "api_key": "k2"},
        ]
    )

    @workflow
    async def flow() -> str:
        stream = await client.chat.completions.create(model="fake-model", messages=MESSAGES, stream=True)
        return stream.text

    fake.fail({"status": 500})  # nothing was forwarded: nothing to void, no new attempt
    run = run_inline(flow)
    assert not run.of_type("step.retrying") and run.steps["openai.chat#0"].attempts == 1
    assert "".join(e["data"]["text"] for e in deltas(run.events)) == run.output


def test_replies_without_usage_count_as_estimated_calls(fake: FakeOpenAI, providers: Any) -> None:
    client = AsyncOpenAI()

    @workflow
    async def flow() -> list[str]:
        plain = await client.chat.completions.create(model="fake-model", messages=MESSAGES)
        stream = await client.chat.completions.create(model="fake-model", messages=MESSAGES, stream=True)
        counted = await client.chat.completions.create(model="fake-model", messages=MESSAGES)
        return [plain.choices[0].message.content or "", stream.text, counted.choices[0].message.content or ""]

    fake.fail({"no_usage": True, "times": 2})  # the third call reports its usage
    run = run_inline(flow)
    assert run.usage["calls"] == 3 and run.usage["estimated_calls"] == 2
    plain, stream, counted = (run.steps[f"openai.chat#{i}"].usage or {} for i in range(3))
    assert plain["estimated_calls"] == stream["estimated_calls"] == 1 and "estimated_calls" not in counted
    # Estimated at about 4 characters a token: the reply's own text, and the prompt's plus a few per message.
    assert plain["completion_tokens"] == stream["completion_tokens"] == -(-len(run.output[0]) // 4)
    assert plain["prompt_tokens"] == -(-len(MESSAGES[0]["content"]) // 4) + 4 + 3
    assert counted["completion_tokens"] == 12  # the server's own count


def test_a_stream_is_complete_once_every_choice_has_finished() -> None:
    from openai.types.chat import ChatCompletionChunk

    def chunk(index: int, finish: str | None) -> ChatCompletionChunk:
        return ChatCompletionChunk.construct(
            **{
                "id": "c",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": "m",
                "usage": None,
                "choices": [
                    {"index": index, "delta": {"content": "x"}, "finish_reason": finish, "logprobs": None}
                ],
            }
        )

    state = StreamState("chat", False, [])
    for item in (chunk(0, None), chunk(1, None), chunk(0, "stop")):
        state.take(openai.types.chat.ChatCompletionChunk.model_validate(item.to_dict()))
    assert not state.done  # choice 1 was cut
    with pytest.raises(agentflow.llm.IncompleteStream):
        state.output()
    state.take(ChatCompletionChunk.model_validate(chunk(1, "length").to_dict()))
    assert state.done and state.output()["stream"] is True


def test_redaction_of_configured_keys_and_credential_shaped_text() -> None:
    provider = Provider(
        name="p",
        api_key="edge-key-0123456789",
        default_headers={"api-key": "azure-0123456789", "X-App": "demo"},
    )
    secrets = secrets_of([provider, Provider(name="short", api_key="abc")])
    assert secrets == ("edge-key-0123456789", "azure-0123456789")  # too short to be a secret: left alone
    text = (
        "bad key edge-key-0123456789; header azure-0123456789; Authorization: Bearer tok.en-123456; "
        'sk-proj-abcdefgh12345678 {"api_key": "zzzzzzzz"} app demo'
    )
    assert redact(text, secrets) == (
        "bad key [redacted]; header [redacted]; Authorization: Bearer [redacted]; "
        '[redacted] {"api_key": "[redacted]"} app demo'
    )


def test_an_error_echoing_the_key_is_redacted_before_it_is_kept(fake: FakeOpenAI) -> None:
    key = "edge-key-0123456789"
    client = AsyncOpenAI(providers=[{"name": "fake", "base_url": fake.base_url, "api_key": key}])

    @workflow
    async def flow() -> str:
        reply = await client.chat.completions.create(model="fake-model", messages=MESSAGES)
        return reply.choices[0].message.content or ""

    fake.fail({"status": 401, "message": "Incorrect API key provided: {api_key} (Bearer {api_key})"})
    with pytest.raises(StepFailed) as failed:
        run_inline(flow)
    assert key not in str(failed.value) and key not in failed.value.error_message
    assert failed.value.error_message.count("[redacted]") == 2
    cause = failed.value.cause
    assert isinstance(cause, openai.AuthenticationError) and key not in repr(cause.body)


def test_redact_error_walks_the_chain_and_the_sdk_fields() -> None:
    try:
        try:
            raise OSError("connect to https://x?api_key=edge-key-0123456789 failed")
        except OSError as inner:
            raise RuntimeError("wrapped Bearer edge-key-0123456789") from inner
    except RuntimeError as exc:
        outer = exc
    outer.body = {"error": {"message": ["edge-key-0123456789"]}}  # type: ignore[attr-defined]
    redact_error(outer, ["edge-key-0123456789"])
    assert str(outer) == "wrapped Bearer [redacted]"
    assert str(outer.__cause__) == "connect to https://x?api_key=[redacted] failed"
    assert outer.body == {"error": {"message": ["[redacted]"]}}  # type: ignore[attr-defined]


@pytest.mark.parametrize("fan_out", ["gather", "map"])
def test_a_budget_in_a_fan_out_counts_every_call_it_sent(
    fake: FakeOpenAI, providers: Any, fan_out: str
) -> None:
    import asyncio

    client = AsyncOpenAI().with_options(default_headers={"X-Fake-Latency-Ms": "100"})

    @agentflow.component
    async def ask(index: int) -> str:
        messages = [{"role": "user", "content": f"question {index}"}]
        reply = await client.chat.completions.create(model="fake-model", messages=messages, max_tokens=20)
        return reply.choices[0].message.content or ""

    @workflow
    async def flow() -> list[str]:
        if fan_out == "map":
            return await agentflow.map(ask, range(30))
        return list(await asyncio.gather(*(ask(index) for index in range(30))))

    with pytest.raises(agentflow.BudgetExceeded) as stopped:
        run_inline(flow, budget={"tokens": 100})
    usage = stopped.value.details["usage"]
    # Every request that reached the server was answered and counted; none was cut off by the stop.
    assert fake.stats()["requests"] == fake.stats()["totals"]["requests"] == usage["calls"] >= 3
    assert usage["total_tokens"] >= 100 and usage["calls"] < 30
