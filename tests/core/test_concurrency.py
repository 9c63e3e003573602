"""Concurrency inside a run: agentflow.map, asyncio.gather, and the content APIs that need a running workflow."""

import asyncio
import threading

import pytest

import agentflow
from agentflow import SerializationError, StepFailed, component, workflow
from agentflow.core.memory import MemorySink, MemoryStore, run_in_memory


async def yield_times(n: int) -> None:
    """Let the event loop run other tasks ``n`` times: a deterministic way to order completions."""
    for _ in range(n):
        await asyncio.sleep(0)


def inputs_by_step(store: MemoryStore) -> dict[str, object]:
    return {step_id: record.input["args"][0] for step_id, record in store.records.items()}


class Reorderable:
    """An async component whose items finish in an order the test chooses."""

    def __init__(self) -> None:
        self.finished: list[int] = []
        self.yields: dict[int, int] = {}

        @component(name="work")
        async def work(i: int) -> int:
            await yield_times(self.yields.get(i, 0))
            self.finished.append(i)
            return i * 10

        self.component = work


# -- agentflow.map -----------------------------------------------------------------------------------------


def test_map_keeps_item_order_whatever_the_completion_order():
    r = Reorderable()
    r.yields = {0: 30, 1: 20, 2: 10, 3: 0}

    @workflow
    async def flow_map_order() -> list[int]:
        return await agentflow.map(r.component, [0, 1, 2, 3])

    output, _ = run_in_memory(flow_map_order)
    assert r.finished == [3, 2, 1, 0]
    assert output == [0, 10, 20, 30]


def test_map_never_exceeds_its_concurrency():
    active = 0
    peak = 0
    started: list[int] = []

    @component
    async def limited(i: int) -> int:
        nonlocal active, peak
        started.append(i)
        active += 1
        peak = max(peak, active)
        await yield_times(5)
        active -= 1
        return i

    @workflow
    async def flow_map_limit(concurrency: int) -> list[int]:
        return await agentflow.map(limited, range(7), concurrency=concurrency)

    output, _ = run_in_memory(flow_map_limit, {"concurrency": 2})
    assert output == list(range(7))
    assert peak == 2
    assert sorted(started) == list(range(7))

    peak = 0
    run_in_memory(flow_map_limit, {"concurrency": 1})
    assert peak == 1


def test_map_without_a_limit_runs_everything_at_once():
    active = 0
    peak = 0

    @component
    async def unlimited(i: int) -> int:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await yield_times(3)
        active -= 1
        return i

    @workflow
    async def flow_map_unlimited() -> list[int]:
        return await agentflow.map(unlimited, range(6))

    run_in_memory(flow_map_unlimited)
    assert peak == 6


def test_map_assigns_the_same_step_ids_in_every_incarnation():
    r = Reorderable()

    @workflow
    async def flow_map_ids(n: int) -> list[int]:
        return await agentflow.map(r.component, range(n), concurrency=3)

    reversed_store, forward_store = MemoryStore(), MemoryStore()
    r.yields = {i: 20 - 4 * i for i in range(5)}
    first, _ = run_in_memory(flow_map_ids, {"n": 5}, store=reversed_store)
    finished_first = list(r.finished)
    r.finished.clear()
    r.yields = {i: 4 * i for i in range(5)}
    second, _ = run_in_memory(flow_map_ids, {"n": 5}, store=forward_store)
    assert finished_first != r.finished  # the completion orders really differed
    assert first == second == [0, 10, 20, 30, 40]
    expected = {f"work#{i}": i for i in range(5)}
    assert inputs_by_step(reversed_store) == inputs_by_step(forward_store) == expected

    # A recovered incarnation, finishing in yet another order, replays every item by its id.
    r.finished.clear()
    sink = MemorySink()
    third, ctx = run_in_memory(flow_map_ids, {"n": 5}, store=reversed_store, sink=sink, epoch=2)
    assert third == first
    assert r.finished == []
    assert (ctx.steps_replayed, ctx.steps_executed) == (5, 0)
    assert sink.events == []


def test_map_resumes_only_the_missing_items():
    r = Reorderable()

    @workflow
    async def flow_map_resume() -> list[int]:
        return await agentflow.map(r.component, range(4))

    store = MemoryStore()
    run_in_memory(flow_map_resume, store=store)
    del store.records["work#1"], store.records["work#3"]  # as if the worker died before those checkpoints
    r.finished.clear()
    output, ctx = run_in_memory(flow_map_resume, store=store)
    assert output == [0, 10, 20, 30]
    assert sorted(r.finished) == [1, 3]
    assert ctx.steps_replayed == 2


