"""Websocket messages written as frames encoded once per event, straight to the client's connection.

An ASGI server turns every ``websocket.send`` message into a frame of its own: under uvicorn that is the message
passing through Channels' session wrapper, the server's ``send`` coroutine, a ``websockets`` ``Frame`` object and
one ``write`` system call, for every subscriber of every event. The hub already shares one JSON text per event
between a process's subscribers; here it also shares the frame (a server's text frame is the same bytes for
every connection: no mask, and no compression unless permessage-deflate was negotiated), and a subscription that
has several events ready writes them in one call.

That needs the connection's transport, which ASGI does not expose. :func:`writer_for` finds it behind uvicorn's
default websocket implementation (``websockets-sansio``) when the connection negotiated no extension, and
otherwise falls back to ASGI ``send`` messages (daphne, uvicorn's other implementations, a client that
negotiated permessage-deflate), which stay correct, only slower. Either way the close frame still goes through
ASGI, after every frame written here: both end up, in order, in the same transport.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

logger = logging.getLogger("agentflow.frames")

Send = Callable[[dict[str, Any]], Awaitable[None]]

_OPCODE_TEXT_FIN = 0x81


def text_frame(text: str) -> bytes:
    """A complete, unfragmented, unmasked websocket text frame (RFC 6455 section 5.2) carrying ``text``."""
    payload = text.encode()
    size = len(payload)
    if size < 126:
        return bytes((_OPCODE_TEXT_FIN, size)) + payload
    if size < 1 << 16:
        return struct.pack("!BBH", _OPCODE_TEXT_FIN, 126, size) + payload
    return struct.pack("!BBQ", _OPCODE_TEXT_FIN, 127, size) + payload


class Framed(Protocol):
    """What a writer sends: an event's JSON text and the same text as a frame (:class:`agentflow.hub.Event`)."""

    @property
    def json(self) -> str: ...

    @property
    def frame(self) -> bytes: ...


class Batched(Protocol):
    """Events to write together: their frames joined (:class:`agentflow.hub.Batch`)."""

    @property
    def frames(self) -> bytes: ...


class Writer(Protocol):
    direct: bool

    async def write(self, events: Sequence[Framed]) -> bool:
        """Send ``events`` as one message each, in order; False if the client is gone."""

    def try_write(self, batch: Batched) -> bool:
        """Write ``batch`` now if that needs no waiting; False (nothing written) otherwise."""


class AsgiWriter:
    """One ``websocket.send`` message per event: works under every ASGI server."""

    direct = False

    def __init__(self, send: Send) -> None:
        self._send = _unwrap(send)

    async def write(self, events: Sequence[Framed]) -> bool:
        # Each server says the client is gone in its own way (uvicorn: ClientDisconnected, an OSError; daphne:
        # Autobahn's Disconnected while the closing handshake is under way), and a client that leaves mid-stream
        # is normal: nothing is logged above debug.
        try:
            for event in events:
                await self._send({"type": "websocket.send", "text": event.json})
        except Exception as exc:
            logger.debug("websocket: the client went away mid-send (%r)", exc)
            return False
        return True

    def try_write(self, batch: Batched) -> bool:
        return False


class TransportWriter:
    """Pre-encoded frames written to the transport of one of uvicorn's ``websockets-sansio`` connections."""

    direct = True

    def __init__(self, protocol: Any) -> None:
        self._protocol = protocol
        self._transport = protocol.transport
        # Set by uvicorn while the transport's buffer is below its high-water mark (pause_writing/resume_writing):
        # the same flow control its own send waits on.
        self._writable = protocol.writable

    @property
    def gone(self) -> bool:
        protocol = self._protocol
        return bool(protocol.disconnected or protocol.close_sent or self._transport.is_closing())

    async def write(self, events: Sequence[Framed]) -> bool:
        await self._writable.wait()
        if self.gone:
            return False
        data = events[0].frame if len(events) == 1 else b"".join([event.frame for event in events])
        try:
            self._transport.write(data)
        except Exception as exc:
            logger.debug("websocket: the client went away mid-send (%r)", exc)
            return False
        return True

    def try_write(self, batch: Batched) -> bool:
        # Called by the hub's reader for every live subscriber of every event: it must never raise, nor wait.
        if not self._writable.is_set() or self.gone:
            return False
        try:
            self._transport.write(batch.frames)
        except Exception as exc:
            logger.debug("websocket: cannot write to the client (%r)", exc)
            return False
        return True


def writer_for(send: Send) -> Writer:
    """The fastest writer that is correct for the connection behind an ASGI ``send`` (call it once the
    connection is accepted: the extensions are negotiated by then)."""
    protocol = getattr(_unwrap(send), "__self__", None)
    if _is_plain_sansio(protocol):
        return TransportWriter(protocol)
    return AsgiWriter(send)


def _is_plain_sansio(protocol: Any) -> bool:
    try:
        from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
    except ImportError:
        return False
    if type(protocol) is not WebSocketsSansIOProtocol:
        return False
    try:
        return bool(
            protocol.handshake_complete
            and protocol.initial_response is None
            and not protocol.conn.extensions  # permessage-deflate compresses per connection
            and hasattr(protocol.writable, "is_set")
            and hasattr(protocol.transport, "write")
            and isinstance(protocol.disconnected, bool)
            and isinstance(protocol.close_sent, bool)
        )
    except AttributeError:  # another uvicorn release: ASGI messages, as everywhere else
        return False


def _unwrap(send: Send) -> Send:
    """The server's own ``send`` behind Channels' session middleware, which only acts on HTTP responses (it
    saves the session and sets its cookie on ``http.response.start``) but costs every websocket message."""
    try:
        from channels.sessions import InstanceSessionWrapper
    except ImportError:  # pragma: no cover - Channels is a dependency
        return send
    while isinstance(getattr(send, "__self__", None), InstanceSessionWrapper):
        send = send.__self__.real_send  # type: ignore[attr-defined]
    return send
