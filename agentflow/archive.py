"""A finished run's events, copied from its Redis stream into the DB so history outlives the stream."""

from __future__ import annotations

from typing import Any

from . import streams
from .models import RunEvent


def archive_events(run_id: str, batch_size: int = 1000) -> int:
    """Copy every event of the run's stream into ``RunEvent`` (idempotent). Returns how many were read."""
    rows: list[RunEvent] = []
    total = 0
    for event in streams.iter_all(run_id):
        rows.append(_row(run_id, event))
        if len(rows) >= batch_size:
            RunEvent.objects.bulk_create(rows, ignore_conflicts=True)
            total += len(rows)
            rows = []
    if rows:
        RunEvent.objects.bulk_create(rows, ignore_conflicts=True)
        total += len(rows)
    return total


def _row(run_id: str, event: dict[str, Any]) -> RunEvent:
    ms, seq = streams.split_id(event["id"])
    return RunEvent(
        run_id=run_id,
        stream_id=event["id"],
        stream_ms=ms,
        stream_seq=seq,
        type=event["type"],
        step=event.get("step"),
        attempt=event.get("attempt"),
        epoch=event.get("epoch") or 0,
        ts=event.get("ts", ""),
        data=event.get("data") or {},
    )


def archived_events(run_id: str, after: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """Archived events after id ``after``, oldest first."""
    qs = RunEvent.objects.filter(run__pk=run_id).order_by("stream_ms", "stream_seq")
    if after:
        ms, seq = streams.split_id(after)
        from django.db.models import Q

        qs = qs.filter(Q(stream_ms__gt=ms) | Q(stream_ms=ms, stream_seq__gt=seq))
    if limit is not None:
        qs = qs[:limit]
    return [row.as_event() for row in qs]


def history(run_id: str, after: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """A run's events after ``after``: from the stream while it exists, else from the archive."""
    events = streams.read_events(run_id, after=after, count=limit)
    if events or streams.get_client().exists(streams.stream_key(run_id)):
        return events
    return archived_events(run_id, after=after, limit=limit)
