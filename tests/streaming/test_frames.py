"""Frames encoded once and written to the connection (agentflow.frames), checked against code we did not write:
the ``websockets`` library parses our frames, and a real uvicorn in this process serves them to a real client,
with and without the permessage-deflate extension (which must fall back to ASGI messages). Daphne, the other
server, gets ASGI messages: the streaming tests run under it too (test_servers.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvicorn
import websockets
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from agentflow import frames


class Text:
    """What the writers send: JSON text, and its frame (and as a batch of one, its frames)."""

    def __init__(self, text: str) -> None:
        self.json = text
        self.frame = self.frames = frames.text_frame(text)


def parse(data: bytes) -> list[Frame]:
    """Frames in ``data`` as the websockets library reads them on a client (no mask expected)."""
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    parsed = []
    while not _complete(reader.at_eof()):
        parsed.append(_complete(Frame.parse(reader.read_exact, mask=False)))
    return parsed


def _complete(generator: Any) -> Any:
    """The value of one of websockets' parser generators, all of whose data is fed already."""
    try:
        while True:
            next(generator)
    except StopIteration as done:
        return done.value


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_text_frames_are_what_websockets_reads(size: int) -> None:
    text = ("é" + "x" * size)[:size]  # multi-byte UTF-8: the length is the payload's, not the text's
    (frame,) = parse(frames.text_frame(text))
    assert frame.opcode is Opcode.TEXT and frame.fin and not frame.rsv1
    assert frame.data.decode() == text


def test_frames_written_together_are_read_apart() -> None:
    texts = ['{"id":"1-0"}', "ünï" * 100, "y" * 70000]
    assert [f.data.decode() for f in parse(b"".join(frames.text_frame(t) for t in texts))] == texts


def test_any_other_send_gets_asgi_messages() -> None:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    writer = frames.writer_for(send)
    assert isinstance(writer, frames.AsgiWriter) and not writer.direct
    assert not writer.try_write(Text("a"))
    assert asyncio.run(writer.write([Text("a"), Text("b")]))
    assert sent == [{"type": "websocket.send", "text": "a"}, {"type": "websocket.send", "text": "b"}]


def test_channels_session_wrapper_is_looked_through() -> None:
    from channels.sessions import InstanceSessionWrapper

    async def send(message: dict[str, Any]) -> None: ...

    wrapper = InstanceSessionWrapper({"type": "websocket", "cookies": {}}, send)
    assert frames._unwrap(wrapper.send) is send


# -- a real uvicorn in this process ----------------------------------------------------------------------------


async def probe(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Accepts, then writes, with the writer agentflow picks: its kind, three messages in one write, one through
    try_write (when it can), and closes through ASGI (after what the writer wrote)."""
    assert scope["type"] == "websocket"
    await receive()
    await send({"type": "websocket.accept"})
    writer = frames.writer_for(send)
    await writer.write([Text(json.dumps({"writer": type(writer).__name__}))])
    await writer.write([Text("one"), Text("twö"), Text("z" * 70000)])
    if not writer.try_write(Text("four")):
        await writer.write([Text("four")])
    await send({"type": "websocket.close", "code": 4321, "reason": "done"})


@contextlib.asynccontextmanager
async def serving(**options: Any) -> AsyncIterator[str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(probe, lifespan="off", log_level="warning", **options)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(10):
            while not server.started:
                await asyncio.sleep(0.01)
        yield f"ws://127.0.0.1:{sock.getsockname()[1]}/"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()


async def messages(url: str, **options: Any) -> tuple[str, list[str], int | None]:
    got: list[str | bytes] = []
    async with websockets.connect(url, open_timeout=10, close_timeout=5, **options) as ws:
        with contextlib.suppress(websockets.ConnectionClosed):
            while True:
                got.append(await asyncio.wait_for(ws.recv(), 10))
        code = ws.close_code
    assert isinstance(got[0], str)
    return json.loads(got[0])["writer"], [str(m) for m in got[1:]], code


EXPECTED = ["one", "twö", "z" * 70000, "four"]


@pytest.mark.parametrize(
    ("server_options", "client_options", "writer"),
    [
        ({}, {"compression": None}, "TransportWriter"),  # uvicorn's default implementation, no extension
        ({}, {"compression": "deflate"}, "AsgiWriter"),  # permessage-deflate compresses per connection
        ({"ws_per_message_deflate": False}, {"compression": "deflate"}, "TransportWriter"),
    ],
)
def test_under_uvicorn(server_options: dict[str, Any], client_options: dict[str, Any], writer: str) -> None:
    async def main() -> tuple[str, list[str], int | None]:
        async with serving(**server_options) as url:
            return await messages(url, **client_options)

    assert asyncio.run(main()) == (writer, EXPECTED, 4321)
