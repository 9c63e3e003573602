"""Shared rate limits against a real Redis: exact limits per window, tokens, Retry-After penalties, and two
processes hammering one key without ever exceeding it together."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from typing import Any

import pytest
import redis
from django.conf import settings
from django.test import override_settings

from agentflow import Retry
from agentflow.ratelimit import (
    RateLimited,
    RateLimiter,
    fingerprint,
    limit_key,
    resolve_limits,
)
from tests.conftest import ROOT


@pytest.fixture
def prefix(redis_client: redis.Redis) -> str:
    return f"rl-test:{uuid.uuid4().hex[:8]}:"


def make(
    prefix: str,
    redis_client: redis.Redis,
    window_seconds: float = 1.0,
    jitter_seconds: float = 0.0,
    **limits: int,
) -> RateLimiter:
    return RateLimiter(
        {"p:*": limits},
        window_seconds=window_seconds,
        jitter_seconds=jitter_seconds,
        client=redis_client,
        key_prefix=prefix,
    )


def test_limit_key_hashes_the_api_key():
    key = limit_key("openai", "gpt-4o", "sk-secret-123")
    assert key == f"openai:gpt-4o:{fingerprint('sk-secret-123')}"
    assert "secret" not in key and len(fingerprint("x")) == 12
    assert limit_key("openai", "gpt-4o") == "openai:gpt-4o"


def test_the_most_specific_pattern_wins():
    limits = {
        "*": {"requests_per_minute": 1},
        "openai:*": {"requests_per_minute": 2},
        "openai:gpt-4o": {"requests_per_minute": 3, "tokens_per_minute": 30},
    }
    assert resolve_limits(limits, "openai:gpt-4o:abc") == {"requests_per_minute": 3, "tokens_per_minute": 30}
    assert resolve_limits(limits, "openai:gpt-4o") == {"requests_per_minute": 3, "tokens_per_minute": 30}
    assert resolve_limits(limits, "openai:gpt-4o-mini") == {"requests_per_minute": 2}
    assert resolve_limits(limits, "anthropic:claude") == {"requests_per_minute": 1}
    assert resolve_limits({}, "anthropic:claude") == {}


def test_n_requests_granted_at_once_then_a_wait_until_the_window_frees(prefix, redis_client):
    limiter = make(prefix, redis_client, window_seconds=0.5, requests_per_minute=5)
    first = limiter.try_acquire("p:m")
    assert first.granted and first.wait_seconds == 0
    for _ in range(4):
        assert limiter.acquire("p:m") == 0
    refused = limiter.try_acquire("p:m")
    assert not refused.granted
    expected = first.server_time + 0.5 - refused.server_time
    assert refused.wait_seconds == pytest.approx(expected, abs=0.002)
    assert 0.3 < refused.wait_seconds <= 0.5
    assert limiter.acquire("p:m") > 0  # a refusal consumes nothing, and is refused again
    time.sleep(refused.wait_seconds + 0.01)
    assert limiter.acquire("p:m") == 0
    assert limiter.acquire("p:other") == 0  # another key, another limit


def test_the_jitter_allowance_lengthens_the_window(prefix, redis_client):
    # Arrivals at the provider follow grants by a delay that varies by up to the allowance: two grants a
    # window plus the allowance apart arrive at least a window apart.
    limiter = make(prefix, redis_client, window_seconds=0.4, jitter_seconds=0.2, requests_per_minute=1)
    first = limiter.try_acquire("p:m")
    refused = limiter.try_acquire("p:m")
    assert first.granted and not refused.granted
    assert refused.wait_seconds == pytest.approx(first.server_time + 0.6 - refused.server_time, abs=0.002)
    with override_settings(AGENTFLOW={**settings.AGENTFLOW, "RATE_LIMIT_JITTER_SECONDS": 0.3}):
        assert RateLimiter().jitter_seconds == 0.3  # the default comes from the setting
    with pytest.raises(ValueError, match="jitter_seconds"):
        RateLimiter(jitter_seconds=-1)


def test_tokens_per_minute_limit_large_requests(prefix, redis_client):
    limiter = make(prefix, redis_client, window_seconds=0.5, tokens_per_minute=1000)
    assert limiter.acquire("p:m", tokens=600) == 0
    assert limiter.acquire("p:m", tokens=300) == 0
    assert limiter.acquire("p:m", tokens=200) > 0  # 1100 would exceed 1000
    assert limiter.acquire("p:m", tokens=100) == 0  # a small one still fits
    with pytest.raises(ValueError, match="exceed"):
        limiter.acquire("p:m", tokens=1001)  # could never fit


def test_reconcile_corrects_the_token_count(prefix, redis_client):
    limiter = make(prefix, redis_client, window_seconds=5, tokens_per_minute=1000)
    assert limiter.acquire("p:m", tokens=800) == 0
    assert limiter.acquire("p:m", tokens=500) > 0
    limiter.reconcile("p:m", 800, 400)  # it used fewer: give back 400
    assert limiter.acquire("p:m", tokens=500) == 0
    limiter.reconcile("p:m", 500, 600)  # it used more: take 100 more
    assert limiter.acquire("p:m", tokens=1) > 0  # 400 + 600 = 1000


def test_penalize_blocks_every_acquirer_until_retry_after(prefix, redis_client):
    limits = {"p:*": {"requests_per_minute": 100}}
    one = RateLimiter(limits, client=redis_client, key_prefix=prefix)
    # Another process's limiter: its own client, the same Redis.
    other = RateLimiter(limits, client=redis.Redis.from_url(settings.REDIS_URL), key_prefix=prefix)
    assert one.acquire("p:m") == 0
    one.penalize("p:m", 0.3)
    wait = other.acquire("p:m")
    assert 0.2 < wait <= 0.3
    one.penalize("p:m", 0.05)  # a shorter penalty does not end the block early
    assert other.acquire("p:m") > 0.15
    assert other.acquire("p:unpenalized") == 0
    time.sleep(wait + 0.01)
    assert other.acquire("p:m") == 0


def test_penalize_applies_without_configured_limits(prefix, redis_client):
    limiter = RateLimiter({}, client=redis_client, key_prefix=prefix)
    assert limiter.acquire("q:m") == 0
    limiter.penalize("q:m", 0.3)
    assert limiter.acquire("q:m") > 0.2


def test_wait_for_capacity_sleeps_briefly_or_raises_rate_limited(prefix, redis_client):
    limiter = make(prefix, redis_client, window_seconds=0.3, requests_per_minute=1)
    assert limiter.wait_for_capacity("p:m", max_wait_seconds=1) == 0
    waited = limiter.wait_for_capacity("p:m", max_wait_seconds=1)
    assert 0.2 < waited < 0.5
    with pytest.raises(RateLimited) as info:
        limiter.wait_for_capacity("p:m", max_wait_seconds=0.05)
    assert isinstance(info.value, Retry) and info.value.code == "rate_limited"
    assert 0 < info.value.retry_after <= 0.3
    assert info.value.delay_seconds == info.value.retry_after  # the step retry waits at least this long


def test_wait_for_capacity_defaults_to_the_suspension_threshold(prefix, redis_client):
    limiter = make(prefix, redis_client, window_seconds=60, requests_per_minute=1)
    limiter.acquire("p:m")
    with override_settings(AGENTFLOW={**settings.AGENTFLOW, "SUSPEND_THRESHOLD_SECONDS": 5}):
        started = time.monotonic()
        with pytest.raises(RateLimited) as info:
            limiter.wait_for_capacity("p:m")
    assert time.monotonic() - started < 0.5  # did not sleep at all: a minute is far above 5 s
    assert info.value.retry_after > 59


def test_async_api(prefix, redis_client):
    limiter = make(prefix, redis_client, window_seconds=0.3, requests_per_minute=2)

    async def main() -> tuple[list[float], float]:
        waits = [await limiter.aacquire("p:m") for _ in range(3)]
        waited = await limiter.await_for_capacity("p:m", max_wait_seconds=1)
        return waits, waited

    waits, waited = asyncio.run(main())
    assert waits[:2] == [0, 0] and waits[2] > 0
    assert 0.1 < waited < 0.5


class _CountingRedis(redis.Redis):
    """Counts what goes to Redis: commands sent alone, and pipelines."""

    sent = 0

    def execute_command(self, *args: Any, **options: Any) -> Any:
        type(self).sent += 1
        return super().execute_command(*args, **options)

    def pipeline(self, *args: Any, **kwargs: Any) -> Any:
        type(self).sent += 1
        return super().pipeline(*args, **kwargs)


def test_concurrent_async_acquisitions_go_together_and_each_is_decided_alone(prefix, redis_client):
    client = _CountingRedis(connection_pool=redis_client.connection_pool)
    limiter = make(prefix, client, window_seconds=60, requests_per_minute=30)

    async def main() -> list[float]:
        return await asyncio.gather(*(limiter.aacquire("p:m") for _ in range(50)))

    _CountingRedis.sent = 0
    waits = asyncio.run(main())
    # One round trip (a pipeline) for the fan-out, not one per acquisition...
    assert _CountingRedis.sent == 1
    # ... and the limit holds exactly, in the order the acquisitions were asked for.
    assert waits[:30] == [0] * 30
    assert all(wait > 50 for wait in waits[30:])
    assert int(redis_client.zcard(f"{prefix}ratelimit:{{p:m}}:log")) == 30


def test_an_unreachable_redis_fails_every_async_acquisition_of_the_batch(prefix):
    limiter = RateLimiter(
        {}, client=redis.Redis(port=1, socket_connect_timeout=1), key_prefix=prefix, jitter_seconds=0
    )

    async def main() -> list[Any]:
        return await asyncio.gather(*(limiter.aacquire("p:m") for _ in range(3)), return_exceptions=True)

    results = asyncio.run(main())
    assert [type(result) for result in results] == [redis.ConnectionError] * 3


def test_default_limiter_reads_settings_and_the_streams_client(redis_client):
    from agentflow.ratelimit import limiter

    key = f"cfg{uuid.uuid4().hex[:8]}:model"
    overrides = {**settings.AGENTFLOW, "RATE_LIMITS": {"*": {"requests_per_minute": 1}}}
    with override_settings(AGENTFLOW=overrides):
        assert limiter.acquire(key) == 0
        assert limiter.acquire(key) > 50
    with override_settings(AGENTFLOW={**settings.AGENTFLOW, "RATE_LIMITS": {}}):
        assert limiter.acquire(key) == 0  # no limit configured


# Run in a separate process: hammer one key until `until` (epoch seconds), print the Redis times of grants.
_HAMMER = """
import json, sys, time
import redis
from agentflow.ratelimit import RateLimiter

