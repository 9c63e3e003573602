"""Crash recovery: a worker SIGKILLed mid-run, another worker, the monitor, and no completed step run twice."""

from __future__ import annotations

import uuid

import pytest
from django.test import override_settings

import agentflow
from agentflow import streams
from agentflow.conf import agentflow_settings
from agentflow.models import StepRun, WorkflowRun
from agentflow.monitor import check_runs
from tests.conftest import wait_for
from tests.testapp.workflows import counts

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

CHAOS = {**agentflow_settings.user_settings, "TASK_QUEUE": "agentflow-chaos"}


def completed_steps(run_id: str) -> list[str]:
    return [e["step"] for e in streams.read_events(run_id) if e["type"] == "step.completed"]


@override_settings(AGENTFLOW=CHAOS)
def test_sigkilled_worker_run_finishes_elsewhere_without_redoing_completed_steps(worker_factory):
    first = worker_factory(queue="agentflow-chaos", name="doomed")
    tag = uuid.uuid4().hex
    steps = 8
    run = agentflow.start("slow", {"tag": tag, "steps": steps, "delay_seconds": 0.25})
    run_id = str(run.id)

    wait_for(lambda: len(completed_steps(run_id)) >= 3, 30, "three completed steps")
    first.kill()
    done_before_kill = completed_steps(run_id)
    checkpointed = set(StepRun.objects.filter(run_id=run_id).values_list("step_id", flat=True))
    assert set(done_before_kill) <= checkpointed

    worker_factory(queue="agentflow-chaos", name="rescuer")
    # The dead worker's lease expires after LEASE_SECONDS; the monitor then hands the run to the new worker.
    wait_for(lambda: check_runs().recovered, 15, "the monitor to recover the run", poll_seconds=0.2)
    assert agentflow.wait(run_id, timeout_seconds=60) == sum(range(steps))

    effects = counts(tag)
    for index in range(steps):
        step = f"slow_step#{index}"
        if step in checkpointed:
            assert effects[f"slow-{index}"] == 1, f"completed step {step} ran again"
        else:
            assert 1 <= effects[f"slow-{index}"] <= 2  # an interrupted step runs again (at-least-once)
    run = WorkflowRun.objects.get(pk=run_id)
    assert run.status == "completed" and run.epoch == 2 and run.recoveries == 1

    events = streams.read_events(run_id)
    recovered = [e for e in events if e["type"] == "run.recovered"]
    assert len(recovered) == 1 and recovered[0]["epoch"] == 2
    interrupted = [f"slow_step#{i}" for i in range(steps) if f"slow_step#{i}" not in checkpointed]
    assert set(recovered[0]["data"]["void_steps"]) <= {interrupted[0]}
    # Replay emitted nothing twice: each step completed once in the stream, each status text once.
    assert sorted(completed_steps(run_id)) == sorted(f"slow_step#{i}" for i in range(steps))
    statuses = [e["data"]["text"] for e in events if e["type"] == "status"]
    assert statuses == [f"step {i} done" for i in range(steps)]
    assert [e["type"] for e in events].count("run.completed") == 1


@override_settings(AGENTFLOW={**CHAOS, "MAX_RECOVERIES": 0})
def test_monitor_fails_a_run_after_too_many_recoveries_and_signals_it(worker_factory):
    from agentflow.monitor import run_abandoned

    doomed = worker_factory(queue="agentflow-chaos", name="doomed")
    run = agentflow.start("slow", {"tag": uuid.uuid4().hex, "steps": 50, "delay_seconds": 0.2})
    run_id = str(run.id)
    wait_for(lambda: completed_steps(run_id), 30, "a completed step")
    doomed.kill()

    abandoned = []

    def receiver(sender, run, **kwargs):
        abandoned.append(str(run.pk))

    run_abandoned.connect(receiver)
    try:
        wait_for(lambda: check_runs().abandoned, 15, "the monitor to give up", poll_seconds=0.2)
    finally:
        run_abandoned.disconnect(receiver)
    assert abandoned == [run_id]
    run = WorkflowRun.objects.get(pk=run_id)
    assert run.status == "failed" and run.error["code"] == "run_abandoned"
    last = streams.read_events(run_id)[-1]
    assert last["type"] == "run.failed" and last["data"]["error"]["code"] == "run_abandoned"
    with pytest.raises(agentflow.RunFailed):
        agentflow.wait(run_id, timeout_seconds=5)
