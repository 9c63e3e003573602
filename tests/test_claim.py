"""A worker's claim of a run survives a database connection that died while the worker was idle."""

from __future__ import annotations

import psycopg
import pytest
from django.db import connection

from agentflow.models import RunStatus, WorkflowRun
from agentflow.runner import _claim

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(connection.vendor != "postgresql", reason="terminates a PostgreSQL backend"),
]


def _terminate_this_threads_backend() -> None:
    """What a database restart or a pooler's idle time-out does to a connection kept between tasks."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    params = connection.get_connection_params()
    params.pop("cursor_factory", None)
    params.pop("context", None)
    with psycopg.connect(**params, autocommit=True) as other:
        other.execute("SELECT pg_terminate_backend(%s)", [pid])


def test_a_claim_on_a_connection_killed_while_idle_takes_the_run_on_a_new_connection():
    run = WorkflowRun.objects.create(workflow="three-steps", status=RunStatus.QUEUED, epoch=0)
    _terminate_this_threads_backend()

    claimed = _claim(str(run.pk), 0, "worker-a")

    assert claimed is not None
    taken, previous = claimed
    assert (taken.epoch, previous) == (1, RunStatus.QUEUED)
    run.refresh_from_db()
    assert (run.epoch, run.status, run.worker) == (1, RunStatus.RUNNING, "worker-a")


def test_a_claim_whose_database_stays_down_raises():
    run = WorkflowRun.objects.create(workflow="three-steps", status=RunStatus.QUEUED, epoch=0)
    connection.ensure_connection()
    real_connect = connection.get_new_connection

    def refused(*args: object, **kwargs: object) -> object:
        raise psycopg.OperationalError("connection refused")

    _terminate_this_threads_backend()
    connection.get_new_connection = refused  # type: ignore[method-assign]
    try:
        with pytest.raises(Exception, match="connection refused"):
            _claim(str(run.pk), 0, "worker-a")
    finally:
        connection.get_new_connection = real_connect  # type: ignore[method-assign]
        connection.close()
    run.refresh_from_db()
    assert (run.epoch, run.status) == (0, RunStatus.QUEUED)
