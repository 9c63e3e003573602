"""The run recorded is the truth (issue 10, item 3): starting a run while the broker is down records it,
answers with it, and sends its message as soon as the broker takes it (agentflow.dispatch, an outbox).

The broker of these tests is a private redis-server that starts down, or a socket that never answers; the
shared test Redis (the runs' streams) stays up and is never stopped.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta

import httpx
import pytest
import redis
from django.contrib.auth.models import User
from django.test import override_settings
from django.utils import timezone
from rest_framework.authtoken.models import Token

import agentflow
from agentflow import archive, dispatch, streams
from agentflow.conf import agentflow_settings
from agentflow.core import events as ev
from agentflow.core import keys
from agentflow.executors import CeleryExecutor
from agentflow.models import RunEvent, WorkflowRun
from agentflow.resuming import resume
from tests.conftest import AsgiServer, Worker, wait_for
from tests.redisdb import PrivateRedis
from tests.testapp.workflows import counts

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

QUEUE = "agentflow-dispatch"
SETTINGS = {**agentflow_settings.user_settings, "TASK_QUEUE": QUEUE}


@contextlib.contextmanager
def broker(url: str) -> Iterator[None]:
    """Point this process's Celery app at the broker at ``url`` (its connection and producer pools are
    per URL, so they are dropped on the way in and out)."""
    from tests.celery_app import app

    def repoint(to: str) -> None:
        app.conf.broker_url = to
        app._pool = None
        app.amqp._producer_pool = None

    before = app.conf.broker_url
    repoint(url)
    try:
        yield
    finally:
        repoint(before)


@pytest.fixture
def silent_broker() -> Iterator[str]:
    """A broker that accepts connections and never answers: the worst outage for a publisher."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield f"redis://127.0.0.1:{sock.getsockname()[1]}/0"


@pytest.fixture(autouse=True)
def _stop_retrying() -> Iterator[None]:
    """Sends that failed here are tried again from a thread of this process: end it with the test."""
    yield
    dispatch.stop_retrying()


def queue_length(url: str) -> int:
    return int(redis.Redis.from_url(url).llen(QUEUE))


def test_rest_start_while_the_broker_is_down_answers_202_once_and_runs_when_it_is_back(
    stopped_private_redis: PrivateRedis, worker_factory: Callable[..., Worker]
) -> None:
    from django.db import connection

    env = {
        "AGENTFLOW_TEST_BROKER_URL": stopped_private_redis.url,
        "AGENTFLOW_TEST_OVERRIDES": json.dumps({"TASK_QUEUE": QUEUE}),
    }
    server = AsgiServer(connection.settings_dict["NAME"], "tests.api.settings", "/api/schema/", env=env)
    try:
        server.wait_ready()
        user = User.objects.create_user("outage")
        headers = {"Authorization": f"Token {Token.objects.create(user=user).key}", "Idempotency-Key": "k-1"}
        tag = uuid.uuid4().hex
        body = {"tag": tag, "steps": 3, "delay_seconds": 0.01}
        start_url = f"{server.http}/api/workflows/slow/runs/"

        first = httpx.post(start_url, json=body, headers=headers, timeout=30)
        assert first.status_code == 202, first.text
        assert first.headers["content-type"] == "application/json"
        run = first.json()
        assert run["status"] == "queued"
        # The client retries (it could not know the first answer was fine): the same run, not a second one.
        again = httpx.post(start_url, json=body, headers=headers, timeout=30)
        assert again.status_code == 200 and again.json()["id"] == run["id"]
        assert WorkflowRun.objects.count() == 1
        recorded = WorkflowRun.objects.get()
        assert recorded.dispatch_pending and recorded.status == "queued"
        # run.queued went out (the streams' Redis is up) and into the archive at once.
        assert [e["type"] for e in streams.read_events(run["id"])] == [ev.RUN_QUEUED]
        assert [e["type"] for e in archive.archived_events(run["id"])] == [ev.RUN_QUEUED]

        stopped_private_redis.start()
        worker_factory(queue=QUEUE, name="after-outage", env=env)
        # Nothing runs the monitor here, and QUEUED_TIMEOUT_SECONDS is 300 s: only the outbox sends it.
        wait_for(lambda: WorkflowRun.objects.get().status == "completed", 30, "the run to complete")
        recorded.refresh_from_db()
        assert recorded.output == sum(range(3)) and recorded.epoch == 1 and not recorded.dispatch_pending
        assert counts(tag) == {f"slow-{i}": 1 for i in range(3)}
        # The worker recorded where the message stood in its queue (executors.QueueState), for the monitor.
        takes = streams.get_client().hgetall(keys.delivered(agentflow_settings.key_prefix, QUEUE))
        assert max(int(sent_ms) for sent_ms in takes.values()) / 1000 > recorded.created_at.timestamp()
        with override_settings(AGENTFLOW=SETTINGS):
            state = CeleryExecutor().queue_state()  # the same, as the monitor reads it
        through = state.delivered_through(0)
        assert through is not None and through > recorded.created_at
        assert state.seconds_since_last_take() is not None
        types = [e["type"] for e in archive.history(run["id"])]
        assert types[:2] == [ev.RUN_QUEUED, ev.RUN_STARTED] and types.count(ev.RUN_QUEUED) == 1
        log = "".join(server.log)
        assert "was not sent" in log and "Traceback" not in log and "ERROR" not in log, log
    finally:
        server.stop()


