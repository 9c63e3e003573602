"""``agentflow.wait()`` follows the run's stream and reads the run's row only when that can tell something
(the start, a terminal event, a quiet spell on a growing backoff): waiting callers (the synchronous REST
endpoint is one each) cost the database almost nothing while they wait. Real PostgreSQL and Redis; the run's
events are appended from here, through the worker's own sink, on a timeline the test controls."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from django.db import connection
from django.db.backends.signals import connection_created
from django.utils import timezone

import agentflow
from agentflow import runs, streams
from agentflow.core import events as ev
from agentflow.models import RunStatus, WorkflowRun
from tests.conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

WAITERS = 5


def running() -> tuple[WorkflowRun, streams.RedisSink]:
    run = WorkflowRun.objects.create(
        workflow="w", status=RunStatus.RUNNING, epoch=1, started_at=timezone.now()
    )
    return run, streams.RedisSink(str(run.pk), 1, streams.claim(str(run.pk), 1), archive=False)


def backoff_checks(quiet_seconds: float) -> int:
    """How many times a waiter may read the row in a quiet spell this long: after 1 s, 2 s more, 4 more..."""
    checks, at, step = 0, 0.0, runs.FIRST_QUIET_CHECK_SECONDS
    while at + step <= quiet_seconds:
        checks, at, step = checks + 1, at + step, step * 2
    return checks


class Waiter(threading.Thread):
    """``runs.wait()`` in a thread of its own, counting the queries and connections it makes."""

    def __init__(self, run: WorkflowRun, connections: list[int]) -> None:
        super().__init__(daemon=True)
        self.run_id, self.connections = str(run.pk), connections
        self.queries = 0
        self.started_at = 0.0
        self.result: Any = None

    def count(self, execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        self.queries += 1
        return execute(sql, params, many, context)

    def run(self) -> None:
        connection_created.connect(self.opened, weak=False, dispatch_uid=f"waiter-{id(self)}")
        try:
            with connection.execute_wrapper(self.count):
                self.started_at = time.monotonic()
                self.result = runs.wait(self.run_id, timeout_seconds=60)
        finally:
            connection_created.disconnect(dispatch_uid=f"waiter-{id(self)}")
            connection.close()

    def opened(self, sender: Any, connection: Any, **kwargs: Any) -> None:
        if threading.current_thread() is self:
            self.connections.append(1)


def test_waiting_callers_read_the_run_only_at_the_start_at_its_end_and_on_a_quiet_backoff():
    run, sink = running()
    connections: list[int] = []
    waiters = [Waiter(run, connections) for _ in range(WAITERS)]
    for waiter in waiters:
        waiter.start()

    time.sleep(3.2)  # a quiet spell: the run's stream says nothing (a queue, a long step)
    quiet_ended = time.monotonic()
    gaps, last = [], quiet_ended
    for index in range(10):  # then events, every 0.2 s
        sink.emit(
            ev.envelope(ev.STATUS, str(run.pk), step=None, attempt=None, epoch=1, data={"text": str(index)})
        )
        sink.flush()
        now = time.monotonic()
        gaps.append(now - last)
        last = now
        time.sleep(0.2)
    WorkflowRun.objects.filter(pk=run.pk).update(
        status=RunStatus.COMPLETED, output=42, finished_at=timezone.now()
    )
    sink.emit(ev.envelope(ev.RUN_COMPLETED, str(run.pk), step=None, attempt=None, epoch=1, data={}))
    sink.close()
    for waiter in waiters:
        waiter.join(timeout=30)
        assert waiter.result == 42

    # The start, the terminal event, and the backoff's reads while it was quiet (before: one a second).
    for waiter in waiters:
        allowed = 2 + backoff_checks(quiet_ended - waiter.started_at) + sum(backoff_checks(g) for g in gaps)
        assert waiter.queries <= allowed, (waiter.queries, allowed)
    assert len(connections) <= sum(w.queries for w in waiters)  # none kept open: one a read at most


def test_a_run_whose_terminal_event_was_lost_still_ends_the_wait():
    # Redis lost the terminal event (restarted empty, say): the quiet backoff's read of the row ends the wait.
    run, sink = running()
    sink.close()
    waiter = Waiter(run, [])
    waiter.start()
    wait_for(lambda: waiter.queries, 10, "the waiter's first read of the run")
    WorkflowRun.objects.filter(pk=run.pk).update(
        status=RunStatus.COMPLETED, output="done", finished_at=timezone.now()
    )
    waiter.join(timeout=10)
    assert waiter.result == "done" and waiter.queries == 2


def test_the_time_out_reports_the_status_of_the_moment():
    run, sink = running()
    sink.close()
    WorkflowRun.objects.filter(pk=run.pk).update(status=RunStatus.WAITING)
    with pytest.raises(agentflow.RunTimeout, match=r"within 0\.5s \(it is waiting\)"):
        runs.wait(run, timeout_seconds=0.5)