def test_map_runs_sync_components_in_threads():
    barrier = threading.Barrier(2, timeout=5)  # passes only when two calls run at the same time
    lock = threading.Lock()
    active = 0
    peak = 0
    threads: set[str] = set()

    @component
    def blocking(i: int) -> int:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
            threads.add(threading.current_thread().name)
        barrier.wait()
        with lock:
            active -= 1
        agentflow.status(f"item {i}")
        return i * i

    @workflow
    async def flow_map_threads() -> list[int]:
        return await agentflow.map(blocking, [1, 2, 3, 4], concurrency=2)

    sink = MemorySink()
    store = MemoryStore()
    output, _ = run_in_memory(flow_map_threads, store=store, sink=sink)
    assert output == [1, 4, 9, 16]
    assert peak == 2
    assert threading.current_thread().name not in threads
    assert inputs_by_step(store) == {"blocking#0": 1, "blocking#1": 2, "blocking#2": 3, "blocking#3": 4}
    # Content emitted in a worker thread belongs to the step that thread runs.
    statuses = {e["data"]["text"]: e["step"] for e in sink.events if e["type"] == "status"}
    assert statuses == {f"item {i}": f"blocking#{i - 1}" for i in [1, 2, 3, 4]}


def test_map_raises_the_first_failure_after_every_item_finished():
    finished: list[int] = []

    @component
    async def sometimes(i: int) -> int:
        await yield_times(10 if i == 2 else 0)
        if i in (1, 3):
            raise ValueError(f"item {i}")
        finished.append(i)
        return i

    caught: list[StepFailed] = []

    @workflow
    async def flow_map_failure() -> str:
        try:
            await agentflow.map(sometimes, range(4))
        except StepFailed as exc:
            caught.append(exc)
            return "failed"
        return "ok"

    store = MemoryStore()
    output, _ = run_in_memory(flow_map_failure, store=store)
    assert output == "failed"
    (exc,) = caught
    assert (exc.step_id, exc.error_message) == ("sometimes#1", "item 1")
    # The slow item was not abandoned: it finished and was checkpointed before map raised.
    assert sorted(finished) == [0, 2]
    statuses = {step_id: record.status for step_id, record in store.records.items()}
    assert statuses == {
        "sometimes#0": "completed",
        "sometimes#1": "failed",
        "sometimes#2": "completed",
        "sometimes#3": "failed",
    }


def test_map_retries_each_item_on_its_own():
    attempts: dict[int, int] = {}

    @component
    async def flaky_item(i: int) -> int:
        attempts[i] = attempts.get(i, 0) + 1
        if i == 1 and attempts[i] < 3:
            raise ConnectionError("again")
        return i

    @workflow
    async def flow_map_retries() -> list[int]:
        return await agentflow.map(
            flaky_item.retry(max_attempts=3, initial_delay_seconds=0, jitter=False), range(3)
        )

    output, _ = run_in_memory(flow_map_retries)
    assert output == [0, 1, 2]
    assert attempts == {0: 1, 1: 3, 2: 1}


def test_map_inside_a_step_nests_the_ids():
    @component
    async def leaf(i: int) -> int:
        return i

    @component
    async def fan_out_step(n: int) -> list[int]:
        return await agentflow.map(leaf, range(n))

    @workflow
    async def flow_map_nested() -> list[int]:
        return await fan_out_step(3)

    store = MemoryStore()
    output, _ = run_in_memory(flow_map_nested, store=store)
    assert output == [0, 1, 2]
    assert sorted(store.records) == ["fan_out_step#0", *(f"fan_out_step#0/leaf#{i}" for i in range(3))]


def test_map_of_nothing():
    @component
    async def never(i: int) -> int:
        raise AssertionError("not called")

    @workflow
    async def flow_map_empty() -> list[int]:
        return await agentflow.map(never, [], concurrency=2)

    assert run_in_memory(flow_map_empty)[0] == []


def test_map_outside_a_workflow_calls_the_function():
    @component
    async def double(x: int) -> int:
        return x * 2

    @component
    def triple(x: int) -> int:
        return x * 3

    assert asyncio.run(agentflow.map(double, [1, 2, 3], concurrency=2)) == [2, 4, 6]
    assert asyncio.run(agentflow.map(triple, iter([1, 2]))) == [3, 6]


@component
async def some_component(x: int) -> int:
    return x


async def not_a_component(x: int) -> int:
    return x


@pytest.mark.parametrize(
    ("comp", "options", "message"),
    [
        (not_a_component, {}, "needs a component"),
        (some_component, {"concurrency": 0}, "concurrency"),
        (some_component, {"concurrency": -1}, "concurrency"),
        (some_component, {"concurrency": 1.5}, "concurrency"),
        (some_component, {"concurrency": "2"}, "concurrency"),
    ],
)
def test_map_rejects_bad_arguments(comp, options, message):
    with pytest.raises(TypeError, match=message):
        asyncio.run(agentflow.map(comp, [1], **options))


# -- asyncio.gather ----------------------------------------------------------------------------------------


