"""Components: plain functions that become durable, retried, cached and timed steps inside a workflow.

Outside a running workflow a component is just its function. Inside one, every call is a step: it gets a
deterministic id, an error and retry boundary, a time-out, an optional cache and a checkpoint. Configuration
is fluent and immutable: each method returns a new component and leaves the original as it was.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import inspect
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, NoReturn, ParamSpec, TypeVar, get_type_hints, overload

from . import events as ev
from .context import COMPLETED, FAILED, MISSING, WAITING, Checkpoint, RunContext, StepRecord, _frame, _run
from .context import Frame as _Frame
from .errors import RunInterrupted, SerializationError, StepFailed, StepTimeout, WorkflowDivergence
from .retry import NO_RETRY, RetryPolicy, requested_delay_seconds
from .serialization import escaped, from_jsonable, storable_hash, to_jsonable
from .usage import COUNTS as _COUNTS
from .usage import event_summary
from .usage import merge as merge_usage

P = ParamSpec("P")
R = TypeVar("R")

logger = logging.getLogger("agentflow.steps")

_USAGE_SUMS = {*_COUNTS, "cost_usd", "unpriced_calls", "estimated_calls", "by_model"}
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]*$")


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise TypeError(
            f"component name must be a non-empty string of letters, digits and _.:- "
            f"(no '/' or '#': they separate step ids), not {name!r}"
        )
    return name


@dataclass(frozen=True, slots=True)
class CachePolicy:
    ttl_seconds: float | None
    key: Callable[..., str] | None


class Component(Generic[P, R]):
    """A function wrapped by :func:`component`. Call it like the function."""

    def __init__(
        self,
        fn: Callable[P, R],
        *,
        name: str,
        retry_policy: RetryPolicy = NO_RETRY,
        cache_policy: CachePolicy | None = None,
        timeout_seconds: float | None = None,
    ) -> None:
        self.fn = fn
        self.name = _check_name(name)
        self.retry_policy = retry_policy
        self.cache_policy = cache_policy
        self.timeout_seconds = timeout_seconds
        self.is_async = inspect.iscoroutinefunction(fn)
        functools.update_wrapper(self, fn)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"<Component {self.name}>"

    # -- fluent configuration ----------------------------------------------------------------------------

    def _copy(self, **changes: Any) -> Component[P, R]:
        options: dict[str, Any] = {
            "name": self.name,
            "retry_policy": self.retry_policy,
            "cache_policy": self.cache_policy,
            "timeout_seconds": self.timeout_seconds,
            **changes,
        }
        return Component(self.fn, **options)

    def retry(
        self,
        *,
        max_attempts: int | None = None,
        backoff: float | None = None,
        initial_delay_seconds: float | None = None,
        max_delay_seconds: float | None = None,
        jitter: bool | None = None,
        retry_on: type[BaseException] | tuple[type[BaseException], ...] | None = None,
        give_up_on: type[BaseException] | tuple[type[BaseException], ...] | None = None,
    ) -> Component[P, R]:
        """A copy with this retry policy (options not given keep their current value).

        ``max_attempts`` defaults to 3 when a component without retries is given one without it.
        """
        changes = {
            key: value
            for key, value in {
                "max_attempts": max_attempts,
                "backoff": backoff,
                "initial_delay_seconds": initial_delay_seconds,
                "max_delay_seconds": max_delay_seconds,
                "jitter": jitter,
                "retry_on": retry_on,
                "give_up_on": give_up_on,
            }.items()
            if value is not None
        }
        if max_attempts is None and self.retry_policy.max_attempts == 1:
            changes["max_attempts"] = 3
        return self._copy(retry_policy=self.retry_policy.updated(**changes))

    def cache(
        self, *, ttl_seconds: float | None = None, key: Callable[..., str] | None = None
    ) -> Component[P, R]:
        """A copy whose results are cached, keyed on the component's name and its arguments.

        ``key(*args, **kwargs)`` may build the key instead; ``ttl_seconds=None`` keeps entries as long as the
        cache backend's default time-out.
        """
        if ttl_seconds is not None and (
            not isinstance(ttl_seconds, int | float) or isinstance(ttl_seconds, bool) or ttl_seconds <= 0
        ):
            raise TypeError(f"ttl_seconds must be a positive number or None, not {ttl_seconds!r}")
        if key is not None and not callable(key):
            raise TypeError(f"key must be a callable returning a string, not {key!r}")
        return self._copy(cache_policy=CachePolicy(ttl_seconds=ttl_seconds, key=key))

    def timeout(self, seconds: float | None) -> Component[P, R]:
        """A copy whose every attempt fails with ``StepTimeout`` after ``seconds`` (``None``: no limit)."""
        if seconds is not None and (
            not isinstance(seconds, int | float) or isinstance(seconds, bool) or seconds <= 0
        ):
            raise TypeError(f"timeout seconds must be a positive number or None, not {seconds!r}")
        return self._copy(timeout_seconds=seconds)

    def named(self, name: str) -> Component[P, R]:
        """A copy under another name: its steps get other ids and another cache namespace."""
        return self._copy(name=name)

    # -- calling -----------------------------------------------------------------------------------------

    @functools.cached_property
    def _return_annotation(self) -> Any:
        try:
            hint = get_type_hints(self.fn).get("return", Any)
        except Exception:  # unresolvable forward references: replay hands back plain JSON
            return Any
        return hint

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        ctx = _run.get()
        if ctx is None:
            return self.fn(*args, **kwargs)
        call = StepCall(ctx, self, args, kwargs)
        if self.is_async:
            return call.run_async()  # type: ignore[return-value]
        return call.run_sync()

    def prepare(self, ctx: RunContext, *args: Any, **kwargs: Any) -> StepCall:
        """Assign a step id now and return the call, to run later (``agentflow.map`` uses this)."""
        return StepCall(ctx, self, args, kwargs)


class StepCall:
    """One call of a component inside a run: the step's whole life, from replay check to checkpoint."""

    __slots__ = (
        "args",
        "component",
        "ctx",
        "free_attempts",
        "input",
        "input_hash",
        "kwargs",
        "parent_id",
        "resumed_attempts",
        "started_at",
        "step_id",
        "usage",
        "wake_at",
    )

    def __init__(
        self, ctx: RunContext, component: Component[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ):
        parent = _frame.get() or ctx.root
        if parent.abandoned:
            raise StepTimeout(f"step {parent.step_id!r} was abandoned after its time-out")
        self.ctx = ctx
        self.component = component
        self.args = args
        self.kwargs = kwargs
        self.parent_id = parent.step_id
        self.step_id = parent.next_child_id(component.name)
        self.input: Any = None
        self.input_hash = ""
        self.started_at = 0.0
        # Set when an earlier incarnation suspended this step between two attempts.
        self.resumed_attempts = 0
        self.wake_at = 0.0
        # Attempts that waited for capacity (Retry.consumes_attempt false): max_attempts does not count them.
        self.free_attempts = 0
        self.usage: dict[str, Any] | None = None

    # The shared lifecycle; run_sync and run_async differ only in how they wait and call.

    def _begin(self) -> Any:
        """The step's result if it was recorded already (a replay), else ``MISSING``.

        Then the budget is checked (waiting for the run's provider calls in flight: ``check_budget``, or
        ``acheck_budget`` on an event loop) and :meth:`_begin_execution` looks in the cache.
        """
        ctx = self.ctx
        ctx.check_interrupt()
        what = f"input of {self.step_id}"
        self.input = to_jsonable({"args": list(self.args), "kwargs": self.kwargs}, what=what)
        self.input_hash = storable_hash(self.input, what=what)  # SerializationError before any attempt
        checkpoint = ctx.checkpoints.get(self.step_id)
        if checkpoint is not None:
            if checkpoint.input_hash is not None and checkpoint.input_hash != self.input_hash:
                raise WorkflowDivergence(
                    f"step {self.step_id!r} is replayed with other arguments than it was recorded with: the "
                    "workflow code between steps must be deterministic",
                    details={"step": self.step_id},
                )
            if checkpoint.status != WAITING:
                ctx.steps_replayed += 1
                return self._replay(checkpoint)
            self.resumed_attempts = checkpoint.attempts
            self.wake_at = float((checkpoint.output or {}).get("wake_at") or 0.0)
            self.free_attempts = int((checkpoint.output or {}).get("free_attempts") or 0)
            self.usage = checkpoint.usage
        ctx.check_slice()
        return MISSING

    def _begin_execution(self) -> Any:
        """The step's result if the cache has it, else ``MISSING`` (the step runs)."""
        ctx = self.ctx
        self.started_at = time.time()
        policy = self.component.cache_policy
        if policy is not None and ctx.cache is not None:
            try:
                cached = ctx.cache.get(self._cache_key(policy), MISSING)
            except Exception:  # the cache is an optimisation: an outage runs the step instead
                logger.warning("step %s: cache read failed; running the step", self.step_id, exc_info=True)
                cached = MISSING
            if cached is not MISSING:
                self._checkpoint(COMPLETED, output=cached, attempts=0, cached=True)
                ctx.emit(ev.STEP_COMPLETED, self._step_data(cached=True), step=self.step_id, attempt=0)
                return from_jsonable(cached, self.component._return_annotation)
        return MISSING

    def _replay(self, checkpoint: Checkpoint) -> Any:
        if checkpoint.status == COMPLETED:
            return from_jsonable(checkpoint.output, self.component._return_annotation)
        error = checkpoint.error or {}
        raise StepFailed(
            self.step_id,
            attempts=checkpoint.attempts,
            error_type=error.get("type", "Error"),
            error_message=error.get("message", ""),
        )

    def _cache_key(self, policy: CachePolicy) -> str:
        if policy.key is not None:
            key = policy.key(*self.args, **self.kwargs)
            if not isinstance(key, str):
                raise TypeError(
                    f"cache key function of {self.component.name!r} must return a str, not {key!r}"
                )
        else:
            key = self.input_hash
        return f"{self.ctx.cache_prefix}{self.component.name}:{key}"

    def _step_data(self, **extra: Any) -> dict[str, Any]:
        return {"component": self.component.name, "parent": self.parent_id, **extra}

    def _end_data(self, usage: dict[str, Any] | None, **extra: Any) -> dict[str, Any]:
        """The data of the step's end event: what ``_step_data`` has, plus its usage when it made calls."""
        summary = event_summary(usage)
        return self._step_data(**extra, **({"usage": summary} if summary else {}))

    def _collect_usage(self) -> None:
        """Keep what the attempt ending now spent (a failed attempt's tokens were billed too)."""
        frame = _frame.get()
        if frame is not None and frame.usage:
            sums = {k: v for k, v in (self.usage or {}).items() if k in _USAGE_SUMS}
            # The LLM layer's notes (provider, fallbacks) are the latest attempt's, not a mix of attempts.
            notes = {k: v for k, v in frame.usage.items() if k not in _USAGE_SUMS}
            self.usage = merge_usage(sums, frame.usage) | notes

    def _start_attempt(self, attempt: int) -> contextvars.Token[_Frame | None]:
        self.ctx.check_interrupt()
        self.ctx.attempt_started()
        self.ctx.emit(ev.STEP_STARTED, self._step_data(), step=self.step_id, attempt=attempt)
        return _frame.set(_Frame(step_id=self.step_id, attempt=attempt))

    def _end_attempt(self, token: contextvars.Token[_Frame | None]) -> None:
        self._collect_usage()
        _frame.reset(token)
        self.ctx.attempt_ended()

    def _end_failed_attempt(
        self, exc: BaseException, attempt: int, token: contextvars.Token[_Frame | None]
    ) -> float:
        """End a failed attempt: re-raise control flow (cancellation, a lost lease, suspension...), else the
        seconds to wait before the next attempt (``StepFailed`` when there is none)."""
        self.ctx.attempt_ended()
        self._collect_usage()
        if not isinstance(exc, Exception) or isinstance(exc, RunInterrupted):
            raise exc
        _frame.reset(token)
        self.resumed_attempts = 0
        return self._failed_attempt(exc, attempt)

    def _failed_attempt(self, exc: Exception, attempt: int) -> float:
        """Seconds to wait before the next attempt; raise ``StepFailed`` when there is none."""
        # Only wait_for's bare TimeoutError is ours; without a time-out it is the component's own error.
        timeout = self.component.timeout_seconds
        if isinstance(exc, TimeoutError) and not isinstance(exc, StepTimeout) and timeout is not None:
            exc = StepTimeout(f"attempt {attempt} of {self.step_id!r} exceeded {timeout}s")
        policy = self.component.retry_policy
        error = self._error(exc)
        free = getattr(exc, "consumes_attempt", True) is False
        if free:
            self.free_attempts += 1
        counted = attempt - self.free_attempts
        if policy.should_retry(exc, counted) or (free and not isinstance(exc, RunInterrupted)):
            delay = (requested_delay_seconds(exc) or 0.0) if free else policy.delay_seconds(exc, counted)
            self.ctx.discard_failed_below(self.step_id)
            data = {"error": error, "delay_seconds": round(delay, 3), "next_attempt": attempt + 1}
            extra = getattr(exc, "event_data", None)
            if isinstance(extra, dict):
                data.update(escaped(extra, what=f"the retry of step {self.step_id!r}"))
            self.ctx.emit(ev.STEP_RETRYING, data, step=self.step_id, attempt=attempt)
            return delay
        self._fail(exc, attempt)

    def _suspend_or_wait(self, seconds: float, attempt: int) -> float:
        """Suspend the run when the wait before the next attempt is long; else return the seconds to wait.

        The suspended step is checkpointed as ``waiting`` with its attempt count and wake-up time, so the
        next incarnation goes on with the next attempt instead of starting over.
        """
        if not self.ctx.suspends(seconds):
            return max(0.0, seconds)
        self._suspend_for(seconds, attempt)

    def _suspend_for(self, seconds: float, attempt: int) -> NoReturn:
        if self.resumed_attempts == attempt:
            self.ctx.suspend(self.wake_at, "retry")  # woken early: its checkpoint holds the wake-up time
        wake_at = time.time() + seconds
        output = {"wake_at": wake_at, "free_attempts": self.free_attempts}
        self.ctx.store.save_step(self._record(WAITING, output=output, attempts=attempt))
        self.ctx.suspend(wake_at, "retry")

    def _suspend_due(self, deadline: float) -> bool:
        """While waiting for the next attempt: whether to suspend now after all. A long wait cannot suspend
        while other attempts of the run are in flight (a fan-out); once none is, it can. And once a sibling
        suspended the run, waiting on in this incarnation is pointless."""
        ctx = self.ctx
        return ctx.suspends(deadline - time.monotonic()) or (
            ctx.suspension is not None and not ctx.attempts_running
        )

    def _wait(self, seconds: float, attempt: int) -> None:
        """Wait before the next attempt: suspend the run if the wait is long (now, or once the run's other
        attempts are over), else sleep, waking every half second for a cancellation or a lost lease."""
        deadline = time.monotonic() + self._suspend_or_wait(seconds, attempt)
        while (remaining := deadline - time.monotonic()) > 0:
            time.sleep(min(remaining, 0.5))
            self.ctx.check_interrupt()
            if self._suspend_due(deadline):
                self._suspend_for(deadline - time.monotonic(), attempt)

    async def _await(self, seconds: float, attempt: int) -> None:
        deadline = time.monotonic() + self._suspend_or_wait(seconds, attempt)
        while (remaining := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(remaining, 0.5))
            self.ctx.check_interrupt()
            if self._suspend_due(deadline):
                self._suspend_for(deadline - time.monotonic(), attempt)

    def _error(self, exc: BaseException) -> dict[str, Any]:
        """An attempt's error as it is recorded: a message holding what the database cannot store (an
        exception quoting a reply with U+0000, say) is stored escaped, and raised so on replay as live."""
        error = {"type": type(exc).__name__, "message": str(exc)}
        return escaped(error, what=f"the error of step {self.step_id!r}")  # type: ignore[no-any-return]

    def _fail(self, exc: Exception, attempt: int) -> NoReturn:
        """Record the step as failed for good and raise the ``StepFailed`` the workflow sees."""
        error = self._error(exc)
        self._checkpoint(FAILED, error=error, attempts=attempt)
        self.ctx.emit(
            ev.STEP_FAILED, self._end_data(self.usage, error=error), step=self.step_id, attempt=attempt
        )
        raise StepFailed(
            self.step_id,
            attempts=attempt,
            error_type=error["type"],
            error_message=error["message"],
            cause=exc,
        ) from exc

    def _success_record(self, result: Any, attempt: int) -> StepRecord:
        """The completed checkpoint for ``result``; an unserialisable result fails the step for good."""
        try:
            output = to_jsonable(result, what=f"the result of step {self.step_id!r}")
        except SerializationError as exc:
            self._fail(exc, attempt)  # a programming error, not a passing fault: no retry
        return self._record(COMPLETED, output=output, attempts=attempt)

    def _completed(self, record: StepRecord) -> None:
        """After the checkpoint is stored (never before: the DB is the source of truth)."""
        self._register(record)
        policy = self.component.cache_policy
        if policy is not None and self.ctx.cache is not None:
            key = self._cache_key(policy)
            try:
                if policy.ttl_seconds is None:
                    self.ctx.cache.set(key, record.output)  # the backend's default time-out
                else:
                    self.ctx.cache.set(key, record.output, policy.ttl_seconds)
            except Exception:
                logger.warning("step %s: cache write failed", self.step_id, exc_info=True)
        self.ctx.emit(
            ev.STEP_COMPLETED, self._end_data(record.usage), step=self.step_id, attempt=record.attempts
        )

    def _record(
        self,
        status: str,
        *,
        output: Any = None,
        error: dict[str, Any] | None = None,
        attempts: int,
        cached: bool = False,
    ) -> StepRecord:
        return StepRecord(
            step_id=self.step_id,
            parent_id=self.parent_id,
            component=self.component.name,
            status=status,
            input=self.input,
            input_hash=self.input_hash,
            output=output,
            error=error,
            attempts=attempts,
            started_at=self.started_at,
            finished_at=time.time(),
            cached=cached,
            usage=self.usage,
        )

    def _register(self, record: StepRecord) -> None:
        self.ctx.checkpoints[self.step_id] = Checkpoint(
            record.status, record.output, record.error, record.attempts, self.input_hash, record.usage
        )
        self.ctx.steps_executed += 1

    def _checkpoint(
        self,
        status: str,
        *,
        output: Any = None,
        error: dict[str, Any] | None = None,
        attempts: int,
        cached: bool = False,
    ) -> None:
        record = self._record(status, output=output, error=error, attempts=attempts, cached=cached)
        self.ctx.store.save_step(record)
        self._register(record)

    def run_sync(self) -> Any:
        result = self._begin()
        if result is not MISSING:
            return result
        self.ctx.check_budget()
        result = self._begin_execution()
        if result is not MISSING:
            return result
        fn, timeout = self.component.fn, self.component.timeout_seconds
        attempt = self.resumed_attempts
        if attempt:
            self._wait(self.wake_at - time.time(), attempt)
        while True:
            attempt += 1
            token = self._start_attempt(attempt)
            try:
                result = (
                    fn(*self.args, **self.kwargs) if timeout is None else self._call_with_timeout(timeout)
                )
            except BaseException as exc:
                self._wait(self._end_failed_attempt(exc, attempt, token), attempt)
                continue
            self._end_attempt(token)
            record = self._success_record(result, attempt)
            try:
                self.ctx.store.save_step(record)
            except SerializationError as exc:
                # The result holds what the database cannot store (U+0000, a lone surrogate, an infinity;
                # the error names where): failed for good, like a result that is not JSON at all.
                self._fail(exc, attempt)
            self._completed(record)
            return result

    def _call_with_timeout(self, timeout: float) -> Any:
        # A thread cannot be stopped: on time-out the attempt is abandoned and left to finish in the background.
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="agentflow-step")
        context = contextvars.copy_context()
        future = pool.submit(context.run, self.component.fn, *self.args, **self.kwargs)
        pool.shutdown(wait=False)
        try:
            return future.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            # The thread shares this attempt's frame: mark it, so what the abandoned code still emits is
            # dropped and the steps it still calls fail instead of writing checkpoints.
            frame = _frame.get()
            if frame is not None:
                frame.abandoned = True
            raise StepTimeout(f"attempt of {self.step_id!r} exceeded {timeout}s") from None

    async def run_async(self) -> Any:
        result = self._begin()
        if result is not MISSING:
            return result
        await self.ctx.acheck_budget()
        result = self._begin_execution()
        if result is not MISSING:
            return result
        fn, timeout = self.component.fn, self.component.timeout_seconds
        attempt = self.resumed_attempts
        if attempt:
            await self._await(self.wake_at - time.time(), attempt)
        while True:
            attempt += 1
            token = self._start_attempt(attempt)
            try:
                awaitable: Awaitable[Any] = fn(*self.args, **self.kwargs)
                result = await (awaitable if timeout is None else asyncio.wait_for(awaitable, timeout))
            except BaseException as exc:
                await self._await(self._end_failed_attempt(exc, attempt, token), attempt)
                continue
            self._end_attempt(token)
            record = self._success_record(result, attempt)
            # Off the event loop where the store can, so concurrent steps keep running meanwhile.
            asave = getattr(self.ctx.store, "asave_step", None)
            try:
                if asave is not None:
                    await asave(record)
                else:
                    self.ctx.store.save_step(record)
            except SerializationError as exc:
                self._fail(exc, attempt)  # as in run_sync
            self._completed(record)
            return result


@overload
def component(fn: Callable[P, R], /) -> Component[P, R]: ...


@overload
def component(
    *, name: str | None = None, retry: RetryPolicy | None = None, timeout_seconds: float | None = None
) -> Callable[[Callable[P, R]], Component[P, R]]: ...


def component(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    retry: RetryPolicy | None = None,
    timeout_seconds: float | None = None,
) -> Any:
    """Make ``fn`` a component: ``@component`` or ``@component(name=..., retry=RetryPolicy(...))``."""

    def wrap(func: Callable[..., Any]) -> Component[Any, Any]:
        if isinstance(func, Component):
            raise TypeError(f"{func!r} is already a component")
        if not callable(func):
            raise TypeError(f"@component needs a function, not {func!r}")
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise TypeError(
                f"retry must be a RetryPolicy, not {retry!r}; or use .retry(...) on the component"
            )
        made: Component[Any, Any] = Component(
            func, name=name or func.__name__, retry_policy=retry or NO_RETRY, cache_policy=None
        )
        return made.timeout(timeout_seconds) if timeout_seconds is not None else made

    if fn is not None:
        return wrap(fn)
    return wrap
