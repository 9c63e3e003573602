"""The API's server-sent events, served by a real ASGI server (uvicorn) as in production: a synchronous run
streamed as it runs, and a run's events followed with the stream token and resumed with Last-Event-ID."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
from django.contrib.auth.models import User
from rest_framework.authtoken.models import Token

from agentflow import streams
from agentflow.models import WorkflowRun
from tests.conftest import AsgiServer, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

TIMEOUT = httpx.Timeout(20.0)
SSE = {"Accept": "text/event-stream"}
THREE_STEPS = [
    "run.queued", "run.started", "status", "step.started", "step.completed", "status", "step.started",
    "step.completed", "data", "step.started", "output.delta", "output.delta", "step.completed", "output",
    "run.completed",
]  # fmt: skip


@pytest.fixture(scope="module")
def server(django_db_setup: None, redis_client) -> Iterator[AsgiServer]:
    from django.db import connection

    server = AsgiServer(connection.settings_dict["NAME"], "tests.api.settings", "/api/schema/")
    try:
        yield server.wait_ready()
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def _no_server_errors(server: AsgiServer, shared_worker) -> Iterator[None]:
    start = len(server.log)
    yield
    time.sleep(0.05)
    errors = [line for line in server.log[start:] if "Traceback" in line or "ERROR" in line]
    assert not errors, "the server logged errors:\n" + "".join(server.log[start:])


@pytest.fixture
def auth() -> dict[str, str]:
    user = User.objects.create_user(f"u-{uuid.uuid4().hex[:8]}")
    return {"Authorization": f"Token {Token.objects.create(user=user).key}"}


def frames(response: httpx.Response, limit: int | None = None) -> list[dict]:
    """The events of an SSE body (``limit``: stop after that many); checks each frame's id and type."""
    events: list[dict] = []
    fields: dict[str, str] = {}
    for line in response.iter_lines():
        if line:
            name, _, value = line.partition(": ")
            fields[name] = value
            continue
        if "data" in fields:
            event = json.loads(fields["data"])
            assert (fields["id"], fields["event"]) == (event["id"], event["type"])
            events.append(event)
            if len(events) == limit:
                break
        fields = {}
    return events


def test_a_synchronous_run_streamed(server, auth):
    t = uuid.uuid4().hex
    with (
        httpx.Client(timeout=TIMEOUT) as client,
        client.stream(
            "POST", f"{server.http}/api/workflows/three-steps/run/", json={"tag": t}, headers={**SSE, **auth}
        ) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream"
        events = frames(response)  # ends by itself after the terminal event
    assert [e["type"] for e in events] == THREE_STEPS
    run_id = events[0]["run"]
    assert WorkflowRun.objects.get(pk=run_id).status == "completed"
    assert events == streams.read_events(run_id)


def test_following_a_run_with_its_stream_token_and_last_event_id(server, auth):
    with httpx.Client(timeout=TIMEOUT) as client:
        started = client.post(
            f"{server.http}/api/workflows/slow/runs/",
            json={"tag": uuid.uuid4().hex, "steps": 6, "delay_seconds": 0.1},
            headers=auth,
        )
        assert started.status_code == 202
        run = started.json()
        # As an EventSource would: no headers of its own but Accept and Last-Event-ID, the token in the URL,
        # which also keeps the ?after= it started with.
        events_url = run["urls"]["events"]
        params = {"token": run["stream_token"], "after": "0-1"}
        with client.stream("GET", events_url, params=params, headers=SSE) as response:
            assert response.status_code == 200
            first = frames(response, limit=4)
        with client.stream(
            "GET", events_url, params=params, headers={**SSE, "Last-Event-ID": first[-1]["id"]}
        ) as response:
            assert response.status_code == 200
            rest = frames(response)
        assert rest[-1]["type"] == "run.completed"
        wait_for(lambda: WorkflowRun.objects.get(pk=run["id"]).last_event_id, 10, "the archive")
        assert first + rest == streams.read_events(run["id"])
        # The run is over and nothing follows: 204 stops the EventSource for good.
        done = client.get(events_url, params=params, headers={**SSE, "Last-Event-ID": rest[-1]["id"]})
        assert done.status_code == 204
        # Another run's token is refused.
        other = client.get(events_url, params={"token": "nope"}, headers=SSE)
        assert other.status_code == 401
        assert other.text.startswith("event: error\ndata: ")
