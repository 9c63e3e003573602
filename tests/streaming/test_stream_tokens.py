"""The websocket refuses a stream token once it is revoked or the run changed owner (docs/topics/streaming.md),
whichever way it comes."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model

from agentflow import streams
from agentflow.access import make_stream_token, revoke_stream_tokens
from agentflow.core import events as ev
from agentflow.models import WorkflowRun
from tests.streaming.conftest import Server, receive

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def close_code(server: Server, run: WorkflowRun, token: str, way: str) -> int | None:
    kwargs = (
        {"token": token} if way == "query" else {"subprotocols": ["agentflow.v1", f"agentflow.token.{token}"]}
    )
    with server.websocket(run.pk, **kwargs) as ws:  # type: ignore[arg-type]
        return receive(ws, limit=1, timeout_seconds=10).close_code


@pytest.fixture
def run() -> WorkflowRun:
    owner = get_user_model().objects.create_user("owner")
    run = WorkflowRun.objects.create(workflow="slow", owner=owner)
    streams.announce(
        str(run.pk), ev.envelope(ev.RUN_QUEUED, str(run.pk), step=None, attempt=None, epoch=0, data={})
    )
    return run


@pytest.mark.parametrize("way", ["query", "subprotocol"])
def test_revoked_and_former_owners_tokens_are_refused(
    asgi_server: Server, run: WorkflowRun, way: str
) -> None:
    token = make_stream_token(run)
    assert close_code(asgi_server, run, token, way) is None  # open: it got run.queued
    revoke_stream_tokens(run)
    assert close_code(asgi_server, run, token, way) == 4401
    token = make_stream_token(run)
    assert close_code(asgi_server, run, token, way) is None
    run.owner = get_user_model().objects.create_user("new owner")
    run.save(update_fields=["owner"])
    assert close_code(asgi_server, run, token, way) == 4401
