"""Server-sent events from agentflow.sse.event_stream_response, served by a real uvicorn process: frames,
headers, keep-alives, and reconnection with Last-Event-ID."""

from __future__ import annotations

import json
import time
import uuid

import httpx
import pytest

import agentflow
from agentflow import streams
from agentflow.access import make_stream_token
from agentflow.core import events as ev
from agentflow.core.serialization import dumps
from agentflow.models import RunStatus, WorkflowRun
from tests.conftest import wait_for
from tests.streaming.conftest import sse_frames

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

TIMEOUT = httpx.Timeout(10.0)


def url(server, run_id) -> str:
    return f"{server.http}/runs/{run_id}/events/"


def test_last_event_id_reconnections_rebuild_the_exact_history(asgi_server, shared_worker):
    run = agentflow.start("slow", {"tag": uuid.uuid4().hex, "steps": 8, "delay_seconds": 0.15})
    params = {"token": make_stream_token(run.pk)}
    received: list[dict] = []
    connections, ended = 0, False
    with httpx.Client(timeout=TIMEOUT) as client:
        while not ended:
            headers = {"Accept": "text/event-stream"}
            if received:
                headers["Last-Event-ID"] = received[-1]["id"]
            with client.stream("GET", url(asgi_server, run.pk), params=params, headers=headers) as response:
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/event-stream")
                assert response.headers["cache-control"] == "no-cache"
                assert response.headers["x-accel-buffering"] == "no"
                connections += 1
                frames = sse_frames(response)
                assert next(frames).retry == 500  # SSE_RETRY_SECONDS of the test server
                taken = 0
                for frame in frames:
                    if frame.data is None:
                        continue  # a keep-alive
                    event = json.loads(frame.data)
                    assert frame.id == event["id"] and frame.event == event["type"]
                    received.append(event)
                    taken += 1
                    if taken == 3:
                        break  # drop the connection mid-run
                else:
                    ended = True  # the server closed the stream after the terminal event
            assert connections < 100
    assert received == streams.read_events(str(run.pk))
    assert received[-1]["type"] == ev.RUN_COMPLETED
    assert connections >= 8

    # Reconnecting after the end: 204, which tells EventSource to stop reconnecting.
    wait_for(lambda: WorkflowRun.objects.get(pk=run.pk).last_event_id, 10, "the archive")
    response = httpx.get(
        url(asgi_server, run.pk),
        params=params,
        headers={"Last-Event-ID": received[-1]["id"]},
        timeout=TIMEOUT,
    )
    assert response.status_code == 204


def test_keep_alive_comments_while_idle(asgi_server):
    run = WorkflowRun.objects.create(workflow="slow")  # queued, nothing appended: an idle stream
    comments = 0
    with httpx.stream(
        "GET", url(asgi_server, run.pk), params={"token": make_stream_token(run.pk)}, timeout=TIMEOUT
    ) as response:
        for frame in sse_frames(response):
            assert frame.data is None
            comments += frame.comments.count("keep-alive")
            if comments == 3:
                break
    assert comments == 3


def test_keepalive_events_for_a_client_that_asks(asgi_server):
    """With ?keepalive=1 the keep-alives are named events (an EventSource shows those, not comments), one at
    once, without an id (Last-Event-ID stays the last event's)."""
    run = WorkflowRun.objects.create(workflow="slow")
    params = {"token": make_stream_token(run.pk), "keepalive": "1"}
    frames = []
    with httpx.stream("GET", url(asgi_server, run.pk), params=params, timeout=TIMEOUT) as response:
        for frame in sse_frames(response):
            frames.append(frame)
            if len(frames) == 4:
                break
    assert frames[0].retry == 500
    for frame in frames[1:]:
        assert (frame.event, frame.id, frame.comments) == ("keepalive", None, [])
        assert json.loads(frame.data) == {"type": "keepalive", "interval_seconds": 0.3}


