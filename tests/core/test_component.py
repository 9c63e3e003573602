"""Components: plain functions outside a workflow; durable, retried, timed and cached steps inside one."""

import asyncio
import contextlib
import functools
import inspect
import threading

import pytest
from pydantic import BaseModel

import agentflow
from agentflow import (
    Component,
    Retry,
    RetryPolicy,
    RunCancelled,
    SerializationError,
    StepFailed,
    StepTimeout,
    component,
    workflow,
)
from agentflow.core.component import CachePolicy
from agentflow.core.memory import MemoryCache, MemorySink, MemoryStore, run_in_memory
from agentflow.core.retry import NO_RETRY

from .conftest import of_type, step_events

FAST = {"initial_delay_seconds": 0, "jitter": False}


class Summary(BaseModel):
    title: str
    words: int


# -- outside a workflow ------------------------------------------------------------------------------------


def test_sync_component_outside_a_workflow_is_the_function():
    calls = []

    @component
    def add(a: int, b: int = 1) -> int:
        calls.append((a, b))
        return a + b

    assert isinstance(add, Component)
    assert add(2, b=3) == 5
    assert add(4) == 5
    assert calls == [(2, 3), (4, 1)]


def test_async_component_outside_a_workflow_is_the_function():
    @component
    async def double(x: int) -> int:
        await asyncio.sleep(0)
        return x * 2

    assert double.is_async
    coro = double(21)
    assert inspect.iscoroutine(coro)
    assert asyncio.run(coro) == 42


def test_no_retries_outside_a_workflow():
    calls = []

    @component
    def broken() -> None:
        calls.append(1)
        raise ValueError("nope")

    with pytest.raises(ValueError, match="nope"):
        broken.retry(max_attempts=5, **FAST)()
    assert calls == [1]


def test_no_retries_outside_a_workflow_async():
    calls = []

    @component
    async def broken() -> None:
        calls.append(1)
        raise ValueError("nope")

    with pytest.raises(ValueError, match="nope"):
        asyncio.run(broken.retry(max_attempts=5, **FAST)())
    assert calls == [1]


def test_no_caching_outside_a_workflow():
    calls = []

    @component
    def lookup(key: str) -> str:
        calls.append(key)
        return key.upper()

    cached = lookup.cache(ttl_seconds=60)
    assert cached("a") == "A"
    assert cached("a") == "A"
    assert calls == ["a", "a"]


# -- fluent configuration ----------------------------------------------------------------------------------


@component
def base(text: str) -> str:
    """Shout ``text``."""
    return text.upper()


def test_retry_returns_a_new_component_and_leaves_the_original():
    retried = base.retry(max_attempts=5, backoff=3, max_delay_seconds=9)
    assert retried is not base
    assert isinstance(retried, Component)
    assert (retried.retry_policy.max_attempts, retried.retry_policy.backoff) == (5, 3)
    assert retried.retry_policy.max_delay_seconds == 9
    assert base.retry_policy is NO_RETRY
    assert base.retry_policy.max_attempts == 1


def test_retry_defaults_to_three_attempts_and_keeps_earlier_options():
    assert base.retry().retry_policy.max_attempts == 3
    five = base.retry(max_attempts=5, retry_on=ValueError)
    tweaked = five.retry(backoff=4, jitter=False)
    assert tweaked.retry_policy.max_attempts == 5
    assert tweaked.retry_policy.retry_on == (ValueError,)
    assert (tweaked.retry_policy.backoff, tweaked.retry_policy.jitter) == (4, False)
    assert five.retry_policy.backoff == 2.0


def test_cache_timeout_and_named_return_new_components():
    cached = base.cache(ttl_seconds=60)
    timed = base.timeout(2.5)
    renamed = base.named("shout")
    assert cached.cache_policy == CachePolicy(ttl_seconds=60, key=None)
    assert timed.timeout_seconds == 2.5
    assert renamed.name == "shout"
    assert (base.cache_policy, base.timeout_seconds, base.name) == (None, None, "base")
    assert base.timeout(3).timeout(None).timeout_seconds is None


def test_chained_configuration_keeps_every_option():
    key = lambda text: text  # noqa: E731
    chained = base.retry(max_attempts=4).cache(ttl_seconds=10, key=key).timeout(7).named("loud")
    assert chained.retry_policy.max_attempts == 4
    assert chained.cache_policy == CachePolicy(ttl_seconds=10, key=key)
    assert chained.timeout_seconds == 7
    assert chained.name == "loud"
    assert chained.fn is base.fn
    assert chained("x") == "X"


