"""The API end to end: runs started over HTTP, executed by a real Celery worker, followed, cancelled and
resumed over HTTP."""

from __future__ import annotations

import uuid

import pytest
from django.db import connection

from agentflow import streams
from agentflow.models import StepRun, WorkflowRun
from tests.api.conftest import run_url, start_url, url
from tests.conftest import wait_for
from tests.testapp.workflows import counts, effects
from tests.testapp.workflows_api import gate_key

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def _worker(shared_worker):
    return shared_worker


def tag() -> str:
    return uuid.uuid4().hex


def finished(api, run_id: str, timeout_seconds: float = 30) -> dict:
    def check():
        body = api.get(url("run-detail", run_id)).json()
        return body if body["status"] in {"completed", "failed", "cancelled"} else None

    return wait_for(check, timeout_seconds, f"run {run_id} to finish")  # type: ignore[return-value]


def archived(run_id: str) -> None:
    wait_for(lambda: WorkflowRun.objects.get(pk=run_id).last_event_id, 10, "the run's events archived")


def all_events(client, run_id: str, **params) -> list[dict]:
    events, after = [], None
    while True:
        body = client.get(
            url("run-events", run_id), {"limit": 4, **params, **({"after": after} if after else {})}
        ).json()
        events += body["events"]
        after = body["last_id"]
        if not body["has_more"]:
            return events


def test_start_then_follow_the_run(api, anonymous):
    response = api.post(start_url("api-echo"), {"text": "ab", "times": 2}, format="json")
    assert response.status_code == 202
    run_id, token = response.json()["id"], response.json()["stream_token"]
    body = finished(api, run_id)
    assert body["status"] == "completed"
    assert body["output"] == {"text": "abab", "labels": []}
    assert [(s["step_id"], s["status"]) for s in body["steps"]] == [("repeat#0", "completed")]
    assert body["started_at"] and body["finished_at"] and body["duration_seconds"] >= 0
    archived(run_id)
    events = all_events(api, run_id)
    assert [e["type"] for e in events] == [
        "run.queued", "run.started", "step.started", "step.completed", "output", "run.completed",
    ]  # fmt: skip
    assert events == streams.read_events(run_id)
    # The browser's way: the stream token alone.
    assert all_events(anonymous, run_id, token=token) == events


def test_synchronous_run_answers_with_the_output(api):
    t = tag()
    response = api.post(run_url("three-steps"), {"tag": t, "topic": "otters"}, format="json")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "completed"
    assert body["output"] == {"text": "notes on otters: intro\nnotes on otters: body", "sections": 2}
    assert [s["step_id"] for s in body["steps"]] == ["fetch#0", "outline#0", "write#0"]
    assert counts(t) == {"fetch": 1, "outline": 1, "write": 1}


def test_a_synchronous_run_that_fails_is_200_with_its_error(api):
    response = api.post(run_url("fails"), {"tag": tag()}, format="json")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "failed" and body["output"] is None
    assert body["error"]["type"] == "StepFailed" and body["error"]["step"] == "doomed#0"
    assert "traceback" not in body["error"]
    assert [(s["step_id"], s["status"], s["error"]["type"]) for s in body["steps"]] == [
        ("doomed#0", "failed", "ValueError")
    ]


def test_a_synchronous_run_that_outlasts_its_timeout_is_202_then_cancelled_then_resumed(api):
    t = tag()
    response = api.post(
        run_url("slow") + "?timeout=0.5", {"tag": t, "steps": 30, "delay_seconds": 0.1}, format="json"
    )
    assert response.status_code == 202
    body = response.json()
    assert body["status"] in {"queued", "running"} and response.headers["Location"] == body["urls"]["self"]
    run_id = body["id"]
    wait_for(lambda: StepRun.objects.filter(run_id=run_id).exists(), 10, "a first step done")

    response = api.post(url("run-cancel", run_id))
    assert response.status_code == 202 and response.json()["cancel_requested"] is True
    body = finished(api, run_id)
    assert body["status"] == "cancelled"
    done_before = body["step_count"]
    assert 0 < done_before < 30
    response = api.post(url("run-cancel", run_id))
    assert response.status_code == 409 and response.json()["code"] == "run_finished"

    archived(run_id)
    response = api.post(url("run-resume", run_id))
    assert response.status_code == 202 and response.json()["status"] == "queued"
    body = finished(api, run_id)
    assert body["status"] == "completed" and body["output"] == sum(range(30))
    # The steps completed before the cancellation replayed: each ran once.
    assert set(counts(t).values()) == {1} and len(counts(t)) == 30


