"""Usage, budgets and capacity waits in the engine core (in-memory store and sink, no provider)."""

from __future__ import annotations

import contextlib

import pytest

import agentflow
from agentflow import (
    Budget,
    BudgetExceeded,
    Retry,
    RunSuspended,
    StepFailed,
    component,
    record_usage,
    workflow,
)
from agentflow.core.context import RunContext
from agentflow.core.memory import MemorySink, MemoryStore
from agentflow.core.money import format_usd
from agentflow.core.usage import merge


def context(store: MemoryStore, **options: object) -> RunContext:
    return RunContext(
        run_id="r", epoch=1, store=store, sink=MemorySink(), checkpoints=store.checkpoints(), **options
    )


class NoCapacity(Retry):
    """Like agentflow.ratelimit.RateLimited: a wait for capacity, not a failure."""

    consumes_attempt = False


def test_capacity_waits_do_not_use_up_attempts():
    calls: list[str] = []

    @component
    def call() -> str:
        calls.append("x")
        if len(calls) <= 4:
            raise NoCapacity(delay_seconds=0)  # four waits for capacity...
        if len(calls) == 5:
            raise ValueError("a real failure")  # ...then one real failure, with max_attempts=2
        return "done"

    @workflow(name="core-usage-capacity")
    def flow() -> str:
        return call.retry(max_attempts=2, initial_delay_seconds=0)()

    store = MemoryStore()
    assert flow.execute({}, context(store)) == "done"
    assert store.records["call#0"].attempts == 6


def test_capacity_waits_never_make_a_real_failure_retried_past_max_attempts():
    @component
    def call() -> str:
        raise ValueError("down")

    @workflow(name="core-usage-no-extra")
    def flow() -> str:
        try:
            return call.retry(max_attempts=2, initial_delay_seconds=0)()
        except StepFailed as exc:
            return f"{exc.attempts}"

    assert flow.execute({}, context(MemoryStore())) == "2"


def test_a_suspended_capacity_wait_keeps_its_free_attempt_count():
    calls: list[int] = []

    @component
    def call() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise NoCapacity(delay_seconds=0.2)
        if len(calls) == 2:
            raise ValueError("once")
        return "ok"

    @workflow(name="core-usage-suspended-free")
    def flow() -> str:
        return call.retry(max_attempts=2, initial_delay_seconds=0)()

    store = MemoryStore()
    with pytest.raises(RunSuspended):
        flow.execute({}, context(store, suspend_threshold_seconds=0.05))
    assert store.records["call#0"].output["free_attempts"] == 1
    # Next incarnation: attempt 2 fails for real (1 counted of 2), attempt 3 is still allowed.
    assert flow.execute({}, context(store, suspend_threshold_seconds=10)) == "ok"
    assert store.records["call#0"].attempts == 3


def test_usage_belongs_to_the_step_that_recorded_it_and_sums_per_run():
    @component
    def child() -> None:
        record_usage("m", prompt_tokens=10, completion_tokens=5, cost_usd=0.5)

    @component
    def parent() -> None:
        record_usage("m", prompt_tokens=1, completion_tokens=1, cost_usd=0.25)
        child()
        child()

    @workflow(name="core-usage-nested")
    def flow() -> None:
        parent()

    store = MemoryStore()
    ctx = context(store)
    flow.execute({}, ctx)
    assert store.records["parent#0"].usage["total_tokens"] == 2  # not its children's
    assert store.records["parent#0/child#0"].usage["total_tokens"] == 15
    assert ctx.usage["total_tokens"] == 32 and ctx.usage["calls"] == 3
    assert ctx.usage["cost_usd"] == 1.25
    assert ctx.usage["by_model"]["m"] == {
        "calls": 3, "prompt_tokens": 21, "completion_tokens": 11, "total_tokens": 32, "cost_usd": 1.25,
    }  # fmt: skip
    # A replay starts from the checkpoints' usage: the totals are the same, nothing counted twice.
    replayed = context(store)
    flow.execute({}, replayed)
    assert replayed.usage == ctx.usage


