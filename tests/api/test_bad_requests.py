"""Bad requests found from outside (issue 10): each is a stable 4xx with a code, never a 500, and starts nothing.

Bodies: JSON that the database cannot store, duplicate keys, bodies without a Content-Length (WSGI here; the
ASGI server's side is tests/contract/test_live_requests.py). Parameters: hand-made cursors, empty or exotic
numbers, NUL characters, too many of them, an empty ``format``.
"""

from __future__ import annotations

import base64
import io

import pytest
from django.test import override_settings

from agentflow.conf import agentflow_settings
from agentflow.models import WorkflowRun
from tests.api.conftest import run_url, start_url, url

pytestmark = pytest.mark.django_db


def post_raw(client, path, body: bytes | str, **extra):
    return client.generic("POST", path, body, content_type="application/json", **extra)


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.content
    body = response.json()
    assert body["code"] == code and body["message"], body
    return body


# -- JSON that agentflow does not take ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field", "kind"),
    [
        (rb'{"text": "a\u0000b"}', "text", "null_character"),
        (rb'{"text": "a", "labels": ["ok", "\u0000"]}', "labels.1", "null_character"),
        (rb'{"te\u0000xt": "a"}', "te\\u0000xt", "null_character"),
        (rb'{"text": "a\ud800b"}', "text", "lone_surrogate"),
        (rb'{"text": "\udc00"}', "text", "lone_surrogate"),
        (rb'{"a\ud800b": "x"}', "a\\ud800b", "lone_surrogate"),
        (rb'{"text": "a", "times": 1e309}', "times", "non_finite_number"),
        (rb'{"text": "a", "times": -1e400}', "times", "non_finite_number"),
        (rb'{"text": "a", "text": "b"}', "", "duplicate_key"),
        (b'{"text": "a", "labels": ' + b"[" * 300 + b"]" * 300 + b"}", "labels" + ".0" * 99, "too_deep"),
    ],
)
def test_json_the_database_cannot_store_is_400_unsupported_json(api, body, field, kind):
    # Each was a 500 (PostgreSQL refused it), or a 202 with the number stored as null, or last key wins.
    response = post_raw(api, start_url("api-echo"), body)
    error = assert_error(response, 400, "unsupported_json")
    assert [(d["field"], d["code"]) for d in error["details"]] == [(field, kind)]
    assert error["message"].startswith("The request body holds JSON that agentflow cannot accept")
    assert not WorkflowRun.objects.exists()


def test_a_lone_surrogate_in_a_key_is_rendered_escaped(api):
    # The error names the key; rendering it raw would be a UnicodeEncodeError (a 500) of its own.
    response = post_raw(api, start_url("api-echo"), rb'{"\ud800": 1}')
    assert_error(response, 400, "unsupported_json")
    assert response.json()["details"][0]["field"] == "\\ud800"


@pytest.mark.parametrize(
    "body",
    [
        rb'{"budget": {"usd": 1e309}}',
        rb'{"budget": {"tokens": 1, "tokens": 2}}',
        rb'{"budget": {"usd": 1, "n\u0000": 1}}',
    ],
)
def test_a_resume_body_is_checked_the_same_way(api, alice, make_run, body):
    # {"budget": {"usd": 1e309}} was a 500: an infinite budget cannot be stored as JSON.
    run = make_run(alice, status="failed")
    assert_error(post_raw(api, url("run-resume", run.pk), body), 400, "unsupported_json")
    run.refresh_from_db()
    assert run.status == "failed" and run.budget is None


@pytest.mark.parametrize(
    "budget",
    [{"usd": 0}, {"tokens": 0}, {"tokens": 2**63}, {"tokens": 1.5}, {}, {"usd": None, "tokens": None}],
)
def test_a_budget_out_of_its_bounds_is_400(api, alice, make_run, budget):
    run = make_run(alice, status="failed")
    response = api.post(url("run-resume", run.pk), {"budget": budget}, format="json")
    assert_error(response, 400, "invalid_input")


