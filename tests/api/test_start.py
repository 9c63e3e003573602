"""POST workflows/{name}/runs/ and workflows/{name}/run/: the request's checks, before any worker is involved.

These tests run in a transaction that is rolled back, so the runs they start are recorded but never enqueued.
"""

from __future__ import annotations

import io
import json

import pytest
from django.test import override_settings

from agentflow.access import check_stream_token
from agentflow.conf import agentflow_settings
from agentflow.models import WorkflowRun
from agentflow.parsers import JSONParser
from tests.api.conftest import run_url, start_url

pytestmark = pytest.mark.django_db


def post_raw(client, path, body: bytes | str, content_type="application/json", **extra):
    return client.generic("POST", path, body, content_type=content_type, **extra)


def test_start_answers_202_with_the_queued_run(api, alice):
    response = api.post(start_url("api-echo"), {"text": "ho", "times": 2}, format="json")
    assert response.status_code == 202
    body = response.json()
    run = WorkflowRun.objects.get()
    assert body["id"] == str(run.pk)
    assert body["workflow"] == "api-echo" and body["status"] == "queued"
    assert body["input"] == {"text": "ho", "times": 2, "labels": None}
    assert body["owner"] == "alice" and run.owner == alice
    assert body["output"] is None and body["error"] is None
    assert response.headers["Location"] == body["urls"]["self"] == f"http://testserver/api/runs/{run.pk}/"
    assert check_stream_token(body["stream_token"], run.pk)
    assert "steps" not in body


def test_starting_a_run_reads_nothing_back_for_its_response(api, alice):
    # The time to a run's first event starts with this request: its response names the owner (the user at
    # hand) without a query for it, and the run is written once.
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as queries:
        response = api.post(start_url("api-echo"), {"text": "ho"}, format="json")
    assert response.status_code == 202 and response.json()["owner"] == "alice"
    users = [q["sql"] for q in queries.captured_queries if '"auth_user"' in q["sql"]]
    assert users == []
    inserts = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("INSERT")]
    assert len(inserts) == 1


def test_input_defaults_and_an_empty_body(api):
    response = post_raw(api, start_url("api-gated"), "")
    assert response.status_code == 400
    assert response.json()["details"] == [{"field": "tag", "code": "missing", "message": "Field required"}]


def test_invalid_input_is_400_with_field_errors(api):
    response = api.post(start_url("api-echo"), {"times": "many", "colour": "red"}, format="json")
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid_input"
    assert body["message"] == "invalid input for workflow 'api-echo'"
    assert {(d["field"], d["code"]) for d in body["details"]} == {
        ("text", "missing"),
        ("times", "int_type"),
        ("colour", "extra_forbidden"),
    }
    assert not WorkflowRun.objects.exists()


@pytest.mark.parametrize(
    ("body", "kind"), [("[1, 2]", "an array"), ('"text"', "a string"), ("3", "a number"), ("null", "null")]
)
def test_a_body_that_is_not_an_object_is_400(api, body, kind):
    response = post_raw(api, start_url("api-echo"), body)
    assert response.status_code == 400
    assert response.json() == {
        "code": "invalid_input",
        "message": f"the input of workflow 'api-echo' must be a JSON object, not {kind}",
        "details": [{"field": "", "code": "object_type", "message": "Input should be an object"}],
    }


@pytest.mark.parametrize(
    "body", ['{"text": ', "{'text': 'x'}", '{"text": NaN}', b'{"text": "\xff"}', "[" * 100_000]
)
def test_malformed_json_is_400(api, body):
    response = post_raw(api, start_url("api-echo"), body)
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "malformed_json"
    assert body["message"].startswith("The request body is not valid JSON")


def test_form_data_is_415(api):
    response = api.post(start_url("api-echo"), {"text": "x"})  # multipart
    assert response.status_code == 415
    assert response.json()["code"] == "unsupported_media_type"


@override_settings(AGENTFLOW={**agentflow_settings.user_settings, "MAX_INPUT_BYTES": 64})
def test_a_body_over_max_input_bytes_is_413(api):
    response = api.post(start_url("api-echo"), {"text": "x" * 100}, format="json")
    assert response.status_code == 413
    assert response.json() == {
        "code": "payload_too_large",
        "message": "The request body is larger than 64 bytes.",
        "details": {"max_bytes": 64},
    }
    # Refused on the declared length, before reading the body.
    response = post_raw(api, start_url("api-echo"), '{"text": "x"}', CONTENT_LENGTH="1000000")
    assert response.status_code == 413
    assert api.post(start_url("api-echo"), {"text": "x" * 40}, format="json").status_code == 202


@override_settings(AGENTFLOW={**agentflow_settings.user_settings, "MAX_INPUT_BYTES": 10})
def test_the_parser_counts_the_bytes_it_reads_too():
    from rest_framework.exceptions import APIException

    class Request:
        META: dict[str, str] = {}  # no Content-Length

    parser = JSONParser()
    assert parser.parse(io.BytesIO(b'{"a": 1}'), parser_context={"request": Request()}) == {"a": 1}
    with pytest.raises(APIException) as info:
        parser.parse(io.BytesIO(b'{"a": "0123456789"}'), parser_context={"request": Request()})
    assert info.value.status_code == 413


def test_unknown_workflow_is_404(api):
    response = api.post(start_url("nope"), {}, format="json")
    assert response.status_code == 404
    assert response.json()["code"] == "workflow_not_found"


