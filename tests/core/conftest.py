"""Fixtures for the engine core's unit tests: no Django, no database, no Redis."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from agentflow import registry
from agentflow.core.memory import MemorySink


@pytest.fixture(autouse=True)
def clean_registry() -> Iterator[None]:
    """Unregister every workflow a test defines, so names never leak into other tests."""
    before = {wf.name for wf in registry.all()}
    yield
    for wf in registry.all():
        if wf.name not in before:
            registry.unregister(wf.name)


@pytest.fixture
def sink() -> MemorySink:
    return MemorySink()


def step_events(sink: MemorySink) -> list[tuple[str, str | None, int | None]]:
    """``(type, step, attempt)`` of every event, the shape most assertions compare."""
    return [(e["type"], e["step"], e["attempt"]) for e in sink.events]


def of_type(sink: MemorySink, type: str) -> list[dict[str, Any]]:
    return [e for e in sink.events if e["type"] == type]