def test_the_largest_budget_is_taken(api, alice, make_run):
    run = make_run(alice, status="failed")
    response = api.post(url("run-resume", run.pk), {"budget": {"tokens": 2**63 - 1}}, format="json")
    assert response.status_code == 202, response.content
    run.refresh_from_db()
    assert run.budget == {"tokens": 2**63 - 1}


def test_a_null_resume_body_is_400(api, alice, make_run):
    run = make_run(alice, status="failed")
    assert_error(post_raw(api, url("run-resume", run.pk), "null"), 400, "invalid_input")


# -- strict input ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("times", ["5", True, 2.0])
def test_the_input_schema_says_integer_and_means_it(api, times):
    # "5" and true were accepted as 5 and 1.
    response = api.post(start_url("api-echo"), {"text": "a", "times": times}, format="json")
    error = assert_error(response, 400, "invalid_input")
    assert error["details"] == [
        {"field": "times", "code": "int_type", "message": "Input should be a valid integer"}
    ]


# -- bodies without a Content-Length ----------------------------------------------------------------------------


def chunked(body: bytes, **environ):
    """The environ of a chunked request under a WSGI server that decodes it (gunicorn sets
    wsgi.input_terminated): no CONTENT_LENGTH, the body in wsgi.input."""
    return {
        "CONTENT_LENGTH": "",
        "HTTP_TRANSFER_ENCODING": "chunked",
        "wsgi.input": io.BytesIO(body),
        **environ,
    }


def test_a_chunked_body_under_wsgi_is_read(api):
    # DRF took a body without a Content-Length for no body: the run started with the default input.
    extra = chunked(b'{"text": "chunky", "times": 2}', **{"wsgi.input_terminated": True})
    response = post_raw(api, start_url("api-echo"), b"", **extra)
    assert response.status_code == 202, response.content
    assert WorkflowRun.objects.get().input == {"text": "chunky", "times": 2, "labels": None}


@override_settings(AGENTFLOW={**agentflow_settings.user_settings, "MAX_INPUT_BYTES": 64})
def test_a_chunked_body_over_the_limit_is_413(api):
    extra = chunked(b'{"text": "' + b"x" * 1000 + b'"}', **{"wsgi.input_terminated": True})
    response = post_raw(api, start_url("api-echo"), b"", **extra)
    body = assert_error(response, 413, "payload_too_large")
    assert body["details"] == {"max_bytes": 64}
    assert not WorkflowRun.objects.exists()


def test_a_chunked_body_a_wsgi_server_cannot_end_is_411(api):
    # Without wsgi.input_terminated, reading wsgi.input past its end would block: ask for a length.
    response = post_raw(api, start_url("api-echo"), b"", **chunked(b'{"text": "x"}'))
    assert_error(response, 411, "length_required")
    assert not WorkflowRun.objects.exists()


def test_the_resume_body_may_be_chunked_too(api, alice, make_run):
    run = make_run(alice, status="failed")
    extra = chunked(b'{"budget": {"usd": 3}}', **{"wsgi.input_terminated": True})
    assert post_raw(api, url("run-resume", run.pk), b"", **extra).status_code == 202
    run.refresh_from_db()
    assert run.budget == {"usd": 3}


# -- parameters ---------------------------------------------------------------------------------------------------


def cursor(query: str) -> str:
    return base64.b64encode(query.encode()).decode()


@pytest.mark.parametrize(
    "value",
    [
        "cD1nYXJiYWdl",  # p=garbage: a 500 (the position is compared with created_at)
        cursor("p=2024-13-45 10:00:00+00:00"),  # well formed, no such date
        cursor("p=2024-05-01 10:00:00"),  # naive
        cursor("p=2024-05-01 10:00:00\x00+00:00"),
        cursor("o=-1"),
        cursor("r=x"),
        "%%%",
        "\x00",
    ],
)
def test_a_hand_made_cursor_is_400(api, value):
    body = assert_error(api.get(url("run-list"), {"cursor": value}), 400, "invalid_parameter")
    assert body["details"] == [
        {"field": "cursor", "code": "cursor", "message": "is not a cursor this API gave"}
    ]


