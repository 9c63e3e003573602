"""The monitor: keeps every run moving. Run it from Celery beat (``agentflow.monitor``) or
``manage.py agentflow_monitor``; running several at once is safe (every change is a conditional UPDATE).

- a running run whose lease expired (its worker died) is enqueued again with its current epoch; the new
  incarnation takes it over as epoch + 1 and emits ``run.recovered``;
- after ``MAX_RECOVERIES`` such recoveries the run is failed instead, and ``run_abandoned`` is sent;
- a run accepted but not started after ``QUEUED_TIMEOUT_SECONDS`` is enqueued again;
- a waiting run (suspended, or handed back at the end of a time slice) still waiting ``LEASE_SECONDS`` after
  its ``wake_at`` is enqueued again, in case its delayed message was lost;
- a finished run whose stream lacks its terminal event (the worker died between the commit and the append)
  gets it, so no subscriber waits forever;
- an active child run whose parent has finished is cancelled (a child never outlives its parent).

A waiting run whose wait ended (an answer, a child's end) was made due (``wake_at`` now) in the transaction
that ended the wait, so the overdue rule above also covers a wake-up message that was lost.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any

from django.db.models import F, Q
from django.dispatch import Signal
from django.utils import timezone

from . import streams
from .conf import agentflow_settings
from .core import events as ev
from .models import ACTIVE_STATUSES, FINISHED_STATUSES, RunStatus, WorkflowRun

logger = logging.getLogger("agentflow.monitor")

#: Sent when the monitor gives up on a run (too many recoveries). ``sender`` is WorkflowRun, ``run`` the run.
run_abandoned = Signal()


@dataclass
class MonitorReport:
    recovered: int = 0
    abandoned: int = 0
    requeued: int = 0
    woken: int = 0
    terminals_repaired: int = 0
    orphans_cancelled: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def check_runs(now: Any = None) -> MonitorReport:
    from .runs import enqueue

    now = now or timezone.now()
    report = MonitorReport()
    lease_cutoff = now - timedelta(seconds=agentflow_settings.lease_seconds)
    stale = WorkflowRun.objects.filter(status=RunStatus.RUNNING, heartbeat_at__lt=lease_cutoff)
    for run_id, epoch, recoveries in stale.values_list("id", "epoch", "recoveries")[:500]:
        if recoveries >= agentflow_settings.max_recoveries:
            if _abandon(run_id, epoch, recoveries):
                report.abandoned += 1
            continue
        # Conditional on the epoch and the old heartbeat, so two monitors never recover the same lease twice.
        if WorkflowRun.objects.filter(id=run_id, epoch=epoch, heartbeat_at__lt=lease_cutoff).update(
            recoveries=F("recoveries") + 1, heartbeat_at=now
        ):
            logger.warning("run %s: lease of epoch %s expired; enqueueing it again", run_id, epoch)
            enqueue(str(run_id), epoch)
            report.recovered += 1

    queued_cutoff = now - timedelta(seconds=agentflow_settings.queued_timeout_seconds)
    # heartbeat_at of a queued run is when the monitor last enqueued it again.
    never_started = WorkflowRun.objects.filter(status=RunStatus.QUEUED, created_at__lt=queued_cutoff).filter(
        Q(heartbeat_at__isnull=True) | Q(heartbeat_at__lt=queued_cutoff)
    )
    for run_id, epoch in never_started.values_list("id", "epoch")[:500]:
        if WorkflowRun.objects.filter(id=run_id, epoch=epoch, status=RunStatus.QUEUED).update(
            heartbeat_at=now
        ):
            logger.warning("run %s: queued but never started; enqueueing it again", run_id)
            enqueue(str(run_id), epoch)
            report.requeued += 1

    # Grace of one lease after wake_at: the run's own delayed message normally claims it at wake_at.
    # heartbeat_at of a waiting run is when it was handed back or last enqueued again.
    overdue = WorkflowRun.objects.filter(status=RunStatus.WAITING, wake_at__lt=lease_cutoff).filter(
        Q(heartbeat_at__isnull=True) | Q(heartbeat_at__lt=lease_cutoff)
    )
    for run_id, epoch in overdue.values_list("id", "epoch")[:500]:
        if (
            WorkflowRun.objects.filter(
                id=run_id, epoch=epoch, status=RunStatus.WAITING, wake_at__lt=lease_cutoff
            )
            .filter(Q(heartbeat_at__isnull=True) | Q(heartbeat_at__lt=lease_cutoff))
            .update(heartbeat_at=now)
        ):
            logger.warning("run %s: overdue after waiting; enqueueing it again", run_id)
            enqueue(str(run_id), epoch)
            report.woken += 1

    # Grace of one lease: a live worker appends the terminal event right after committing the status.
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


def _abandon(run_id: Any, epoch: int, recoveries: int) -> bool:
    error = {
        "type": "RunAbandoned",
        "code": "run_abandoned",
        "message": f"the run's worker was lost {recoveries + 1} times; giving up after {recoveries} recoveries",
    }
    from django.db import transaction

    from .waits import cancel_children, wake_parent

    with transaction.atomic():
        updated = WorkflowRun.objects.filter(id=run_id, epoch=epoch, status=RunStatus.RUNNING).update(
            status=RunStatus.FAILED, error=error, finished_at=timezone.now(), epoch=epoch + 1
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
