"""Durable run records: the database is the source of truth for a run's state and its checkpoints."""

from __future__ import annotations

import uuid
from typing import Any

from django.conf import settings
from django.db import models
from django.db.models import Q


class RunStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    WAITING = "waiting", "Waiting"
    COMPLETED = "completed", "Completed"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


ACTIVE_STATUSES = (RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.WAITING)
FINISHED_STATUSES = (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED)


class WorkflowRun(models.Model):
    """One run of a workflow, across all its incarnations (``epoch`` counts them)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    workflow = models.CharField(max_length=100)
    status = models.CharField(max_length=16, choices=RunStatus.choices, default=RunStatus.QUEUED)
    input = models.JSONField(default=dict, blank=True)
    output = models.JSONField(null=True, blank=True)
    error = models.JSONField(null=True, blank=True, help_text="{type, message, step} of the failure.")
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="agentflow_runs",
    )
    idempotency_key = models.CharField(max_length=255, null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Fencing token: bumped by every (re)start; writes from an older epoch are refused.
    epoch = models.PositiveIntegerField(default=0)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    worker = models.CharField(max_length=255, blank=True, default="", help_text="Worker holding the lease.")
    recoveries = models.PositiveIntegerField(default=0)
    cancel_requested = models.BooleanField(default=False)
    # When a waiting run continues: a long retry delay or agentflow.sleep() suspended it until then, or its
    # worker handed it back at the end of a time slice (wake_at = then). The monitor wakes overdue runs.
    wake_at = models.DateTimeField(null=True, blank=True)
    # The run's message to a worker (agentflow.dispatch). enqueued_at: when the message the run waits for was
    # sent (while dispatch_pending: when sending it was last tried); None while a worker holds the run and once
    # it ended. dispatch_pending: the message is owed and the broker has not accepted it yet (an outbox: set in
    # the transaction that makes the run need a worker, cleared once the broker took the message).
    enqueued_at = models.DateTimeField(null=True, blank=True)
    dispatch_pending = models.BooleanField(default=False)
    # The Celery queue the run's messages go to: TASK_QUEUE where it was started. Empty: the sender's own.
    queue = models.CharField(max_length=200, blank=True, default="")
    last_event_id = models.CharField(max_length=64, blank=True, default="")
    step_count = models.PositiveIntegerField(default=0)
    usage = models.JSONField(
        default=dict, blank=True, help_text="Tokens and cost of every step so far (agentflow.core.usage)."
    )
    budget = models.JSONField(
        null=True, blank=True, help_text='Spending limit: {"usd": ..., "tokens": ...}; None: no limit.'
    )
    # What a waiting run waits for: run.waiting's reason ("input", "child", "sleep", "retry", "slice", "drain").
    wait_reason = models.CharField(max_length=16, blank=True, default="")
    # A child run (agentflow.run_workflow) points at its parent run and the parent's step that started it.
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="children"
    )
    parent_step = models.CharField(max_length=500, blank=True, default="")
    # Stream tokens are bound to it: agentflow.access.revoke_stream_tokens() bumps it, refusing every token
    # made before.
    stream_token_generation = models.PositiveIntegerField(default=0, editable=False)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            # The admin's and the API's default order (newest first, the id breaking ties).
            models.Index(fields=["-created_at", "-id"], name="agentflow_run_created"),
            models.Index(fields=["owner", "-created_at"], name="agentflow_run_owner_created"),
            models.Index(fields=["workflow", "-created_at"], name="agentflow_run_wf_created"),
            models.Index(fields=["status", "heartbeat_at"], name="agentflow_run_status_hb"),
            # Runs waiting for a worker (the monitor and the dispatcher look for these): few rows, whatever the
            # table's size.
            models.Index(
                fields=["enqueued_at"], condition=Q(enqueued_at__isnull=False), name="agentflow_run_enqueued"
            ),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["owner", "workflow", "idempotency_key"],
                condition=Q(idempotency_key__isnull=False),
                name="agentflow_run_idempotency",
            ),
            # NULLs are distinct in a unique index: runs started without an owner need their own.
            models.UniqueConstraint(
                fields=["workflow", "idempotency_key"],
                condition=Q(idempotency_key__isnull=False, owner__isnull=True),
                name="agentflow_run_idempotency_no_owner",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.workflow} {self.id} ({self.status})"

    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED_STATUSES

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at is None:
            return None
        end = self.finished_at
        if end is None:
            from django.utils import timezone

            end = timezone.now()
        return (end - self.started_at).total_seconds()

    def wait(self, timeout_seconds: float | None = None) -> Any:
        """Block until the run ends and return its output; see :func:`agentflow.wait`."""
        from .runs import wait

        return wait(self, timeout_seconds=timeout_seconds)


class StepStatus(models.TextChoices):
    COMPLETED = "completed", "Completed"
    FAILED = "failed", "Failed"
    # Suspended between two attempts (or in agentflow.sleep) until ``output["wake_at"]``, or a wait for input
    # or a child run that is not over; not finished.
    WAITING = "waiting", "Waiting"


class StepRun(models.Model):
    """A step's checkpoint: written once the step completed or failed for good (or suspended the run)."""

    run = models.ForeignKey(WorkflowRun, on_delete=models.CASCADE, related_name="steps")
    step_id = models.CharField(max_length=500)
    parent_id = models.CharField(max_length=500, null=True, blank=True)
    component = models.CharField(max_length=200)
    status = models.CharField(max_length=16, choices=StepStatus.choices)
    input = models.JSONField(null=True, blank=True)
    input_hash = models.CharField(max_length=64, blank=True, default="")
    output = models.JSONField(null=True, blank=True)
    error = models.JSONField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=1)
    cached = models.BooleanField(default=False)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    epoch = models.PositiveIntegerField(default=0)
    usage = models.JSONField(
        null=True,
        blank=True,
        help_text="Tokens and cost of the step's own provider calls, provider, fallbacks.",
    )

    class Meta:
        ordering = ["run", "id"]
        constraints = [models.UniqueConstraint(fields=["run", "step_id"], name="agentflow_step_run_step")]

    def __str__(self) -> str:
        return f"{self.step_id} ({self.status})"

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()

    @property
    def depth(self) -> int:
        return self.step_id.count("/")


