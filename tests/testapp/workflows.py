"""Workflows the integration tests run on real workers. Side effects are counted in Redis, so a test can
tell how often each step really executed across processes."""

from __future__ import annotations

import time

import redis
from django.conf import settings

import agentflow
from agentflow import Retry, StepFailed, component, workflow


def effects() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, decode_responses=True)


def count(tag: str, what: str) -> int:
    return effects().hincrby(f"agentflow-tests:effects:{tag}", what, 1)


def counts(tag: str) -> dict[str, int]:
    return {k: int(v) for k, v in effects().hgetall(f"agentflow-tests:effects:{tag}").items()}


@component
def fetch(tag: str, topic: str) -> str:
    count(tag, "fetch")
    return f"notes on {topic}"


@component
def outline(tag: str, notes: str) -> list[str]:
    count(tag, "outline")
    return [f"{notes}: intro", f"{notes}: body"]


@component
def write(tag: str, sections: list[str]) -> str:
    count(tag, "write")
    for section in sections:
        agentflow.stream_output(section + "\n")
    return "\n".join(sections)


@workflow
def three_steps(tag: str, topic: str = "otters") -> dict:
    """Fetch, outline and write: three steps in a row."""
    agentflow.status("researching", progress=0.0)
    notes = fetch(tag, topic)
    agentflow.status("outlining", progress=0.33)
    sections = outline(tag, notes)
    agentflow.publish("outline", {"sections": sections})
    text = write(tag, sections)
    return {"text": text, "sections": len(sections)}


@component
def flaky_call(tag: str, fail_times: int) -> str:
    attempt = count(tag, "flaky")
    effects().rpush(f"agentflow-tests:times:{tag}", time.time())
    if attempt <= fail_times:
        raise ConnectionError(f"provider down (attempt {attempt})")
    return f"ok after {attempt}"


@workflow
def flaky(tag: str, fail_times: int = 2) -> str:
    step = flaky_call.retry(max_attempts=5, initial_delay_seconds=0.2, backoff=2.0, jitter=False)
    return step(tag, fail_times)


@component
def doomed(tag: str) -> str:
    count(tag, "doomed")
    raise ValueError("this step always fails")


@workflow
def recovers(tag: str) -> dict:
    try:
        return {"result": doomed.retry(max_attempts=2, initial_delay_seconds=0.01)(tag)}
    except StepFailed as exc:
        return {
            "result": "fallback",
            "failed_step": exc.step_id,
            "attempts": exc.attempts,
            "error": exc.error_type,
        }


@workflow
def fails(tag: str) -> str:
    return doomed(tag)


@component
def expensive(tag: str, text: str) -> str:
    count(tag, "expensive")
    return text.upper()


@workflow
def cached(tag: str, text: str) -> str:
    return expensive.cache(ttl_seconds=60)(tag, text)


@component
def slow_step(tag: str, index: int, delay_seconds: float) -> int:
    count(tag, f"slow-{index}")
    time.sleep(delay_seconds)
    return index


@workflow
def slow(tag: str, steps: int = 10, delay_seconds: float = 0.2) -> int:
    total = 0
    for index in range(steps):
        total += slow_step(tag, index, delay_seconds)
        agentflow.status(f"step {index} done", progress=(index + 1) / steps)
    return total


@component
async def square(tag: str, x: int) -> int:
    count(tag, f"square-{x}")
    return x * x


@workflow
async def fan_out(tag: str, n: int = 20, concurrency: int = 5) -> list[int]:
    return await agentflow.map(lambda_free_square(tag), range(n), concurrency=concurrency)


def lambda_free_square(tag: str):  # map passes one item; bind the tag with a named component
    @component(name="square_of")
    async def square_of(x: int) -> int:
        return await square(tag, x)

    return square_of


@component
def asks_retry(tag: str) -> str:
    if count(tag, "asks") < 2:
        raise Retry(delay_seconds=0.05, reason="not ready yet")
    return "ready"


@workflow
def retry_request(tag: str) -> str:
    return asks_retry.retry(max_attempts=3)(tag)


# The REST API tests' and the time-slice tests' workflows, registered on the workers too.
from . import workflows_api, workflows_slices, workflows_storable, workflows_waits  # noqa: E402, F401
from .workflows_chaos import chaos_stream  # noqa: E402, F401  (registers the chaos tests' workflows, tests/chaos)
from .workflows_llm import llm_chats  # noqa: E402, F401  (registers the LLM integration tests' workflows, tests/llm)
from .workflows_web import story  # noqa: E402, F401  (the browser, CLI and client-state tests' workflow)


@workflow(name="gc-frozen")
def gc_frozen() -> int:
    """How many objects the worker process executing the run froze (agentflow.tasks.freeze_startup_heap)."""
    import gc

    return gc.get_freeze_count()
