"""Replay: a recovered or resumed run re-executes its workflow over checkpoints and repeats nothing."""

import contextlib

import pytest

import agentflow
from agentflow import LeaseLost, RunCancelled, StepFailed, WorkflowDivergence, component, workflow
from agentflow.core.context import COMPLETED, FAILED, Checkpoint, RunContext
from agentflow.core.memory import MemorySink, MemoryStore, run_in_memory

from .conftest import step_events

FAST = {"initial_delay_seconds": 0, "jitter": False}


class Crash(BaseException):
    """Stands in for a worker dying mid-run: nothing after it is checkpointed."""


def test_replay_executes_no_completed_step_again():
    effects: list[str] = []

    @component
    def fetch(topic: str) -> str:
        effects.append("fetch")
        return f"notes on {topic}"

    @component
    def outline(notes: str) -> list[str]:
        effects.append("outline")
        return [notes, "end"]

    @component
    def write(sections: list[str]) -> str:
        effects.append("write")
        return " / ".join(sections)

    @workflow
    def flow_three(topic: str) -> str:
        return write(outline(fetch(topic)))

    store = MemoryStore()
    first, _ = run_in_memory(flow_three, {"topic": "otters"}, store=store)
    assert effects == ["fetch", "outline", "write"]

    sink = MemorySink()
    second, ctx = run_in_memory(flow_three, {"topic": "otters"}, store=store, sink=sink, epoch=2)
    assert second == first == "notes on otters / end"
    assert effects == ["fetch", "outline", "write"]
    assert (ctx.steps_replayed, ctx.steps_executed) == (3, 0)
    assert sink.events == []


def test_recovered_run_continues_after_the_last_checkpoint():
    effects: list[str] = []
    crash = [True]

    @component
    def a() -> str:
        effects.append("a")
        agentflow.status("a is working")
        return "A"

    @component
    def b() -> str:
        effects.append("b")
        if crash[0]:
            raise Crash
        return "B"

    @component
    def c() -> str:
        effects.append("c")
        return "C"

    @workflow
    def flow_recovers() -> str:
        return a() + b() + c()

    store = MemoryStore()
    first_sink = MemorySink()
    with pytest.raises(Crash):
        run_in_memory(flow_recovers, store=store, sink=first_sink)
    assert list(store.records) == ["a#0"]

    crash[0] = False
    sink = MemorySink()
    output, ctx = run_in_memory(flow_recovers, store=store, sink=sink, epoch=2)
    assert output == "ABC"
    assert effects == ["a", "b", "b", "c"]
    assert (ctx.steps_replayed, ctx.steps_executed) == (1, 2)
    # The replayed step emits nothing: neither step events nor the content its code emitted the first time.
    assert step_events(sink) == [
        ("step.started", "b#0", 1),
        ("step.completed", "b#0", 1),
        ("step.started", "c#0", 1),
        ("step.completed", "c#0", 1),
    ]
    assert {e["epoch"] for e in sink.events} == {2}


def test_replayed_failure_takes_the_same_path():
    effects: list[str] = []
    caught: list[StepFailed] = []
    crash = [True]

    @component
    def risky() -> str:
        effects.append("risky")
        raise ValueError("flaky provider")

    @component
    def fallback() -> str:
        effects.append("fallback")
        if crash[0]:
            raise Crash
        return "fallback answer"

    @workflow
    def flow_falls_back() -> str:
        try:
            return risky.retry(max_attempts=2, **FAST)()
        except StepFailed as exc:
            caught.append(exc)
            return fallback()

    store = MemoryStore()
    with pytest.raises(Crash):
        run_in_memory(flow_falls_back, store=store)
    assert effects == ["risky", "risky", "fallback"]

    crash[0] = False
    sink = MemorySink()
    output, _ = run_in_memory(flow_falls_back, store=store, sink=sink, epoch=2)
    assert output == "fallback answer"
    assert effects == ["risky", "risky", "fallback", "fallback"]  # risky is not tried again
    live, replayed = caught
    assert (replayed.step_id, replayed.attempts, replayed.error_type, replayed.error_message) == (
        "risky#0",
        2,
        "ValueError",
        "flaky provider",
    )
    assert replayed.cause is None and isinstance(live.cause, ValueError)
    assert [e["step"] for e in sink.events] == ["fallback#0", "fallback#0"]


