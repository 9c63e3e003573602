"""GET/POST runs/{id}/input/{key}/ and agentflow.send_input(): every refusal has its documented status and
changes nothing (no worker here: the end-to-end versions are in tests/integration/test_inputs.py)."""

from __future__ import annotations

import time

import pytest

import agentflow
from agentflow.core.waits import AnswerSchema
from agentflow.models import StepRun
from tests.api.conftest import url
from tests.testapp.workflows_waits import Decision

pytestmark = pytest.mark.django_db


def ask(run, key="approve", schema=Decision, timeout_at=None, **fields):
    made = AnswerSchema.of(schema)
    return StepRun.objects.create(
        run=run,
        step_id=f"input:{key}",
        component="input",
        status=fields.pop("status", "waiting"),
        input={"key": key, "prompt": "Publish?", "schema": made.json_schema, "schema_ref": made.ref},
        output={"requested_at": time.time(), "timeout_at": timeout_at, **fields.pop("output", {})},
        attempts=0,
        **fields,
    )


@pytest.fixture
def waiting(make_run, alice):
    run = make_run(
        alice, workflow="asks-approval", input={"tag": "t"}, status="waiting", wait_reason="input", epoch=1
    )
    ask(run)
    return run


def unchanged(run, step_output):
    run_before = (run.status, run.epoch, run.wake_at)
    run.refresh_from_db()
    assert (run.status, run.epoch, run.wake_at) == run_before
    assert StepRun.objects.get(run=run, step_id="input:approve").output == step_output


def test_a_valid_answer_is_recorded_and_makes_the_run_due(api, waiting, django_capture_on_commit_callbacks):
    assert api.get(url("run-input", waiting.pk, "approve")).json()["status"] == "waiting"
    with django_capture_on_commit_callbacks() as callbacks:
        response = api.post(url("run-input", waiting.pk, "approve"), {"approved": True}, format="json")
    assert response.status_code == 200
    body = response.json()
    assert body["key"] == "approve" and body["status"] == "answered" and body["answered_by"] == "alice"
    assert body["value"] == {"approved": True, "notes": ""}  # normalised by the model
    assert body["url"].endswith(f"/api/runs/{waiting.pk}/input/approve/")
    step = StepRun.objects.get(run=waiting, step_id="input:approve")
    assert step.status == "waiting" and step.output["answer"] == {"approved": True, "notes": ""}
    waiting.refresh_from_db()
    assert waiting.wake_at is not None and len(callbacks) == 1  # the enqueue, once committed
    detail = api.get(url("run-detail", waiting.pk)).json()
    assert [(i["key"], i["status"]) for i in detail["inputs"]] == [("approve", "answered")]
    assert detail["wait_reason"] == "input" and detail["urls"]["inputs"].endswith("/input/")


@pytest.mark.parametrize(
    ("answer", "field", "code"),
    [
        ({"approved": "perhaps"}, "approved", "bool_type"),
        # Strict, as run input is: what lax validation took for a bool (or an int) is refused.
        ({"approved": "true"}, "approved", "bool_type"),
        ({"approved": 1}, "approved", "bool_type"),
        ({}, "approved", "missing"),
        ([1], "", "model_type"),
    ],
)
def test_an_invalid_answer_is_400_with_field_details_and_the_run_keeps_waiting(
    api, waiting, answer, field, code
):
    before = StepRun.objects.get(run=waiting, step_id="input:approve").output
    response = api.post(url("run-input", waiting.pk, "approve"), answer, format="json")
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid_answer"
    assert body["details"][0]["field"] == field and body["details"][0]["code"] == code
    unchanged(waiting, before)


def test_a_json_schema_answer_is_validated_with_the_schema(api, make_run, alice):
    run = make_run(alice, status="waiting", wait_reason="input")
    ask(run, key="size", schema={"type": "integer", "minimum": 1})
    response = api.post(url("run-input", run.pk, "size"), 0, format="json")
    assert response.status_code == 400
    assert response.json()["details"] == [
        {"field": "", "code": "minimum", "message": "0 is less than the minimum of 1"}
    ]
    assert api.post(url("run-input", run.pk, "size"), 3, format="json").status_code == 200


@pytest.mark.parametrize(
    ("schema", "schema_ref", "answer", "code"),
    [
        (int, "builtins:int", "5", "int_type"),  # the type validates, strictly
        (int, "builtins:int", 5.0, "int_type"),
        (int, "gone.module:Count", "5", "type"),  # not importable here: its JSON Schema, as strictly
        (int, "gone.module:Count", 5.0, "type"),
        (Decision, "gone.module:Decision", {"approved": 1}, "type"),
    ],
)
def test_answers_follow_the_rules_of_run_input_whichever_validates_them(
    api, make_run, alice, schema, schema_ref, answer, code
):
    run = make_run(alice, status="waiting", wait_reason="input")
    step = ask(run, key="n", schema=schema)
    step.input["schema_ref"] = schema_ref
    step.save(update_fields=["input"])
    response = api.post(url("run-input", run.pk, "n"), answer, format="json")
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_answer"
    assert response.json()["details"][0]["code"] == code
    with pytest.raises(agentflow.InvalidAnswer):
        agentflow.send_input(run, "n", answer)
    unchanged_answer = StepRun.objects.get(pk=step.pk).output
    assert "answer" not in unchanged_answer


def test_a_json_schema_dict_validates_as_json_schema_says(make_run, alice):
    # No type behind it: JSON Schema's own rules (an integer may be written 5.0).
    run = make_run(alice, status="waiting", wait_reason="input")
    ask(run, key="n", schema={"type": "integer"})
    assert agentflow.send_input(run, "n", 5.0).value == 5.0


