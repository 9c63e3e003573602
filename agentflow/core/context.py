"""The state of one incarnation of a run: checkpoints, step ids, events, and the current step.

A run executes its workflow function from the top in every incarnation (first start, recovery, resume).
Each component call is matched to its checkpoint by a deterministic step id: the parent step's id, the
component's name and the call's index among the parent's calls of that component (``outline#0/research#2``).
Ids are assigned when the call is made, before it runs, so concurrent calls (``asyncio.gather``,
``agentflow.map``) get the same ids in every incarnation.
"""

from __future__ import annotations

import asyncio
import copy
import threading
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

from . import events as ev
from .errors import BudgetExceeded, LeaseLost, RunSuspended, SliceEnded
from .money import format_usd

if TYPE_CHECKING:
    from .usage import Budget, Pricer
    from .waits import WaitService

COMPLETED = "completed"
FAILED = "failed"
# Not finished: a step (or agentflow.sleep) suspended the run until ``Checkpoint.output["wake_at"]``.
# ``attempts`` counts the attempts already made, so the next incarnation goes on with the next one.
WAITING = "waiting"


@dataclass(slots=True)
class Checkpoint:
    """What the store remembers of a finished step."""

    status: str  # COMPLETED, FAILED or WAITING
    output: Any = None
    error: dict[str, Any] | None = None
    attempts: int = 1
    input_hash: str | None = None
    usage: dict[str, Any] | None = None


@dataclass(slots=True)
class StepRecord:
    """One step's checkpoint, as written to the store."""

    step_id: str
    parent_id: str | None
    component: str
    status: str
    input: Any
    input_hash: str
    output: Any
    error: dict[str, Any] | None
    attempts: int
    started_at: float  # epoch seconds
    finished_at: float
    cached: bool = False
    # Tokens and cost the step's own provider calls spent (agentflow.core.usage), with the LLM layer's notes.
    usage: dict[str, Any] | None = None

    def encoded(self) -> tuple[str, str, str | None, str | None]:
        """The JSON texts a store writes: input, output, error, usage. ``SerializationError`` naming the field
        and the JSON path when one holds what the database cannot (U+0000, a lone surrogate, an infinity)."""
        from .serialization import encode

        def text(field: str, value: Any) -> str:
            return encode(value, what=f"the {field} of step {self.step_id!r}")

        return (
            text("input", self.input),
            text("result", self.output),
            None if self.error is None else text("error", self.error),
            None if self.usage is None else text("usage", self.usage),
        )


class RunStore(Protocol):
    def save_step(self, record: StepRecord) -> None:
        """Persist a checkpoint; raise ``LeaseLost`` when this incarnation's epoch is stale."""


class Cache(Protocol):
    def get(self, key: str, default: Any = None) -> Any: ...

    def set(self, key: str, value: Any, timeout: float | None = None) -> None: ...


class _Missing:
    __slots__ = ()


MISSING: Any = _Missing()


@dataclass(slots=True)
class Frame:
    """The step (or the workflow body, ``step_id=None``) whose code is running."""

    step_id: str | None
    attempt: int | None
    counters: dict[str, int] = field(default_factory=dict)
    # Set when a sync attempt's time-out abandoned the thread still running this frame's code.
    abandoned: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)
    # What this attempt's provider calls spent (record_usage), and notes about them (provider, fallbacks).
    usage: dict[str, Any] | None = None

    def next_child_id(self, name: str) -> str:
        # A lock, because sync components fanned out by agentflow.map run in threads.
        with self.lock:
            index = self.counters.get(name, 0)
            self.counters[name] = index + 1
        return f"{name}#{index}" if self.step_id is None else f"{self.step_id}/{name}#{index}"


@dataclass(frozen=True, slots=True)
class StepInfo:
    """Where the calling code runs: ``agentflow.current_step()``. ``step_id`` is None in the workflow body.

    ``f"{run_id}:{step_id}"`` is a good idempotency key for a provider call: stable across retries and
    recoveries of the same step.
    """

    run_id: str
    step_id: str | None
    attempt: int | None
    epoch: int


_run: ContextVar[RunContext | None] = ContextVar("agentflow_run", default=None)
_frame: ContextVar[Frame | None] = ContextVar("agentflow_frame", default=None)


def current_run() -> RunContext | None:
    return _run.get()


def current_frame() -> Frame | None:
    return _frame.get()


