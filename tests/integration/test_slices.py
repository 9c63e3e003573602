"""Time slices, suspension, graceful drain and cancellation through code that swallows exceptions, on real
Celery workers whose settings differ from the test process's (``AGENTFLOW_TEST_OVERRIDES``)."""

from __future__ import annotations

import json
import os
import signal
import time
import uuid

import pytest
from django.test import override_settings

import agentflow
from agentflow import streams
from agentflow.conf import agentflow_settings
from agentflow.models import StepRun, WorkflowRun
from tests.conftest import wait_for
from tests.testapp.workflows import counts

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

QUEUE = "agentflow-slices"
SETTINGS = {**agentflow_settings.user_settings, "TASK_QUEUE": QUEUE}


@pytest.fixture(autouse=True)
def _queue():
    with override_settings(AGENTFLOW=SETTINGS):
        yield


def start_worker(worker_factory, name="w", **overrides):
    env = {"AGENTFLOW_TEST_OVERRIDES": json.dumps({"TASK_QUEUE": QUEUE, **overrides})}
    return worker_factory(queue=QUEUE, name=name, env=env)


def events(run_id) -> list[dict]:
    return streams.read_events(str(run_id))


def of_type(run_id, type_: str) -> list[dict]:
    return [e for e in events(run_id) if e["type"] == type_]


def status(run_id) -> str:
    return WorkflowRun.objects.get(pk=run_id).status


def test_time_slices_one_task_per_slice_and_no_step_twice(worker_factory):
    # A slice far shorter than a step: every incarnation runs exactly one new step, then hands the run back.
    start_worker(worker_factory, SLICE_SECONDS=0.05)
    tag, steps = uuid.uuid4().hex, 6
    run = agentflow.start("slow", {"tag": tag, "steps": steps, "delay_seconds": 0.1})
    assert agentflow.wait(run, timeout_seconds=60) == sum(range(steps))

    run.refresh_from_db()
    assert run.status == "completed" and run.recoveries == 0
    # One incarnation (one Celery task: each claims epoch + 1) per slice.
    assert run.epoch == steps
    types = [e["type"] for e in events(run.id)]
    assert types.count("run.started") == 1
    assert types.count("run.continued") == steps - 1
    assert "run.recovered" not in types and "step.retrying" not in types
    waiting = of_type(run.id, "run.waiting")
    assert len(waiting) == steps - 1 and {e["data"]["reason"] for e in waiting} == {"slice"}
    assert counts(tag) == {f"slow-{i}": 1 for i in range(steps)}
    assert [e["step"] for e in of_type(run.id, "step.completed")] == [f"slow_step#{i}" for i in range(steps)]
    # Replay re-emitted no workflow-level status event.
    assert [e["data"]["text"] for e in of_type(run.id, "status")] == [f"step {i} done" for i in range(steps)]
    assert types.count("run.completed") == 1


def test_long_retry_delay_suspends_the_run_and_frees_the_worker(worker_factory):
    start_worker(worker_factory, SUSPEND_THRESHOLD_SECONDS=1.0)
    tag = uuid.uuid4().hex
    run = agentflow.start("retry-later", {"tag": tag, "delay_seconds": 4.0})

    wait_for(lambda: status(run.pk) == "waiting", 30, "the run to suspend")
    run.refresh_from_db()
    assert run.wake_at is not None
    [waiting] = of_type(run.id, "run.waiting")
    assert waiting["data"]["reason"] == "retry" and waiting["data"]["wake_at"]
    step = StepRun.objects.get(run=run, step_id="not_yet#0")
    assert step.status == "waiting" and step.attempts == 1
    # The single solo worker is free: another run completes while the first one waits.
    other = agentflow.start("three-steps", {"tag": uuid.uuid4().hex})
    agentflow.wait(other, timeout_seconds=30)
    assert status(run.pk) == "waiting"

    assert agentflow.wait(run, timeout_seconds=30) == ["before", "now", "after"]
    assert counts(tag) == {"before": 1, "not_yet": 2, "after": 1}
    step.refresh_from_db()
    assert step.status == "completed" and step.attempts == 2
    types = [e["type"] for e in events(run.id)]
    assert types.count("run.continued") == 1 and "run.recovered" not in types
    assert [(e["step"], e["attempt"]) for e in of_type(run.id, "step.started")] == [
        ("once#0", 1),
        ("not_yet#0", 1),
        ("not_yet#0", 2),
        ("once#1", 1),
    ]


def test_durable_sleep_suspends_and_resumes_without_rerunning_steps(worker_factory):
    start_worker(worker_factory, SUSPEND_THRESHOLD_SECONDS=1.0)
    tag = uuid.uuid4().hex
    started = time.monotonic()
    run = agentflow.start("sleeper", {"tag": tag, "seconds": 2.0})

    wait_for(lambda: status(run.pk) == "waiting", 30, "the run to suspend")
    [waiting] = of_type(run.id, "run.waiting")
    assert waiting["data"]["reason"] == "sleep"
    assert agentflow.wait(run, timeout_seconds=30) == ["before", "after"]
    assert time.monotonic() - started >= 2.0
    assert counts(tag) == {"before": 1, "after": 1}
    run.refresh_from_db()
    assert run.epoch == 2
    assert StepRun.objects.get(run=run, step_id="sleep#0").status == "completed"


