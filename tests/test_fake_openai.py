"""agentflow.testing.fake_openai: the real openai SDK against the fake server (no database, no Redis)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from agentflow.testing import FakeOpenAI
from agentflow.testing.fake_openai import FakeOpenAIProcess

MESSAGES: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "say something deterministic please"}
]


@pytest.fixture(scope="module")
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def fake(server: FakeOpenAI) -> FakeOpenAI:
    server.reset()
    return server


@pytest.fixture
def client(fake: FakeOpenAI) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=fake.base_url, api_key="k", max_retries=0) as sdk:
        yield sdk


def test_chat_json_is_deterministic(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(model="fake-model", messages=MESSAGES)
    again = client.chat.completions.create(model="fake-model", messages=MESSAGES)
    other = client.chat.completions.create(model="other", messages=MESSAGES)
    content = first.choices[0].message.content
    assert content and len(content.split()) == 20
    assert again.choices[0].message.content == content != other.choices[0].message.content
    assert first.choices[0].finish_reason == "stop"
    assert first.usage is not None
    assert (first.usage.prompt_tokens, first.usage.completion_tokens, first.usage.total_tokens) == (4, 20, 24)


def test_chat_max_tokens_truncates(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="fake-model", messages=MESSAGES, max_tokens=5)
    assert len((reply.choices[0].message.content or "").split()) == 5
    assert reply.choices[0].finish_reason == "length"
    cut = client.responses.create(model="fake-model", input="hi", max_output_tokens=3)
    assert cut.status == "incomplete" and len(cut.output_text.split()) == 3


def test_chat_stream_reassembles_to_the_json_content(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(model="fake-model", messages=MESSAGES)
    stream = client.chat.completions.create(
        model="fake-model",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    assert all(chunk.usage is None for chunk in chunks[:-1])


def test_chat_stream_without_usage(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model="fake-model", messages=MESSAGES, stream=True))
    assert all(chunk.choices for chunk in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_responses_json_and_stream(client: openai.OpenAI) -> None:
    whole = client.responses.create(model="fake-model", input="tell me a story", instructions="be brief")
    assert whole.status == "completed" and len(whole.output_text.split()) == 20
    assert whole.usage is not None and (whole.usage.input_tokens, whole.usage.output_tokens) == (6, 20)

    events = list(
        client.responses.create(
            model="fake-model", input="tell me a story", instructions="be brief", stream=True
        )
    )
    types = [event.type for event in events]
    assert types[0] == "response.created" and types[-1] == "response.completed"
    assert [event.sequence_number for event in events] == list(range(len(events)))
    deltas = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    assert deltas == whole.output_text

    with client.responses.stream(
        model="fake-model", input="tell me a story", instructions="be brief"
    ) as stream:
        final = stream.get_final_response()
    assert final.output_text == whole.output_text


def test_embeddings_base64_and_float(client: openai.OpenAI) -> None:
    packed = client.embeddings.create(model="fake-embedding", input=["one two", "three"])
    floats = client.embeddings.create(
        model="fake-embedding", input=["one two", "three"], encoding_format="float"
    )
    assert [len(item.embedding) for item in packed.data] == [16, 16]
    assert packed.data[0].embedding == pytest.approx(floats.data[0].embedding, abs=1e-6)
    assert packed.data[0].embedding != packed.data[1].embedding
    assert packed.usage.prompt_tokens == 3
    sized = client.embeddings.create(model="fake-embedding", input="x", dimensions=64)
    assert len(sized.data[0].embedding) == 64


def test_models(client: openai.OpenAI) -> None:
    assert [model.id for model in client.models.list()] == ["fake-model", "fake-embedding"]


def test_429_carries_retry_after(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    fake.fail({"status": 429, "retry_after": 1.5, "times": 2})
    for _ in range(2):
        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(model="fake-model", messages=MESSAGES)
        assert caught.value.response.headers["retry-after"] == "1.5"
        assert caught.value.code == "rate_limit_exceeded"
    assert client.chat.completions.create(model="fake-model", messages=MESSAGES).choices
    assert fake.stats()["faults_injected"] == 2


def test_sdk_retry_waits_for_retry_after(fake: FakeOpenAI) -> None:
    fake.fail({"status": 429, "retry_after": 0.6})
    with openai.OpenAI(base_url=fake.base_url, api_key="k", max_retries=1) as retrying:
        started = time.monotonic()
        retrying.chat.completions.create(model="fake-model", messages=MESSAGES)
    assert time.monotonic() - started >= 0.6


def test_500_and_model_globs(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    fake.fail({"status": 500}, model="primary-*")
    client.chat.completions.create(model="secondary", messages=MESSAGES)
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="primary-1", messages=MESSAGES)
    assert fake.stats()["faults_pending"] == 0


def test_faults_are_consumed_in_order(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    fake.fail({"status": 500}, {"status": 429, "retry_after": 2})
    with pytest.raises(openai.InternalServerError):
        client.embeddings.create(model="fake-embedding", input="x")
    with pytest.raises(openai.RateLimitError):
        client.embeddings.create(model="fake-embedding", input="x")
    client.embeddings.create(model="fake-embedding", input="x")


def test_dropped_stream_breaks_mid_iteration(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    fake.fail({"drop_after_chunks": 3})
    received = []
    with pytest.raises(openai.APIConnectionError):
        for chunk in client.chat.completions.create(model="fake-model", messages=MESSAGES, stream=True):
            received.append(chunk)
    assert len(received) == 3
    # Nothing was delivered whole, so nothing is counted.
    assert fake.stats()["totals"]["requests"] == 0
    assert len(list(client.chat.completions.create(model="fake-model", messages=MESSAGES, stream=True))) == 22


def test_streams_ending_early_or_without_usage_and_errors_echoing_the_key(
    fake: FakeOpenAI, client: openai.OpenAI
) -> None:
    stream_usage: Any = {"include_usage": True}
    fake.fail(
        {"end_after_chunks": 22}, {"no_usage": True, "times": 2}, {"status": 401, "message": "bad {api_key}"}
    )
    # A clean end after the finish_reason chunk: no usage chunk, no [DONE], no error.
    ended = list(
        client.chat.completions.create(
            model="fake-model", messages=MESSAGES, stream=True, stream_options=stream_usage
        )
    )
    assert len(ended) == 22 and ended[-1].choices[0].finish_reason == "stop"
    # A provider ignoring include_usage, streamed or not.
    ignored = list(
        client.chat.completions.create(
            model="fake-model", messages=MESSAGES, stream=True, stream_options=stream_usage
        )
    )
    assert len(ignored) == 22 and all(chunk.usage is None for chunk in ignored)
    assert client.chat.completions.create(model="fake-model", messages=MESSAGES).usage is None
    with pytest.raises(openai.AuthenticationError, match="bad k"):
        client.chat.completions.create(model="fake-model", messages=MESSAGES)


def test_bad_fault_script_is_rejected(fake: FakeOpenAI) -> None:
    with pytest.raises(ValueError, match="retry_afterr"):
        fake.fail({"status": 429, "retry_afterr": 1})
    with pytest.raises(ValueError, match="exactly one"):
        fake.fail({"times": 2})
    with pytest.raises(ValueError, match="exactly one"):
        fake.fail({"status": 500, "no_usage": True})


def test_stats_count_tokens_per_key_and_model(fake: FakeOpenAI) -> None:
    for key, times in (("alice", 2), ("bob", 1)):
        with openai.OpenAI(base_url=fake.base_url, api_key=key, max_retries=0) as sdk:
            for _ in range(times):
                sdk.chat.completions.create(model="fake-model", messages=MESSAGES)
    stats = fake.stats()
    assert stats["by_key"]["alice"] == {
        "requests": 2,
        "prompt_tokens": 8,
        "completion_tokens": 40,
        "total_tokens": 48,
    }
    assert stats["by_key"]["bob"]["completion_tokens"] == 20
    assert stats["by_model"]["fake-model"]["requests"] == stats["totals"]["requests"] == 3
    fake.reset()
    assert fake.stats()["totals"]["requests"] == 0


def test_latency_and_token_rate_overridable_per_request(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    started = time.monotonic()
    client.chat.completions.create(
        model="fake-model",
        messages=MESSAGES,
        extra_headers={"X-Fake-Latency-Ms": "300"},
    )
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    stream = client.chat.completions.create(
        model="fake-model",
        messages=MESSAGES,
        stream=True,
        extra_headers={"X-Fake-Tokens-Per-Second": "100"},
    )
    list(stream)
    assert time.monotonic() - started >= 0.2  # 21 paced chunks at 100/s


def test_concurrent_slow_requests() -> None:
    """300 requests of 500 ms each, at once, on one event loop: a sanity check, not a benchmark."""

    async def run(base_url: str) -> float:
        async with openai.AsyncOpenAI(base_url=base_url, api_key="k", max_retries=0) as sdk:
            started = time.monotonic()
            replies = await asyncio.gather(
                *(sdk.chat.completions.create(model="fake-model", messages=MESSAGES) for _ in range(300))
            )
            assert len({reply.choices[0].message.content for reply in replies}) == 1
            return time.monotonic() - started

    with FakeOpenAI(latency_ms=500) as fake:
        elapsed = asyncio.run(run(fake.base_url))
        assert fake.stats()["totals"]["requests"] == 300
    assert 0.5 <= elapsed < 5, elapsed


def test_async_stream(fake: FakeOpenAI) -> None:
    async def run() -> str:
        async with openai.AsyncOpenAI(base_url=fake.base_url, api_key="k", max_retries=0) as sdk:
            stream = await sdk.responses.create(model="fake-model", input="hi", stream=True)
            return "".join(
                [event.delta async for event in stream if event.type == "response.output_text.delta"]
            )

    assert len(asyncio.run(run()).split()) == 20


def test_stop_closes_open_connections() -> None:
    threads_before = set(threading.enumerate())
    fake = FakeOpenAI(latency_ms=10_000).start()
    stopper = threading.Timer(0.3, fake.stop)
    with openai.OpenAI(base_url=fake.base_url, api_key="k", max_retries=0, timeout=20) as sdk:
        started = time.monotonic()
        stopper.start()
        with pytest.raises(openai.APIConnectionError):
            sdk.chat.completions.create(model="fake-model", messages=MESSAGES)
    assert time.monotonic() - started < 5
    stopper.join(5)
    assert set(threading.enumerate()) <= threads_before


def test_cli_prints_its_url_and_answers() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "agentflow.testing.fake_openai", "--port", "0", "--completion-tokens", "3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
        with urllib.request.urlopen(f"{url}/models", timeout=10) as response:
            assert json.loads(response.read())["object"] == "list"
        with openai.OpenAI(base_url=url, api_key="k", max_retries=0) as sdk:
            reply = sdk.chat.completions.create(model="fake-model", messages=MESSAGES)
        assert len((reply.choices[0].message.content or "").split()) == 3
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=10)
    assert process.returncode == 0, stderr
    assert stderr == ""


def test_spawn_runs_in_a_process() -> None:
    with FakeOpenAI.spawn(latency_ms=1, embedding_dimensions=4) as fake:
        assert isinstance(fake, FakeOpenAIProcess)
        with openai.OpenAI(base_url=fake.base_url, api_key="p", max_retries=0) as sdk:
            assert len(sdk.embeddings.create(model="e", input="x").data[0].embedding) == 4
        assert fake.stats()["by_key"]["p"]["requests"] == 1
    assert fake.process.returncode == 0
    with pytest.raises(TypeError, match="latency_mss"):
        FakeOpenAI.spawn(latency_mss=1)


def test_a_reply_that_ends_after_a_reset_counts_in_the_state_it_arrived_in(
    fake: FakeOpenAI, client: openai.OpenAI
) -> None:
    # A client that gave up on a slow reply (a step's time-out) leaves it running at the server; the next test
    # resets the server and must not see that reply in its counters when it finally ends.
    done = threading.Event()

    def slow_call() -> None:
        slow = client.with_options(default_headers={"X-Fake-Latency-Ms": "400"})
        try:
            slow.chat.completions.create(model="slow-model", messages=MESSAGES)
        finally:
            done.set()

    thread = threading.Thread(target=slow_call)
    thread.start()
    deadline = time.monotonic() + 10
    while not fake.stats()["requests"] and time.monotonic() < deadline:
        time.sleep(0.01)  # no event announces an arrival at the server but its counter
    fake.reset()
    assert done.wait(10)
    thread.join(10)
    stats = fake.stats()
    assert stats["requests"] == 0
    assert stats["totals"]["requests"] == 0 and "slow-model" not in stats["by_model"]
