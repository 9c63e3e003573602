"""The Python API of the API plane: start runs, look them up, wait for them, cancel them.

None of these execute workflow code: they record runs (handing them to workers is :mod:`agentflow.dispatch`'s
job), and read state from the DB and the run's stream.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from . import dispatch, streams
from .conf import agentflow_settings
from .core import events as ev
from .core.errors import IdempotencyKeyReused, RunFailed, RunNotFound, RunTimeout
from .core.serialization import same_json, unstorable
from .core.usage import Budget
from .core.workflow import Workflow, registry
from .db import release_connections
from .models import FINISHED_STATUSES, RunStatus, WorkflowRun

logger = logging.getLogger("agentflow.runs")


def start_or_replay(
    workflow: str | Workflow[Any, Any],
    input: dict[str, Any] | None = None,
    *,
    owner: Any = None,
    idempotency_key: str | None = None,
    budget: Budget | dict[str, Any] | None = None,
    parent: WorkflowRun | None = None,
    parent_step: str = "",
) -> tuple[WorkflowRun, bool]:
    """:func:`start`, telling whether ``idempotency_key`` named a run recorded before this call (``True``:
    that run, nothing recorded now). A concurrent call that recorded the run first makes it ``False``: both
    calls were first (the REST API answers both 202)."""
    wf = registry.get(workflow) if isinstance(workflow, str) else workflow
    if not isinstance(wf, Workflow):
        raise TypeError(f"start() needs a workflow or its name, not {workflow!r}")
    data = wf.validate_input(input)
    limit = Budget.parse(budget) if budget is not None else wf.budget
    if idempotency_key is not None and (
        not isinstance(idempotency_key, str)
        or not 0 < len(idempotency_key) <= 255
        or unstorable(idempotency_key) is not None
    ):
        raise TypeError(
            "idempotency_key must be a string of 1 to 255 characters, without U+0000 or lone surrogates"
        )
    owner_id = getattr(owner, "pk", owner)
    if idempotency_key:
        existing = _existing(wf.name, owner_id, idempotency_key, data)
        if existing is not None:
            return existing, True
    try:
        with transaction.atomic():
            run = WorkflowRun.objects.create(
                workflow=wf.name,
                input=data,
                owner_id=owner_id,
                idempotency_key=idempotency_key,
                budget=limit.as_dict() if limit is not None else None,
                parent=parent,
                parent_step=parent_step,
                queue=agentflow_settings.task_queue,
                **dispatch.owed(),
            )
    except IntegrityError:
        # A concurrent call with the same key committed first: its run is the answer, if its input is ours.
        existing = _existing(wf.name, owner_id, idempotency_key, data) if idempotency_key else None
        if existing is None:
            raise
        return existing, False  # as the winner's own answer: both requests were first
    dispatch.send_on_commit(str(run.id), run.epoch, queue=run.queue, new_run=True)
    return run, False


def start(
    workflow: str | Workflow[Any, Any],
    input: dict[str, Any] | None = None,
    *,
    owner: Any = None,
    idempotency_key: str | None = None,
    budget: Budget | dict[str, Any] | None = None,
    parent: WorkflowRun | None = None,
    parent_step: str = "",
) -> WorkflowRun:
    """Validate ``input``, record a run and dispatch it once the current transaction commits.

    Raises ``WorkflowNotFound`` or ``InvalidInput`` before anything is recorded. Once recorded, the run is
    returned whether or not the broker is up: its message is sent as soon as the broker takes it
    (:mod:`agentflow.dispatch`). With ``idempotency_key``,
    a second call with the same key, owner and workflow returns the first run instead of starting another,
    if it has the same input (after validation); else it raises ``IdempotencyKeyReused``, also when the two
    calls race (the database's unique constraint decides which one recorded the run).
    ``budget`` (``{"usd": ..., "tokens": ...}``) replaces the workflow's default spending limit for this run.
    ``parent`` and ``parent_step`` link a child run to the run and step that started it
    (``agentflow.run_workflow``).
    """
    return start_or_replay(
        workflow,
        input,
        owner=owner,
        idempotency_key=idempotency_key,
        budget=budget,
        parent=parent,
        parent_step=parent_step,
    )[0]


def _existing(workflow: str, owner_id: Any, key: str, data: dict[str, Any]) -> WorkflowRun | None:
    """The run this key started, if any; ``IdempotencyKeyReused`` if it was started with another input."""
    run = WorkflowRun.objects.filter(workflow=workflow, owner_id=owner_id, idempotency_key=key).first()
    if run is not None and not same_json(run.input, data):
        raise IdempotencyKeyReused(
            f"idempotency key {key!r} started run {run.pk} with a different input",
            details={"run": str(run.pk)},
        )
    return run


def get_run(run_id: Any) -> WorkflowRun:
    if isinstance(run_id, WorkflowRun):
        run_id = run_id.pk
    try:
        return WorkflowRun.objects.get(pk=run_id)
    # A malformed UUID surfaces as a ValidationError.
    except (WorkflowRun.DoesNotExist, ValidationError, ValueError, TypeError):
        raise RunNotFound(f"no run has id {run_id!r}") from None


#: The first quiet interval after which ``wait()`` reads the run's row; each quiet check doubles it, up to
#: ``STREAM_IDLE_CHECK_SECONDS``, and an event brings it back.
FIRST_QUIET_CHECK_SECONDS = 1.0


def wait(run: Any, timeout_seconds: float | None = None, *, raise_on_failure: bool = True) -> Any:
    """Block until the run ends; return its output.

    Raises ``RunFailed`` if it failed or was cancelled (unless ``raise_on_failure=False``, which returns
    the finished ``WorkflowRun`` instead of the output) and ``RunTimeout`` after ``timeout_seconds``
    (default: ``AGENTFLOW["WAIT_TIMEOUT_SECONDS"]``); the run goes on regardless.

    It follows the run's stream and reads the run's row (the truth) only when that can tell something: at
    the start, after a terminal event (the final status is committed before that event is appended), when
    time is up, and when the stream stays quiet: after 1 s, then 2, 4... up to ``STREAM_IDLE_CHECK_SECONDS``
    without an event (a run that ended while Redis lost its terminal event still returns, at the latest
    that long after the monitor repaired it). A waiter costs no query while its run's events flow, and a
    few a minute while it sits in a queue. No database connection is held in between.
    """
    run_id = str(getattr(run, "pk", run))
    timeout = agentflow_settings.wait_timeout_seconds if timeout_seconds is None else timeout_seconds
    deadline = time.monotonic() + timeout
    # The stream's tip before the row is read: whatever ends the run after that read comes after the tip
    # (its status is committed before its terminal event is appended), and the history before is not needed.
    last_id = _tip(run_id)
    current = _read(run_id)
    quiet = FIRST_QUIET_CHECK_SECONDS
    check_at = time.monotonic() + quiet
    while current.status not in FINISHED_STATUSES:
        now = time.monotonic()
        if now >= deadline:
            current = _read(run_id)  # the status the time-out reports, and the run may just have ended
            if current.status in FINISHED_STATUSES:
                break
            raise _timeout(run_id, timeout, current.status)
        if now >= check_at:
            current = _read(run_id)
            quiet = min(
                quiet * 2, max(agentflow_settings.stream_idle_check_seconds, FIRST_QUIET_CHECK_SECONDS)
            )
            check_at = time.monotonic() + quiet
            continue
        block_seconds = min(deadline, check_at) - now
        try:
            events = streams.tail_events(run_id, last_id, block_ms=max(1, int(block_seconds * 1000)))
        except Exception:
            logger.warning("run %s: cannot read its stream; polling the DB", run_id, exc_info=True)
            time.sleep(min(block_seconds, 0.5))
            # The DB is all there is to go by meanwhile: read it every quiet second, without backing off.
            quiet = FIRST_QUIET_CHECK_SECONDS
            check_at = min(check_at, time.monotonic() + quiet)
            continue
        if events:
            last_id = events[-1]["id"]
            if any(event["type"] in ev.TERMINAL_TYPES for event in events):
                current = _read(run_id)
            quiet = FIRST_QUIET_CHECK_SECONDS  # the run is alive: a quiet spell starts over
            check_at = time.monotonic() + quiet
    if not raise_on_failure:
        return current
    if current.status != RunStatus.COMPLETED:
        error = current.error or {}
        raise RunFailed(
            f"run {run_id} ended {current.status}: {error.get('message', '')}".rstrip(": "),
            details={"status": current.status, "error": error},
        )
    return current.output


def _tip(run_id: str) -> str:
    try:
        entries: Any = streams.get_client().xrevrange(streams.stream_key(run_id), count=1)
    except Exception:  # Redis down: the loop below says so, and reads the DB meanwhile
        return "0-0"
    return str(entries[0][0]) if entries else "0-0"


def _read(run_id: str) -> WorkflowRun:
    """The run's row, without keeping the connection while the caller waits on Redis (agentflow.db)."""
    try:
        return get_run(run_id)
    finally:
        release_connections()


def _timeout(run_id: str, timeout: float, status: str) -> RunTimeout:
    """What ``wait()`` raises when time is up: says so when the run is queued and no live worker consumes its
    queue (``details["reason"]``: ``"no_live_worker"``), the usual cause of a run that never starts."""
    details = {"status": status, "reason": "run_timeout"}
    message = f"run {run_id} did not finish within {timeout:g}s (it is {status})"
    if status == RunStatus.QUEUED:
        from .health import worker_notice

        notice = worker_notice()
        if notice:
            details.update(reason="no_live_worker", queue=str(agentflow_settings.task_queue))
            message = f"run {run_id} did not finish within {timeout:g}s: it is queued, waiting for a worker; {notice}"
    return RunTimeout(message, details=details)


def cancel(run: Any) -> WorkflowRun:
    """Ask a run to stop. A queued or waiting run is cancelled at once; a running one at its next step
    boundary or heartbeat. Its child runs are cancelled too. Returns the run; finished runs are left as
    they are."""
    from .waits import cancel_children, wake_parent

    current = get_run(run)
    with transaction.atomic():
        locked = WorkflowRun.objects.select_for_update().get(pk=current.pk)
        if locked.status in FINISHED_STATUSES:
            return locked
        locked.cancel_requested = True
        fields = ["cancel_requested"]
        cancelled_now = locked.status in (RunStatus.QUEUED, RunStatus.WAITING)
        if cancelled_now:
            locked.status, locked.finished_at = RunStatus.CANCELLED, timezone.now()
            locked.epoch += 1  # fences the queued (or delayed) task
            locked.wait_reason = ""
            locked.dispatch_pending, locked.enqueued_at = False, None  # no message is owed any more
            fields += ["status", "finished_at", "epoch", "wait_reason", "dispatch_pending", "enqueued_at"]
        locked.save(update_fields=fields)
        if cancelled_now and locked.parent_id is not None:
            wake_parent(locked.parent_id)
    if cancelled_now:
        from .monitor import append_terminal

        # robust: the cancellation is committed; if Redis is down the monitor appends the event later.
        transaction.on_commit(lambda: append_terminal(locked), robust=True)
    # A child never outlives its parent's cancellation (the monitor also cancels children of finished runs).
    transaction.on_commit(lambda: cancel_children(locked.pk), robust=True)
    return locked
