"""A finished run's events, copied from its Redis stream into the DB so history outlives the stream."""

from __future__ import annotations

import uuid
from typing import Any

from django.db import connection

from . import streams
from .models import RunEvent


def archive_events(run_id: str, batch_size: int = 1000) -> int:
    """Copy every event of the run's stream into ``RunEvent`` (idempotent). Returns how many were read."""
    client, key = streams.get_client(), streams.stream_key(run_id)
    total, start = 0, "-"
    while True:
        entries: Any = client.xrange(key, min=start, max="+", count=batch_size)
        if not entries:
            return total
        if connection.vendor == "postgresql":
            _insert_postgresql(run_id, entries)
        else:
            rows = [_row(run_id, streams.parse_entry(entry_id, fields)) for entry_id, fields in entries]
            RunEvent.objects.bulk_create(rows, ignore_conflicts=True)
        total += len(entries)
        if len(entries) < batch_size:
            return total
        start = f"({entries[-1][0]}"


def _insert_postgresql(run_id: str, entries: list[tuple[str, dict[str, str]]]) -> None:
    # One statement per batch, the stream's JSON passed through for PostgreSQL to unpack: several times less
    # CPU than building and quoting a model instance per event.
    table = RunEvent._meta.db_table
    sql = (
        f"INSERT INTO {table} (run_id, stream_id, stream_ms, stream_seq, type, step, attempt, epoch, ts, data) "
        f"SELECT %s, r.stream_id, r.stream_ms, r.stream_seq, r.e->>'type', r.e->>'step', (r.e->>'attempt')::int, "
        f"coalesce((r.e->>'epoch')::int, 0), coalesce(r.e->>'ts', ''), coalesce(r.e->'data', '{{}}'::jsonb) "
        f"FROM jsonb_to_recordset(%s::jsonb) AS r(stream_id text, stream_ms bigint, stream_seq bigint, e jsonb) "
        f"ON CONFLICT DO NOTHING"
    )
    rows = []
    for entry_id, fields in entries:
        ms, seq = streams.split_id(entry_id)
        rows.append(f'{{"stream_id":"{entry_id}","stream_ms":{ms},"stream_seq":{seq},"e":{fields["d"]}}}')
    with connection.cursor() as cursor:
        cursor.execute(sql, [uuid.UUID(run_id), "[" + ",".join(rows) + "]"])


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
