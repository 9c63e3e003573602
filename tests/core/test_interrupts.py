"""Retry waits honour interruptions; an attempt abandoned by its time-out can no longer write."""

from __future__ import annotations

import threading
import time

import pytest

import agentflow
from agentflow import RunCancelled, StepFailed, component, workflow
from agentflow.core.context import RunContext
from agentflow.core.memory import MemorySink, MemoryStore


def test_a_long_retry_wait_is_cut_short_by_cancellation():
    calls = []

    @component
    def always_down() -> None:
        calls.append(1)
        raise ConnectionError("down")

    @workflow(name="core-cancel-during-backoff")
    def flow() -> None:
        always_down.retry(max_attempts=3, initial_delay_seconds=30, jitter=False)()

    cancelled = threading.Event()

    def interrupt() -> None:
        if cancelled.is_set():
            raise RunCancelled("cancelled")

    sink = MemorySink()
    ctx = RunContext(run_id="r", epoch=1, store=MemoryStore(), sink=sink, interrupt=interrupt)
    threading.Timer(0.2, cancelled.set).start()
    started = time.monotonic()
    with pytest.raises(RunCancelled):
        flow.execute({}, ctx)
    assert time.monotonic() - started < 5  # not the 30 s back-off
    assert calls == [1]
    agentflow.registry.unregister("core-cancel-during-backoff")


def test_output_of_an_attempt_abandoned_after_its_time_out_is_dropped():
    finished = threading.Event()

    @component
    def slow_writer() -> str:
        time.sleep(0.3)
        agentflow.stream_output("late")  # after the time-out: must not reach the stream
        try:
            child()
        except Exception as exc:
            errors.append(type(exc).__name__)
        finished.set()
        return "late"

    @component
    def child() -> str:
        return "never checkpointed"

    errors: list[str] = []

    @workflow(name="core-abandoned-attempt")
    def flow() -> str:
        try:
            return slow_writer.timeout(0.05)()
        except StepFailed as exc:
            return exc.error_type

    store, sink = MemoryStore(), MemorySink()
    ctx = RunContext(run_id="r", epoch=1, store=store, sink=sink)
    assert flow.execute({}, ctx) == "StepTimeout"
    assert finished.wait(5)
    assert errors == ["StepTimeout"]
    assert [e for e in sink.events if e["type"] == "output.delta"] == []
    assert "slow_writer#0/child#0" not in store.records
    agentflow.registry.unregister("core-abandoned-attempt")
