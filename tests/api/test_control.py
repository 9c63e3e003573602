"""POST runs/{id}/cancel/ and runs/{id}/resume/, and agentflow.resume.resume() itself (no worker here: the
end-to-end versions are in test_end_to_end.py)."""

from __future__ import annotations

import pytest
from django.utils import timezone

from agentflow import streams
from agentflow.core import events as ev
from agentflow.core.serialization import dumps
from agentflow.models import RunEvent, StepRun
from agentflow.resuming import RunNotResumable, reopen_stream, resume
from tests.api.conftest import url

pytestmark = pytest.mark.django_db


def test_cancelling_a_queued_run_cancels_it_at_once(api, alice, make_run):
    run = make_run(alice)
    response = api.post(url("run-cancel", run.pk))
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "cancelled" and body["cancel_requested"] is True and body["owner"] == "alice"
    assert "steps" in body


def test_cancelling_a_running_run_asks_it_to_stop(api, alice, make_run):
    run = make_run(alice, status="running", epoch=1)
    response = api.post(url("run-cancel", run.pk))
    assert response.status_code == 202
    assert response.json()["status"] == "running" and response.json()["cancel_requested"] is True
    # Asking again is harmless.
    assert api.post(url("run-cancel", run.pk)).status_code == 202
    run.refresh_from_db()
    assert run.cancel_requested and run.status == "running"


@pytest.mark.parametrize("status", ["completed", "failed", "cancelled"])
def test_cancelling_a_finished_run_is_409(api, alice, make_run, status):
    run = make_run(alice, status=status)
    response = api.post(url("run-cancel", run.pk))
    assert response.status_code == 409
    assert response.json() == {
        "code": "run_finished",
        "message": f"run {run.pk} is {status} already",
        "details": {"status": status},
    }


@pytest.mark.parametrize("status", ["queued", "running", "waiting", "completed"])
def test_resuming_a_run_that_is_not_failed_or_cancelled_is_409(api, alice, make_run, status):
    run = make_run(alice, status=status)
    response = api.post(url("run-resume", run.pk))
    assert response.status_code == 409
    body = response.json()
    assert body["code"] == "not_resumable" and body["details"] == {"status": status}
    run.refresh_from_db()
    assert run.status == status


@pytest.mark.parametrize("status", ["failed", "cancelled"])
def test_resume_queues_the_run_again_without_its_failed_steps(
    api, alice, make_run, status, django_capture_on_commit_callbacks
):
    now = timezone.now()
    run = make_run(
        alice,
        status=status,
        epoch=3,
        recoveries=2,
        started_at=now,
        finished_at=now,
        cancel_requested=status == "cancelled",
        error={"type": "StepFailed", "message": "boom"},
        last_event_id="1-0",
        worker="w1",
    )
    StepRun.objects.create(run=run, step_id="a#0", component="a", status="completed", output=1)
    StepRun.objects.create(run=run, step_id="a#0/b#0", parent_id="a#0", component="b", status="failed")
    StepRun.objects.create(run=run, step_id="c#0", component="c", status="failed")
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = api.post(url("run-resume", run.pk))
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "queued" and body["error"] is None and body["finished_at"] is None
    assert body["epoch"] == 4 and body["recoveries"] == 0 and body["cancel_requested"] is False
    assert [step["step_id"] for step in body["steps"]] == ["a#0"]
    assert response.headers["Location"] == body["urls"]["self"]
    run.refresh_from_db()
    assert (run.status, run.epoch, run.last_event_id, run.worker) == ("queued", 4, "", "")
    # Its message is owed (agentflow.dispatch) and sent once the transaction commits.
    assert run.started_at == now and run.dispatch_pending and run.enqueued_at >= now
    assert len(callbacks) == 1


def test_resume_over_http_can_replace_the_budget(api, alice, make_run):
    run = make_run(alice, status="failed")
    run.budget = {"usd": 0.1}
    run.save()
    response = api.post(url("run-resume", run.pk), {"budget": {"usd": 2.5}}, format="json")
    assert response.status_code == 202, response.content
    assert response.json()["budget"] == {"usd": 2.5, "tokens": None}
    run.refresh_from_db()
    assert run.budget == {"usd": 2.5}


