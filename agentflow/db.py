"""Database connections are not held while waiting.

A request that waits (an event stream, a websocket, a synchronous run) would otherwise keep the connection its
thread opened for as long as it waits: Django closes a request's connections when the response is closed,
which for a stream is when the stream ends, and under ASGI every request has a thread of its own, so a hundred
open streams hold a hundred connections. So whatever waits on Redis or a timer first gives its thread's
connections back, and each read it makes while waiting gives its connection back at once.

Giving back means closing, whatever ``CONN_MAX_AGE`` says: a connection kept for reuse by a request's thread is
only reused if that thread serves another request, which under ASGI it never does. With Django's connection
pool (``"OPTIONS": {"pool": True}``, PostgreSQL) closing returns the connection to the pool. A connection inside
a transaction (``atomic``) is left alone: closing it would lose the transaction. See docs/deploy.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from asgiref.sync import sync_to_async
from django.db import connections

T = TypeVar("T")


def release_connections() -> None:
    """Close this thread's database connections, except any inside a transaction."""
    for connection in connections.all(initialized_only=True):
        if connection.connection is not None and not connection.in_atomic_block:
            connection.close()


async def arelease_connections() -> None:
    """:func:`release_connections` from async code, in the thread that runs this context's sync code (under
    Django's ASGI handler, the thread of the request, where its view opened a connection)."""
    await sync_to_async(release_connections, thread_sensitive=True)()


async def in_db(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a sync thread (the ORM needs one), giving back the connection it used before returning."""

    def call() -> T:
        try:
            return fn(*args)
        finally:
            release_connections()

    return await sync_to_async(call, thread_sensitive=True)()
