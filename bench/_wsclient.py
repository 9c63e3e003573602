"""A lean websocket client for the fan-out benchmark: many connections in one process, each costing little.

The ``websockets`` library costs its client about 25 µs of CPU per message (a Python frame parser behind an
asyncio queue per connection), twice what agentflow's server spends per delivery: 500 such clients in the
benchmark's one process saturate it before the server, and the latency measured is the client's queue. This one
parses frames as they arrive in ``data_received`` (a browser does it in native code), stamps them with the time
the chunk arrived, and hands each text message to a callback. Server-to-client frames only: no fragmentation
(servers here never fragment), no extensions (none is offered), pings answered, closes answered.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
from collections.abc import Callable
from urllib.parse import urlsplit

OnMessage = Callable[[bytes, float], None]


class LeanClient(asyncio.Protocol):
    def __init__(self, on_message: OnMessage) -> None:
        self.on_message = on_message
        self.transport: asyncio.Transport | None = None
        self.open: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self._buffer = bytearray()
        self._handshaken = False

    # -- asyncio.Protocol --------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        buffer = self._buffer
        buffer += data
        if not self._handshaken:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(buffer[: buffer.find(b"\r\n")])
            del buffer[: end + 4]
            if b" 101 " not in status:
                self._fail(ConnectionError(f"handshake refused: {status!r}"))
                return
            self._handshaken = True
            self.open.set_result(None)
        while len(buffer) >= 2:
            opcode, size = buffer[0] & 0x0F, buffer[1] & 0x7F
            start = 2
            if size == 126:
                if len(buffer) < 4:
                    return
                size, start = int.from_bytes(buffer[2:4], "big"), 4
            elif size == 127:
                if len(buffer) < 10:
                    return
                size, start = int.from_bytes(buffer[2:10], "big"), 10
            if len(buffer) < start + size:
                return
            payload = bytes(buffer[start : start + size])
            del buffer[: start + size]
            if opcode == 0x1:
                self.on_message(payload, now)
            elif opcode == 0x8:
                self._send(0x8, payload[:2])
                if not self.closed.done():
                    self.closed.set_result(int.from_bytes(payload[:2], "big") if payload else None)
                assert self.transport is not None
                self.transport.close()
                return
            elif opcode == 0x9:
                self._send(0xA, payload)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.open.done():
            self._fail(exc or ConnectionError("connection lost during the handshake"))
        if not self.closed.done():
            self.closed.set_result(None)

    # -- helpers -------------------------------------------------------------------------------------------------

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self._send(0x8, (1000).to_bytes(2, "big"))

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _send(self, opcode: int, payload: bytes) -> None:
        # Client frames are masked; a zero mask leaves the payload as it is (RFC 6455 allows any key).
        assert self.transport is not None and len(payload) < 126
        self.transport.write(bytes((0x80 | opcode, 0x80 | len(payload))) + b"\0\0\0\0" + payload)

    def _fail(self, exc: BaseException) -> None:
        if not self.open.done():
            self.open.set_exception(exc)
        if self.transport is not None:
            self.transport.close()


async def connect(url: str, on_message: OnMessage, timeout_seconds: float = 30.0) -> LeanClient:
    """Open a websocket to ``url`` (``ws://host:port/path?query``); messages go to ``on_message``."""
    parts = urlsplit(url)
    loop = asyncio.get_running_loop()
    _, client = await loop.create_connection(lambda: LeanClient(on_message), parts.hostname, parts.port)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    assert client.transport is not None
    client.transport.write(request.encode())
    async with asyncio.timeout(timeout_seconds):
        await client.open
    return client