def test_a_failed_attempts_usage_still_counts():
    attempts: list[int] = []

    @component
    def call() -> str:
        attempts.append(1)
        record_usage("m", prompt_tokens=3, completion_tokens=0)
        if len(attempts) == 1:
            raise ValueError("parse error after the call")
        return "ok"

    @workflow(name="core-usage-failed-attempt")
    def flow() -> str:
        return call.retry(max_attempts=2, initial_delay_seconds=0)()

    store = MemoryStore()
    ctx = context(store)
    flow.execute({}, ctx)
    assert store.records["call#0"].usage["prompt_tokens"] == 6
    assert ctx.usage["calls"] == 2


def test_the_budget_is_checked_before_each_step_and_cannot_be_swallowed():
    ran: list[int] = []

    @component
    def spend(i: int) -> None:
        ran.append(i)
        record_usage("m", prompt_tokens=40, completion_tokens=0, cost_usd=0.4)

    @workflow(name="core-usage-budget")
    def flow() -> None:
        for i in range(5):
            # BudgetExceeded is not an Exception: it still stops the run.
            with contextlib.suppress(Exception):
                spend(i)

    with pytest.raises(BudgetExceeded) as stopped:
        flow.execute({}, context(MemoryStore(), budget=Budget(usd=1.0)))
    assert ran == [0, 1, 2]  # $1.20 >= $1 after three: the fourth step never starts
    assert stopped.value.details == {
        "limit": "usd",
        "budget": {"usd": 1.0},
        "usage": {"calls": 3, "total_tokens": 120, "cost_usd": 1.2},
    }
    assert str(stopped.value) == "run r spent $1.20, reaching its budget of $1.00"
    with pytest.raises(BudgetExceeded, match="100 tokens"):
        flow.execute({}, context(MemoryStore(), budget=Budget(tokens=100)))


def test_a_tiny_budget_reads_as_money_not_as_a_float():
    @component
    def spend() -> None:
        record_usage("m", prompt_tokens=10, completion_tokens=0, cost_usd=0.000021)

    @workflow(name="core-usage-tiny-budget")
    def flow() -> None:
        spend()
        spend()

    with pytest.raises(BudgetExceeded) as stopped:
        flow.execute({}, context(MemoryStore(), budget=Budget(usd=0.00002)))
    assert str(stopped.value) == "run r spent $0.000021, reaching its budget of $0.00002"


@pytest.mark.parametrize(
    ("usd", "text"),
    [(0, "$0.00"), (0.05, "$0.05"), (2e-05, "$0.00002"), (1.5e-07, "$0.00000015"), (1234.567, "$1,234.57"),
     (-0.25, "-$0.25")],
)  # fmt: skip
def test_format_usd(usd, text):
    assert format_usd(usd) == text


