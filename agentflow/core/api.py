"""What workflow code calls while it runs: progress, data and output events, and concurrent fan-out."""

from __future__ import annotations

import asyncio
import functools
import math
import time
from collections.abc import Iterable
from typing import Any, TypeVar

from . import events as ev
from .component import Component
from .context import COMPLETED, WAITING, Checkpoint, StepInfo, StepRecord, _frame, current_run
from .errors import RunInterrupted
from .serialization import check_storable, to_jsonable

T = TypeVar("T")


# Outside a running workflow these check their arguments and do nothing, so a component that reports
# progress can still be called (and unit tested) as a plain function.


def current_step() -> StepInfo | None:
    """The run, step and attempt the calling code belongs to; None outside a running workflow."""
    ctx = current_run()
    return None if ctx is None else ctx.current_step()


def status(text: str, progress: float | None = None) -> None:
    """Tell the run's subscribers what is happening: a ``status`` event (``progress`` from 0 to 1)."""
    if not isinstance(text, str):
        raise TypeError(f"status text must be a str, not {type(text).__name__}")
    check_storable(text, what="the status text")
    if progress is not None:
        if not isinstance(progress, int | float) or isinstance(progress, bool):
            raise TypeError(f"progress must be a number from 0 to 1 or None, not {progress!r}")
        if not 0 <= progress <= 1:  # also NaN
            raise ValueError(f"progress must be from 0 to 1 (a fraction: 0.5 is half way), not {progress!r}")
    data: dict[str, Any] = {"text": text}
    if progress is not None:
        data["progress"] = progress
    ctx = current_run()
    if ctx is not None:
        ctx.emit_content(ev.STATUS, data)


def publish(label: str, data: Any) -> None:
    """Publish a labelled, JSON-able object to the run's subscribers: a ``data`` event."""
    if not isinstance(label, str) or not label:
        raise TypeError(f"publish label must be a non-empty str, not {label!r}")
    check_storable(label, what="the publish label")
    value = to_jsonable(data, what="published data")
    check_storable(value, what="published data")
    ctx = current_run()
    if ctx is not None:
        ctx.emit_content(ev.DATA, {"label": label, "value": value})


def stream_output(chunk: str) -> None:
    """Append a chunk of streamed output (tokens): an ``output.delta`` event."""
    if not isinstance(chunk, str):
        raise TypeError(f"stream_output takes a str chunk, not {type(chunk).__name__}")
    check_storable(chunk, what="the streamed chunk")
    ctx = current_run()
    if ctx is not None:
        ctx.emit_content(ev.OUTPUT_DELTA, {"text": chunk})


async def map(
    comp: Component[..., Any], items: Iterable[Any], *, concurrency: int | None = None
) -> list[Any]:
    """Call ``comp(item)`` for every item, at most ``concurrency`` at a time; results in item order.

    Step ids are assigned in item order before anything runs, so they are the same in every incarnation.
    Sync components run in threads. Every item is attempted; if any failed, the first failure (in item
    order) is raised once all have finished, so no call is left running behind the caller's back; a
    cancellation or lost lease (``RunInterrupted``) wins over ordinary failures. Outside a workflow it calls
    the plain function for each item, with the same concurrency limit.
    """
    if not isinstance(comp, Component):
        raise TypeError(f"agentflow.map needs a component, not {comp!r}")
    if concurrency is not None and (
        not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1
    ):
        raise TypeError(f"concurrency must be an int >= 1 or None, not {concurrency!r}")
    ctx = current_run()
    items = list(items)
    limit = asyncio.Semaphore(concurrency or len(items) or 1)
    if ctx is None:
        calls: list[Any] = [functools.partial(comp.fn, item) for item in items]
        run_async, run_sync = (lambda call: call()), (lambda call: call())
    else:
        calls = [comp.prepare(ctx, item) for item in items]
        run_async, run_sync = (lambda call: call.run_async()), (lambda call: call.run_sync())

    async def one(call: Any) -> Any:
        async with limit:
            if comp.is_async:
                return await run_async(call)
            return await asyncio.to_thread(run_sync, call)

    results = await asyncio.gather(*(one(call) for call in calls), return_exceptions=True)
    failures = [result for result in results if isinstance(result, BaseException)]
    for failure in failures:
        if isinstance(failure, RunInterrupted):
            raise failure
    if failures:
        raise failures[0]
    return results


def sleep(seconds: float) -> None:
    """Wait ``seconds``, durably: a replayed run does not wait again.

    In the workflow body, a wait longer than ``AGENTFLOW["SUSPEND_THRESHOLD_SECONDS"]`` suspends the run
    (status ``waiting``, event ``run.waiting``) and frees the worker; the run continues on any worker once the
    time is up. A shorter wait, or any wait inside a running step, blocks in-process (waking every half
    second for a cancellation). Each call is checkpointed under a step id ``sleep#<n>`` that records the
    wake-up time. Outside a workflow it is ``time.sleep``.
    """
    if not isinstance(seconds, int | float) or isinstance(seconds, bool) or not 0 <= seconds < math.inf:
        raise TypeError(f"sleep seconds must be a finite number >= 0, not {seconds!r}")
    ctx = current_run()
    if ctx is None:
        time.sleep(seconds)
        return
    frame = _frame.get() or ctx.root
    step_id = frame.next_child_id("sleep")
    ctx.check_interrupt()
    checkpoint = ctx.checkpoints.get(step_id)
    if checkpoint is not None and checkpoint.status == COMPLETED:
        return  # replay: an earlier incarnation slept already
    ctx.check_slice()
    now = time.time()
    if checkpoint is not None and checkpoint.status == WAITING:
        wake_at = float((checkpoint.output or {}).get("wake_at") or now)
    else:
        wake_at = now + seconds
    record = StepRecord(
        step_id=step_id,
        parent_id=frame.step_id,
        component="sleep",
        status=WAITING,
        input={"args": [seconds], "kwargs": {}},
        input_hash="",
        output={"wake_at": wake_at},
        error=None,
        attempts=0,
        started_at=now,
        finished_at=now,
    )
    if ctx.suspends(wake_at - now):
        if checkpoint is None:
            ctx.store.save_step(record)
        ctx.suspend(wake_at, "sleep")
    ctx.sleep(wake_at - now)
    record.status, record.finished_at = COMPLETED, time.time()
    ctx.store.save_step(record)
    ctx.checkpoints[step_id] = Checkpoint(COMPLETED, record.output, None, 0, None)
