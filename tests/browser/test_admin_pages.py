"""The admin's run page and run list in Chromium, live: the page follows a run through a reload, a cut network
while a step is retried, a closed and reopened tab and a killed server, and ends showing exactly the run's
text, the step tree of its checkpoints (each failed attempt's error on its row) and the run list's step
count and last event id. The run list refreshes a running row until it has ended."""

from __future__ import annotations

from typing import Any

import pytest
from django.urls import reverse

import agentflow
from tests.browser.conftest import screenshot
from tests.browser.pages import ADMIN_PAGE, checkpoints, finished_run, wait_for_event, wait_for_progress

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
