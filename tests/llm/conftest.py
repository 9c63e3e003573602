"""Fixtures of the LLM client tests: our fake OpenAI server in a thread (two of them, for fallbacks)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from django.test import override_settings

from agentflow.conf import agentflow_settings
from agentflow.llm.breaker import breakers
from agentflow.testing import FakeOpenAI


@pytest.fixture(scope="module")
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(completion_tokens=12) as fake:
        yield fake


@pytest.fixture(scope="module")
def backup() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(completion_tokens=12) as fake:
        yield fake


@pytest.fixture
def fake(server: FakeOpenAI, redis_client: redis.Redis) -> FakeOpenAI:
    server.reset()
    breakers.reset()
    # A 429 in one test blocks its limit key for Retry-After: no test inherits another's block.
    for key in redis_client.scan_iter(f"{agentflow_settings.key_prefix}ratelimit:*"):
        redis_client.delete(key)
    return server


@pytest.fixture
def providers(fake: FakeOpenAI) -> Iterator[list[dict[str, Any]]]:
    configured = [{"name": "fake", "base_url": fake.base_url, "api_key": "test-key"}]
    with override_settings(AGENTFLOW={**agentflow_settings.user_settings, "LLM_PROVIDERS": configured}):
        yield configured
