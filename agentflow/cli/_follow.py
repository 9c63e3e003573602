"""Following a run from the command line: its events from the start (or after an id), then live, reduced by
:mod:`agentflow.client_state` as a browser would, until the run has ended.

Reads what a websocket subscriber reads, without the websocket: the history (the stream while it exists,
else the database archive), then ``XREAD BLOCK`` on the run's stream from the last id it delivered. A
terminal event ends the following only once the database agrees the run has finished: a run resumed in
the meantime goes on in the same stream.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from django.core.management.base import CommandError

from .. import archive, client_state, streams
from ..core.errors import RunNotFound
from ..models import FINISHED_STATUSES, WorkflowRun

PAGE = 1000

# Exit statuses of the subcommands that report on a run (docs/topics/cli.md).
EXIT_COMPLETED = 0
EXIT_FAILED = 1
EXIT_CANCELLED = 3
EXIT_NOT_FINISHED = 4
EXIT_ERROR = 5

_BY_STATUS = {"completed": EXIT_COMPLETED, "failed": EXIT_FAILED, "cancelled": EXIT_CANCELLED}


def exit_status(status: str | None) -> int:
    """0 only for a completed run."""
    return _BY_STATUS.get(status or "", EXIT_NOT_FINISHED)


def get_run(run_id: str) -> WorkflowRun:
    """The run, or a ``CommandError`` (exit status 5) naming the id."""
    from ..runs import get_run as lookup

    try:
        return lookup(run_id)
    except RunNotFound as exc:
        raise CommandError(str(exc), returncode=EXIT_ERROR) from None


def last_event_id(run: WorkflowRun) -> str | None:
    """The id of the run's latest event: the stream's last entry, else what the archive recorded."""
    entries: Any = streams.get_client().xrevrange(streams.stream_key(str(run.pk)), count=1)
    if entries:
        return str(entries[0][0])
    return run.last_event_id or archive.last_archived_id(str(run.pk))


def follow(
    run_id: str,
    on_event: Callable[[dict[str, Any], dict[str, Any]], None],
    *,
    after: str | None = None,
    show_after: str | None = None,
    timeout_seconds: float | None = None,
    block_ms: int = 1000,
) -> dict[str, Any]:
    """Reduce the run's events after ``after`` (all by default), calling ``on_event(event, state)`` for each
    one after ``show_after``, until the run has ended (or ``timeout_seconds`` passed); return the state."""
    state = client_state.new_state()
    last = after
    deadline = None if timeout_seconds is None else time.monotonic() + timeout_seconds
    quiet_until = streams.split_id(show_after) if show_after else None

    def take(events: list[dict[str, Any]]) -> None:
        nonlocal last
        for event in events:
            client_state.apply(state, event)
            last = event["id"]
            if quiet_until is None or streams.split_id(event["id"]) > quiet_until:
                on_event(event, state)

    while True:  # history first: the stream, or the archive once it expired
        page = archive.history(run_id, after=last, limit=PAGE)
        take(page)
        if len(page) < PAGE:
            break
    while not _ended(run_id, state):
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            break
        wait_ms = block_ms if remaining is None else max(1, min(block_ms, int(remaining * 1000)))
        take(streams.tail_events(run_id, last or "0-0", block_ms=wait_ms))
    return state


def _ended(run_id: str, state: dict[str, Any]) -> bool:
    # The final status is committed before the terminal event is appended; a resume reopens the run first.
    if not state["done"]:
        return False
    status = WorkflowRun.objects.filter(pk=run_id).values_list("status", flat=True).first()
    return status in FINISHED_STATUSES
