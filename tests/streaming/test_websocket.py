"""The run websocket against a real uvicorn process and a real Celery worker: reconnecting with the last id
rebuilds the exact history, archives replace expired streams, every refusal has its close code, and one Redis
connection serves every socket of the server."""

from __future__ import annotations

import contextlib
import json
import uuid
from datetime import timedelta
from urllib.parse import urlencode

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.utils import timezone
from websockets.exceptions import ConnectionClosedOK

import agentflow
from agentflow import streams
from agentflow.access import make_stream_token
from agentflow.core import events as ev
from agentflow.models import RunEvent, RunStatus, WorkflowRun
from tests.conftest import wait_for
from tests.streaming.conftest import Received, Server, abort, receive

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def tag() -> str:
    return uuid.uuid4().hex


def session_cookie(user) -> str:
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}"


def make_user(name: str, **extra):
    return get_user_model().objects.create_user(name, password="not-used", **extra)


def announce_queued(run_id) -> str:
    run_id = str(run_id)
    entry = streams.announce(
        run_id, ev.envelope(ev.RUN_QUEUED, run_id, step=None, attempt=None, epoch=0, data={})
    )
    assert entry is not None
    return entry[0]


def follow(server: Server, run_id, *, timeout_seconds: float = 20, **kwargs) -> Received:
    """Everything one connection receives until the server closes it."""
    with server.websocket(run_id, **kwargs) as ws:
        return receive(ws, timeout_seconds=timeout_seconds)


def follow_with_drops(server: Server, run_id, *, per_connection: int, **auth) -> tuple[list[dict], int]:
    """Follow a run, dropping the connection after every ``per_connection`` events (alternately a cut TCP
    connection and a clean close) and reconnecting with the last id. Returns the events and the drops."""
    received: list[dict] = []
    drops = 0
    while True:
        with server.websocket(run_id, after=received[-1]["id"] if received else None, **auth) as ws:
            got = receive(ws, limit=per_connection)
            received += got.events
            if got.close_code is not None:
                assert got.close_code == 1000, got
                return received, drops
            if drops % 2 == 0:
                abort(ws)  # else leaving the block closes it cleanly
        drops += 1
        assert drops < 200, "the stream never ended"


def test_reconnecting_with_the_last_id_rebuilds_the_exact_history(asgi_server, shared_worker):
    run = agentflow.start("slow", {"tag": tag(), "steps": 8, "delay_seconds": 0.15})

    received, drops = follow_with_drops(
        asgi_server, run.pk, per_connection=3, token=make_stream_token(run.pk)
    )

    # Exactly the stream, in order: no gap, no duplicate at any of the seams.
    assert received == streams.read_events(str(run.pk))
    assert received[-1]["type"] == ev.RUN_COMPLETED
    assert [e["type"] for e in received].count("status") == 8
    assert drops >= 8
    # Dropping connections never touches the run.
    run.refresh_from_db()
    assert run.status == RunStatus.COMPLETED and not run.cancel_requested and run.output == sum(range(8))


def test_drops_in_the_live_tail(asgi_server, shared_worker):
    """One event per connection: most reconnections land in the live tail, between two appends."""
    run = agentflow.start("slow", {"tag": tag(), "steps": 6, "delay_seconds": 0.1})
    token = make_stream_token(run.pk)
    received: list[dict] = []
    drops_before_the_end = 0
    while True:
        with asgi_server.websocket(run.pk, after=received[-1]["id"] if received else None, token=token) as ws:
            got = receive(ws, limit=1)
            received += got.events
            if got.close_code is not None:
                assert got.close_code == 1000
                break
            if received[-1]["type"] not in ev.TERMINAL_TYPES:
                drops_before_the_end += 1
            abort(ws)
    assert received == streams.read_events(str(run.pk))
    assert drops_before_the_end >= 10


def test_session_cookie_authenticates(asgi_server, shared_worker):
    owner = make_user("owner")
    run = agentflow.start("slow", {"tag": tag(), "steps": 3, "delay_seconds": 0.05}, owner=owner)

    received, _ = follow_with_drops(asgi_server, run.pk, per_connection=4, cookie=session_cookie(owner))

    assert received == streams.read_events(str(run.pk))
    assert received[-1]["type"] == ev.RUN_COMPLETED


