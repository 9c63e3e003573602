"""Time slices, suspension and agentflow.sleep in the engine core (in-memory store and sink)."""

from __future__ import annotations

import time

import pytest

import agentflow
from agentflow import Retry, RunSuspended, component, workflow
from agentflow.core.context import RunContext
from agentflow.core.errors import SliceEnded
from agentflow.core.memory import MemorySink, MemoryStore


def context(store: MemoryStore, sink: MemorySink, **options) -> RunContext:
    return RunContext(run_id="r", epoch=1, store=store, sink=sink, checkpoints=store.checkpoints(), **options)


def test_a_slice_ends_at_a_step_boundary_after_one_step_and_replay_goes_on():
    calls: list[int] = []

    @component
    def step(i: int) -> int:
        calls.append(i)
        try:
            return i
        finally:
            time.sleep(0.01)

    @workflow(name="core-sliced")
    def flow() -> int:
        return sum(step(i) for i in range(3))

    store = MemoryStore()
    incarnations = 0
    while True:
        incarnations += 1
        ctx = context(store, MemorySink(), slice_deadline=time.monotonic())  # expired from the start
        try:
            output = flow.execute({}, ctx)
            break
        except SliceEnded as exc:
            assert exc.reason == "slice" and exc.wake_at is None
    assert output == 3 and incarnations == 3 and calls == [0, 1, 2]


def test_draining_hands_the_run_back_before_the_next_step():
    @component
    def step() -> str:
        return "done"

    @workflow(name="core-drained")
    def flow() -> str:
        return step()

    draining = True
    ctx = context(MemoryStore(), MemorySink(), draining=lambda: draining)
    with pytest.raises(SliceEnded) as ended:
        flow.execute({}, ctx)
    assert ended.value.reason == "drain"


def test_no_slice_ends_inside_a_running_step():
    @component
    def child(i: int) -> int:
        return i

    @component
    def parent() -> int:
        return child(1) + child(2)

    @workflow(name="core-no-slice-in-parent")
    def flow() -> int:
        return parent()

    sink = MemorySink()
    # The parent's children are boundaries, but the parent is running: the slice waits for the next step.
    assert flow.execute({}, context(MemoryStore(), sink, slice_deadline=0.0)) == 3


def test_a_long_retry_delay_suspends_and_the_next_incarnation_makes_the_next_attempt():
    attempts: list[int] = []

    @component
    def not_yet() -> str:
        attempts.append(1)
        if len(attempts) < 2:
            raise Retry(delay_seconds=0.3)
        return "now"

    @workflow(name="core-suspend-retry")
    def flow() -> str:
        return not_yet.retry(max_attempts=2, initial_delay_seconds=0, jitter=False)()

    store, sink = MemoryStore(), MemorySink()
    with pytest.raises(RunSuspended) as suspended:
        flow.execute({}, context(store, sink, suspend_threshold_seconds=0.1))
    assert suspended.value.reason == "retry" and suspended.value.wake_at > time.time()
    record = store.records["not_yet#0"]
    assert record.status == "waiting" and record.attempts == 1
    assert record.output["wake_at"] == suspended.value.wake_at

    # Woken early (a duplicate message): suspends again without a new checkpoint or attempt.
    with pytest.raises(RunSuspended):
        flow.execute({}, context(store, MemorySink(), suspend_threshold_seconds=0.1))
    assert len(attempts) == 1

    time.sleep(0.25)  # within the threshold of the wake-up now: waits in-process
    sink = MemorySink()
    assert flow.execute({}, context(store, sink, suspend_threshold_seconds=0.1)) == "now"
    assert len(attempts) == 2 and store.records["not_yet#0"].attempts == 2
    assert [(e["type"], e["attempt"]) for e in sink.events] == [("step.started", 2), ("step.completed", 2)]


def test_without_a_threshold_retries_wait_in_process():
    attempts: list[int] = []

    @component
    def not_yet() -> str:
        attempts.append(1)
        if len(attempts) < 2:
            raise Retry(delay_seconds=0.05)
        return "now"

    @workflow(name="core-no-suspend")
    def flow() -> str:
        return not_yet.retry(max_attempts=2)()

    assert flow.execute({}, context(MemoryStore(), MemorySink())) == "now"


def test_sleep_suspends_once_and_replay_does_not_sleep_again():
    calls: list[str] = []

    @component
    def mark(name: str) -> str:
        calls.append(name)
        return name

    @workflow(name="core-sleeper")
    def flow() -> list[str]:
        first = mark("before")
        agentflow.sleep(0.3)
        return [first, mark("after")]

    store = MemoryStore()
    with pytest.raises(RunSuspended) as suspended:
        flow.execute({}, context(store, MemorySink(), suspend_threshold_seconds=0.1))
    assert suspended.value.reason == "sleep" and store.records["sleep#0"].status == "waiting"
    wake_at = suspended.value.wake_at
    assert flow.execute({}, context(store, MemorySink(), suspend_threshold_seconds=1.0)) == [
        "before",
        "after",
    ]
    assert time.time() >= wake_at and calls == ["before", "after"]
    assert store.records["sleep#0"].status == "completed"

    started = time.monotonic()
    assert flow.execute({}, context(store, MemorySink(), suspend_threshold_seconds=0.1)) == [
        "before",
        "after",
    ]
    assert time.monotonic() - started < 0.2 and calls == ["before", "after"]


def test_sleep_outside_a_workflow_just_sleeps_and_checks_its_argument():
    started = time.monotonic()
    agentflow.sleep(0.01)
    assert time.monotonic() - started >= 0.01
    with pytest.raises(TypeError):
        agentflow.sleep(-1)


def test_except_exception_does_not_swallow_a_suspension():
    @workflow(name="core-swallow-suspend")
    def flow() -> str:
        try:
            agentflow.sleep(5)
        except Exception:
            return "swallowed"
        return "slept"

    with pytest.raises(RunSuspended):
        flow.execute({}, context(MemoryStore(), MemorySink(), suspend_threshold_seconds=1.0))


def test_a_suspension_stops_concurrent_branches_before_their_next_step():
    import asyncio

    @component
    async def not_yet() -> str:
        raise Retry(delay_seconds=60)

    @component
    async def other() -> str:
        await asyncio.sleep(0.05)  # would be cut short by the hand-off, had it started
        return "other"

    @workflow(name="core-suspend-gather")
    async def flow() -> list[str]:
        async def later() -> str:
            return await other()  # runs right after the first branch suspended the run

        return list(await asyncio.gather(not_yet.retry(max_attempts=2)(), later()))

    sink = MemorySink()
    with pytest.raises(RunSuspended) as suspended:
        flow.execute({}, context(MemoryStore(), sink, suspend_threshold_seconds=1.0))
    assert suspended.value.reason == "retry"
    assert [e["step"] for e in sink.events if e["type"] == "step.started"] == ["not_yet#0"]
