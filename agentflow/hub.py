"""One Redis reader per server process, shared by every live subscriber of run streams (websockets and SSE).

    async with get_hub().subscribe(run_id, after) as subscription:
        async for event in subscription:  # strictly after `after`: history first, then live; ends after
            ...                          # the run's terminal event

A subscription replays the run's history itself (``XRANGE`` pages from Redis, or the DB archive once the stream
is gone; a stream that lost its older events, in a Redis restarted without persistence, is preceded by them from
the archive), then attaches to the hub. The hub holds ONE blocking connection and reads every watched stream with a
single ``XREAD BLOCK``, fanning each event out to the bounded queues of that run's subscribers. A per-hub
wake-up stream interrupts the block when a new stream must be watched, so nobody waits for the block to time
out.

No gap and no duplicate at the seam: when a subscription attaches, the hub reports the last id it read from that
stream; the subscription fetches whatever lies between its replay and that id with ``XRANGE`` before taking
anything from its queue, and every subscription drops ids it already delivered. The hub's position of a stream
only moves forward and only ever holds an id that exists, so a subscriber asking for a future id cannot make the
hub skip events others need.

A slow subscriber never delays the others: fan-out never waits, and a subscriber whose queue is full is dropped
(:class:`SubscriptionDropped`, reason ``overflow``); its client reconnects with its last id. Redis errors make
the reader reconnect with backoff; stream positions survive, so subscribers miss nothing. A run that finished
without a terminal event in its stream (its worker died between the commit and the append) does not hold its
subscribers forever: streams idle for ``STREAM_IDLE_CHECK_SECONDS`` get their runs' status re-read from the DB.
Every read of the DB (those, and archive pages) gives its connection back at once (:mod:`agentflow.db`): a
subscription holds none while it waits.

The hub belongs to an event loop (one per server process under uvicorn/daphne) and opens its Redis connections
lazily, named ``agentflow-hub:<host>:<pid>:reader`` and ``...:pool`` (see ``CLIENT LIST``). Redis Cluster is not
supported: one ``XREAD`` over many runs needs their keys on one node.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import os
import socket
import time
import uuid
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import redis
import redis.asyncio as aredis

from . import streams
from .conf import agentflow_settings
from .core import events as ev
from .core.errors import AgentflowError
from .core.serialization import dumps
from .db import in_db
from .frames import text_frame

logger = logging.getLogger("agentflow.hub")

T = TypeVar("T")

#: Events per XRANGE page (replay, catch-up) and per stream per XREAD.
PAGE = 1000
#: Events per archive page after the first (which has PAGE, for a quick first byte). Each page is a database
#: connection opened and closed (agentflow.db) besides its query: 4 ms here, a third of a 1,000-event page.
ARCHIVE_PAGE = 5000
#: Longest XREAD BLOCK. The wake-up stream interrupts it when a stream must be added, so it only bounds how
#: long the reader sleeps between checks of idle streams.
BLOCK_SECONDS = 5.0
#: Connections for the subscriptions' non-blocking commands (replay pages, catch-ups, wake-ups).
POOL_CONNECTIONS = 4
#: A reader with nothing to watch for this long closes its connection (the next subscriber opens one).
READER_IDLE_EXIT_SECONDS = 60.0
#: How often a subscription retries a failed Redis command before it gives up (``unavailable``).
SUBSCRIBER_RETRIES = 6

OVERFLOW = "overflow"
UNAVAILABLE = "unavailable"
CLOSED = "closed"


class SubscriptionDropped(AgentflowError):
    """The hub dropped a subscription: it fell too far behind (``overflow``), Redis stayed unreachable
    (``unavailable``) or the hub closed (``closed``). Its client should reconnect with its last event id."""

    code = "subscription_dropped"

    def __init__(self, reason: str, message: str = "") -> None:
        super().__init__(message or reason)
        self.reason = reason


class Event:
    """One event of a run's stream, parsed once per process however many subscribers receive it.

    ``json`` is the event as sent to clients (``{"id": ..., "type": ..., ...}``); ``frame`` the same as a
    websocket text frame, built on first use (:mod:`agentflow.frames`); ``key`` is the id as a comparable
    ``(ms, seq)``.
    """

    __slots__ = ("_frame", "id", "json", "key", "terminal", "type")

    def __init__(self, id: str, type: str, json_text: str) -> None:
        self.id = id
        # Ids come from Redis or the archive (a client's `after` is checked by streams.split_id): a plain split
        # is enough, and a tenth of a replay's CPU less.
        ms, _, seq = id.partition("-")
        self.key = int(ms), int(seq)
        self.type = type
        # Looked at for every subscriber of every event: computed once.
        self.terminal = type in ev.TERMINAL_TYPES
        self.json = json_text
        self._frame: bytes | None = None

    @property
    def frame(self) -> bytes:
        frame = self._frame
        if frame is None:
            frame = self._frame = text_frame(self.json)
        return frame

    @classmethod
    def from_entry(cls, entry_id: str, fields: Any) -> Event:
        """From a stream entry: its fields as a dict, or as the flat list Redis sends (the hub's clients skip
        redis-py's conversion of every entry to a dict, see :func:`_raw_entries`)."""
        if isinstance(fields, dict):
            data = fields["d"]
        else:
            fields = (
                dict(zip(fields[::2], fields[1::2], strict=True)) if fields[0] != "d" else {"d": fields[1]}
            )
            data = fields["d"]
        # The stream holds the envelope without its id, "type" first (agentflow.core.events.envelope): splice
        # the id in rather than decode and encode again.
        if data.startswith('{"type":"'):
            end = data.find('"', 9)
            if end > 9:
                return cls(entry_id, data[9:end], '{"id":"' + entry_id + '",' + data[1:])
        return cls.from_dict(streams.parse_entry(entry_id, fields))

    @classmethod
    def from_dict(cls, event: dict[str, Any]) -> Event:
        return cls(event["id"], event["type"], dumps(event))

    def as_dict(self) -> dict[str, Any]:
        return json.loads(self.json)  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        return f"<Event {self.id} {self.type}>"


class Batch:
    """Live events of one stream that the hub read together, offered to each subscriber's sink at once: a
    subscriber gets them in one write. ``frames`` is their frames joined, built once for every subscriber."""

    __slots__ = ("_frames", "events", "terminal")

    def __init__(self, events: list[Event]) -> None:
        self.events = events
        self.terminal = any(event.terminal for event in events)  # whether it holds a terminal event
        self._frames: bytes | None = None

    @property
    def frames(self) -> bytes:
        frames = self._frames
        if frames is None:
            events = self.events
            frames = self._frames = (
                events[0].frame if len(events) == 1 else b"".join([e.frame for e in events])
            )
        return frames


class _Finished:
    """Queued by the hub when the DB says a quiet stream's run is over (or gone)."""

    __slots__ = ("seconds_ago",)

    def __init__(self, seconds_ago: float | None) -> None:
        self.seconds_ago = seconds_ago  # since the run finished; None: the run no longer exists


class _Stream:
    """A stream the hub watches: the last id it read (only ever an existing id) and who listens."""

    __slots__ = ("active_at", "key", "position", "position_key", "run_id", "subscribers")

    def __init__(self, run_id: str, key: str, position: str) -> None:
        self.run_id = run_id
        self.key = key
        self.position = position
        self.position_key = streams.split_id(position)
        self.subscribers: set[Subscription] = set()
        self.active_at = time.monotonic()


# Phases of a subscription.
_REPLAY, _ARCHIVE, _ATTACH, _CATCH_UP, _LIVE, _DONE = (
    "replay",
    "archive",
    "attach",
    "catch-up",
    "live",
    "done",
)


class Subscription:
    """Events of one run strictly after ``after``: history, then live, ending after the terminal event.

    Use it as an async context manager and iterate it, or call :meth:`get` with a timeout (SSE keep-alives);
    :meth:`ready_now` takes what else is ready without waiting, to send it in one go. ``last_id`` is the last event
    id delivered; ``end_reason`` says why iteration stopped.

    ``sink``, when set, delivers live events without waking the subscriber's task: while the task waits in
    :meth:`get` with nothing queued (so nothing it took is still unsent), the hub's reader offers what it read
    of the stream to ``sink(batch)`` (a :class:`Batch`), which either sends it at once and returns True, or
    returns False and the events are queued as usual. The websocket consumer's sink writes the batch's shared
    frames to the connection: one write however many events the reader found at once, so a server that falls
    behind catches up with fewer, larger writes.
    """

    sink: Callable[[Batch], bool] | None = None

    def __init__(self, hub: Hub, run_id: str, after: str | None) -> None:
        self.run_id = str(run_id)
        self.key = streams.stream_key(self.run_id)
        self.last_id = after or None
        self.end_reason: str | None = None
        self._hub = hub
        self._last = streams.split_id(after) if after else (0, 0)  # ValueError if malformed
        self._max_queued = agentflow_settings.subscriber_queue_size
        self._phase = _REPLAY
        self._cursor = after or None  # exclusive start of the next history page
        self._tip: str | None = None  # the highest id seen in the Redis stream
        self._before: str | None = None  # replaying the archive ahead of a stream: the stream's first id
        self._head_checked = False
        self._through = "0-0"  # the hub's position of the stream when this subscription attached
        self._tail_terminal = False  # whether the last event read from Redis is a terminal one
        self._ready: deque[Event] = deque()  # history and catch-up pages, in order
        self._live: deque[Event | _Finished] = deque()  # filled by the hub's reader
        self._signal = asyncio.Event()
        self._stream: _Stream | None = None
        self._after_terminal = False
        self._dropped: str | None = None
        self._parked = False  # waiting in get() with nothing queued: the sink may deliver
        self._archive_pages = 0

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        event = await self.get()
        assert event is not None
        return event

    def close(self) -> None:
        """Detach from the hub (idempotent). Never touches the run."""
        self._hub._detach(self)
        if self._phase != _DONE:
            self._phase, self.end_reason = _DONE, self.end_reason or CLOSED

    async def get(self, timeout: float | None = None) -> Event | None:
        """The next event; ``None`` if ``timeout`` seconds pass with nothing new while live.

        Raises ``StopAsyncIteration`` once the run's terminal event was delivered (or the run is known to have
        finished without one) and :class:`SubscriptionDropped` if the hub dropped this subscription.
        """
        while True:
            event = self._take_ready()
            if event is not None:
                return event
            if self._dropped:
                self.end_reason = self._dropped
                self.close()
                raise SubscriptionDropped(self._dropped, self._drop_message())
            if self._phase == _DONE:
                raise StopAsyncIteration
            if self._after_terminal:
                # A terminal event ends the subscription, unless more follow already (a resumed run).
                if not await self._more_after_terminal():
                    self.end_reason = "terminal"
                    self.close()
                    raise StopAsyncIteration
                continue
            if self._phase == _REPLAY:
                await self._replay_page()
            elif self._phase == _ARCHIVE:
                await self._archive_page()
            elif self._phase == _ATTACH:
                self._attach()
            elif self._phase == _CATCH_UP:
                await self._catch_up()
            elif self._live:
                item = self._live.popleft()
                if isinstance(item, _Finished):
                    await self._on_finished(item)
                else:
                    self._ready.append(item)
            else:
                self._signal.clear()
                self._parked = True
                try:
                    if timeout is None:
                        await self._signal.wait()
                    else:
                        try:
                            async with asyncio.timeout(timeout):
                                await self._signal.wait()
                        except TimeoutError:
                            return None
                finally:
                    self._parked = False

    def ready_now(self) -> list[Event]:
        """The events :meth:`get` would return next without waiting or reading anything, in order (maybe none).

        Taking them counts as delivering them, as with :meth:`get`: send them before the next call.
        """
        taken: list[Event] = []
        while True:
            while (event := self._take_ready()) is not None:
                taken.append(event)
            # Live events queued while the subscriber was busy, up to anything get() must look at first.
            if self._phase != _LIVE or self._dropped or self._after_terminal or not self._live:
                return taken
            item = self._live[0]
            if isinstance(item, _Finished):
                return taken
            self._ready.append(self._live.popleft())  # type: ignore[arg-type]

    def _take_ready(self) -> Event | None:
        """The next ready event not delivered yet (older ones, seen twice across a page and a read, are
        skipped), counted as delivered; None when none is ready."""
        while self._ready:
            event = self._ready.popleft()
            if event.key > self._last:
                self._last, self.last_id = event.key, event.id
                self._after_terminal = event.terminal
                return event
        return None

    # -- history ---------------------------------------------------------------------------------------------

    async def _replay_page(self) -> None:
        start = f"({self._cursor}" if self._cursor else "-"
        entries: list[Any]
        if self._tip is None:
            # The first page also asks for the stream's last entry: it tells whether the stream exists, and
            # gives the hub an existing id to start from even when nothing follows `after`.
            def first(client: aredis.Redis) -> Awaitable[list[Any]]:
                pipe = client.pipeline(transaction=False)
                pipe.xrange(self.key, min=start, max="+", count=PAGE)
                pipe.xrevrange(self.key, max="+", min="-", count=1)
                pipe.xrange(self.key, min="-", max="+", count=1)
                return pipe.execute()

            entries, last, head = await self._redis(first)
            if not last:
                self._phase = _ARCHIVE  # no stream (expired, deleted, or not started): history is in the DB
                return
            if self._lost_head(Event.from_entry(*head[0])):
                return
            self._tip = last[0][0]
            if not entries and self._ended_before(Event.from_entry(*last[0])):
                return
        else:
            entries = await self._redis(_xrange(self.key, start, "+"))
        self._take(entries)
        if len(entries) < PAGE:
            # History done. Go live now, unless it ends with a terminal event: then the run is most likely
            # over, and watching its stream would only cost a wake-up of the reader.
            if self._tail_terminal:
                self._phase = _ATTACH
            else:
                self._attach()

    def _lost_head(self, head: Event) -> bool:
        """A stream that does not start with ``run.queued`` lost older events (a Redis restarted without
        persistence, or trimming): replay those from the archive first, up to the stream's first id."""
        if self._head_checked or head.type == ev.RUN_QUEUED or head.key <= self._last:
            return False
        self._head_checked = True
        self._before, self._phase = head.id, _ARCHIVE
        return True

    def _ended_before(self, tip: Event) -> bool:
        """End now if the stream's last event is a terminal one the client already has (it reconnected with
        the terminal event's id): nothing more will come."""
        if tip.terminal and tip.key <= self._last:
            self._phase, self.end_reason = _DONE, "terminal"
            return True
        return False

    def _take(self, entries: list[Any]) -> None:
        for entry_id, fields in entries:
            self._ready.append(Event.from_entry(entry_id, fields))
        if entries:
            self._tail_terminal = self._ready[-1].terminal
            self._cursor = entries[-1][0]
            if self._tip is None or streams.split_id(self._cursor) > streams.split_id(self._tip):
                self._tip = self._cursor

    async def _archive_page(self) -> None:
        size = ARCHIVE_PAGE if self._archive_pages else PAGE
        self._archive_pages += 1
        events, finished = await _in_db(_archived, self.run_id, self._cursor, size, self._before)
        self._ready.extend(Event(*event) for event in events)
        if events:
            self._cursor = events[-1][0]
        if len(events) < size:
            if self._before is not None:
                # The archive's part is done: the stream from its first event on.
                self._before, self._phase = None, _REPLAY
            elif finished:
                self._phase, self.end_reason = _DONE, "archive"
            else:
                # An active run without a stream (its first append is still to come): watch for it.
                self._attach()

    def _attach(self) -> None:
        """Have the hub queue what it reads from now on; it says how far it has read already."""
        self._through = self._hub._attach(self, self._tip or "0-0")
        self._phase = _CATCH_UP

    async def _catch_up(self) -> None:
        """Fetch what lies between the history delivered and the hub's position, before the hub's queue
        (the history is delivered when this runs: `get` empties `_ready` first)."""
        self._phase = _LIVE
        through, start = self._through, self.last_id
        if streams.split_id(through) <= self._last:
            return
        while True:
            lo = f"({start}" if start else "-"
            entries = await self._redis(_xrange(self.key, lo, through))
            self._take(entries)
            if len(entries) < PAGE:
                return
            start = entries[-1][0]

    async def _more_after_terminal(self) -> bool:
        if self._phase == _REPLAY:
            await self._replay_page()
        elif self._phase == _ARCHIVE:
            await self._archive_page()
        elif self._phase == _CATCH_UP:
            await self._catch_up()
        if self._phase == _LIVE and not self._ready:
            while self._live:
                item = self._live.popleft()
                if isinstance(item, Event) and item.key > self._last:
                    self._ready.append(item)
                    return True
            return False
        return any(event.key > self._last for event in self._ready)

    async def _on_finished(self, marker: _Finished) -> None:
        """The DB says the run is over but its stream was quiet: read what the hub may have missed."""
        start = f"({self.last_id}" if self.last_id else "-"

        def read(client: aredis.Redis) -> Awaitable[list[Any]]:
            pipe = client.pipeline(transaction=False)
            pipe.xrange(self.key, min=start, max="+", count=PAGE)
            pipe.xrevrange(self.key, max="+", min="-", count=1)
            return pipe.execute()

        entries, last = await self._redis(read)
        if entries:
            self._take(entries)  # a terminal event among them ends the subscription once delivered
        elif last and self._ended_before(Event.from_entry(*last[0])):
            return
        elif not last:
            events, _ = await _in_db(_archived, self.run_id, self.last_id, None)
            self._ready.extend(Event(*event) for event in events)
            self._phase, self.end_reason = _DONE, "archive"
        elif marker.seconds_ago is None or marker.seconds_ago > _repair_grace_seconds():
            # The monitor appends a missing terminal event within about a lease; it did not. Stop waiting.
            logger.warning(
                "run %s finished but its stream has no terminal event; ending its subscribers", self.run_id
            )
            self._phase, self.end_reason = _DONE, "finished without a terminal event"

    # -- plumbing --------------------------------------------------------------------------------------------

    async def _redis(self, command: Callable[[aredis.Redis], Awaitable[Any]]) -> Any:
        """Run a short command on the hub's pool, retrying with backoff while Redis is unreachable."""
        for attempt in range(SUBSCRIBER_RETRIES):
            try:
                result = await command(self._hub._pool_client())
                _raise_if_cancelled()
                return result
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                if attempt == SUBSCRIBER_RETRIES - 1:
                    raise SubscriptionDropped(UNAVAILABLE, f"the run's stream is unreachable: {exc}") from exc
                await asyncio.sleep(min(2.0, 0.05 * 2**attempt))
        raise AssertionError("unreachable")

    def _push_batch(self, batch: Batch) -> bool:
        """From the hub's reader: deliver live events through the sink, or queue them; False (and dropped) when
        the queue is full."""
        events = batch.events
        # Parked with nothing queued since (the task has not run yet if something was): no event can overtake.
        if (
            self._parked
            and not self._live
            and self.sink is not None
            and events[0].key > self._last
            and self.sink(batch)
        ):
            # What get() would have done with them. A terminal event wakes the task: the subscription may end.
            last = events[-1]
            self._last, self.last_id, self._after_terminal = last.key, last.id, last.terminal
            if batch.terminal:
                self._signal.set()
            return True
        return all(self._push(event) for event in events)

    def _push(self, event: Event) -> bool:
        """Queue a live event; False (and dropped) when the queue is full."""
        if len(self._live) >= self._max_queued:
            self._drop(OVERFLOW)
            return False
        self._live.append(event)
        self._signal.set()
        return True

    def _push_finished(self, marker: _Finished) -> None:
        self._live.append(marker)
        self._signal.set()

    def _drop(self, reason: str) -> None:
        self._dropped = reason
        self._signal.set()

    def _drop_message(self) -> str:
        if self._dropped == OVERFLOW:
            return (
                f"subscriber fell {self._max_queued} events behind run {self.run_id}; "
                f"reconnect after {self.last_id}"
            )
        return f"subscription to run {self.run_id} dropped ({self._dropped}); reconnect after {self.last_id}"


class Hub:
    """The event loop's reader of run streams; see the module docstring. Get it with :func:`get_hub`."""

    def __init__(self) -> None:
        self.url = agentflow_settings.redis_url
        self.name = f"agentflow-hub:{socket.gethostname()}:{os.getpid()}"
        # Unique per hub, so an old process's leftovers never wake this one; it expires if the process dies.
        self.wake_key = f"{agentflow_settings.key_prefix}hub:{uuid.uuid4().hex}:wake"
        self.closed = False
        self._streams: dict[str, _Stream] = {}
        self._reader: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._pool: aredis.Redis | None = None
        self._inflight: dict[str, _Stream] | None = None  # the streams the XREAD now blocking reads
        self._wake_pending = False
        self._wake_position = "0-0"
        self._next_idle_check = 0.0
        self._counters = {
            "xreads": 0,
            "events": 0,
            "wakes": 0,
            "reconnects": 0,
            "dropped": 0,
            "idle_checks": 0,
        }

    def subscribe(self, run_id: Any, after: str | None = None) -> Subscription:
        """A subscription to run ``run_id``'s events after id ``after`` (``ValueError`` if malformed)."""
        if self.closed:
            raise RuntimeError("this hub is closed")
        return Subscription(self, str(run_id), after)

    def stats(self) -> dict[str, int]:
        """Counters for benchmarks and debugging (connections: see ``CLIENT LIST`` and :attr:`name`)."""
        return {
            **self._counters,
            "streams": len(self._streams),
            "subscribers": sum(len(s.subscribers) for s in self._streams.values()),
        }

    async def aclose(self) -> None:
        """Stop reading, drop every subscriber (reason ``closed``) and close the Redis connections."""
        self.closed = True
        for stream in list(self._streams.values()):
            for sub in list(stream.subscribers):
                sub._drop(CLOSED)
        self._streams.clear()
        tasks = {t for t in (self._reader, *self._tasks) if t is not None and not t.done()}
        tasks.discard(asyncio.current_task())  # type: ignore[arg-type]
        await cancel_and_wait(*tasks)
        if self._pool is not None:
            pool, self._pool = self._pool, None
            with contextlib.suppress(Exception):
                await pool.delete(self.wake_key)
            await pool.aclose()

    # -- subscribers' side (synchronous: no await between reading and changing the hub's state) --------------

    def _attach(self, sub: Subscription, position: str) -> str:
        """Start delivering ``sub`` what the reader reads from now on; returns the stream's position."""
        if self.closed:
            sub._drop(CLOSED)
            return position
        stream = self._streams.get(sub.key)
        if stream is None:
            stream = self._streams[sub.key] = _Stream(sub.run_id, sub.key, position)
            # The blocking XREAD does not read this stream (or reads an earlier watch of it, whose entries the
            # reader discards): interrupt it.
            if self._inflight is not None and self._inflight.get(sub.key) is not stream:
                self._wake()
        stream.subscribers.add(sub)
        sub._stream = stream
        if self._reader is None or self._reader.done():
            self._reader = self._spawn(self._read_loop())
        return stream.position

    def _detach(self, sub: Subscription) -> None:
        stream, sub._stream = sub._stream, None
        if stream is None:
            return
        stream.subscribers.discard(sub)
        if not stream.subscribers and self._streams.get(stream.key) is stream:
            # An XREAD in flight may still return entries of it; the reader ignores streams it no longer has.
            del self._streams[stream.key]

    def _spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        # A fresh context: the hub outlives the request or connection that happened to start it (and asgiref's
        # per-request thread executors with it).
        task = asyncio.get_running_loop().create_task(coro, context=contextvars.Context())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _wake(self) -> None:
        if not self._wake_pending:
            self._wake_pending = True
            self._spawn(self._send_wake())

    async def _send_wake(self) -> None:
        try:
            pipe = self._pool_client().pipeline(transaction=False)
            pipe.xadd(self.wake_key, {"w": "1"}, maxlen=10, approximate=True)
            pipe.expire(self.wake_key, 3600)
            await pipe.execute()
            self._counters["wakes"] += 1
        except Exception as exc:  # the new stream is read after the block times out instead
            logger.warning("hub: cannot wake the reader: %s", exc)

    def _pool_client(self) -> aredis.Redis:
        if self._pool is None:
            # from_pool: the client owns the pool, and closing the client disconnects its connections.
            self._pool = _raw_entries(
                aredis.Redis.from_pool(
                    aredis.BlockingConnectionPool.from_url(
                        self.url,
                        max_connections=POOL_CONNECTIONS,
                        timeout=10,
                        decode_responses=True,
                        client_name=f"{self.name}:pool",
                        socket_connect_timeout=5,
                        socket_timeout=30,
                        socket_keepalive=True,
                        health_check_interval=30,
                    )
                )
            )
        return self._pool

    # -- the reader ------------------------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        client: aredis.Redis | None = None
        failures = 0
        idle_since: float | None = None
        try:
            while not self.closed:
                now = time.monotonic()
                if self._streams:
                    idle_since = None
                elif idle_since is None:
                    idle_since = now
                elif now - idle_since > READER_IDLE_EXIT_SECONDS:
                    self._reader = None  # decided with no await since the check: a new subscriber starts anew
                    return
                if now >= self._next_idle_check:
                    self._check_idle_streams(now)
                if client is None:
                    client = self._reader_client()
                watched = dict(self._streams)
                request = {key: stream.position for key, stream in watched.items()}
                request[self.wake_key] = self._wake_position
                self._inflight = watched
                result: Any
                try:
                    result = await client.xread(request, count=PAGE, block=self._block_ms())  # type: ignore[arg-type]
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    failures += 1
                    self._counters["reconnects"] += 1
                    delay = min(2.0, 0.05 * 2 ** min(failures, 6))
                    logger.warning(
                        "hub: reading the run streams failed (%r); reconnecting in %.2fs", exc, delay
                    )
                    await _close_quietly(client)
                    client = None
                    await asyncio.sleep(delay)
                    continue
                finally:
                    self._inflight = None
                    self._wake_pending = False
                _raise_if_cancelled()
                failures = 0
                self._counters["xreads"] += 1
                for key, entries in result or ():
                    if key == self.wake_key:
                        self._wake_position = entries[-1][0]
                        continue
                    stream = watched.get(key)
                    if stream is not None and self._streams.get(key) is stream:
                        self._dispatch(stream, entries)
        finally:
            if self._reader is asyncio.current_task():
                self._reader = None
            if client is not None:
                await _close_quietly(client)

    def _reader_client(self) -> aredis.Redis:
        return _raw_entries(
            aredis.Redis.from_url(
                self.url,
                decode_responses=True,
                single_connection_client=True,
                client_name=f"{self.name}:reader",
                socket_connect_timeout=5,
                socket_timeout=BLOCK_SECONDS + 10,
                socket_keepalive=True,
            )
        )

    def _block_ms(self) -> int:
        return max(1, int(min(BLOCK_SECONDS, agentflow_settings.stream_idle_check_seconds / 2) * 1000))

    def _dispatch(self, stream: _Stream, entries: list[Any]) -> None:
        stream.active_at = time.monotonic()
        events: list[Event] = []
        for entry_id, fields in entries:
            try:
                event = Event.from_entry(entry_id, fields)
            except Exception:  # not written by agentflow: skip it rather than stall the run's subscribers
                logger.exception("hub: skipping malformed entry %s of %s", entry_id, stream.key)
                stream.position, stream.position_key = entry_id, streams.split_id(entry_id)
                continue
            if event.key <= stream.position_key:
                continue
            stream.position, stream.position_key = entry_id, event.key
            events.append(event)
        if not events:
            return
        self._counters["events"] += len(events)
        batch = Batch(events)
        dropped = [sub for sub in stream.subscribers if not sub._push_batch(batch)]
        for sub in dropped:
            self._counters["dropped"] += 1
            logger.info("hub: dropped a subscriber of run %s: it fell behind", stream.run_id)
            self._detach(sub)

    # -- runs whose streams went quiet -----------------------------------------------------------------------

    def _check_idle_streams(self, now: float) -> None:
        idle_seconds = agentflow_settings.stream_idle_check_seconds
        self._next_idle_check = now + idle_seconds / 2
        idle = [s for s in self._streams.values() if now - s.active_at >= idle_seconds]
        if idle:
            for stream in idle:
                stream.active_at = now
            self._spawn(self._check_runs(idle))

    async def _check_runs(self, idle: list[_Stream]) -> None:
        self._counters["idle_checks"] += 1
        try:
            states = await _in_db(_finished_runs, [stream.run_id for stream in idle])
        except Exception:
            logger.warning("hub: cannot read the status of quiet runs", exc_info=True)
            return
        for stream in idle:
            if stream.run_id in states and self._streams.get(stream.key) is stream:
                marker = _Finished(states[stream.run_id])
                for sub in stream.subscribers:
                    sub._push_finished(marker)


# -- the DB side (run in a thread) -----------------------------------------------------------------------------


async def _in_db(fn: Callable[..., T], *args: Any) -> T:
    # The connection is given back at once: a subscription waits far longer than it reads (agentflow.db).
    result: T = await in_db(fn, *args)
    _raise_if_cancelled()
    return result


def _raise_if_cancelled() -> None:
    """Honour a cancellation that an await swallowed.

    On Python 3.11, ``asyncio.wait_for`` (redis-py sends every command through it) can drop a cancellation that
    arrives while the command is being sent: the call then returns normally, for a blocking read after its whole
    timeout. The task still counts the request, so act on it here.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _archived(
    run_id: str, after: str | None, limit: int | None, before: str | None = None
) -> tuple[list[tuple[str, str, str]], bool]:
    """Archived events after ``after`` (and before ``before``) as ``(id, type, JSON text)``, and whether the run
    is over (finished, or deleted)."""
    from .archive import archived_event_texts
    from .models import FINISHED_STATUSES, WorkflowRun

    status = WorkflowRun.objects.filter(pk=run_id).values_list("status", flat=True).first()
    events = archived_event_texts(run_id, after=after, limit=limit, before=before)
    return events, status is None or status in FINISHED_STATUSES


def _finished_runs(run_ids: list[str]) -> dict[str, float | None]:
    """Of ``run_ids``, those that are over: seconds since they finished, ``None`` for runs that are gone."""
    from django.utils import timezone

    from .models import FINISHED_STATUSES, WorkflowRun

    now = timezone.now()
    rows = WorkflowRun.objects.filter(pk__in=run_ids).values_list("pk", "status", "finished_at")
    found = {str(pk): (status, finished_at) for pk, status, finished_at in rows}
    over: dict[str, float | None] = {}
    for run_id in run_ids:
        if run_id not in found:
            over[run_id] = None
        else:
            status, finished_at = found[run_id]
            if status in FINISHED_STATUSES:
                over[run_id] = (now - finished_at).total_seconds() if finished_at else 0.0
    return over


def _repair_grace_seconds() -> float:
    # The monitor repairs a missing terminal event once a finished run is a lease old; allow it two.
    return 2 * agentflow_settings.lease_seconds + agentflow_settings.stream_idle_check_seconds


def _raw_entries(client: aredis.Redis) -> aredis.Redis:
    """``client`` returning stream entries as Redis sends them, ``[id, [field, value, ...]]``: redis-py would
    build a dict per entry, a tenth of a replay's CPU, for the one field the hub reads (Event.from_entry)."""
    for command in ("XRANGE", "XREVRANGE", "XREAD"):
        client.set_response_callback(command, _as_sent)
    return client


def _as_sent(response: Any, **options: Any) -> Any:
    # XREAD answers a map under RESP3, and nothing (None) when its block timed out.
    return list(response.items()) if isinstance(response, dict) else response


def _xrange(key: str, start: str, end: str) -> Callable[[aredis.Redis], Awaitable[Any]]:
    return lambda client: client.xrange(key, min=start, max=end, count=PAGE)


async def _close_quietly(client: aredis.Redis) -> None:
    try:
        await client.aclose()
    except Exception:
        logger.debug("hub: error closing a Redis connection", exc_info=True)


async def cancel_and_wait(*tasks: asyncio.Task[Any]) -> None:
    """Cancel ``tasks`` and wait until they are done, cancelling again any that swallowed the cancellation (see
    :func:`_raise_if_cancelled`)."""
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.1)


# -- one hub per event loop ------------------------------------------------------------------------------------

_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Hub] = weakref.WeakKeyDictionary()


def get_hub() -> Hub:
    """The running event loop's hub (created on first use; no connection is opened before a subscription)."""
    loop = asyncio.get_running_loop()
    hub = _hubs.get(loop)
    if hub is not None and not hub.closed and hub.url != agentflow_settings.redis_url:
        # AGENTFLOW changed (tests): its subscribers reconnect to a hub reading the new Redis.
        hub._spawn(hub.aclose())
        hub = None
    if hub is None or hub.closed:
        hub = _hubs[loop] = Hub()
    return hub