def test_an_idempotent_start_runs_once(api):
    t = tag()
    first = api.post(start_url("three-steps"), {"tag": t}, format="json", HTTP_IDEMPOTENCY_KEY=t)
    again = api.post(start_url("three-steps"), {"tag": t}, format="json", HTTP_IDEMPOTENCY_KEY=t)
    assert (first.status_code, again.status_code) == (202, 200)
    assert first.json()["id"] == again.json()["id"]
    finished(api, first.json()["id"])
    third = api.post(start_url("three-steps"), {"tag": t}, format="json", HTTP_IDEMPOTENCY_KEY=t)
    assert third.status_code == 200 and third.json()["status"] == "completed"
    assert WorkflowRun.objects.filter(idempotency_key=t).count() == 1
    assert counts(t) == {"fetch": 1, "outline": 1, "write": 1}


def statuses(events: list[dict]) -> list[str]:
    return [e["data"]["text"] for e in events if e["type"] == "status"]


@pytest.mark.parametrize("expired", [False, True], ids=["stream", "stream-expired"])
def test_resume_a_failed_run_runs_its_failed_step_again(api, expired):
    t = tag()
    response = api.post(run_url("api-gated"), {"tag": t}, format="json")
    assert response.status_code == 200
    failed = response.json()
    run_id = failed["id"]
    assert failed["status"] == "failed" and failed["error"]["step"] == "gate#0"
    archived(run_id)
    before = all_events(api, run_id)
    assert before[-1]["type"] == "run.failed"
    if expired:  # as after STREAM_TTL_SECONDS: only the archive is left
        streams.get_client().delete(streams.stream_key(run_id), streams.meta_key(run_id))

    effects().set(gate_key(t), 1)
    response = api.post(url("run-resume", run_id))
    assert response.status_code == 202
    assert response.json()["epoch"] == failed["epoch"] + 1
    body = finished(api, run_id)
    assert body["status"] == "completed" and body["error"] is None
    assert body["output"] == {"prepared": "prepared", "gate": "passed"}
    assert counts(t) == {"prepare": 1, "gate": 2}  # prepare replayed, the gate ran again
    assert list(StepRun.objects.filter(run_id=run_id).values_list("step_id", "status")) == [
        ("prepare#0", "completed"),
        ("gate#0", "completed"),
    ]

    archived(run_id)
    events = all_events(api, run_id)
    assert events[: len(before)] == before  # history kept, ids unchanged
    new = [e["type"] for e in events[len(before) :]]
    assert new == ["run.resumed", "step.started", "step.completed", "output", "run.completed"]
    # The failed step runs again: its earlier content is void (prepare#0 is replayed: its stands).
    assert events[len(before)]["data"] == {"void_steps": ["gate#0"], "recoveries": 0}
    # Replaying the workflow body appended none of its status events again.
    assert statuses(events) == ["preparing", "at the gate"]
    ids = [streams.split_id(e["id"]) for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert {e["epoch"] for e in events[len(before) :]} == {body["epoch"]}


def test_resume_while_running_is_409(api):
    response = api.post(start_url("slow"), {"tag": tag(), "steps": 20, "delay_seconds": 0.1}, format="json")
    run_id = response.json()["id"]
    wait_for(lambda: api.get(url("run-detail", run_id)).json()["status"] == "running", 10, "the run to start")
    response = api.post(url("run-resume", run_id))
    assert response.status_code == 409 and response.json()["details"] == {"status": "running"}
    assert api.post(url("run-cancel", run_id)).status_code == 202
    assert finished(api, run_id)["status"] == "cancelled"


def test_a_synchronous_run_under_atomic_requests(api, monkeypatch):
    # The run is enqueued when the transaction recording it commits: the view must not run in one.
    monkeypatch.setitem(connection.settings_dict, "ATOMIC_REQUESTS", True)
    response = api.post(run_url("api-echo") + "?timeout=20", {"text": "x"}, format="json")
    assert response.status_code == 200 and response.json()["status"] == "completed"
