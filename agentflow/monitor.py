"""The monitor: keeps every run moving. Run it from Celery beat (``agentflow.monitor``) or
``manage.py agentflow_monitor``; running several at once is safe (every change is a conditional UPDATE).

A run is either **held** by a worker (running, with a lease the worker renews) or **waits for a worker**
(queued, waiting, or running but recovered: its ``enqueued_at`` says when the message it waits for was
sent). The monitor:

- recovers a held run whose lease expired (its worker died): one more ``recoveries``, and its message is
  sent again with its current epoch; the incarnation that claims it takes the run over as epoch + 1 and
  emits ``run.recovered``. From then until that claim the run waits for a worker: however long a backlog
  holds its message, it is not lost again, so ``recoveries`` counts incarnations that started and died;
- fails a run whose lease expires after ``MAX_RECOVERIES`` recoveries, and sends ``run_abandoned``;
- sends again the message of a run that waits for a worker when that message was lost: taken by a worker
  that died before claiming it, or dropped by a broker that lost its data. With Celery it knows a lost
  message from one that waits behind others by the queue (``executors.QueueState``): the message was lost
  when a worker took a message sent after it a lease ago or more, or when the queue is empty, no worker took
  a message for a lease, and the run still waits ``LEASE_SECONDS`` after its message was sent. A delayed message (a suspended run's wake-up) was lost
  when the run still waits ``LEASE_SECONDS`` after its ``wake_at``. An executor without a queue to read
  gets the message sent again every ``QUEUED_TIMEOUT_SECONDS`` while the run waits. A message sent again
  is not a death: ``recoveries`` stays;
- sends the messages the broker did not take when they were due (``agentflow.dispatch.flush``);
- gives a finished run whose stream lacks its terminal event (the worker died between the commit and the
  append) that event, so no subscriber waits forever;
- cancels an active child run whose parent has finished (a child never outlives its parent).

A waiting run whose wait ended (an answer, a child's end) was made due, its message owed, in the
transaction that ended the wait; a run waiting for something to happen (no ``wake_at``) waits for no
message.

It logs only what it changes: a pass with nothing to do is silent.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db.models import F, Q
from django.db.models.functions import Coalesce
from django.dispatch import Signal
from django.utils import timezone

from . import dispatch, streams
from .conf import agentflow_settings
from .core import events as ev
from .executors import NotAccepted, QueueState, get_executor, queue_state
from .models import ACTIVE_STATUSES, FINISHED_STATUSES, RunStatus, WorkflowRun

logger = logging.getLogger("agentflow.monitor")

#: Sent when the monitor gives up on a run (too many recoveries). ``sender`` is WorkflowRun, ``run`` the run.
run_abandoned = Signal()

#: Clocks of the processes that send messages differ a little: a message counts as overtaken only by one
#: sent this much later.
ORDER_MARGIN_SECONDS = 1.0


@dataclass
class MonitorReport:
    recovered: int = 0
    abandoned: int = 0
    #: Lost messages of queued or recovered runs, sent again.
    requeued: int = 0
    #: Lost messages of waiting runs, sent again.
    woken: int = 0
    #: Messages the broker had not taken, sent now.
    dispatched: int = 0
    terminals_repaired: int = 0
    orphans_cancelled: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def check_runs(now: Any = None) -> MonitorReport:
    now = now or timezone.now()
    report = MonitorReport()
    # First: the queue is read before this pass sends anything, so its own messages do not hide a lost one.
    _resend_lost_messages(now, report)
    _recover_expired_leases(now, report)
    report.dispatched = dispatch.flush(now=now)

    # Grace of one lease: a live worker appends the terminal event right after committing the status.
    lease_cutoff = now - timedelta(seconds=agentflow_settings.lease_seconds)
    unfinished_streams = WorkflowRun.objects.filter(
        status__in=FINISHED_STATUSES, last_event_id="", finished_at__lt=lease_cutoff
    )
    for run in unfinished_streams[:500]:
        if append_terminal(run):
            report.terminals_repaired += 1

    from .runs import cancel

    orphans = WorkflowRun.objects.filter(status__in=ACTIVE_STATUSES, parent__status__in=FINISHED_STATUSES)
    for run_id in orphans.values_list("id", flat=True)[:500]:
        logger.warning("run %s: its parent run has finished; cancelling it", run_id)
        cancel(run_id)
        report.orphans_cancelled += 1
    return report


def _recover_expired_leases(now: datetime, report: MonitorReport) -> None:
    lease_cutoff = now - timedelta(seconds=agentflow_settings.lease_seconds)
    # Held runs only: a run already recovered waits for a worker (enqueued_at), however long that takes.
    held = {"status": RunStatus.RUNNING, "enqueued_at__isnull": True, "dispatch_pending": False}
    stale = WorkflowRun.objects.filter(**held, heartbeat_at__lt=lease_cutoff)
    for run_id, epoch, recoveries, queue in stale.values_list("id", "epoch", "recoveries", "queue")[:500]:
        if recoveries >= agentflow_settings.max_recoveries:
            if _abandon(run_id, epoch, recoveries):
                report.abandoned += 1
            continue
        # Conditional on the epoch and the old heartbeat, so two monitors never recover the same lease twice.
        if WorkflowRun.objects.filter(id=run_id, epoch=epoch, heartbeat_at__lt=lease_cutoff, **held).update(
            recoveries=F("recoveries") + 1, **dispatch.owed(now)
        ):
            logger.warning("run %s: lease of epoch %s expired; sending it to another worker", run_id, epoch)
            dispatch.send(str(run_id), epoch, queue=queue)
            report.recovered += 1


def _resend_lost_messages(now: datetime, report: MonitorReport) -> None:
    executor = get_executor()
    states: dict[str, QueueState | NotAccepted | None] = {}  # per queue, read once, before any send

    def state_of(queue: str) -> QueueState | NotAccepted | None:
        if queue not in states:
            try:
                states[queue] = queue_state(executor, queue or None)
            except NotAccepted as exc:
                logger.debug("monitor: cannot read the run queue %r (%s)", queue, exc)
                states[queue] = exc
        return states[queue]

    # A run recorded without agentflow.dispatch (no enqueued_at) counts from its last heartbeat or creation. A
    # run that waits for something to happen (an answer, a child run: no wake_at) waits for no message.
    waiting = (
        WorkflowRun.objects.filter(status__in=ACTIVE_STATUSES, dispatch_pending=False)
        .filter(Q(enqueued_at__isnull=False) | Q(status__in=(RunStatus.QUEUED, RunStatus.WAITING)))
        .exclude(status=RunStatus.WAITING, wake_at__isnull=True)
        .annotate(sent=Coalesce("enqueued_at", "heartbeat_at", "created_at"))
        # Oldest first: a message overtaken by later ones is among the oldest still waiting.
        .order_by("sent")
    )
    rows = list(waiting.values_list("id", "epoch", "status", "wake_at", "enqueued_at", "sent", "queue")[:500])
    for queue in {row[-1] for row in rows}:
        state_of(queue)
    for run_id, epoch, status, wake_at, enqueued_at, sent, queue in rows:
        state = state_of(queue)
        if isinstance(state, NotAccepted):
            continue  # the broker is down: no message can be told lost, nor sent again
        if not _lost(status, wake_at, sent, now, state):
            continue
        if WorkflowRun.objects.filter(
            id=run_id, epoch=epoch, status=status, dispatch_pending=False, enqueued_at=enqueued_at
        ).update(**dispatch.owed(now)):
            logger.warning("run %s: its message (epoch %s) was lost; sending it again", run_id, epoch)
            dispatch.send(str(run_id), epoch, queue=queue)
            if status == RunStatus.WAITING:
                report.woken += 1
            else:
                report.requeued += 1


def _lost(status: str, wake_at: Any, sent: datetime, now: datetime, state: QueueState | None) -> bool:
    """Whether the message a waiting run was sent at ``sent`` is lost (see the module's docstring)."""
    lease = agentflow_settings.lease_seconds
    grace = timedelta(seconds=lease)
    if status == RunStatus.WAITING and wake_at is not None and wake_at > sent:
        return now - wake_at > grace  # a delayed message: a worker holds it until wake_at
    if state is None:
        return now - sent > timedelta(seconds=agentflow_settings.queued_timeout_seconds)
    # A message taken from the queue is claimed within moments, but those moments are not observed: only
    # takes a lease old count, so a message being taken and claimed right now is never thought lost.
    through = state.delivered_through(lease)
    overtaken = through is not None and through - sent > timedelta(seconds=ORDER_MARGIN_SECONDS)
    last_take = state.seconds_since_last_take()
    settled = state.waiting == 0 and (last_take is None or last_take >= lease)
    return overtaken or (settled and now - sent > grace)


def _abandon(run_id: Any, epoch: int, recoveries: int) -> bool:
    error = {
        "type": "RunAbandoned",
        "code": "run_abandoned",
        "message": f"the run's worker was lost {recoveries + 1} times; giving up after {recoveries} recoveries",
    }
    from django.db import transaction

    from .waits import cancel_children, wake_parent

    with transaction.atomic():
        updated = WorkflowRun.objects.filter(
            id=run_id, epoch=epoch, status=RunStatus.RUNNING, enqueued_at__isnull=True
        ).update(
            status=RunStatus.FAILED, error=error, finished_at=timezone.now(), epoch=epoch + 1, **dispatch.HELD
        )
        parent_id = WorkflowRun.objects.filter(id=run_id).values_list("parent_id", flat=True).first()
        if updated and parent_id is not None:
            wake_parent(parent_id)
    if not updated:
        return False
    cancel_children(run_id)
    run = WorkflowRun.objects.get(id=run_id)
    logger.error("run %s abandoned: %s", run_id, error["message"])
    append_terminal(run)
    run_abandoned.send(sender=WorkflowRun, run=run)
    return True


def append_terminal(run: WorkflowRun) -> bool:
    """Give a finished run its terminal event if its stream lacks one, then archive and expire it.

    The run's epoch is bumped first (a conditional UPDATE, then the Redis claim), which fences the worker
    that finished the run: if it was merely slow, its own terminal append is now refused, so exactly one
    terminal event reaches the stream even with several monitors at once.
    """
    from .runner import finalize_stream, public_error

    run_id = str(run.id)
    if not WorkflowRun.objects.filter(id=run_id, epoch=run.epoch, last_event_id="").update(
        epoch=F("epoch") + 1
    ):
        return False  # another monitor (or the worker) got there first
    run.refresh_from_db()
    claim = streams.claim(run_id, run.epoch)
    last: Any = streams.get_client().xrevrange(streams.stream_key(run_id), count=1)
    last_event = streams.parse_entry(*last[0]) if last else None
    if last_event is not None and last_event["type"] in ev.TERMINAL_TYPES:
        finalize_stream(run_id, last_event["id"], run.epoch)
        return False
    terminal = {
        RunStatus.COMPLETED: ev.RUN_COMPLETED,
        RunStatus.FAILED: ev.RUN_FAILED,
        RunStatus.CANCELLED: ev.RUN_CANCELLED,
    }[RunStatus(run.status)]
    duration = run.duration_seconds
    data: dict[str, Any] = {"duration_seconds": duration}
    if run.status == RunStatus.FAILED:
        data["error"] = public_error(run.error)
    sink = streams.RedisSink(run_id, run.epoch, claim)
    try:
        if run.status == RunStatus.COMPLETED:
            sink.emit(
                ev.envelope(
                    ev.OUTPUT, run_id, step=None, attempt=None, epoch=run.epoch, data={"value": run.output}
                )
            )
        sink.emit(ev.envelope(terminal, run_id, step=None, attempt=None, epoch=run.epoch, data=data))
    finally:
        sink.close(timeout_seconds=30)
    finalize_stream(run_id, sink.last_id, run.epoch)
    return True