@pytest.mark.parametrize(
    "body", [{"budget": {"usd": -1}}, {"budget": {"euros": 1}}, {"budget": "lots"}, {"other": 1}, [1]]
)
def test_resume_with_a_bad_body_is_400_and_changes_nothing(api, alice, make_run, body):
    run = make_run(alice, status="failed")
    response = api.post(url("run-resume", run.pk), body, format="json")
    assert response.status_code == 400, response.content
    assert response.json()["code"] == "invalid_input"
    run.refresh_from_db()
    assert run.status == "failed" and run.budget is None


def test_resume_from_python(alice, make_run):
    run = make_run(alice, status="completed")
    with pytest.raises(RunNotResumable) as info:
        resume(run.pk)
    assert info.value.code == "not_resumable"
    run.status = "failed"
    run.save()
    assert resume(str(run.pk)).status == "queued"


def test_resume_can_give_the_run_another_budget(alice, make_run):
    run = make_run(alice, status="failed")
    run.budget = {"usd": 0.1}
    run.error = {"type": "BudgetExceeded", "code": "budget_exceeded"}
    run.save()
    assert resume(run).budget == {"usd": 0.1}  # kept by default
    run.refresh_from_db()
    run.status = "failed"
    run.save()
    resume(run, budget={"usd": 1, "tokens": 5000})
    run.refresh_from_db()
    assert run.budget == {"usd": 1, "tokens": 5000} and run.error is None
    run.status = "failed"
    run.save()
    resume(run, budget=None)
    run.refresh_from_db()
    assert run.budget is None
    with pytest.raises(TypeError, match="budget"):
        resume(run, budget={"euros": 3})


# -- the stream of a resumed run -------------------------------------------------------------------------------


def add_event(run_id: str, type: str, step: str | None = None) -> str:
    event = ev.envelope(type, run_id, step=step, attempt=None, epoch=1, data={})
    return streams.get_client().xadd(streams.stream_key(run_id), {"d": dumps(event)})


def test_reopen_stream_cancels_the_expiry(alice, make_run):
    run_id = str(make_run(alice, status="failed").pk)
    add_event(run_id, "run.failed")
    client = streams.get_client()
    client.hset(streams.meta_key(run_id), mapping={"epoch": 1, "seq": 5, "wfc": 2})
    streams.expire_run(run_id, 600)
    reopen_stream(run_id)
    assert client.ttl(streams.stream_key(run_id)) == -1 and client.ttl(streams.meta_key(run_id)) == -1
    assert client.hgetall(streams.meta_key(run_id)) == {"epoch": "1", "seq": "5", "wfc": "2"}


def test_reopen_stream_rebuilds_an_expired_stream_from_the_archive(alice, make_run):
    from agentflow.archive import archive_events

    run_id = str(make_run(alice, status="failed").pk)
    ids = [
        add_event(run_id, "run.started"),
        add_event(run_id, "status"),  # workflow-level content: counted
        add_event(run_id, "step.started", "a#0"),
        add_event(run_id, "status", "a#0"),  # a step's: not counted
        add_event(run_id, "data"),
        add_event(run_id, "run.failed"),
    ]
    archive_events(run_id)
    before = streams.read_events(run_id)
    client = streams.get_client()
    client.delete(streams.stream_key(run_id), streams.meta_key(run_id))  # expired
    reopen_stream(run_id)
    assert streams.read_events(run_id) == before
    assert [e["id"] for e in before] == ids
    assert client.hgetall(streams.meta_key(run_id)) == {"seq": "0", "wfc": "2"}
    assert RunEvent.objects.filter(run_id=run_id).count() == 6


def test_reopen_stream_of_a_run_without_events_does_nothing(alice, make_run):
    run_id = str(make_run(alice, status="cancelled").pk)
    reopen_stream(run_id)
    assert not streams.get_client().exists(streams.stream_key(run_id), streams.meta_key(run_id))


def test_agentflow_resume_is_the_function_even_once_the_api_modules_are_imported() -> None:
    # The REST views import the module that holds resume(); a submodule of that name would replace the lazy
    # function on the package, and agentflow.resume(run) would raise "'module' object is not callable".
    import agentflow
    import agentflow.views
    from agentflow import resuming

    assert agentflow.resume is resuming.resume
