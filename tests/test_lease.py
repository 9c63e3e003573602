"""The lease's heartbeat: one statement renews it, reads the cancellation flag and writes the usage totals."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from agentflow.models import WorkflowRun
from agentflow.store import Lease

pytestmark = pytest.mark.django_db


def test_a_beat_renews_the_lease_reads_cancellation_and_writes_changed_usage():
    run = WorkflowRun.objects.create(workflow="three-steps", status="running", epoch=3)
    lease = Lease(str(run.pk), 3, interval_seconds=60)
    usage: dict[str, Any] = {"calls": 1, "total_tokens": 10}
    lease.usage = lambda: dict(usage)  # like RunContext.usage_snapshot: a copy each time
    with CaptureQueriesContext(connection) as queries:
        lease.beat()
    assert len(queries) == 1
    run.refresh_from_db()
    assert run.heartbeat_at is not None and run.usage == usage and not lease.cancelled
    first_beat = run.heartbeat_at

    WorkflowRun.objects.filter(pk=run.pk).update(cancel_requested=True, usage={"calls": 0})
    lease.beat()  # usage unchanged since the last write: not written again
    run.refresh_from_db()
    assert lease.cancelled and run.usage == {"calls": 0} and run.heartbeat_at > first_beat

    usage["calls"] = 2
    lease.beat()
    run.refresh_from_db()
    assert run.usage == {"calls": 2, "total_tokens": 10}


def test_a_beat_on_a_stale_epoch_marks_the_lease_lost_and_writes_nothing():
    run = WorkflowRun.objects.create(workflow="three-steps", status="running", epoch=4)
    lease = Lease(str(run.pk), 3, interval_seconds=60)
    lease.usage = lambda: {"calls": 9}
    lease.beat()
    run.refresh_from_db()
    assert lease.lost and run.heartbeat_at is None and run.usage == {}
