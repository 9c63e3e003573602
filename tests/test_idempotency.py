"""``agentflow.start(..., idempotency_key=...)`` from Python: a key gives back its run only for the same input,
also when two calls race to record it (the database's unique constraint decides; PostgreSQL here)."""

from __future__ import annotations

import threading

import pytest
from django.db import connection, connections, transaction

import agentflow
from agentflow import IdempotencyKeyReused
from agentflow.models import WorkflowRun
from tests.conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_same_key_and_input_give_back_the_first_run():
    first = agentflow.start("api-echo", {"text": "a"}, idempotency_key="k")
    # The input is compared after validation: spelling out a default is the same input.
    assert agentflow.start("api-echo", {"text": "a", "times": 1}, idempotency_key="k").pk == first.pk
    assert WorkflowRun.objects.count() == 1


def test_the_same_key_with_another_input_is_an_error():
    first = agentflow.start("api-echo", {"text": "a"}, idempotency_key="k")
    with pytest.raises(IdempotencyKeyReused) as info:
        agentflow.start("api-echo", {"text": "b"}, idempotency_key="k")
    assert info.value.code == "idempotency_key_reused"
    assert info.value.details == {"run": str(first.pk)}
    assert str(first.pk) in info.value.message
    assert WorkflowRun.objects.count() == 1


@pytest.mark.parametrize("key", ["", "k" * 256, "a\x00b", "\ud800", 5])
def test_a_key_the_database_cannot_hold_is_a_type_error(key):
    with pytest.raises(TypeError, match="idempotency_key must be a string of 1 to 255 characters"):
        agentflow.start("api-echo", {"text": "a"}, idempotency_key=key)
    assert not WorkflowRun.objects.exists()


def lock_waiters() -> int:
    with connection.cursor() as cursor:
        # Inside a transaction the statistics views are a snapshot taken at their first read.
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return cursor.fetchone()[0]


@pytest.mark.skipif(connection.vendor != "postgresql", reason="needs PostgreSQL's row locks")
@pytest.mark.parametrize(("theirs", "mine", "reused"), [("a", "b", True), ("a", "a", False)])
def test_a_call_that_loses_the_race_checks_the_winners_input(theirs, mine, reused):
    """The other call's insert is not committed when this one looks for the key, so this one inserts too and
    waits on the unique index; once the other commits, this one's insert fails and it must compare inputs.
    (It used to return the winner's run whatever its input.)"""
    outcome: dict = {}

    def loser() -> None:
        try:
            outcome["run"] = agentflow.start("api-echo", {"text": mine}, idempotency_key="race")
        except Exception as exc:
            outcome["error"] = exc
        finally:
            connections.close_all()

    with transaction.atomic():
        winner = WorkflowRun.objects.create(
            workflow="api-echo",
            input={"text": theirs, "times": 1, "labels": None},
            idempotency_key="race",
        )
        thread = threading.Thread(target=loser)
        thread.start()
        wait_for(lambda: lock_waiters() >= 1, 10, "the second insert to wait on the first")
    thread.join(timeout=10)
    assert not thread.is_alive()
    if reused:
        assert isinstance(outcome.get("error"), IdempotencyKeyReused), outcome
        assert outcome["error"].details == {"run": str(winner.pk)}
    else:
        assert outcome.get("run") is not None and outcome["run"].pk == winner.pk, outcome
    assert WorkflowRun.objects.filter(idempotency_key="race").count() == 1