def test_unknown_retry_option_names_the_typo():
    with pytest.raises(TypeError, match="retires"):
        base.retry(retires=3)  # type: ignore[call-arg]


def test_unknown_decorator_option_names_the_typo():
    with pytest.raises(TypeError, match="retires"):

        @component(retires=3)  # type: ignore[call-overload]
        def f() -> None: ...


def test_invalid_retry_values_are_rejected():
    with pytest.raises(TypeError, match="max_attempts"):
        base.retry(max_attempts=0)
    with pytest.raises(TypeError, match="backoff"):
        base.retry(backoff=0.1)


@pytest.mark.parametrize("seconds", [0, -1, True, "5"])
def test_invalid_timeouts_are_rejected(seconds):
    with pytest.raises(TypeError, match="timeout"):
        base.timeout(seconds)


def test_invalid_cache_options_are_rejected():
    with pytest.raises(TypeError, match="ttl_seconds"):
        base.cache(ttl_seconds=0)
    with pytest.raises(TypeError, match="ttl_seconds"):
        base.cache(ttl_seconds="1")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="key"):
        base.cache(key="text")  # type: ignore[arg-type]


def test_decorator_options():
    policy = RetryPolicy(max_attempts=4)

    @component(name="custom.name:v2", retry=policy, timeout_seconds=3)
    def f() -> None: ...

    assert (f.name, f.retry_policy, f.timeout_seconds) == ("custom.name:v2", policy, 3)

    @component()
    def g() -> None: ...

    assert g.name == "g"


def noop() -> None: ...


def test_decorator_rejects_bad_arguments():
    with pytest.raises(TypeError, match="retry must be a RetryPolicy"):
        component(retry=3)(noop)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="already a component"):
        component(base)
    with pytest.raises(TypeError, match="needs a function"):
        component(42)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="timeout"):
        component(timeout_seconds=-1)(noop)


def test_a_lambda_needs_an_explicit_name():
    with pytest.raises(TypeError, match="<lambda>"):
        component(lambda: None)
    assert component(name="anonymous")(lambda: 1)() == 1


@pytest.mark.parametrize("name", ["a/b", "a#1", "1abc", "has space", "-x", 42])
def test_bad_names_are_rejected(name):
    with pytest.raises(TypeError, match="component name"):
        component(name=name)(noop)
    with pytest.raises(TypeError, match="component name"):
        base.named(name)


@pytest.mark.parametrize("name", ["", None])
def test_empty_name_is_rejected_by_named(name):
    # To the decorator an empty name means "the function's name".
    assert component(name=name)(noop).name == "noop"
    with pytest.raises(TypeError, match="component name"):
        base.named(name)


def test_functools_metadata_is_preserved():
    def summarise(text: str, *, limit: int = 3) -> str:
        """Summarise ``text`` in ``limit`` sentences."""
        return text

    made = component(summarise)
    for wrapped in (made, made.retry(max_attempts=2).cache().timeout(1).named("other")):
        assert wrapped.__name__ == "summarise"
        assert wrapped.__qualname__ == summarise.__qualname__
        assert wrapped.__doc__ == "Summarise ``text`` in ``limit`` sentences."
        assert wrapped.__module__ == __name__
        assert wrapped.__wrapped__ is summarise
        assert inspect.signature(wrapped) == inspect.signature(summarise)
    assert repr(made) == "<Component summarise>"


# -- inside a workflow: step ids and events ----------------------------------------------------------------


def test_step_ids_count_calls_per_component():
    @component
    def a(x: int) -> int:
        return x

    @component
    def b(x: int) -> int:
        return x

    @workflow
    def flow_ids() -> list[int]:
        return [a(1), b(2), a(3), a.named("alias")(4), a(5)]

    store = MemoryStore()
    output, ctx = run_in_memory(flow_ids, store=store)
    assert output == [1, 2, 3, 4, 5]
    assert list(store.records) == ["a#0", "b#0", "a#1", "alias#0", "a#2"]
    assert store.records["a#1"].input == {"args": [3], "kwargs": {}}
    assert store.records["alias#0"].component == "alias"
    assert ctx.steps_executed == 5


