"""Event types of a run's stream, and the envelope every event shares.

An event on the wire is one JSON object::

    {"id": "1732390000000-0", "type": "step.completed", "run": "<uuid>", "step": "<step id or null>",
     "attempt": 1, "epoch": 1, "ts": "<ISO 8601>", "data": {...}}

``id`` is the Redis stream entry id, added when the event is read back.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Protocol

from .serialization import encode as encode_json

RUN_QUEUED = "run.queued"
RUN_STARTED = "run.started"
RUN_RECOVERED = "run.recovered"
RUN_RESUMED = "run.resumed"
RUN_WAITING = "run.waiting"
RUN_CONTINUED = "run.continued"
STEP_STARTED = "step.started"
STEP_RETRYING = "step.retrying"
STEP_COMPLETED = "step.completed"
STEP_FAILED = "step.failed"
STATUS = "status"
DATA = "data"
OUTPUT_DELTA = "output.delta"
OUTPUT = "output"
INPUT_REQUESTED = "input.requested"
INPUT_RECEIVED = "input.received"
INPUT_TIMED_OUT = "input.timed_out"
CHILD_STARTED = "child.started"
CHILD_COMPLETED = "child.completed"
CHILD_FAILED = "child.failed"
RUN_COMPLETED = "run.completed"
RUN_FAILED = "run.failed"
RUN_CANCELLED = "run.cancelled"

#: Events that carry the run's content; a client voids them per the rules in docs/events.md.
CONTENT_TYPES = frozenset({STATUS, DATA, OUTPUT_DELTA})
#: Exactly one of these ends every run's stream.
TERMINAL_TYPES = frozenset({RUN_COMPLETED, RUN_FAILED, RUN_CANCELLED})
#: Events about a step's attempts.
STEP_TYPES = frozenset({STEP_STARTED, STEP_RETRYING, STEP_COMPLETED, STEP_FAILED})

ALL_TYPES = frozenset(
    {
        RUN_QUEUED,
        RUN_STARTED,
        RUN_RECOVERED,
        RUN_RESUMED,
        RUN_WAITING,
        RUN_CONTINUED,
        STEP_STARTED,
        STEP_RETRYING,
        STEP_COMPLETED,
        STEP_FAILED,
        STATUS,
        DATA,
        OUTPUT_DELTA,
        OUTPUT,
        INPUT_REQUESTED,
        INPUT_RECEIVED,
        INPUT_TIMED_OUT,
        CHILD_STARTED,
        CHILD_COMPLETED,
        CHILD_FAILED,
        RUN_COMPLETED,
        RUN_FAILED,
        RUN_CANCELLED,
    }
)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def envelope(
    type: str, run: str, *, step: str | None, attempt: int | None, epoch: int, data: dict[str, Any] | None
) -> dict[str, Any]:
    return {
        "type": type,
        "run": run,
        "step": step,
        "attempt": attempt,
        "epoch": epoch,
        "ts": now_iso(),
        "data": data if data is not None else {},
    }


def encode(event: dict[str, Any]) -> str:
    """``event`` as the JSON text a sink appends; ``SerializationError`` naming the JSON path when it holds
    what JSON or the database cannot (U+0000, a lone surrogate, an infinity). Every sink refuses such an
    event when it is emitted, in the emitting thread: it never reaches the stream, where it would stop the
    run's later events (Redis cannot take a lone surrogate) or its archive (PostgreSQL cannot take the rest).
    """
    return encode_json(event, what=f"the {event.get('type')} event")


class EventSink(Protocol):
    """Where a run incarnation's events go, in order. Implementations: Redis streams, memory."""

    def emit(self, event: dict[str, Any]) -> None:
        """Queue ``event`` (an envelope without ``id``) for appending after every earlier one."""

    def flush(self) -> None:
        """Block until every queued event is appended; raise ``LeaseLost`` if the epoch went stale."""

    @property
    def fenced(self) -> bool:
        """True once an append was refused because this incarnation's epoch is stale."""
        ...