@override_settings(AGENTFLOW={**SETTINGS, "DISPATCH_TIMEOUT_SECONDS": 0.5})
def test_start_never_waits_long_on_a_broker_that_does_not_answer(silent_broker: str) -> None:
    started: list[WorkflowRun] = []

    def start() -> None:
        from django.db import connection

        try:
            started.append(agentflow.start("slow", {"tag": "x"}))
        finally:
            connection.close()

    with broker(silent_broker):
        thread = threading.Thread(target=start)
        thread.start()
        # Without the bound, the publish waits on the silent socket for ever (kombu sets no read time-out).
        thread.join(timeout=10)
        assert not thread.is_alive(), "start() is still waiting for the broker"
        # A round of the dispatcher stops at the first message the broker does not take.
        WorkflowRun.objects.filter(pk=started[0].pk).update(
            enqueued_at=started[0].enqueued_at.replace(year=2000)
        )
        assert dispatch.flush() == 0
    run = WorkflowRun.objects.get(pk=started[0].pk)
    assert run.status == "queued" and run.dispatch_pending


def test_an_owed_message_goes_out_once_when_the_broker_is_back_and_a_cancelled_run_never(
    stopped_private_redis: PrivateRedis,
) -> None:
    failed = WorkflowRun.objects.create(workflow="slow", input={"tag": "resumed"}, status="failed", epoch=1)
    with override_settings(AGENTFLOW=SETTINGS), broker(stopped_private_redis.url):
        owed = agentflow.start("slow", {"tag": "owed"})
        cancelled = agentflow.start("slow", {"tag": "cancelled"})
        agentflow.cancel(cancelled)
        resumed = resume(failed)  # the same path: resumed while the broker is down
        assert resumed.status == "queued"
        owing = set(WorkflowRun.objects.filter(dispatch_pending=True).values_list("pk", flat=True))
        assert owing == {owed.pk, failed.pk}

        stopped_private_redis.start()
        # This process tries again every DISPATCH_RETRY_INTERVAL_SECONDS (workers and the monitor too).
        wait_for(
            lambda: not WorkflowRun.objects.filter(dispatch_pending=True).exists(), 10, "the messages sent"
        )
        assert dispatch.flush() == 0  # owed no more
        assert queue_length(stopped_private_redis.url) == 2
        # What the monitor reads to tell a message that waits from a lost one: it waits.
        assert CeleryExecutor().queue_state().waiting == 2


def test_the_first_event_of_a_run_is_archived_when_it_is_appended(redis_client: redis.Redis) -> None:
    with override_settings(AGENTFLOW=SETTINGS):
        run = agentflow.start("slow", {"tag": "queued"})
    run_id = str(run.pk)
    stream = streams.read_events(run_id)
    assert [e["type"] for e in stream] == [ev.RUN_QUEUED]
    assert archive.archived_events(run_id) == stream
    # Announcing again (a dispatch tried again) appends nothing and archives nothing twice.
    assert (
        streams.announce(
            run_id, ev.envelope(ev.RUN_QUEUED, run_id, step=None, attempt=None, epoch=0, data={})
        )[0]
        == stream[0]["id"]
    )
    assert len(streams.read_events(run_id)) == 1 and RunEvent.objects.filter(run_id=run_id).count() == 1


def test_a_worker_sends_only_the_owed_messages_of_the_queues_it_consumes(redis_client: redis.Redis) -> None:
    mine, other = f"{QUEUE}-mine", f"{QUEUE}-other"
    redis_client.delete(mine, other)
    long_ago = timezone.now() - timedelta(minutes=5)
    runs = {
        queue: WorkflowRun.objects.create(
            workflow="slow", input={"tag": queue}, queue=queue, dispatch_pending=True, enqueued_at=long_ago
        )
        for queue in (mine, other)
    }
    # A worker's flusher passes the queues it consumes: it sends nothing it would not take itself (a
    # worker of another deployment, or of another test, leaves those runs alone).
    assert dispatch.flush(queues=[mine]) == 1
    assert (redis_client.llen(mine), redis_client.llen(other)) == (1, 0)
    assert not WorkflowRun.objects.get(pk=runs[mine].pk).dispatch_pending
    assert WorkflowRun.objects.get(pk=runs[other].pk).dispatch_pending
    # The monitor (no queues given) sends every owed message, each to its run's queue.
    assert dispatch.flush() == 1
    assert (redis_client.llen(mine), redis_client.llen(other)) == (1, 1)
    redis_client.delete(mine, other)
