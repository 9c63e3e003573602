"""The admin's run page and run list in Chromium, live: the page follows a run through a reload, a cut network
while a step is retried, a closed and reopened tab and a killed server, and ends showing exactly the run's
text, the step tree of its checkpoints (each failed attempt's error on its row) and the run list's step
count and last event id. The run list refreshes a running row until it has ended. A run that asks for input
while its page is open gets the answer form there, live, and is answered from it."""

from __future__ import annotations

from typing import Any

import pytest
from django.urls import reverse

import agentflow
from agentflow import streams
from agentflow.models import StepRun, WorkflowRun
from tests.browser.conftest import screenshot
from tests.browser.pages import (
    ADMIN_PAGE,
    checkpoints,
    events_of,
    finished_run,
    start_from_form,
    streamed_output,
    wait_for_event,
    wait_for_progress,
)

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

# `rendered` is set by the page's script (the server renders `data-status` from the database).
COMPLETED = "document.querySelector('#agentflow-live-status').dataset.rendered === 'completed'"
STREAMING = "document.querySelector('#agentflow-output').innerText.length > 0"


def start_story(owner: Any, **input: Any) -> str:
    story = {"topic": "admin otters", "sections": 3, "section_model": "fake-section", **input}
    return str(agentflow.start("story", story, owner=owner).pk)


def page_url(live: Any, run_id: str) -> str:
    return live.http + reverse("admin:agentflow_workflowrun_change", args=[run_id])


def assert_shows_the_run(page: Any, run_id: str) -> dict[str, Any]:
    page.wait_for_function(COMPLETED)
    run = finished_run(run_id)
    shown = page.evaluate(ADMIN_PAGE)
    assert shown["status"] == "Completed" and shown["live_status"] == "Completed"
    assert shown["output"] == run.output["outline"]
    assert shown["texts"] == run.output["sections"]
    steps = checkpoints(run_id)
    assert {step: (status, attempts) for step, (status, attempts, _) in shown["steps"].items()} == steps
    # The same count and last event id as the run list shows.
    assert shown["steps_field"] == str(len(steps))
    assert shown["last_event"] == run.last_event_id == shown["events"][-1]
    # Nothing left to cancel, nothing to resume, no error.
    assert not page.is_visible("#agentflow-cancel") and not page.is_visible("#agentflow-resume")
    assert not page.is_visible("#agentflow-live-error")
    return shown


def test_the_run_page_follows_a_run_through_a_reload_and_a_cut_network(
    logged_in: Any, live: Any, demo_user: Any, fake_llm: Any
) -> None:
    fake_llm.fail({"drop_after_chunks": 8}, model="fake-section")  # one section's first stream is cut
    run_id = start_story(demo_user)
    page = logged_in.new_page()
    page.goto(page_url(live, run_id))
    page.wait_for_function(STREAMING)
    # A running step is on the page before any checkpoint has it.
    page.wait_for_selector("#agentflow-steps tr.agentflow-step[data-status=running]")
    page.reload()
    retry = wait_for_event(run_id, lambda e: e["type"] == "step.retrying", "a section's retry")
    logged_in.set_offline(True)
    wait_for_event(run_id, lambda e: e["type"] == "step.started" and e["attempt"] == 2, "the second attempt")
    wait_for_progress(run_id, 5, "the run to go on while the page is offline")
    logged_in.set_offline(False)
    shown = assert_shows_the_run(page, run_id)
    # The retried call's row says why its first attempt failed, and when it was tried again.
    error = shown["steps"][retry["step"]][2]
    assert error.startswith("attempt 1: ") and "retried after" in error
    assert "calls" in shown["usage"] and "$0.0000" in shown["usage"]
    screenshot(page, "admin-run-page")
    screenshot(page, "admin-run-page-live", selector="#agentflow-live")
    screenshot(page, "admin-run-page-steps", selector="#agentflow-steps")