def test_sigterm_drains_the_worker_and_another_finishes_the_run(worker_factory):
    doomed = start_worker(worker_factory, name="draining")
    tag, steps = uuid.uuid4().hex, 12
    run = agentflow.start("slow", {"tag": tag, "steps": steps, "delay_seconds": 0.3})
    wait_for(lambda: len(of_type(run.id, "step.completed")) >= 2, 30, "two completed steps")

    stopped = time.monotonic()
    doomed.stop()  # SIGTERM: warm shutdown
    assert time.monotonic() - stopped < 5, "the worker did not drain promptly"
    assert doomed.process.returncode == 0
    run.refresh_from_db()
    assert run.status == "waiting" and len(of_type(run.id, "step.completed")) < steps
    assert of_type(run.id, "run.waiting")[-1]["data"]["reason"] == "drain"

    start_worker(worker_factory, name="successor")
    assert agentflow.wait(run, timeout_seconds=60) == sum(range(steps))
    assert counts(tag) == {f"slow-{i}": 1 for i in range(steps)}
    types = [e["type"] for e in events(run.id)]
    assert "run.recovered" not in types and types.count("run.continued") == 1
    assert sorted(e["step"] for e in of_type(run.id, "step.completed")) == sorted(
        f"slow_step#{i}" for i in range(steps)
    )


def test_sigterm_drains_a_prefork_worker_child(worker_factory):
    # As `docker stop` does: SIGTERM to the worker's main process only; the child executing the run learns
    # of the shutdown through Redis.
    env = {"AGENTFLOW_TEST_OVERRIDES": json.dumps({"TASK_QUEUE": QUEUE})}
    doomed = worker_factory(queue=QUEUE, name="prefork", pool="prefork", env=env)
    tag, steps = uuid.uuid4().hex, 12
    run = agentflow.start("slow", {"tag": tag, "steps": steps, "delay_seconds": 0.3})
    wait_for(lambda: len(of_type(run.id, "step.completed")) >= 2, 30, "two completed steps")

    os.kill(doomed.process.pid, signal.SIGTERM)
    doomed.process.wait(timeout=10)
    run.refresh_from_db()
    assert run.status == "waiting" and of_type(run.id, "run.waiting")[-1]["data"]["reason"] == "drain"

    start_worker(worker_factory, name="successor")
    assert agentflow.wait(run, timeout_seconds=60) == sum(range(steps))
    assert counts(tag) == {f"slow-{i}": 1 for i in range(steps)}
    assert "run.recovered" not in [e["type"] for e in events(run.id)]


@pytest.mark.parametrize("sleeps", [False, True], ids=["sub-steps", "agentflow.sleep"])
def test_cancel_stops_a_component_that_swallows_exceptions(worker_factory, sleeps):
    start_worker(worker_factory)
    tag = uuid.uuid4().hex
    run = agentflow.start("swallower", {"tag": tag, "rounds": 300, "sleeps": sleeps})
    what = "nap" if sleeps else "tick"
    wait_for(lambda: counts(tag).get(what, 0) >= 3, 30, "the loop to run")

    agentflow.cancel(run)
    with pytest.raises(agentflow.RunFailed) as failed:
        agentflow.wait(run, timeout_seconds=15)
    assert failed.value.details["status"] == "cancelled"
    assert counts(tag)[what] < 300
    assert of_type(run.id, "run.cancelled")


def _waiting_run(tag: str, *, overdue_seconds: float) -> WorkflowRun:
    """A run handed back at epoch 1 whose delayed message was lost."""
    from datetime import timedelta

    from django.utils import timezone

    past = timezone.now() - timedelta(seconds=overdue_seconds)
    return WorkflowRun.objects.create(
        workflow="three-steps",
        input={"tag": tag, "topic": "otters"},
        status="waiting",
        epoch=1,
        started_at=past,
        heartbeat_at=past,
        wake_at=past,
    )


def test_monitor_wakes_a_waiting_run_whose_message_was_lost(worker_factory):
    from agentflow.monitor import check_runs

    start_worker(worker_factory)
    not_due = _waiting_run(uuid.uuid4().hex, overdue_seconds=0)
    run = _waiting_run(uuid.uuid4().hex, overdue_seconds=60)
    report = check_runs()
    assert report.woken == 1 and check_runs().woken == 0  # once: the second pass sees a fresh heartbeat
    agentflow.wait(run, timeout_seconds=30)
    run.refresh_from_db()
    assert run.epoch == 2 and run.wake_at is None and run.recoveries == 0
    assert events(run.id)[0]["type"] == "run.continued"
    assert status(not_due.pk) == "waiting"


def test_cancel_ends_a_waiting_run_at_once():
    run = _waiting_run(uuid.uuid4().hex, overdue_seconds=0)
    agentflow.cancel(run)
    run.refresh_from_db()
    assert run.status == "cancelled" and run.epoch > 1  # the delayed message is stale now
    wait_for(lambda: of_type(run.id, "run.cancelled"), 10, "run.cancelled")
