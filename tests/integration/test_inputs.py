"""Human input on real Celery workers: a run waits for an answer without holding its worker, survives the
worker's SIGKILL while it waits, and continues on another worker when the answer comes over REST."""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime

import pytest
from django.contrib.auth.models import User
from django.test import override_settings
from rest_framework.test import APIClient

import agentflow
from agentflow import streams
from agentflow.conf import agentflow_settings
from agentflow.models import StepRun, WorkflowRun
from tests.api.conftest import url
from tests.conftest import wait_for
from tests.testapp.workflows import counts

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

QUEUE = "agentflow-inputs"
SETTINGS = {**agentflow_settings.user_settings, "TASK_QUEUE": QUEUE}


@pytest.fixture(autouse=True)
def _queue():
    with override_settings(AGENTFLOW=SETTINGS):
        yield


def start_worker(worker_factory, name="w"):
    env = {"AGENTFLOW_TEST_OVERRIDES": json.dumps({"TASK_QUEUE": QUEUE})}
    return worker_factory(queue=QUEUE, name=name, env=env)


def of_type(run_id, type_: str) -> list[dict]:
    return [e for e in streams.read_events(str(run_id)) if e["type"] == type_]


def waiting_for_input(run_id) -> bool:
    run = WorkflowRun.objects.get(pk=run_id)
    return run.status == "waiting" and run.wait_reason == "input"


def ts(event: dict) -> float:
    return datetime.fromisoformat(event["ts"].replace("Z", "+00:00")).timestamp()


@pytest.fixture
def owner(transactional_db) -> User:
    return User.objects.create_user(f"owner-{uuid.uuid4().hex[:8]}")


def client(user: User) -> APIClient:
    api = APIClient()
    api.force_authenticate(user)
    return api


def test_a_waiting_run_frees_its_worker_survives_its_sigkill_and_continues_on_the_answer(
    worker_factory, owner
):
    first = start_worker(worker_factory, name="first")
    tag = uuid.uuid4().hex
    run = agentflow.start("asks-approval", {"tag": tag}, owner=owner)
    wait_for(lambda: waiting_for_input(run.pk), 30, "the run to wait for input")
    [requested] = of_type(run.pk, "input.requested")
    assert requested["step"] == "input:approve"
    assert requested["data"]["prompt"] == "Publish draft?" and requested["data"]["timeout_at"] is None
    assert requested["data"]["schema"]["required"] == ["approved"]
    [waiting] = of_type(run.pk, "run.waiting")
    assert waiting["data"] == {"wake_at": None, "reason": "input"}

    # The worker (-c 1) is free: another run executes to its end while this one waits.
    other = agentflow.start("three-steps", {"tag": uuid.uuid4().hex})
    agentflow.wait(other, timeout_seconds=30)
    assert waiting_for_input(run.pk)

    # The worker dies and another replaces it; nothing about the waiting run changes.
    first.kill()
    start_worker(worker_factory, name="second")
    assert waiting_for_input(run.pk)
    api = client(owner)
    listed = api.get(url("run-list"), {"wait_reason": "input"}).json()["results"]
    assert [r["id"] for r in listed] == [str(run.pk)] and listed[0]["wait_reason"] == "input"

    answered_at = time.time()
    response = api.post(
        url("run-input", run.pk, "approve"), {"approved": True, "notes": "ship it"}, format="json"
    )
    assert response.status_code == 200, response.json()
    assert response.json()["status"] == "answered" and response.json()["answered_by"] == owner.username
    assert agentflow.wait(run, timeout_seconds=30) == {
        "published": True,
        "notes": "ship it",
        "after": "after",
    }
    assert counts(tag) == {"draft": 1, "after": 1}
    [continued] = of_type(run.pk, "run.continued")
    [received] = of_type(run.pk, "input.received")
    assert received["data"]["value"] == {"approved": True, "notes": "ship it"}
    assert received["data"]["answered_by"] == owner.username
    print(f"\nanswer -> run.continued: {(ts(continued) - answered_at) * 1000:.0f} ms")
    # The answer is the step's checkpoint; a second one is refused.
    assert StepRun.objects.get(run=run, step_id="input:approve").status == "completed"
    again = api.post(url("run-input", run.pk, "approve"), {"approved": False}, format="json")
    assert again.status_code == 409 and again.json()["code"] == "input_already_answered"


def test_time_out_and_cancel_while_waiting(worker_factory, owner):
    start_worker(worker_factory)
    timed, cancelled = uuid.uuid4().hex, uuid.uuid4().hex
    late = agentflow.start("asks-approval", {"tag": timed, "timeout_seconds": 1.0}, owner=owner)
    doomed = agentflow.start("asks-approval", {"tag": cancelled}, owner=owner)
    wait_for(lambda: waiting_for_input(doomed.pk), 30, "the run to wait for input")

    # The time-out raises InputTimeout in the workflow, which catches it.
    assert agentflow.wait(late, timeout_seconds=30) == {
        "published": False,
        "reason": "timed out",
        "after": "after-timeout",
    }
    assert [e["data"] for e in of_type(late.pk, "input.timed_out")] == [{"key": "approve"}]
    [waiting] = of_type(late.pk, "run.waiting")
    assert waiting["data"]["reason"] == "input" and waiting["data"]["wake_at"]
    api = client(owner)
    response = api.post(url("run-input", late.pk, "approve"), {"approved": True}, format="json")
    assert response.status_code == 409 and response.json()["code"] == "input_timed_out"

    # Cancelling a run that waits for input ends it at once; an answer then is refused.
    response = api.post(url("run-cancel", doomed.pk))
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    wait_for(lambda: of_type(doomed.pk, "run.cancelled"), 10, "run.cancelled")
    response = api.post(url("run-input", doomed.pk, "approve"), {"approved": True}, format="json")
    assert response.status_code == 409 and response.json()["code"] == "run_finished"
    step = StepRun.objects.get(run=doomed, step_id="input:approve")
    assert step.status == "waiting" and "answer" not in step.output
    assert counts(cancelled) == {"draft": 1}