class RunEvent(models.Model):
    """An archived stream event; ``stream_id`` keeps the Redis entry id so ``after=<id>`` works unchanged."""

    run = models.ForeignKey(WorkflowRun, on_delete=models.CASCADE, related_name="events")
    stream_id = models.CharField(max_length=64)
    # The two halves of the Redis id, for ordering and range queries ("ms-seq" does not sort as text).
    stream_ms = models.BigIntegerField()
    stream_seq = models.BigIntegerField()
    type = models.CharField(max_length=40)
    step = models.CharField(max_length=500, null=True, blank=True)
    attempt = models.PositiveIntegerField(null=True, blank=True)
    epoch = models.PositiveIntegerField(default=0)
    ts = models.CharField(max_length=40)
    data = models.JSONField(default=dict)

    class Meta:
        ordering = ["run", "stream_ms", "stream_seq"]
        constraints = [
            models.UniqueConstraint(fields=["run", "stream_ms", "stream_seq"], name="agentflow_event_run_id")
        ]

    def __str__(self) -> str:
        return f"{self.stream_id} {self.type}"

    def as_event(self) -> dict[str, Any]:
        return {
            "id": self.stream_id,
            "type": self.type,
            "run": str(self.run_id),
            "step": self.step,
            "attempt": self.attempt,
            "epoch": self.epoch,
            "ts": self.ts,
            "data": self.data,
        }


class ScheduleSource(models.TextChoices):
    CODE = "code", "Code (@workflow(schedule=...))"
    SETTINGS = "settings", "Settings (AGENTFLOW['SCHEDULES'])"
    ADMIN = "admin", "Admin"


class CatchUp(models.TextChoices):
    LATEST = "latest", "Latest: older missed ticks collapse into one run"
    ALL = "all", "All: a run for every missed tick"
    SKIP = "skip", "Skip: older missed ticks get no run"


class Schedule(models.Model):
    """When runs of a workflow start by themselves (``agentflow.schedules``, driven by Celery beat).

    Rows come from ``@workflow(schedule=...)`` and ``AGENTFLOW["SCHEDULES"]`` (kept in step with them by the
    scheduler, read-only in the admin) or are made in the admin. ``next_run_at`` is the next tick not yet
    started; each tick's run has the idempotency key ``schedule:<name>:<tick>``, so it starts once.
    """

    name = models.CharField(max_length=100, unique=True)
    workflow = models.CharField(max_length=100)
    input = models.JSONField(default=dict, blank=True)
    cron = models.CharField(
        max_length=100, blank=True, default="", help_text="minute hour day-of-month month day-of-week"
    )
    every_seconds = models.FloatField(null=True, blank=True, help_text="Or: a tick every this many seconds.")
    timezone = models.CharField(
        max_length=64, blank=True, default="", help_text="Of cron; default TIME_ZONE."
    )
    catch_up = models.CharField(max_length=8, choices=CatchUp.choices, default=CatchUp.LATEST)
    enabled = models.BooleanField(default=True)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="agentflow_schedules",
        help_text="Owner of the runs it starts (none: visible to staff only).",
    )
    source = models.CharField(max_length=8, choices=ScheduleSource.choices, default=ScheduleSource.ADMIN)
    next_run_at = models.DateTimeField(null=True, blank=True)
    last_tick = models.DateTimeField(
        null=True, blank=True, help_text="The latest tick a run was started for."
    )
    last_error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        indexes = [models.Index(fields=["enabled", "next_run_at"], name="agentflow_schedule_due")]

    def __str__(self) -> str:
        return self.name
