"""The data of a terminal event the monitor appends, as docs/topics/events.md describes it."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from agentflow import streams
from agentflow.models import RunStatus, WorkflowRun
from agentflow.monitor import append_terminal

pytestmark = pytest.mark.django_db


def terminal_data(run: WorkflowRun) -> dict:
    assert append_terminal(run) is True
    return streams.read_events(str(run.pk))[-1]["data"]


def test_a_repaired_failure_has_its_duration_and_no_traceback(redis_client):
    finished = timezone.now()
    error = {"type": "ValueError", "message": "boom", "traceback": "Traceback (most recent call last): ..."}
    run = WorkflowRun.objects.create(
        workflow="w",
        status=RunStatus.FAILED,
        epoch=1,
        error=error,
        started_at=finished - timedelta(seconds=2.5),
        finished_at=finished,
    )
    assert terminal_data(run) == {
        "duration_seconds": 2.5,
        "error": {"type": "ValueError", "message": "boom"},
    }


def test_a_run_that_never_started_has_a_null_duration(redis_client):
    run = WorkflowRun.objects.create(workflow="w", status=RunStatus.CANCELLED, finished_at=timezone.now())
    assert terminal_data(run) == {"duration_seconds": None}
