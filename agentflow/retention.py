"""Retention: delete finished runs (with their checkpoints and archived events) once they are old enough.

``RETENTION_DAYS`` bounds how long a finished run is kept, ``EVENT_RETENTION_DAYS`` how long its archived events
are (they are usually most of the rows). Deletion goes in batches of primary keys, each batch its own short
transaction, so a big table is never locked for long and a prune can be interrupted at any point. Active runs
(queued, running, waiting) are never touched, however old.
"""

from __future__ import annotations

import datetime
from dataclasses import asdict, dataclass

from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from .conf import agentflow_settings
from .models import FINISHED_STATUSES, RunEvent, StepRun, WorkflowRun


@dataclass
class PruneResult:
    """What a prune deleted (or, in a dry run, would delete)."""

    runs: int = 0
    steps: int = 0
    events: int = 0
    batches: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def _cutoff(days: float | None, now: datetime.datetime) -> datetime.datetime | None:
    return None if days is None else now - datetime.timedelta(days=days)


def expired_runs(cutoff: datetime.datetime) -> QuerySet[WorkflowRun]:
    """Finished runs that ended before ``cutoff`` (or, never started, were created before it)."""
    ended = Q(finished_at__lt=cutoff) | Q(finished_at__isnull=True, created_at__lt=cutoff)
    return WorkflowRun.objects.filter(ended, status__in=FINISHED_STATUSES)


def _expired_events(cutoff: datetime.datetime) -> QuerySet[RunEvent]:
    ended = Q(run__finished_at__lt=cutoff) | Q(run__finished_at__isnull=True, run__created_at__lt=cutoff)
    return RunEvent.objects.filter(ended, run__status__in=FINISHED_STATUSES)


def prune(
    batch_size: int = 1000, now: datetime.datetime | None = None, *, dry_run: bool = False
) -> PruneResult:
    """Delete what ``RETENTION_DAYS`` and ``EVENT_RETENTION_DAYS`` no longer keep; returns the counts."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    now = now or timezone.now()
    result = PruneResult()
    run_cutoff = _cutoff(agentflow_settings.retention_days, now)
    event_cutoff = _cutoff(agentflow_settings.event_retention_days, now)
    if dry_run:
        if run_cutoff is not None:
            runs = expired_runs(run_cutoff)
            result.runs = runs.count()
            result.steps = StepRun.objects.filter(run__in=runs).count()
            result.events = RunEvent.objects.filter(run__in=runs).count()
        if event_cutoff is not None:
            events = _expired_events(event_cutoff)
            if run_cutoff is not None:
                events = events.exclude(run__in=expired_runs(run_cutoff))
            result.events += events.count()
        return result
    if run_cutoff is not None:
        _prune_runs(run_cutoff, batch_size, result)
    if event_cutoff is not None:
        _prune_events(event_cutoff, batch_size, result)
    return result


def _prune_runs(cutoff: datetime.datetime, batch_size: int, result: PruneResult) -> None:
    candidates = expired_runs(cutoff).order_by("pk").values_list("pk", flat=True)
    last = None
    while True:
        page = candidates if last is None else candidates.filter(pk__gt=last)
        ids = list(page[:batch_size])
        if not ids:
            return
        last = ids[-1]
        # A run's events first, in batches of their own: a run can have many thousands.
        _delete_events(
            RunEvent.objects.filter(run_id__in=ids, run__status__in=FINISHED_STATUSES), batch_size, result
        )
        with transaction.atomic():
            # Lock the rows and check again: a run resumed since it was listed is active now and stays. A row
            # locked by someone else is skipped this time, not waited for.
            ids = list(
                WorkflowRun.objects.select_for_update(skip_locked=True)
                .filter(pk__in=ids, status__in=FINISHED_STATUSES)
                .values_list("pk", flat=True)
            )
            if ids:
                # Children first, each one DELETE: no Python-side cascade loading every event.
                result.events += RunEvent.objects.filter(run_id__in=ids).delete()[0]
                result.steps += StepRun.objects.filter(run_id__in=ids).delete()[0]
                result.runs += WorkflowRun.objects.filter(pk__in=ids).delete()[0]
        result.batches += 1


def _prune_events(cutoff: datetime.datetime, batch_size: int, result: PruneResult) -> None:
    _delete_events(_expired_events(cutoff), batch_size, result)


def _delete_events(events: QuerySet[RunEvent], batch_size: int, result: PruneResult) -> None:
    candidates = events.order_by("pk").values_list("pk", flat=True)
    while True:
        ids = list(candidates[:batch_size])
        if not ids:
            return
        with transaction.atomic():
            result.events += RunEvent.objects.filter(pk__in=ids).delete()[0]
        result.batches += 1
