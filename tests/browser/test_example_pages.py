"""The example project's run page in Chromium, while the run streams: started from the form (after a session
login), reloaded mid-run, its tab closed and reopened, its network cut while a step is retried, its server
killed and started again, its server gone silent (SIGSTOP). Each time the page reaches the terminal state
and shows exactly the run's text (no part twice, none missing) and the step tree the database has. A run
that asks for the outline's approval shows the question as a form generated from its JSON Schema, and goes
on on the same page once it is answered there."""

from __future__ import annotations

from typing import Any

import pytest

from agentflow.models import WorkflowRun
from tests.browser.conftest import screenshot
from tests.browser.pages import (
    EXAMPLE_PAGE,
    checkpoints,
    finished_run,
    start_from_form,
    streamed_output,
    wait_for_event,
    wait_for_progress,
)

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

COMPLETED = "document.querySelector('#run').dataset.status === 'completed'"
SECTION_STREAMING = """() => document.querySelector('#run').dataset.status === 'running'
  && [...document.querySelectorAll('#sections .section .text')].some((p) => p.innerText.length > 0)"""


def assert_shows_the_run(page: Any, run_id: str) -> dict[str, Any]:
    """The page reached the terminal state and shows what the run produced, exactly."""
    page.wait_for_function(COMPLETED)
    run = finished_run(run_id)
    shown = page.evaluate(EXAMPLE_PAGE)
    assert shown["status"] == "completed" and shown["progress"] == "100%"
    sections = run.output["sections"]
    assert shown["sections"] == {f"section {n}": s["text"] for n, s in enumerate(sections, start=1)}
    assert shown["headings"] == [s["heading"] for s in sections]
    assert shown["output"].strip() == streamed_output(run_id).strip()
    assert shown["steps"] == {step: list(value) for step, value in checkpoints(run_id).items()}
    assert shown["cost"] == f"${run.usage['cost_usd']:.6f}"
    return shown


def test_a_run_started_from_the_form_streams_its_sections_into_the_page(
    context: Any, live: Any, demo_user: Any
) -> None:
    page = context.new_page()
    # Not logged in: the form is behind the session login (the demo user), then back to the form.
    page.goto(f"{live.http}/workflows/blog-post/")
    assert "/accounts/login/" in page.url
    page.fill("#id_username", "admin")
    page.fill("#id_password", "admin")
    page.click("button[type=submit]")
    page.wait_for_url(f"{live.http}/workflows/blog-post/")

    run_id = start_from_form(page, live, "durable otters")
    assert WorkflowRun.objects.get(pk=run_id).owner == demo_user
    # Tokens appear while the run goes on, several sections at once.
    page.wait_for_function(SECTION_STREAMING)
    partial = page.evaluate(EXAMPLE_PAGE)
    screenshot(page, "example-run-streaming")
    shown = assert_shows_the_run(page, run_id)
    for label, text in partial["sections"].items():
        assert shown["sections"][label].startswith(text)
    screenshot(page, "example-run-page")


def test_a_reload_mid_run_rebuilds_the_page_and_goes_on(logged_in: Any, live: Any) -> None:
    page = logged_in.new_page()
    run_id = start_from_form(page, live, "reloading badgers")
    page.wait_for_function(SECTION_STREAMING)
    page.reload()
    page.wait_for_function(SECTION_STREAMING)  # rebuilt mid-run from the replay, then live
    assert_shows_the_run(page, run_id)


def test_a_closed_tab_reopened_shows_the_whole_run(logged_in: Any, live: Any) -> None:
    page = logged_in.new_page()
    run_id = start_from_form(page, live, "closing stoats")
    url = page.url
    page.wait_for_function("document.querySelector('#output').innerText.length > 0")
    page.close()
    wait_for_progress(run_id, 10, "the run to go on while no page is open")
    again = logged_in.new_page()
    again.goto(url)
    assert_shows_the_run(again, run_id)


def test_a_network_cut_while_a_step_is_retried(logged_in: Any, live: Any, fake_llm: Any) -> None:
    fake_llm.fail({"drop_after_chunks": 6}, model="fake-model")  # the outline's first stream is cut
    page = logged_in.new_page()
    run_id = start_from_form(page, live, "offline weasels")
    wait_for_event(run_id, lambda e: e["type"] == "step.retrying", "the outline's retry")
    logged_in.set_offline(True)
    # While the page is offline the run retries the outline and goes on.
    wait_for_event(run_id, lambda e: e["type"] == "step.started" and e["attempt"] == 2, "the second attempt")
    wait_for_progress(run_id, 5, "the run to go on while the page is offline")
    logged_in.set_offline(False)
    shown = assert_shows_the_run(page, run_id)
    assert shown["connections"] >= 2  # it reconnected (after the last id it had)
    assert shown["steps"]["outline#0"] == ["completed", 2]


