"""Child workflows on real Celery workers: a parent suspends while its child runs, both survive a SIGKILL of
the worker running the child, a child's failure is the parent's catchable StepFailed, cancelling the parent
cancels the child, and the child's usage rolls up into the parent's."""

from __future__ import annotations

import json
import uuid

import pytest
from django.test import override_settings

import agentflow
from agentflow import streams
from agentflow.conf import agentflow_settings
from agentflow.models import StepRun, WorkflowRun
from tests.chaos.conftest import drive_monitor
from tests.conftest import wait_for
from tests.testapp.workflows import counts

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

QUEUE = "agentflow-children"
SETTINGS = {
    **agentflow_settings.user_settings,
    "TASK_QUEUE": QUEUE,
    "QUEUED_TIMEOUT_SECONDS": 6.0,
    "MAX_RECOVERIES": 50,
}


@pytest.fixture(autouse=True)
def _queue():
    with override_settings(AGENTFLOW=SETTINGS):
        yield


def start_worker(worker_factory, name="w", pool="solo"):
    env = {"AGENTFLOW_TEST_OVERRIDES": json.dumps({"TASK_QUEUE": QUEUE})}
    return worker_factory(queue=QUEUE, name=name, env=env, pool=pool)


def of_type(run_id, type_: str) -> list[dict]:
    return [e for e in streams.read_events(str(run_id)) if e["type"] == type_]


def the_child(parent) -> WorkflowRun:
    return wait_for(lambda: WorkflowRun.objects.filter(parent=parent).first(), 30, "the child run")  # type: ignore[return-value]


def test_sigkill_while_the_child_runs_both_complete_and_no_completed_step_runs_again(worker_factory):
    doomed = start_worker(worker_factory, name="doomed")
    tag, steps = uuid.uuid4().hex, 8
    parent = agentflow.start("parent", {"tag": tag, "steps": steps, "delay_seconds": 0.3})
    child = the_child(parent)
    assert child.parent_step == "workflow:slow-child#0" and child.input["tag"] == tag
    wait_for(lambda: len(of_type(child.pk, "step.completed")) >= 2, 30, "two of the child's steps done")
    parent.refresh_from_db()
    assert parent.status == "waiting" and parent.wait_reason == "child"
    [started] = of_type(parent.pk, "child.started")
    assert started["data"] == {"run": str(child.pk), "workflow": "slow-child"}

    doomed.kill()
    done_before = {e["step"] for e in of_type(child.pk, "step.completed")}
    start_worker(worker_factory, name="successor")
    drive_monitor(4.0)  # recovers the child: its lease expired with the worker
    assert agentflow.wait(child, timeout_seconds=60) == sum(range(steps))
    assert agentflow.wait(parent, timeout_seconds=60) == {
        "before": "parent-before",
        "child": sum(range(steps)),
        "after": "parent-after",
    }
    effects = counts(tag)
    assert effects["parent-before"] == 1 and effects["parent-after"] == 1
    for step in done_before:  # completed before the kill: never again
        assert effects[f"child-{step.split('#')[1]}"] == 1, step
    assert all(effects[f"child-{i}"] <= 2 for i in range(steps))
    child.refresh_from_db()
    assert child.recoveries >= 1
    [completed] = of_type(parent.pk, "child.completed")
    assert completed["data"] == {"run": str(child.pk), "workflow": "slow-child", "status": "completed"}
    assert [e["type"] for e in streams.read_events(str(parent.pk))].count("run.continued") == 1


@pytest.fixture(scope="module")
def pool_worker(django_db_setup, redis_client):
    """One prefork worker for the rest of the module: a parent and its child run at once."""
    from django.db import connection

    from tests.conftest import Worker

    env = {"AGENTFLOW_TEST_OVERRIDES": json.dumps({"TASK_QUEUE": QUEUE})}
    worker = Worker(QUEUE, connection.settings_dict["NAME"], pool="prefork", name="pool", env=env)
    try:
        yield worker.wait_ready()
    finally:
        worker.stop()


def test_a_failed_child_is_a_step_failure_the_parent_catches(pool_worker):
    tag = uuid.uuid4().hex
    parent = agentflow.start("parent", {"tag": tag, "child": "failing-child"})
    assert agentflow.wait(parent, timeout_seconds=60) == {
        "before": "parent-before",
        "child": "caught ValueError",
        "after": "parent-after",
    }
    child = WorkflowRun.objects.get(parent=parent)
    assert child.status == "failed" and child.error["type"] == "ValueError"
    [failed] = of_type(parent.pk, "child.failed")
    assert failed["data"]["status"] == "failed" and failed["data"]["error"]["type"] == "ValueError"
    assert counts(tag) == {"parent-before": 1, "failing-child": 1, "parent-after": 1}


def test_cancelling_the_parent_cancels_its_child(pool_worker):
    tag = uuid.uuid4().hex
    parent = agentflow.start("parent", {"tag": tag, "steps": 50, "delay_seconds": 0.2})
    child = the_child(parent)
    wait_for(lambda: of_type(child.pk, "step.completed"), 30, "the child to get going")
    agentflow.cancel(parent)
    parent.refresh_from_db()
    assert parent.status == "cancelled"
    wait_for(lambda: WorkflowRun.objects.get(pk=child.pk).status == "cancelled", 30, "the child cancelled")
    wait_for(lambda: of_type(child.pk, "run.cancelled"), 10, "the child's run.cancelled")
    assert len(of_type(child.pk, "step.completed")) < 50


def test_usage_rolls_up_into_the_parent_and_fan_out_keeps_order(pool_worker):
    tag = uuid.uuid4().hex
    parent = agentflow.start(
        "parent", {"tag": tag, "steps": 1, "delay_seconds": 0.0, "tokens": 100}, budget={"tokens": 1000}
    )
    agentflow.wait(parent, timeout_seconds=60)
    parent.refresh_from_db()
    child = WorkflowRun.objects.get(parent=parent)
    # The child may spend what the parent had left when it started it.
    assert child.budget == {"tokens": 800}
    # The parent's own step: 100 prompt + 100 completion tokens at $1 per million.
    own = StepRun.objects.get(run=parent, step_id="costly#0").usage
    assert (own["total_tokens"], own["cost_usd"]) == (200, pytest.approx(0.0001))
    assert child.usage["total_tokens"] == 200
    assert parent.usage["total_tokens"] == own["total_tokens"] + child.usage["total_tokens"]
    assert parent.usage["cost_usd"] == pytest.approx(own["cost_usd"] + child.usage["cost_usd"])
    assert StepRun.objects.get(run=parent, step_id="workflow:slow-child#0").usage == child.usage

    fan = agentflow.start("fan-out-children", {"tag": tag, "children": 3})
    assert agentflow.wait(fan, timeout_seconds=60) == [0, 0, 0]
    children = WorkflowRun.objects.filter(parent=fan).order_by("parent_step")
    assert [c.parent_step for c in children] == [f"workflow:slow-child#{i}" for i in range(3)]
    assert [c.input["tag"] for c in children] == [f"{tag}-{i}" for i in range(3)]
