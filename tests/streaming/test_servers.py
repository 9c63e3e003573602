"""What depends on the ASGI server, checked under each one agentflow supports (uvicorn, and daphne, the example
project's): every close code reaches the client, a client leaving mid-send is normal, a close is answered at
once even mid-replay, and the websocket parses run ids and event ids as the REST API does."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import redis
from django.db import connection

from agentflow import archive, streams
from agentflow.access import make_stream_token
from agentflow.core import events as ev
from agentflow.models import RunStatus, WorkflowRun
from tests.conftest import ASGI_SERVERS
from tests.streaming.conftest import Server, receive

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

#: Chances given to a race the test cannot force (see the test).
ATTEMPTS = 6


@pytest.fixture(scope="module", params=ASGI_SERVERS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def server(kind: str, django_db_setup: None, redis_client: redis.Redis) -> Iterator[Server]:
    server = Server(connection.settings_dict["NAME"], server=kind)
    try:
        yield server.wait_ready()
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def _no_errors_logged(server: Server) -> Iterator[None]:
    start = len(server.log)
    yield
    time.sleep(0.05)  # let the log reader catch up with the last lines
    errors = [line for line in server.log[start:] if "Traceback" in line or "ERROR" in line]
    assert not errors, "the server logged errors:\n" + "".join(server.log[start:])


def running_run(events: int = 0) -> WorkflowRun:
    """A running run whose stream holds ``run.queued`` and ``events`` status events."""
    run = WorkflowRun.objects.create(workflow="slow", status=RunStatus.RUNNING)
    run_id = str(run.pk)
    streams.announce(run_id, ev.envelope(ev.RUN_QUEUED, run_id, step=None, attempt=None, epoch=0, data={}))
    client, key = streams.get_client(), streams.stream_key(run_id)
    for start in range(0, events, 1000):
        pipe = client.pipeline(transaction=False)
        for n in range(start, min(events, start + 1000)):
            data = {"text": f"event {n} " + "x" * 200}
            event = ev.envelope(ev.STATUS, run_id, step=None, attempt=None, epoch=0, data=data)
            pipe.xadd(key, {"d": json.dumps(event)})
        pipe.execute()
    return run


def close_code(server: Server, run_id: object, **kwargs: object) -> int | None:
    with server.websocket(run_id, **kwargs) as ws:  # type: ignore[arg-type]
        return receive(ws, timeout_seconds=10).close_code


# -- close codes -------------------------------------------------------------------------------------------


def test_redis_unreachable_closes_with_4503(kind: str, redis_client: redis.Redis) -> None:
    """Daphne (Autobahn) refuses 1013: the socket stayed open and silent. 4503 reaches the client."""
    with socket.socket() as nobody:  # bound, not listening: connections to it are refused
        nobody.bind(("127.0.0.1", 0))
        overrides = {"REDIS_URL": f"redis://127.0.0.1:{nobody.getsockname()[1]}/0"}
        outage = Server(
            connection.settings_dict["NAME"],
            server=kind,
            env={"AGENTFLOW_TEST_OVERRIDES": json.dumps(overrides)},
        )
        try:
            outage.wait_ready()
            run = WorkflowRun.objects.create(workflow="slow", status=RunStatus.RUNNING)
            with outage.websocket(run.pk, token=make_stream_token(run)) as ws:
                got = receive(ws, timeout_seconds=15)
        finally:
            outage.stop()
    assert (got.events, got.close_code) == ([], 4503)
    assert not [line for line in outage.log if "Traceback" in line or "ERROR" in line], outage.log


def test_a_client_leaving_mid_send_is_not_an_error(server: Server) -> None:
    """Clients that close while events keep coming: daphne raised Autobahn's Disconnected into the sending
    task, which logged an ERROR with a traceback (the autouse fixture checks the log). It happens when a close
    is read between a send and the end of the TCP connection, so the test gives it several chances."""
    run = running_run()
    run_id, key = str(run.pk), streams.stream_key(str(run.pk))
    stop = threading.Event()

    def append() -> None:
        client = streams.get_client()
        while not stop.wait(0.002):
            event = ev.envelope(
                ev.STATUS, run_id, step=None, attempt=None, epoch=0, data={"text": "y" * 2000}
            )
            client.xadd(key, {"d": json.dumps(event)})

    producer = threading.Thread(target=append)
    producer.start()
    try:
        for _ in range(ATTEMPTS):
            # max_queue=1: the client reads in fits and starts, so the replay of a growing history and the live
            # events pile up at the server while the closing handshake is under way.
            with server.websocket(run.pk, token=make_stream_token(run), max_queue=1, close_timeout=0.3) as ws:
                ws.recv(timeout=10)
                ws.recv(timeout=10)
                time.sleep(0.2)
        time.sleep(0.5)
    finally:
        stop.set()
        producer.join()
    # The server is fine: a new client follows the run.
    with server.websocket(run.pk, token=make_stream_token(run)) as ws:
        assert receive(ws, limit=1).events[0]["type"] == ev.RUN_QUEUED


@pytest.mark.parametrize("source", ["redis", "archive"])
def test_a_close_during_a_long_replay_is_answered_at_once(server: Server, source: str) -> None:
    run = running_run(events=10_000)
    if source == "archive":
        archive.archive_events(str(run.pk))
        streams.get_client().delete(streams.stream_key(str(run.pk)))
        WorkflowRun.objects.filter(pk=run.pk).update(status=RunStatus.COMPLETED)
    # max_queue=None: the client reads everything that comes, as a browser does. (A Python client that leaves
    # more than max_queue messages unread stops reading the socket, and then cannot see any answer to its
    # close before its close_timeout: docs/topics/streaming.md.)
    with server.websocket(run.pk, token=make_stream_token(run), max_queue=None, close_timeout=10) as ws:
        for _ in range(5):
            ws.recv(timeout=10)
        started = time.monotonic()
        ws.close()
        seconds = time.monotonic() - started
    assert ws.close_code == 1000
    assert seconds < 1.0, f"the close took {seconds:.1f}s"


# -- ids in the URL ----------------------------------------------------------------------------------------


def test_run_ids_are_read_as_the_rest_api_reads_them(server: Server) -> None:
    run = running_run()
    token = make_stream_token(run)
    for spelling in (str(run.pk).upper(), run.pk.hex, f"{{{run.pk}}}"):
        with server.websocket(spelling, token=token) as ws:
            assert receive(ws, limit=1).events[0]["run"] == str(run.pk), spelling
    # Not a run id at all: 4404, with or without credentials (no run can have it; nothing is read).
    assert close_code(server, "not-a-uuid") == 4404
    assert close_code(server, "not-a-uuid", token=token) == 4404
    # A well-formed id tells an unauthenticated client nothing.
    assert close_code(server, uuid.uuid4()) == 4401


@pytest.mark.parametrize(
    "after",
    [
        "18446744073709551616-0",  # 2**64
        "1-18446744073709551616",
        "18446744073709551615-18446744073709551615",  # the largest id: nothing can follow it
        "1" * 100 + "-0",
    ],
)
def test_event_ids_redis_cannot_take_are_4400(server: Server, after: str) -> None:
    run = running_run()
    assert close_code(server, run.pk, after=after, token=make_stream_token(run)) == 4400


# -- the stream token as a subprotocol ---------------------------------------------------------------------


def test_the_stream_token_as_a_subprotocol(server: Server) -> None:
    """Out of the URL (and so of access logs); the server accepts agentflow.v1, or else the token's own
    subprotocol: a browser fails a handshake whose answer names none of those it offered."""
    run = running_run()
    token = make_stream_token(run)
    for offered, accepted in [
        (["agentflow.v1", f"agentflow.token.{token}"], "agentflow.v1"),
        ([f"agentflow.token.{token}"], f"agentflow.token.{token}"),
    ]:
        with server.websocket(run.pk, subprotocols=offered) as ws:
            assert ws.subprotocol == accepted
            assert receive(ws, limit=1).events[0]["type"] == ev.RUN_QUEUED
    refused = make_stream_token(running_run())  # another run's
    assert close_code(server, run.pk, subprotocols=["agentflow.v1", f"agentflow.token.{refused}"]) == 4401


# -- flow control ------------------------------------------------------------------------------------------


def test_a_client_that_stops_reading_is_dropped_and_the_others_get_everything(kind: str) -> None:
    """A client whose socket stays full is closed with 4503 once the server queued SUBSCRIBER_QUEUE_SIZE events
    for it; it has then received an exact prefix of the stream, and a reading client of the same run, served by
    the same process, the whole stream. (Under uvicorn the events are written to the connection from the hub's
    reader while the socket takes them, agentflow.frames; this checks the way back to the queue.)"""
    if kind == "daphne":
        pytest.skip("daphne buffers what the application sends without limit: its send never waits")
    overrides = {"SUBSCRIBER_QUEUE_SIZE": 5}
    env = {"AGENTFLOW_TEST_OVERRIDES": json.dumps(overrides), "AGENTFLOW_LOG_LEVEL": "DEBUG"}
    server = Server(connection.settings_dict["NAME"], server=kind, env=env)
    try:
        server.wait_ready()
        run = running_run()
        run_id, key, token = str(run.pk), streams.stream_key(str(run.pk)), make_stream_token(run)
        # max_queue=1: this client stops reading its socket as soon as one message waits unread.
        with server.websocket(run.pk, token=token, max_queue=1, close_timeout=10) as slow:
            assert receive(slow, limit=1).events[0]["type"] == ev.RUN_QUEUED
            with server.websocket(run.pk, token=token) as fast:
                assert receive(fast, limit=1).events[0]["type"] == ev.RUN_QUEUED

                def produce() -> None:
                    client = streams.get_client()
                    for n in range(400):
                        data = {"n": n, "text": "z" * 20_000}
                        event = ev.envelope(ev.STATUS, run_id, step=None, attempt=None, epoch=0, data=data)
                        client.xadd(key, {"d": json.dumps(event)})
                        time.sleep(0.001)
                    event = ev.envelope(ev.RUN_COMPLETED, run_id, step=None, attempt=None, epoch=0, data={})
                    client.xadd(key, {"d": json.dumps(event)})

                producer = threading.Thread(target=produce)
                producer.start()
                try:
                    got_fast = receive(fast, timeout_seconds=20)
                finally:
                    producer.join()
                everything = streams.read_events(run_id)
            got_slow = receive(slow, timeout_seconds=20)
    finally:
        server.stop()
    assert got_fast.close_code == 1000 and got_fast.events == everything[1:]
    assert got_slow.close_code == 4503, (got_slow.close_code, len(got_slow.events))
    assert got_slow.events == everything[1 : 1 + len(got_slow.events)] and len(got_slow.events) < 400
    # The connections took uvicorn's fast path (else this tested only the ASGI messages' flow control).
    assert sum("frames to the transport" in line for line in server.log) == 2, "".join(server.log)