def test_uncaught_replayed_failure_fails_the_run_again_without_running():
    effects: list[str] = []

    @component
    def doomed_call() -> None:
        effects.append("doomed")
        raise KeyError("x")

    @workflow
    def flow_fails_again() -> None:
        doomed_call()

    store = MemoryStore()
    with pytest.raises(StepFailed):
        run_in_memory(flow_fails_again, store=store)
    sink = MemorySink()
    with pytest.raises(StepFailed, match="KeyError"):
        run_in_memory(flow_fails_again, store=store, sink=sink)
    assert effects == ["doomed"]
    assert sink.events == []


def content(sink: MemorySink) -> list[tuple[str, str | None, dict]]:
    return [
        (e["type"], e["step"], e["data"])
        for e in sink.events
        if e["type"] in {"status", "data", "output.delta"}
    ]


def make_chatty_workflow(crash: list[bool]):
    @component
    def step_one() -> str:
        agentflow.status("inside step one")
        return "one"

    @component
    def step_two() -> str:
        if crash[0]:
            raise Crash
        return "two"

    @workflow
    def flow_chatty() -> str:
        agentflow.status("starting", progress=0.0)
        first = step_one()
        agentflow.publish("first", {"value": first})
        agentflow.stream_output("Hello")
        second = step_two()
        agentflow.stream_output(", world")
        agentflow.status("done", progress=1)
        return first + second

    return flow_chatty


def test_workflow_content_already_seen_is_suppressed():
    crash = [True]
    flow = make_chatty_workflow(crash)
    store, first_sink = MemoryStore(), MemorySink()
    with pytest.raises(Crash):
        run_in_memory(flow, store=store, sink=first_sink)
    workflow_content = [c for c in content(first_sink) if c[1] is None]
    assert len(workflow_content) == 3

    crash[0] = False
    sink = MemorySink()
    output, ctx = run_in_memory(flow, store=store, sink=sink, epoch=2, workflow_content_seen=3)
    assert output == "onetwo"
    assert content(sink) == [
        ("output.delta", None, {"text": ", world"}),
        ("status", None, {"text": "done", "progress": 1}),
    ]
    assert ctx.workflow_content_emitted == 5
    # Together the two incarnations emitted every content event exactly once.
    assert [c for c in content(first_sink) + content(sink) if c[1] is None] == [
        ("status", None, {"text": "starting", "progress": 0.0}),
        ("data", None, {"label": "first", "value": {"value": "one"}}),
        ("output.delta", None, {"text": "Hello"}),
        ("output.delta", None, {"text": ", world"}),
        ("status", None, {"text": "done", "progress": 1}),
    ]


def test_without_a_seen_count_workflow_content_is_emitted_again():
    crash = [True]
    flow = make_chatty_workflow(crash)
    store = MemoryStore()
    with pytest.raises(Crash):
        run_in_memory(flow, store=store)
    crash[0] = False
    sink = MemorySink()
    run_in_memory(flow, store=store, sink=sink, epoch=2)
    assert [c[2].get("text", c[2].get("label")) for c in content(sink)] == [
        "starting",
        "first",
        "Hello",
        ", world",
        "done",
    ]


def test_content_of_a_step_is_not_counted_as_workflow_content():
    flow = make_chatty_workflow([False])
    sink = MemorySink()
    _, ctx = run_in_memory(flow, sink=sink)
    assert ("status", "step_one#0", {"text": "inside step one"}) in content(sink)
    assert ctx.workflow_content_emitted == 5


