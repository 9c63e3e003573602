"""Retention: agentflow.retention.prune, the agentflow_prune command and the agentflow.prune task."""

from __future__ import annotations

import datetime
import io

import pytest
from django.core.management import call_command
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from agentflow.conf import agentflow_settings
from agentflow.models import RunEvent, RunStatus, StepRun, WorkflowRun
from agentflow.retention import prune

pytestmark = pytest.mark.django_db

NOW = timezone.now()


def retention(**keys: object) -> override_settings:
    return override_settings(AGENTFLOW={**agentflow_settings.user_settings, **keys})


def make_run(status: str, days_ago: float, events: int = 3, steps: int = 2) -> WorkflowRun:
    when = NOW - datetime.timedelta(days=days_ago)
    finished = when if status in (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED) else None
    run = WorkflowRun.objects.create(workflow="w", status=status, finished_at=finished)
    WorkflowRun.objects.filter(pk=run.pk).update(created_at=when)
    StepRun.objects.bulk_create(
        StepRun(run=run, step_id=f"s#{i}", component="s", status="completed") for i in range(steps)
    )
    ms = int(when.timestamp() * 1000)
    RunEvent.objects.bulk_create(
        RunEvent(run=run, stream_id=f"{ms}-{i}", stream_ms=ms, stream_seq=i, type="status", ts="")
        for i in range(events)
    )
    return run


@pytest.fixture
def runs() -> dict[str, WorkflowRun]:
    return {
        "old_completed": make_run(RunStatus.COMPLETED, 40),
        "old_failed": make_run(RunStatus.FAILED, 35),
        "old_cancelled": make_run(RunStatus.CANCELLED, 31),
        "recent": make_run(RunStatus.COMPLETED, 5),
        "old_running": make_run(RunStatus.RUNNING, 60),
        "old_queued": make_run(RunStatus.QUEUED, 60),
        "old_waiting": make_run(RunStatus.WAITING, 60),
    }


def remaining() -> set[str]:
    return {str(pk) for pk in WorkflowRun.objects.values_list("pk", flat=True)}


def ids(runs: dict[str, WorkflowRun], *names: str) -> set[str]:
    return {str(runs[name].pk) for name in names}


def test_nothing_is_pruned_by_default(runs):
    assert prune(now=NOW).as_dict() == {"runs": 0, "steps": 0, "events": 0, "batches": 0}
    assert len(remaining()) == len(runs)


def test_old_finished_runs_go_with_their_steps_and_events_active_and_recent_ones_stay(runs):
    with retention(RETENTION_DAYS=30):
        result = prune(now=NOW)
    assert (result.runs, result.steps, result.events) == (3, 6, 9)
    kept = ids(runs, "recent", "old_running", "old_queued", "old_waiting")
    assert remaining() == kept
    assert {str(r) for r in StepRun.objects.values_list("run_id", flat=True)} == kept
    assert {str(r) for r in RunEvent.objects.values_list("run_id", flat=True)} == kept


def test_event_retention_prunes_only_events_of_finished_runs(runs):
    with retention(EVENT_RETENTION_DAYS=10):
        result = prune(now=NOW)
    assert (result.runs, result.steps, result.events) == (0, 0, 9)
    assert len(remaining()) == len(runs)
    assert StepRun.objects.count() == 2 * len(runs)
    left = {str(r) for r in RunEvent.objects.values_list("run_id", flat=True)}
    assert left == ids(runs, "recent", "old_running", "old_queued", "old_waiting")


def test_dry_run_counts_and_deletes_nothing(runs):
    with retention(RETENTION_DAYS=30, EVENT_RETENTION_DAYS=1):
        result = prune(now=NOW, dry_run=True)
    # 3 old runs (6 steps, 9 events), plus the recent run's 3 events.
    assert (result.runs, result.steps, result.events, result.batches) == (3, 6, 12, 0)
    assert len(remaining()) == len(runs) and RunEvent.objects.count() == 3 * len(runs)


def test_deletes_in_batches_of_primary_keys(runs):
    with retention(RETENTION_DAYS=30), CaptureQueriesContext(connection) as queries:
        result = prune(batch_size=2, now=NOW)
    assert result.runs == 3
    run_deletes = [q["sql"] for q in queries if q["sql"].startswith('DELETE FROM "agentflow_workflowrun"')]
    assert len(run_deletes) == 2  # 3 runs, 2 a batch
    # Events first, 2 a batch: 6 for the first 2 runs (3 batches), 3 for the last run (2); then 2 of runs.
    assert result.batches == 7
    assert RunEvent.objects.filter(run__status=RunStatus.COMPLETED).count() == 3


def test_batch_size_must_be_positive():
    with pytest.raises(ValueError):
        prune(batch_size=0)


def test_command_prints_counts_and_honours_dry_run(runs):
    out = io.StringIO()
    with retention(RETENTION_DAYS=30):
        call_command("agentflow_prune", "--dry-run", stdout=out)
        assert out.getvalue().strip() == "would delete runs=3 steps=6 events=9"
        assert len(remaining()) == len(runs)
        out = io.StringIO()
        call_command("agentflow_prune", "--batch-size", "10", stdout=out)
    assert out.getvalue().strip() == "deleted runs=3 steps=6 events=9 batches=2"
    assert len(remaining()) == len(runs) - 3


def test_task_prunes(runs):
    from agentflow.tasks import prune_task

    with retention(RETENTION_DAYS=30):
        assert prune_task()["runs"] == 3