url, prefix, limit, window, start, until = sys.argv[1:7]
limiter = RateLimiter({"p:*": {"requests_per_minute": int(limit)}}, window_seconds=float(window),
                      jitter_seconds=0, client=redis.Redis.from_url(url), key_prefix=prefix)
time.sleep(max(0.0, float(start) - time.time()))
grants, refusals = [], 0
while time.time() < float(until):
    result = limiter.try_acquire("p:shared")
    if result.granted:
        grants.append(result.server_time)
    else:
        refusals += 1
        time.sleep(min(result.wait_seconds, 0.002))
print(json.dumps({"grants": grants, "refusals": refusals}))
"""


def test_two_processes_never_exceed_the_limit_together(prefix, redis_client):
    limit, window, duration = 20, 1.0, 1.5
    start = time.time() + 1.0  # both interpreters are up by then
    args = [settings.REDIS_URL, prefix, str(limit), str(window), str(start), str(start + duration)]
    procs = [
        subprocess.Popen([sys.executable, "-c", _HAMMER, *args], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = [json.loads(proc.communicate(timeout=30)[0]) for proc in procs]
    assert all(proc.returncode == 0 for proc in procs)
    grants = sorted(t for result in results for t in result["grants"])
    # Every window (t - window, t] ending at a grant holds at most `limit` grants.
    low = 0
    busiest = 0
    for high, t in enumerate(grants):
        while grants[low] <= t - window:
            low += 1
        busiest = max(busiest, high - low + 1)
    assert busiest <= limit
    # Throughput: a full window at the start and another one second later; both processes contended.
    assert len(grants) >= 2 * limit - 2, len(grants)
    assert len(grants) <= 2 * limit
    assert all(result["refusals"] > 0 for result in results)


def test_a_component_rate_limited_is_retried_after_retry_after(prefix, redis_client):
    import agentflow
    from agentflow.testing import run_inline

    limiter = make(prefix, redis_client, window_seconds=0.3, requests_per_minute=1)
    limiter.acquire("p:m")  # the window is full for ~0.3 s

    @agentflow.component(retry=agentflow.RetryPolicy(max_attempts=3, initial_delay_seconds=0))
    def call() -> str:
        limiter.wait_for_capacity("p:m", max_wait_seconds=0)  # never sleep here: hand it to the retry
        return "ok"

    @agentflow.workflow(name="ratelimit-retry")
    def flow() -> str:
        return call()

    try:
        started = time.monotonic()
        run = run_inline(flow)
    finally:
        agentflow.registry.unregister("ratelimit-retry")
    assert run.output == "ok"
    (retrying,) = run.of_type("step.retrying")
    assert retrying["data"]["error"]["type"] == "RateLimited"
    assert 0.1 < retrying["data"]["delay_seconds"] <= 0.3
    assert time.monotonic() - started >= retrying["data"]["delay_seconds"] - 0.01


def test_lost_totals_are_counted_again_from_the_log(prefix, redis_client):
    from agentflow.core import keys

    limiter = make(prefix, redis_client, window_seconds=5, requests_per_minute=3)
    assert [limiter.acquire("p:m") for _ in range(2)] == [0, 0]
    redis_client.delete(keys.rate_limit(prefix, "p:m", "totals"))  # evicted, say
    assert limiter.acquire("p:m") == 0
    assert limiter.acquire("p:m") > 0


def test_waiting_for_capacity_does_not_use_up_attempts(prefix, redis_client):
    import agentflow
    from agentflow.testing import run_inline

    limiter = make(prefix, redis_client, window_seconds=0.2, requests_per_minute=1)
    limiter.acquire("p:m")

    @agentflow.component  # no retry policy: one real attempt, yet it waits its turn for capacity
    def call() -> str:
        limiter.wait_for_capacity("p:m", max_wait_seconds=0)
        return "ok"

    @agentflow.workflow(name="ratelimit-free-attempts")
    def flow() -> str:
        return call()

    try:
        run = run_inline(flow)
    finally:
        agentflow.registry.unregister("ratelimit-free-attempts")
    assert run.output == "ok"
    assert [e["data"]["error"]["type"] for e in run.of_type("step.retrying")] == ["RateLimited"]
    assert run.steps["call#0"].attempts == 2
