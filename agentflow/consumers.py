"""The websocket of a run's events: ``ws/runs/<run id>/?after=<event id>``.

Replays the events after ``after``, then sends live ones, one JSON event per text message, and closes with
1000 after the run's terminal event. A client that loses the connection reconnects with the id of the last
event it received. Closing the socket never touches the run. With ``?keepalive=1`` the client also gets a
keep-alive message every ``WEBSOCKET_KEEPALIVE_SECONDS`` (:mod:`agentflow.keepalive`), by which it notices a
connection that died silently.

Authentication: the session (``AuthMiddlewareStack``), or the run's stream token (:mod:`agentflow.access`),
offered as the subprotocol ``agentflow.token.<token>`` (next to ``agentflow.v1``, which the server then
accepts) or, where a client can do nothing else, as ``?token=<token>``, which lands in access logs.

Close codes (docs/topics/streaming.md). Servers other than uvicorn (daphne: Autobahn) refuse codes outside 1000
and 3000-4999, so the server's own errors are 4500 and 4503, never 1011 and 1013:

====  ==========================================================================================
1000  the run ended: its terminal event was the last message
4400  malformed ``after`` (or ``keepalive``)
4401  not authenticated: no session, and no valid stream token for this run (fetch a fresh one)
4403  authenticated, but the run belongs to another user
4404  no run has this id (or the id is not a run id at all)
4500  unexpected server error; reconnect with ``after``
4503  try again later: the client fell too far behind, Redis or the database is unreachable, or the server
      is shutting down; reconnect with ``after``
====  ==========================================================================================
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any
from urllib.parse import parse_qs, urlparse

from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.db import Error as DatabaseError
from django.http.request import validate_host

from . import frames, streams
from .access import can_view, check_stream_token
from .conf import agentflow_settings
from .db import in_db
from .hub import SubscriptionDropped, cancel_and_wait, get_hub
from .keepalive import WebsocketKeepAlive, wanted
from .models import WorkflowRun

logger = logging.getLogger("agentflow.consumers")

CLOSE_ENDED = 1000
CLOSE_BAD_REQUEST = 4400
CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404
CLOSE_SERVER_ERROR = 4500
CLOSE_TRY_AGAIN = 4503

#: The subprotocol of agentflow's messages, accepted when a client offers it.
SUBPROTOCOL = "agentflow.v1"
#: A stream token offered as a subprotocol: ``agentflow.token.<token>``, kept out of URLs and access logs.
TOKEN_SUBPROTOCOL_PREFIX = "agentflow.token."

_REASONS = {
    CLOSE_BAD_REQUEST: "malformed after: expected an event id such as 1732390000000-0",
    CLOSE_UNAUTHENTICATED: "not authenticated: log in, or offer the run's stream token",
    CLOSE_FORBIDDEN: "this run belongs to another user",
    CLOSE_NOT_FOUND: "no run has this id",
    CLOSE_SERVER_ERROR: "server error",
    CLOSE_TRY_AGAIN: "try again later",
}


class RunEventsConsumer(AsyncWebsocketConsumer):
    """Streams one run's events to one socket. Needs ``AuthMiddlewareStack`` for session authentication."""

    _pump: asyncio.Task[None] | None = None
    _keepalive: WebsocketKeepAlive | None = None

    async def connect(self) -> None:
        token, subprotocol = _offered(self.scope.get("subprotocols") or ())
        # Accept first: a close before the handshake completes reaches the client as a bare HTTP 403, without
        # the close code that tells it why.
        await self.accept(subprotocol=subprotocol)
        run_id = _run_id(self.scope["url_route"]["kwargs"]["run_id"])
        if run_id is None:  # no run can have it: this says nothing about which runs exist
            await self._refuse(CLOSE_NOT_FOUND)
            return
        query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
        after = (query.get("after") or [""])[-1] or None
        token = token or (query.get("token") or [""])[-1] or None
        if after is not None:
            try:
                streams.split_id(after)
            except ValueError:
                await self._refuse(CLOSE_BAD_REQUEST)
                return
        try:
            keepalive = wanted((query.get("keepalive") or [None])[-1])
        except ValueError as exc:
            await self._close(CLOSE_BAD_REQUEST, str(exc))
            return
        user = self.scope.get("user") if _origin_allowed(self.scope) else None
        try:
            code = await in_db(_authorize, run_id, user, token)
        except DatabaseError as exc:
            logger.warning("websocket of run %s: cannot read the run: %s", run_id, exc)
            code = CLOSE_TRY_AGAIN
        except Exception:
            logger.exception("websocket of run %s: authorization failed", run_id)
            code = CLOSE_SERVER_ERROR
        if code:
            await self._refuse(code)
            return
        if keepalive:
            interval = agentflow_settings.websocket_keepalive_seconds
            self._keepalive = WebsocketKeepAlive(self.base_send, interval).start()
        self._pump = asyncio.create_task(self._forward(run_id, after))

    async def disconnect(self, code: int) -> None:
        if self._keepalive is not None:
            await self._keepalive.stop()
        if self._pump is not None:
            await cancel_and_wait(self._pump)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """Clients have nothing to say; what they send is ignored."""

    async def _refuse(self, code: int) -> None:
        await self._close(code, _REASONS[code])

    async def _forward(self, run_id: str, after: str | None) -> None:
        """Send the events: whatever is ready in one go (a page of history is one write), and live events
        straight from the hub's reader when the connection allows (:mod:`agentflow.frames`): the event's JSON
        and frame are built once per process, whatever the number of sockets."""
        code, reason = CLOSE_ENDED, "run ended"
        writer = frames.writer_for(self.base_send)
        logger.debug(
            "websocket of run %s: %s", run_id, "frames to the transport" if writer.direct else "ASGI"
        )
        try:
            async with get_hub().subscribe(run_id, after) as subscription:
                if writer.direct:
                    subscription.sink = writer.try_write
                async for event in subscription:
                    if not await writer.write([event, *subscription.ready_now()]):
                        return  # the client went away: nobody to close for
        except SubscriptionDropped as exc:
            code, reason = CLOSE_TRY_AGAIN, exc.reason
        except Exception:
            logger.exception("websocket of run %s failed", run_id)
            code, reason = CLOSE_SERVER_ERROR, _REASONS[CLOSE_SERVER_ERROR]
        await self._close(code, reason)

    async def _close(self, code: int, reason: str) -> None:
        if self._keepalive is not None:
            await self._keepalive.stop()  # nothing may follow the close frame
        try:
            await self.close(code=code, reason=reason)
        except Exception as exc:  # the client went away first
            logger.debug("websocket: could not close (%r)", exc)