def test_after_query_parameter_and_the_archive(asgi_server):
    """``?after=`` works like Last-Event-ID, and a finished run without a stream is served from the archive."""
    run = WorkflowRun.objects.create(workflow="slow", status=RunStatus.RUNNING)
    run_id = str(run.pk)
    client, key = streams.get_client(), streams.stream_key(run_id)
    ids = [
        client.xadd(
            key, {"d": dumps(ev.envelope(t, run_id, step=None, attempt=None, epoch=1, data={"n": n}))}
        )
        for n, t in enumerate([ev.RUN_QUEUED, ev.RUN_STARTED, ev.STATUS, ev.OUTPUT, ev.RUN_COMPLETED])
    ]
    from agentflow.archive import archive_events

    archive_events(run_id)
    streams.get_client().delete(streams.stream_key(run_id))
    WorkflowRun.objects.filter(pk=run.pk).update(status=RunStatus.COMPLETED, last_event_id=ids[-1])

    with httpx.stream(
        "GET",
        url(asgi_server, run_id),
        params={"token": make_stream_token(run_id), "after": ids[1]},
        timeout=TIMEOUT,
    ) as response:
        events = [json.loads(f.data) for f in sse_frames(response) if f.data is not None]
    assert [e["id"] for e in events] == ids[2:]
    assert [e["data"]["n"] for e in events] == [2, 3, 4]


def test_malformed_last_event_id_is_a_400(asgi_server):
    run = WorkflowRun.objects.create(workflow="slow")
    response = httpx.get(
        url(asgi_server, run.pk),
        params={"token": make_stream_token(run.pk)},
        headers={"Last-Event-ID": "not-an-id"},
        timeout=TIMEOUT,
    )
    assert response.status_code == 400


def test_a_queued_run_without_a_live_worker_says_so_in_its_keep_alives(redis_client):
    # A server of its own, whose runs go to a queue only this test's (fake) worker registration consumes.
    from django.db import connection

    from agentflow import workers
    from agentflow.conf import agentflow_settings
    from agentflow.core import keys
    from tests.streaming.conftest import Server

    queue = f"agentflow-sse-{uuid.uuid4().hex[:8]}"
    server = Server(
        connection.settings_dict["NAME"], env={"AGENTFLOW_TEST_OVERRIDES": json.dumps({"TASK_QUEUE": queue})}
    )
    prefix = agentflow_settings.key_prefix
    registration = keys.worker(prefix, f"fake@{queue}:1")

    def register_live_worker() -> None:
        info = workers.WorkerInfo(
            id=f"fake@{queue}:1", name=f"fake@{queue}", host="h", pid=1, queues=[queue], version="",
            concurrency=1, runs_held=0, runs=[], free_slots=1, started_at="", last_beat_at=time.time(),
        )  # fmt: skip
        blob = json.dumps(info.as_dict() | {"last_beat_at": info.last_beat_at})
        redis_client.set(registration, blob, ex=60)
        redis_client.zadd(keys.workers(prefix), {info.id: info.last_beat_at})

    def comments(run: WorkflowRun, *, until: str, limit: int) -> list[str]:
        seen: list[str] = []
        with httpx.stream(
            "GET", url(server, run.pk), params={"token": make_stream_token(run.pk)}, timeout=TIMEOUT
        ) as response:
            for frame in sse_frames(response):
                seen += frame.comments
                if any(until in comment for comment in seen) or len(seen) >= limit:
                    return seen
        return seen

    try:
        server.wait_ready()
        run = WorkflowRun.objects.create(workflow="slow")
        streams.announce(
            str(run.pk), ev.envelope(ev.RUN_QUEUED, str(run.pk), step=None, attempt=None, epoch=0, data={})
        )
        # A live worker on the queue: plain keep-alives.
        register_live_worker()
        assert comments(run, until="waiting for a worker", limit=4) == ["keep-alive"] * 4
        # None: the comments say so, naming the queue, once the process's answer is a keep-alive old (0.3 s).
        redis_client.delete(registration)
        redis_client.zrem(keys.workers(prefix), f"fake@{queue}:1")
        seen = comments(run, until="waiting for a worker", limit=4)
        assert seen[-1].startswith(f"waiting for a worker: no live worker consumes queue '{queue}'")
        assert seen[:-1] == ["keep-alive"] * (len(seen) - 1)
        assert not [line for line in server.log if "Traceback" in line or "ERROR" in line]
    finally:
        server.stop()