def test_a_finished_run_replays_from_the_archive_once_its_stream_is_gone(asgi_server, shared_worker):
    run = agentflow.start("three-steps", {"tag": tag()})
    agentflow.wait(run, timeout_seconds=30)
    wait_for(lambda: WorkflowRun.objects.get(pk=run.pk).last_event_id, 10, "the archive")
    history = streams.read_events(str(run.pk))
    streams.get_client().delete(streams.stream_key(str(run.pk)), streams.meta_key(str(run.pk)))
    assert RunEvent.objects.filter(run=run).count() == len(history)
    token = make_stream_token(run.pk)

    everything = follow(asgi_server, run.pk, token=token)
    assert everything.close_code == 1000
    assert everything.events == history

    rest = follow(asgi_server, run.pk, after=history[5]["id"], token=token)
    assert rest.close_code == 1000 and rest.events == history[6:]

    # Reconnecting with the terminal event's id: nothing more, closed at once.
    done = follow(asgi_server, run.pk, after=history[-1]["id"], token=token, timeout_seconds=5)
    assert done.close_code == 1000 and done.events == []


def test_reconnecting_after_the_terminal_event_closes_at_once(asgi_server, shared_worker):
    run = agentflow.start("three-steps", {"tag": tag()})
    agentflow.wait(run, timeout_seconds=30)
    history = streams.read_events(str(run.pk))
    assert history[-1]["type"] == ev.RUN_COMPLETED
    token = make_stream_token(run.pk)
    got = follow(asgi_server, run.pk, after=history[-1]["id"], token=token, timeout_seconds=5)
    assert got.close_code == 1000 and got.events == []


def test_a_finished_run_whose_stream_lacks_its_terminal_event_does_not_hold_subscribers(asgi_server):
    """The worker died between committing the final status and appending the terminal event, and no monitor
    repaired the stream: the hub's idle check reads the DB, and the socket closes instead of waiting forever."""
    run = WorkflowRun.objects.create(
        workflow="slow", status=RunStatus.COMPLETED, finished_at=timezone.now() - timedelta(hours=1)
    )
    queued = announce_queued(run.pk)
    got = follow(asgi_server, run.pk, token=make_stream_token(run.pk), timeout_seconds=10)
    assert [e["id"] for e in got.events] == [queued]
    assert got.close_code == 1000


def test_a_run_with_no_stream_yet_goes_live_when_its_first_event_is_appended(asgi_server):
    run = WorkflowRun.objects.create(workflow="slow")  # queued; nothing appended, no archive
    with asgi_server.websocket(run.pk, token=make_stream_token(run.pk)) as ws:
        # Let the subscription reach the live phase, then append: the event must arrive promptly.
        wait_for(
            lambda: asgi_server.hub_connections(streams.get_client()).get("reader"), 10, "the hub's reader"
        )
        event_id = announce_queued(run.pk)
        got = receive(ws, limit=1, timeout_seconds=5)
    assert [e["id"] for e in got.events] == [event_id]


# -- keep-alives ----------------------------------------------------------------------------------------------

KEEPALIVE = {"type": "keepalive", "interval_seconds": 0.3}  # WEBSOCKET_KEEPALIVE_SECONDS of the test server


def test_a_client_that_asks_gets_keepalives_at_once_and_on_an_idle_connection(asgi_server):
    run = WorkflowRun.objects.create(workflow="slow")  # queued: an idle stream after its first event
    queued = announce_queued(run.pk)
    query = urlencode({"token": make_stream_token(run.pk), "keepalive": "1"})
    with asgi_server.websocket(run.pk, raw_query=query) as ws:
        messages = [json.loads(ws.recv(timeout=5)) for _ in range(4)]
    # The event, and keep-alives (no id: not events) that go on while nothing else comes.
    assert [m["id"] for m in messages if "id" in m] == [queued]
    assert [m for m in messages if "id" not in m] == [KEEPALIVE] * 3


def test_keepalives_do_not_disturb_the_events_and_stop_at_the_close(asgi_server, shared_worker):
    run = agentflow.start("slow", {"tag": tag(), "steps": 4, "delay_seconds": 0.4})
    query = urlencode({"token": make_stream_token(run.pk), "keepalive": "1"})
    messages = []
    with asgi_server.websocket(run.pk, raw_query=query) as ws, contextlib.suppress(ConnectionClosedOK):
        while True:
            messages.append(json.loads(ws.recv(timeout=10)))
    assert ws.close_code == 1000
    assert [m for m in messages if "id" in m] == streams.read_events(str(run.pk))
    assert messages[-1]["type"] == ev.RUN_COMPLETED  # the terminal event, then the close: nothing after it
    assert KEEPALIVE in messages[1:-1]  # also while events flow


