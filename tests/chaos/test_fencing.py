"""Checkpoint fencing against a claim that commits while a stale worker's checkpoint statement runs."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import psycopg
import pytest
from django.db import connection

import agentflow
from agentflow.core.context import StepRecord
from agentflow.core.errors import LeaseLost
from agentflow.models import StepRun, WorkflowRun
from agentflow.store import DjangoRunStore

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def _record(step_id: str) -> StepRecord:
    now = time.time()
    return StepRecord(
        step_id=step_id, parent_id=None, component="fetch", status="completed", input={"args": [], "kwargs": {}},
        input_hash="h", output="late", error=None, attempts=1, started_at=now, finished_at=now,
    )  # fmt: skip


def race_with_a_claim(run_id: object, stale_write: Callable[[DjangoRunStore], None]) -> BaseException | None:
    """Run ``stale_write`` with epoch 1 while another connection's claim (``runner._claim``: the run row locked
    and its epoch bumped to 2, not yet committed) holds the run; the claim commits half a second later.
    Returns what the write raised; skips the test if the write did not wait for the claim (nothing raced)."""
    WorkflowRun.objects.filter(pk=run_id).update(epoch=1, status="running")
    settings = connection.settings_dict
    claimer = psycopg.connect(
        host=settings["HOST"], port=settings["PORT"], user=settings["USER"], dbname=settings["NAME"]
    )
    outcome: list[BaseException | None] = []
    try:
        claimer.execute(f"SELECT id FROM {WorkflowRun._meta.db_table} WHERE id = %s FOR UPDATE", [run_id])
        claimer.execute(f"UPDATE {WorkflowRun._meta.db_table} SET epoch = 2 WHERE id = %s", [run_id])

        def write() -> None:
            try:
                stale_write(DjangoRunStore(str(run_id), 1))
                outcome.append(None)
            except BaseException as exc:  # LeaseLost expected
                outcome.append(exc)
            finally:
                connection.close()

        writer = threading.Thread(target=write)
        writer.start()
        time.sleep(0.5)  # the stale statement has taken its snapshot (epoch 1) and waits on the row lock
        blocked = writer.is_alive() and not outcome
        claimer.commit()
        writer.join(timeout=10)
    finally:
        claimer.close()
    assert outcome, "the stale checkpoint write did not return"
    # Not a bug if it finished first: then it committed before the claim, and fencing was not bypassed.
    if not blocked:
        pytest.skip("the stale write did not wait for the claim's lock; nothing raced")
    return outcome[0]


def test_a_claim_committing_during_a_stale_checkpoint_write_fences_it():
    run = agentflow.start("three-steps", {"tag": "fencing"})  # no worker: the run stays queued at epoch 0
    outcome = race_with_a_claim(run.pk, lambda store: store.save_step(_record("fetch#0")))
    assert isinstance(outcome, LeaseLost), f"the stale write returned {outcome!r}"
    assert not StepRun.objects.filter(run_id=run.pk, epoch=1).exists()


def test_a_batch_of_concurrent_checkpoints_is_fenced_as_one():
    run = agentflow.start("three-steps", {"tag": "fencing-batch"})
    outcome = race_with_a_claim(
        run.pk, lambda store: store._write_many([_record(f"fetch#{i}") for i in range(5)])
    )
    assert isinstance(outcome, LeaseLost), f"the stale batch returned {outcome!r}"
    assert not StepRun.objects.filter(run_id=run.pk).exists()


def test_concurrent_async_checkpoints_are_written_together():
    import asyncio

    run = agentflow.start("three-steps", {"tag": "group-commit"})
    WorkflowRun.objects.filter(pk=run.pk).update(epoch=1, status="running")
    store = DjangoRunStore(str(run.pk), 1)
    records = [_record(f"fetch#{i}") for i in range(40)]
    records.append(_record("fetch#0"))  # the same step twice in a batch: its last record wins
    records[-1].output = "last"
    statements: list[int] = []
    write_many = store._write_many

    def counting(batch: list[StepRecord]) -> None:
        statements.append(len(batch))
        write_many(batch)

    store._write_many = counting  # type: ignore[method-assign]

    async def main() -> None:
        await asyncio.gather(*(store.asave_step(record) for record in records))

    try:
        asyncio.run(main())
    finally:
        store.close()
    assert sum(statements) == 41 and len(statements) < 41  # grouped
    rows = dict(StepRun.objects.filter(run_id=run.pk).values_list("step_id", "output"))
    assert len(rows) == 40 and rows["fetch#0"] == "last" and rows["fetch#39"] == "late"
    # And a stale epoch refuses the whole batch.
    WorkflowRun.objects.filter(pk=run.pk).update(epoch=2)
    stale = DjangoRunStore(str(run.pk), 1)
    try:
        with pytest.raises(LeaseLost):
            stale._write_many([_record("other#0"), _record("other#1")])
    finally:
        stale.close()
    assert not StepRun.objects.filter(run_id=run.pk, step_id__startswith="other").exists()
