"""GET runs/{id}/events/: JSON pages from the stream or the archive, and the per-run stream token."""

from __future__ import annotations

import json

import pytest
import redis
from django.test import override_settings

from agentflow import archive, streams
from agentflow.access import make_stream_token
from agentflow.conf import agentflow_settings
from agentflow.core import events as ev
from agentflow.core.serialization import dumps
from agentflow.models import RunEvent
from tests.api.conftest import url

pytestmark = pytest.mark.django_db


def archived(run, count: int) -> list[str]:
    """``count`` archived events of ``run`` (ids 1000-0, 1000-1, 1001-0, ...); returns their ids."""
    ids = []
    for index in range(count):
        ms, seq = 1000 + index // 2, index % 2
        RunEvent.objects.create(
            run=run,
            stream_id=f"{ms}-{seq}",
            stream_ms=ms,
            stream_seq=seq,
            type="status",
            epoch=1,
            ts="2024-01-01T00:00:00Z",
            data={"message": str(index)},
        )
        ids.append(f"{ms}-{seq}")
    return ids


def in_stream(run, count: int) -> list[str]:
    client = streams.get_client()
    return [
        client.xadd(
            streams.stream_key(str(run.pk)),
            {"d": dumps(ev.envelope("status", str(run.pk), step=None, attempt=None, epoch=1, data={"i": i}))},
        )
        for i in range(count)
    ]


@pytest.fixture
def finished(alice, make_run):
    run = make_run(alice, status="completed")
    ids = archived(run, 5)
    run.last_event_id = ids[-1]
    run.save()
    return run


def test_a_page_of_archived_events(api, finished):
    response = api.get(url("run-events", finished.pk), {"limit": 2})
    assert response.status_code == 200
    body = response.json()
    assert [e["id"] for e in body["events"]] == ["1000-0", "1000-1"]
    assert body["last_id"] == "1000-1" and body["has_more"] is True
    assert body["events"][0] == {
        "id": "1000-0",
        "type": "status",
        "run": str(finished.pk),
        "step": None,
        "attempt": None,
        "epoch": 1,
        "ts": "2024-01-01T00:00:00Z",
        "data": {"message": "0"},
    }


def test_following_last_id_reads_every_event_once(api, finished):
    seen, after = [], None
    while True:
        params = {"limit": 2, **({"after": after} if after else {})}
        body = api.get(url("run-events", finished.pk), params).json()
        seen += [e["id"] for e in body["events"]]
        after = body["last_id"]
        if not body["has_more"]:
            break
    assert seen == ["1000-0", "1000-1", "1001-0", "1001-1", "1002-0"]
    # Past the end: no events, and last_id stays where the client is.
    body = api.get(url("run-events", finished.pk), {"after": "1002-0"}).json()
    assert body == {"events": [], "last_id": "1002-0", "has_more": False}


def test_events_still_in_the_stream(api, alice, make_run):
    run = make_run(alice, status="running")
    ids = in_stream(run, 3)
    body = api.get(url("run-events", run.pk)).json()
    assert [e["id"] for e in body["events"]] == ids
    assert [e["data"] for e in body["events"]] == [{"i": 0}, {"i": 1}, {"i": 2}]
    body = api.get(url("run-events", run.pk), {"after": ids[0], "limit": 1}).json()
    assert [e["id"] for e in body["events"]] == [ids[1]] and body["has_more"] is True


def test_a_run_without_events(api, alice, make_run):
    run = make_run(alice)
    assert api.get(url("run-events", run.pk)).json() == {"events": [], "last_id": None, "has_more": False}


@override_settings(
    AGENTFLOW={**agentflow_settings.user_settings, "EVENTS_PAGE_SIZE": 3, "EVENTS_MAX_PAGE_SIZE": 4}
)
def test_default_and_largest_page(api, finished):
    assert len(api.get(url("run-events", finished.pk)).json()["events"]) == 3
    assert len(api.get(url("run-events", finished.pk), {"limit": 4}).json()["events"]) == 4
    assert api.get(url("run-events", finished.pk), {"limit": 5}).status_code == 400


@pytest.mark.parametrize(
    "after", ["abc", "1-", "-1", "1-2-3", "1.5-0", "\u0661-\u0660", "18446744073709551616-0"]
)
def test_a_malformed_after_is_400(api, finished, after):
    response = api.get(url("run-events", finished.pk), {"after": after})
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid_event_id"
    assert body["details"][0]["field"] == "after"


@pytest.mark.parametrize("limit", ["0", "-1", "ten", "1.5", "1001"])
def test_a_bad_limit_is_400(api, finished, limit):
    response = api.get(url("run-events", finished.pk), {"limit": limit})
    assert response.status_code == 400
    assert response.json() == {
        "code": "invalid_parameter",
        "message": "limit: must be a whole number from 1 to 1000",
        "details": [{"field": "limit", "code": "range", "message": "must be a whole number from 1 to 1000"}],
    }


def test_without_redis_an_archived_run_is_read_from_the_db(api, finished, alice, make_run, monkeypatch):
    def down(*args, **kwargs):
        raise redis.ConnectionError("Redis is down")

    monkeypatch.setattr(archive, "history", down)
    body = api.get(url("run-events", finished.pk), {"limit": 1}).json()
    assert [e["id"] for e in body["events"]] == ["1000-0"] and body["has_more"] is True
    running = make_run(alice, status="running")
    response = api.get(url("run-events", running.pk))
    assert response.status_code == 503
    assert response.json()["code"] == "stream_unavailable"