def test_the_run_page_reopened_after_the_server_was_killed(logged_in: Any, live: Any, demo_user: Any) -> None:
    run_id = start_story(demo_user, topic="admin ferrets")
    page = logged_in.new_page()
    page.goto(page_url(live, run_id))
    page.wait_for_function(STREAMING)
    page.close()
    live.kill()
    wait_for_progress(run_id, 5, "the run to go on without the web server")
    live.restart()
    again = logged_in.new_page()
    again.goto(page_url(live, run_id))
    assert_shows_the_run(again, run_id)


def test_the_run_list_refreshes_a_running_row(logged_in: Any, live: Any, demo_user: Any) -> None:
    run_id = start_story(demo_user, topic="listed stoats", sections=2)
    wait_for_event(run_id, lambda e: e["type"] == "run.started", "the run to start")
    page = logged_in.new_page()
    page.goto(live.http + reverse("admin:agentflow_workflowrun_changelist"))
    row = f"#result_list tr:has(input.action-select[value='{run_id}'])"
    assert page.inner_text(f"{row} .field-status_display") in ("Queued", "Running")
    page.wait_for_function(
        f"document.querySelector(\"{row} .field-status_display\").innerText === 'Completed'"
    )
    run = finished_run(run_id)
    page.wait_for_function(
        f"document.querySelector(\"{row} .field-last_event\").innerText === '{run.last_event_id}'"
    )
    assert page.inner_text(f"{row} .field-steps") == str(len(checkpoints(run_id)))
    screenshot(page, "admin-run-list")


def test_a_question_asked_while_the_page_is_open_is_answered_from_its_live_form(
    logged_in: Any, live: Any, demo_user: Any
) -> None:
    page = logged_in.new_page()
    run_id = start_from_form(page, live, "admin moles", sections=2, review=True)  # the example's form
    page.goto(page_url(live, run_id))
    rendered = page.evaluate("JSON.parse(document.getElementById('agentflow-page-config').textContent)")
    block = "#agentflow-input .agentflow-input-request[data-key=outline]"
    page.wait_for_selector(f"{block} textarea[name=answer]")
    # Asked after the server rendered the page (its latest event then): the form came with the events.
    requested = next(e for e in events_of(run_id) if e["type"] == "input.requested")
    assert streams.split_id(requested["id"]) > streams.split_id(rendered["lastEventId"])
    assert "Approve this outline? " in page.inner_text(block)
    page.wait_for_selector(
        "#agentflow-steps tr.agentflow-wait[data-step='input:outline'][data-status=waiting]"
    )

    page.fill(f"{block} textarea", '{"approved": "perhaps"}')
    page.click(f"{block} [type=submit]")
    errors = page.wait_for_selector(f"{block} .errorlist")
    assert errors.inner_text().startswith("approved: ") and "The run keeps waiting." in errors.inner_text()
    assert WorkflowRun.objects.get(pk=run_id).status == "waiting"
    assert "answer" not in StepRun.objects.get(run_id=run_id, step_id="input:outline").output
    screenshot(page, "admin-run-question-error", selector="#agentflow-input")

    page.fill(f"{block} textarea", '{"approved": true, "notes": "from the admin"}')
    page.click(f"{block} [type=submit]")
    page.wait_for_function(COMPLETED)
    run = finished_run(run_id)
    shown = page.evaluate(ADMIN_PAGE)
    assert shown["texts"] == {
        f"section {n}": s["text"] for n, s in enumerate(run.output["sections"], start=1)
    }
    assert shown["output"].strip() == streamed_output(run_id).strip()
    # The live step table has the wait's row, as the checkpoints do; the same count as the run list.
    steps = {s.step_id: (s.status, s.attempts) for s in StepRun.objects.filter(run_id=run_id)}
    assert {step: (status, attempts) for step, (status, attempts, _) in shown["steps"].items()} == steps
    assert steps["input:outline"] == ("completed", 0) and shown["steps_field"] == str(run.step_count)
    assert not page.is_visible("#agentflow-input")
    answered = page.inner_text("#agentflow-inputs tr[data-key=outline]")
    assert "answered" in answered and "from the admin" in answered and "admin" in answered