def test_replay_with_other_arguments_is_divergence():
    effects: list[int] = []
    value = [1]

    @component
    def record(x: int, *, label: str = "a") -> int:
        effects.append(x)
        return x

    @workflow
    def flow_diverges() -> int:
        return record(value[0], label="a")

    store = MemoryStore()
    run_in_memory(flow_diverges, store=store)
    value[0] = 2
    sink = MemorySink()
    with pytest.raises(WorkflowDivergence, match="record#0") as info:
        run_in_memory(flow_diverges, store=store, sink=sink)
    assert info.value.code == "workflow_divergence"
    assert info.value.details == {"step": "record#0"}
    assert effects == [1]
    assert sink.events == []


def test_replay_with_other_keyword_arguments_is_divergence():
    label = ["a"]

    @component
    def record(x: int, *, label: str) -> int:
        return x

    @workflow
    def flow_diverges_kw() -> int:
        return record(1, label=label[0])

    store = MemoryStore()
    run_in_memory(flow_diverges_kw, store=store)
    label[0] = "b"
    with pytest.raises(WorkflowDivergence):
        run_in_memory(flow_diverges_kw, store=store)


def test_replayed_failure_with_other_arguments_is_divergence():
    value = [1]

    @component
    def doomed_call(x: int) -> None:
        raise ValueError(x)

    @workflow
    def flow_diverges_after_failure() -> None:
        with contextlib.suppress(StepFailed):
            doomed_call(value[0])

    store = MemoryStore()
    run_in_memory(flow_diverges_after_failure, store=store)
    value[0] = 2
    with pytest.raises(WorkflowDivergence):
        run_in_memory(flow_diverges_after_failure, store=store)


# -- retries of a parent step ------------------------------------------------------------------------------


def test_failed_child_runs_again_on_the_parents_next_attempt(sink):
    effects: list[str] = []

    @component
    def prepare() -> str:
        effects.append("prepare")
        return "ready"

    @component
    def child(state: str) -> str:
        effects.append("child")
        if effects.count("child") == 1:
            raise ConnectionError("first call fails")
        return state + "!"

    @component
    def parent() -> str:
        return child(prepare())

    @workflow
    def flow_parent_retries() -> str:
        return parent.retry(max_attempts=2, **FAST)()

    store = MemoryStore()
    output, _ = run_in_memory(flow_parent_retries, store=store, sink=sink)
    assert output == "ready!"
    # The failed child ran again; the completed sibling was replayed from its checkpoint.
    assert effects == ["prepare", "child", "child"]
    record = store.records["parent#0/child#0"]
    assert (record.status, record.attempts) == ("completed", 1)
    assert step_events(sink) == [
        ("step.started", "parent#0", 1),
        ("step.started", "parent#0/prepare#0", 1),
        ("step.completed", "parent#0/prepare#0", 1),
        ("step.started", "parent#0/child#0", 1),
        ("step.failed", "parent#0/child#0", 1),
        # The child runs again under the same id: its failed attempt's content is voided first.
        ("step.retrying", "parent#0/child#0", 1),
        ("step.retrying", "parent#0", 1),
        ("step.started", "parent#0", 2),
        ("step.started", "parent#0/child#0", 1),
        ("step.completed", "parent#0/child#0", 1),
        ("step.completed", "parent#0", 2),
    ]
    voiding = [e for e in sink.events if e["type"] == "step.retrying" and e["step"] == "parent#0/child#0"]
    assert voiding[0]["data"]["reason"] == "parent_retry"


def test_failed_async_child_runs_again_on_the_parents_next_attempt():
    effects: list[str] = []

    @component
    async def child() -> str:
        effects.append("child")
        if len(effects) == 1:
            raise ConnectionError("first call fails")
        return "ok"

    @component
    async def parent() -> str:
        return await child()

    @workflow
    async def flow_async_parent_retries() -> str:
        return await parent.retry(max_attempts=2, **FAST)()

    output, _ = run_in_memory(flow_async_parent_retries)
    assert output == "ok"
    assert effects == ["child", "child"]