@pytest.mark.parametrize("path", [start_url("api-echo"), run_url("api-echo")])
def test_get_is_405(api, path):
    response = api.get(path)
    assert response.status_code == 405
    assert response.json()["code"] == "method_not_allowed"


@pytest.mark.parametrize("path", [start_url("api-echo"), run_url("api-echo")])
def test_unauthenticated_is_401(anonymous, path):
    response = anonymous.post(path, {"text": "x"}, format="json")
    assert response.status_code == 401
    assert response.json()["code"] == "not_authenticated"
    assert not WorkflowRun.objects.exists()


def test_the_async_start_does_not_stream(api):
    response = api.post(start_url("api-echo"), {"text": "x"}, format="json", HTTP_ACCEPT="text/event-stream")
    assert response.status_code == 406
    assert not WorkflowRun.objects.exists()


# -- Idempotency-Key ---------------------------------------------------------------------------------------------


def test_the_same_key_gives_back_the_first_run_with_200(api):
    first = api.post(start_url("api-echo"), {"text": "a"}, format="json", HTTP_IDEMPOTENCY_KEY="k1")
    again = api.post(start_url("api-echo"), {"text": "a"}, format="json", HTTP_IDEMPOTENCY_KEY="k1")
    assert first.status_code == 202 and "Idempotent-Replayed" not in first.headers
    assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert WorkflowRun.objects.count() == 1
    # The normalised input is compared: the defaults spelled out are the same input.
    same = api.post(
        start_url("api-echo"), {"text": "a", "times": 1}, format="json", HTTP_IDEMPOTENCY_KEY="k1"
    )
    assert same.status_code == 200 and same.json()["id"] == first.json()["id"]


def test_a_key_is_per_user_and_per_workflow(api, client_for, bob):
    mine = api.post(start_url("api-echo"), {"text": "a"}, format="json", HTTP_IDEMPOTENCY_KEY="k")
    bobs = client_for(bob).post(start_url("api-echo"), {"text": "a"}, format="json", HTTP_IDEMPOTENCY_KEY="k")
    other = api.post(start_url("api-gated"), {"tag": "t"}, format="json", HTTP_IDEMPOTENCY_KEY="k")
    assert [r.status_code for r in (mine, bobs, other)] == [202, 202, 202]
    assert len({r.json()["id"] for r in (mine, bobs, other)}) == 3


def test_a_key_reused_with_another_input_is_422(api):
    first = api.post(start_url("api-echo"), {"text": "a"}, format="json", HTTP_IDEMPOTENCY_KEY="k")
    response = api.post(start_url("api-echo"), {"text": "b"}, format="json", HTTP_IDEMPOTENCY_KEY="k")
    assert response.status_code == 422
    assert response.json()["code"] == "idempotency_key_reused"
    assert response.json()["details"] == {"run": first.json()["id"]}
    # Invalid input is still invalid input.
    response = api.post(start_url("api-echo"), {"times": 1}, format="json", HTTP_IDEMPOTENCY_KEY="k")
    assert response.status_code == 400 and response.json()["code"] == "invalid_input"


@pytest.mark.parametrize("key", ["", "k" * 256])
def test_a_bad_key_is_400(api, key):
    response = api.post(start_url("api-echo"), {"text": "a"}, format="json", HTTP_IDEMPOTENCY_KEY=key)
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid_idempotency_key"
    assert body["details"][0]["field"] == "Idempotency-Key"
    assert not WorkflowRun.objects.exists()


# -- the synchronous endpoint's own checks ----------------------------------------------------------------------


@pytest.mark.parametrize("timeout", ["0", "-1", "soon", "nan", "inf"])
def test_a_bad_timeout_is_400_and_starts_nothing(api, timeout):
    response = api.post(f"{run_url('api-echo')}?timeout={timeout}", {"text": "a"}, format="json")
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid_parameter"
    assert body["details"] == [
        {"field": "timeout", "code": "range", "message": "must be a number of seconds greater than 0"}
    ]
    assert not WorkflowRun.objects.exists()


def test_the_synchronous_endpoint_accepts_an_event_stream(asgi_for, alice):
    # The run is recorded and the stream answered; its content is tested with a real ASGI server.
    response = asgi_for(alice).post(
        run_url("api-echo"), {"text": "a"}, headers={"Accept": "text/event-stream"}
    )
    assert response.status_code == 200
    assert response["Content-Type"] == "text/event-stream"
    assert response.streaming
    assert WorkflowRun.objects.get().status == "queued"


def test_an_event_stream_under_wsgi_is_501_and_starts_no_run(api):
    response = api.post(run_url("api-echo"), {"text": "a"}, format="json", HTTP_ACCEPT="text/event-stream")
    assert response.status_code == 501
    assert json.loads(response.content.decode().split("data: ", 1)[1])["code"] == "asgi_required"
    assert not WorkflowRun.objects.exists()


def test_format_sse_asks_for_an_event_stream_too(asgi_for, alice):
    response = asgi_for(alice).post(run_url("api-echo") + "?format=sse", {"text": "a"})
    assert response.status_code == 200 and response["Content-Type"] == "text/event-stream"


def test_errors_of_an_event_stream_request_are_events(asgi_for, alice):
    response = asgi_for(alice).post(
        run_url("api-echo"), {"times": 1}, headers={"Accept": "text/event-stream"}
    )
    assert response.status_code == 400
    assert response["Content-Type"] == "text/event-stream"
    frame = response.content.decode()
    assert frame.startswith("event: error\ndata: ")
    assert json.loads(frame.split("data: ", 1)[1])["code"] == "invalid_input"