def test_budget_parsing():
    assert Budget.parse(None) is None
    assert Budget.parse({"usd": 2}) == Budget(usd=2)
    assert Budget.parse({"tokens": 5, "usd": 1}).as_dict() == {"usd": 1, "tokens": 5}
    with pytest.raises(TypeError, match="budget tokens"):
        Budget(tokens=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Budget.parse("1 dollar")
    with pytest.raises(TypeError, match="budget usd"):
        agentflow.workflow(name="core-usage-bad-budget", budget={"usd": 0})(lambda: None)


def test_merge_adds_counts_and_keeps_unpriced_models_apart():
    total: dict = {}
    merge(
        total,
        {"calls": 1, "total_tokens": 3, "cost_usd": 0.1, "by_model": {"a": {"calls": 1, "cost_usd": 0.1}}},
    )
    merge(
        total,
        {
            "calls": 1,
            "total_tokens": 2,
            "unpriced_calls": 1,
            "by_model": {"b": {"calls": 1, "cost_usd": None}},
        },
    )
    merge(total, None)
    assert total["calls"] == 2 and total["total_tokens"] == 5 and total["unpriced_calls"] == 1
    assert total["by_model"]["a"]["cost_usd"] == 0.1 and total["by_model"]["b"]["cost_usd"] is None


def test_a_fan_out_waiting_for_capacity_suspends_once_no_attempt_is_in_flight():
    import asyncio
    import time

    attempts: dict[str, int] = {}

    @component
    async def call(name: str) -> str:
        attempts[name] = attempts.get(name, 0) + 1
        if name == "slow":
            await asyncio.sleep(0.4)  # in flight while the others wait: they cannot suspend yet
            return name
        if attempts[name] == 1:
            raise NoCapacity(delay_seconds=1.5)  # longer than the threshold
        return name

    @workflow(name="core-usage-fan-out-suspends")
    async def flow() -> list[str]:
        return await agentflow.map(call, ["slow", "a", "b", "c"])

    store = MemoryStore()
    started = time.monotonic()
    with pytest.raises(RunSuspended) as suspended:
        flow.execute({}, context(store, suspend_threshold_seconds=0.5))
    # Handed back soon after the in-flight attempt ended, not after the 1.5 s wait.
    assert time.monotonic() - started < 1.4
    assert suspended.value.reason == "retry"
    assert {step: record.status for step, record in store.records.items()} == {
        "call#0": "completed", "call#1": "waiting", "call#2": "waiting", "call#3": "waiting",
    }  # fmt: skip
    time.sleep(max(0.0, suspended.value.wake_at - time.time()))
    assert flow.execute({}, context(store, suspend_threshold_seconds=0.5)) == ["slow", "a", "b", "c"]
    assert attempts == {"a": 2, "slow": 1, "b": 2, "c": 2}


def test_a_call_refused_for_budget_waits_for_the_calls_in_flight_then_stops_the_run():
    import threading

    from agentflow.core.context import Frame, _frame

    ctx = context(MemoryStore(), budget=Budget(tokens=100))
    releases = [ctx.reserve_budget(40, 0.0) for _ in range(3)]  # 120 held: the budget is full
    outcome: list[object] = []

    def refused() -> None:
        try:
            outcome.append(ctx.reserve_budget(40, 0.0))
        except BudgetExceeded as exc:
            outcome.append(exc)

    waiter = threading.Thread(target=refused)
    waiter.start()
    waiter.join(0.3)
    assert waiter.is_alive() and not outcome  # not refused yet: calls holding reservations are in flight
    for release in releases:  # they answer with 30 tokens each: 90 spent, room for one more call
        ctx.add_usage(Frame(step_id="s", attempt=1), {"calls": 1, "total_tokens": 30})
        release()
    waiter.join(5)
    [granted] = outcome
    assert callable(granted)  # it got its reservation after all
    ctx.add_usage(Frame(step_id="s", attempt=1), {"calls": 1, "total_tokens": 30})
    granted()
    # 120 tokens spent and nothing in flight: the next call, and the next step, stop the run at once.
    with pytest.raises(BudgetExceeded) as stopped:
        ctx.reserve_budget(40, 0.0)
    assert stopped.value.details["usage"] == {"calls": 4, "total_tokens": 120, "cost_usd": 0.0}
    with pytest.raises(BudgetExceeded):
        ctx.check_budget()
    assert _frame.get() is None


def test_an_async_step_starting_once_the_budget_is_spent_waits_for_the_calls_in_flight():
    import asyncio

    ctx = context(MemoryStore(), budget=Budget(tokens=10))
    order: list[str] = []

    async def main() -> None:
        release = await ctx.areserve_budget(5, 0.0)  # a call in flight
        ctx.add_usage(ctx.root, {"calls": 1, "total_tokens": 12})  # another one spent the budget

        async def answer() -> None:
            await asyncio.sleep(0.2)
            order.append("call answered")
            release()

        task = asyncio.create_task(answer())
        with pytest.raises(BudgetExceeded):
            await ctx.acheck_budget()  # the next step: not before the call in flight is over
        order.append("run stopped")
        await task

    asyncio.run(main())
    assert order == ["call answered", "run stopped"]
