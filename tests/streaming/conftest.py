"""A real ASGI server (uvicorn serving tests.asgi with tests.streaming.settings) and clients for it.

The server runs in its own process group on a socket this process binds (no race for a free port), against
the test database and the same Redis as the tests. Tests that use it need ``transactional_db``: the server
only sees committed rows.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
import redis
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.conftest import AsgiServer


class Server(AsgiServer):
    """The streaming tests' server (tests.streaming.settings), with clients for it."""

    def __init__(self, db_name: str, *, server: str = "uvicorn", env: dict[str, str] | None = None) -> None:
        super().__init__(db_name, "tests.streaming.settings", "/health/", server=server, env=env)

    def hub_connections(self, redis_client: redis.Redis) -> dict[str, int]:
        """The server's hub connections to Redis by role (``reader``, ``pool``), from ``CLIENT LIST``."""
        prefix = f"agentflow-hub:{socket.gethostname()}:{self.pid}:"
        roles: dict[str, int] = {}
        for client in redis_client.client_list():
            if client["name"].startswith(prefix):
                role = client["name"][len(prefix) :]
                roles[role] = roles.get(role, 0) + 1
        return roles

    # -- clients ---------------------------------------------------------------------------------------------

    def websocket(
        self,
        run_id: Any,
        *,
        after: str | None = None,
        token: str | None = None,
        cookie: str | None = None,
        origin: str | None = None,
        raw_query: str | None = None,
        subprotocols: list[str] | None = None,
        **options: Any,
    ) -> ClientConnection:
        params = {k: v for k, v in (("after", after), ("token", token)) if v is not None}
        query = raw_query if raw_query is not None else urlencode(params)
        headers = {"Cookie": cookie} if cookie else None
        return connect(
            f"{self.ws}/ws/runs/{run_id}/" + (f"?{query}" if query else ""),
            additional_headers=headers,
            origin=origin,  # type: ignore[arg-type]
            subprotocols=subprotocols,  # type: ignore[arg-type]
            compression=None,
            open_timeout=10,
            close_timeout=options.pop("close_timeout", 2),
            proxy=None,
            **options,
        )


@dataclass
class Received:
    events: list[dict[str, Any]] = field(default_factory=list)
    close_code: int | None = None  # None: still open
    close_reason: str = ""


def receive(ws: ClientConnection, limit: int | None = None, timeout_seconds: float = 20) -> Received:
    """Events from ``ws`` until it closes, or until ``limit`` arrived; every wait bounded."""
    got = Received()
    try:
        while limit is None or len(got.events) < limit:
            got.events.append(json.loads(ws.recv(timeout=timeout_seconds)))
    except ConnectionClosed as exc:
        got.close_code = exc.rcvd.code if exc.rcvd else None
        got.close_reason = exc.rcvd.reason if exc.rcvd else ""
        if got.close_code is None:
            raise
    return got


def abort(ws: ClientConnection) -> None:
    """Cut the TCP connection without a closing handshake, as a lost network would."""
    with contextlib.suppress(OSError):
        ws.socket.shutdown(socket.SHUT_RDWR)
    ws.close_socket()


@dataclass
class SSEFrame:
    id: str | None = None
    event: str | None = None
    data: str | None = None
    retry: int | None = None
    comments: list[str] = field(default_factory=list)


def sse_frames(response: httpx.Response) -> Iterator[SSEFrame]:
    """Parse an SSE body into frames (comments included) as it arrives."""
    current = SSEFrame()
    for line in response.iter_lines():
        if line == "":
            yield current
            current = SSEFrame()
        elif line.startswith(":"):
            current.comments.append(line[1:].strip())
        else:
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "retry":
                current.retry = int(value)
            elif name == "data":
                current.data = value if current.data is None else current.data + "\n" + value
            elif name in ("id", "event"):
                setattr(current, name, value)
    if current.id or current.data or current.comments:
        yield current


@pytest.fixture(scope="session")
def asgi_server(django_db_setup: None, redis_client: redis.Redis) -> Iterator[Server]:
    from django.db import connection

    server = Server(connection.settings_dict["NAME"])
    try:
        yield server.wait_ready()
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def _server_log_has_no_errors(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test whose requests made the server log an error (a traceback, an exception in the app)."""
    if "asgi_server" not in request.fixturenames:
        yield
        return
    server: Server = request.getfixturevalue("asgi_server")
    start = len(server.log)
    yield
    time.sleep(0.05)  # let the log reader catch up with the last lines
    errors = [line for line in server.log[start:] if "Traceback" in line or "ERROR" in line]
    assert not errors, "the server logged errors:\n" + "".join(server.log[start:])
