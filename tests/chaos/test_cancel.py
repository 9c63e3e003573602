"""Cancelling a run whose code swallows every ``Exception`` around its sub-steps still stops it: the
cancellation is a ``BaseException`` raised at the next step boundary."""

from __future__ import annotations

import time
import uuid

import pytest

import agentflow
from agentflow.models import StepRun, WorkflowRun
from tests.chaos.conftest import QUEUE, TERMINAL, drive_monitor, events_of
from tests.conftest import wait_for
from tests.testapp.workflows import counts

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

ITERATIONS = 400  # ~20 s of sub-steps if nothing stopped it


@pytest.mark.parametrize("in_body", [False, True], ids=["in-a-step", "in-the-workflow-body"])
def test_cancel_stops_a_loop_that_swallows_exceptions(worker_factory, chaos_settings, in_body):
    worker_factory(queue=QUEUE, name="chaos-cancel")
    tag = uuid.uuid4().hex
    run_id = str(
        agentflow.start("swallow-cancel", {"tag": tag, "iterations": ITERATIONS, "in_body": in_body}).pk
    )
    # Some sub-steps ran, and some of them failed (every third one) and were swallowed.
    wait_for(lambda: counts(tag).get("tick", 0) >= 8, 30, "the loop to run sub-steps")

    asked = time.monotonic()
    agentflow.cancel(run_id)
    wait_for(lambda: WorkflowRun.objects.get(pk=run_id).status == "cancelled", 10, "the run to stop")
    stopped_after = time.monotonic() - asked
    ticks = counts(tag)["tick"]
    time.sleep(0.5)  # nothing runs on after the cancellation
    assert counts(tag)["tick"] == ticks < ITERATIONS
    assert stopped_after < 5

    wait_for(lambda: any(e["type"] in TERMINAL for e in events_of(run_id)), 10, "the terminal event")
    events = events_of(run_id)
    assert [e["type"] for e in events if e["type"] in TERMINAL] == ["run.cancelled"]
    assert events[-1]["type"] == "run.cancelled"
    failed = [e for e in events if e["type"] == "step.failed"]
    assert failed and all(e["data"]["error"]["type"] == "ValueError" for e in failed)
    # The step that swallowed exceptions did not complete: it was interrupted, not finished.
    assert not StepRun.objects.filter(run_id=run_id, step_id="swallowing_loop#0").exists()
    run = WorkflowRun.objects.get(pk=run_id)
    assert run.cancel_requested and run.output is None and run.recoveries == 0


def test_cancel_reaches_a_run_whose_worker_died(worker_factory, chaos_settings):
    """Cancelled while its worker is dead: the recovering incarnation stops at its first step boundary."""
    doomed = worker_factory(queue=QUEUE, name="chaos-cancel-doomed")
    tag = uuid.uuid4().hex
    run_id = str(agentflow.start("swallow-cancel", {"tag": tag, "iterations": ITERATIONS}).pk)
    wait_for(lambda: counts(tag).get("tick", 0) >= 4, 30, "the loop to run sub-steps")
    doomed.kill()
    agentflow.cancel(run_id)
    assert WorkflowRun.objects.get(pk=run_id).status == "running"  # nobody is left to notice yet
    ticks = counts(tag)["tick"]

    worker_factory(queue=QUEUE, name="chaos-cancel-rescuer")
    wait_for(lambda: drive_monitor(0.2), 15, "the monitor to recover the run", poll_seconds=0)
    wait_for(lambda: WorkflowRun.objects.get(pk=run_id).status == "cancelled", 15, "the run to stop")
    wait_for(lambda: any(e["type"] in TERMINAL for e in events_of(run_id)), 10, "the terminal event")
    events = events_of(run_id)
    assert [e["type"] for e in events if e["type"] in TERMINAL] == ["run.cancelled"]
    recovered = [e for e in events if e["type"] == "run.recovered"]
    assert len(recovered) == 1 and recovered[0]["epoch"] == 2
    # The new incarnation started no sub-step: it stopped at the first boundary (replayed ones included).
    assert counts(tag)["tick"] == ticks
    assert not [e for e in events if e["type"] == "step.started" and e["epoch"] == 2]