def test_nested_step_ids_and_parents():
    @component
    def child(x: int) -> int:
        return x + 1

    @component
    def parent(x: int) -> int:
        return child(x) + child(x * 10)

    @workflow
    def flow_nested() -> list[int]:
        return [parent(1), parent(2)]

    store = MemoryStore()
    output, _ = run_in_memory(flow_nested, store=store)
    assert output == [1 + 1 + 10 + 1, 2 + 1 + 20 + 1]
    assert sorted(store.records) == [
        "parent#0",
        "parent#0/child#0",
        "parent#0/child#1",
        "parent#1",
        "parent#1/child#0",
        "parent#1/child#1",
    ]
    assert store.records["parent#1/child#1"].parent_id == "parent#1"
    assert store.records["parent#1"].parent_id is None


def test_nested_async_step_ids():
    @component
    async def leaf(x: int) -> int:
        return x

    @component
    async def branch(x: int) -> int:
        return await leaf(x) + await leaf(x)

    @workflow
    async def flow_async_nested() -> int:
        return await branch(1) + await branch(2)

    store = MemoryStore()
    output, _ = run_in_memory(flow_async_nested, store=store)
    assert output == 6
    assert "branch#1/leaf#1" in store.records
    assert store.records["branch#1/leaf#1"].parent_id == "branch#1"


def test_a_successful_step_emits_started_then_completed(sink):
    @component
    def child() -> str:
        return "c"

    @component
    def parent() -> str:
        return child() * 2

    @workflow
    def flow_events() -> str:
        return parent()

    output, _ = run_in_memory(flow_events, sink=sink, epoch=4)
    assert output == "cc"
    assert step_events(sink) == [
        ("step.started", "parent#0", 1),
        ("step.started", "parent#0/child#0", 1),
        ("step.completed", "parent#0/child#0", 1),
        ("step.completed", "parent#0", 1),
    ]
    started = sink.events[1]
    assert set(started) == {"id", "type", "run", "step", "attempt", "epoch", "ts", "data"}
    assert (started["run"], started["epoch"]) == ("memory-run", 4)
    assert started["data"] == {"component": "child", "parent": "parent#0"}
    assert sink.events[3]["data"] == {"component": "parent", "parent": None}


def test_flaky_step_succeeds_on_the_third_attempt(sink):
    calls = []

    @component
    def flaky_fetch(url: str) -> str:
        calls.append(url)
        if len(calls) < 3:
            raise ConnectionError(f"reset #{len(calls)}")
        return "page"

    @workflow
    def flow_flaky() -> str:
        return flaky_fetch.retry(max_attempts=3, initial_delay_seconds=0.001, jitter=False)("u")

    store = MemoryStore()
    output, _ = run_in_memory(flow_flaky, store=store, sink=sink)
    assert output == "page"
    assert calls == ["u", "u", "u"]
    assert step_events(sink) == [
        ("step.started", "flaky_fetch#0", 1),
        ("step.retrying", "flaky_fetch#0", 1),
        ("step.started", "flaky_fetch#0", 2),
        ("step.retrying", "flaky_fetch#0", 2),
        ("step.started", "flaky_fetch#0", 3),
        ("step.completed", "flaky_fetch#0", 3),
    ]
    first, second = of_type(sink, "step.retrying")
    assert first["data"] == {
        "error": {"type": "ConnectionError", "message": "reset #1"},
        "delay_seconds": 0.001,
        "next_attempt": 2,
    }
    assert (second["data"]["delay_seconds"], second["data"]["next_attempt"]) == (0.002, 3)
    record = store.records["flaky_fetch#0"]
    assert (record.status, record.attempts, record.output) == ("completed", 3, "page")


def test_workflow_catches_step_failed(sink):
    calls = []

    @component
    def doomed_call() -> str:
        calls.append(1)
        raise ValueError(f"bad #{len(calls)}")

    caught: list[StepFailed] = []

    @workflow
    def flow_catches() -> dict:
        try:
            doomed_call.retry(max_attempts=2, **FAST)()
        except StepFailed as exc:
            caught.append(exc)
            return {"type": exc.error_type, "attempts": exc.attempts, "step": exc.step_id}
        return {}

    store = MemoryStore()
    output, _ = run_in_memory(flow_catches, store=store, sink=sink)
    assert output == {"type": "ValueError", "attempts": 2, "step": "doomed_call#0"}
    assert len(calls) == 2
    (exc,) = caught
    assert exc.error_message == "bad #2"
    assert isinstance(exc.cause, ValueError)
    assert exc.__cause__ is exc.cause
    assert exc.code == "step_failed"
    assert step_events(sink)[-1] == ("step.failed", "doomed_call#0", 2)
    assert sink.events[-1]["data"]["error"] == {"type": "ValueError", "message": "bad #2"}
    record = store.records["doomed_call#0"]
    assert (record.status, record.attempts, record.error) == (
        "failed",
        2,
        {"type": "ValueError", "message": "bad #2"},
    )


