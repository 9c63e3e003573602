"""The admin's side of waits: answering a run's request for input from its page, the "waiting for" filter,
parent and child links, and schedules with their next run."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse

from agentflow.core.waits import AnswerSchema
from agentflow.models import Schedule, StepRun, WorkflowRun
from tests.testapp.workflows_waits import Decision

pytestmark = pytest.mark.django_db


def change_url(run: WorkflowRun) -> str:
    return reverse("admin:agentflow_workflowrun_change", args=[run.pk])


def answer_url(run: WorkflowRun, key: str) -> str:
    return reverse("admin:agentflow_workflowrun_input", args=[run.pk, key])


@pytest.fixture
def waiting() -> WorkflowRun:
    run = WorkflowRun.objects.create(workflow="asks-approval", status="waiting", wait_reason="input", epoch=1)
    made = AnswerSchema.of(Decision)
    StepRun.objects.create(
        run=run, step_id="input:approve", component="input", status="waiting", attempts=0,
        input={"key": "approve", "prompt": "Publish <b>it</b>?", "schema": made.json_schema, "schema_ref": made.ref},
        output={"requested_at": time.time(), "timeout_at": None},
    )  # fmt: skip
    return run


def test_the_run_page_shows_pending_input_with_a_form_and_answers_it(
    admin_client: Any, waiting: WorkflowRun
) -> None:
    html = admin_client.get(change_url(waiting)).content.decode()
    assert 'id="agentflow-input"' in html and "Publish &lt;b&gt;it&lt;/b&gt;?" in html
    assert f'action="{answer_url(waiting, "approve")}"' in html

    bad = admin_client.post(
        answer_url(waiting, "approve"), {"answer": '{"approved": "perhaps"}'}, follow=True
    )
    assert "The run keeps waiting" in bad.content.decode() and "approved" in bad.content.decode()
    assert "answer" not in StepRun.objects.get(run=waiting, step_id="input:approve").output
    not_json = admin_client.post(answer_url(waiting, "approve"), {"answer": "{nope"}, follow=True)
    assert "is not JSON" in not_json.content.decode()

    ok = admin_client.post(answer_url(waiting, "approve"), {"answer": json.dumps({"approved": True})})
    assert ok.status_code == 302 and ok["Location"] == change_url(waiting)
    step = StepRun.objects.get(run=waiting, step_id="input:approve")
    assert step.output["answer"] == {"approved": True, "notes": ""} and step.output["answered_by"] == "admin"
    html = admin_client.get(change_url(waiting)).content.decode()
    # The pending requests' fieldset is hidden (the page's script shows it again if the run asks again).
    assert '<fieldset class="module" id="agentflow-input" hidden>' in html
    assert '<fieldset class="module" id="agentflow-inputs">' in html


def test_the_run_pages_script_answers_with_json_and_gets_the_apis_errors(
    admin_client: Any, waiting: WorkflowRun
) -> None:
    """What admin_run.js posts (through agentflow.js's answerInput): JSON in, JSON out, no redirect."""

    def post(body: str, key: str = "approve", run: Any = waiting) -> Any:
        return admin_client.post(answer_url(run, key), body, content_type="application/json")

    bad = post('{"approved": "perhaps"}')
    assert bad.status_code == 400 and bad.json()["code"] == "invalid_answer"
    assert [d["field"] for d in bad.json()["details"]] == ["approved"]
    assert post("{nope").json()["code"] == "malformed_json" and post("{nope").status_code == 400
    assert post("true", key="other").status_code == 404 and post("true", key="other").json()["code"] == (
        "input_not_found"
    )
    assert "answer" not in StepRun.objects.get(run=waiting, step_id="input:approve").output

    ok = post('{"approved": true, "notes": "fine"}')
    assert ok.status_code == 200
    assert ok.json()["status"] == "answered" and ok.json()["value"] == {"approved": True, "notes": "fine"}
    again = post('{"approved": false}')
    assert again.status_code == 409 and again.json()["code"] == "input_already_answered"
    assert StepRun.objects.get(run=waiting, step_id="input:approve").output["answer"]["approved"] is True


def test_answering_needs_the_change_permission(client: Any, waiting: WorkflowRun) -> None:
    user = get_user_model().objects.create_user("viewer", is_staff=True)
    from django.contrib.auth.models import Permission

    user.user_permissions.add(Permission.objects.get(codename="view_workflowrun"))
    client.force_login(user)
    assert "You may not answer" in client.get(change_url(waiting)).content.decode()
    assert client.post(answer_url(waiting, "approve"), {"answer": "true"}).status_code == 403
    refused = client.post(answer_url(waiting, "approve"), "true", content_type="application/json")
    assert refused.status_code == 403 and refused.json()["code"] == "permission_denied"
    assert "answer" not in StepRun.objects.get(run=waiting, step_id="input:approve").output


def test_the_run_list_filters_runs_waiting_for_input(admin_client: Any, waiting: WorkflowRun) -> None:
    sleeping = WorkflowRun.objects.create(workflow="x", status="waiting", wait_reason="sleep")
    html = admin_client.get(
        reverse("admin:agentflow_workflowrun_changelist") + "?waiting_for=input"
    ).content.decode()
    assert str(waiting.pk)[:8] in html and str(sleeping.pk)[:8] not in html


def test_parent_and_children_link_to_each_other(admin_client: Any) -> None:
    parent = WorkflowRun.objects.create(workflow="parent", status="waiting", wait_reason="child")
    child = WorkflowRun.objects.create(
        workflow="slow-child", parent=parent, parent_step="workflow:slow-child#0"
    )
    assert change_url(child) in admin_client.get(change_url(parent)).content.decode()
    assert change_url(parent) in admin_client.get(change_url(child)).content.decode()


def test_schedules_show_their_next_run_and_admin_made_ones_are_validated(admin_client: Any) -> None:
    add = reverse("admin:agentflow_schedule_add")
    form = {"name": "hourly", "workflow": "api-echo", "input": '{"text": "x"}', "cron": "0 * * * *",
            "timezone": "UTC", "catch_up": "latest", "enabled": "on"}  # fmt: skip
    bad = admin_client.post(add, {**form, "cron": "0 * * *"})
    assert bad.status_code == 200 and "five fields" in bad.content.decode()
    bad = admin_client.post(add, {**form, "input": '{"nope": 1}'})
    assert bad.status_code == 200 and "invalid input" in bad.content.decode()
    assert admin_client.post(add, form).status_code == 302
    schedule = Schedule.objects.get(name="hourly")
    assert schedule.source == "admin" and schedule.next_run_at is not None
    assert schedule.next_run_at.minute == 0 and schedule.next_run_at > datetime.now(UTC)
    html = admin_client.get(reverse("admin:agentflow_schedule_changelist")).content.decode()
    assert schedule.next_run_at.strftime("%Y-%m-%d %H:%M:%S") in html
