"""Stream tokens out of URLs (``Authorization: Stream <token>``), and bound to their run: a revoke or a new
owner refuses every token made before. ``?token=`` keeps working for ``EventSource``."""

from __future__ import annotations

import re

import pytest

from agentflow.access import check_stream_token, make_stream_token, revoke_stream_tokens
from tests.api.conftest import url

pytestmark = pytest.mark.django_db


@pytest.fixture
def run(alice, make_run):
    return make_run(alice, status="completed")


def events(client, run, token: str | None = None, *, way: str = "header", **extra):
    if token is not None and way == "header":
        extra["HTTP_AUTHORIZATION"] = f"Stream {token}"
    params = {"token": token} if token is not None and way == "query" else {}
    return client.get(url("run-events", run.pk), params, **extra)


@pytest.mark.parametrize("way", ["header", "query"])
def test_each_way_in_reads_the_runs_events(anonymous, asgi_for, run, way):
    token = make_stream_token(run)
    response = events(anonymous, run, token, way=way)
    assert response.status_code == 200 and response.json()["events"] == []
    # The event stream needs ASGI (through the WSGI test client it is 501 asgi_required).
    headers = {"Accept": "text/event-stream"}
    if way == "header":
        headers["Authorization"] = f"Stream {token}"
    params = {"token": token} if way == "query" else None
    stream = asgi_for(None).get(url("run-events", run.pk), params, headers=headers)
    assert stream.status_code == 200 and stream.streaming


def test_the_header_is_refused_when_it_does_not_hold(anonymous, run, make_run, bob):
    others = make_stream_token(make_run(bob))
    for header in [f"Stream {others}", "Stream", f"Stream {make_stream_token(run)} extra", "stream garbage"]:
        response = events(anonymous, run, HTTP_AUTHORIZATION=header)
        assert response.status_code == 401, header
        assert response.json()["code"] == "invalid_stream_token"


def test_other_authorization_schemes_are_left_to_the_project(client_for, run, alice):
    from rest_framework.authtoken.models import Token

    response = events(
        client_for(None), run, HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=alice).key}"
    )
    assert response.status_code == 200


@pytest.mark.parametrize("way", ["header", "query"])
def test_a_revoke_refuses_every_earlier_token(api, anonymous, run, way):
    before = make_stream_token(run)
    revoke_stream_tokens(run)
    response = events(anonymous, run, before, way=way)
    assert response.status_code == 401 and response.json()["code"] == "invalid_stream_token"
    # The run's representation carries a token that works.
    fresh = api.get(url("run-detail", run.pk)).json()["stream_token"]
    assert fresh != before
    assert events(anonymous, run, fresh, way=way).status_code == 200


def test_a_new_owner_refuses_the_former_owners_tokens(anonymous, run, bob):
    token = make_stream_token(run)
    run.owner = bob
    run.save(update_fields=["owner"])
    assert events(anonymous, run, token).status_code == 401
    assert events(anonymous, run, make_stream_token(run)).status_code == 200


def test_revoking_by_id_and_checking_by_id(run):
    token = make_stream_token(run.pk)
    assert check_stream_token(token, run.pk) and check_stream_token(token, str(run.pk).upper())
    revoke_stream_tokens(run.pk)
    assert not check_stream_token(token, run.pk)
    run.refresh_from_db()
    assert not check_stream_token(token, run)


def test_tokens_fit_in_a_websocket_subprotocol(run):
    # RFC 6455: a subprotocol is an HTTP token; browsers refuse anything else (":" included).
    assert re.fullmatch(r"[A-Za-z0-9._-]+", make_stream_token(run))