# -- the stream token ------------------------------------------------------------------------------------------


def test_the_stream_token_reads_its_runs_events_without_a_session(anonymous, finished):
    response = anonymous.get(url("run-events", finished.pk), {"token": make_stream_token(finished.pk)})
    assert response.status_code == 200
    assert len(response.json()["events"]) == 5


def test_the_stream_token_of_one_run_is_refused_for_another(anonymous, client_for, finished, bob, make_run):
    other = make_run(bob, status="completed")
    bobs = client_for(None)
    bobs.force_login(bob)
    assert bobs.get(url("run-events", other.pk)).status_code == 200
    for client in (anonymous, bobs):  # a token that does not hold is refused even with a session
        response = client.get(url("run-events", other.pk), {"token": make_stream_token(finished.pk)})
        assert response.status_code == 401
        assert response.json()["code"] == "invalid_stream_token"


@pytest.mark.parametrize("token", ["garbage", "x" * 600])
def test_a_bad_or_expired_stream_token_is_401(anonymous, finished, token):
    response = anonymous.get(url("run-events", finished.pk), {"token": token})
    assert response.status_code == 401 and response.json()["code"] == "invalid_stream_token"
    good = make_stream_token(finished.pk)
    with override_settings(AGENTFLOW={**agentflow_settings.user_settings, "STREAM_TOKEN_TTL_SECONDS": 1e-9}):
        response = anonymous.get(url("run-events", finished.pk), {"token": good})
    assert response.status_code == 401 and response.json()["code"] == "invalid_stream_token"


def test_a_stream_token_for_a_missing_run_is_404(anonymous):
    import uuid

    run_id = uuid.uuid4()
    response = anonymous.get(url("run-events", run_id), {"token": make_stream_token(run_id)})
    assert response.status_code == 404 and response.json()["code"] == "run_not_found"


def test_the_stream_token_works_on_events_only(anonymous, finished):
    token = make_stream_token(finished.pk)
    for method, name in [("get", "run-detail"), ("post", "run-cancel"), ("post", "run-resume")]:
        response = getattr(anonymous, method)(f"{url(name, finished.pk)}?token={token}")
        assert response.status_code == 401, name
        assert response.json()["code"] == "not_authenticated"
    response = anonymous.get(url("run-list"), {"token": token})
    assert response.status_code == 401


def test_the_stream_token_reads_another_users_run_it_was_given_for(anonymous, bob, finished):
    # A capability: whoever holds it may read that run's events (the owner chose to hand it out), and it
    # decides over the session that comes with it.
    anonymous.force_login(bob)
    assert anonymous.get(url("run-events", finished.pk)).status_code == 404
    response = anonymous.get(url("run-events", finished.pk), {"token": make_stream_token(finished.pk)})
    assert response.status_code == 200


# -- as server-sent events (their content is tested against a real ASGI server) --------------------------------


def sse(client, run, **extra):
    return client.get(url("run-events", run.pk), HTTP_ACCEPT="text/event-stream", **extra)


def asgi_sse(client, run, **headers):
    return client.get(url("run-events", run.pk), headers={"Accept": "text/event-stream", **headers})


def test_accept_event_stream_answers_a_stream(asgi_for, alice, make_run):
    run = make_run(alice, status="running")
    response = asgi_sse(asgi_for(alice), run)
    assert response.status_code == 200
    assert response.streaming and response["Content-Type"] == "text/event-stream"
    assert response["Cache-Control"] == "no-cache"


def test_an_event_stream_under_wsgi_is_501_at_once(api, alice, make_run):
    # Under WSGI Django would consume the stream whole before sending a byte: the client would hear nothing
    # until the run ends.
    response = sse(api, make_run(alice, status="running"))
    assert response.status_code == 501 and not response.streaming
    assert response["Content-Type"] == "text/event-stream"  # errors of event stream requests are events
    error = json.loads(response.content.decode().split("data: ", 1)[1])
    assert error["code"] == "asgi_required"
    assert error["message"].startswith("Server-sent events need an ASGI server (uvicorn, daphne)")


def test_an_event_stream_with_a_stream_token(asgi_for, alice, make_run):
    run = make_run(alice, status="running")
    response = asgi_for(None).get(
        url("run-events", run.pk),
        {"token": make_stream_token(run.pk)},
        headers={"Accept": "text/event-stream"},
    )
    assert response.status_code == 200 and response.streaming


def test_a_finished_runs_stream_after_its_last_event_is_204(api, asgi_for, alice, finished):
    assert sse(api, finished, HTTP_LAST_EVENT_ID="1002-0").status_code == 204  # no stream: WSGI will do
    assert asgi_sse(asgi_for(alice), finished, **{"Last-Event-ID": "1001-0"}).status_code == 200
    # Last-Event-ID (sent by a reconnecting EventSource) wins over the URL's ?after=.
    response = api.get(
        url("run-events", finished.pk) + "?after=1000-0",
        HTTP_ACCEPT="text/event-stream",
        HTTP_LAST_EVENT_ID="1002-0",
    )
    assert response.status_code == 204


@pytest.mark.parametrize(("header", "query"), [("nope", ""), ("", "?after=nope")])
def test_a_malformed_last_event_id_or_after_is_400(api, finished, header, query):
    response = api.get(
        url("run-events", finished.pk) + query, HTTP_ACCEPT="text/event-stream", HTTP_LAST_EVENT_ID=header
    )
    assert response.status_code == 400
    assert response["Content-Type"] == "text/event-stream"
    assert b'"code": "invalid_event_id"' in response.content