@pytest.mark.parametrize(
    ("answer", "field", "code"),
    [
        ({"approved": True, "notes": "a\x00b"}, "notes", "null_character"),
        ({"approved": True, "notes": "a\ud800"}, "notes", "lone_surrogate"),
        ({"approved": True, "notes": float("nan")}, "notes", "non_finite_number"),
    ],
)
def test_send_input_refuses_what_the_database_cannot_store(waiting, answer, field, code):
    # Before: the answer reached the checkpoint's UPDATE and failed there (a DataError, or a
    # UnicodeEncodeError for the surrogate), a 500 in the admin's form.
    before = StepRun.objects.get(run=waiting, step_id="input:approve").output
    with pytest.raises(agentflow.InvalidAnswer) as caught:
        agentflow.send_input(waiting, "approve", answer)
    assert caught.value.details == [
        {"field": field, "code": code, "message": caught.value.details[0]["message"]}
    ]
    unchanged(waiting, before)


def test_over_rest_such_an_answer_is_refused_by_the_parser(api, waiting):
    before = StepRun.objects.get(run=waiting, step_id="input:approve").output
    body = b'{"approved": true, "notes": "a\\u0000b"}'
    response = api.post(url("run-input", waiting.pk, "approve"), body, content_type="application/json")
    assert response.status_code == 400
    assert response.json()["code"] == "unsupported_json"
    unchanged(waiting, before)


def test_another_users_answer_gets_the_same_404_as_a_missing_run(client_for, bob, waiting):
    before = StepRun.objects.get(run=waiting, step_id="input:approve").output
    theirs = client_for(bob).post(url("run-input", waiting.pk, "approve"), {"approved": True}, format="json")
    missing_id = "00000000-0000-0000-0000-000000000000"
    missing = client_for(bob).post(url("run-input", missing_id, "approve"), {"approved": True}, format="json")
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json()["code"] == missing.json()["code"] == "run_not_found"
    assert theirs.json()["message"].replace(str(waiting.pk), "ID") == missing.json()["message"].replace(
        missing_id, "ID"
    )
    unchanged(waiting, before)


def test_staff_may_answer(client_for, staff, waiting):
    response = client_for(staff).post(
        url("run-input", waiting.pk, "approve"), {"approved": False}, format="json"
    )
    assert response.status_code == 200 and response.json()["answered_by"] == "root"


def test_a_second_answer_is_409_and_keeps_the_first(api, waiting):
    assert (
        api.post(url("run-input", waiting.pk, "approve"), {"approved": True}, format="json").status_code
        == 200
    )
    waiting.refresh_from_db()
    first = StepRun.objects.get(run=waiting, step_id="input:approve").output
    response = api.post(url("run-input", waiting.pk, "approve"), {"approved": False}, format="json")
    assert response.status_code == 409
    assert response.json()["code"] == "input_already_answered"
    assert response.json()["details"]["answered_by"] == "alice"
    unchanged(waiting, first)


def test_an_answer_to_an_unknown_key_is_404(api, waiting):
    before = StepRun.objects.get(run=waiting, step_id="input:approve").output
    for key in ("nope", "bad key!"):
        response = api.post(url("run-input", waiting.pk, key), {"approved": True}, format="json")
        assert response.status_code == 404 and response.json()["code"] == "input_not_found"
    assert api.get(url("run-input", waiting.pk, "nope")).status_code == 404
    unchanged(waiting, before)


def test_an_answer_after_cancel_is_409_run_finished(api, waiting):
    assert api.post(url("run-cancel", waiting.pk)).status_code == 200
    waiting.refresh_from_db()
    before = StepRun.objects.get(run=waiting, step_id="input:approve").output
    response = api.post(url("run-input", waiting.pk, "approve"), {"approved": True}, format="json")
    assert response.status_code == 409
    assert response.json() == {
        "code": "run_finished",
        "message": f"run {waiting.pk} is cancelled: it takes no more answers",
        "details": {"status": "cancelled"},
    }
    unchanged(waiting, before)
    assert api.get(url("run-input", waiting.pk, "approve")).json()["status"] == "closed"


def test_an_answer_after_the_time_out_is_409(api, make_run, alice):
    run = make_run(alice, status="waiting", wait_reason="input")
    ask(run, timeout_at=time.time() - 1)
    before = StepRun.objects.get(run=run, step_id="input:approve").output
    response = api.post(url("run-input", run.pk, "approve"), {"approved": True}, format="json")
    assert response.status_code == 409 and response.json()["code"] == "input_timed_out"
    unchanged(run, before)


def test_the_stream_token_cannot_answer(anonymous, waiting, api):
    token = api.get(url("run-detail", waiting.pk)).json()["stream_token"]
    response = anonymous.post(
        url("run-input", waiting.pk, "approve") + f"?token={token}", {"approved": True}, format="json"
    )
    assert response.status_code in (401, 403)


def test_send_input_from_python(waiting):
    answered = agentflow.send_input(waiting, "approve", {"approved": True})
    assert answered.status == "answered" and answered.answered_by is None
    with pytest.raises(agentflow.InputAlreadyAnswered):
        agentflow.send_input(waiting.pk, "approve", {"approved": True})


def test_the_run_list_filters_by_wait_reason(api, make_run, alice, waiting):
    make_run(alice, status="waiting", wait_reason="sleep")
    make_run(alice, status="running")
    ids = [r["id"] for r in api.get(url("run-list"), {"wait_reason": "input"}).json()["results"]]
    assert ids == [str(waiting.pk)]
    response = api.get(url("run-list"), {"wait_reason": "coffee"})
    assert response.status_code == 400 and response.json()["code"] == "invalid_parameter"
