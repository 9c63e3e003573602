"""Resume a failed or cancelled run from its last checkpoint: :func:`resume`.

Resuming starts a new incarnation of the same run: its failed steps are forgotten, so they execute again,
while its completed steps replay from their checkpoints. The run keeps its id, input, events and completed
steps; its stream goes on after the earlier terminal event with ``run.resumed`` (so a client that saw
``run.failed`` or ``run.cancelled`` subscribes again with that event's id to follow the resumed run), which
lists the steps that run again: what they emitted before is void (docs/topics/events.md, rule 2).
"""

from __future__ import annotations

import logging
from typing import Any

from django.db import transaction
from django.utils import timezone

from . import streams
from .conf import agentflow_settings
from .core import events as ev
from .core.errors import RunNotResumable
from .core.serialization import dumps
from .core.usage import Budget
from .models import RunStatus, StepRun, StepStatus, WorkflowRun

logger = logging.getLogger("agentflow.runs")

RESUMABLE_STATUSES = (RunStatus.FAILED, RunStatus.CANCELLED)


_KEEP: Any = object()


def resume(run: Any, *, budget: Any = _KEEP) -> WorkflowRun:
    """Queue a failed or cancelled run again, from its last checkpoint. Returns the run, now ``queued``.

    In one transaction: the run's failed step checkpoints are deleted, its failed or cancelled child runs
    are resumed too (keeping their budgets), its error, output, finish time,
    cancellation request and recovery count are cleared, and its epoch is bumped (fencing anything a former
    incarnation still holds). Once that commits, the run's stream is made persistent again (rebuilt from the
    archive if it expired) and the run is enqueued; the worker that takes it emits ``run.resumed``.
    Raises ``RunNotFound``, or ``RunNotResumable`` if the run is not failed or cancelled.

    ``budget`` (``{"usd": ..., "tokens": ...}``, a ``Budget`` or ``None`` for no limit) replaces the run's:
    a run stopped by its budget would stop again at once without a larger one. Its usage so far still counts.
    """
    from .runs import get_run

    limit = Budget.parse(budget) if budget is not _KEEP else None
    current = get_run(run)
    with transaction.atomic():
        locked = WorkflowRun.objects.select_for_update().get(pk=current.pk)
        if locked.status not in RESUMABLE_STATUSES:
            raise RunNotResumable(
                f"run {locked.pk} is {locked.status}: only a failed or cancelled run can be resumed",
                details={"status": locked.status},
            )
        StepRun.objects.filter(run=locked, status=StepStatus.FAILED).delete()
        locked.status = RunStatus.QUEUED
        locked.output = locked.error = locked.finished_at = None
        locked.cancel_requested = False
        locked.epoch += 1
        # A fresh budget for the monitor: the recoveries of the earlier incarnations are not this one's.
        locked.recoveries = 0
        # Its message is owed from now (agentflow.dispatch): for the monitor, the run waits for a worker.
        locked.dispatch_pending, locked.enqueued_at = True, timezone.now()
        locked.queue = locked.queue or agentflow_settings.task_queue
        locked.worker = ""
        # Unset until this incarnation's events are archived again, which is what the monitor looks for
        # when it repairs a missing terminal event.
        locked.last_event_id = ""
        if budget is not _KEEP:
            locked.budget = limit.as_dict() if limit is not None else None
        locked.save(
            update_fields=[
                "status", "output", "error", "finished_at", "cancel_requested", "epoch", "recoveries",
                "dispatch_pending", "enqueued_at", "queue", "worker", "last_event_id", "budget",
            ]
        )  # fmt: skip
        run_id, epoch = str(locked.pk), locked.epoch
        queue = locked.queue
        transaction.on_commit(lambda: _reopen_and_enqueue(run_id, epoch, queue))
        # Its failed or cancelled child runs go on too: the steps that started them run again (a failed
        # step) or wait for them again (a step cancelled while it waited), and find the same child runs.
        for child_id in locked.children.filter(status__in=RESUMABLE_STATUSES).values_list("pk", flat=True):
            resume(child_id)
    return locked


def _reopen_and_enqueue(run_id: str, epoch: int, queue: str) -> None:
    from . import dispatch

    try:
        reopen_stream(run_id)
    except Exception:  # Redis down: the worker cannot claim the run either; the monitor enqueues it again
        logger.exception("run %s: could not reopen its stream for the resume", run_id)
    dispatch.send(run_id, epoch, queue=queue)


def reopen_stream(run_id: str) -> None:
    """Keep a finished run's stream for its next incarnation: cancel its expiry, or rebuild it if it expired.

    A rebuilt stream holds the archived events under their original ids, so ``after=<id>`` keeps working, and
    its meta hash counts the workflow-level content events already appended, so replaying the workflow body
    does not append them twice.
    """
    from .archive import archived_events

    client = streams.get_client()
    stream, meta = streams.stream_key(run_id), streams.meta_key(run_id)
    pipe = client.pipeline(transaction=False)
    pipe.persist(stream)
    pipe.persist(meta)
    pipe.exists(stream)
    if pipe.execute()[-1]:
        return
    events = archived_events(run_id)
    if not events:
        return
    content = sum(1 for e in events if e["step"] is None and e["type"] in ev.CONTENT_TYPES)
    pipe = client.pipeline(transaction=True)
    for event in events:
        pipe.xadd(stream, {"d": dumps({k: v for k, v in event.items() if k != "id"})}, id=event["id"])
    pipe.hsetnx(meta, "seq", 0)
    pipe.hsetnx(meta, "wfc", content)
    pipe.execute()