def test_uncaught_step_failed_propagates():
    @component
    def doomed_call() -> None:
        raise KeyError("missing")

    @workflow
    def flow_uncaught() -> None:
        doomed_call()

    with pytest.raises(StepFailed) as info:
        run_in_memory(flow_uncaught)
    assert (info.value.step_id, info.value.attempts, info.value.error_type) == (
        "doomed_call#0",
        1,
        "KeyError",
    )


def test_give_up_on_fails_at_once(sink):
    calls = []

    @component
    def forbidden() -> None:
        calls.append(1)
        raise PermissionError("no")

    @workflow
    def flow_give_up() -> None:
        forbidden.retry(max_attempts=5, give_up_on=PermissionError, **FAST)()

    with pytest.raises(StepFailed, match="PermissionError"):
        run_in_memory(flow_give_up, sink=sink)
    assert calls == [1]
    assert sink.types() == ["step.started", "step.failed"]


def test_retry_requested_by_the_component(sink):
    calls = []

    @component
    def polite() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise Retry(0.001, reason="not ready yet")
        return "ready"

    @workflow
    def flow_requests_retry() -> str:
        return polite.retry(max_attempts=2, **FAST)()

    output, _ = run_in_memory(flow_requests_retry, sink=sink)
    assert output == "ready"
    (retrying,) = of_type(sink, "step.retrying")
    assert retrying["data"]["delay_seconds"] == 0.001  # above the policy's 0 delay
    assert retrying["data"]["error"] == {"type": "Retry", "message": "not ready yet"}


def test_retry_request_counts_against_max_attempts():
    @component
    def impatient() -> None:
        raise Retry(0)

    @workflow
    def flow_retry_exhausted() -> None:
        impatient()

    with pytest.raises(StepFailed) as info:
        run_in_memory(flow_retry_exhausted)
    assert (info.value.attempts, info.value.error_type) == (1, "Retry")


def test_provider_retry_after_is_honoured(sink):
    class RateLimited(Exception):
        retry_after = 0.002

    calls = []

    @component
    def api_call() -> int:
        calls.append(1)
        if len(calls) == 1:
            raise RateLimited("429")
        return 200

    @workflow
    def flow_rate_limited() -> int:
        return api_call.retry(max_attempts=2, **FAST)()

    assert run_in_memory(flow_rate_limited, sink=sink)[0] == 200
    assert of_type(sink, "step.retrying")[0]["data"]["delay_seconds"] == 0.002


def test_run_cancelled_inside_a_step_is_not_retried_nor_checkpointed(sink):
    calls = []

    @component
    def cancelled() -> None:
        calls.append(1)
        raise RunCancelled("stop")

    @workflow
    def flow_cancelled() -> None:
        with contextlib.suppress(Exception):  # cannot swallow a cancellation
            cancelled.retry(max_attempts=5, retry_on=BaseException, **FAST)()

    store = MemoryStore()
    with pytest.raises(RunCancelled):
        run_in_memory(flow_cancelled, store=store, sink=sink)
    assert calls == [1]
    assert store.records == {}
    assert sink.types() == ["step.started"]


def test_own_timeout_error_is_not_disguised_as_a_step_timeout():
    @component
    def socket_read() -> None:
        raise TimeoutError("read timed out")

    @workflow
    def flow_own_timeout() -> None:
        socket_read()

    with pytest.raises(StepFailed) as info:
        run_in_memory(flow_own_timeout)
    assert (info.value.error_type, info.value.error_message) == ("TimeoutError", "read timed out")


# -- time-outs ---------------------------------------------------------------------------------------------


