"""Server-sent events for a run's stream: replay after an id, then the live tail, until the terminal event.

    GET /api/runs/<id>/events/  (Accept: text/event-stream; ?after=<id> or Last-Event-ID: <id>)

    retry: 3000

    id: 1732390000000-0
    event: run.queued
    data: {"id": "1732390000000-0", "type": "run.queued", ...}

    : keep-alive

    : waiting for a worker: no live worker consumes queue 'agentflow': start one, ...

With ``?keepalive=1`` the keep-alives are ``event: keepalive`` frames, which a browser's ``EventSource`` shows to
the page (it hides comments), so the page notices a stream that died silently (:mod:`agentflow.keepalive`).

The body is produced by an async iterator: under ASGI Django streams it as it comes (a sync iterator would be
consumed whole first), and it needs ASGI: under WSGI the views answer 501 ``asgi_required`` at once
(:func:`require_asgi`) instead of a response that would say nothing until the run ends. Every subscriber of a server process shares one Redis reader
(:mod:`agentflow.hub`). Docs: docs/topics/streaming.md.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from django.core.handlers.wsgi import WSGIRequest
from django.http import StreamingHttpResponse
from rest_framework.renderers import BaseRenderer

from . import streams
from .conf import agentflow_settings
from .core import events as ev
from .core.waits import OPEN_ENDED_REASONS
from .db import arelease_connections
from .exceptions import AsgiRequired
from .hub import Event, SubscriptionDropped, get_hub
from .keepalive import sse_frame

logger = logging.getLogger("agentflow.sse")

KEEP_ALIVE = b": keep-alive\n\n"


class EventStreamRenderer(BaseRenderer):
    """Lets DRF negotiate ``Accept: text/event-stream`` (without it DRF answers 406)."""

    media_type = "text/event-stream"
    format = "sse"
    charset = None

    def render(self, data, accepted_media_type=None, renderer_context=None):  # type: ignore[no-untyped-def]
        # Only error responses are rendered through here; event streams are StreamingHttpResponses.
        return ("event: error\ndata: " + json.dumps(data) + "\n\n").encode()


def require_asgi(request: Any) -> None:
    """Raise ``AsgiRequired`` (501) when ``request`` came through a WSGI server, where Django would consume
    the stream's async iterator whole before sending a byte: the client would wait for the run's end."""
    if isinstance(getattr(request, "_request", request), WSGIRequest):
        raise AsgiRequired()


def event_stream_response(
    run_id: str, after: str | None, *, keepalive_events: bool = False
) -> StreamingHttpResponse:
    """A response streaming the run's events after id ``after`` as SSE, ending after the terminal event.

    The caller has checked that the run exists and that the client may read it, and took ``after`` from
    ``?after=`` or the ``Last-Event-ID`` header. A malformed ``after`` raises ``ValueError`` (answer 400).
    ``keepalive_events`` (the client's ``?keepalive=1``): keep-alives as ``event: keepalive`` frames, one at
    once, instead of comments. No I/O happens until the server iterates the response, so a sync view may
    call this too.
    """
    if after:
        streams.split_id(after)
    frames = _frames(str(run_id), after or None, keepalive_events)
    response = StreamingHttpResponse(frames, content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    # nginx buffers proxied responses unless told not to; an event stream must go out as it is written.
    response["X-Accel-Buffering"] = "no"
    return response


def stream_is_over(run: Any, after: str | None) -> bool:
    """True if a finished ``run`` has nothing after ``after``: answer ``204 No Content`` instead of a stream.

    An ``EventSource`` reconnects whenever a response ends, also after the terminal event; a 204 is what makes
    it stop. Reads only the run row (``last_event_id`` is set once the run's events are archived).
    """
    if not (run.is_finished and after and run.last_event_id):
        return False
    return streams.split_id(after) >= streams.split_id(run.last_event_id)


def frame(event: Event) -> bytes:
    """One event as an SSE frame (``data`` is one line: the JSON has no raw newlines)."""
    return f"id: {event.id}\nevent: {event.type}\ndata: {event.json}\n\n".encode()


async def _keep_alive(last: Event | None) -> bytes:
    """A keep-alive; while the run waits for a worker (as far as its stream says: queued, or due again) and
    no live worker consumes its queue, a comment saying so, from the worker registry as this process last
    read it (:func:`agentflow.health.cached_worker_notice`: at most one read every few seconds for all
    streams)."""
    if last is None or not _waits_for_worker(last):
        return KEEP_ALIVE
    from .health import cached_worker_notice, fresh_worker_notice

    known, notice = fresh_worker_notice()
    if not known:
        notice = await asyncio.to_thread(cached_worker_notice)
    if not notice:
        return KEEP_ALIVE
    return f": waiting for a worker: {' '.join(notice.split())}\n\n".encode()


def _waits_for_worker(last: Event) -> bool:
    if last.type == ev.RUN_QUEUED:
        return True
    if last.type != ev.RUN_WAITING:
        return False
    data = last.as_dict().get("data") or {}
    if data.get("reason") in OPEN_ENDED_REASONS or not data.get("wake_at"):
        return False  # it waits for an answer or a child run, not for a worker
    try:
        wake_at = datetime.fromisoformat(str(data["wake_at"]).replace("Z", "+00:00"))
    except ValueError:
        return False
    return wake_at <= datetime.now(UTC)


async def _frames(run_id: str, after: str | None, keepalive_events: bool = False) -> AsyncIterator[bytes]:
    keepalive = agentflow_settings.sse_keepalive_seconds
    idle = sse_frame(keepalive)  # with keepalive_events: what the page sees (comments it does not)
    # The view's thread still holds the connection it read the run with, and Django would keep it until the
    # stream ends, hours later maybe: give it back before the first byte (agentflow.db).
    await arelease_connections()
    yield f"retry: {round(agentflow_settings.sse_retry_seconds * 1000)}\n\n".encode()
    last: Event | None = None
    if keepalive_events:
        yield idle  # tells the client the interval, before any history
    try:
        async with get_hub().subscribe(run_id, after) as subscription:
            while True:
                try:
                    event = await subscription.get(timeout=keepalive)
                except StopAsyncIteration:
                    return
                if event is None:
                    comment = await _keep_alive(last)
                    if keepalive_events:
                        # The event the page sees; a notice (waiting for a worker) follows as the comment it is.
                        yield idle if comment == KEEP_ALIVE else idle + comment
                    else:
                        yield comment
                else:
                    last = event
                    yield frame(event)
    except SubscriptionDropped as exc:
        # The client reconnects by itself (EventSource sends Last-Event-ID) and resumes where it was.
        yield f": {exc.reason}: reconnect with Last-Event-ID\n\n".encode()
    except Exception:
        # End the response properly rather than cut it: the client reconnects after `retry:` as it would after
        # any ended stream, and the server logs the error once, not a torn response's traceback too.
        logger.exception("event stream of run %s failed", run_id)
        yield b": server error: reconnect with Last-Event-ID\n\n"