def _offered(subprotocols: Any) -> tuple[str | None, str | None]:
    """The stream token among the subprotocols a client offered, and the subprotocol to accept.

    Browsers fail a handshake whose answer names no subprotocol when they offered some: accept
    ``agentflow.v1`` when offered (so the token is not sent back), else the token's own subprotocol.
    """
    names = [name for name in subprotocols if isinstance(name, str)]
    tokens = [name for name in names if name.startswith(TOKEN_SUBPROTOCOL_PREFIX)]
    token = tokens[0][len(TOKEN_SUBPROTOCOL_PREFIX) :] if tokens else None
    if SUBPROTOCOL in names:
        return token, SUBPROTOCOL
    return token, tokens[0] if tokens else None


def _run_id(value: Any) -> str | None:
    """The run id of the URL in its canonical form (the REST API accepts the same spellings), or None."""
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        return None


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


def _authorize(run_id: str, user: Any, token: str | None) -> int:
    """0 if the client may read the run's events, else the close code that says why not (in a sync thread)."""
    run = WorkflowRun.objects.filter(pk=run_id).only("id", "owner_id", "stream_token_generation").first()
    by_token = token is not None and check_stream_token(token, run if run is not None else run_id)
    # Unauthenticated clients learn nothing about which runs exist.
    if not by_token and (user is None or not user.is_authenticated):
        return CLOSE_UNAUTHENTICATED
    if run is None:
        return CLOSE_NOT_FOUND
    if by_token or can_view(user, run):
        return 0
    return CLOSE_FORBIDDEN