def test_sync_timeout_raises_step_timeout_and_is_retried(sink):
    release = threading.Event()
    calls = []

    @component
    def stuck() -> str:
        calls.append(1)
        if len(calls) == 1:
            release.wait(5)  # abandoned by the time-out; released below so the thread ends
            return "too late"
        return "fast"

    @workflow
    def flow_sync_timeout() -> str:
        return stuck.timeout(0.01).retry(max_attempts=2, **FAST)()

    try:
        output, _ = run_in_memory(flow_sync_timeout, sink=sink)
    finally:
        release.set()
    assert output == "fast"
    assert step_events(sink) == [
        ("step.started", "stuck#0", 1),
        ("step.retrying", "stuck#0", 1),
        ("step.started", "stuck#0", 2),
        ("step.completed", "stuck#0", 2),
    ]
    assert of_type(sink, "step.retrying")[0]["data"]["error"]["type"] == "StepTimeout"


def test_sync_timeout_without_retries_fails_the_step():
    release = threading.Event()

    @component(timeout_seconds=0.01)
    def stuck() -> None:
        release.wait(5)

    @workflow
    def flow_sync_timeout_fails() -> None:
        stuck()

    try:
        with pytest.raises(StepFailed) as info:
            run_in_memory(flow_sync_timeout_fails)
    finally:
        release.set()
    assert info.value.error_type == "StepTimeout"
    assert isinstance(info.value.cause, StepTimeout)
    assert isinstance(info.value.cause, TimeoutError)


def test_sync_timeout_runs_the_function_with_the_step_context(sink):
    @component
    def reports() -> str:
        agentflow.status("inside")
        return threading.current_thread().name

    @workflow
    def flow_timeout_context() -> str:
        return reports.timeout(5)()

    thread_name, _ = run_in_memory(flow_timeout_context, sink=sink)
    assert thread_name.startswith("agentflow-step")
    (status,) = of_type(sink, "status")
    assert (status["step"], status["attempt"]) == ("reports#0", 1)


def test_async_timeout_raises_step_timeout_and_is_retried(sink):
    calls = []

    @component
    async def stuck() -> str:
        calls.append(1)
        if len(calls) == 1:
            await asyncio.sleep(5)  # cancelled by the time-out long before
            return "too late"
        return "fast"

    @workflow
    async def flow_async_timeout() -> str:
        return await stuck.timeout(0.01).retry(max_attempts=2, **FAST)()

    output, _ = run_in_memory(flow_async_timeout, sink=sink)
    assert output == "fast"
    assert calls == [1, 1]
    retrying = of_type(sink, "step.retrying")[0]
    assert retrying["data"]["error"]["type"] == "StepTimeout"
    assert "0.01" in retrying["data"]["error"]["message"]
    assert step_events(sink)[-1] == ("step.completed", "stuck#0", 2)


def test_async_timeout_without_retries_fails_the_step():
    @component(timeout_seconds=0.01)
    async def stuck() -> None:
        await asyncio.sleep(5)  # cancelled by the time-out long before

    @workflow
    async def flow_async_timeout_fails() -> None:
        await stuck()

    with pytest.raises(StepFailed) as info:
        run_in_memory(flow_async_timeout_fails)
    assert info.value.error_type == "StepTimeout"


# -- caching -----------------------------------------------------------------------------------------------


def test_cached_component_runs_once_across_runs():
    calls = []

    @component
    def expensive_call(text: str) -> str:
        calls.append(text)
        return text[::-1]

    @workflow
    def flow_cached(text: str) -> str:
        return expensive_call.cache(ttl_seconds=60)(text)

    cache = MemoryCache()
    first_store, second_store = MemoryStore(), MemoryStore()
    assert run_in_memory(flow_cached, {"text": "abc"}, store=first_store, cache=cache)[0] == "cba"
    second_sink = MemorySink()
    output, _ = run_in_memory(flow_cached, {"text": "abc"}, store=second_store, sink=second_sink, cache=cache)
    assert output == "cba"
    assert calls == ["abc"]
    record = second_store.records["expensive_call#0"]
    assert (record.cached, record.status, record.output, record.attempts) == (True, "completed", "cba", 0)
    assert first_store.records["expensive_call#0"].cached is False
    # A cache hit is a completed step without a start.
    assert step_events(second_sink) == [("step.completed", "expensive_call#0", 0)]
    assert second_sink.events[0]["data"]["cached"] is True
    # Other arguments miss.
    run_in_memory(flow_cached, {"text": "xyz"}, cache=cache)
    assert calls == ["abc", "xyz"]
    assert all(key.startswith("agentflow:cache:expensive_call:") for key in cache.data)


