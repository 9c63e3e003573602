"""GET runs/ and runs/{id}/, and who may see what on every run endpoint."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from django.test import override_settings
from django.utils import timezone

from agentflow.access import check_stream_token
from agentflow.conf import agentflow_settings
from agentflow.models import StepRun
from tests.api.conftest import url

pytestmark = pytest.mark.django_db

RUN_ENDPOINTS = [
    ("get", "run-detail"),
    ("get", "run-events"),
    ("post", "run-cancel"),
    ("post", "run-resume"),
]


def ids(response) -> list[str]:
    return [run["id"] for run in response.json()["results"]]


def test_list_shows_my_runs_newest_first(api, alice, bob, make_run):
    older = make_run(alice)
    newer = make_run(alice)
    make_run(bob)
    make_run(None)
    response = api.get(url("run-list"))
    assert response.status_code == 200
    assert ids(response) == [str(newer.pk), str(older.pk)]
    first = response.json()["results"][0]
    assert first["urls"]["self"] == f"http://testserver/api/runs/{newer.pk}/"
    assert "steps" not in first


def test_staff_see_every_run(client_for, staff, alice, bob, make_run):
    runs = [make_run(alice), make_run(bob), make_run(None)]
    response = client_for(staff).get(url("run-list"))
    assert set(ids(response)) == {str(run.pk) for run in runs}
    assert {run["owner"] for run in response.json()["results"]} == {"alice", "bob", None}
    assert client_for(staff).get(url("run-detail", runs[1].pk)).status_code == 200


def test_filters(api, alice, make_run):
    echo_done = make_run(alice, status="completed")
    echo_failed = make_run(alice, status="failed")
    gated = make_run(alice, workflow="api-gated", status="failed")
    assert ids(api.get(url("run-list"), {"workflow": "api-gated"})) == [str(gated.pk)]
    assert ids(api.get(url("run-list"), {"workflow": "no-such-workflow"})) == []
    assert ids(api.get(url("run-list"), {"status": "completed"})) == [str(echo_done.pk)]
    assert ids(api.get(url("run-list"), {"status": "failed", "workflow": "api-echo"})) == [
        str(echo_failed.pk)
    ]
    assert set(ids(api.get(url("run-list"), {"status": "completed,failed"}))) == {
        str(echo_done.pk),
        str(echo_failed.pk),
        str(gated.pk),
    }


@pytest.mark.parametrize(
    "value", ["done", "completed,nope", ",", "", "completed,,failed", "completed, failed"]
)
def test_an_unknown_status_is_400(api, value):
    response = api.get(url("run-list"), {"status": value})
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid_parameter"
    assert body["details"][0]["field"] == "status" and body["details"][0]["code"] == "invalid_choice"


@override_settings(AGENTFLOW={**agentflow_settings.user_settings, "RUNS_PAGE_SIZE": 2})
def test_pages_follow_a_cursor(api, alice, make_run):
    start = timezone.now()
    runs = [make_run(alice) for _ in range(5)]
    for index, run in enumerate(runs):  # distinct, known creation times
        type(run).objects.filter(pk=run.pk).update(created_at=start + dt.timedelta(seconds=index))
    seen: list[str] = []
    page = api.get(url("run-list")).json()
    while True:
        seen += [run["id"] for run in page["results"]]
        assert len(page["results"]) <= 2
        if not page["next"]:
            break
        page = api.get(page["next"]).json()
    assert seen == [str(run.pk) for run in reversed(runs)]


def test_a_foreign_cursor_is_400(api):
    response = api.get(url("run-list"), {"cursor": "garbage"})
    assert response.status_code == 400
    assert response.json()["details"][0]["field"] == "cursor"


def test_detail_has_everything_and_the_steps(api, alice, make_run):
    now = timezone.now()
    run = make_run(
        alice,
        status="failed",
        started_at=now - dt.timedelta(seconds=3),
        finished_at=now,
        epoch=2,
        recoveries=1,
        step_count=2,
        usage={"calls": 1, "prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12},
        error={"type": "StepFailed", "message": "boom", "step": "b#0", "traceback": "secret internals"},
    )
    StepRun.objects.create(
        run=run, step_id="a#0", component="a", status="completed", started_at=now, finished_at=now, output=1
    )
    StepRun.objects.create(
        run=run,
        step_id="a#0/b#0",
        parent_id="a#0",
        component="b",
        status="failed",
        attempts=3,
        error={"type": "ValueError", "message": "boom"},
    )
    response = api.get(url("run-detail", run.pk))
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == str(run.pk) and body["workflow"] == "api-echo" and body["status"] == "failed"
    assert body["error"] == {"type": "StepFailed", "message": "boom", "step": "b#0"}  # no traceback
    assert body["duration_seconds"] == pytest.approx(3.0)
    assert (body["epoch"], body["recoveries"], body["step_count"]) == (2, 1, 2)
    assert (body["usage"]["calls"], body["usage"]["total_tokens"]) == (1, 12)  # tests/api/test_usage_api.py
    assert body["cancel_requested"] is False
    assert {"created_at", "started_at", "finished_at", "input", "output"} <= set(body)
    assert body["steps"] == [
        {
            "step_id": "a#0",
            "parent_id": None,
            "component": "a",
            "status": "completed",
            "attempts": 1,
            "cached": False,
            "started_at": now.isoformat().replace("+00:00", "Z"),
            "finished_at": now.isoformat().replace("+00:00", "Z"),
            "duration_seconds": 0.0,
            "error": None,
            "usage": None,
        },
        {
            "step_id": "a#0/b#0",
            "parent_id": "a#0",
            "component": "b",
            "status": "failed",
            "attempts": 3,
            "cached": False,
            "started_at": None,
            "finished_at": None,
            "duration_seconds": None,
            "error": {"type": "ValueError", "message": "boom"},
            "usage": None,
        },
    ]
    base = f"http://testserver/api/runs/{run.pk}/"
    assert body["urls"] == {
        "self": base,
        "events": base + "events/",
        "websocket": f"ws://testserver/ws/runs/{run.pk}/",
        "cancel": base + "cancel/",
        "resume": base + "resume/",
        "workflow": "http://testserver/api/workflows/api-echo/",
        "inputs": base + "input/",
        "parent": None,
    }
    assert (body["inputs"], body["children"], body["parent"], body["wait_reason"]) == ([], [], None, None)
    assert check_stream_token(body["stream_token"], run.pk)
    assert not check_stream_token(body["stream_token"], uuid.uuid4())


def test_the_websocket_url_follows_the_request_scheme_and_host(api, alice, make_run):
    run = make_run(alice)
    with override_settings(ALLOWED_HOSTS=["example.com"]):
        body = api.get(url("run-detail", run.pk), secure=True, HTTP_HOST="example.com").json()
    assert body["urls"]["websocket"] == f"wss://example.com/ws/runs/{run.pk}/"
    assert body["urls"]["self"] == f"https://example.com/api/runs/{run.pk}/"


def test_the_websocket_url_is_the_consumers_route(alice, make_run):
    from django.urls import resolve

    from agentflow.serializers import _websocket_urlconf, websocket_url

    path = websocket_url({}, "5b1f6c1e-0000-4000-8000-000000000000")
    assert path == "/ws/runs/5b1f6c1e-0000-4000-8000-000000000000/"
    assert resolve(path, urlconf=_websocket_urlconf()).url_name == "agentflow-run-events"


@pytest.mark.parametrize(("method", "name"), RUN_ENDPOINTS)
def test_another_users_run_is_404_on_every_endpoint(client_for, bob, alice, make_run, method, name):
    run = make_run(alice, status="failed")
    response = getattr(client_for(bob), method)(url(name, run.pk))
    assert response.status_code == 404
    assert response.json() == {
        "code": "run_not_found",
        "message": f"no run has id '{run.pk}'",
        "details": None,
    }
    # Exactly what a run that does not exist gets.
    missing = getattr(client_for(bob), method)(url(name, uuid.uuid4()))
    assert missing.status_code == 404 and missing.json()["code"] == "run_not_found"
    run.refresh_from_db()
    assert run.status == "failed" and not run.cancel_requested


@pytest.mark.parametrize(("method", "name"), RUN_ENDPOINTS)
def test_an_ownerless_run_is_404_for_users(api, make_run, method, name):
    run = make_run(None)
    assert getattr(api, method)(url(name, run.pk)).status_code == 404


@pytest.mark.parametrize(("method", "name"), RUN_ENDPOINTS)
@pytest.mark.parametrize("run_id", ["not-a-uuid", "123", "5b1f6c1e"])
def test_a_malformed_id_is_404(api, method, name, run_id):
    response = getattr(api, method)(url(name, run_id))
    assert response.status_code == 404
    assert response.json()["code"] == "run_not_found"


@pytest.mark.parametrize(("method", "name"), [*RUN_ENDPOINTS, ("get", "run-list")])
def test_unauthenticated_is_401_on_every_run_endpoint(anonymous, alice, make_run, method, name):
    args = () if name == "run-list" else (make_run(alice).pk,)
    response = getattr(anonymous, method)(url(name, *args))
    assert response.status_code == 401
    assert response.json()["code"] == "not_authenticated"


@pytest.mark.parametrize(
    ("method", "name"),
    [("post", "run-list"), ("post", "run-detail"), ("delete", "run-detail"), ("get", "run-cancel")],
)
def test_wrong_methods_are_405(api, alice, make_run, method, name):
    args = () if name == "run-list" else (make_run(alice).pk,)
    response = getattr(api, method)(url(name, *args))
    assert response.status_code == 405
    assert response.json()["code"] == "method_not_allowed"