def test_the_server_killed_and_started_again_mid_run(logged_in: Any, live: Any) -> None:
    page = logged_in.new_page()
    run_id = start_from_form(page, live, "restarted ferrets")
    page.wait_for_function("document.querySelector('#output').innerText.length > 0")
    live.kill()
    wait_for_progress(run_id, 5, "the run to go on without the web server")
    live.restart()
    shown = assert_shows_the_run(page, run_id)
    assert shown["connections"] >= 2


def test_a_server_gone_silent_is_noticed_by_its_keepalives_and_followed_again(
    logged_in: Any, live: Any
) -> None:
    page = logged_in.new_page()
    run_id = start_from_form(page, live, "silent hedgehogs")
    page.wait_for_function("document.querySelector('#output').innerText.length > 0")
    connections = "Number(document.querySelector('#run').dataset.connections)"
    assert page.evaluate(connections) == 1
    live.pause()  # its connections stay open and silent: no close, no data, no keep-alive
    try:
        # 2.5 keep-alive intervals (1 s here) later the page gives the connection up and connects again,
        # long before TCP would say anything.
        page.wait_for_function(f"{connections} >= 2", timeout=15_000)
    finally:
        live.resume()
    assert_shows_the_run(page, run_id)


QUESTION = "#question-outline"


def wait_for_the_question(page: Any) -> None:
    """The outline-approval form, generated from the request's JSON Schema, on the run page."""
    page.wait_for_selector(f"{QUESTION} [name=answer-outline-approved]")
    assert page.inner_text("#status") == "waiting"
    assert page.inner_text(f"{QUESTION} .prompt").startswith("Approve this outline? ")


def answer_of(run_id: str) -> Any:
    """The outline's answer as the run has it (None while it is unanswered), and who gave it."""
    from agentflow.inputs import get_input

    request = get_input(WorkflowRun.objects.get(pk=run_id), "outline")
    return request.value, request.answered_by


def test_the_outline_is_approved_on_the_run_page_and_the_run_goes_on_there(logged_in: Any, live: Any) -> None:
    page = logged_in.new_page()
    run_id = start_from_form(page, live, "approved moles", review=True)
    wait_for_the_question(page)
    screenshot(page, "example-run-question")
    page.check(f"{QUESTION} [name=answer-outline-approved]")
    page.click(f"{QUESTION} button[type=submit]")
    assert_shows_the_run(page, run_id)  # live, on the same page
    assert not page.is_visible("#questions")
    # Answered by the session's user.
    assert answer_of(run_id) == ({"approved": True, "headings": None, "notes": ""}, "admin")


def test_a_bad_answer_shows_its_field_error_and_edited_headings_head_the_post(
    logged_in: Any, live: Any
) -> None:
    page = logged_in.new_page()
    run_id = start_from_form(page, live, "edited voles", sections=2, review=True)
    wait_for_the_question(page)
    page.check(f"{QUESTION} [name=answer-outline-approved]")
    page.fill(f"{QUESTION} [name=answer-outline-headings]", "\n".join(f"Part {n}" for n in range(13)))
    page.click(f"{QUESTION} button[type=submit]")
    # The API refused it (at most 12 headings): the error is under its field, and the run keeps waiting.
    error = page.wait_for_selector(f"{QUESTION} [data-errors=headings]:not([hidden])")
    assert "at most 12" in error.inner_text()
    assert answer_of(run_id) == (None, None) and WorkflowRun.objects.get(pk=run_id).status == "waiting"
    assert page.inner_text("#status") == "waiting"
    screenshot(page, "example-run-question-error")

    page.fill(f"{QUESTION} [name=answer-outline-headings]", "Why voles matter\n  \nWhere voles live\n")
    page.click(f"{QUESTION} button[type=submit]")
    shown = assert_shows_the_run(page, run_id)
    assert shown["headings"] == ["Why voles matter", "Where voles live"]
    headings = ["Why voles matter", "Where voles live"]
    assert answer_of(run_id) == ({"approved": True, "headings": headings, "notes": ""}, "admin")
