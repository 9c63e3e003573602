"""The hand-off of a run that waits, against PostgreSQL and Redis: a wait that ended while the incarnation was
still handing the run back is found, and what ends a wait makes the run due in the same transaction."""

from __future__ import annotations

import time

import pytest
from django.test import override_settings
from django.utils import timezone

from agentflow import streams
from agentflow.conf import agentflow_settings
from agentflow.core.errors import RunSuspended
from agentflow.models import RunStatus, StepRun, WorkflowRun
from agentflow.runner import _suspend

pytestmark = pytest.mark.django_db(transaction=True)


class Recorder:
    """An executor that only records what it is asked to run."""

    enqueued: list[tuple[str, int, float | None]] = []

    def enqueue(
        self, run_id: str, epoch: int, *, countdown_seconds: float | None = None, queue: str | None = None
    ) -> None:
        self.enqueued.append((run_id, epoch, countdown_seconds))


@pytest.fixture(autouse=True)
def recorder(redis_client):
    Recorder.enqueued = []
    with override_settings(
        AGENTFLOW={**agentflow_settings.user_settings, "EXECUTOR": "tests.test_waits_db.Recorder"}
    ):
        yield Recorder


def handing_back(**step_output) -> tuple[WorkflowRun, streams.RedisSink]:
    run = WorkflowRun.objects.create(
        workflow="w", status=RunStatus.RUNNING, epoch=1, started_at=timezone.now()
    )
    StepRun.objects.create(
        run=run, step_id="input:go", component="input", status="waiting", attempts=0,
        input={"key": "go"}, output={"timeout_at": None, **step_output},
    )  # fmt: skip
    return run, streams.RedisSink(str(run.pk), 1, streams.claim(str(run.pk), 1))


def test_an_answer_that_came_during_the_hand_off_makes_the_run_continue_at_once(recorder):
    run, sink = handing_back(answer=True)  # answered while the run was still "running"
    assert _suspend(run, sink, RunSuspended(wake_at=None, reason="input")) == "waiting"
    sink.close()
    run.refresh_from_db()
    assert run.status == "waiting" and run.wait_reason == "input" and run.wake_at is not None
    assert recorder.enqueued == [(str(run.pk), 1, None)]


def test_a_run_waiting_for_an_answer_has_no_wake_up_but_its_time_out(recorder):
    run, sink = handing_back()
    _suspend(run, sink, RunSuspended(wake_at=None, reason="input"))
    run.refresh_from_db()
    assert run.wake_at is None and recorder.enqueued == []
    [waiting] = [e for e in streams.read_events(str(run.pk)) if e["type"] == "run.waiting"]
    assert waiting["data"] == {"wake_at": None, "reason": "input"}

    timed, sink = handing_back(timeout_at=time.time() + 60)
    _suspend(timed, sink, RunSuspended(wake_at=None, reason="input"))
    sink.close()
    timed.refresh_from_db()
    assert timed.wake_at is not None and 55 < recorder.enqueued[0][2] <= 60


def test_a_childs_end_makes_its_waiting_parent_due_in_the_same_transaction(recorder):
    from agentflow.runs import cancel

    parent = WorkflowRun.objects.create(workflow="p", status=RunStatus.WAITING, wait_reason="child", epoch=3)
    child = WorkflowRun.objects.create(workflow="c", status=RunStatus.QUEUED, parent=parent)
    cancel(child)
    parent.refresh_from_db()
    assert parent.wake_at is not None and (str(parent.pk), 3, None) in recorder.enqueued


def test_resuming_a_parent_resumes_its_failed_or_cancelled_children(recorder):
    from agentflow.resuming import resume

    parent = WorkflowRun.objects.create(workflow="p", status=RunStatus.CANCELLED, epoch=2)
    cancelled = WorkflowRun.objects.create(workflow="c", status=RunStatus.CANCELLED, parent=parent, epoch=1)
    done = WorkflowRun.objects.create(workflow="c", status=RunStatus.COMPLETED, parent=parent, epoch=1)
    StepRun.objects.create(run=parent, step_id="workflow:c#0", component="workflow:c", status="waiting",
                           output={"run": str(cancelled.pk)})  # fmt: skip
    resume(parent)
    cancelled.refresh_from_db()
    done.refresh_from_db()
    assert (cancelled.status, cancelled.epoch) == ("queued", 2) and done.status == "completed"
    assert {run_id for run_id, _, _ in recorder.enqueued} == {str(parent.pk), str(cancelled.pk)}