def test_cached_model_is_rebuilt_on_a_hit():
    seen = []

    @component
    def summarise(text: str) -> Summary:
        return Summary(title=text, words=len(text.split()))

    @workflow
    def flow_cached_model(text: str) -> int:
        summary = summarise.cache()(text)
        seen.append(summary)
        return summary.words

    cache = MemoryCache()
    run_in_memory(flow_cached_model, {"text": "a b c"}, cache=cache)
    run_in_memory(flow_cached_model, {"text": "a b c"}, cache=cache)
    assert seen == [Summary(title="a b c", words=3)] * 2
    assert all(isinstance(s, Summary) for s in seen)


def test_custom_cache_key():
    calls = []

    @component
    def classify(text: str, *, request_id: int) -> str:
        calls.append(request_id)
        return "greeting"

    keyed = classify.cache(key=lambda text, **_: text.lower())

    @workflow
    def flow_cache_key(text: str, request_id: int) -> str:
        return keyed(text, request_id=request_id)

    cache = MemoryCache()
    run_in_memory(flow_cache_key, {"text": "Hello", "request_id": 1}, cache=cache)
    run_in_memory(flow_cache_key, {"text": "HELLO", "request_id": 2}, cache=cache)
    run_in_memory(flow_cache_key, {"text": "bye", "request_id": 3}, cache=cache)
    assert calls == [1, 3]
    assert set(cache.data) == {"agentflow:cache:classify:hello", "agentflow:cache:classify:bye"}


def test_cache_key_must_be_a_string():
    @component
    def f(x: int) -> int:
        return x

    @workflow
    def flow_bad_key() -> int:
        return f.cache(key=lambda x: x)(1)

    with pytest.raises(TypeError, match="must return a str"):
        run_in_memory(flow_bad_key, cache=MemoryCache())


def test_failures_are_not_cached():
    calls = []

    @component
    def fails_once(x: int) -> int:
        calls.append(x)
        if len(calls) == 1:
            raise ValueError("first")
        return x

    @workflow
    def flow_failure_not_cached() -> int:
        try:
            return fails_once.cache()(1)
        except StepFailed:
            return -1

    cache = MemoryCache()
    assert run_in_memory(flow_failure_not_cached, cache=cache)[0] == -1
    assert run_in_memory(flow_failure_not_cached, cache=cache)[0] == 1
    assert calls == [1, 1]


def test_without_a_cache_backend_the_component_runs_every_time():
    calls = []

    @component
    def f(x: int) -> int:
        calls.append(x)
        return x

    @workflow
    def flow_no_backend() -> int:
        return f.cache()(1)

    run_in_memory(flow_no_backend)
    run_in_memory(flow_no_backend)
    assert calls == [1, 1]


# -- serialization -----------------------------------------------------------------------------------------


def test_unserializable_input_fails_before_the_step_starts(sink):
    @component
    def takes(value: object) -> None: ...

    @workflow
    def flow_bad_input() -> None:
        takes(object())

    with pytest.raises(SerializationError, match="input of takes#0"):
        run_in_memory(flow_bad_input, sink=sink)
    assert sink.events == []


def test_unserializable_result_fails_the_step_for_good_without_retrying():
    calls = []

    @component
    def gives() -> object:
        calls.append(1)
        return object()

    @workflow
    def flow_bad_result() -> None:
        gives.retry(max_attempts=3, initial_delay_seconds=0)()

    store, sink = MemoryStore(), MemorySink()
    with pytest.raises(StepFailed, match="gives#0") as info:
        run_in_memory(flow_bad_result, store=store, sink=sink)
    assert isinstance(info.value.cause, SerializationError)
    assert info.value.error_type == "SerializationError" and calls == [1]
    assert store.records["gives#0"].status == "failed"
    assert sink.types()[-1] == "step.failed"


def test_component_wrapping_a_partial_keeps_working():
    # A callable without __name__ (a partial) can be a component when it is given a name.
    made = component(name="scaled")(functools.partial(lambda x, factor: x * factor, factor=3))

    @workflow
    def flow_partial() -> int:
        return made(2)

    assert run_in_memory(flow_partial)[0] == 6