def test_a_cursor_the_api_gave_still_works(api, alice, make_run):
    for _ in range(3):
        make_run(alice)
    with override_settings(AGENTFLOW={**agentflow_settings.user_settings, "RUNS_PAGE_SIZE": 2}):
        first = api.get(url("run-list")).json()
        second = api.get(first["next"])
    assert second.status_code == 200 and len(second.json()["results"]) == 1


def test_a_nul_in_the_workflow_filter_matches_nothing(api, alice, make_run):
    make_run(alice)
    response = api.get(url("run-list"), {"workflow": "api-echo\x00"})
    assert response.status_code == 200 and response.json()["results"] == []


def test_too_many_query_parameters_is_a_json_400(api):
    # Django's DATA_UPLOAD_MAX_NUMBER_FIELDS answered an HTML page.
    response = api.get(url("run-list") + "?" + "&".join(f"p{i}=1" for i in range(1001)))
    body = assert_error(response, 400, "invalid_parameter")
    assert body["details"][0]["code"] == "too_many"


@pytest.mark.parametrize("value", ["", "xml", "JSON"])
def test_an_unknown_or_empty_format_is_400(api, value):
    # An empty ?format= was ignored (200), an unknown one a bare 404.
    body = assert_error(api.get(url("run-list"), {"format": value}), 400, "invalid_parameter")
    assert body["details"][0]["field"] == "format"


def test_a_known_format_still_works(api, alice, make_run):
    run = make_run(alice)
    assert api.get(url("run-list"), {"format": "json"}).status_code == 200
    # Negotiated as an event stream: which the test client, a WSGI server, cannot serve (the ASGI side is
    # tests/contract/test_live_requests.py).
    response = api.get(url("run-events", run.pk), {"format": "sse"})
    assert response.status_code == 501 and response["Content-Type"] == "text/event-stream"


@pytest.mark.parametrize("value", ["", " 5", "1_0", "\u0665", "0x10", "1e400", "+5", "nan"])
def test_a_timeout_that_is_not_a_plain_number_is_400(api, value):
    response = api.post(f"{run_url('api-echo')}?timeout={value}", {"text": "a"}, format="json")
    assert_error(response, 400, "invalid_parameter")
    assert not WorkflowRun.objects.exists()


def test_an_empty_limit_is_400(api, alice, make_run):
    run = make_run(alice)
    assert_error(api.get(url("run-events", run.pk), {"limit": ""}), 400, "invalid_parameter")
    # Also for an event stream, which has no pages.
    assert api.get(url("run-events", run.pk), {"limit": "0", "format": "sse"}).status_code == 400


@pytest.mark.parametrize("value", ["yes", "", "2", "true"])
def test_a_keepalive_other_than_1_or_0_is_400(api, alice, make_run, value):
    run = make_run(alice)
    body = assert_error(api.get(url("run-events", run.pk), {"keepalive": value}), 400, "invalid_parameter")
    assert body["details"][0]["field"] == "keepalive"
    assert api.get(url("run-events", run.pk), {"keepalive": "1"}).status_code == 200  # ignored for JSON pages


def test_a_malformed_last_event_id_is_400_for_json_too(api, alice, make_run):
    run = make_run(alice)
    response = api.get(url("run-events", run.pk), HTTP_LAST_EVENT_ID="nope")
    assert_error(response, 400, "invalid_event_id")


@pytest.mark.parametrize("key", ["caf\u00e9", "a\tb", " lead", "trail ", "k" * 256])
def test_an_idempotency_key_must_be_printable_ascii(api, key):
    response = api.post(start_url("api-echo"), {"text": "a"}, format="json", HTTP_IDEMPOTENCY_KEY=key)
    assert_error(response, 400, "invalid_idempotency_key")
    assert not WorkflowRun.objects.exists()


def test_the_longest_idempotency_key_with_spaces_inside(api):
    key = "a b" + "k" * 252
    response = api.post(start_url("api-echo"), {"text": "a"}, format="json", HTTP_IDEMPOTENCY_KEY=key)
    assert response.status_code == 202
    assert WorkflowRun.objects.get().idempotency_key == key
