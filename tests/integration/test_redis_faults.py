"""A Redis that loses its data mid-run (restarted without persistence): the run goes on, its history does not
lose an event. Against a private redis-server started here, never the shared test server."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Callable

import pytest
import redis
from django.test import override_settings

import agentflow
from agentflow import archive, streams
from agentflow.conf import agentflow_settings
from agentflow.core import events as ev
from agentflow.models import RunEvent, RunStatus, StepRun, WorkflowRun
from tests.conftest import Worker, wait_for
from tests.redisdb import PrivateRedis
from tests.testapp.workflows import counts

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

QUEUE = "agentflow-redis-faults"


def test_run_survives_a_redis_restart_and_its_history_keeps_every_event_once(
    private_redis: PrivateRedis, worker_factory: Callable[..., Worker]
) -> None:
    overrides = {"REDIS_URL": private_redis.url, "TASK_QUEUE": QUEUE}
    worker = worker_factory(
        queue=QUEUE, name="faults", env={"AGENTFLOW_TEST_OVERRIDES": json.dumps(overrides)}
    )
    with override_settings(AGENTFLOW={**agentflow_settings.user_settings, **overrides}):
        tag, steps = uuid.uuid4().hex, 20
        run = agentflow.start("slow", {"tag": tag, "steps": steps, "delay_seconds": 0.2})
        run_id = str(run.id)
        wait_for(lambda: StepRun.objects.filter(run_id=run_id).count() >= 4, 30, "four checkpointed steps")
        # Whatever was appended until now is archived within ~0.5 s; the restart then wipes the stream.
        wait_for(lambda: RunEvent.objects.filter(run_id=run_id).count() >= 8, 10, "incremental archiving")
        private_redis.restart()

        assert agentflow.wait(run_id, timeout_seconds=60) == sum(range(steps))
        # wait() returns at the terminal event; the archive of the whole stream follows (last_event_id).
        wait_for(lambda: WorkflowRun.objects.get(pk=run_id).last_event_id, 10, "the run's stream archived")
        run = WorkflowRun.objects.get(pk=run_id)
        # Not recovered by the monitor: the same incarnation carried on.
        assert run.status == RunStatus.COMPLETED and run.epoch == 1 and run.recoveries == 0
        assert any("meta hash was lost" in line for line in worker.log)
        assert all(n == 1 for n in counts(tag).values()) and len(counts(tag)) == steps

        events = archive.history(run_id)
        stream = streams.read_events(run_id)
        assert stream and stream[0]["type"] != ev.RUN_QUEUED  # the stream lost its head...
        assert events[-len(stream) :] == stream  # ...which the archive supplies
        ids = [streams.split_id(e["id"]) for e in events]
        assert ids == sorted(set(ids))  # in order, each once
        types = [e["type"] for e in events]
        assert types[:2] == [ev.RUN_QUEUED, ev.RUN_STARTED]
        assert types[-2:] == [ev.OUTPUT, ev.RUN_COMPLETED] and types.count(ev.RUN_COMPLETED) == 1
        started = [e["step"] for e in events if e["type"] == ev.STEP_STARTED]
        completed = [e["step"] for e in events if e["type"] == ev.STEP_COMPLETED]
        assert started == completed == [f"slow_step#{i}" for i in range(steps)]
        statuses = [e["data"]["text"] for e in events if e["type"] == "status"]
        assert statuses == [f"step {i} done" for i in range(steps)]
        # Paging across the seam between archive and stream, and the archive alone, agree.
        paged, after = [], None
        while page := archive.history(run_id, after=after, limit=5):
            paged += page
            after = page[-1]["id"]
        assert paged == events
        assert archive.archived_events(run_id) == events


def _sink(run_id: str, epoch: int) -> streams.RedisSink:
    return streams.RedisSink(run_id, epoch, streams.claim(run_id, epoch))


def _emit(sink: streams.RedisSink, text: str) -> None:
    sink.emit(
        ev.envelope(ev.STATUS, sink.run_id, step=None, attempt=None, epoch=sink.epoch, data={"text": text})
    )


def test_lost_meta_is_restored_when_the_db_still_gives_the_run_to_this_epoch(
    redis_client: redis.Redis,
) -> None:
    run = WorkflowRun.objects.create(workflow="w", status=RunStatus.RUNNING, epoch=1)
    run_id = str(run.id)
    sink = _sink(run_id, 1)
    try:
        _emit(sink, "a")
        sink.flush(timeout_seconds=10)
        redis_client.delete(streams.meta_key(run_id))
        _emit(sink, "b")
        sink.flush(timeout_seconds=10)
        assert not sink.fenced
    finally:
        sink.close(timeout_seconds=10)
    assert [e["data"]["text"] for e in streams.read_events(run_id)] == ["a", "b"]
    meta = redis_client.hgetall(streams.meta_key(run_id))
    assert meta["epoch"] == "1" and meta["seq"] == "2"  # numbering goes on from where it was
    # Archived as it went, both events once.
    assert [e["data"]["text"] for e in archive.archived_events(run_id)] == ["a", "b"]


def test_lost_meta_fences_the_sink_when_the_run_moved_on(redis_client: redis.Redis) -> None:
    run = WorkflowRun.objects.create(workflow="w", status=RunStatus.RUNNING, epoch=1)
    run_id = str(run.id)
    sink = _sink(run_id, 1)
    try:
        WorkflowRun.objects.filter(pk=run_id).update(epoch=2)
        redis_client.delete(streams.meta_key(run_id))
        _emit(sink, "zombie")
        with pytest.raises(agentflow.LeaseLost):
            sink.flush(timeout_seconds=10)
        assert sink.fenced
    finally:
        with contextlib.suppress(agentflow.LeaseLost):
            sink.close(timeout_seconds=10)
    assert streams.read_events(run_id) == []
    assert not redis_client.exists(streams.meta_key(run_id))


def test_a_run_queued_before_redis_lost_its_data_keeps_its_first_event(
    private_redis: PrivateRedis, worker_factory: Callable[..., Worker]
) -> None:
    overrides = {"REDIS_URL": private_redis.url, "TASK_QUEUE": QUEUE}
    with override_settings(AGENTFLOW={**agentflow_settings.user_settings, **overrides}):
        tag = uuid.uuid4().hex
        run = agentflow.start("slow", {"tag": tag, "steps": 2, "delay_seconds": 0.01})
        run_id = str(run.id)
        seen = streams.read_events(run_id)  # what a client following the run received
        assert [e["type"] for e in seen] == [ev.RUN_QUEUED]
        private_redis.restart()  # the stream is gone; the run's message waits in the (other) broker
        assert streams.read_events(run_id) == []
        worker_factory(
            queue=QUEUE, name="after-loss", env={"AGENTFLOW_TEST_OVERRIDES": json.dumps(overrides)}
        )
        assert agentflow.wait(run_id, timeout_seconds=30) == 1
        wait_for(lambda: WorkflowRun.objects.get(pk=run_id).last_event_id, 10, "the run's stream archived")
        history = archive.history(run_id)
    # The event the client saw is still the run's first, under the id it saw, and the only run.queued.
    assert history[0] == seen[0]
    assert [e["type"] for e in history].count(ev.RUN_QUEUED) == 1
    assert [e["type"] for e in history][-1] == ev.RUN_COMPLETED


def test_events_appended_just_before_redis_lost_its_data_are_archived_when_the_run_ends(
    private_redis: PrivateRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    from django.utils import timezone

    from agentflow.runner import _finish

    # A run shorter than one archiving interval: nothing is archived before it ends.
    monkeypatch.setattr(streams._Archiver, "INTERVAL_SECONDS", 60.0)
    with override_settings(AGENTFLOW={**agentflow_settings.user_settings, "REDIS_URL": private_redis.url}):
        run = WorkflowRun.objects.create(
            workflow="w", status=RunStatus.RUNNING, epoch=1, started_at=timezone.now()
        )
        run_id = str(run.id)
        sink = _sink(run_id, 1)
        try:
            _emit(sink, "a")
            _emit(sink, "b")
            sink.flush(timeout_seconds=10)
            seen = streams.read_events(run_id)  # a subscriber received these
            private_redis.restart()
            # The run ends at once: its last events go to a stream that lost the first ones.
            assert _finish(run, sink, RunStatus.COMPLETED, 42, None) == RunStatus.COMPLETED
        finally:
            sink.close(timeout_seconds=10)
    history = archive.archived_events(run_id)
    assert history[:2] == seen
    assert [e["type"] for e in history] == [ev.STATUS, ev.STATUS, ev.OUTPUT, ev.RUN_COMPLETED]
    assert WorkflowRun.objects.get(pk=run_id).last_event_id == history[-1]["id"]
