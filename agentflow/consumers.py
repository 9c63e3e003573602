"""The websocket of a run's events: ``ws/runs/<run id>/?after=<event id>&token=<stream token>``.

Replays the events after ``after``, then sends live ones, one JSON event per text message, and closes with
1000 after the run's terminal event. A client that loses the connection reconnects with the id of the last
event it received. Closing the socket never touches the run. Close codes (docs/topics/streaming.md):

====  ==========================================================================================
1000  the run ended: its terminal event was the last message
1011  unexpected server error; reconnect with ``after``
1013  try again later: the client fell too far behind, or Redis is unreachable; reconnect with ``after``
4400  malformed ``after``
4401  not authenticated: no session, and no valid stream token for this run
4403  authenticated, but the run belongs to another user
4404  no run has this id
====  ==========================================================================================
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any
from urllib.parse import parse_qs, urlparse

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.http.request import validate_host

from . import streams
from .access import can_view, check_stream_token
from .hub import SubscriptionDropped, cancel_and_wait, get_hub
from .models import WorkflowRun

logger = logging.getLogger("agentflow.consumers")

CLOSE_ENDED = 1000
CLOSE_SERVER_ERROR = 1011
CLOSE_TRY_AGAIN = 1013
CLOSE_BAD_REQUEST = 4400
CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404

_REASONS = {
    CLOSE_BAD_REQUEST: "malformed after: expected an event id such as 1732390000000-0",
    CLOSE_UNAUTHENTICATED: "not authenticated: log in, or pass ?token=<the run's stream token>",
    CLOSE_FORBIDDEN: "this run belongs to another user",
    CLOSE_NOT_FOUND: "no run has this id",
}


class RunEventsConsumer(AsyncWebsocketConsumer):
    """Streams one run's events to one socket. Needs ``AuthMiddlewareStack`` for session authentication."""

    _pump: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        # Accept first: a close before the handshake completes reaches the client as a bare HTTP 403, without
        # the close code that tells it why.
        await self.accept()
        run_id = str(self.scope["url_route"]["kwargs"]["run_id"])
        query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
        after = (query.get("after") or [""])[-1] or None
        token = (query.get("token") or [""])[-1] or None
        if after is not None:
            try:
                streams.split_id(after)
            except ValueError:
                await self._refuse(CLOSE_BAD_REQUEST)
                return
        user = self.scope.get("user") if _origin_allowed(self.scope) else None
        code = await _authorize(run_id, user, token)
        if code:
            await self._refuse(code)
            return
        self._pump = asyncio.create_task(self._forward(run_id, after))

    async def disconnect(self, code: int) -> None:
        if self._pump is not None:
            await cancel_and_wait(self._pump)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """Clients have nothing to say; what they send is ignored."""

    async def _refuse(self, code: int) -> None:
        await self.close(code=code, reason=_REASONS[code])

    async def _forward(self, run_id: str, after: str | None) -> None:
        code, reason = CLOSE_ENDED, "run ended"
        try:
            async with get_hub().subscribe(run_id, after) as subscription:
                async for event in subscription:
                    # base_send: the event's JSON is built once per process, whatever the number of sockets.
                    await self.base_send({"type": "websocket.send", "text": event.json})
        except SubscriptionDropped as exc:
            code, reason = CLOSE_TRY_AGAIN, exc.reason
        except OSError:  # the client went away mid-send (uvicorn's ClientDisconnected)
            return
        except Exception:
            logger.exception("websocket of run %s failed", run_id)
            code, reason = CLOSE_SERVER_ERROR, "server error"
        with contextlib.suppress(Exception):
            await self.close(code=code, reason=reason)


def _origin_allowed(scope: dict[str, Any]) -> bool:
    """Whether a session cookie may authenticate this handshake.

    Browsers send cookies with cross-site websocket handshakes too, and always send ``Origin``: a page on
    another site must not ride the user's session (the stream token, not ambient, needs no such check).
    Clients that are not browsers send no ``Origin``.
    """
    origin = next((value for name, value in scope.get("headers", ()) if name == b"origin"), None)
    if origin is None:
        return True
    text = origin.decode("latin-1")
    if text in getattr(settings, "CSRF_TRUSTED_ORIGINS", ()):
        return True
    host = urlparse(text).hostname
    allowed = list(settings.ALLOWED_HOSTS)
    if settings.DEBUG and not allowed:
        allowed = [".localhost", "127.0.0.1", "[::1]"]  # as Django's HttpRequest.get_host() in DEBUG
    return bool(host) and validate_host(host, allowed)


@database_sync_to_async
def _authorize(run_id: str, user: Any, token: str | None) -> int:
    """0 if the client may read the run's events, else the close code that says why not."""
    by_token = token is not None and check_stream_token(token, run_id)
    # Unauthenticated clients learn nothing about which runs exist.
    if not by_token and (user is None or not user.is_authenticated):
        return CLOSE_UNAUTHENTICATED
    run = WorkflowRun.objects.filter(pk=run_id).only("id", "owner_id").first()
    if run is None:
        return CLOSE_NOT_FOUND
    if by_token or can_view(user, run):
        return 0
    return CLOSE_FORBIDDEN
