"""The engine end to end: runs started from Python, executed by real Celery workers in other processes,
checkpointed in the test database, streamed through Redis."""

from __future__ import annotations

import itertools
import uuid

import pytest

import agentflow
from agentflow import streams
from agentflow.models import RunEvent, StepRun, WorkflowRun
from tests.conftest import wait_for
from tests.testapp.workflows import counts, effects

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def _worker(shared_worker):
    return shared_worker


def tag() -> str:
    return uuid.uuid4().hex


def types(run_id) -> list[str]:
    return [event["type"] for event in streams.read_events(str(run_id))]


def test_three_step_workflow_completes_with_events_in_order():
    t = tag()
    run = agentflow.start("three-steps", {"tag": t, "topic": "otters"})
    output = agentflow.wait(run, timeout_seconds=30)

    assert output == {"text": "notes on otters: intro\nnotes on otters: body", "sections": 2}
    assert types(run.id) == [
        "run.queued",
        "run.started",
        "status",
        "step.started",
        "step.completed",
        "status",
        "step.started",
        "step.completed",
        "data",
        "step.started",
        "output.delta",
        "output.delta",
        "step.completed",
        "output",
        "run.completed",
    ]
    events = streams.read_events(str(run.id))
    assert [e["step"] for e in events if e["type"] == "step.completed"] == ["fetch#0", "outline#0", "write#0"]
    assert all(e["run"] == str(run.id) for e in events)
    assert {e["epoch"] for e in events[1:]} == {1}
    ids = [streams.split_id(e["id"]) for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert events[-2]["data"] == {"value": output}
    assert counts(t) == {"fetch": 1, "outline": 1, "write": 1}

    # After the terminal event, the worker archives the stream and records its last id.
    wait_for(lambda: WorkflowRun.objects.get(pk=run.pk).last_event_id, 10, "the archive")
    run.refresh_from_db()
    assert run.status == "completed" and run.step_count == 3 and run.finished_at >= run.started_at
    assert run.last_event_id == events[-1]["id"]
    steps = list(StepRun.objects.filter(run=run).values_list("step_id", "status", "attempts"))
    assert steps == [("fetch#0", "completed", 1), ("outline#0", "completed", 1), ("write#0", "completed", 1)]
    # The stream expires later; its events are in the DB already.
    assert [e.stream_id for e in RunEvent.objects.filter(run=run)] == [e["id"] for e in events]
    assert 0 < streams.get_client().ttl(streams.stream_key(str(run.id))) <= 600


def test_flaky_step_succeeds_on_attempt_three_with_growing_delays():
    t = tag()
    run = agentflow.start("flaky", {"tag": t, "fail_times": 2})
    assert agentflow.wait(run, timeout_seconds=30) == "ok after 3"

    events = streams.read_events(str(run.id))
    retrying = [e for e in events if e["type"] == "step.retrying"]
    assert [(e["attempt"], e["data"]["next_attempt"]) for e in retrying] == [(1, 2), (2, 3)]
    assert [e["data"]["delay_seconds"] for e in retrying] == [0.2, 0.4]
    assert [e["attempt"] for e in events if e["type"] == "step.started"] == [1, 2, 3]
    times = [float(x) for x in effects().lrange(f"agentflow-tests:times:{t}", 0, -1)]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps[0] >= 0.2 and gaps[1] >= 0.4 and gaps[1] > gaps[0]
    step = StepRun.objects.get(run=run)
    assert (step.status, step.attempts) == ("completed", 3)


def test_step_that_always_fails_raises_step_failed_the_workflow_catches():
    t = tag()
    run = agentflow.start("recovers", {"tag": t})
    output = agentflow.wait(run, timeout_seconds=30)
    assert output == {"result": "fallback", "failed_step": "doomed#0", "attempts": 2, "error": "ValueError"}
    assert counts(t) == {"doomed": 2}
    assert "step.failed" in types(run.id) and types(run.id)[-1] == "run.completed"
    step = StepRun.objects.get(run=run)
    assert step.status == "failed" and step.error == {
        "type": "ValueError",
        "message": "this step always fails",
    }


def test_uncaught_step_failure_fails_the_run_with_the_error_recorded():
    run = agentflow.start("fails", {"tag": tag()})
    with pytest.raises(agentflow.RunFailed) as info:
        agentflow.wait(run, timeout_seconds=30)
    assert "this step always fails" in str(info.value)
    run.refresh_from_db()
    assert run.status == "failed"
    assert run.error["type"] == "StepFailed" and run.error["step"] == "doomed#0"
    assert run.error["cause"] == {"type": "ValueError", "message": "this step always fails"}
    last = streams.read_events(str(run.id))[-1]
    assert last["type"] == "run.failed" and last["data"]["error"]["step"] == "doomed#0"


def test_cached_component_does_not_run_twice():
    t = tag()
    first = agentflow.start("cached", {"tag": t, "text": "hello"})
    assert agentflow.wait(first, timeout_seconds=30) == "HELLO"
    second = agentflow.start("cached", {"tag": t, "text": "hello"})
    assert agentflow.wait(second, timeout_seconds=30) == "HELLO"
    assert counts(t) == {"expensive": 1}
    assert StepRun.objects.get(run=second).cached is True
    completed = [e for e in streams.read_events(str(second.id)) if e["type"] == "step.completed"]
    assert completed[0]["data"]["cached"] is True


def test_async_fan_out_runs_every_item_once_in_order():
    t = tag()
    run = agentflow.start("fan-out", {"tag": t, "n": 12, "concurrency": 4})
    assert agentflow.wait(run, timeout_seconds=30) == [x * x for x in range(12)]
    assert counts(t) == {f"square-{x}": 1 for x in range(12)}
    assert StepRun.objects.filter(run=run, parent_id__isnull=True).count() == 12


def test_invalid_input_is_refused_before_a_run_is_recorded():
    before = WorkflowRun.objects.count()
    with pytest.raises(agentflow.InvalidInput) as info:
        agentflow.start("three-steps", {"topic": 3, "bogus": True})
    fields = {d["field"] for d in info.value.details}
    assert fields == {"tag", "topic", "bogus"}
    with pytest.raises(agentflow.WorkflowNotFound):
        agentflow.start("no-such-workflow", {})
    assert WorkflowRun.objects.count() == before


def test_idempotency_key_returns_the_same_run():
    t = tag()
    first = agentflow.start("cached", {"tag": t, "text": "x"}, idempotency_key="order-42")
    again = agentflow.start("cached", {"tag": t, "text": "x"}, idempotency_key="order-42")
    assert first.pk == again.pk
    agentflow.wait(first, timeout_seconds=30)
    assert WorkflowRun.objects.filter(idempotency_key="order-42").count() == 1


def test_cancel_stops_a_running_run_at_its_next_boundary_and_keeps_its_history():
    t = tag()
    run = agentflow.start("slow", {"tag": t, "steps": 40, "delay_seconds": 0.1})
    wait_for(lambda: "step.completed" in types(run.id), 30, "a completed step")
    agentflow.cancel(run)
    with pytest.raises(agentflow.RunFailed) as info:
        agentflow.wait(run, timeout_seconds=30)
    assert info.value.details["status"] == "cancelled"
    run.refresh_from_db()
    assert run.status == "cancelled" and run.cancel_requested
    done = StepRun.objects.filter(run=run).count()
    assert 1 <= done < 40  # stopped early; what completed stays recorded
    events = types(run.id)
    assert events[-1] == "run.cancelled" and events.count("run.cancelled") == 1
    assert sum(counts(t).values()) <= done + 1


def test_cancelling_a_queued_run_cancels_it_at_once():
    from django.test import override_settings

    from agentflow.conf import agentflow_settings

    # No worker consumes this queue: the run stays queued until cancelled.
    with override_settings(AGENTFLOW={**agentflow_settings.user_settings, "TASK_QUEUE": "agentflow-nobody"}):
        run = agentflow.start("three-steps", {"tag": tag()})
    agentflow.cancel(run)
    run.refresh_from_db()
    assert run.status == "cancelled" and run.finished_at is not None
    assert types(run.id) == ["run.queued", "run.cancelled"]


def test_worker_processes_freeze_their_start_up_heap():
    # The shared worker's prefork children froze what was alive once ready (WORKER_GC_FREEZE).
    run = agentflow.start("gc-frozen", {})
    assert agentflow.wait(run, timeout_seconds=30) > 10_000
