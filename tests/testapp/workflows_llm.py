"""Workflows of the LLM layer's integration tests (tests/llm/test_llm_integration.py).

Each picks its providers by name from ``AGENTFLOW["LLM_PROVIDERS"]`` (set per worker by the tests), so one
worker configuration serves every test: a test with a single provider gets no fallback, the fallback test
names two.
"""

from __future__ import annotations

import asyncio
from typing import Any

from agentflow import component, workflow
from agentflow.llm import DEFAULT_RETRY, AsyncOpenAI
from agentflow.llm.providers import configured_providers


def client_for(providers: list[str], max_attempts: int | None, retry_delay_seconds: float | None) -> Any:
    by_name = {provider.name: provider for provider in configured_providers()}
    client = AsyncOpenAI(providers=[by_name[name] for name in providers])
    retry = DEFAULT_RETRY
    if retry_delay_seconds is not None:
        retry = retry.updated(initial_delay_seconds=retry_delay_seconds)
    if max_attempts is not None:
        retry = retry.updated(max_attempts=max_attempts)
    return client.with_step(retry=retry)


async def chat(
    client: Any,
    model: str,
    prompt: str,
    stream: bool,
    headers: dict[str, str] | None,
    max_tokens: int | None = None,
) -> str:
    extra: dict[str, Any] = {"extra_headers": headers} if headers else {}
    if max_tokens is not None:
        extra["max_tokens"] = max_tokens
    messages = [{"role": "user", "content": prompt}]
    if stream:
        recorded = await client.chat.completions.create(model=model, messages=messages, stream=True, **extra)
        return str(recorded.text)
    reply = await client.chat.completions.create(model=model, messages=messages, **extra)
    return str(reply.choices[0].message.content)


async def chats(
    providers: list[str],
    model: str,
    calls: int,
    concurrent: bool,
    stream: bool,
    max_attempts: int | None,
    retry_delay_seconds: float | None,
    headers: dict[str, str] | None,
    max_tokens: int | None = None,
) -> list[str]:
    client = client_for(providers, max_attempts, retry_delay_seconds)
    prompts = [f"question number {index} please" for index in range(calls)]
    if concurrent:
        return list(
            await asyncio.gather(*(chat(client, model, p, stream, headers, max_tokens) for p in prompts))
        )
    return [await chat(client, model, prompt, stream, headers, max_tokens) for prompt in prompts]


@workflow(name="llm-chats")
async def llm_chats(
    providers: list[str],
    model: str,
    calls: int = 1,
    concurrent: bool = False,
    stream: bool = False,
    max_attempts: int | None = None,
    retry_delay_seconds: float | None = None,
    headers: dict[str, str] | None = None,
    max_tokens: int | None = None,
) -> list[str]:
    """``calls`` chat completions, one after another or all at once; their texts."""
    return await chats(
        providers, model, calls, concurrent, stream, max_attempts, retry_delay_seconds, headers, max_tokens
    )


@workflow(name="llm-chats-budgeted", budget={"usd": 0.05})
async def llm_chats_budgeted(providers: list[str], model: str, calls: int = 10) -> list[str]:
    """Sequential chat completions under the workflow's own budget of $0.05."""
    return await chats(providers, model, calls, False, False, None, None, None)


@component
async def summarize(providers: list[str], model: str, text: str) -> str:
    # A component whose own step holds a provider call: the call is its child step (summarize#0/openai.chat#0).
    client = client_for(providers, None, None)
    reply = await client.chat.completions.create(
        model=model, messages=[{"role": "system", "content": "summarize"}, {"role": "user", "content": text}]
    )
    return str(reply.choices[0].message.content)


@workflow(name="llm-usage-mix")
async def llm_usage_mix(providers: list[str], chat_model: str, embedding_model: str) -> dict[str, Any]:
    """One call of each kind, streamed and not, some concurrent, one inside a component."""
    client = client_for(providers, None, None)
    messages = [{"role": "user", "content": "tell me about otters"}]
    plain, streamed = await asyncio.gather(
        client.chat.completions.create(model=chat_model, messages=messages),
        client.chat.completions.create(model=chat_model, messages=messages, stream=True),
    )
    response = await client.responses.create(
        model=chat_model, input="what is a badger", instructions="be brief"
    )
    response_stream = await client.responses.create(model=chat_model, input="and a stoat?", stream=True)
    vectors = await client.embeddings.create(model=embedding_model, input=["otter", "badger", "stoat weasel"])
    summary = await summarize(providers, chat_model, streamed.text)
    return {
        "chat": plain.choices[0].message.content,
        "stream": streamed.text,
        "response": response.output_text,
        "response_stream": response_stream.text,
        "embeddings": len(vectors.data),
        "summary": summary,
    }
