"""Workflows of the time-slice, suspension, drain and cancellation tests (tests/integration/test_slices.py)."""

from __future__ import annotations

import time

import agentflow
from agentflow import Retry, component, workflow

from .workflows import count


@component
def once(tag: str, name: str) -> str:
    count(tag, name)
    return name


@component
def not_yet(tag: str, delay_seconds: float) -> str:
    if count(tag, "not_yet") < 2:
        raise Retry(delay_seconds=delay_seconds, reason="come back later")
    return "now"


@workflow(name="retry-later")
def retry_later(tag: str, delay_seconds: float = 3.0) -> list[str]:
    """A step whose retry delay is long enough to suspend the run."""
    return [once(tag, "before"), not_yet.retry(max_attempts=3)(tag, delay_seconds), once(tag, "after")]


@workflow(name="sleeper")
def sleeper(tag: str, seconds: float = 2.0) -> list[str]:
    first = once(tag, "before")
    agentflow.sleep(seconds)
    return [first, once(tag, "after")]


@component
def tick(tag: str, index: int) -> int:
    count(tag, "tick")
    time.sleep(0.1)
    return index


@component
def swallows_steps(tag: str, rounds: int) -> str:
    for index in range(rounds):
        try:  # noqa: SIM105 (written out: the bad habit under test must not swallow a cancellation)
            tick(tag, index)
        except Exception:
            pass
    return "finished"


@component
def swallows_sleeps(tag: str, rounds: int) -> str:
    for _ in range(rounds):
        try:
            count(tag, "nap")
            agentflow.sleep(0.2)
        except Exception:
            pass
    return "finished"


@workflow(name="swallower")
def swallower(tag: str, rounds: int = 300, sleeps: bool = False) -> str:
    return (swallows_sleeps if sleeps else swallows_steps)(tag, rounds)
