"""The events a recovering incarnation and the monitor append, against real Redis and PostgreSQL."""

from __future__ import annotations

import pytest
from django.db import IntegrityError, transaction

from agentflow import LeaseLost, streams
from agentflow.core import events as ev
from agentflow.core.context import Checkpoint
from agentflow.models import RunStatus, WorkflowRun
from agentflow.monitor import append_terminal
from agentflow.runner import _announce_recovery, _announce_resume

pytestmark = pytest.mark.django_db


def emit(sink, type, step=None, attempt=None, **data):
    sink.emit(ev.envelope(type, sink.run_id, step=step, attempt=attempt, epoch=sink.epoch, data=data))


def test_recovery_voids_unfinished_steps_and_completes_checkpointed_ones(redis_client):
    run = WorkflowRun.objects.create(workflow="w", status=RunStatus.RUNNING, epoch=1)
    run_id = str(run.id)
    first = streams.RedisSink(run_id, 1, streams.claim(run_id, 1))
    emit(first, ev.RUN_STARTED)
    first.flush()
    streams.mark_incarnation_start(run_id, first.first_id)
    emit(first, ev.STEP_STARTED, "done#0", 1)
    emit(first, ev.STEP_COMPLETED, "done#0", 1)
    emit(first, ev.STEP_STARTED, "committed#0", 2)  # its checkpoint committed, its end event was lost
    emit(first, ev.STEP_STARTED, "lost#0", 1)
    first.close()

    run.epoch = 2
    claim = streams.claim(run_id, 2)
    second = streams.RedisSink(run_id, 2, claim)
    checkpoints = {"done#0": Checkpoint("completed"), "committed#0": Checkpoint("completed", attempts=2)}
    _announce_recovery(run, second, claim.start, checkpoints)
    second.close()

    events = streams.read_events(run_id)
    recovered = next(e for e in events if e["type"] == ev.RUN_RECOVERED)
    assert recovered["data"]["void_steps"] == ["lost#0"] and recovered["epoch"] == 2
    completed = events[-1]
    assert (completed["type"], completed["step"], completed["attempt"]) == (
        ev.STEP_COMPLETED,
        "committed#0",
        2,
    )
    assert completed["data"] == {"recovered": True}


def test_monitor_repair_fences_the_slow_worker_so_there_is_one_terminal_event(redis_client):
    run = WorkflowRun.objects.create(workflow="w", status=RunStatus.COMPLETED, epoch=1, output={"x": 1})
    run_id = str(run.id)
    slow = streams.RedisSink(run_id, 1, streams.claim(run_id, 1))
    emit(slow, ev.RUN_STARTED)
    slow.flush()

    assert append_terminal(run) is True
    assert append_terminal(WorkflowRun.objects.get(pk=run.pk)) is False  # already repaired

    emit(slow, ev.RUN_COMPLETED)  # the slow worker's own terminal event comes too late
    with pytest.raises(LeaseLost):
        slow.flush()
    types = [e["type"] for e in streams.read_events(run_id)]
    assert types == [ev.RUN_STARTED, ev.OUTPUT, ev.RUN_COMPLETED]
    run.refresh_from_db()
    assert run.epoch == 2 and run.last_event_id


def test_idempotency_keys_are_unique_for_runs_without_an_owner_too():
    WorkflowRun.objects.create(workflow="w", idempotency_key="k")
    with pytest.raises(IntegrityError), transaction.atomic():
        WorkflowRun.objects.create(workflow="w", idempotency_key="k")
    WorkflowRun.objects.create(workflow="other", idempotency_key="k")  # per workflow


def test_recovery_announces_the_waits_the_dead_incarnation_checkpointed_but_did_not_announce(redis_client):
    from agentflow.models import StepRun

    run = WorkflowRun.objects.create(workflow="w", status=RunStatus.RUNNING, epoch=1)
    run_id = str(run.id)
    first = streams.RedisSink(run_id, 1, streams.claim(run_id, 1))
    emit(first, ev.RUN_STARTED)
    first.flush()
    streams.mark_incarnation_start(run_id, first.first_id)
    emit(first, ev.CHILD_STARTED, "workflow:kid#0", run="c1", workflow="kid")  # announced before the death
    first.close()
    request = {"key": "approve", "prompt": "OK?", "schema": {"type": "boolean"}}
    StepRun.objects.create(run=run, step_id="workflow:kid#0", component="workflow:kid", status="waiting",
                           output={"run": "c1", "workflow": "kid"}, epoch=1)  # fmt: skip
    # Checkpointed by the dead incarnation, which died before its input.requested reached the stream.
    StepRun.objects.create(run=run, step_id="input:approve", component="input", status="waiting",
                           input=request, output={"timeout_at": None}, epoch=1)  # fmt: skip
    StepRun.objects.create(
        run=run,
        step_id="input:old",
        component="input",
        status="waiting",
        input={**request, "key": "old"},
        output={},
        epoch=0,
    )  # an earlier one's: not ours

    run.epoch = 2
    claim = streams.claim(run_id, 2)
    second = streams.RedisSink(run_id, 2, claim)
    _announce_recovery(run, second, claim.start, {})
    second.close()

    repaired = [e for e in streams.read_events(run_id) if e["epoch"] == 2 and e["type"] != ev.RUN_RECOVERED]
    assert [(e["type"], e["step"]) for e in repaired] == [(ev.INPUT_REQUESTED, "input:approve")]
    assert repaired[0]["data"] == {
        "key": "approve", "prompt": "OK?", "schema": {"type": "boolean"}, "timeout_at": None, "recovered": True,
    }  # fmt: skip


