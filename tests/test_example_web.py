"""The example project's pages, server side: the form generated from a workflow's input JSON Schema, its errors,
the session login and CSRF, and who may see which run. (tests/browser/ drives the same pages in Chromium.)"""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client, modify_settings, override_settings

from agentflow.models import WorkflowRun

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.usefixtures("_web"),
]


@pytest.fixture
def _web(settings: Any) -> Any:
    from celery import _state

    # Importing example_project creates its Celery app, which would become this process's current app for
    # the tests that follow (tests/test_setup_checks.py checks which one the project has).
    current = _state._tls.current_app
    try:
        with (
            override_settings(ROOT_URLCONF="tests.browser.urls", LOGIN_URL="web:login"),
            modify_settings(INSTALLED_APPS={"prepend": "example_project.web"}),
        ):
            yield
    finally:
        _state._set_current_app(current)


def schema_form(schema: dict[str, Any]) -> Any:
    from example_project.web.forms import schema_form as make

    return make(schema)


@pytest.fixture
def user() -> Any:
    return get_user_model().objects.create_user("alice", password="pw")


def test_the_form_has_a_field_per_property_with_its_type_default_and_requirement() -> None:
    schema = {
        "type": "object",
        "required": ["topic"],
        "properties": {
            "topic": {"type": "string", "title": "Topic", "maxLength": 50},
            "sections": {"type": "integer", "default": 3, "minimum": 1},
            "ratio": {"type": "number"},
            "draft": {"type": "boolean", "default": False},
            "mode": {"enum": ["fast", "slow"], "default": "fast"},
            "limit": {"anyOf": [{"type": "integer"}, {"type": "null"}], "default": None},
            "tags": {"type": "array", "items": {"type": "string"}},
        },
    }
    form = schema_form(schema)({"topic": "otters", "sections": "4", "mode": '"slow"', "tags": "a\n\n b \n"})
    assert form.is_valid(), form.errors
    assert form.input() == {
        "topic": "otters",
        "sections": 4,
        "draft": False,
        "mode": "slow",
        "tags": ["a", "b"],
    }
    # Each widget says which JSON its value is, for the run page's script (answers to requests for input).
    kinds = {name: field.widget.attrs["data-kind"] for name, field in form.fields.items()}
    assert kinds == {
        "topic": "string", "sections": "integer", "ratio": "number", "draft": "boolean", "mode": "enum",
        "limit": "integer", "tags": "lines",
    }  # fmt: skip
    assert schema_form(schema)({"topic": "otters", "tags": ""}).is_valid()  # an optional list left empty
    assert form.fields["topic"].required and not form.fields["limit"].required
    assert form.fields["sections"].initial == 3

    bad = schema_form(schema)({"topic": "x" * 51, "sections": "0"})
    assert not bad.is_valid()
    assert set(bad.errors) == {"topic", "sections"}


def test_pages_need_a_login_and_the_form_starts_a_run_of_the_user(client: Client, user: Any) -> None:
    response = client.get("/workflows/story/")
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")

    client.force_login(user)
    page = client.get("/workflows/story/").content.decode()
    assert 'name="topic"' in page and 'name="sections"' in page and 'value="3"' in page
    response = client.post("/workflows/story/", {"topic": "otters", "sections": "2", "model": "fake-model"})
    run = WorkflowRun.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/runs/{run.pk}/"
    assert run.owner == user and run.input["topic"] == "otters" and run.input["sections"] == 2
    run_page = client.get(f"/runs/{run.pk}/").content.decode()
    assert 'id="run-config"' in run_page and "web/run.js" in run_page


def test_the_workflows_own_validation_errors_land_on_the_form(client: Client, user: Any) -> None:
    client.force_login(user)
    page = client.post("/workflows/story/", {"topic": "", "sections": "two"}).content.decode()
    assert "This field is required." in page and "Enter a whole number." in page
    assert not WorkflowRun.objects.exists()


def test_csrf_is_enforced(user: Any) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    assert client.post("/workflows/story/", {"topic": "otters"}).status_code == 403
    page = client.get("/workflows/story/")
    token = page.cookies["csrftoken"].value
    response = client.post("/workflows/story/", {"topic": "otters", "csrfmiddlewaretoken": token})
    assert response.status_code == 302


def test_other_users_runs_and_unknown_workflows_are_404(client: Client, user: Any) -> None:
    bob = get_user_model().objects.create_user("bob", password="pw")
    run = WorkflowRun.objects.create(workflow="story", owner=bob)
    client.force_login(user)
    assert client.get(f"/runs/{run.pk}/").status_code == 404
    assert client.post(f"/runs/{run.pk}/cancel/").status_code == 404
    assert client.get("/workflows/nope/").status_code == 404
    assert str(run.pk)[:8] not in client.get("/runs/").content.decode()


def test_the_form_for_an_answer_is_generated_from_the_requests_schema(client: Client, user: Any) -> None:
    """The fragment the run page inserts when the run asks (static/web/run.js posts what it describes)."""
    import time

    from agentflow.models import StepRun
    from example_project.blog.workflows import OutlineReview

    run = WorkflowRun.objects.create(workflow="blog-post", owner=user, status="waiting", wait_reason="input")
    schema = OutlineReview.model_json_schema()
    StepRun.objects.create(
        run=run, step_id="input:outline", component="input", status="waiting", attempts=0,
        input={"key": "outline", "prompt": "Approve <this>?", "schema": schema},
        output={"requested_at": time.time(), "timeout_at": None},
    )  # fmt: skip
    StepRun.objects.create(
        run=run, step_id="input:size", component="input", status="waiting", attempts=0,
        input={"key": "size", "prompt": "", "schema": {"type": "integer", "minimum": 1}},
        output={"requested_at": time.time(), "timeout_at": None},
    )  # fmt: skip
    client.force_login(user)
    html = client.get(f"/runs/{run.pk}/questions/outline/").content.decode()
    assert 'id="question-outline"' in html and "Approve &lt;this&gt;?" in html and "data-single" not in html
    assert 'name="answer-outline-approved"' in html and 'data-kind="boolean"' in html
    assert 'name="answer-outline-headings"' in html and 'data-kind="lines"' in html
    assert 'name="answer-outline-notes"' in html and 'data-kind="string"' in html
    single = client.get(f"/runs/{run.pk}/questions/size/").content.decode()
    assert (
        "data-single" in single and 'name="answer-size-answer"' in single and 'data-kind="integer"' in single
    )
    assert client.get(f"/runs/{run.pk}/questions/nope/").status_code == 404
    page = client.get(f"/runs/{run.pk}/").content.decode()
    assert f"/runs/{run.pk}/questions/__key__/" in page  # where the page's script asks for a form

    bob = get_user_model().objects.create_user("bob2", password="pw")
    client.force_login(bob)
    assert client.get(f"/runs/{run.pk}/questions/outline/").status_code == 404
