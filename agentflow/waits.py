"""Waits on the database: what ends a run's wait makes it due, and child runs live and die with their parent.

The engine (:mod:`agentflow.core.waits`) checkpoints a wait and hands the run back. From then on, whatever ends
the wait does two things in the transaction that records it (an answer in :mod:`agentflow.inputs`, a child
run's final status in the runner, a cancellation): it sets the waiting run's ``wake_at`` to now with its
message owed (:mod:`agentflow.dispatch`), and once that commits the message is sent. If the send fails or
the process dies right after the commit, the owed message is sent by a worker or the monitor; if the message
is lost later, the monitor sends it again: a wait that is over is never forgotten.

A run that is still handing itself back when its wait ends (status ``running`` for a few milliseconds more)
is not woken by the answer; :func:`due_now`, called by the runner under the run's row lock as it records
the hand-off, finds the wait over and makes the run due at once.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from django.db import transaction
from django.utils import timezone

from . import dispatch
from .core.context import WAITING, Checkpoint, StepRecord
from .core.usage import Budget
from .core.waits import CHILD_PREFIX, INPUT, ChildResult
from .models import ACTIVE_STATUSES, FINISHED_STATUSES, RunStatus, StepRun, WorkflowRun

logger = logging.getLogger("agentflow.waits")


def _run_in(store: Any, fn: Any) -> Any:
    """Call ``fn`` where the run's DB work happens: the store's DB thread under an event loop."""
    call = getattr(store, "call", None)
    return call(fn) if call is not None else fn()


class DjangoWaits:
    """The runner's :class:`agentflow.core.waits.WaitService`."""

    def __init__(self, run_id: str, epoch: int, store: Any = None) -> None:
        self.run_id = str(run_id)
        self.epoch = epoch
        self.store = store

    def expire_input(self, record: StepRecord) -> Checkpoint:
        return _run_in(self.store, lambda: self._expire(record))  # type: ignore[no-any-return]

    def _expire(self, record: StepRecord) -> Checkpoint:
        # Conditional, like every write of an incarnation: unless an answer came meanwhile, and only for our epoch.
        with transaction.atomic():
            row = (
                StepRun.objects.select_for_update(of=("self",))
                .filter(run__pk=self.run_id, step_id=record.step_id, run__epoch=self.epoch)
                .first()
            )
            if row is not None and row.status == WAITING and "answer" not in (row.output or {}):
                row.status, row.error, row.finished_at = record.status, record.error, timezone.now()
                row.save(update_fields=["status", "error", "finished_at"])
        if row is None:
            from .core.errors import LeaseLost

            raise LeaseLost(
                f"run {self.run_id}: epoch {self.epoch} is stale, time-out of {record.step_id!r} refused"
            )
        return Checkpoint(row.status, row.output, row.error, row.attempts, row.input_hash or None, row.usage)

    def start_child(self, step_id: str, workflow: str, input: dict[str, Any], budget: Budget | None) -> str:
        return _run_in(self.store, lambda: self._start(step_id, workflow, input, budget))  # type: ignore[no-any-return]

    def _start(self, step_id: str, workflow: str, input: dict[str, Any], budget: Budget | None) -> str:
        from .core.workflow import registry
        from .runs import start

        parent = WorkflowRun.objects.only("id", "owner_id", "epoch").get(pk=self.run_id)
        if parent.epoch != self.epoch:
            from .core.errors import LeaseLost

            raise LeaseLost(f"run {self.run_id}: epoch {self.epoch} is stale, child {step_id!r} not started")
        own = registry.get(workflow).budget
        # The same key in every incarnation: a parent that died after starting the child finds it again.
        key = f"child:{self.run_id}:{step_id}"
        if len(key) > 255:
            from .core.serialization import stable_hash

            key = f"child:{self.run_id}:{stable_hash(step_id)}"
        child = start(
            workflow,
            input,
            owner=parent.owner_id,
            idempotency_key=key,
            budget=_tighter(own, budget),
            parent=parent,
            parent_step=step_id,
        )
        return str(child.pk)

    def child_result(self, run_id: str) -> ChildResult | None:
        return _run_in(self.store, lambda: _child_result(run_id))  # type: ignore[no-any-return]


