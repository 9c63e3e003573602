"""The monitor tells a run whose message was lost from one whose message waits behind others (issue 10):
it sends a lost message again, never one that waits in the queue, and never counts either as a death.

The runs' queue here is one no worker consumes, in the test broker, so the tests see exactly which messages
it holds; the monitor is driven with ``now`` moved forward instead of waiting for leases to expire.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from datetime import timedelta

import pytest
import redis
from django.test import override_settings
from django.utils import timezone

import agentflow
from agentflow import tasks
from agentflow.conf import agentflow_settings
from agentflow.executors import QueueState
from agentflow.models import RunStatus, WorkflowRun
from agentflow.monitor import _lost, check_runs
from tests.conftest import Worker, wait_for

QUEUE = "agentflow-monitor-tests"
SETTINGS = {**agentflow_settings.user_settings, "TASK_QUEUE": QUEUE}
LEASE = timedelta(seconds=agentflow_settings.lease_seconds)


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
@override_settings(AGENTFLOW=SETTINGS)
def test_a_lost_message_is_sent_again_once_and_a_waiting_one_never(redis_client: redis.Redis) -> None:
    redis_client.delete(QUEUE)
    run = agentflow.start("slow", {"tag": uuid.uuid4().hex})
    assert redis_client.llen(QUEUE) == 1
    redis_client.delete(QUEUE)  # the broker lost it (flushed, or taken by a worker that died)

    now = timezone.now()
    assert check_runs(now=now).requeued == 0  # within a lease: a worker may be claiming it right now
    assert check_runs(now=now + LEASE * 2).requeued == 1
    assert redis_client.llen(QUEUE) == 1
    # Its message waits in the queue now: not lost, however long the backlog holds it. (The monitor used to
    # send another copy every QUEUED_TIMEOUT_SECONDS.)
    later = now + timedelta(seconds=agentflow_settings.queued_timeout_seconds * 3)
    assert not any(check_runs(now=later).as_dict().values()) and not any(check_runs().as_dict().values())
    assert redis_client.llen(QUEUE) == 1
    run.refresh_from_db()
    assert run.status == RunStatus.QUEUED and run.recoveries == 0 and run.epoch == 0


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
@override_settings(AGENTFLOW=SETTINGS)
def test_a_recovered_run_is_not_lost_again_and_its_lost_message_is_no_death(
    redis_client: redis.Redis,
) -> None:
    redis_client.delete(QUEUE)
    past = timezone.now() - LEASE * 3
    run = WorkflowRun.objects.create(
        workflow="slow",
        input={"tag": uuid.uuid4().hex},
        status=RunStatus.RUNNING,
        epoch=1,
        started_at=past,
        heartbeat_at=past,
        worker="dead",
    )
    now = timezone.now()
    assert check_runs(now=now).recovered == 1
    assert redis_client.llen(QUEUE) == 1
    # The recovery message waits behind a backlog, lease after lease: the run was lost once.
    for leases in (2, 5, 10):
        report = check_runs(now=now + LEASE * leases)
        assert report.recovered == report.abandoned == report.requeued == 0, (leases, report)
    run.refresh_from_db()
    assert run.recoveries == 1 and run.status == RunStatus.RUNNING and run.epoch == 1

    redis_client.delete(QUEUE)  # now the recovery message is lost: sent again, not counted as a death
    report = check_runs(now=now + LEASE * 12)
    assert (report.recovered, report.requeued) == (0, 1)
    assert redis_client.llen(QUEUE) == 1
    run.refresh_from_db()
    assert run.recoveries == 1 and run.epoch == 1


def _state(waiting: int, *taken: tuple[float, float]) -> QueueState:
    """``taken``: (seconds ago, sent that many seconds ago) per second in which workers took messages."""
    now = timezone.now()
    return QueueState(
        waiting=waiting, taken=tuple((ago, now - timedelta(seconds=sent_ago)) for ago, sent_ago in taken)
    )


@override_settings(AGENTFLOW={**SETTINGS, "LEASE_SECONDS": 30.0, "QUEUED_TIMEOUT_SECONDS": 300.0})
def test_when_a_message_counts_as_lost() -> None:
    now = timezone.now()
    sent_long_ago, sent_just_now = now - timedelta(seconds=100), now - timedelta(seconds=5)
    queued = RunStatus.QUEUED
    # Waiting behind others, nothing sent after it taken: never lost, however long ago it was sent.
    assert not _lost(queued, None, now - timedelta(days=1), now, _state(7, (40, 86400 * 2)))
    # Workers took a message sent after it, a lease ago (the queue is first in, first out): lost.
    assert _lost(queued, None, sent_long_ago, now, _state(7, (40, 50)))
    # ... but not if they took it just now: this one may be being taken and claimed at this moment.
    assert not _lost(queued, None, sent_long_ago, now, _state(7, (5, 50)))
    # ... nor if the later one was sent within the margin of clocks.
    assert not _lost(queued, None, sent_just_now, now, _state(7, (40, 4.5)))
    # The queue is empty and nothing was taken for a lease: lost, once a lease after it was sent.
    assert _lost(queued, None, sent_long_ago, now, _state(0))
    assert _lost(queued, None, sent_long_ago, now, _state(0, (31, 200)))
    assert not _lost(queued, None, sent_just_now, now, _state(0))
    # ... but a take within the lease may be this very message, about to be claimed.
    assert not _lost(queued, None, sent_long_ago, now, _state(0, (3, 200)))
    # An executor without a queue to read: QUEUED_TIMEOUT_SECONDS.
    assert not _lost(queued, None, sent_long_ago, now, None)
    assert _lost(queued, None, now - timedelta(seconds=301), now, None)
    # A delayed message (a wake-up) is held by a worker until due: lost a lease after its wake_at.
    waiting = RunStatus.WAITING
    assert not _lost(waiting, now - timedelta(seconds=20), sent_long_ago, now, _state(0))
    assert _lost(waiting, now - timedelta(seconds=31), sent_long_ago, now, _state(5))


def test_an_idle_monitor_pass_logs_nothing_in_the_worker() -> None:
    def record(args: object, name: str = "celery.app.trace") -> logging.LogRecord:
        return logging.LogRecord(name, logging.INFO, __file__, 1, "msg %s", args, None)  # type: ignore[arg-type]

    received = {"id": "1", "name": "agentflow.monitor", "args": "()", "kwargs": "{}", "eta": None}
    idle = {"id": "1", "name": "agentflow.monitor", "return_value": "{'recovered': 0, 'requeued': 0}"}
    busy = {"id": "1", "name": "agentflow.monitor", "return_value": "{'recovered': 0, 'requeued': 2}"}
    other = {"id": "1", "name": "agentflow.execute_run", "return_value": "None"}
    keep = tasks._idle_monitor_filter
    assert not keep(record(received, "celery.worker.strategy")) and not keep(record(idle))
    assert keep(record(busy)) and keep(record(other))
    assert not keep(record(("agentflow-monitor", "agentflow.monitor"), "celery.beat"))
    assert keep(record(("cleanup", "myapp.cleanup"), "celery.beat"))


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_a_worker_logs_monitor_passes_only_when_they_changed_something(
    worker_factory: Callable[..., Worker], redis_client: redis.Redis
) -> None:
    monitor_queue = "agentflow-monitor-tests-m"
    redis_client.delete(QUEUE)
    env = {"AGENTFLOW_TEST_OVERRIDES": json.dumps({"TASK_QUEUE": QUEUE})}
    worker = worker_factory(queue=monitor_queue, name="quiet", env=env)
    for _ in range(3):
        tasks.monitor_task.apply_async(queue=monitor_queue)
    # A task of another kind after them: once it is logged, the solo worker has run the three passes.
    tasks.execute_run_task.apply_async(args=(str(uuid.uuid4()), 0), queue=monitor_queue)
    wait_for(
        lambda: any("Task agentflow.execute_run[" in line and "succeeded" in line for line in worker.log),
        30,
        "the marker task",
    )

    def monitor_lines() -> list[str]:
        return [line for line in worker.log if "agentflow.monitor[" in line]

    assert monitor_lines() == [], "".join(worker.log)
    # Then a run whose message was lost long ago: the next pass sends it again, and says so.
    long_ago = timezone.now() - timedelta(minutes=10)
    WorkflowRun.objects.create(
        workflow="slow", status=RunStatus.QUEUED, enqueued_at=long_ago, input={"tag": uuid.uuid4().hex}
    )
    tasks.monitor_task.apply_async(queue=monitor_queue)
    wait_for(monitor_lines, 30, "the busy pass's log line")
    lines = monitor_lines()
    assert len(lines) == 1 and "succeeded" in lines[0] and "'requeued': 1" in lines[0], "".join(worker.log)