def test_gather_assigns_step_ids_in_call_order():
    r = Reorderable()

    @workflow
    async def flow_gather() -> list[int]:
        work = r.component
        return list(await asyncio.gather(work(0), work(1), work(2)))

    stores = []
    for yields in ({0: 9, 1: 6, 2: 3}, {0: 0, 1: 3, 2: 6}):
        r.yields = yields
        r.finished.clear()
        store = MemoryStore()
        output, _ = run_in_memory(flow_gather, store=store)
        assert output == [0, 10, 20]
        stores.append(store)
    assert r.finished == [0, 1, 2]  # the second run finished in the opposite order of the first
    assert inputs_by_step(stores[0]) == inputs_by_step(stores[1]) == {"work#0": 0, "work#1": 1, "work#2": 2}

    r.finished.clear()
    sink = MemorySink()
    output, _ = run_in_memory(flow_gather, store=stores[0], sink=sink)
    assert output == [0, 10, 20]
    assert r.finished == []
    assert sink.events == []


def test_gather_of_children_inside_a_step():
    @component
    async def child(i: int) -> int:
        await yield_times(3 - i)
        agentflow.publish("child", i)
        return i

    @component
    async def parent() -> list[int]:
        return list(await asyncio.gather(child(0), child(1), child(2)))

    @workflow
    async def flow_gather_nested() -> list[int]:
        return await parent()

    store, sink = MemoryStore(), MemorySink()
    output, _ = run_in_memory(flow_gather_nested, store=store, sink=sink)
    assert output == [0, 1, 2]
    assert {k: v.parent_id for k, v in store.records.items() if k != "parent#0"} == {
        f"parent#0/child#{i}": "parent#0" for i in range(3)
    }
    published = [(e["step"], e["data"]["value"]) for e in sink.events if e["type"] == "data"]
    assert published == [("parent#0/child#2", 2), ("parent#0/child#1", 1), ("parent#0/child#0", 0)]


# -- status, publish, stream_output ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "api"),
    [
        (lambda: agentflow.status("working"), "status"),
        (lambda: agentflow.publish("label", {"a": 1}), "publish"),
        (lambda: agentflow.stream_output("tok"), "stream_output"),
    ],
)
def test_content_apis_do_nothing_outside_a_running_workflow(call, api):
    assert call() is None
    assert agentflow.current_step() is None


def test_a_component_that_reports_progress_is_a_plain_function_outside_a_workflow():
    @component
    def chatty() -> str:
        agentflow.status("hi")
        agentflow.stream_output("tok")
        return "done"

    assert chatty() == "done"


def test_current_step_names_the_run_step_and_attempt():
    seen = []

    @component
    def where() -> None:
        seen.append(agentflow.current_step())

    @workflow
    def flow_where() -> None:
        seen.append(agentflow.current_step())
        where()

    run_in_memory(flow_where)
    assert [(s.step_id, s.attempt, s.epoch) for s in seen] == [(None, None, 1), ("where#0", 1, 1)]
    assert seen[1].run_id == "memory-run"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: agentflow.status(5), "status text"),  # type: ignore[arg-type]
        (lambda: agentflow.status("x", progress=True), "progress"),
        (lambda: agentflow.status("x", progress="half"), "progress"),  # type: ignore[arg-type]
        (lambda: agentflow.publish("", 1), "label"),
        (lambda: agentflow.publish(3, 1), "label"),  # type: ignore[arg-type]
        (lambda: agentflow.stream_output(5), "chunk"),  # type: ignore[arg-type]
        (lambda: agentflow.stream_output(b"bytes"), "chunk"),  # type: ignore[arg-type]
    ],
)
def test_content_apis_reject_bad_arguments(call, message):
    with pytest.raises(TypeError, match=message):
        call()


@pytest.mark.parametrize("progress", [5, 1.5, -0.1, float("nan")])
def test_a_progress_out_of_range_is_a_value_error_naming_the_range(progress):
    with pytest.raises(ValueError, match=r"progress must be from 0 to 1 \(a fraction"):
        agentflow.status("x", progress=progress)


def test_content_events_carry_their_data():
    from pydantic import BaseModel

    class Point(BaseModel):
        x: int

    @component
    def stepped() -> None:
        agentflow.stream_output("tok")

    @workflow
    def flow_content() -> None:
        agentflow.status("half way", progress=0.5)
        agentflow.status("no progress")
        agentflow.publish("point", Point(x=1))
        stepped()

    sink = MemorySink()
    run_in_memory(flow_content, sink=sink)
    content = [
        (e["type"], e["step"], e["attempt"], e["data"]) for e in sink.events if e["step"] != "stepped#0"
    ]
    assert content == [
        ("status", None, None, {"text": "half way", "progress": 0.5}),
        ("status", None, None, {"text": "no progress"}),
        ("data", None, None, {"label": "point", "value": {"x": 1}}),
    ]
    delta = [e for e in sink.events if e["type"] == "output.delta"]
    assert [(e["step"], e["attempt"], e["data"]) for e in delta] == [("stepped#0", 1, {"text": "tok"})]


def test_publish_needs_json_data():
    @workflow
    def flow_publish_object() -> None:
        agentflow.publish("x", object())

    with pytest.raises(SerializationError, match="published data"):
        run_in_memory(flow_publish_object)
