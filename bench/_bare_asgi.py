"""The floors of the streaming benchmarks: a bare ASGI application (no Django, no Channels, no hub) serving
a run's stream under the same uvicorn, as cheaply as a websocket server in Python can.

    ws://.../replay/<stream key>/?after=<id>     XRANGE pages after ``after``, each page one write of
                                                 pre-encoded frames, then close 1000 (bench/replay.py)
    ws://.../live/<mode>/<stream key>/           one XREAD BLOCK per stream, each event sent to every
                                                 socket of that stream (bench/subscribers.py):
                                                   mode ``asgi``:  one ``websocket.send`` per socket
                                                                   (uvicorn's per-message path)
                                                   mode ``frame``: the frame built once, one
                                                                   ``transport.write`` per socket

Started by ``bench._streaming.AsgiServer(app="bench._bare_asgi:app")``; reads Redis at ``BENCH_REDIS_URL``.
What agentflow adds over these is its own cost; what these cost is the server's and the kernel's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
from typing import Any
from urllib.parse import parse_qs

import redis.asyncio as aredis

PAGE = 1000
_client: aredis.Redis | None = None
_live: dict[str, dict[Any, str]] = {}  # stream key -> {send: mode}
_readers: dict[str, asyncio.Task[None]] = {}


def redis_client() -> aredis.Redis:
    global _client
    if _client is None:
        url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
        _client = aredis.Redis.from_url(url, decode_responses=True)
    return _client


def text_frame(text: str) -> bytes:
    """A server's websocket text frame (agentflow.frames.text_frame; written again here so that the floor
    depends on nothing of agentflow's)."""
    payload = text.encode()
    size = len(payload)
    if size < 126:
        return bytes((0x81, size)) + payload
    if size < 1 << 16:
        return struct.pack("!BBH", 0x81, 126, size) + payload
    return struct.pack("!BBQ", 0x81, 127, size) + payload


def event_json(entry_id: str, fields: dict[str, str]) -> str:
    return '{"id":"' + entry_id + '",' + fields["d"][1:]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"bare"})
        return
    if scope["type"] != "websocket":
        return
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    parts = scope["path"].strip("/").split("/")
    if parts[0] == "replay":
        after = parse_qs(scope["query_string"].decode())["after"][0]
        await replay(parts[1], after, send)
        await send({"type": "websocket.close", "code": 1000})
        return
    mode, key = parts[1], parts[2]
    subscribers = _live.setdefault(key, {})
    target = send.__self__ if mode == "frame" else send
    subscribers[target] = mode
    if key not in _readers:
        _readers[key] = asyncio.create_task(read(key))
    try:
        while (await receive())["type"] != "websocket.disconnect":
            pass
    finally:
        subscribers.pop(target, None)
        if not subscribers:
            _live.pop(key, None)
            task = _readers.pop(key, None)
            if task is not None:
                task.cancel()


async def replay(key: str, after: str, send: Any) -> None:
    protocol = send.__self__  # uvicorn's websockets-sansio connection
    start = f"({after}"
    while True:
        entries = await redis_client().xrange(key, min=start, max="+", count=PAGE)
        await protocol.writable.wait()
        protocol.transport.write(b"".join([text_frame(event_json(i, f)) for i, f in entries]))
        if len(entries) < PAGE:
            return
        start = f"({entries[-1][0]}"


async def read(key: str) -> None:
    client = aredis.Redis.from_url(
        os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14"), decode_responses=True
    )
    try:
        last = await client.xrevrange(key, count=1)
        position = last[0][0] if last else "0-0"
        while True:
            result = await client.xread({key: position}, block=5000, count=PAGE)
            for _, entries in result or ():
                for entry_id, fields in entries:
                    position = entry_id
                    text = event_json(entry_id, fields)
                    frame = None
                    for target, mode in list(_live.get(key, {}).items()):
                        if mode == "frame":
                            frame = frame or text_frame(text)
                            if target.writable.is_set() and not target.disconnected:
                                target.transport.write(frame)
                        else:
                            with contextlib.suppress(Exception):  # a client gone: it unregisters itself
                                await target({"type": "websocket.send", "text": text})
    finally:
        await client.aclose()