def test_a_resumed_incarnation_voids_the_steps_it_runs_again(redis_client):
    """``run.resumed`` lists every step of the history without a completed or failed checkpoint: the ones
    resume() forgot (failed) and the ones the ended incarnation left unfinished; not those it replays."""
    run = WorkflowRun.objects.create(workflow="w", status=RunStatus.RUNNING, epoch=1)
    run_id = str(run.id)
    first = streams.RedisSink(run_id, 1, streams.claim(run_id, 1))
    emit(first, ev.RUN_STARTED)
    emit(first, ev.STEP_STARTED, "done#0", 1)
    emit(first, ev.OUTPUT_DELTA, "done#0", 1, text="kept")
    emit(first, ev.STEP_COMPLETED, "done#0", 1)
    emit(first, ev.STEP_STARTED, "failed#0", 1)
    emit(first, ev.OUTPUT_DELTA, "failed#0", 1, text="void")
    emit(first, ev.STEP_FAILED, "failed#0", 1, error={"type": "E", "message": "m"})
    emit(first, ev.STEP_STARTED, "waiting#0", 1)
    emit(first, ev.STEP_RETRYING, "waiting#0", 1, delay_seconds=60, next_attempt=2)
    emit(first, ev.STEP_STARTED, "cut#0", 1)
    emit(first, ev.OUTPUT_DELTA, "cut#0", 1, text="void")
    emit(first, ev.RUN_CANCELLED)
    first.close()

    run.epoch = 3  # resume() bumped it to 2; this claim to 3
    second = streams.RedisSink(run_id, 3, streams.claim(run_id, 3))
    checkpoints = {"done#0": Checkpoint("completed"), "waiting#0": Checkpoint("waiting", attempts=1)}
    _announce_resume(run, second, checkpoints)
    second.close()
    resumed = streams.read_events(run_id)[-1]
    assert resumed["type"] == ev.RUN_RESUMED and resumed["epoch"] == 3
    assert resumed["data"] == {"void_steps": ["failed#0", "waiting#0", "cut#0"], "recoveries": 0}


def test_recovering_a_resumed_run_that_never_announced_itself_announces_the_resume(redis_client):
    """The resumed run's first incarnation died before ``run.resumed``: the stream still ends with the
    terminal event, so the recovering incarnation appends ``run.resumed`` (not ``run.recovered``)."""
    run = WorkflowRun.objects.create(workflow="w", status=RunStatus.RUNNING, epoch=1, recoveries=1)
    run_id = str(run.id)
    first = streams.RedisSink(run_id, 1, streams.claim(run_id, 1))
    emit(first, ev.RUN_STARTED)
    first.flush()
    streams.mark_incarnation_start(run_id, first.first_id)
    emit(first, ev.STEP_STARTED, "failed#0", 1)
    emit(first, ev.OUTPUT_DELTA, "failed#0", 1, text="void")
    emit(first, ev.STEP_FAILED, "failed#0", 1, error={"type": "E", "message": "m"})
    emit(first, ev.RUN_FAILED, error={"type": "StepFailed"})
    first.close()

    streams.claim(run_id, 3)  # the resumed incarnation claimed the run, then died without an event
    run.epoch = 4
    claim = streams.claim(run_id, 4)
    second = streams.RedisSink(run_id, 4, claim)
    _announce_recovery(run, second, claim.start, {})
    second.close()
    last = streams.read_events(run_id)[-1]
    assert (last["type"], last["epoch"]) == (ev.RUN_RESUMED, 4)
    assert last["data"] == {"void_steps": ["failed#0"], "recoveries": 1}