def _tighter(one: Budget | None, other: Budget | None) -> Budget | None:
    if one is None or other is None:
        return one or other

    def least(a: Any, b: Any) -> Any:
        return b if a is None else a if b is None else min(a, b)

    return Budget(usd=least(one.usd, other.usd), tokens=least(one.tokens, other.tokens))


def _child_result(run_id: str) -> ChildResult | None:
    child = WorkflowRun.objects.filter(pk=run_id).values("status", "output", "error", "usage").first()
    if child is None:  # deleted under the parent (retention runs on finished runs only)
        return ChildResult("failed", None, {"type": "RunNotFound", "message": f"child run {run_id} is gone"})
    if child["status"] not in FINISHED_STATUSES:
        return None
    error = {k: v for k, v in (child["error"] or {}).items() if k != "traceback"} or None
    return ChildResult(child["status"], child["output"], error, child["usage"] or None)


def make_due(run_id: Any) -> tuple[int, str] | None:
    """Within the caller's transaction: if the run waits, make it due now, its message owed
    (:mod:`agentflow.dispatch`). Returns the epoch and queue to send it with once the transaction commits,
    or None if it is not waiting."""
    now = timezone.now()
    run = (
        WorkflowRun.objects.select_for_update()
        .filter(pk=run_id)
        .only("id", "status", "epoch", "queue")
        .first()
    )
    if run is None or run.status != RunStatus.WAITING:
        return None
    WorkflowRun.objects.filter(pk=run_id).update(wake_at=now, heartbeat_at=now, **dispatch.owed(now))
    return run.epoch, run.queue


def wake(run_id: Any) -> None:
    """Within the caller's transaction: make a waiting run due now, and send it once that commits."""
    due = make_due(run_id)
    if due is not None:
        epoch, queue = due
        dispatch.send_on_commit(str(run_id), epoch, queue=queue, robust=True)


def wake_parent(parent_id: Any) -> None:
    """A child run's final status is being committed: its parent (if it waits) continues."""
    wake(parent_id)


def due_now(run_id: str) -> bool:
    """Whether a wait of the run is over already: an input answered, or a child run ended, that its
    checkpoints still show as waiting. Called when the run is handed back."""
    waiting = StepRun.objects.filter(run__pk=run_id, status=WAITING)
    if waiting.filter(component=INPUT, output__has_key="answer").exists():
        return True
    child_steps = waiting.filter(component__startswith=CHILD_PREFIX).values("step_id")
    return WorkflowRun.objects.filter(
        parent__pk=run_id, parent_step__in=child_steps, status__in=FINISHED_STATUSES
    ).exists()


def next_timer(run_id: str) -> datetime | None:
    """The earliest time one of the run's waits ends by itself: a retry's or sleep's wake-up, an input's
    time-out. None when it only waits for something to happen."""
    times = []
    for output in StepRun.objects.filter(run__pk=run_id, status=WAITING).values_list("output", flat=True):
        output = output or {}
        when = output.get("wake_at") if "wake_at" in output else output.get("timeout_at")
        if isinstance(when, int | float) and "answer" not in output:
            times.append(when)
    return datetime.fromtimestamp(min(times), tz=UTC) if times else None


def cancel_children(run_id: Any) -> int:
    """Cancel the run's active child runs (and theirs, through ``cancel``). Returns how many."""
    from .runs import cancel

    children = list(
        WorkflowRun.objects.filter(parent_id=run_id, status__in=ACTIVE_STATUSES).values_list("pk", flat=True)
    )
    for child_id in children:
        try:
            cancel(child_id)
        except Exception:  # the monitor cancels children of finished runs on its next pass
            logger.exception("run %s: could not cancel its child run %s", run_id, child_id)
    return len(children)
