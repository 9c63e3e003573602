"""Application keep-alives on a run's event stream, for clients that ask for them with ``?keepalive=1``.

A browser cannot see websocket pings (nor an event stream's comment lines), so a connection whose peer vanished
without closing it (a laptop that slept, a NAT or proxy that forgot the connection) looks open and silent until
TCP gives up, minutes later, and a page shows a run that has stopped. A client that asks gets a small message
it can see, ``{"type": "keepalive", "interval_seconds": s}``, at once and then at least every ``s`` seconds; after
two or three intervals without any message it knows the connection is dead and reconnects with its last event id
(``agentflow.js`` does). The message is not an event (it has no ``id``): a reducer never sees it.

- On the websocket it is a text message every ``WEBSOCKET_KEEPALIVE_SECONDS``, sent by one timer task per
  connection that asked, whatever the traffic: no bookkeeping on the per-event delivery path (which serves
  thousands of sockets per process), for some 50 bytes per interval.
- On an event stream it is ``event: keepalive`` (no ``id:`` line, so ``Last-Event-ID`` is untouched) in place of
  the ``: keep-alive`` comment that an idle stream sends every ``SSE_KEEPALIVE_SECONDS`` anyway
  (agentflow.sse), and once at the start.

Clients that do not ask get neither, so the stream stays "one event per message" for them.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from .hub import cancel_and_wait

logger = logging.getLogger("agentflow.keepalive")

#: The ``type`` of a keep-alive message.
KEEPALIVE = "keepalive"


def wanted(value: str | None) -> bool:
    """Whether the ``keepalive`` query parameter asks for keep-alives: ``"1"`` yes, ``"0"`` or none no;
    anything else is a ``ValueError`` (the client meant something; 400 or close code 4400)."""
    if value is None or value == "0":
        return False
    if value == "1":
        return True
    raise ValueError(f"keepalive must be 1 or 0, not {value[:20]!r}")


def message(interval_seconds: float) -> str:
    """The keep-alive's JSON."""
    return json.dumps({"type": KEEPALIVE, "interval_seconds": interval_seconds})


def sse_frame(interval_seconds: float) -> bytes:
    """The keep-alive as a server-sent event (named, without an id)."""
    return f"event: {KEEPALIVE}\ndata: {message(interval_seconds)}\n\n".encode()


class WebsocketKeepAlive:
    """Sends the keep-alive on one websocket every ``interval_seconds`` until :meth:`stop` or the client is gone.

    ``send`` is the connection's ASGI send: a whole message at a time, so it never splits an event's frame that
    another writer (agentflow.frames) puts on the same transport.
    """

    def __init__(self, send: Callable[[dict[str, Any]], Awaitable[None]], interval_seconds: float) -> None:
        self._send = send
        self._interval = interval_seconds
        self._task: asyncio.Task[None] | None = None

    def start(self) -> WebsocketKeepAlive:
        self._task = asyncio.create_task(self._beat())
        return self

    async def stop(self) -> None:
        """Stop sending (before the close frame: nothing may follow it)."""
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)

    async def _beat(self) -> None:
        text = message(self._interval)
        while True:
            try:
                await self._send({"type": "websocket.send", "text": text})
            except Exception as exc:  # the client went away: the consumer's disconnect stops us too
                logger.debug("websocket keep-alive: the client went away (%r)", exc)
                return
            await asyncio.sleep(self._interval)
