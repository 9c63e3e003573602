"""Executes one incarnation of a run: claim it, replay and run its workflow, record how it ended.

This is what the Celery task (or the in-process executor) calls with ``(run_id, epoch)``. Claiming bumps the
run's epoch with a conditional UPDATE, so a duplicate or stale message for the same run does nothing, and
everything the previous incarnation might still try to write is refused.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import traceback
from datetime import UTC, datetime
from typing import Any

from django.db import InterfaceError, OperationalError, connection, transaction
from django.db.models import Q
from django.utils import timezone

from . import dispatch, streams
from .conf import agentflow_settings
from .core import events as ev
from .core import keys
from .core.context import WAITING, Checkpoint, RunContext
from .core.errors import (
    AgentflowError,
    BudgetExceeded,
    LeaseLost,
    RunCancelled,
    RunSuspended,
    SerializationError,
    StepFailed,
    WorkflowNotFound,
)
from .core.serialization import escaped
from .core.usage import Budget, event_summary
from .core.waits import OPEN_ENDED_REASONS
from .core.workflow import registry
from .llm import pricing
from .models import ACTIVE_STATUSES, RunStatus, StepRun, WorkflowRun
from .store import DjangoRunStore, Lease, load_checkpoints
from .waits import DjangoWaits, cancel_children, due_now, next_timer, wake_parent

logger = logging.getLogger("agentflow.runner")

WORKER_NAME = f"{socket.gethostname()}:{os.getpid()}"

# Set when this process shuts down: its incarnations hand their runs back at their next step boundary.
_draining = threading.Event()
_active_lock = threading.Lock()
_active = 0  # incarnations executing in this process


def begin_drain() -> None:
    """Hand every run this process executes back at its next step boundary (a worker's warm shutdown).

    A step still running ``DRAIN_SECONDS`` later is abandoned: the process exits, its lease stops, and the
    monitor recovers the run elsewhere. Idempotent.
    """
    if _draining.is_set():
        return
    _draining.set()
    timer = threading.Timer(agentflow_settings.drain_seconds, _drain_expired)
    timer.daemon = True
    timer.start()


def announce_drain() -> None:
    """In a worker's main process: drain, and tell its prefork children, which poll a Redis key."""
    begin_drain()
    key = keys.drain(agentflow_settings.key_prefix, socket.gethostname(), os.getpid())
    try:
        streams.get_client().set(key, "1", ex=3600)
    except Exception:  # Redis down: children finish their slices instead, or are recovered
        logger.warning("drain: cannot tell the worker's child processes", exc_info=True)


def watch_parent_drain() -> None:
    """In a prefork child process: drain once the parent worker announces its shutdown.

    A thread polls the parent's key every ``HEARTBEAT_INTERVAL_SECONDS``: one ``EXISTS`` per child.
    """
    key = keys.drain(agentflow_settings.key_prefix, socket.gethostname(), os.getppid())
    interval = agentflow_settings.heartbeat_interval_seconds

    def watch() -> None:
        while not _draining.wait(interval):
            try:
                if streams.get_client().exists(key):
                    begin_drain()
            except Exception:  # Redis blip: look again at the next interval
                logger.debug("drain: cannot read %s", key, exc_info=True)

    threading.Thread(target=watch, name="agentflow-drain-watch", daemon=True).start()


def _drain_expired() -> None:
    with _active_lock:
        active = _active
    if active:
        logger.error("drain: %d run(s) still inside a step after DRAIN_SECONDS; abandoning them", active)
        logging.shutdown()
        os._exit(1)


def public_error(error: dict[str, Any] | None) -> dict[str, Any]:
    """A run's error as subscribers see it: no traceback (it stays in the DB for the admin)."""
    return {key: value for key, value in (error or {}).items() if key != "traceback"}


def _error_dict(exc: BaseException) -> dict[str, Any]:
    error: dict[str, Any] = {"type": type(exc).__name__, "message": str(exc)}
    if isinstance(exc, StepFailed):
        error.update(
            type="StepFailed",
            code=exc.code,
            step=exc.step_id,
            cause={"type": exc.error_type, "message": exc.error_message},
        )
    elif isinstance(exc, AgentflowError | BudgetExceeded):
        error["code"] = exc.code
        if isinstance(exc, BudgetExceeded | SerializationError):
            error["details"] = exc.details  # the limit and usage; the JSON path that cannot be stored
    else:
        error["traceback"] = "".join(traceback.format_exception(exc, limit=-20))[-8000:]
    # Recorded whatever it holds: a message quoting U+0000 or a lone surrogate is stored escaped.
    return escaped(error, what="the run's error")  # type: ignore[no-any-return]


# What _claim returns as the previous status of a run that resume() queued again.
_RESUMING = "resuming"
# Events read per page when a resumed incarnation looks through the run's history.
_HISTORY_PAGE = 2000


def _claim(run_id: str, epoch: int, worker: str) -> tuple[WorkflowRun, str] | None:
    """Take the run over as epoch + 1, or return None when this message is stale or the run is over.

    A connection kept between tasks (``CELERY_DB_REUSE_MAX``, docs/deploy.md) may have died while idle (the
    database restarted, a pooler dropped it): the claim then closes it and tries once more on a new one,
    instead of failing the task and leaving the run to the monitor.
    """
    try:
        return _claim_once(run_id, epoch, worker)
    except (InterfaceError, OperationalError):
        if connection.in_atomic_block:
            raise
        logger.info("run %s: the database connection was unusable; claiming on a new one", run_id)
        connection.close()
        return _claim_once(run_id, epoch, worker)


def _claim_once(run_id: str, epoch: int, worker: str) -> tuple[WorkflowRun, str] | None:
    now = timezone.now()
    with transaction.atomic():
        run = WorkflowRun.objects.select_for_update().filter(id=run_id).first()
        if run is None:
            logger.warning("run %s does not exist; dropping its task", run_id)
            return None
        if run.epoch != epoch or run.status not in ACTIVE_STATUSES:
            logger.info(
                "run %s: stale task (epoch %s, run at %s, %s); dropping", run_id, epoch, run.epoch, run.status
            )
            return None
        # Queued again after an incarnation ran (a first start has no started_at yet): resume() did that.
        previous = _RESUMING if run.status == RunStatus.QUEUED and run.started_at else run.status
        run.epoch = epoch + 1
        run.status = RunStatus.RUNNING
        run.started_at = run.started_at or now
        run.heartbeat_at = now
        run.worker = worker
        run.wake_at = None
        run.wait_reason = ""
        # The run waits for no message now: a monitor seeing its lease expire later counts a death.
        run.dispatch_pending, run.enqueued_at = False, None
        run.save(
            update_fields=[
                "epoch", "status", "started_at", "heartbeat_at", "worker", "wake_at", "wait_reason",
                "dispatch_pending", "enqueued_at",
            ]
        )  # fmt: skip
    return run, previous


def _announce_recovery(
    run: WorkflowRun, sink: streams.RedisSink, since: str, checkpoints: dict[str, Checkpoint]
) -> None:
    """Emit ``run.recovered``, voiding the content of the steps the dead incarnation left unfinished.

    A step whose checkpoint committed but whose ``step.completed`` (or ``step.failed``) never reached the
    stream is not void: it is replayed, so its content stands, and its missing end event is appended now.
    """
    run_id, epoch = str(run.id), run.epoch
    events = streams.read_events(run_id, since=since or None)
    if _resume_unannounced(events):
        # The dead incarnation was a resumed one that died before its first event: announce the resume.
        _announce_resume(run, sink, checkpoints)
        return
    open_steps: dict[str, int] = {}
    announced: set[tuple[str, str]] = set()
    for event in events:
        if event["type"] == ev.STEP_STARTED:
            open_steps[event["step"]] = event.get("attempt") or 1
        elif event["type"] in (ev.STEP_COMPLETED, ev.STEP_FAILED):
            open_steps.pop(event["step"], None)
        elif event["step"] is not None:
            announced.add((event["step"], event["type"]))
    # A waiting checkpoint (a step suspended between attempts) is not an end: its open attempt is void.
    finished = {step for step, checkpoint in checkpoints.items() if checkpoint.status != WAITING}
    void = [step for step in open_steps if step not in finished]
    sink.emit(
        ev.envelope(
            ev.RUN_RECOVERED,
            run_id,
            step=None,
            attempt=None,
            epoch=epoch,
            data={"void_steps": void, "recoveries": run.recoveries},
        )
    )
    for step, attempt in open_steps.items():
        checkpoint = checkpoints.get(step)
        if checkpoint is not None and step in finished:
            kind = ev.STEP_COMPLETED if checkpoint.status == "completed" else ev.STEP_FAILED
            data: dict[str, Any] = {"recovered": True}
            if checkpoint.error:
                data["error"] = checkpoint.error
            summary = event_summary(checkpoint.usage)
            if summary:
                data["usage"] = summary
            sink.emit(ev.envelope(kind, run_id, step=step, attempt=attempt, epoch=epoch, data=data))
    _announce_waits(run, sink, announced)


def _resume_unannounced(events: list[dict[str, Any]]) -> bool:
    """Whether the stream ends with the run's terminal event: the run was resumed (a finished run is running
    again only then), and its first incarnation died before appending ``run.resumed``."""
    return bool(events) and events[-1]["type"] in ev.TERMINAL_TYPES


def _announce_resume(run: WorkflowRun, sink: streams.RedisSink, checkpoints: dict[str, Checkpoint]) -> None:
    """Emit ``run.resumed``, voiding the earlier content of every step this incarnation may run again.

    ``resume()`` deleted the run's failed checkpoints, so those steps run again, and so do the steps the
    ended incarnation left unfinished (a run cancelled mid-step, or failed while other steps ran): every
    step of the history without a completed (or failed) checkpoint. Its content is void; steps that completed
    are replayed and keep theirs. The history is read once per resume, in pages.
    """
    from .archive import history

    run_id = str(run.id)
    seen: dict[str, None] = {}  # step ids in the order they first appear
    after: str | None = None
    while True:
        page = history(run_id, after=after, limit=_HISTORY_PAGE)
        for event in page:
            kind, step = event["type"], event["step"]
            if step is not None and (kind in ev.STEP_TYPES or kind in ev.CONTENT_TYPES):
                seen[step] = None
        if len(page) < _HISTORY_PAGE:
            break
        after = page[-1]["id"]
    void = [step for step in seen if step not in checkpoints or checkpoints[step].status == WAITING]
    data = {"void_steps": void, "recoveries": run.recoveries}
    sink.emit(ev.envelope(ev.RUN_RESUMED, run_id, step=None, attempt=None, epoch=run.epoch, data=data))


def _announce_waits(run: WorkflowRun, sink: streams.RedisSink, announced: set[tuple[str, str]]) -> None:
    """Append what the dead incarnation checkpointed about its waits (an input requested or received, a
    child started or ended) but died before announcing: the checkpoint is written first, the event after."""
    from .core.waits import CHILD_PREFIX, INPUT, announcement

    dead = StepRun.objects.filter(run_id=run.id, epoch=run.epoch - 1).filter(
        Q(component=INPUT) | Q(component__startswith=CHILD_PREFIX)
    )
    for row in dead.order_by("id"):
        made = announcement(row.component, row.status, row.input, row.output, row.error)
        if made is not None and (row.step_id, made[0]) not in announced:
            kind, data = made
            sink.emit(
                ev.envelope(
                    kind,
                    str(run.id),
                    step=row.step_id,
                    attempt=None,
                    epoch=run.epoch,
                    data={**data, "recovered": True},
                )
            )


def execute_run(run_id: str, epoch: int, *, worker: str = WORKER_NAME) -> str | None:
    """Run one incarnation of ``run_id`` if ``epoch`` is current. Returns the status it left the run in."""
    global _active
    with _active_lock:
        _active += 1
    try:
        return _execute(run_id, epoch, worker)
    finally:
        with _active_lock:
            _active -= 1


def _execute(run_id: str, epoch: int, worker: str) -> str | None:
    slice_deadline = time.monotonic() + agentflow_settings.slice_seconds
    claimed = _claim(str(run_id), int(epoch), worker)
    if claimed is None:
        return None
    run, previous_status = claimed
    run_id, epoch = str(run.id), run.epoch
    try:
        wf = registry.get(run.workflow)
    except WorkflowNotFound as exc:
        return _finish_early(run, exc)

    claim = streams.claim(run_id, epoch)
    sink = streams.RedisSink(run_id, epoch, claim)
    store = DjangoRunStore(run_id, epoch)
    lease = Lease(run_id, epoch, agentflow_settings.heartbeat_interval_seconds)
    # A cancellation requested before this incarnation started stops it at its first step boundary.
    lease.cancelled = run.cancel_requested
    try:
        checkpoints = load_checkpoints(run_id)
        if previous_status == RunStatus.RUNNING:
            # The previous incarnation died (the monitor handed the run to us): void what it left unfinished.
            _announce_recovery(run, sink, claim.start, checkpoints)
        elif previous_status == RunStatus.WAITING:
            # The previous incarnation handed the run back (time slice, suspension, drain): nothing is void.
            sink.emit(ev.envelope(ev.RUN_CONTINUED, run_id, step=None, attempt=None, epoch=epoch, data={}))
        elif previous_status == _RESUMING:
            # A failed or cancelled run resumed: void what the steps that run again emitted before.
            _announce_resume(run, sink, checkpoints)
        else:
            sink.emit(ev.envelope(ev.RUN_STARTED, run_id, step=None, attempt=None, epoch=epoch, data={}))
        sink.flush()
        # A later recovery scans the stream from here for steps this incarnation leaves unfinished.
        streams.mark_incarnation_start(run_id, sink.first_id or "")
        lease.start()
        ctx = RunContext(
            run_id=run_id,
            epoch=epoch,
            store=store,
            sink=sink,
            checkpoints=checkpoints,
            cache=_cache(),
            cache_prefix=f"{agentflow_settings.key_prefix}cache:",
            workflow_content_seen=claim.workflow_content,
            interrupt=lease.check,
            slice_deadline=slice_deadline,
            draining=_draining.is_set,
            suspend_threshold_seconds=agentflow_settings.suspend_threshold_seconds,
            budget=Budget.parse(run.budget) if run.budget else None,
            pricer=pricing.price,
            waits=DjangoWaits(run_id, epoch, store),
        )
        lease.usage = ctx.usage_snapshot
        run.usage = ctx.usage  # _finish and _suspend write the totals with the run's status
        status, output, error = RunStatus.COMPLETED, None, None
        try:
            output = wf.execute(run.input, ctx)
        except LeaseLost:
            logger.warning("run %s: lost epoch %s mid-run; another worker has it", run_id, epoch)
            return None
        except RunSuspended as exc:
            return _suspend(run, sink, exc)
        except RunCancelled:
            status = RunStatus.CANCELLED
        except BudgetExceeded as exc:
            logger.info("%s", exc)  # "run <id> spent $..., reaching its budget of $..."
            status, error = RunStatus.FAILED, _error_dict(exc)
        except Exception as exc:
            logger.info("run %s failed: %s", run_id, exc, exc_info=not isinstance(exc, AgentflowError))
            status, error = RunStatus.FAILED, _error_dict(exc)
        # The lease keeps beating until the end is recorded: a slow final flush is not a dead worker.
        sink.flush()
        return _finish(run, sink, status, output, error)
    except LeaseLost:
        logger.warning("run %s: epoch %s is stale; this worker stops writing", run_id, epoch)
        return None
    finally:
        lease.stop()
        store.close()
        with contextlib.suppress(LeaseLost, TimeoutError):
            sink.close(timeout_seconds=30)


def _suspend(run: WorkflowRun, sink: streams.RedisSink, exc: RunSuspended) -> str | None:
    """Hand the run back: status ``waiting`` until its wake-up time, ``run.waiting``, and a new task then.

    The run keeps its epoch, so the next task claims ``epoch + 1`` as usual. Events are flushed before the
    task is enqueued: once the next incarnation claims the run, this one's appends are refused.

    A run that waits for input or a child run has no wake-up time of its own: what ends the wait makes it due
    (:mod:`agentflow.waits`). It is recorded under the run's row lock, the lock an answer takes too, so a wait
    that ended while this incarnation was still running is found here and the run continues at once. A run
    with several waits wakes at the earliest of their timers (a retry, a sleep, an input's time-out).
    """
    run_id = str(run.id)
    sink.flush()
    now = timezone.now()
    cancelled = False
    with transaction.atomic():
        locked = (
            WorkflowRun.objects.select_for_update()
            .filter(id=run_id, epoch=run.epoch, status=RunStatus.RUNNING)
            .only("id", "cancel_requested")
            .first()
        )
        if locked is None:
            logger.warning("run %s: epoch %s went stale before it could be handed back", run_id, run.epoch)
            return None
        wake_at: datetime | None = now
        if locked.cancel_requested:
            cancelled = True
        else:
            if exc.reason in OPEN_ENDED_REASONS or exc.wake_at is not None:
                timers = [t for t in (_at(exc.wake_at), next_timer(run_id)) if t is not None]
                wake_at = now if due_now(run_id) else max(now, min(timers)) if timers else None
            WorkflowRun.objects.filter(id=run_id).update(
                status=RunStatus.WAITING,
                wake_at=wake_at,
                heartbeat_at=now,
                usage=run.usage,
                wait_reason=exc.reason,
                # Its message is owed with the hand-back (none while it waits for something to happen).
                **(dispatch.owed(now) if wake_at is not None else dispatch.HELD),
            )
    if cancelled:
        # Cancelled meanwhile: end it now rather than after a wait that may be long.
        return _finish(run, sink, RunStatus.CANCELLED, None, None)
    data = {"wake_at": wake_at.isoformat().replace("+00:00", "Z") if wake_at else None, "reason": exc.reason}
    sink.emit(ev.envelope(ev.RUN_WAITING, run_id, step=None, attempt=None, epoch=run.epoch, data=data))
    sink.flush()
    if wake_at is None:
        logger.info("run %s: handed back (%s), continues when its wait ends", run_id, exc.reason)
        return RunStatus.WAITING
    delay = (wake_at - now).total_seconds()
    logger.info("run %s: handed back (%s), continues in %.1fs", run_id, exc.reason, delay)
    # Owed since the UPDATE above: if this send fails, or the message is lost later, it is sent again.
    dispatch.send(run_id, run.epoch, queue=run.queue, countdown_seconds=delay if delay > 0 else None)
    return RunStatus.WAITING


def _at(seconds: float | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, tz=UTC)


def _cache() -> Any:
    from django.core.cache import caches

    return caches[agentflow_settings.cache_alias]


def _finish(
    run: WorkflowRun, sink: streams.RedisSink, status: str, output: Any, error: dict[str, Any] | None
) -> str | None:
    """Commit the final status (the DB is the source of truth), then append the terminal event."""
    run_id = str(run.id)
    now = timezone.now()
    with transaction.atomic():
        updated = WorkflowRun.objects.filter(id=run_id, epoch=run.epoch).update(
            status=status,
            output=output,
            error=error,
            finished_at=now,
            step_count=StepRun.objects.filter(run__pk=run_id).count(),
            usage=run.usage,
            wait_reason="",
            **dispatch.HELD,
        )
        # In the same transaction: a parent waiting for this run is due as surely as this run is finished.
        if updated and run.parent_id is not None:
            wake_parent(run.parent_id)
    if not updated:
        logger.warning("run %s: epoch %s went stale before it could finish", run_id, run.epoch)
        return None
    duration = (now - run.started_at).total_seconds() if run.started_at else None
    data: dict[str, Any]
    if status == RunStatus.COMPLETED:
        sink.emit(
            ev.envelope(ev.OUTPUT, run_id, step=None, attempt=None, epoch=run.epoch, data={"value": output})
        )
        terminal, data = ev.RUN_COMPLETED, {"duration_seconds": duration}
    elif status == RunStatus.CANCELLED:
        terminal, data = ev.RUN_CANCELLED, {"duration_seconds": duration}
    else:
        terminal, data = ev.RUN_FAILED, {"error": public_error(error), "duration_seconds": duration}
    sink.emit(ev.envelope(terminal, run_id, step=None, attempt=None, epoch=run.epoch, data=data))
    # Closing the sink archives every event it appended, from memory: Redis may have lost some since.
    sink.close()
    finalize_stream(run_id, sink.last_id, run.epoch, archived=sink.archived)
    # A child never outlives its parent (one that failed while a child it did not wait for ran, say).
    cancel_children(run_id)
    return status


def _finish_early(run: WorkflowRun, exc: AgentflowError) -> str | None:
    """End a run that cannot start (its workflow is not registered on this worker)."""
    claim = streams.claim(str(run.id), run.epoch)
    sink = streams.RedisSink(str(run.id), run.epoch, claim)
    try:
        return _finish(run, sink, RunStatus.FAILED, None, _error_dict(exc))
    finally:
        sink.close(timeout_seconds=30)


def finalize_stream(
    run_id: str, last_id: str | None, epoch: int | None = None, *, archived: bool = False
) -> None:
    """Archive a finished run's events to the DB, then let its stream expire.

    ``archived``: the last incarnation's sink archived everything already (``RedisSink.archived``), so the
    stream is not read again. With ``epoch``, nothing is recorded or expired if the run moved on meanwhile
    (resumed at once, say): the new incarnation owns the stream now.
    """
    from .archive import archive_events

    if agentflow_settings.archive_events and not archived:
        archive_events(run_id)
    runs = WorkflowRun.objects.filter(id=run_id)
    if epoch is not None:
        runs = runs.filter(epoch=epoch)
    if runs.update(last_event_id=last_id or ""):
        streams.expire_run(run_id, agentflow_settings.stream_ttl_seconds)
