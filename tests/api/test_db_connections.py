"""Nothing holds a database connection while it waits: open event streams and synchronous runs waiting for
their end, against a real ASGI server (uvicorn and daphne) and a WSGI one, leave the test database with a
handful of connections however many there are."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import override_settings
from rest_framework.authtoken.models import Token

from agentflow import runs, streams
from agentflow.conf import agentflow_settings
from agentflow.core import events as ev
from agentflow.models import RunStatus, WorkflowRun
from tests.conftest import ASGI_SERVERS, AsgiServer, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

#: A queue no worker consumes: the synchronous runs stay queued, their requests waiting, until cancelled.
IDLE_QUEUE = "agentflow-tests-nobody"
STREAMS, STREAMED_RUNS, WAITING_RUNS = 100, 20, 50
#: What the test database may see at once while all of them are open (before: one per request, 150 here).
#: Each waiting request still reads its run's status about once a second, with a connection it closes at once:
#: a few of those are open at any moment (5 to 10 seen on a loaded 2-CPU machine).
MAX_CONNECTIONS = 20
TIMEOUT = httpx.Timeout(30.0)


@pytest.fixture(scope="module", params=ASGI_SERVERS)
def server(request: pytest.FixtureRequest, django_db_setup: None, redis_client) -> Iterator[AsgiServer]:
    server = AsgiServer(
        connection.settings_dict["NAME"],
        "tests.api.settings",
        "/api/schema/",
        server=request.param,
        env={"AGENTFLOW_TEST_OVERRIDES": json.dumps({"TASK_QUEUE": IDLE_QUEUE})},
    )
    try:
        yield server.wait_ready()
    finally:
        server.stop()
        redis_client.delete(IDLE_QUEUE)


@pytest.fixture
def auth() -> dict[str, str]:
    user = User.objects.create_user(f"u-{uuid.uuid4().hex[:8]}")
    return {"Authorization": f"Token {Token.objects.create(user=user).key}"}


def connections_to_the_test_database() -> int:
    """Connections to the test database other than this test's own."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return int(cursor.fetchone()[0])


def most_connections(seconds: float) -> int:
    """The most connections seen over ``seconds`` (sampled every 20 ms)."""
    most, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        most = max(most, connections_to_the_test_database())
        time.sleep(0.02)
    return most


def running_run(owner: User) -> WorkflowRun:
    run = WorkflowRun.objects.create(workflow="api-echo", owner=owner, status=RunStatus.RUNNING)
    run_id = str(run.pk)
    streams.announce(run_id, ev.envelope(ev.RUN_QUEUED, run_id, step=None, attempt=None, epoch=0, data={}))
    return run


class Clients:
    """HTTP clients in an event loop of their own (a thread), holding requests open until told to stop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.client = self.call(self._client())
        self.release = asyncio.Event()

    async def _client(self) -> httpx.AsyncClient:
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)
        return httpx.AsyncClient(timeout=TIMEOUT, limits=limits)

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=60)

    def spawn(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    async def follow(self, url: str, headers: dict[str, str], opened: Callable[[], None]) -> list[str]:
        """Open an event stream, report it open once its first event came, hold it until released."""
        async with self.client.stream(
            "GET", url, headers={"Accept": "text/event-stream", **headers}
        ) as response:
            assert response.status_code == 200, await response.aread()
            types: list[str] = []
            lines = response.aiter_lines()  # held: a dropped line iterator would close the response
            async for line in lines:
                if line.startswith("event: "):
                    types.append(line[len("event: ") :])
                    opened()
                    break
            # Keep reading (the keep-alives) until released, as a browser would.
            reader = asyncio.ensure_future(self._drain(lines, types))
            await self.release.wait()
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            return types

    @staticmethod
    async def _drain(lines: Any, types: list[str]) -> None:
        async for line in lines:
            if line.startswith("event: "):
                types.append(line[len("event: ") :])

    def close(self) -> None:
        async def shut_down() -> None:
            pending = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            await self.client.aclose()

        with contextlib.suppress(Exception):
            self.call(shut_down())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


def start_waiting_runs(clients: Clients, base_url: str, auth: dict[str, str], tag: str) -> list[Any]:
    """``WAITING_RUNS`` synchronous runs, ten at a time (each request holds a connection while it records its
    run); returns the futures of their answers once every run is recorded."""

    def recorded(count: int) -> bool:
        return WorkflowRun.objects.filter(input__text__startswith=tag).count() == count

    waits: list[Any] = []
    for start in range(0, WAITING_RUNS, 10):
        waits += [
            clients.spawn(
                clients.client.post(
                    f"{base_url}/api/workflows/api-echo/run/?timeout=60",
                    json={"text": f"{tag}-{start + n}"},
                    headers=auth,
                )
            )
            for n in range(10)
        ]
        wait_for(functools.partial(recorded, start + 10), 30, "the synchronous runs to be recorded")
    return waits


def cancel_and_collect(waits: list[Any], tag: str) -> None:
    """Cancelling the runs ends the waits: each answers 200 with its cancelled run."""
    for run in WorkflowRun.objects.filter(input__text__startswith=tag):
        runs.cancel(run)
    answers = [wait.result(timeout=60) for wait in waits]
    assert {(answer.status_code, answer.json()["status"]) for answer in answers} == {(200, "cancelled")}


def test_open_streams_and_waiting_runs_hold_no_connection(server, auth):
    owner = User.objects.get(auth_token__key=auth["Authorization"].split()[1])
    streamed = [running_run(owner) for _ in range(STREAMED_RUNS)]
    tag = uuid.uuid4().hex
    clients = Clients()
    try:
        # Ten at a time: a request holds a connection while its view runs, and a burst of a hundred would ask
        # the database for a hundred at once (what a connection pool's max_size is for).
        opened = threading.Semaphore(0)
        targets = [run for run in streamed for _ in range(STREAMS // STREAMED_RUNS)]
        follows = []
        for start in range(0, STREAMS, 10):
            follows += [
                clients.spawn(
                    clients.follow(f"{server.http}/api/runs/{run.pk}/events/", auth, opened.release)
                )
                for run in targets[start : start + 10]
            ]
            for _ in range(10):
                if not opened.acquire(timeout=30):
                    failed = [f.exception() for f in follows if f.done()]
                    raise AssertionError(f"an event stream did not open: {failed[:3]}")
        waits = start_waiting_runs(clients, server.http, auth, tag)

        # Everything is open: 100 streams and 50 requests waiting for their runs.
        assert not any(f.done() for f in follows + waits)
        assert most_connections(seconds=1.0) <= MAX_CONNECTIONS

        # And everything still works.
        cancel_and_collect(waits, tag)
        clients.loop.call_soon_threadsafe(clients.release.set)
        assert {tuple(f.result(timeout=30)) for f in follows} == {("run.queued",)}
    finally:
        clients.close()


def test_runs_waiting_under_wsgi_hold_no_connection(live_server, auth, redis_client):
    """Django's threaded WSGI server (what runserver and pytest-django's live server use): one thread per
    request, each with its own connection while its view runs."""
    tag = uuid.uuid4().hex
    clients = Clients()
    overrides = {**agentflow_settings.user_settings, "TASK_QUEUE": IDLE_QUEUE}
    try:
        with override_settings(AGENTFLOW=overrides):
            waits = start_waiting_runs(clients, live_server.url, auth, tag)
            assert not any(f.done() for f in waits)
            assert most_connections(seconds=1.0) <= MAX_CONNECTIONS
            cancel_and_collect(waits, tag)
    finally:
        clients.close()
        redis_client.delete(IDLE_QUEUE)