def _nothing() -> None:
    return None


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class RunContext:
    """Everything one incarnation of a run needs; the runner builds it and the engine uses it.

    ``workflow_content_seen`` is how many workflow-level content events (``status``, ``data`` and
    ``output.delta`` emitted by the workflow body itself) earlier incarnations appended: replaying the
    deterministic workflow body re-emits them in the same order, so the first that many are suppressed.
    """

    def __init__(
        self,
        *,
        run_id: str,
        epoch: int,
        store: RunStore,
        sink: ev.EventSink,
        checkpoints: dict[str, Checkpoint] | None = None,
        cache: Cache | None = None,
        cache_prefix: str = "agentflow:cache:",
        workflow_content_seen: int = 0,
        interrupt: Callable[[], None] | None = None,
        slice_deadline: float | None = None,
        draining: Callable[[], bool] | None = None,
        suspend_threshold_seconds: float | None = None,
        budget: Budget | None = None,
        pricer: Pricer | None = None,
        waits: WaitService | None = None,
    ) -> None:
        self.run_id = run_id
        self.epoch = epoch
        self.store = store
        self.sink = sink
        self.checkpoints: dict[str, Checkpoint] = checkpoints or {}
        self.cache = cache
        self.cache_prefix = cache_prefix
        self.workflow_content_seen = workflow_content_seen
        self.workflow_content_emitted = 0
        self._interrupt = interrupt
        # time.monotonic() after which the incarnation hands the run back at its next step boundary.
        self.slice_deadline = slice_deadline
        self._draining = draining
        # Waits longer than this suspend the run instead of blocking the worker (None: never suspend).
        self.suspend_threshold_seconds = suspend_threshold_seconds
        # Attempts running now. The run is handed back only when none is: a parent step or a sibling of a
        # concurrent fan-out cut short would emit its content again in the next incarnation, unvoided.
        self.attempts_running = 0
        # Set once a step or agentflow.sleep() suspends the run: concurrent code starting another step then
        # stops too, instead of starting an attempt that the hand-off would cut short.
        self.suspension: RunSuspended | None = None
        self.root = Frame(step_id=None, attempt=None)
        self.steps_executed = 0
        self.steps_replayed = 0
        self._emit_lock = threading.Lock()
        self.budget = budget
        self.pricer = pricer
        # What input waits and child workflows need beyond checkpoints (agentflow.core.waits); None: in memory.
        self.waits = waits
        # Tokens and cost so far, replayed steps included (they were spent by this run, earlier).
        self.usage: dict[str, Any] = {}
        # Estimates of provider calls in flight, held against the budget (reserve_budget), how many calls
        # hold them, and who waits for one of them to end.
        self._reserved_tokens = 0
        self._reserved_usd = 0.0
        self._budget_holders = 0
        self._budget_waiters: list[Any] = []
        from .usage import merge

        for checkpoint in self.checkpoints.values():
            merge(self.usage, checkpoint.usage)
        # Per-run resources of the LLM layer (its concurrency limit, HTTP clients), created on first use;
        # ``closers`` are awaited when an async workflow's event loop is about to end.
        self.resources: dict[str, Any] = {}
        self.closers: list[Callable[[], Awaitable[None]]] = []

    # -- events ------------------------------------------------------------------------------------------

    def emit(
        self, type: str, data: dict[str, Any] | None = None, *, step: str | None, attempt: int | None
    ) -> None:
        self.sink.emit(
            ev.envelope(type, self.run_id, step=step, attempt=attempt, epoch=self.epoch, data=data)
        )

    def emit_content(self, type: str, data: dict[str, Any]) -> None:
        """Emit a content event from user code, attributed to the step whose code is running."""
        frame = _frame.get() or self.root
        if frame.abandoned:
            return  # an attempt abandoned after its time-out: its output is void already
        if frame.step_id is None:
            with self._emit_lock:
                self.workflow_content_emitted += 1
                if self.workflow_content_emitted <= self.workflow_content_seen:
                    return  # replay: an earlier incarnation appended this very event already
                self.emit(type, data, step=None, attempt=None)
        else:
            self.emit(type, data, step=frame.step_id, attempt=frame.attempt)

    # -- control -----------------------------------------------------------------------------------------

    def check_interrupt(self) -> None:
        """Raise ``RunInterrupted`` if the run was cancelled or this worker lost it. Called at boundaries."""
        if self.sink.fenced:
            raise LeaseLost(f"run {self.run_id} moved to a newer epoch than {self.epoch}")
        if self._interrupt is not None:
            self._interrupt()

    def attempt_started(self) -> None:
        with self._emit_lock:
            self.attempts_running += 1

    def attempt_ended(self) -> None:
        with self._emit_lock:
            self.attempts_running -= 1

    def add_usage(self, frame: Frame, usage: dict[str, Any]) -> None:
        """Count ``usage`` on the attempt running in ``frame`` and in the run's totals."""
        from .usage import merge

        with self._emit_lock:
            frame.usage = merge(frame.usage if frame.usage is not None else {}, usage)
            merge(self.usage, usage)

    def add_run_usage(self, usage: dict[str, Any] | None) -> None:
        """Count ``usage`` (a finished child run's totals) in the run's totals."""
        from .usage import merge

        with self._emit_lock:
            merge(self.usage, usage)

    def remaining_budget(self) -> Budget | None:
        """What the run may still spend (None: no limit), for a child run it starts."""
        if self.budget is None:
            return None
        from .usage import Budget

        with self._emit_lock:
            spent_usd = float(self.usage.get("cost_usd") or 0.0) + self._reserved_usd
            spent_tokens = int(self.usage.get("total_tokens") or 0) + self._reserved_tokens
        usd = None if self.budget.usd is None else max(self.budget.usd - spent_usd, 1e-9)
        tokens = None if self.budget.tokens is None else max(self.budget.tokens - spent_tokens, 1)
        return Budget(usd=usd, tokens=tokens)

    def usage_snapshot(self) -> dict[str, Any]:
        """A copy of the run's totals, safe to read while steps in other threads record usage."""
        with self._emit_lock:
            return copy.deepcopy(self.usage)

    # -- budget ----------------------------------------------------------------------------------------
    #
    # A provider call holds its estimate against the budget while in flight (a reservation). A call whose
    # estimate no longer fits, or a step starting once the budget is spent, does not stop the run at once:
    # the calls holding reservations were (or are being) sent, and ending the run would cut them off unpaid
    # for in the run's usage (in an ``asyncio.gather`` the first BudgetExceeded ends the workflow, and with
    # it every sibling). So it waits for them to finish, then looks again: once none is in flight, a budget
    # still spent stops the run, with the usage of every call that was sent.

    def check_budget(self) -> None:
        """Before a step: raise ``BudgetExceeded`` once the run's usage reached its budget (after the provider
        calls in flight finished, so their usage counts)."""
        if self.budget is not None:
            self._wait_for_budget(0, 0.0, reserve=False)

    async def acheck_budget(self) -> None:
        """:meth:`check_budget` for async code: waits without blocking the event loop."""
        if self.budget is not None:
            await self._await_budget(0, 0.0, reserve=False)

    def reserve_budget(self, tokens: int, usd: float) -> Callable[[], None]:
        """Hold a provider call's estimated tokens and cost against the budget while it is in flight.

        While the usage plus what calls in flight hold reached the budget, waits for those calls to finish;
        raises ``BudgetExceeded`` once none is in flight and the budget is still reached. Returns the release
        (call it once the call is over and its actual usage recorded).
        """
        if self.budget is None:
            return _nothing
        return self._wait_for_budget(tokens, usd, reserve=True)

    async def areserve_budget(self, tokens: int, usd: float) -> Callable[[], None]:
        """:meth:`reserve_budget` for async code."""
        if self.budget is None:
            return _nothing
        return await self._await_budget(tokens, usd, reserve=True)

    def _wait_for_budget(self, tokens: int, usd: float, *, reserve: bool) -> Callable[[], None]:
        try:
            asyncio.get_running_loop()
            # Sync code on an event loop's thread (a sync client in an async workflow): waiting would block
            # the very calls it waits for. It is refused at once instead.
            waiter: Any = None
        except RuntimeError:
            waiter = threading.Event()
        while True:
            with self._emit_lock:
                release = self._budget_gate(tokens, usd, reserve, waiter)
            if release is not waiter:
                return release  # type: ignore[no-any-return]
            while not waiter.wait(0.5):
                self.check_interrupt()
            waiter = threading.Event()

    async def _await_budget(self, tokens: int, usd: float, *, reserve: bool) -> Callable[[], None]:
        loop = asyncio.get_running_loop()
        while True:
            future: asyncio.Future[None] = loop.create_future()
            with self._emit_lock:
                release = self._budget_gate(tokens, usd, reserve, (loop, future))
            if not isinstance(release, tuple):
                return release  # type: ignore[no-any-return]
            while True:
                try:
                    await asyncio.wait_for(asyncio.shield(future), 0.5)
                    break
                except TimeoutError:
                    self.check_interrupt()

    def _budget_gate(self, tokens: int, usd: float, reserve: bool, waiter: Any) -> Any:
        """Under the lock: the release of a granted reservation (``_nothing`` for a check that passed), or
        ``waiter`` registered to be woken when a call in flight ends; raise when the run must stop."""
        budget = self.budget
        assert budget is not None
        spent = {
            "cost_usd": float(self.usage.get("cost_usd") or 0.0),
            "total_tokens": int(self.usage.get("total_tokens") or 0),
        }
        held = spent
        if reserve:
            held = {
                "cost_usd": spent["cost_usd"] + self._reserved_usd,
                "total_tokens": spent["total_tokens"] + self._reserved_tokens,
            }
        limit = budget.exceeded(held)
        if limit is None:
            if not reserve:
                return _nothing
            self._reserved_tokens += tokens
            self._reserved_usd += usd
            self._budget_holders += 1
            return self._releaser(tokens, usd)
        if self._budget_holders and waiter is not None:
            self._budget_waiters.append(waiter)
            return waiter
        raise self._budget_exceeded(limit)

    def _releaser(self, tokens: int, usd: float) -> Callable[[], None]:
        released = False

        def release() -> None:
            nonlocal released
            with self._emit_lock:
                if released:
                    return
                released = True
                self._reserved_tokens -= tokens
                self._reserved_usd -= usd
                self._budget_holders -= 1
                waiters, self._budget_waiters = self._budget_waiters, []
            for waiter in waiters:  # each looks again: the call's actual usage may leave room
                if isinstance(waiter, threading.Event):
                    waiter.set()
                else:
                    loop, future = waiter
                    if not loop.is_closed():
                        loop.call_soon_threadsafe(_resolve, future)

        return release

    def _budget_exceeded(self, limit: str) -> BudgetExceeded:
        budget = self.budget
        assert budget is not None
        usage: dict[str, Any] = {
            "calls": int(self.usage.get("calls") or 0),
            "total_tokens": int(self.usage.get("total_tokens") or 0),
            "cost_usd": float(self.usage.get("cost_usd") or 0.0),
        }
        if limit == "usd":
            spent, held_now = format_usd(usage["cost_usd"]), format_usd(self._reserved_usd)
        else:
            spent, held_now = f"{usage['total_tokens']} tokens", f"{self._reserved_tokens} tokens"
        if self._reserved_tokens or self._reserved_usd:
            # Only from sync code blocking an event loop, which cannot wait for the calls it holds up.
            usage["in_flight"] = {"tokens": self._reserved_tokens, "cost_usd": round(self._reserved_usd, 10)}
            spent += f" with {held_now} more held by calls in flight"
        return BudgetExceeded(
            f"run {self.run_id} spent {spent}, reaching its budget of "
            + (format_usd(budget.usd or 0.0) if limit == "usd" else f"{budget.tokens} tokens"),
            limit=limit,
            budget=budget.as_dict(),
            usage=usage,
        )

    async def aclose_resources(self) -> None:
        closers, self.closers = self.closers, []
        for close in closers:
            await close()

    def check_slice(self) -> None:
        """Raise ``SliceEnded`` when the slice is over or the worker drains. Called before a new step runs,
        so everything done so far is checkpointed when the run is handed back."""
        if self.suspension is not None:
            self.suspend(self.suspension.wake_at, self.suspension.reason)
        if self.attempts_running:
            return
        if self._draining is not None and self._draining():
            raise SliceEnded(reason="drain")
        # At least one step per incarnation, or a slice shorter than the replay would never make progress.
        if (
            self.slice_deadline is not None
            and self.steps_executed
            and time.monotonic() >= self.slice_deadline
        ):
            raise SliceEnded(reason="slice")

    def suspend(self, wake_at: float | None, reason: str) -> NoReturn:
        """End this incarnation: the run continues at ``wake_at`` (epoch seconds) in a new task."""
        self.suspension = RunSuspended(f"run suspended ({reason})", wake_at=wake_at, reason=reason)
        raise RunSuspended(f"run suspended ({reason})", wake_at=wake_at, reason=reason)

    def suspends(self, seconds: float) -> bool:
        """Whether a wait of ``seconds`` ends the incarnation instead of blocking the worker."""
        threshold = self.suspend_threshold_seconds
        return threshold is not None and seconds > threshold and not self.attempts_running

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds``, waking every half second to honour a cancellation or a lost lease."""
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            time.sleep(min(remaining, 0.5))
            self.check_interrupt()

    async def asleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(remaining, 0.5))
            self.check_interrupt()

    def discard_failed_below(self, step_id: str) -> None:
        """Forget failed checkpoints under ``step_id``, so its next attempt runs those children again.

        Each forgotten child gets a ``step.retrying`` event for its last attempt: that voids the content
        the child emitted in it, since the child is about to run again under the same step id.
        """
        prefix = step_id + "/"
        for key in [k for k, cp in self.checkpoints.items() if k.startswith(prefix) and cp.status == FAILED]:
            checkpoint = self.checkpoints.pop(key)
            self.emit(
                ev.STEP_RETRYING,
                {"error": checkpoint.error, "reason": "parent_retry", "next_attempt": 1},
                step=key,
                attempt=checkpoint.attempts,
            )

    def current_step(self) -> StepInfo:
        frame = _frame.get() or self.root
        return StepInfo(run_id=self.run_id, step_id=frame.step_id, attempt=frame.attempt, epoch=self.epoch)
