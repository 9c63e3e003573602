"""A backlog never fails a run (issue 10, item 2).

One SIGKILL of a ``-c 2`` prefork worker while it runs two runs, with sixteen runs queued behind them. The
monitor recovers each victim once; their recovery messages then wait behind the backlog for many times
``LEASE_SECONDS`` (2 s in the tests). A run waiting for a worker is not lost again: both victims complete
with ``recoveries == 1``, the monitor sends no message twice, and no step whose checkpoint had committed
before the kill runs again (executions counted in Redis, outside the workers).
"""

from __future__ import annotations

import time
import uuid
from collections import Counter

import pytest
from django.test import override_settings

import agentflow
from agentflow.conf import agentflow_settings
from agentflow.models import FINISHED_STATUSES, StepRun, WorkflowRun
from agentflow.monitor import check_runs
from tests.chaos.conftest import events_of
from tests.conftest import wait_for
from tests.testapp.workflows import counts

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

QUEUE = "agentflow-backlog"
VICTIM = {"steps": 8, "delay_seconds": 0.4}
QUEUED = {"steps": 3, "delay_seconds": 0.4}  # 16 of these on two processes: ~10 s, five leases
BACKLOG = 16


def test_a_backlog_behind_killed_runs_never_fails_them(worker_factory):
    with override_settings(AGENTFLOW={**agentflow_settings.user_settings, "TASK_QUEUE": QUEUE}):
        doomed = worker_factory(queue=QUEUE, pool="prefork", name="backlog-doomed")
        base = uuid.uuid4().hex[:12]
        victims = {
            f"{base}-v{i}": str(agentflow.start("slow", {"tag": f"{base}-v{i}", **VICTIM}).pk)
            for i in range(2)
        }
        wait_for(
            lambda: WorkflowRun.objects.filter(pk__in=victims.values(), status="running").count() == 2,
            30,
            "both victims running",
        )
        queued = {
            f"{base}-q{i}": str(agentflow.start("slow", {"tag": f"{base}-q{i}", **QUEUED}).pk)
            for i in range(BACKLOG)
        }
        wait_for(
            lambda: all(StepRun.objects.filter(run_id=run_id).count() >= 2 for run_id in victims.values()),
            30,
            "two checkpoints in each victim",
        )
        doomed.kill()
        checkpointed = {
            tag: set(StepRun.objects.filter(run_id=run_id).values_list("step_id", flat=True))
            for tag, run_id in victims.items()
        }
        worker_factory(queue=QUEUE, pool="prefork", name="backlog-rescuer")

        reports: Counter[str] = Counter()
        everything = [*victims.values(), *queued.values()]
        deadline = time.monotonic() + 90
        while WorkflowRun.objects.filter(pk__in=everything).exclude(status__in=FINISHED_STATUSES).exists():
            assert time.monotonic() < deadline, f"runs unfinished after 90 s; monitor: {dict(reports)}"
            reports.update(check_runs().as_dict())
            time.sleep(0.2)

    for tag, run_id in victims.items():
        run = WorkflowRun.objects.get(pk=run_id)
        where = f"victim {run_id} (monitor: {dict(reports)})"
        assert run.status == "completed", f"{where}: {run.status} {run.error}"
        assert run.output == sum(range(VICTIM["steps"])), where
        # One death, one recovery, one claim of the recovery message: epoch 1 died, epoch 2 finished.
        assert run.recoveries == 1 and run.epoch == 2, (
            f"{where}: recoveries {run.recoveries}, epoch {run.epoch}"
        )
        assert [e["type"] for e in events_of(run_id)].count("run.recovered") == 1, where
        effects = counts(tag)
        rerun = [index for index in range(VICTIM["steps"]) if effects[f"slow-{index}"] != 1]
        for index in range(VICTIM["steps"]):
            step = f"slow_step#{index}"
            if step in checkpointed[tag]:
                assert effects[f"slow-{index}"] == 1, f"{where}: checkpointed {step} ran again"
        # Only the step in flight at the kill may run twice (at least once, by design); nothing else.
        assert len(rerun) <= 1 and all(effects[f"slow-{i}"] == 2 for i in rerun), f"{where}: {effects}"
    for tag, run_id in queued.items():
        run = WorkflowRun.objects.get(pk=run_id)
        assert run.status == "completed" and run.recoveries == 0, f"queued run {run_id}: {run.status}"
        assert counts(tag) == {f"slow-{i}": 1 for i in range(QUEUED["steps"])}, run_id
    assert reports["recovered"] == 2 and reports["abandoned"] == 0, dict(reports)
    # Waiting in a queue is not a lost message: the monitor sent nothing again.
    assert reports["requeued"] == 0 and reports["woken"] == 0, dict(reports)