def test_discard_failed_below_forgets_only_failed_descendants():
    ctx = RunContext(run_id="r", epoch=1, store=MemoryStore(), sink=MemorySink())
    ctx.checkpoints.update(
        {
            "p#1": Checkpoint(FAILED),
            "p#1/c#0": Checkpoint(FAILED),
            "p#1/c#1": Checkpoint(COMPLETED, output=1),
            "p#1/c#1/d#0": Checkpoint(FAILED),
            "p#10/c#0": Checkpoint(FAILED),
            "q#0": Checkpoint(FAILED),
        }
    )
    ctx.discard_failed_below("p#1")
    assert sorted(ctx.checkpoints) == ["p#1", "p#1/c#1", "p#10/c#0", "q#0"]


# -- interruption ------------------------------------------------------------------------------------------


def test_cancellation_is_checked_at_step_boundaries():
    effects: list[str] = []
    cancelled = [False]

    def interrupt() -> None:
        if cancelled[0]:
            raise RunCancelled("cancelled by user")

    @component
    def first() -> None:
        effects.append("first")
        cancelled[0] = True

    @component
    def second() -> None:
        effects.append("second")

    @workflow
    def flow_cancellable() -> None:
        first()
        try:
            second()
        except Exception:  # a cancellation is not an Exception: this cannot swallow it
            effects.append("swallowed")

    store, sink = MemoryStore(), MemorySink()
    ctx = RunContext(run_id="r", epoch=1, store=store, sink=sink, interrupt=interrupt)
    with pytest.raises(RunCancelled):
        flow_cancellable.execute({}, ctx)
    assert effects == ["first"]
    assert list(store.records) == ["first#0"]


def test_cancellation_stops_retries_before_the_next_attempt():
    effects: list[int] = []
    cancelled = [False]

    def interrupt() -> None:
        if cancelled[0]:
            raise RunCancelled

    @component
    def flaky_call() -> None:
        effects.append(1)
        cancelled[0] = True
        raise ValueError

    @workflow
    def flow_cancelled_between_attempts() -> None:
        flaky_call.retry(max_attempts=5, **FAST)()

    sink = MemorySink()
    ctx = RunContext(run_id="r", epoch=1, store=MemoryStore(), sink=sink, interrupt=interrupt)
    with pytest.raises(RunCancelled):
        flow_cancelled_between_attempts.execute({}, ctx)
    assert effects == [1]
    assert sink.types() == ["step.started", "step.retrying"]


class FencedSink(MemorySink):
    """A sink whose appends a newer epoch refuses once ``stale`` is set."""

    stale = False

    @property
    def fenced(self) -> bool:
        return self.stale


def test_stale_epoch_stops_the_run():
    effects: list[str] = []
    sink = FencedSink()

    @component
    def first() -> None:
        effects.append("first")
        sink.stale = True  # meanwhile the monitor gave the run to another worker

    @component
    def second() -> None:
        effects.append("second")

    @workflow
    def flow_fenced() -> None:
        first()
        second()

    store = MemoryStore()
    ctx = RunContext(run_id="r", epoch=1, store=store, sink=sink)
    with pytest.raises(LeaseLost):
        flow_fenced.execute({}, ctx)
    assert effects == ["first"]
    assert list(store.records) == ["first#0"]


def test_checkpoint_refused_for_a_stale_epoch():
    @component
    def first() -> None: ...

    @workflow
    def flow_stale_store() -> None:
        first()

    store = MemoryStore()
    store.stale = True
    with pytest.raises(LeaseLost):
        run_in_memory(flow_stale_store, store=store)
    assert store.records == {}