def test_a_client_that_does_not_ask_gets_only_events(asgi_server):
    run = WorkflowRun.objects.create(workflow="slow")
    queued = announce_queued(run.pk)
    with asgi_server.websocket(run.pk, token=make_stream_token(run.pk)) as ws:
        assert json.loads(ws.recv(timeout=5))["id"] == queued
        with pytest.raises(TimeoutError):
            ws.recv(timeout=1.0)  # more than three keep-alive intervals of silence


# -- refusals --------------------------------------------------------------------------------------------------


def refused(server: Server, run_id, **kwargs) -> tuple[int | None, str]:
    got = follow(server, run_id, timeout_seconds=10, **kwargs)
    assert got.events == []
    return got.close_code, got.close_reason


def test_another_users_run_is_forbidden(asgi_server):
    owner, other = make_user("owner"), make_user("other")
    run = WorkflowRun.objects.create(workflow="slow", owner=owner)
    code, reason = refused(asgi_server, run.pk, cookie=session_cookie(other))
    assert code == 4403 and "another user" in reason
    # Staff see every run.
    announce_queued(run.pk)
    with asgi_server.websocket(run.pk, cookie=session_cookie(make_user("staff", is_staff=True))) as ws:
        assert receive(ws, limit=1).events[0]["type"] == ev.RUN_QUEUED


@pytest.mark.parametrize("credentials", ["none", "bad token", "token of another run", "cross-site session"])
def test_unauthenticated_clients_are_refused(asgi_server, credentials):
    owner = make_user("owner")
    run = WorkflowRun.objects.create(workflow="slow", owner=owner)
    other_run = WorkflowRun.objects.create(workflow="slow", owner=owner)
    kwargs = {
        "none": {},
        "bad token": {"token": make_stream_token(run.pk)[:-3] + "xyz"},
        "token of another run": {"token": make_stream_token(other_run.pk)},
        # A page on another site opening the socket rides the user's cookie; its Origin gives it away.
        "cross-site session": {"cookie": session_cookie(owner), "origin": "https://evil.example"},
    }[credentials]
    code, reason = refused(asgi_server, run.pk, **kwargs)
    assert code == 4401 and "not authenticated" in reason


def test_same_site_session_is_accepted(asgi_server):
    owner = make_user("owner")
    run = WorkflowRun.objects.create(workflow="slow", owner=owner)
    announce_queued(run.pk)
    origin = f"http://127.0.0.1:{asgi_server.port}"
    with asgi_server.websocket(run.pk, cookie=session_cookie(owner), origin=origin) as ws:
        assert receive(ws, limit=1).events[0]["type"] == ev.RUN_QUEUED


def test_unknown_run(asgi_server):
    missing = uuid.uuid4()
    assert refused(asgi_server, missing, cookie=session_cookie(make_user("someone")))[0] == 4404
    # A valid token for a run that no longer exists.
    assert refused(asgi_server, missing, token=make_stream_token(missing))[0] == 4404


@pytest.mark.parametrize("after", ["nope", "12-", "-3", "1.5-0", "0x10-0"])
def test_malformed_after(asgi_server, after):
    run = WorkflowRun.objects.create(workflow="slow")
    code, reason = refused(asgi_server, run.pk, after=after, token=make_stream_token(run.pk))
    assert code == 4400 and "malformed after" in reason


def test_a_keepalive_other_than_1_or_0_is_refused(asgi_server):
    run = WorkflowRun.objects.create(workflow="slow")
    query = urlencode({"token": make_stream_token(run.pk), "keepalive": "yes"})
    code, reason = refused(asgi_server, run.pk, raw_query=query)
    assert code == 4400 and "keepalive must be 1 or 0" in reason


# -- one reader for the whole server ---------------------------------------------------------------------------


def test_one_hub_connection_serves_many_sockets(asgi_server, shared_worker, redis_client):
    runs = [agentflow.start("slow", {"tag": tag(), "steps": 6, "delay_seconds": 0.2}) for _ in range(3)]
    with contextlib.ExitStack() as stack:
        sockets = [
            (run, stack.enter_context(asgi_server.websocket(run.pk, token=make_stream_token(run.pk))))
            for run in runs
            for _ in range(12)
        ]
        # Every socket is live (it got its first event) before the connections are counted.
        firsts = {id(ws): receive(ws, limit=1).events for _, ws in sockets}
        connections = asgi_server.hub_connections(redis_client)
        assert connections.get("reader") == 1, connections
        assert connections.get("pool", 0) <= 4, connections

        for run, ws in sockets:
            got = receive(ws)
            assert got.close_code == 1000
            assert firsts[id(ws)] + got.events == streams.read_events(str(run.pk))
